"""Smoke and structure tests for analysis.figures on small synthetic frames."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402

from analysis import figures as F  # noqa: E402
from analysis import stats as S  # noqa: E402

METHODS = ["dropout", "dropconnect", "ddc"]
SEEDS = [0, 1, 2]
LAYERS = ["fc1", "fc2"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for m_i, m in enumerate(METHODS):
        for s in SEEDS:
            for p in [0.1, 0.3]:
                rows.append({"run_id": f"{m}-{s}-{p}", "method": m, "seed": s, "p_base": p,
                             "test_acc": 0.8 + 0.02 * m_i + 0.05 * p + rng.normal(0, 0.005)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def metrics(runs) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for rid in runs["run_id"]:
        for e in range(6):
            for split in ("train", "val"):
                rows.append({"run_id": rid, "epoch": e, "split": split, "metric": "acc",
                             "value": 1 - np.exp(-(e + 1) / 3) + rng.normal(0, 0.01)})
                rows.append({"run_id": rid, "epoch": e, "split": split, "metric": "loss",
                             "value": np.exp(-(e + 1) / 3) + rng.normal(0, 0.01)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def records(runs) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for rid, method in zip(runs["run_id"], runs["method"]):
        for step in range(0, 100, 10):
            for layer in LAYERS:
                base = 0.3 + 0.001 * step
                vals = {
                    "drop_prob_mean": base,
                    "realized_drop_rate": base + rng.normal(0, 0.01),
                    "mask_jaccard": 0.5 + rng.normal(0, 0.02),
                    "drop_prob_q10": base - 0.1,
                    "drop_prob_q50": base,
                    "drop_prob_q90": base + 0.1,
                }
                for metric, v in vals.items():
                    rows.append({"run_id": rid, "method": method, "step": step, "epoch": step // 50,
                                 "layer": layer, "metric": metric, "value": v})
    return pd.DataFrame(rows)


def _assert_saved(ax, tmp_path, name):
    paths = F.save_figure(ax, tmp_path / "figs" / name)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.exists() and p.stat().st_size > 0


def _means(ax):
    """x of the mean markers of a point-and-interval plot (one-point lines), top to bottom."""
    return [float(line.get_xdata()[0]) for line in ax.get_lines() if len(line.get_xdata()) == 1 and line.get_marker() not in ("|", "_")]


def test_learning_curves(metrics, runs, tmp_path):
    ax = F.learning_curves(metrics, runs, metric="acc", split="val")
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "validation accuracy"
    assert len(ax.get_lines()) >= len(METHODS)
    assert len(ax.collections) >= len(METHODS)  # one CI band per method
    legend = ax.get_legend()
    assert "95% bootstrap CI" in legend.get_title().get_text() and "6 runs each" in legend.get_title().get_text()
    # each method in its own colour, the same in every figure
    colours = {t.get_text(): h.get_color() for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert colours == {F.METHOD_STYLES[m].name: F.METHOD_STYLES[m].color for m in METHODS}
    assert F.layout_problems(ax.figure) == []
    _assert_saved(ax, tmp_path, "learning_curves")
    with pytest.raises(ValueError, match="split='test'"):
        F.learning_curves(metrics, runs, split="test")
    with pytest.raises(ValueError, match="runs"):
        F.learning_curves(metrics, None)


def test_learning_curve_grid_has_a_panel_per_label(metrics, runs):
    many = runs.assign(setting=[f"setting {i % 11}" for i in range(len(runs))])
    fig = F.learning_curve_grid(metrics, many, metric="acc", split="train", hue="setting", columns=4)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 11 and {ax.get_title() for ax in shown} == {f"setting {i}" for i in range(11)}
    assert F.layout_problems(fig) == []


def test_method_comparison(runs, tmp_path):
    ax = F.method_comparison(runs, value="test_acc", rng=0)
    # labels on the y axis with their n; the x label says what the bars are
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{F.METHOD_STYLES[m].name}  (n = 6)" for m in ["dropout", "dropconnect", "ddc"]]
    assert ax.get_xlabel().startswith("test accuracy") and "95% CI (t interval), n = 6 seeds" in ax.get_xlabel()
    # from a summarize() frame: same points as the stats module
    summ = S.summarize(runs, value="test_acc", by="method", rng=0)
    summ = summ.set_index("method").loc[["dropout", "dropconnect", "ddc"]].reset_index()  # the figures' method order
    assert np.allclose(_means(ax), summ["mean"])
    _, ax2 = plt.subplots()
    F.method_comparison(summ, ax=ax2)
    assert np.allclose(_means(ax2), summ["mean"])
    bars = [c for c in ax.containers]
    assert len(bars) == len(METHODS)
    for bar, row in zip(bars, summ.itertuples()):
        segment = bar.lines[2][0].get_segments()[0]
        assert np.allclose(sorted(segment[:, 0]), [row.ci_low, row.ci_high])
    assert F.layout_problems(ax.figure) == []
    _assert_saved(ax, tmp_path, "method_comparison")


def test_method_comparison_says_when_a_label_has_one_run(runs):
    one = pd.concat([runs, pd.DataFrame([{"method": "standout", "seed": 0, "test_acc": 0.8}])], ignore_index=True)
    ax = F.method_comparison(one, value="test_acc")
    assert "Standout  (n = 1, no interval)" in [t.get_text() for t in ax.get_yticklabels()]
    assert len(ax.containers) == len(METHODS)  # no bar for n = 1
    assert "n = 1-6 seeds" in ax.get_xlabel()


def test_one_style_per_method_everywhere():
    assert F.method_of("mc:ddc") == "ddc" and F.method_of("ddc@head") == "ddc" and F.method_of("det:none") == "none"
    assert F.method_of("normalize=none, scope=layer") is None  # an option's value is not a method
    assert F.method_of("ddc (normalize=none)") == "ddc"
    look = F.styles(["ddc@head", "ddc@all_conv", "dropconnect@head", "setting a", "setting b"])
    assert look["ddc@head"]["color"] == look["ddc@all_conv"]["color"] == F.METHOD_STYLES["ddc"].color
    assert look["ddc@head"]["linestyle"] != look["ddc@all_conv"]["linestyle"]
    assert look["setting a"]["color"] != look["setting b"]["color"]
    assert look["setting a"]["color"] not in {s.color for s in F.METHOD_STYLES.values()}
    assert F.styles(["setting a"])["setting a"] == F.styles(["setting a", "x"])["setting a"]  # the text picks it
    assert len({s.color for s in F.METHOD_STYLES.values()}) == len(F.METHOD_STYLES)


def test_axis_labels_are_words():
    assert F.axis_label("test_acc") == "test accuracy (at the best-validation epoch)"
    assert F.axis_label("acc", "val") == "validation accuracy" and F.axis_label("loss", "train") == "training loss"
    assert F.axis_label("some_column") == "some column"


def test_drop_rate_dynamics(records, tmp_path):
    ax = F.drop_rate_dynamics(records)
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "drop rate (fraction of edges)"
    assert len(ax.get_lines()) == 2 * len(METHODS) * len(LAYERS)
    _, ax1 = plt.subplots()
    F.drop_rate_dynamics(records, layer="fc1", ax=ax1)
    assert len(ax1.get_lines()) == 2 * len(METHODS)
    assert {line.get_color() for line in ax1.get_lines()} == {F.METHOD_STYLES[m].color for m in METHODS}
    # without a method column: per layer only; the runs table can supply it
    bare = records.drop(columns="method")
    assert len(F.drop_rate_dynamics(bare).get_lines()) == 2 * len(LAYERS)
    assert F.layout_problems(ax.figure) == []
    _assert_saved(ax, tmp_path, "drop_rate_dynamics")
    with pytest.raises(ValueError, match="layer"):
        F.drop_rate_dynamics(records, layer="nope")


def test_drop_prob_heatmap(records, tmp_path):
    ax = F.drop_prob_heatmap(records, layer="fc2")
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "quantile over the layer's edges"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["q10", "q50", "q90"]
    assert sum(isinstance(c, QuadMesh) for c in ax.collections) == 1
    _assert_saved(ax, tmp_path, "drop_prob_heatmap")
    with pytest.raises(ValueError, match="quantile"):
        F.drop_prob_heatmap(records[records["metric"] == "mask_jaccard"])


def test_mask_overlap(records, tmp_path):
    ax = F.mask_overlap(records)
    assert ax.get_xlabel() == "training step" and "Jaccard" in ax.get_ylabel()
    assert F.layout_problems(ax.figure) == []
    assert len(ax.get_lines()) == len(METHODS) * len(LAYERS)
    _assert_saved(ax, tmp_path, "mask_overlap")


def test_grad_vs_drop(tmp_path):
    rng = np.random.default_rng(0)
    g = np.abs(rng.normal(size=(64, 32)))
    p = 1 / (1 + np.exp(3 * np.log(g)))
    ax = F.grad_vs_drop(g, p)
    assert ax.get_xlabel().startswith("|gradient| (log scale)\nSpearman ρ = ") and ax.get_ylabel() == "drop probability"
    assert len(ax.collections) == 1
    assert "over 2048 edges" in ax.get_xlabel()
    _, ax2 = plt.subplots()
    F.grad_vs_drop(g, p, kind="scatter", ax=ax2)
    assert ax2.get_xscale() == "log"
    _assert_saved(ax, tmp_path, "grad_vs_drop")
    with pytest.raises(ValueError, match="differ in size"):
        F.grad_vs_drop(g, p[:10])


def test_ablation_heatmap(runs, tmp_path):
    cells = runs[["method", "p_base"]].drop_duplicates()
    pv = cells.assign(pvalue=np.where(cells["method"] == "ddc", 0.01, 0.5))
    ax = F.ablation_heatmap(runs, x="p_base", y="method", value="test_acc", pvalues=pv, default={"p_base": 0.3, "method": "ddc"})
    assert ax.get_xlabel().startswith("p_base\ncells: mean ± half-width of the 95% CI, n = 3 runs each")
    assert ax.get_ylabel() == "method"
    texts = [t.get_text() for t in ax.texts if t.get_text() != "default"]
    assert len(texts) == len(cells)
    assert sum("*" in t for t in texts) == 2  # the two ddc cells
    # each cell: its mean and the half-width of its interval, as the stats module gives them
    summary = S.summarize(runs, value="test_acc", by=["method", "p_base"]).set_index(["method", "p_base"])
    row = summary.loc[("dropout", 0.1)]
    assert f"{row['mean']:.3f}\n±{(row.ci_high - row.ci_low) / 2:.3f}" in texts
    # the default cell is outlined and labelled
    outlined = [p for p in ax.patches if p.get_linewidth() >= 3]
    assert len(outlined) == 1 and outlined[0].get_xy() == (1, 0) and "default" in [t.get_text() for t in ax.texts]
    F.save_figure(ax, tmp_path / "heat", formats=("png",))  # wraps labels longer than their axes
    assert F.layout_problems(ax.figure) == []
    # column form
    merged = runs.merge(pv, on=["method", "p_base"])
    _, ax2 = plt.subplots()
    F.ablation_heatmap(merged, x="p_base", y="method", value="test_acc", pvalues="pvalue", ax=ax2)
    assert sorted(t.get_text() for t in ax2.texts) == sorted(texts)
    _assert_saved(ax, tmp_path, "ablation_heatmap")


def test_critical_difference_diagram(runs, tmp_path):
    df = runs[runs["p_base"] == 0.1]
    ranks, cliques, cd = S.critical_difference(df, value="test_acc", block_col="seed")
    ax = F.critical_difference_diagram(ranks, cliques, cd)
    assert "average rank" in ax.get_xlabel()
    assert len(ax.get_lines()) >= len(ranks) + len(cliques) + 1
    assert any(t.get_text().startswith("CD = ") for t in ax.texts)
    labels = " ".join(t.get_text() for t in ax.texts)
    assert all(F.display_name(m) in labels for m in METHODS)
    _assert_saved(ax, tmp_path, "cd_diagram")


def test_synthetic_contours(tmp_path):
    rng = np.random.default_rng(0)
    w_star = np.array([1.0, -0.5])
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    rows = []
    for m, rate in [("sgd", 0.1), ("ddc", 0.2)]:
        for s in SEEDS:
            w = np.array([-1.0, 1.0]) + rng.normal(0, 0.05, 2)
            for step in range(20):
                d = w - w_star
                rows.append({"method": m, "seed": s, "step": step, "w1": w[0], "w2": w[1],
                             "loss": float(d @ cov @ d)})
                w = w - rate * 2 * cov @ d
    traj = pd.DataFrame(rows)
    ax = F.synthetic_contours(traj, true_w=w_star, cov=cov)
    assert ax.get_xlabel() == "weight w1" and ax.get_ylabel() == "weight w2"
    assert F.layout_problems(ax.figure) == []
    assert len(ax.get_lines()) == 2
    _assert_saved(ax, tmp_path, "synthetic")

    def loss_fn(a, b):
        return (a - 1.0) ** 2 + 2 * (b + 0.5) ** 2

    _, ax2 = plt.subplots()
    F.synthetic_contours(traj, loss_fn=loss_fn, ax=ax2)
    assert len(ax2.get_lines()) == 2
    with pytest.raises(ValueError, match="exactly one"):
        F.synthetic_contours(traj)


def test_save_figure_paths(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = F.save_figure(fig, tmp_path / "a" / "b" / "fig_p0.5", formats=("png",))
    assert paths == [tmp_path / "a" / "b" / "fig_p0.5.png"] and paths[0].stat().st_size > 0
    # pdf output is reproducible byte for byte
    p1 = F.save_figure(fig, tmp_path / "x1", formats=("pdf",))[0].read_bytes()
    p2 = F.save_figure(fig, tmp_path / "x2", formats=("pdf",))[0].read_bytes()
    assert p1 == p2
    with pytest.raises(ValueError, match="fig_or_ax"):
        F.save_figure("not a figure", tmp_path / "z")


def test_summary_figures_follow_the_convention(tmp_path):
    """Kaplan-Meier curves, aggregates, performance profiles, P(X > Y), variance by source: method colours,
    legends outside the data, nothing that does not read."""
    steps = np.arange(0, 30)
    km = pd.concat([pd.DataFrame({"method": m, "time": steps, "survival": np.exp(-steps / r), "ci_low": np.exp(-steps / r) * 0.8,
                                  "ci_high": np.minimum(np.exp(-steps / r) * 1.2, 1)}) for m, r in (("ddc", 5), ("dropconnect", 9))])
    ax = F.km_curves(km, group="method")
    assert {line.get_color() for line in ax.get_lines()} == {F.METHOD_STYLES["ddc"].color, F.METHOD_STYLES["dropconnect"].color}
    agg = pd.DataFrame([{"method": m, "aggregate": a, "estimate": e, "ci_low": e - 0.1, "ci_high": e + 0.1}
                        for m, e in (("none", 0.2), ("ddc", 0.5)) for a in ("IQM", "mean")])
    profiles = pd.DataFrame([{"method": m, "threshold": t, "fraction": 1 - t, "ci_low": 0.9 - t, "ci_high": min(1.0, 1.1 - t)}
                             for m in ("none", "ddc") for t in np.linspace(0, 0.8, 9)])
    poi = pd.DataFrame([{"x": "ddc", "y": "none", "estimate": 0.7, "ci_low": 0.55, "ci_high": 0.85}])
    variance = pd.DataFrame({"source": ["data", "init", "all"], "sd": [0.02, 0.01, 0.025], "variance_low": [2e-4, 5e-5, 4e-4],
                             "variance_high": [9e-4, 3e-4, 1.2e-3], "n": 8})
    drawn = [ax, F.aggregate_intervals(agg), F.performance_profiles(profiles), F.probability_of_improvement(poi),
             F.variance_by_source(variance)]
    for number, axes in enumerate(drawn):
        F.save_figure(axes, tmp_path / f"summary-{number}", formats=("png",))
        assert F.layout_problems(axes.figure) == [], number
    assert [t.get_text() for t in drawn[1].get_yticklabels()] == ["no drop", "DDC"]
