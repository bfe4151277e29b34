"""Figures for Dynamic DropConnect experiments (matplotlib + seaborn).

Conventions
    * Every plot function takes ``ax=None`` (a new figure is created when None)
      and returns the :class:`matplotlib.axes.Axes` it drew on, with axis labels set.
    * Inputs are the run store's tidy frames (see each docstring for columns);
      nothing here imports the trainer.
    * Statistics come from :mod:`analysis.stats` (e.g. :func:`method_comparison`
      calls :func:`analysis.stats.summarize`), so a figure never disagrees with a
      table. Randomness (bootstrap bands) takes an explicit ``rng``/``seed``.
    * Nothing is written to disk implicitly: call :func:`save_figure`.
    * The matplotlib backend is never set here; scripts/tests choose it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from . import stats as _stats

__all__ = [
    "ablation_heatmap",
    "critical_difference_diagram",
    "drop_prob_heatmap",
    "drop_rate_dynamics",
    "grad_vs_drop",
    "learning_curves",
    "mask_overlap",
    "method_comparison",
    "save_figure",
    "synthetic_contours",
]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _get_ax(ax: Axes | None, figsize: tuple[float, float] = (6.0, 4.0)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _require(df: Any, cols: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"`{what}` must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"`{what}` is missing required column(s) {missing}; available: {list(df.columns)}")


def _attach(df: pd.DataFrame, runs: pd.DataFrame | None, col: str | None, what: str) -> pd.DataFrame:
    """Make sure ``col`` is a column of ``df``, joining it from ``runs`` on run_id if needed."""
    if col is None or col in df.columns:
        return df
    if runs is None:
        raise ValueError(
            f"`{what}` has no column {col!r}; pass the runs table (`runs_df`/`runs`) to join it on run_id"
        )
    _require(runs, ["run_id", col], "runs")
    _require(df, ["run_id"], what)
    return df.merge(runs[["run_id", col]].drop_duplicates("run_id"), on="run_id", how="left", validate="m:1")


def _filter_layer(records: pd.DataFrame, layer: Any) -> pd.DataFrame:
    if layer is None:
        return records
    layers = [layer] if isinstance(layer, (str, int)) else list(layer)
    out = records[records["layer"].isin(layers)]
    if out.empty:
        raise ValueError(f"no records for layer={layer!r}; available layers: {sorted(records['layer'].unique().tolist(), key=str)}")
    return out


def _select_metric(records: pd.DataFrame, metrics: Sequence[str], what: str = "records") -> pd.DataFrame:
    out = records[records["metric"].isin(metrics)]
    if out.empty:
        raise ValueError(
            f"`{what}` has no rows with metric in {list(metrics)}; available metrics: "
            f"{sorted(records['metric'].unique().tolist())}"
        )
    return out


def _group_cols(records: pd.DataFrame, hue: str | None) -> list[str]:
    cols = []
    if hue is not None and hue in records.columns:
        cols.append(hue)
    if "layer" in records.columns:
        cols.append("layer")
    return cols


def _label(key: Any) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return " / ".join(str(k) for k in key)


def _colors(n: int) -> list[Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return [cycle[i % len(cycle)] for i in range(n)]


# --------------------------------------------------------------------------- #
# training curves and method comparison
# --------------------------------------------------------------------------- #
def learning_curves(
    metrics_df: pd.DataFrame,
    runs_df: pd.DataFrame | None = None,
    *,
    metric: str = "acc",
    split: str = "val",
    hue: str = "method",
    seed: int = 0,
    n_boot: int = 1000,
    ax: Axes | None = None,
) -> Axes:
    """Mean learning curve per ``hue`` level with 95% bootstrap CI bands across runs.

    ``metrics_df``: long epoch metrics ``run_id, epoch, split, metric, value``.
    ``runs_df``: runs table with ``run_id`` and ``hue`` (not needed when
    ``metrics_df`` already has the ``hue`` column). Bands are seaborn's percentile
    bootstrap of the mean over runs at each epoch (``errorbar=("ci", 95)``) with a
    fixed ``seed`` so the figure is reproducible. One line per ``hue`` level.
    """
    _require(metrics_df, ["run_id", "epoch", "split", "metric", "value"], "metrics_df")
    import seaborn as sns

    d = metrics_df[(metrics_df["split"] == split) & (metrics_df["metric"] == metric)]
    if d.empty:
        raise ValueError(
            f"no rows with split={split!r} and metric={metric!r}; available splits "
            f"{sorted(metrics_df['split'].unique().tolist())}, metrics {sorted(metrics_df['metric'].unique().tolist())}"
        )
    d = _attach(d, runs_df, hue, "metrics_df")
    # one value per run and epoch (guards against duplicated logging)
    d = d.groupby([hue, "run_id", "epoch"], as_index=False, sort=True)["value"].mean()
    ax = _get_ax(ax)
    sns.lineplot(
        data=d, x="epoch", y="value", hue=hue, hue_order=sorted(d[hue].unique(), key=str),
        errorbar=("ci", 95), n_boot=n_boot, seed=seed, estimator="mean", ax=ax,
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{split} {metric}")
    ax.set_title(f"{split} {metric} (mean, 95% CI over runs)")
    return ax


def method_comparison(
    summary_or_runs_df: pd.DataFrame,
    *,
    value: str = "test_acc",
    method_col: str = "method",
    rng: np.random.Generator | int | None = None,
    order: Sequence[Any] | None = None,
    confidence_level: float = 0.95,
    show_points: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Per-method mean with confidence-interval error bars.

    Accepts either the output of :func:`analysis.stats.summarize` (columns
    ``method_col, mean, ci_low, ci_high``) or a runs table (columns ``method_col``
    and ``value``), in which case it is summarised with
    :func:`analysis.stats.summarize` (t intervals; ``rng`` is accepted and unused)
    and the raw per-run values are drawn as faint points (``show_points``).
    """
    df = summary_or_runs_df
    _require(df, [method_col], "summary_or_runs_df")
    raw = None
    if {"mean", "ci_low", "ci_high"} <= set(df.columns):
        summary = df
    else:
        _require(df, [value], "summary_or_runs_df")
        summary = _stats.summarize(df, value=value, by=method_col, confidence_level=confidence_level)
        raw = df
    if summary[method_col].duplicated().any():
        raise ValueError(f"summary has several rows per {method_col!r}; summarise by {method_col!r} only")
    if order is None:
        order = list(summary[method_col])
    missing = [m for m in order if m not in set(summary[method_col])]
    if missing:
        raise ValueError(f"`order` has methods not in the data: {missing}")
    s = summary.set_index(method_col).loc[list(order)]
    x = np.arange(len(order))
    ax = _get_ax(ax)
    if raw is not None and show_points:
        for i, m in enumerate(order):
            v = raw.loc[raw[method_col] == m, value].to_numpy(float)
            offs = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(1)
            ax.scatter(x[i] + offs, v, s=12, color="0.6", alpha=0.7, zorder=1)
    mean = s["mean"].to_numpy(float)
    lo, hi = s["ci_low"].to_numpy(float), s["ci_high"].to_numpy(float)
    yerr = np.vstack([mean - lo, hi - mean])
    yerr = np.where(np.isfinite(yerr), yerr, 0.0)
    ax.errorbar(x, mean, yerr=yerr, fmt="o", color="k", capsize=4, zorder=2)
    ax.set_xticks(x)
    ax.set_xticklabels([str(m) for m in order])
    ax.set_xlabel(method_col)
    ax.set_ylabel(value)
    cl = summary["confidence_level"].iloc[0] if "confidence_level" in summary.columns else confidence_level
    kind = {"t": "t", "BCa": "bootstrap", "percentile": "bootstrap"}.get(
        str(summary["ci_method"].iloc[0]) if "ci_method" in summary.columns else "", "")
    ax.set_title(f"{value}: mean and {100 * float(cl):.0f}% {kind + ' ' if kind else ''}CI")
    return ax


