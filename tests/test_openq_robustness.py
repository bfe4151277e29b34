"""Open question 4 (notebook 09): robustness of DDC to tau, p_base and p_signal."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from experiments import paper
from ddc.notebooks import run_notebooks
from experiments.openq import robustness as rob


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    run_notebooks("smoke", only=["09"], output_root=root, log=lambda *_: None)
    return root / "smoke" / rob.NOTEBOOK


# ----------------------------------------------------------------------------- the notebook's data


def test_every_setting_trained_on_every_experiment_and_seed(run_dir):
    runs = paper.load_table(run_dir, "runs")
    design = paper.load_table(run_dir, "design")
    assert set(runs.experiment) == {"mnist1d-mlp", "mnist1d-simplecnn1"}
    assert runs.groupby(["experiment", "label"]).seed.nunique().eq(2).all()
    assert runs.groupby("experiment").label.nunique().eq(len(design)).all()
    for row in runs.itertuples():
        assert row.method == "ddc"
        assert rob.setting_label({"tau": row.tau, "p_base": row.p_base, "p_signal": row.p_signal}) == row.label
        assert rob.valid({"tau": row.tau, "p_base": row.p_base, "p_signal": row.p_signal})
    settings = json.loads((run_dir / "results" / "settings.json").read_text())
    assert settings["margin"] == 0.01
    assert "does not accept" in settings["resnet_on_mnist1d"]


def test_summary_and_equivalence_recomputed(run_dir):
    from statsmodels.stats.weightstats import ttost_paired

    runs = paper.load_table(run_dir, "runs")
    summary = paper.load_table(run_dir, "summary")
    assert ((summary.ci_low <= summary["mean"] + 1e-12) & (summary["mean"] <= summary.ci_high + 1e-12)).all()
    eq = paper.load_table(run_dir, "equivalence")
    for experiment, group in eq.groupby("experiment"):
        mine = runs[runs.experiment == experiment]
        assert group.is_best.sum() == 1
        best = group[group.is_best].label.iloc[0]
        val_means = mine.groupby("label").val_acc.mean()
        assert val_means[best] == pytest.approx(val_means.max())  # validation chooses
        wide = mine.pivot(index="seed", columns="label", values="test_acc")
        for row in group.itertuples():
            d = wide[row.label] - wide[best]
            assert row.diff == pytest.approx(d.mean())  # paired by seed, reported on test
            assert row.ci_low - 1e-12 <= row.diff <= row.ci_high + 1e-12
            if row.is_best:
                assert not row.within_margin and row.in_region
                continue
            if d.std() > 0:
                assert row.p_tost == pytest.approx(ttost_paired(wide[row.label], wide[best], -0.01, 0.01)[0])
            # Holm over the experiment's settings: equivalent exactly when the Holm-level interval lies inside the margin
            assert row.within_margin == (row.p_tost_holm < 0.05)
            if np.isfinite(row.ci_low_holm):
                assert row.within_margin == (row.ci_low_holm > -0.01 and row.ci_high_holm < 0.01)
            assert row.not_worse_than_margin == (row.ci_high > -0.01)
            assert row.verdict == "exploratory"  # 2 seeds at smoke


def test_variance_decomposition_recomputed(run_dir):
    """Balanced 2x2 joint grid: the type-II SS of a main effect is sum n_level (mean_level - grand)^2."""
    runs = paper.load_table(run_dir, "runs")
    shares = paper.load_table(run_dir, "joint_variance")
    for experiment, group in runs[runs.in_joint].groupby("experiment"):
        mine = shares[shares.experiment == experiment].set_index("term")
        assert set(mine.index) == {"tau", "p_base", "tau:p_base", "seed", "Residual"}  # seeds pair the runs: a block
        grand = group.test_acc.mean()
        total = ((group.test_acc - grand) ** 2).sum()
        if total > 0:
            assert mine.eta_sq.sum() == pytest.approx(1.0, abs=1e-9)
        for factor in ("tau", "p_base"):
            ss = sum(len(g) * (g.test_acc.mean() - grand) ** 2 for _, g in group.groupby(factor))
            assert mine.loc[factor, "sum_sq"] == pytest.approx(ss, abs=1e-12)
            if total > 0:
                assert mine.loc[factor, "eta_sq"] == pytest.approx(ss / total, abs=1e-9)
    pooled = paper.load_table(run_dir, "pooled_variance").set_index("term")
    assert {"experiment:tau", "experiment:p_base"} <= set(pooled.index)
    assert pooled.loc["experiment", "sum_sq"] == pytest.approx(0.0, abs=1e-12)  # centred per experiment
    oat = paper.load_table(run_dir, "oat_variance")
    assert set(oat.factor) == set(rob.FACTORS)
    versus = paper.load_table(run_dir, "verdicts")
    assert set(versus.factor) == set(rob.FACTORS)  # each OAT level against the default
    assert (versus.family == "secondary").all() and versus.mde.notna().all()
    regime = paper.load_table(run_dir, "regime_methods")
    assert len(regime) == runs.groupby(["experiment", "label"]).ngroups


def test_transfer_recomputed(run_dir):
    runs = paper.load_table(run_dir, "runs")
    eq = paper.load_table(run_dir, "equivalence")
    transfer = paper.load_table(run_dir, "transfer")
    assert len(transfer) == 1
    row = transfer.iloc[0]
    assert row.relation == "same dataset, other architecture"
    means = runs.groupby(["experiment", "label"]).test_acc.mean().unstack("experiment")
    a, b = row.a, row.b
    if means[a].nunique() > 1 and means[b].nunique() > 1:
        assert row.spearman == pytest.approx(spearmanr(means[a], means[b]).statistic)
        assert row.spearman_ci_low <= row.spearman <= row.spearman_ci_high
    best_a = eq[(eq.experiment == a) & eq.is_best].label.iloc[0]
    best_b = eq[(eq.experiment == b) & eq.is_best].label.iloc[0]
    assert row.regret_a_in_b == pytest.approx(means.loc[best_b, b] - means.loc[best_a, b], abs=1e-12)
    assert row.regret_b_in_a == pytest.approx(means.loc[best_a, a] - means.loc[best_b, a], abs=1e-12)
    val = runs.groupby(["experiment", "label"]).val_acc.mean().unstack("experiment")
    assert val.loc[best_a, a] == val[a].max() and val.loc[best_b, b] == val[b].max()


def test_conclusion_quotes_the_stored_numbers(run_dir):
    conclusion = json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"]
    text = "\n".join(conclusion)
    summary = paper.load_table(run_dir, "summary")
    eq = paper.load_table(run_dir, "equivalence")
    for experiment, group in eq.groupby("experiment"):
        best = group[group.is_best].label.iloc[0]
        s = summary[(summary.experiment == experiment) & (summary.label == best)].iloc[0]
        assert (f"{experiment}: best setting by validation accuracy {best}, test accuracy "
                f"{paper.format_ci(s['mean'], s.ci_low, s.ci_high)}") in text
        others = group[~group.is_best & (group.identical_to == group.label) & (group.identical_to != best)]
        assert f"Of the {len(others)} other distinct settings, {int(others.within_margin.sum())} are shown equivalent" in text
    row = paper.load_table(run_dir, "transfer").iloc[0]
    assert f"costs {row.regret_a_in_b:.4f}" in text
    assert "Pooled over experiments" in text


def test_figures_rebuilt_from_stored_results(run_dir):
    names = {p.name for p in (run_dir / "figures").glob("*.png")}
    expected = {"one_at_a_time.png", "variance_shares.png", "transfer_spearman.png"}
    expected |= {f"{e}-{k}.png" for e in ("mnist1d-mlp", "mnist1d-simplecnn1") for k in ("joint_grid", "equivalence")}
    assert names == expected
    assert len(rob.figures(run_dir)) == 2 * len(expected)
    assert rob.NOTEBOOK in paper.figure_functions()


# ----------------------------------------------------------------------------- unit tests


def test_design_one_at_a_time_and_joint():
    settings, dropped = rob.design({"tau": [0.3, 0.5, 0.7], "p_base": [0.1, 0.6]}, {"p_base": [0.1, 0.6], "p_signal": [0.25, 0.5]})
    default = rob.DEFAULT
    assert settings.is_default.sum() == 1
    assert settings.label.is_unique
    oat = settings[settings.oat_factor.notna()]
    for row in oat.itertuples():
        others = [f for f in rob.FACTORS if f != row.oat_factor]
        if row.oat_factor != "default":
            assert all(getattr(row, f) == default[f] for f in others)
    # p_base 0.6 + p_signal 0.5 > 1: dropped from the OAT and the joint grid
    assert {"tau": 0.5, "p_base": 0.6, "p_signal": 0.5} in dropped
    assert len(dropped) == 1
    joint = settings[settings.in_joint]
    assert len(joint) == 3  # (0.1, 0.25), (0.1, 0.5), (0.6, 0.25)
    assert (joint.tau == 0.5).all()
    assert all(rob.valid(r) for r in settings[list(rob.FACTORS)].to_dict("records"))
    # a setting in both designs is flagged as both
    both = settings.set_index("label").loc[rob.setting_label({"tau": 0.5, "p_base": 0.1, "p_signal": 0.5})]
    assert both.oat_factor == "p_base" and both.in_joint
    assert not settings[settings.is_default].in_joint.iloc[0]
    with pytest.raises(ValueError, match="unknown factor"):
        rob.design({"gamma": [1]}, {})


def test_valid_constraints():
    assert rob.valid({"tau": 0.5, "p_base": 0.5, "p_signal": 0.5})
    assert not rob.valid({"tau": 0.5, "p_base": 0.6, "p_signal": 0.5})
    assert not rob.valid({"tau": 1.0, "p_base": 0.1, "p_signal": 0.1})
    assert not rob.valid({"tau": 0.0, "p_base": 0.1, "p_signal": 0.1})


def test_spearman_interval_and_relations():
    rng = np.random.default_rng(0)
    for n in (5, 15, 40):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        rho = spearmanr(x, y).statistic
        low, high = rob.spearman_ci(rho, n)
        assert -1 <= low <= rho <= high <= 1
    assert np.isnan(rob.spearman_ci(0.5, 3)[0])
    assert rob.relation("mnist1d-mlp", "mnist1d-simplecnn1") == "same dataset, other architecture"
    assert rob.relation("mnist1d-simplecnn1", "fashion_mnist-simplecnn1") == "same architecture, other dataset"
    assert rob.relation("mnist1d-mlp", "fashion_mnist-resnet20") == "other dataset and architecture"


def test_resnet_does_not_take_mnist1d():
    assert rob.check_resnet_on_mnist1d().startswith("ResNet-20 does not accept MNIST-1D")


def test_regime_of_the_paper_default_is_stated(run_dir):
    runs = paper.load_table(run_dir, "runs")
    regime = paper.load_table(run_dir, "regime")
    text = "\n".join(json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"])
    for experiment, group in runs[runs.is_default].groupby("experiment"):
        row = regime[(regime.experiment == experiment) & (regime.metric == "generalization_gap")].iloc[0]
        assert row["mean"] == pytest.approx(group.generalization_gap.mean())
        assert f"gap {paper.format_ci(row['mean'], row.ci_low, row.ci_high)}" in text


def test_conclusions_without_regime_rows_read_cleanly(run_dir):
    """An experiment the regime table does not cover gets no regime sentence, and no stray full stop."""
    tables = {name: paper.load_table(run_dir, name)
              for name in ("summary", "equivalence", "joint_variance", "pooled_variance", "oat_variance", "transfer", "regime")}
    args = [tables[name] for name in ("summary", "equivalence", "joint_variance", "pooled_variance", "oat_variance", "transfer")]
    with_regime = rob.conclusions(*args, margin=0.01, regime_table=tables["regime"])
    without = rob.conclusions(*args, margin=0.01, regime_table=tables["regime"].iloc[:0])
    assert any("Regime at the paper default" in text for text in with_regime)
    assert not any(".." in text for text in with_regime + without)
    assert not any("Regime at the paper default" in text for text in without)


def planted_runs():
    """Two experiments whose validation and test rankings disagree: the validation-best setting is
    neither the test-best one, nor the one a test-based choice would transfer."""
    rng = np.random.default_rng(0)
    settings = [{"tau": 0.5, "p_base": 0.3, "p_signal": 0.5}, {"tau": 0.3, "p_base": 0.3, "p_signal": 0.5},
                {"tau": 0.7, "p_base": 0.3, "p_signal": 0.5}]
    #            val means          test means
    planted = {"e1-mlp": ((0.90, 0.80, 0.85), (0.80, 0.90, 0.85)),
               "e1-simplecnn1": ((0.70, 0.90, 0.80), (0.90, 0.70, 0.80))}
    rows = []
    for experiment, (val, test) in planted.items():
        for setting, v, t in zip(settings, val, test):
            for seed in range(5):
                rows.append({"experiment": experiment, "label": rob.setting_label(setting), **setting, "seed": seed,
                             "val_acc": v + rng.normal(0, 1e-3), "test_acc": t + rng.normal(0, 1e-3)})
    return pd.DataFrame(rows), settings


def test_validation_chooses_in_equivalence_and_transfer():
    runs, settings = planted_runs()
    eq = rob.equivalence(runs, margin=0.01)
    best = eq[eq.is_best].set_index("experiment").label
    assert best["e1-mlp"] == rob.setting_label(settings[0])  # validation-best, test-worst
    assert best["e1-simplecnn1"] == rob.setting_label(settings[1])
    table = rob.transfer(runs, eq).iloc[0]
    assert (table.best_a, table.best_b) == (best["e1-mlp"], best["e1-simplecnn1"])
    means = runs.groupby(["experiment", "label"]).test_acc.mean()
    # the regret is reported on test accuracy, for the settings validation chose
    assert table.regret_a_in_b == pytest.approx(means["e1-simplecnn1", best["e1-simplecnn1"]] - means["e1-simplecnn1", best["e1-mlp"]])
    assert table.regret_b_in_a == pytest.approx(means["e1-mlp", best["e1-mlp"]] - means["e1-mlp", best["e1-simplecnn1"]])
    assert table.regret_b_in_a < 0  # validation's choice is not the test-best one here


def test_every_figure_reads(run_dir):
    from notebook_checks import unreadable_figures

    assert unreadable_figures(run_dir, rob.figures) == {}


def test_executed_notebook_is_clean(run_dir):
    from notebook_checks import stray_outputs

    assert stray_outputs(run_dir / "09_oq_robustness.ipynb") == []
