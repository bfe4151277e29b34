"""Open question 1 (notebook 06): DDC on ResNets, matched drop rates, BatchNorm variance shift."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ddc import paper
from ddc.notebooks import run_notebooks
from ddc.openq import architectures as arch


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    run_notebooks("smoke", only=["06"], output_root=root, log=lambda *_: None)
    return root / "smoke" / arch.NOTEBOOK


def table(run_dir, name):
    return pd.read_parquet(run_dir / "results" / f"{name}.parquet")


# ----------------------------------------------------------------------------- the notebook's data


def test_runs_cover_every_method_placement_and_seed(run_dir):
    runs = table(run_dir, "runs")
    placements = sorted(runs.placement.dropna().unique())
    assert placements == ["all_conv", "fc"]
    expected = {"none"} | {arch.label(m, p) for m in ("dropout", "dropconnect", "ddc") for p in placements}
    assert set(runs.variant) == expected
    assert (runs.groupby("variant").seed.nunique() == 2).all()
    assert set(runs.experiment) == {"fashion_mnist-resnet20"}
    for row in runs.itertuples():
        layers = json.loads(row.layers) if isinstance(row.layers, str) else None
        if row.method_label == "none":
            assert layers is None
        else:
            assert layers == arch.placement_layers("resnet20", row.placement)


def test_baselines_run_at_ddcs_measured_rate(run_dir):
    rates = table(run_dir, "matched_rates").set_index("placement")
    per_run = table(run_dir, "ddc_drop_rates")
    runs = table(run_dir, "runs")
    for placement, row in rates.iterrows():
        assert row.p_matched == pytest.approx(round(row.expected_rate, 3))
        assert row.expected_rate == pytest.approx(per_run[per_run.placement == placement].expected_rate.mean())
        assert row.ci_low <= row.expected_rate <= row.ci_high
        assert 0.3 <= row.expected_rate <= 0.8  # p_base <= p <= p_base + p_signal
        assert row.gaussian_rate == pytest.approx(arch.gaussian_drop_rate())
        for method in ("dropout", "dropconnect"):
            assert (runs[runs.variant == arch.label(method, placement)].p == row.p_matched).all()


def test_drop_rates_recomputed_from_the_raw_records(run_dir):
    """Slow, obvious recomputation: read each DDC run's record parts, weight every layer by its edges."""
    runs = table(run_dir, "runs_ddc")
    per_run = table(run_dir, "ddc_drop_rates").set_index("run_id")
    model = dict(torch.nn.Module.named_modules(arch._build("resnet20", "fashion_mnist")))
    for run_id, path in zip(runs.run_id, paper.run_paths(run_dir, runs)):
        records = pd.concat([pd.read_parquet(p) for p in sorted((path / "records").glob("part-*.parquet"))])
        total, weight = 0.0, 0
        for layer in json.loads(runs.set_index("run_id").loc[run_id, "layers"]):
            values = records[(records.layer == layer) & (records.metric == "drop_prob_mean") & (records.step > 0)].value.dropna()
            edges = model[layer].weight.numel()
            total += values.mean() * edges
            weight += edges
        assert per_run.loc[run_id, "expected_rate"] == pytest.approx(total / weight, rel=1e-9)


def test_summary_intervals_and_contrasts(run_dir):
    summary = table(run_dir, "summary")
    assert ((summary.ci_low <= summary["mean"] + 1e-12) & (summary["mean"] <= summary.ci_high + 1e-12)).all()
    runs = table(run_dir, "runs").set_index(["variant", "seed"]).test_acc
    tests = table(run_dir, "contrasts")
    assert len(tests) == 2 * len(arch.CONTRASTS)
    for row in tests.itertuples():
        method = runs.loc["none"] if row.method == "none" else runs.loc[arch.label(row.method, row.placement)]
        base = runs.loc["none"] if row.baseline == "none" else runs.loc[arch.label(row.baseline, row.placement)]
        assert row.mean_diff == pytest.approx((method - base).mean())
        assert row.ci_low - 1e-12 <= row.mean_diff <= row.ci_high + 1e-12
        assert row.p_wilcoxon <= row.p_wilcoxon_adj <= 1


def test_batchnorm_statistics(run_dir):
    bn = table(run_dir, "bn_stats")
    runs = table(run_dir, "runs")
    n_bn = 1 + 9 * 2  # stem + two per block
    assert len(bn) == len(runs) * n_bn
    assert (bn.running_var > 0).all() and (bn.train_var > 0).all() and (bn.eval_var > 0).all()
    # which BN layers read a masked convolution
    assert bn[bn.placement == "all_conv"].after_masked.all()
    assert not bn[bn.placement.isna() | (bn.placement == "fc")].after_masked.any()
    # the stem BN reads conv1(image): without a mask on conv1, train and eval inputs are the same
    stem = bn[bn.bn_layer == "bn1"]
    unmasked = stem[stem.placement.isna() | (stem.placement == "fc")]
    assert unmasked.eval_over_train.to_numpy() == pytest.approx(1.0, rel=1e-9)
    masked_weights = stem[(stem.placement == "all_conv") & stem.method.isin(["ddc", "dropconnect"])]
    assert (masked_weights.eval_over_train - 1).abs().min() > 1e-6
    skip = table(run_dir, "skip_stats")
    assert len(skip) == len(runs) * 9
    assert np.allclose(skip.ratio_train, skip.branch_std_train / skip.shortcut_std_train)
    place = table(run_dir, "bn_by_placement")
    assert set(place.placement) == {"all_conv"}  # fc feeds no BN layer
    assert (place.n_bn_layers == n_bn).all()
    summary = table(run_dir, "bn_summary")
    assert ((summary.ci_low <= summary["mean"] + 1e-12) & (summary["mean"] <= summary.ci_high + 1e-12)).all()


