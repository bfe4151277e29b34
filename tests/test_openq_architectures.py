"""Open question 1 (notebook 06): DDC on ResNets, matched drop rates, BatchNorm variance shift."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from experiments import paper
from ddc.notebooks import run_notebooks
from experiments.openq import architectures as arch


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    run_notebooks("smoke", only=["06"], output_root=root, log=lambda *_: None)
    return root / "smoke" / arch.NOTEBOOK


# ----------------------------------------------------------------------------- the notebook's data

RESNET, VIT = "fashion_mnist-resnet20", "fashion_mnist-vit"
SMOKE_PLACEMENTS = {RESNET: ["all_conv", "fc"], VIT: ["attn_mlp"]}
SMOKE_MODEL = {RESNET: "resnet20", VIT: "vit"}


def test_runs_cover_every_method_placement_and_seed(run_dir):
    runs = paper.load_table(run_dir, "runs")
    assert set(runs.experiment) == {RESNET, VIT}
    for experiment, group in runs.groupby("experiment"):
        placements = sorted(group.placement.dropna().unique())
        assert placements == SMOKE_PLACEMENTS[experiment]
        expected = {"none"} | {arch.label(m, p) for m in ("dropout", "dropconnect", "ddc") for p in placements}
        assert set(group.variant) == expected
        assert (group.groupby("variant").seed.nunique() == 2).all()
        assert set(group.model) == {SMOKE_MODEL[experiment]}
        for row in group.itertuples():
            layers = json.loads(row.layers) if isinstance(row.layers, str) else None
            if row.method_label == "none":
                assert layers is None
            else:
                assert layers == arch.placement_layers(row.model, row.placement)
    vit_layers = json.loads(runs[runs.variant == "ddc@attn_mlp"].layers.iloc[0])
    assert vit_layers == [f"blocks.{b}.{n}" for b in range(4) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


def test_baselines_run_at_ddcs_measured_rate(run_dir):
    rates = paper.load_table(run_dir, "matched_rates").set_index(["experiment", "placement"])
    per_run = paper.load_table(run_dir, "ddc_drop_rates")
    runs = paper.load_table(run_dir, "runs")
    ddc_runs = runs[runs.method_label == "ddc"].set_index(["experiment", "placement"])
    for (experiment, placement), row in rates.iterrows():
        mine = ddc_runs.loc[[(experiment, placement)]]
        assert (row.p_base, row.p_signal, row.tau) == (mine.p_base.iloc[0], mine.p_signal.iloc[0], mine.tau.iloc[0])
        assert row.p_matched == pytest.approx(round(row.expected_rate, 3))
        assert row.expected_rate == pytest.approx(per_run[(per_run.experiment == experiment) & (per_run.placement == placement)].expected_rate.mean())
        assert row.ci_low <= row.expected_rate <= row.ci_high
        assert row.p_base <= row.expected_rate <= row.p_base + row.p_signal
        assert row.gaussian_rate == pytest.approx(arch.gaussian_drop_rate(row.p_base, row.p_signal, row.tau))
        for method in ("dropout", "dropconnect"):
            baseline = runs[(runs.experiment == experiment) & (runs.variant == arch.label(method, placement))]
            assert len(baseline) == 2 and (baseline.p == row.p_matched).all()
    # the ResNet runs DDC with the paper's options; the smoke ViT lays its own over them
    assert rates.loc[(RESNET, "fc"), "p_base"] == 0.3 and rates.loc[(VIT, "attn_mlp"), "p_base"] == 0.075
    assert rates.loc[(VIT, "attn_mlp"), "gaussian_rate"] < rates.loc[(RESNET, "fc"), "gaussian_rate"]


def test_drop_rates_recomputed_from_the_raw_records(run_dir):
    """Slow, obvious recomputation: read each DDC run's record parts, weight every layer by its edges."""
    runs = paper.load_table(run_dir, "runs_ddc")
    per_run = paper.load_table(run_dir, "ddc_drop_rates").set_index("run_id")
    for run, path in zip(runs.itertuples(), paper.run_paths(run_dir, runs)):
        model = dict(torch.nn.Module.named_modules(arch._build(run.model, "fashion_mnist")))
        records = pd.concat([pd.read_parquet(p) for p in sorted((path / "records").glob("part-*.parquet"))])
        total, weight = 0.0, 0
        for layer in json.loads(run.layers):
            values = records[(records.layer == layer) & (records.metric == "drop_prob_mean") & (records.step > 0)].value.dropna()
            edges = model[layer].weight.numel()
            total += values.mean() * edges
            weight += edges
        assert per_run.loc[run.run_id, "expected_rate"] == pytest.approx(total / weight, rel=1e-9)