# --------------------------------------------------------------------------- #
# recorder records
# --------------------------------------------------------------------------- #
def drop_rate_dynamics(
    records: pd.DataFrame,
    *,
    layer: Any = None,
    hue: str | None = "method",
    runs: pd.DataFrame | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Expected (``drop_prob_mean``, solid) vs realised (``realized_drop_rate``,
    dashed) drop rate over training steps.

    ``records``: recorder records ``run_id, step, epoch, layer, metric, value``
    (optionally with a ``hue`` column such as ``method``; if absent and ``runs`` is
    given it is joined on ``run_id``; if neither, curves are per layer only).
    ``layer`` restricts to one layer or a list. Values are averaged over runs per
    (hue, layer, step); one colour per (hue, layer) group, two lines each.
    """
    _require(records, ["step", "layer", "metric", "value"], "records")
    if hue is not None and hue not in records.columns and runs is not None:
        records = _attach(records, runs, hue, "records")
    d = _filter_layer(_select_metric(records, ["drop_prob_mean", "realized_drop_rate"]), layer)
    groups = _group_cols(d, hue)
    mean = d.groupby([*groups, "metric", "step"], sort=True)["value"].mean().reset_index()
    parts = list(mean.groupby(groups, sort=True)) if groups else [((), mean)]
    ax = _get_ax(ax)
    styles = {"drop_prob_mean": ("-", "expected"), "realized_drop_rate": ("--", "realised")}
    for color, (key, g) in zip(_colors(len(parts)), parts):
        for metric, (ls, name) in styles.items():
            gm = g[g["metric"] == metric]
            if len(gm):
                ax.plot(gm["step"], gm["value"], ls=ls, color=color, label=f"{_label(key)} ({name})" if groups else name)
    ax.set_xlabel("step")
    ax.set_ylabel("drop rate")
    ax.set_title("expected (solid) vs realised (dashed) drop rate")
    ax.legend(fontsize="small")
    return ax


def drop_prob_heatmap(
    records: pd.DataFrame,
    *,
    layer: Any = None,
    prefix: str = "drop_prob",
    cmap: str = "viridis",
    ax: Axes | None = None,
) -> Axes:
    """Quantiles of the per-weight drop probability over time as a heat-map.

    ``records``: recorder records with metrics ``{prefix}_q<NN>`` (e.g.
    ``drop_prob_q10``, ``drop_prob_q50``, ``drop_prob_q90``). Values are averaged
    over runs (and over layers unless ``layer`` selects some). Rows are quantiles
    (ascending), columns are steps; colour is the drop probability.
    """
    _require(records, ["step", "metric", "value"], "records")
    pat = re.compile(rf"^{re.escape(prefix)}_q(\d+)$")
    qmetrics = sorted({m for m in records["metric"].unique() if pat.match(str(m))}, key=lambda m: int(pat.match(m).group(1)))
    if not qmetrics:
        raise ValueError(f"`records` has no quantile metrics named '{prefix}_q<NN>' (e.g. '{prefix}_q50')")
    d = records[records["metric"].isin(qmetrics)]
    if layer is not None:
        _require(records, ["layer"], "records")
        d = _filter_layer(d, layer)
    grid = d.pivot_table(index="metric", columns="step", values="value", aggfunc="mean").loc[qmetrics]
    steps = grid.columns.to_numpy(float)
    ax = _get_ax(ax)
    mesh = ax.pcolormesh(steps, np.arange(len(qmetrics)), grid.to_numpy(float), shading="nearest", cmap=cmap)
    ax.set_yticks(np.arange(len(qmetrics)))
    ax.set_yticklabels([f"q{pat.match(m).group(1)}" for m in qmetrics])
    ax.figure.colorbar(mesh, ax=ax, label=prefix.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("quantile")
    ax.set_title(f"{prefix.replace('_', ' ')} quantiles over training")
    return ax


def mask_overlap(
    records: pd.DataFrame,
    *,
    layer: Any = None,
    hue: str | None = "method",
    runs: pd.DataFrame | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Jaccard overlap of consecutive drop masks (``mask_jaccard``) over steps.

    ``records``: recorder records ``run_id, step, layer, metric, value``; averaged
    over runs per (hue, layer, step); one line per (hue, layer) group.
    """
    _require(records, ["step", "layer", "metric", "value"], "records")
    if hue is not None and hue not in records.columns and runs is not None:
        records = _attach(records, runs, hue, "records")
    d = _filter_layer(_select_metric(records, ["mask_jaccard"]), layer)
    groups = _group_cols(d, hue)
    mean = d.groupby([*groups, "step"], sort=True)["value"].mean().reset_index()
    ax = _get_ax(ax)
    if groups:
        for key, g in mean.groupby(groups, sort=True):
            ax.plot(g["step"], g["value"], label=_label(key))
        ax.legend(fontsize="small")
    else:
        ax.plot(mean["step"], mean["value"])
    ax.set_xlabel("step")
    ax.set_ylabel("mask Jaccard overlap")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("overlap of consecutive drop masks")
    return ax


def grad_vs_drop(
    snapshot_grad_abs: np.ndarray,
    snapshot_drop_prob: np.ndarray,
    *,
    kind: str = "hexbin",
    gridsize: int = 40,
    log_grad: bool = True,
    annotate: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """|gradient| vs drop probability for the weights of one layer (one snapshot).

    ``snapshot_grad_abs`` and ``snapshot_drop_prob``: arrays of the same number of
    elements (any shape; flattened). ``kind`` is ``"hexbin"`` (counts, log colour
    scale) or ``"scatter"``. With ``log_grad`` the x axis is log-scaled and
    non-positive gradients are left out of the plot. ``annotate`` writes Spearman's
    rank correlation (all finite pairs) in the corner.
    """
    g = np.asarray(snapshot_grad_abs, dtype=float).reshape(-1)
    p = np.asarray(snapshot_drop_prob, dtype=float).reshape(-1)
    if g.size != p.size:
        raise ValueError(f"snapshot_grad_abs ({g.size} elements) and snapshot_drop_prob ({p.size}) differ in size")
    if kind not in ("hexbin", "scatter"):
        raise ValueError(f"`kind` must be 'hexbin' or 'scatter', got {kind!r}")
    ok = np.isfinite(g) & np.isfinite(p)
    if ok.sum() < 2:
        raise ValueError("need at least 2 finite (|g|, p) pairs")
    ax = _get_ax(ax)
    show = ok & (g > 0) if log_grad else ok
    gx, py = g[show], p[show]
    if kind == "hexbin":
        hb = ax.hexbin(gx, py, gridsize=gridsize, xscale="log" if log_grad else "linear", bins="log", mincnt=1, cmap="viridis")
        ax.figure.colorbar(hb, ax=ax, label="count")
    else:
        ax.scatter(gx, py, s=4, alpha=0.4)
        if log_grad:
            ax.set_xscale("log")
    if annotate:
        from scipy.stats import spearmanr

        rho = spearmanr(g[ok], p[ok]).statistic
        ax.text(0.02, 0.97, f"Spearman ρ = {rho:.3f}", transform=ax.transAxes, va="top", ha="left", fontsize="small")
    ax.set_xlabel("|gradient|")
    ax.set_ylabel("drop probability")
    return ax


# --------------------------------------------------------------------------- #
# ablations and rankings
# --------------------------------------------------------------------------- #
def ablation_heatmap(
    df: pd.DataFrame,
    *,
    x: str,
    y: str,
    value: str,
    pvalues: str | pd.DataFrame | None = None,
    p_col: str = "pvalue",
    alpha: float = 0.05,
    fmt: str = ".3f",
    cmap: str = "viridis",
    ax: Axes | None = None,
) -> Axes:
    """Mean ``value`` per (``y``, ``x``) cell, with ``*`` marking significant cells.

    ``df``: long frame with columns ``x``, ``y`` and numeric ``value`` (several rows
    per cell, e.g. seeds, are averaged). ``pvalues`` is either the name of a column
    of ``df`` (one p-value per cell, e.g. from :func:`analysis.stats.paired_comparison`
    merged in) or a frame with columns ``x``, ``y`` and ``p_col``; cells with
    ``p < alpha`` get a ``*`` after the annotated mean.
    """
    _require(df, [x, y, value], "df")
    mean = df.pivot_table(index=y, columns=x, values=value, aggfunc="mean", sort=True)
    text = np.vectorize(lambda v: "" if not np.isfinite(v) else format(v, fmt))(mean.to_numpy(float)).astype(object)
    if pvalues is not None:
        if isinstance(pvalues, str):
            _require(df, [pvalues], "df")
            pf = df[[x, y, pvalues]].rename(columns={pvalues: "_p"})
        else:
            _require(pvalues, [x, y, p_col], "pvalues")
            pf = pvalues[[x, y, p_col]].rename(columns={p_col: "_p"})
        nun = pf.groupby([y, x])["_p"].nunique()
        if (nun > 1).any():
            raise ValueError(f"p-values must be unique per ({y!r}, {x!r}) cell; got several for {list(nun[nun > 1].index[:3])}")
        pgrid = pf.pivot_table(index=y, columns=x, values="_p", aggfunc="first", sort=True).reindex(
            index=mean.index, columns=mean.columns
        )
        sig = (pgrid.to_numpy(float) < alpha)
        text = np.where(sig & (text != ""), text + "*", text)
    import seaborn as sns

    ax = _get_ax(ax)
    sns.heatmap(mean, annot=text, fmt="", cmap=cmap, ax=ax, cbar_kws={"label": f"mean {value}"})
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    title = f"mean {value}"
    if pvalues is not None:
        title += f" (* p < {alpha:g})"
    ax.set_title(title)
    return ax


def critical_difference_diagram(
    ranks: pd.DataFrame,
    cliques: Sequence[Sequence[Any]],
    cd: float,
    *,
    method_col: str = "method",
    rank_col: str = "mean_rank",
    ax: Axes | None = None,
) -> Axes:
    """Demšar-style critical-difference diagram.

    Takes the outputs of :func:`analysis.stats.critical_difference`: ``ranks``
    (columns ``method_col`` and ``rank_col``), ``cliques`` (lists of method labels
    not significantly different; drawn as thick bars) and ``cd`` (drawn as a
    bar of that length above the axis). Best (lowest) ranks are on the left.
    """
    _require(ranks, [method_col, rank_col], "ranks")
    r = ranks.sort_values(rank_col, kind="stable")
    names, vals = list(r[method_col]), r[rank_col].to_numpy(float)
    k = len(names)
    if k < 2:
        raise ValueError("need at least 2 methods in `ranks`")
    unknown = [m for c in cliques for m in c if m not in set(names)]
    if unknown:
        raise ValueError(f"cliques mention methods not in `ranks`: {unknown}")
    lo, hi = 1, max(k, int(np.ceil(vals.max())))
    n_left = (k + 1) // 2
    step = 0.22
    ax = _get_ax(ax, figsize=(7.0, 1.2 + 0.3 * n_left))
    # axis and ticks
    ax.plot([lo, hi], [0, 0], color="k", lw=1)
    for t in range(lo, hi + 1):
        ax.plot([t, t], [0, 0.06], color="k", lw=1)
        ax.text(t, 0.1, str(t), ha="center", va="bottom", fontsize="small")
    # method connectors and labels
    for i, (m, v) in enumerate(zip(names, vals)):
        if i < n_left:
            yv, xe, ha = -(i + 1) * step - 0.15, lo - 0.3, "right"
        else:
            yv, xe, ha = -(k - i) * step - 0.15, hi + 0.3, "left"
        ax.plot([v, v, xe], [0, yv, yv], color="k", lw=0.8)
        ax.text(xe + (-0.05 if ha == "right" else 0.05), yv, f"{m} ({v:.2f})", ha=ha, va="center", fontsize="small")
    # cliques
    for j, c in enumerate(cliques):
        cv = [vals[names.index(m)] for m in c]
        yc = -0.07 - j * 0.06
        ax.plot([min(cv) - 0.03, max(cv) + 0.03], [yc, yc], color="k", lw=3, solid_capstyle="round")
    # CD bar
    ax.plot([lo, lo + cd], [0.45, 0.45], color="k", lw=1.5)
    for e in (lo, lo + cd):
        ax.plot([e, e], [0.41, 0.49], color="k", lw=1.5)
    ax.text(lo + cd / 2, 0.52, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize="small")
    ax.set_xlim(lo - 1.8, hi + 1.8)
    ax.set_ylim(-(n_left + 1) * step - 0.2, 0.8)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_visible(False)
    ax.set_xticks([])
    ax.set_xlabel("average rank (lower is better)")
    return ax


# --------------------------------------------------------------------------- #
# synthetic regression
# --------------------------------------------------------------------------- #
def synthetic_contours(
    trajectories: pd.DataFrame,
    *,
    loss_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    true_w: Sequence[float] | np.ndarray | None = None,
    cov: np.ndarray | None = None,
    noise_var: float = 0.0,
    method_col: str = "method",
    levels: int = 15,
    grid_size: int = 150,
    padding: float = 0.15,
    ax: Axes | None = None,
) -> Axes:
    """Loss contours of a 2-D linear regression with each method's mean trajectory.

    ``trajectories``: long frame ``method, seed, step, w1, w2[, loss]``; the mean
    (w1, w2) over seeds at each step is drawn per method (start ``o``, end ``x``).
    The surface is either ``loss_fn(W1, W2)`` (vectorised over equal-shape grids) or,
    given ``true_w`` (2,) and ``cov`` (2, 2) of the inputs, the population MSE
    ``(w − w*)ᵀ Σ (w − w*) + noise_var``. Contour levels are spaced quadratically
    between the grid's min and max so the bowl's rings look even.
    """
    _require(trajectories, [method_col, "step", "w1", "w2"], "trajectories")
    if (loss_fn is None) == (true_w is None or cov is None):
        raise ValueError("pass exactly one of `loss_fn` or both `true_w` and `cov`")
    mean = trajectories.groupby([method_col, "step"], sort=True)[["w1", "w2"]].mean().reset_index()
    pts = [mean[["w1", "w2"]].to_numpy(float)]
    if true_w is not None:
        tw = np.asarray(true_w, dtype=float).reshape(-1)
        c = np.asarray(cov, dtype=float)
        if tw.shape != (2,) or c.shape != (2, 2):
            raise ValueError(f"`true_w` must have shape (2,) and `cov` (2, 2), got {tw.shape} and {c.shape}")
        pts.append(tw[None, :])
    allp = np.vstack(pts)
    pmin, pmax = allp.min(axis=0), allp.max(axis=0)
    span = np.where(pmax - pmin > 0, pmax - pmin, 1.0)
    lo, hi = pmin - padding * span, pmax + padding * span
    W1, W2 = np.meshgrid(np.linspace(lo[0], hi[0], grid_size), np.linspace(lo[1], hi[1], grid_size))
    if loss_fn is not None:
        Z = np.asarray(loss_fn(W1, W2), dtype=float)
        if Z.shape != W1.shape:
            Z = np.vectorize(lambda a, b: float(loss_fn(a, b)))(W1, W2)
    else:
        D = np.stack([W1 - tw[0], W2 - tw[1]], axis=-1)
        Z = np.einsum("...i,ij,...j->...", D, c, D) + noise_var
    zmin, zmax = np.nanmin(Z), np.nanmax(Z)
    if not np.isfinite(zmin) or not np.isfinite(zmax) or zmax <= zmin:
        raise ValueError("the loss surface is constant or not finite on the plotted grid")
    lv = zmin + (zmax - zmin) * np.linspace(0.0, 1.0, levels + 1)[1:] ** 2
    ax = _get_ax(ax, figsize=(5.5, 5.0))
    ax.contour(W1, W2, Z, levels=lv, colors="0.6", linewidths=0.7)
    methods = sorted(mean[method_col].unique(), key=str)
    for color, m in zip(_colors(len(methods)), methods):
        g = mean[mean[method_col] == m]
        ax.plot(g["w1"], g["w2"], color=color, lw=1.5, label=str(m))
        ax.scatter(g["w1"].iloc[[0]], g["w2"].iloc[[0]], color=color, marker="o", s=20, zorder=3)
        ax.scatter(g["w1"].iloc[[-1]], g["w2"].iloc[[-1]], color=color, marker="x", s=30, zorder=3)
    if true_w is not None:
        ax.scatter([tw[0]], [tw[1]], marker="*", s=120, color="k", zorder=4, label="w*")
    ax.set_xlabel("w1")
    ax.set_ylabel("w2")
    ax.set_title("loss contours and mean trajectories")
    ax.legend(fontsize="small")
    return ax


# --------------------------------------------------------------------------- #
# saving
# --------------------------------------------------------------------------- #
def save_figure(
    fig_or_ax: Figure | Axes | Any,
    path: str | Path,
    formats: Sequence[str] = ("png", "pdf"),
    *,
    dpi: int = 150,
    bbox_inches: str | None = "tight",
) -> list[Path]:
    """Save a figure (or the figure of an Axes) as ``<path>.<fmt>`` for each format.

    ``path`` is given *without* suffix (a name like ``"fig_p0.5"`` is kept whole).
    Parent directories are created. PDFs are written without a creation date so
    repeated saves are byte-identical. Returns the list of written paths.
    """
    if isinstance(formats, str):
        formats = (formats,)
    formats = [str(f).lower().lstrip(".") for f in formats]
    if not formats:
        raise ValueError("`formats` must name at least one format, e.g. ('png', 'pdf')")
    if isinstance(fig_or_ax, np.ndarray):
        fig_or_ax = fig_or_ax.flat[0]
    if isinstance(fig_or_ax, (Figure, SubFigure)):
        fig = fig_or_ax.figure if isinstance(fig_or_ax, SubFigure) else fig_or_ax
    elif isinstance(fig_or_ax, Axes):
        fig = fig_or_ax.figure
    else:
        raise ValueError(f"`fig_or_ax` must be a matplotlib Figure or Axes, got {type(fig_or_ax).__name__}")
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = base.parent / f"{base.name}.{fmt}"
        meta = {"CreationDate": None} if fmt == "pdf" else None
        fig.savefig(out, format=fmt, dpi=dpi, bbox_inches=bbox_inches, metadata=meta)
        written.append(out)
    return written


# --------------------------------------------------------------------------- #
# time to event, aggregates across tasks
# --------------------------------------------------------------------------- #
def km_curves(km: pd.DataFrame, *, group: str = "method", ax: Axes | None = None) -> Axes:
    """Kaplan-Meier curves with their pointwise bands, one per ``group``.

    Takes :func:`analysis.survival.kaplan_meier`'s frame (columns ``group, time,
    survival, ci_low, ci_high``); draws step functions (share of runs that have
    not yet had the event) and shaded bands.
    """
    _require(km, [group, "time", "survival", "ci_low", "ci_high"], "km")
    ax = _get_ax(ax)
    for color, (key, curve) in zip(_colors(km[group].nunique()), km.groupby(group, sort=True)):
        ax.step(curve["time"], curve["survival"], where="post", color=color, label=_label(key))
        ax.fill_between(curve["time"], curve["ci_low"], curve["ci_high"], step="post", color=color, alpha=0.15, lw=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time")
    ax.set_ylabel("share not yet reached")
    ax.legend(fontsize="small")
    return ax


def aggregate_intervals(table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Point estimates and intervals of aggregates (IQM, mean) per method, one row per method.

    Takes :func:`analysis.aggregates.aggregate_intervals`' frame (``method,
    aggregate, estimate, ci_low, ci_high``).
    """
    _require(table, ["method", "aggregate", "estimate", "ci_low", "ci_high"], "table")
    ax = _get_ax(ax)
    methods = list(dict.fromkeys(table["method"]))
    aggregates = list(dict.fromkeys(table["aggregate"]))
    offsets = np.linspace(-0.15, 0.15, len(aggregates)) if len(aggregates) > 1 else [0.0]
    for color, offset, name in zip(_colors(len(aggregates)), offsets, aggregates):
        rows = table[table["aggregate"] == name].set_index("method").loc[methods]
        y = np.arange(len(methods)) + offset
        ax.errorbar(rows["estimate"], y, xerr=[rows["estimate"] - rows["ci_low"], rows["ci_high"] - rows["estimate"]],
                    fmt="o", color=color, capsize=3, label=str(name))
    ax.axvline(0, color="0.6", lw=0.8, ls=":")
    ax.set_yticks(np.arange(len(methods)), [_label(m) for m in methods])
    ax.set_xlabel("normalised score")
    ax.legend(fontsize="small")
    return ax


def probability_of_improvement(table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """P(X > Y) with its interval, one row per pair; 0.5 (no improvement) marked.

    Takes a frame with columns ``x, y, estimate, ci_low, ci_high``.
    """
    _require(table, ["x", "y", "estimate", "ci_low", "ci_high"], "table")
    ax = _get_ax(ax, figsize=(6.0, 0.5 * len(table) + 1.2))
    y = np.arange(len(table))
    ax.errorbar(table["estimate"], y, xerr=[table["estimate"] - table["ci_low"], table["ci_high"] - table["estimate"]],
                fmt="o", color="k", capsize=3)
    ax.axvline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_yticks(y, [f"P({_label(a)} > {_label(b)})" for a, b in zip(table["x"], table["y"])])
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of improvement")
    return ax


def performance_profiles(table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Fraction of (seed, task) scores above each threshold, per method, with pointwise bands.

    Takes :func:`analysis.aggregates.performance_profile`'s frame (``method,
    threshold, fraction, ci_low, ci_high``).
    """
    _require(table, ["method", "threshold", "fraction", "ci_low", "ci_high"], "table")
    ax = _get_ax(ax)
    for color, (method, rows) in zip(_colors(table["method"].nunique()), table.groupby("method", sort=False)):
        ax.plot(rows["threshold"], rows["fraction"], color=color, label=_label(method))
        ax.fill_between(rows["threshold"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.15, lw=0)
    ax.set_xlabel("normalised score threshold")
    ax.set_ylabel("fraction of runs above")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")
    return ax


def variance_by_source(table: pd.DataFrame, *, source_col: str = "source", ax: Axes | None = None) -> Axes:
    """Standard deviation of a metric per source of randomness, with its interval (the square roots of
    :func:`analysis.stats.variance_by_source`'s variance bounds); the group that varied everything last."""
    _require(table, [source_col, "sd", "variance_low", "variance_high"], "table")
    order = [s for s in table[source_col] if s != "all"] + [s for s in table[source_col] if s == "all"]
    rows = table.set_index(source_col).loc[order]
    ax = _get_ax(ax)
    y = np.arange(len(rows))
    low, high = np.sqrt(rows["variance_low"].to_numpy(float)), np.sqrt(rows["variance_high"].to_numpy(float))
    sd = rows["sd"].to_numpy(float)
    ax.errorbar(sd, y, xerr=[sd - low, high - sd], fmt="o", color="k", capsize=3)
    ax.set_yticks(y, [str(s) for s in order])
    ax.set_xlabel("standard deviation across runs (95% interval)")
    return ax