def test_layer_dynamics(run_dir):
    dynamics = table(run_dir, "drop_dynamics")
    assert {"drop_prob_mean", "realized_drop_rate"} <= set(dynamics.metric)
    layers = table(run_dir, "layer_drop_summary")
    ddc_all = layers[(layers.method == "ddc") & (layers.placement == "all_conv")]
    assert set(ddc_all.layer) == set(arch.placement_layers("resnet20", "all_conv"))
    assert set(ddc_all.role) == {"stem", "conv1", "conv2"}
    assert ((ddc_all.drop_rate >= 0.3 - 1e-6) & (ddc_all.drop_rate <= 0.8 + 1e-6)).all()
    dc = layers[layers.method == "dropconnect"]
    rates = table(run_dir, "matched_rates").set_index("placement").p_matched
    assert np.allclose(dc.drop_rate, dc.placement.map(rates))  # DropConnect's expected rate is its p


def test_conclusion_quotes_the_stored_numbers(run_dir):
    conclusion = json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"]
    assert isinstance(conclusion, list) and len(conclusion) == 1
    text = conclusion[0]
    rates = table(run_dir, "matched_rates")
    for row in rates.itertuples():
        assert f"p = {row.p_matched:.3f}" in text
    summary = table(run_dir, "summary").set_index("variant")
    for variant in ("none", "ddc@fc", "ddc@all_conv"):
        s = summary.loc[variant]
        assert paper.format_ci(s["mean"], s.ci_low, s.ci_high) in text
    tests = table(run_dir, "contrasts")
    row = tests[(tests.method == "ddc") & (tests.baseline == "dropconnect") & (tests.placement == "fc")].iloc[0]
    assert f"{row.mean_diff:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]" in text


def test_figures_rebuilt_from_stored_results(run_dir):
    names = {p.name for p in (run_dir / "figures").glob("*.png")}
    e = "fashion_mnist-resnet20"
    assert names == {f"{e}-{k}.png" for k in ("test_acc", "drop_dynamics", "layer_drop_rates", "bn_variance_shift", "skip_ratio")}
    assert len(arch.figures(run_dir)) == 2 * len(names)
    assert arch.NOTEBOOK in paper.figure_functions()


# ----------------------------------------------------------------------------- unit tests


def test_placements():
    assert arch.placement_layers("resnet20", "fc") == ["fc"]
    last = arch.placement_layers("resnet20", "last_stage")
    assert last == [f"layer3.{b}.conv{c}" for b in range(3) for c in (1, 2)]
    assert len(arch.placement_layers("resnet20", "all_conv")) == 19
    assert "layer4.0.shortcut.0" in arch.placement_layers("resnet18", "last_stage")
    assert len(arch.placement_layers("resnet18", "all_conv")) == 1 + 16 + 3
    with pytest.raises(ValueError, match="placement"):
        arch.placement_layers("resnet20", "everywhere")
    assert arch._bn_parent_conv("bn1") == "conv1"
    assert arch._bn_parent_conv("layer2.0.bn2") == "layer2.0.conv2"
    assert arch._bn_parent_conv("layer2.0.shortcut.1") == "layer2.0.shortcut.0"
    assert arch.parse_label("ddc@last_stage") == ("ddc", "last_stage")
    assert arch.parse_label("none") == ("none", None)


def test_gaussian_drop_rate_against_monte_carlo():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(2_000_000)
    for p_base, p_signal, tau in ((0.3, 0.5, 0.5), (0.1, 0.4, 0.3), (0.2, 0.6, 0.7)):
        c = 1 / (1 + np.exp(z))
        expected = p_base + p_signal * np.mean(np.where(c > tau, c, 0.0))
        assert arch.gaussian_drop_rate(p_base, p_signal, tau) == pytest.approx(expected, abs=2e-3)
    assert arch.gaussian_drop_rate(0.3, 0.0, 0.5) == pytest.approx(0.3)


def test_contrasts_match_a_direct_paired_analysis():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(1)
    rows = []
    for seed in range(5):
        for method in ("none", "dropout", "dropconnect", "ddc"):
            rows.append({"experiment": "e", "placement": "fc", "method_label": method, "seed": seed, "acc": rng.uniform(0.5, 0.9)})
    frame = pd.DataFrame(rows)
    out = arch.contrasts(frame, value="acc", n_resamples=199).set_index(["method", "baseline"])
    wide = frame.pivot(index="seed", columns="method_label", values="acc")
    for method, baseline in arch.CONTRASTS:
        d = wide[method] - wide[baseline]
        assert out.loc[(method, baseline), "mean_diff"] == pytest.approx(d.mean())
        assert out.loc[(method, baseline), "p_ttest"] == pytest.approx(ttest_rel(wide[method], wide[baseline]).pvalue)
    assert (out.p_wilcoxon_adj >= out.p_wilcoxon).all()