def test_summary_intervals_and_contrasts(run_dir):
    summary = paper.load_table(run_dir, "summary")
    assert ((summary.ci_low <= summary["mean"] + 1e-12) & (summary["mean"] <= summary.ci_high + 1e-12)).all()
    runs = paper.load_table(run_dir, "runs").set_index(["experiment", "variant", "seed"]).test_acc
    tests = paper.load_table(run_dir, "verdicts")
    assert len(tests) == sum(len(p) for p in SMOKE_PLACEMENTS.values()) * len(arch.CONTRASTS)
    for row in tests.itertuples():
        mine = runs.loc[row.experiment]
        method = mine.loc["none"] if row.method == "none" else mine.loc[arch.label(row.method, row.placement)]
        base = mine.loc["none"] if row.baseline == "none" else mine.loc[arch.label(row.baseline, row.placement)]
        assert row.mean_diff == pytest.approx((method - base).mean())
        assert row.ci_low - 1e-12 <= row.mean_diff <= row.ci_high + 1e-12
        assert row.p_ttest <= row.p_holm <= 1 and row.verdict == "exploratory"  # 2 seeds at smoke
        assert row.family == ("primary" if (row.method, row.baseline) in arch.PRIMARY_CONTRASTS else "secondary")
    primary = tests[tests.family == "primary"]
    assert (primary.family_size == len(primary)).all()  # Holm over every experiment and placement
    regime_methods = paper.load_table(run_dir, "regime_methods")
    assert len(regime_methods) == paper.load_table(run_dir, "runs").groupby(["experiment", "variant"]).ngroups
    regime = paper.load_table(run_dir, "regime").set_index(["experiment", "metric"])
    none = paper.load_table(run_dir, "runs").query("method_label == 'none'")
    for (experiment, metric), row in regime.iterrows():
        assert row["n"] == 2
        assert row["mean"] == pytest.approx(none[none.experiment == experiment][metric].mean())
    assert set(regime.index.get_level_values("metric")) == {"final_train_acc", "test_acc", "generalization_gap"}


def test_batchnorm_statistics(run_dir):
    bn = paper.load_table(run_dir, "bn_stats")
    runs = paper.load_table(run_dir, "runs")
    resnet_runs = runs[runs.experiment == RESNET]
    n_bn = 1 + 9 * 2  # stem + two per block
    assert set(bn.experiment) == {RESNET}  # the ViT has no BatchNorm
    assert len(bn) == len(resnet_runs) * n_bn
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
    skip = paper.load_table(run_dir, "skip_stats")
    assert len(skip[skip.experiment == RESNET]) == len(resnet_runs) * 9
    vit_skip = skip[skip.experiment == VIT]
    assert len(vit_skip) == len(runs[runs.experiment == VIT]) * 8  # attention and MLP branch of 4 blocks
    assert set(vit_skip.block) == {f"blocks.{b}.{part}" for b in range(4) for part in ("attn", "mlp")}
    assert vit_skip.stage.isna().all() and (skip[skip.experiment == RESNET].stage >= 1).all()
    assert np.allclose(skip.ratio_train, skip.branch_std_train / skip.shortcut_std_train)
    # without masks train and eval mode compute the same ViT (no BatchNorm, no dropout of its own)
    vit_none = vit_skip[vit_skip.method == "none"]
    assert np.allclose(vit_none.ratio_train, vit_none.ratio_eval, rtol=1e-9)
    place = paper.load_table(run_dir, "bn_by_placement")
    assert set(place.placement) == {"all_conv"}  # fc feeds no BN layer
    assert (place.n_bn_layers == n_bn).all()
    summary = paper.load_table(run_dir, "bn_summary")
    assert ((summary.ci_low <= summary["mean"] + 1e-12) & (summary["mean"] <= summary.ci_high + 1e-12)).all()


def test_layer_dynamics(run_dir):
    dynamics = paper.load_table(run_dir, "drop_dynamics")
    assert {"drop_prob_mean", "realized_drop_rate"} <= set(dynamics.metric)
    layers = paper.load_table(run_dir, "layer_drop_summary")
    ddc_all = layers[(layers.method == "ddc") & (layers.placement == "all_conv")]
    assert set(ddc_all.layer) == set(arch.placement_layers("resnet20", "all_conv"))
    assert set(ddc_all.role) == {"stem", "conv1", "conv2"}
    assert ((ddc_all.drop_rate >= 0.3 - 1e-6) & (ddc_all.drop_rate <= 0.8 + 1e-6)).all()
    ddc_vit = layers[(layers.method == "ddc") & (layers.placement == "attn_mlp")]
    assert set(ddc_vit.layer) == set(arch.placement_layers("vit", "attn_mlp")) and set(ddc_vit.role) == {"attn", "mlp"}
    assert ((ddc_vit.drop_rate >= 0.075 - 1e-6) & (ddc_vit.drop_rate <= 0.2 + 1e-6)).all()
    assert (ddc_vit.layer_index >= 1).all()  # patch_embed.proj is layer 0
    dc = layers[layers.method == "dropconnect"]
    rates = paper.load_table(run_dir, "matched_rates").set_index(["experiment", "placement"]).p_matched
    assert np.allclose(dc.drop_rate, [rates.loc[key] for key in zip(dc.experiment, dc.placement)])  # DropConnect's expected rate is its p
    roles = paper.load_table(run_dir, "layer_role_contrast").set_index("experiment")
    assert roles.loc[RESNET, "placement"] == "all_conv" and (roles.loc[RESNET, "role"], roles.loc[RESNET, "baseline"]) == ("conv2", "conv1")
    assert roles.loc[VIT, "placement"] == "attn_mlp" and (roles.loc[VIT, "role"], roles.loc[VIT, "baseline"]) == ("mlp", "attn")
    vit = ddc_vit.groupby(["seed", "role"]).drop_rate.mean().unstack()
    assert roles.loc[VIT, "mean_diff"] == pytest.approx((vit["mlp"] - vit["attn"]).mean())


def test_conclusion_quotes_the_stored_numbers(run_dir):
    conclusion = json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"]
    assert isinstance(conclusion, list) and len(conclusion) == 2
    texts = dict(zip(sorted(SMOKE_PLACEMENTS), conclusion))
    assert all(text.startswith(f"{experiment}:") for experiment, text in texts.items())
    rates = paper.load_table(run_dir, "matched_rates")
    for row in rates.itertuples():
        assert f"p = {row.p_matched:.3f}" in texts[row.experiment]
        assert f"DDC on {row.placement} (p_base {row.p_base:g}, p_signal {row.p_signal:g}, tau {row.tau:g})" in texts[row.experiment]
    summary = paper.load_table(run_dir, "summary").set_index(["experiment", "variant"])
    for experiment, variant in ((RESNET, "none"), (RESNET, "ddc@fc"), (RESNET, "ddc@all_conv"), (VIT, "none"), (VIT, "ddc@attn_mlp")):
        s = summary.loc[(experiment, variant)]
        assert paper.format_ci(s["mean"], s.ci_low, s.ci_high) in texts[experiment]
    tests = paper.load_table(run_dir, "verdicts")
    for experiment, placement in ((RESNET, "fc"), (VIT, "attn_mlp")):
        row = tests[(tests.experiment == experiment) & (tests.method == "ddc") & (tests.baseline == "dropconnect") & (tests.placement == placement)].iloc[0]
        assert f"{row.mean_diff:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]" in texts[experiment]
    regime = paper.load_table(run_dir, "regime").set_index(["experiment", "metric"])
    gap = regime.loc[(VIT, "generalization_gap")]
    assert paper.format_ci(gap["mean"], gap.ci_low, gap.ci_high) in texts[VIT]
    role = paper.load_table(run_dir, "layer_role_contrast").set_index("experiment").loc[VIT]
    assert f"the MLP projections had a mean drop rate {role.mean_diff:+.4f} [{role.ci_low:+.4f}, {role.ci_high:+.4f}]" in texts[VIT]


def test_figures_rebuilt_from_stored_results(run_dir):
    names = {p.name for p in (run_dir / "figures").glob("*.png")}
    per_experiment = {RESNET: ("test_acc", "drop_dynamics", "layer_drop_rates", "bn_variance_shift", "skip_ratio"),
                      VIT: ("test_acc", "drop_dynamics", "layer_drop_rates", "skip_ratio")}
    expected = {f"{e}-{k}.png" for e, kinds in per_experiment.items() for k in kinds} | {"ddc_contrasts.png"}
    assert names == expected
    assert len(arch.figures(run_dir)) == 2 * len(names)
    assert arch.NOTEBOOK in paper.figure_functions()


# ----------------------------------------------------------------------------- unit tests


def test_placements():
    assert arch.placements_for("resnet18") == arch.RESNET_PLACEMENTS and arch.placements_for("vit") == arch.VIT_PLACEMENTS
    with pytest.raises(ValueError, match="model='mlp' has no placements"):
        arch.placements_for("mlp")
    assert arch.placement_layers("vit", "attn") == [f"blocks.{b}.attn.{n}" for b in range(4) for n in ("qkv", "proj")]
    assert arch.placement_layers("vit", "mlp") == [f"blocks.{b}.mlp.fc{n}" for b in range(4) for n in (1, 2)]
    assert arch.placement_layers("vit", "attn_mlp") == list(arch._build("vit", "fashion_mnist").ddc_layers)
    with pytest.raises(ValueError, match="placement='fc' does not apply to model 'vit'; choose one of attn, mlp, attn_mlp"):
        arch.placement_layers("vit", "fc")
    assert arch.layer_role("blocks.2.attn.qkv") == "attn" and arch.layer_role("blocks.0.mlp.fc2") == "mlp"
    assert arch.layer_role("layer1.0.conv2") == "conv2" and arch.layer_role("head") == "head"
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
    out = arch.contrasts(frame, value="acc").set_index(["method", "baseline"])
    wide = frame.pivot(index="seed", columns="method_label", values="acc")
    for method, baseline in arch.CONTRASTS:
        d = wide[method] - wide[baseline]
        assert out.loc[(method, baseline), "mean_diff"] == pytest.approx(d.mean())
        assert out.loc[(method, baseline), "p_ttest"] == pytest.approx(ttest_rel(wide[method], wide[baseline]).pvalue)
    assert (out.p_holm >= out.p_ttest).all() and set(out.verdict) <= {"better", "worse", "inconclusive"}  # 5 seeds
    assert (out.loc[list(arch.PRIMARY_CONTRASTS), "family"] == "primary").all()


def test_plan_placements_per_model_and_bad_input():
    experiments = {"r": {"recipe": "fashion_mnist-resnet20"}, "v": {"recipe": "fashion_mnist-vit"},
                   "r18": {"recipe": "fashion_mnist-resnet20", "model": "resnet18", "placements": ["all_conv"], "seeds": [0, 1, 7]}}
    planned = {e: (pl, s) for e, _, pl, s in arch.plan(experiments, None, [0, 1, 2], {"fashion_mnist"}, log=lambda *_: None)}
    assert planned == {"r": (list(arch.RESNET_PLACEMENTS), [0, 1, 2]), "v": (list(arch.VIT_PLACEMENTS), [0, 1, 2]),
                       "r18": (["all_conv"], [0, 1])}
    notes = []
    planned = arch.plan(experiments, ["mlp", "fc"], [0], {"fashion_mnist"}, log=notes.append)
    assert [(e, pl) for e, _, pl, _ in planned] == [("r", ["fc"]), ("v", ["mlp"]), ("r18", ["all_conv"])]
    assert not notes
    planned = arch.plan({"v": {"recipe": "fashion_mnist-vit"}}, ["fc"], [0], {"fashion_mnist"}, log=notes.append)
    assert planned == [] and "none of the placements ['fc'] applies to model 'vit'" in notes[0]
    with pytest.raises(ValueError, match="placements: 'everywhere' unknown; choose from fc, last_stage, all_conv, attn, mlp, attn_mlp"):
        arch.plan(experiments, ["everywhere"], [0], {"fashion_mnist"})
    with pytest.raises(ValueError, match="experiment 'v': placements \\['all_conv'\\] must be a non-empty list drawn from attn, mlp, attn_mlp"):
        arch.plan({"v": {"recipe": "fashion_mnist-vit", "placements": ["all_conv"]}}, None, [0], {"fashion_mnist"})
    with pytest.raises(ValueError, match="recipe='cifar10-vit' is not allowed; choose one of"):
        arch.plan({"v": {"recipe": "cifar10-vit"}}, None, [0], {"fashion_mnist"})


def test_ddc_spec_lays_experiment_options_over_the_notebook_ones():
    fields = {"recipe": "fashion_mnist-vit", "ddc_options": {"p_base": 0.1}, "epochs": 3}
    spec = arch.ddc_spec("v", fields, "smoke", ["attn"], [0], record_every=1, ddc_options={"p_base": 0.3, "tau": 0.4})
    variant = spec["methods"]["ddc@attn"]
    assert variant["method_options"] == {"p_base": 0.1, "tau": 0.4}
    assert variant["layers"] == arch.placement_layers("vit", "attn")
    assert spec["base"]["epochs"] == 3 and "ddc_options" not in spec["base"] and spec["base"]["recipe"] == "fashion_mnist-vit"
    with pytest.raises(ValueError, match="ddc_options must be a mapping"):
        arch.ddc_spec("v", {**fields, "ddc_options": 0.1}, "smoke", ["attn"], [0], record_every=1)


def test_role_contrast_for_both_families():
    rows = []
    rng = np.random.default_rng(0)
    for seed in range(3):
        for placement, roles in (("all_conv", ("conv1", "conv2", "stem")), ("attn_mlp", ("attn", "mlp"))):
            experiment = "r" if placement == "all_conv" else "v"
            for role in roles:
                for layer in range(2):
                    rows.append({"experiment": experiment, "method": "ddc", "placement": placement, "seed": seed, "role": role,
                                 "layer": f"{role}{layer}", "drop_rate": rng.uniform(0.3, 0.6)})
    frame = pd.DataFrame(rows)
    out = arch.role_contrast(frame, n_resamples=199).set_index("experiment")
    for experiment, role, baseline in (("r", "conv2", "conv1"), ("v", "mlp", "attn")):
        per_seed = frame[frame.experiment == experiment].groupby(["seed", "role"]).drop_rate.mean().unstack()
        assert out.loc[experiment, "mean_diff"] == pytest.approx((per_seed[role] - per_seed[baseline]).mean())
        assert (out.loc[experiment, "role"], out.loc[experiment, "baseline"]) == (role, baseline)
    assert arch.role_contrast(frame[frame.placement == "fc"]).empty


def test_every_figure_reads(run_dir):
    from notebook_checks import unreadable_figures

    assert unreadable_figures(run_dir, arch.figures) == {}


def test_executed_notebook_is_clean(run_dir):
    from notebook_checks import stray_outputs

    assert stray_outputs(run_dir / "06_oq_architectures.ipynb") == []
