"""Figures for Dynamic DropConnect experiments (matplotlib + seaborn).

One convention for every figure of the toolkit and the notebooks
    * Every plot function takes ``ax=None`` (a new constrained-layout figure is
      made when None) and returns the :class:`matplotlib.axes.Axes` it drew on;
      functions that draw small multiples return the Figure.
    * One colour and marker per method in every figure (:data:`METHOD_STYLES`,
      looked up by :func:`method_style`; a label naming a method, such as
      ``mc:ddc`` or ``ddc@head``, gets that method's colour, and labels without a
      method get a colour of their own that does not depend on the figure).
    * Axis labels are words with units (:func:`axis_label`), not column names.
    * Error bars and bands say what they are and over how many runs
      (:func:`interval_label`); n = 1 is drawn hollow, without a bar, and said.
    * Many labels go on the y axis of a point-and-interval plot
      (:func:`method_comparison`) or into small multiples
      (:func:`learning_curve_grid`); tick labels are never rotated into each other.
    * Legends sit outside the data (:func:`place_legend`).
    * :func:`layout_problems` finds tick labels that overlap each other or leave
      the figure, and legends that cover data, from the renderer's bounding
      boxes; :func:`save_figure` wraps titles and labels wider than their axes.
    * Inputs are the run store's tidy frames (see each docstring for columns);
      nothing here imports the trainer. Statistics come from
      :mod:`analysis.stats`, so a figure never disagrees with a table.
      Randomness (bootstrap bands) takes an explicit ``rng``/``seed``.
    * Nothing is written to disk implicitly: call :func:`save_figure`.
    * The matplotlib backend is never set here; scripts/tests choose it.
"""

from __future__ import annotations

import re
import textwrap
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from . import stats as _stats

__all__ = [
    "METHOD_STYLES",
    "ablation_heatmap",
    "axis_label",
    "critical_difference_diagram",
    "drop_prob_heatmap",
    "drop_rate_dynamics",
    "grad_vs_drop",
    "interval_label",
    "layout_problems",
    "learning_curve_grid",
    "learning_curves",
    "mask_overlap",
    "mean_curves",
    "method_comparison",
    "method_style",
    "new_axes",
    "place_legend",
    "save_figure",
    "styles",
    "synthetic_contours",
]


# --------------------------------------------------------------------------- #
# the convention: colours, labels, legends
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class MethodStyle:
    """How one method is drawn in every figure: its name in words, colour and marker.

    Raises:
        dataclasses.FrozenInstanceError: on assigning to a field (the style is frozen).
    """

    name: str
    color: str
    marker: str


#: one colour (Okabe-Ito, told apart with the common colour-vision deficiencies) and marker per method
METHOD_STYLES: dict[str, MethodStyle] = {
    "none": MethodStyle("no drop", "#000000", "o"),
    "dropout": MethodStyle("Dropout", "#E69F00", "s"),
    "dropconnect": MethodStyle("DropConnect", "#0072B2", "^"),
    "standout": MethodStyle("Standout", "#009E73", "D"),
    "ddc": MethodStyle("DDC", "#D55E00", "P"),
    "ddc_big": MethodStyle("DDC dropping big |g|", "#CC79A7", "v"),
    "learned": MethodStyle("learned mapping", "#56B4E9", "X"),
}
#: colours for labels that name no method (Paul Tol's muted scheme without its pale colours; none is a method's)
OTHER_COLORS = ("#882255", "#117733", "#332288", "#999933", "#AA4499", "#44AA99", "#661100", "#6699CC")
OTHER_MARKERS = ("o", "s", "^", "D", "v", "<", ">", "h")
LINESTYLES = ("-", "--", ":", "-.")

#: column names -> axis labels with units
AXIS_LABELS: dict[str, str] = {
    "test_acc": "test accuracy (at the best-validation epoch)",
    "val_acc": "validation accuracy",
    "train_acc": "training accuracy (at the best-validation epoch)",
    "final_train_acc": "training accuracy (last epoch)",
    "generalization_gap": "training minus test accuracy",
    "steps_to_target": "SGD steps to reach the target loss",
    "mean_loss": "mean training loss over the run (MSE)",
    "final_loss": "training loss at the last step (MSE)",
    "step": "training step",
    "epoch": "epoch",
    "drop_prob_mean": "expected drop rate (mean drop probability)",
    "realized_drop_rate": "realised drop rate (fraction of edges dropped)",
    "drop_rate": "expected drop rate (fraction of edges)",
    "mask_jaccard": "Jaccard overlap of consecutive drop masks",
    "nll": "negative log-likelihood (nats)",
    "brier": "Brier score",
    "ece": "expected calibration error",
    "auroc_heldout": "AUROC, held-out classes vs test",
    "auroc_noise": "AUROC, noise vs test",
    "auroc_rotation": "AUROC, rotated vs test",
    "eta_sq": "share of variance (eta squared)",
    "spearman": "Spearman rank correlation",
}
SPLITS = {"train": "training", "val": "validation", "test": "test"}
METRICS = {"acc": "accuracy", "loss": "loss"}
CI_METHODS = {"t": "t interval", "BCa": "BCa bootstrap", "percentile": "percentile bootstrap", "bootstrap": "bootstrap"}


def method_of(label: Any) -> str | None:
    """The method a label names (``"mc:ddc"`` -> ``"ddc"``, ``"normalize=none"`` -> None), or None.

    Raises:
        Nothing: any label is read as its text.
    """
    text = re.sub(r"[\w.]+=[^\s,;)]*", " ", str(label).lower())  # option values are not method names
    for token in re.split(r"[^a-z0-9_]+", text):
        if token in METHOD_STYLES:
            return token
    return None


def method_style(label: Any) -> MethodStyle:
    """The style of the method ``label`` names; labels naming none get a colour fixed by their text.

    Raises:
        Nothing: any label is read as its text.
    """
    method = method_of(label)
    if method is not None:
        return METHOD_STYLES[method]
    index = zlib.crc32(str(label).encode()) % len(OTHER_COLORS)
    return MethodStyle(str(label), OTHER_COLORS[index], OTHER_MARKERS[index])


def styles(labels: Sequence[Any]) -> dict[Any, dict[str, str]]:
    """``label -> {"color", "marker", "linestyle"}`` for one figure.

    A method's colour and marker come from :data:`METHOD_STYLES`; several labels
    of one method (``ddc@head``, ``ddc@all_conv``) differ by line style, in the
    order given. Labels naming no method keep the colour their text picks unless
    another label of the figure has it, then the next free one.

    Raises:
        TypeError: a label is not hashable.
    """
    out: dict[Any, dict[str, str]] = {}
    per_method: dict[str, int] = {}
    taken = set()
    for label in dict.fromkeys(labels):
        method = method_of(label)
        if method is not None:
            count = per_method.get(method, 0)
            per_method[method] = count + 1
            style = METHOD_STYLES[method]
            out[label] = {"color": style.color, "marker": style.marker, "linestyle": LINESTYLES[count % len(LINESTYLES)]}
    for label in sorted((label for label in dict.fromkeys(labels) if label not in out), key=str):
        index = zlib.crc32(str(label).encode()) % len(OTHER_COLORS)
        for step in range(len(OTHER_COLORS)):
            if (index + step) % len(OTHER_COLORS) not in taken:
                index = (index + step) % len(OTHER_COLORS)
                break
        taken.add(index)
        out[label] = {"color": OTHER_COLORS[index], "marker": OTHER_MARKERS[index], "linestyle": "-"}
    return out


def ordered(labels: Sequence[Any]) -> list:
    """Labels in the figures' fixed order: methods as in :data:`METHOD_STYLES` (no drop first), then the rest by text.

    Raises:
        TypeError: a label is not hashable.
    """
    keys = list(METHOD_STYLES)

    def rank(label):
        method = method_of(label)
        return (keys.index(method) if method is not None else len(keys), str(label))

    return sorted(dict.fromkeys(labels), key=rank)


def display_name(label: Any) -> str:
    """A method key in words (``"none"`` -> ``"no drop"``); any other label as it is.

    Raises:
        Nothing: any label is read as its text.
    """
    return METHOD_STYLES[label].name if isinstance(label, str) and label in METHOD_STYLES else str(label)


def axis_label(name: str, split: str | None = None) -> str:
    """Words (with units) for a column name: ``"test_acc"`` -> ``"test accuracy (at the best-validation epoch)"``.

    With ``split`` (``train``/``val``/``test``) a metric name such as ``acc`` becomes
    ``"validation accuracy"``. Unknown names are returned with spaces for underscores.

    Raises:
        AttributeError: ``split`` is given and ``name`` is not a string.
    """
    if split is not None:
        return f"{SPLITS.get(split, split)} {METRICS.get(name, name.replace('_', ' '))}"
    return AXIS_LABELS.get(name, str(name).replace("_", " "))


def interval_label(summary: pd.DataFrame, unit: str = "seeds") -> str:
    """What an error bar is, and over how many runs: ``"mean and 95% CI (t interval), n = 5 seeds"``.

    ``summary``: a frame of :func:`analysis.stats.summarize` (``n``, and when
    present ``confidence_level`` and ``ci_method``).

    Raises:
        KeyError: ``summary`` has no ``n`` column.
        ValueError: ``n`` holds NaN (pandas' integer cast).
        IndexError: ``summary`` has a ``confidence_level`` column but no rows.
    """
    level = float(summary["confidence_level"].iloc[0]) if "confidence_level" in summary.columns else 0.95
    kinds = sorted({CI_METHODS.get(str(method), str(method)) for method in summary.get("ci_method", pd.Series(dtype=str)) if str(method) != "none"})
    kind = f" ({', '.join(kinds)})" if kinds else ""
    n = summary["n"].astype(int)
    count = f"n = {n.iloc[0]} {unit}" if n.nunique() == 1 else f"n = {n.min()}-{n.max()} {unit}"
    return f"mean and {100 * level:.0f}% CI{kind}, {count}"


def new_axes(width: float = 6.4, height: float = 4.0) -> Axes:
    """A new figure (constrained layout, so outside legends and long labels get room) with one Axes.

    Raises:
        ValueError: ``width`` or ``height`` is negative or not finite (matplotlib's figure size check).
    """
    _, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return ax


def _get_ax(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.0)) -> Axes:
    return new_axes(*figsize) if ax is None else ax


def place_legend(ax: Axes, title: str | None = None, **kwargs) -> Any:
    """Put the legend of ``ax`` outside the data, at the right of the axes; returns it (None if nothing to show).

    Works for matplotlib's and seaborn's legends (the existing legend's handles
    and title are kept unless ``title`` is given).

    Raises:
        TypeError: ``kwargs`` holds a keyword that :meth:`matplotlib.axes.Axes.legend` does not take.
    """
    old = ax.get_legend()
    if old is not None:
        handles, labels = list(old.legend_handles), [text.get_text() for text in old.get_texts()]
        title = title if title is not None else old.get_title().get_text()
        old.remove()
    else:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    options = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize="small",
                   title_fontsize="small")
    options.update(kwargs)
    return ax.legend(handles, labels, title=title or None, **options)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _require(df: Any, cols: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"`{what}` must be a pandas DataFrame, got {type(df).__name__}")
    missing = [column for column in cols if column not in df.columns]
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
    return " / ".join(display_name(part) for part in key)


# --------------------------------------------------------------------------- #
# curves and method comparison
# --------------------------------------------------------------------------- #
def mean_curves(
    data: pd.DataFrame,
    *,
    x: str,
    y: str,
    hue: str,
    unit: str = "run_id",
    order: Sequence[Any] | None = None,
    errorbar: Any = ("ci", 95),
    seed: int = 0,
    n_boot: int = 1000,
    ax: Axes | None = None,
) -> Axes:
    """One mean curve per ``hue`` level, with a band (seaborn's ``errorbar``, default the 95% bootstrap
    CI of the mean over ``unit``s at each ``x``), in the level's method style; legend outside.

    ``data``: long frame with columns ``x``, ``y``, ``hue`` (and ``unit``, e.g. the run
    or seed, one row per unit and ``x``). The legend's title says what the band is and n.

    Raises:
        ValueError: ``data`` is not a DataFrame or lacks ``x``, ``y`` or ``hue``.
    """
    import seaborn as sns

    _require(data, [x, y, hue], "data")
    order = list(order) if order is not None else ordered(data[hue].unique())
    ax = _get_ax(ax)
    look = styles(order)
    few = data[x].nunique() <= 2  # a line needs points to be seen
    for level in order:
        part = data[data[hue] == level]
        if part.empty:
            continue
        sns.lineplot(data=part, x=x, y=y, errorbar=errorbar, n_boot=n_boot, seed=seed, estimator="mean", ax=ax,
                     color=look[level]["color"], linestyle=look[level]["linestyle"], label=display_name(level),
                     marker=look[level]["marker"] if few else None)
    counts = data.groupby(hue)[unit].nunique() if unit in data.columns else pd.Series(dtype=int)
    count = f"n = {counts.min()}" if len(counts) and counts.min() == counts.max() else (f"n = {counts.min()}-{counts.max()}" if len(counts) else "")
    band = {("ci", 95): "mean and 95% bootstrap CI", "sd": "mean ± 1 sd", "se": "mean ± 1 standard error", None: "mean"}.get(
        tuple(errorbar) if isinstance(errorbar, list) else errorbar, f"mean, band: {errorbar}")
    title = band + (f"\n({count} {'runs' if unit == 'run_id' else unit + 's'} each)" if count else "")
    place_legend(ax, title=title)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    _integer_ticks(ax, x)
    return ax


def _integer_ticks(ax: Axes, x: str) -> None:
    """Steps and epochs are counts: no tick at 0.5 (and one tick when there is one count)."""
    if x in ("step", "epoch") or x.endswith("_index"):
        from matplotlib.ticker import MaxNLocator

        low, high = ax.get_xlim()
        if high - low < 1:
            middle = round((low + high) / 2)
            ax.set_xlim(middle - 0.5, middle + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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
    fixed ``seed`` so the figure is reproducible. One line per ``hue`` level, in
    the method styles. More than about eight levels do not read as lines on one
    axes: use :func:`learning_curve_grid`.

    Raises:
        ValueError: ``metrics_df`` lacks a column or has no row with this ``split`` and ``metric``, or ``hue`` is
            not a column of it and ``runs_df`` is None or lacks ``run_id``/``hue``.
    """
    curves = _curve_frame(metrics_df, runs_df, metric=metric, split=split, hue=hue)
    ax = mean_curves(curves, x="epoch", y="value", hue=hue, seed=seed, n_boot=n_boot, ax=ax)
    ax.set_ylabel(axis_label(metric, split))
    ax.set_title(f"{axis_label(metric, split)} over training")
    return ax


def _curve_frame(metrics_df, runs_df, *, metric, split, hue) -> pd.DataFrame:
    _require(metrics_df, ["run_id", "epoch", "split", "metric", "value"], "metrics_df")
    frame = metrics_df[(metrics_df["split"] == split) & (metrics_df["metric"] == metric)]
    if frame.empty:
        raise ValueError(
            f"no rows with split={split!r} and metric={metric!r}; available splits "
            f"{sorted(metrics_df['split'].unique().tolist())}, metrics {sorted(metrics_df['metric'].unique().tolist())}"
        )
    frame = _attach(frame, runs_df, hue, "metrics_df")
    # one value per run and epoch (guards against duplicated logging)
    return frame.groupby([hue, "run_id", "epoch"], as_index=False, sort=True)["value"].mean()


def learning_curve_grid(
    metrics_df: pd.DataFrame,
    runs_df: pd.DataFrame | None = None,
    *,
    metric: str = "acc",
    split: str = "val",
    hue: str = "method",
    columns: int = 4,
    seed: int = 0,
    n_boot: int = 1000,
    panel: tuple[float, float] = (3.0, 2.3),
) -> Figure:
    """Small multiples of :func:`learning_curves`: one panel per ``hue`` level (its mean and
    95% bootstrap band), the other levels' means in light grey behind; shared axes. Returns the Figure.

    Raises:
        ValueError: as :func:`learning_curves`: a missing column, no row with this ``split`` and ``metric``, or a
            ``hue`` that neither frame has.
    """
    curves = _curve_frame(metrics_df, runs_df, metric=metric, split=split, hue=hue)
    levels = ordered(curves[hue].unique())
    columns = max(1, min(columns, len(levels)))
    rows = -(-len(levels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel[0] * columns, panel[1] * rows + 0.8), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    means = curves.groupby([hue, "epoch"], as_index=False)["value"].mean()
    look = styles(levels)
    import seaborn as sns

    for ax, level in zip(axes.flat, levels):
        for other, curve in means.groupby(hue, sort=True):
            if other != level:
                ax.plot(curve["epoch"], curve["value"], color="0.8", lw=0.8, zorder=1)
        sns.lineplot(data=curves[curves[hue] == level], x="epoch", y="value", errorbar=("ci", 95), n_boot=n_boot,
                     seed=seed, color=look[level]["color"], ax=ax, zorder=2)
        ax.set_title(textwrap.fill(display_name(level), 34), fontsize="small")
        ax.set_xlabel("")
        ax.set_ylabel("")
        _integer_ticks(ax, "epoch")
    for ax in list(axes.flat)[len(levels):]:
        ax.set_visible(False)
    counts = curves.groupby(hue)["run_id"].nunique()
    fig.supxlabel("epoch")
    fig.supylabel(axis_label(metric, split))
    fig.suptitle(f"{axis_label(metric, split)}: mean and 95% bootstrap band over n = {counts.min()}"
                 + (f"-{counts.max()}" if counts.max() != counts.min() else "") + " runs; grey: the other panels' means", fontsize="medium")
    return fig


def _checked_order(labels: pd.Series, order: Sequence[Any] | None) -> list:
    """``order``, or the labels in their display order (:func:`ordered`) when it is None.

    Raises:
        ValueError: ``order`` names a label that is not in ``labels``.
    """
    if order is None:
        order = ordered(labels)
    missing = [label for label in order if label not in set(labels)]
    if missing:
        raise ValueError(f"`order` has methods not in the data: {missing}")
    return order


def _label_with_n(label: Any, n: float) -> str:
    """``label``'s display name and its count of runs, e.g. ``"DDC  (n = 5)"``; ``"no interval"`` below 2."""
    count = "" if not np.isfinite(n) else f"  (n = {int(n)}{', no interval' if int(n) < 2 else ''})"
    return display_name(label) + count


def method_comparison(
    summary_or_runs_df: pd.DataFrame,
    *,
    value: str = "test_acc",
    method_col: str = "method",
    rng: np.random.Generator | int | None = None,
    order: Sequence[Any] | None = None,
    confidence_level: float = 0.95,
    show_points: bool = True,
    points: pd.DataFrame | None = None,
    unit: str = "seeds",
    ax: Axes | None = None,
) -> Axes:
    """Point-and-interval plot: one row per label (on the y axis, so any number of
    labels reads), its mean and confidence interval, and the single runs as dots.

    Accepts either the output of :func:`analysis.stats.summarize` (columns
    ``method_col, n, mean, ci_low, ci_high``; ``points``, a runs table with
    ``method_col`` and ``value``, adds the dots) or a runs table (columns
    ``method_col`` and ``value``), in which case it is summarised with
    :func:`analysis.stats.summarize` (its default interval; ``rng`` is passed on)
    and the raw per-run values are drawn as dots (``show_points``). Each label
    carries its n; a label with n = 1 has no interval and is drawn hollow. The x
    label says what the bars are. Colours and markers follow :func:`styles`.

    Raises:
        ValueError: a column is missing, the summary has several rows per label, or ``order`` names a label
            not in the data.
    """
    df = summary_or_runs_df
    _require(df, [method_col], "summary_or_runs_df")
    raw = points
    if {"mean", "ci_low", "ci_high"} <= set(df.columns):
        summary = df
    else:
        _require(df, [value], "summary_or_runs_df")
        summary = _stats.summarize(df, value=value, by=method_col, rng=rng, confidence_level=confidence_level)
        raw = df
    if raw is not None:
        _require(raw, [method_col, value], "points")
    if summary[method_col].duplicated().any():
        raise ValueError(f"summary has several rows per {method_col!r}; summarise by {method_col!r} only")
    order = _checked_order(summary[method_col], order)
    by_label = summary.set_index(method_col).loc[list(order)]
    if "n" not in by_label.columns:
        by_label = by_label.assign(n=raw.groupby(method_col)[value].size().reindex(list(order)).to_numpy() if raw is not None else np.nan)
    y = np.arange(len(order))
    longest = max(len(display_name(label)) for label in order) + 12
    ax = _get_ax(ax, figsize=(min(4.2 + 0.075 * longest, 12.0), 1.6 + 0.34 * len(order)))
    look = styles(order)
    for i, label in enumerate(order):
        color, marker = look[label]["color"], look[label]["marker"]
        mean, low, high, n = (float(by_label.loc[label, column]) for column in ("mean", "ci_low", "ci_high", "n"))
        if raw is not None and show_points:
            values = raw.loc[raw[method_col] == label, value].to_numpy(float)
            offsets = np.linspace(-0.22, 0.22, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(values, y[i] + offsets, s=10, color=color, alpha=0.45, linewidths=0, zorder=1)
        interval = np.isfinite(low) and np.isfinite(high) and n > 1
        if interval:
            ax.errorbar([mean], [y[i]], xerr=[[mean - low], [high - mean]], fmt="none", ecolor=color, elinewidth=1.6, capsize=4, zorder=2)
        ax.plot([mean], [y[i]], marker=marker, markersize=7, color=color, markerfacecolor=color if interval else "white",
                linestyle="none", zorder=3)
    ax.set_yticks(y)
    ax.set_yticklabels([_label_with_n(label, by_label.loc[label, "n"]) for label in order])
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    if "n" in summary.columns:
        bars = interval_label(summary.set_index(method_col).loc[list(order)].reset_index(), unit=unit)
    else:
        bars = f"mean and {100 * confidence_level:.0f}% CI"
    ax.set_xlabel(f"{axis_label(value)}\n{bars}" + ("; dots: single runs" if raw is not None and show_points else ""))
    ax.set_ylabel("")
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
    (hue, layer, step); one colour per (hue, layer) group (the method's colour;
    layers of one method differ by marker), two lines each. Legend outside.

    Raises:
        ValueError: ``records`` lacks ``step``, ``layer``, ``metric`` or ``value``, has no
            ``drop_prob_mean``/``realized_drop_rate`` rows, or none for ``layer``; or ``runs`` (when joined) lacks
            ``run_id``/``hue``.
    """
    _require(records, ["step", "layer", "metric", "value"], "records")
    if hue is not None and hue not in records.columns and runs is not None:
        records = _attach(records, runs, hue, "records")
    selected = _filter_layer(_select_metric(records, ["drop_prob_mean", "realized_drop_rate"]), layer)
    groups = _group_cols(selected, hue)
    if "layer" in groups and selected["layer"].nunique() == 1 and len(groups) > 1:
        groups.remove("layer")  # one layer: the title names it
    mean = selected.groupby([*groups, "metric", "step"], sort=True)["value"].mean().reset_index()
    parts = list(mean.groupby(groups, sort=True)) if groups else [((), mean)]
    ax = _get_ax(ax)
    lines = {"drop_prob_mean": ("-", "expected"), "realized_drop_rate": ("--", "realised")}
    look = styles([key[0] if isinstance(key, tuple) and key else key for key, _ in parts]) if groups else {}
    seen: dict[Any, int] = {}
    for key, group in parts:
        first = key[0] if isinstance(key, tuple) and key else key
        color = look[first]["color"] if groups else "k"
        marker = OTHER_MARKERS[seen.setdefault(first, 0) % len(OTHER_MARKERS)] if groups else None
        seen[first] += 1
        for metric, (linestyle, name) in lines.items():
            metric_rows = group[group["metric"] == metric]
            if len(metric_rows):
                ax.plot(metric_rows["step"], metric_rows["value"], ls=linestyle, color=color,
                        marker=marker if seen[first] > 1 else None, markevery=max(len(metric_rows) // 8, 1),
                        label=f"{_label(key)} ({name})" if groups else name)
    ax.set_xlabel(axis_label("step"))
    ax.set_ylabel("drop rate (fraction of edges)")
    ax.set_title("expected (solid) vs realised (dashed) drop rate")
    place_legend(ax, title="mean over runs")
    _integer_ticks(ax, "step")
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

    Raises:
        ValueError: a column is missing, or ``records`` has no quantile metrics ``<prefix>_qNN``.
    """
    _require(records, ["step", "metric", "value"], "records")
    pattern = re.compile(rf"^{re.escape(prefix)}_q(\d+)$")
    qmetrics = sorted({metric for metric in records["metric"].unique() if pattern.match(str(metric))}, key=lambda metric: int(pattern.match(metric).group(1)))
    if not qmetrics:
        raise ValueError(f"`records` has no quantile metrics named '{prefix}_q<NN>' (e.g. '{prefix}_q50')")
    selected = records[records["metric"].isin(qmetrics)]
    if layer is not None:
        _require(records, ["layer"], "records")
        selected = _filter_layer(selected, layer)
    grid = selected.pivot_table(index="metric", columns="step", values="value", aggfunc="mean").loc[qmetrics]
    steps = grid.columns.to_numpy(float)
    ax = _get_ax(ax)
    mesh = ax.pcolormesh(steps, np.arange(len(qmetrics)), grid.to_numpy(float), shading="nearest", cmap=cmap)
    ax.set_yticks(np.arange(len(qmetrics)))
    ax.set_yticklabels([f"q{pattern.match(metric).group(1)}" for metric in qmetrics])
    name = {"drop_prob": "drop probability"}.get(prefix, prefix.replace("_", " "))
    ax.figure.colorbar(mesh, ax=ax, label=name)
    ax.set_xlabel(axis_label("step"))
    ax.set_ylabel("quantile over the layer's edges")
    ax.set_title(f"{name} quantiles over training")
    _integer_ticks(ax, "step")
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
    over runs per (hue, layer, step); one line per (hue, layer) group, in the
    method's colour. Legend outside.

    Raises:
        ValueError: ``records`` lacks ``step``, ``layer``, ``metric`` or ``value``, has no ``mask_jaccard`` rows,
            or none for ``layer``; or ``runs`` (when joined) lacks ``run_id``/``hue``.
    """
    _require(records, ["step", "layer", "metric", "value"], "records")
    if hue is not None and hue not in records.columns and runs is not None:
        records = _attach(records, runs, hue, "records")
    selected = _filter_layer(_select_metric(records, ["mask_jaccard"]), layer)
    groups = _group_cols(selected, hue)
    if "layer" in groups and selected["layer"].nunique() == 1 and len(groups) > 1:
        groups.remove("layer")
    mean = selected.groupby([*groups, "step"], sort=True)["value"].mean().reset_index()
    ax = _get_ax(ax)
    if groups:
        parts = list(mean.groupby(groups, sort=True))
        look = styles([_label(key) for key, _ in parts])
        for key, group in parts:
            first = key[0] if isinstance(key, tuple) else key
            color = method_style(first).color if method_of(first) else look[_label(key)]["color"]
            ax.plot(group["step"], group["value"], color=color, linestyle=look[_label(key)]["linestyle"],
                    label=_label(key))
        place_legend(ax, title="mean over runs")
    else:
        ax.plot(mean["step"], mean["value"], color="k")
    ax.set_xlabel(axis_label("step"))
    ax.set_ylabel(axis_label("mask_jaccard"))
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("overlap of consecutive drop masks")
    _integer_ticks(ax, "step")
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
    non-positive gradients are left out of the plot. ``annotate`` adds Spearman's
    rank correlation (all finite pairs) to the x label.

    Raises:
        ValueError: the two snapshots differ in size, fewer than 2 finite pairs, or ``kind`` is not
            'hexbin'/'scatter'.
    """
    g = np.asarray(snapshot_grad_abs, dtype=float).reshape(-1)
    p = np.asarray(snapshot_drop_prob, dtype=float).reshape(-1)
    if g.size != p.size:
        raise ValueError(f"snapshot_grad_abs ({g.size} elements) and snapshot_drop_prob ({p.size}) differ in size")
    if kind not in ("hexbin", "scatter"):
        raise ValueError(f"`kind` must be 'hexbin' or 'scatter', got {kind!r}")
    finite = np.isfinite(g) & np.isfinite(p)
    if finite.sum() < 2:
        raise ValueError("need at least 2 finite (|g|, p) pairs")
    ax = _get_ax(ax)
    show = finite & (g > 0) if log_grad else finite
    shown_grad, shown_prob = g[show], p[show]
    if kind == "hexbin":
        hexbins = ax.hexbin(shown_grad, shown_prob, gridsize=gridsize, xscale="log" if log_grad else "linear", bins="log", mincnt=1, cmap="viridis")
        ax.figure.colorbar(hexbins, ax=ax, label="number of edges (log scale)")
    else:
        ax.scatter(shown_grad, shown_prob, s=4, alpha=0.4, color=METHOD_STYLES["ddc"].color)
        if log_grad:
            ax.set_xscale("log")
    ax.set_xlabel("|gradient|" + (" (log scale)" if log_grad else ""))
    if annotate:
        from scipy.stats import spearmanr

        rho = spearmanr(g[finite], p[finite]).statistic
        ax.set_xlabel(ax.get_xlabel() + f"\nSpearman ρ = {rho:.3f} over {int(finite.sum())} edges")
    ax.set_ylabel("drop probability")
    return ax


# --------------------------------------------------------------------------- #
# ablations and rankings
# --------------------------------------------------------------------------- #
def _significant_cells(df: pd.DataFrame, pvalues: str | pd.DataFrame | None, *, x: str, y: str, p_col: str,
                       alpha: float, grid: pd.DataFrame) -> np.ndarray:
    """Boolean ``(rows, columns)`` array of ``grid``'s shape: the cells whose p-value is below ``alpha``.

    ``pvalues``: a column of ``df``, or a frame with ``x``, ``y`` and ``p_col``;
    None marks no cell.

    Raises:
        KeyError: a named column is missing.
        ValueError: a cell has several different p-values.
    """
    if pvalues is None:
        return np.zeros(grid.shape, dtype=bool)
    if isinstance(pvalues, str):
        _require(df, [pvalues], "df")
        pvalue_frame = df[[x, y, pvalues]].rename(columns={pvalues: "_p"})
    else:
        _require(pvalues, [x, y, p_col], "pvalues")
        pvalue_frame = pvalues[[x, y, p_col]].rename(columns={p_col: "_p"})
    distinct = pvalue_frame.groupby([y, x])["_p"].nunique()
    if (distinct > 1).any():
        raise ValueError(f"p-values must be unique per ({y!r}, {x!r}) cell; got several for {list(distinct[distinct > 1].index[:3])}")
    pgrid = pvalue_frame.pivot_table(index=y, columns=x, values="_p", aggfunc="first", sort=True).reindex(
        index=grid.index, columns=grid.columns
    )
    return pgrid.to_numpy(float) < alpha


def _cell_texts(means: np.ndarray, half_widths: np.ndarray, star: np.ndarray, fmt: str) -> np.ndarray:
    """Each cell's annotation: its mean, ``*`` when starred, and ``±`` half-width on a second line (empty when no mean)."""
    text = np.empty(means.shape, dtype=object)
    for i, j in np.ndindex(means.shape):
        if not np.isfinite(means[i, j]):
            text[i, j] = ""
            continue
        text[i, j] = (format(means[i, j], fmt) + ("*" if star[i, j] else "")
                      + (f"\n±{format(half_widths[i, j], fmt)}" if np.isfinite(half_widths[i, j]) else ""))
    return text


def _outline_cell(ax: Axes, grid: pd.DataFrame, column: Any, row: Any, name: str) -> bool:
    """Outline the heatmap cell (``row``, ``column``) of ``grid`` and label it ``name``; False when there is no such cell."""
    from matplotlib.patches import Rectangle

    cols, rows = [str(label) for label in grid.columns], [str(label) for label in grid.index]
    if str(column) not in cols or str(row) not in rows:
        return False
    column_index, row_index = cols.index(str(column)), rows.index(str(row))
    ax.add_patch(Rectangle((column_index, row_index), 1, 1, fill=False, edgecolor="black", lw=3, clip_on=False,
                           zorder=5))
    ax.text(column_index + 0.04, row_index + 0.06, name, ha="left", va="top", fontsize="x-small", color="white",
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "black", "edgecolor": "none"}, zorder=6)
    return True


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
    default: dict | None = None,
    default_name: str = "default",
    rng: np.random.Generator | int = 0,
    confidence_level: float = 0.95,
    ax: Axes | None = None,
) -> Axes:
    """Mean ``value`` per (``y``, ``x``) cell with its uncertainty, ``*`` on significant cells,
    and the ``default`` cell outlined.

    ``df``: long frame with columns ``x``, ``y`` and numeric ``value``, one row per
    run (e.g. seed). Each cell shows its mean and, with 2 or more runs, ``±`` the
    half-width of its confidence interval (:func:`analysis.stats.summarize`, ``rng``);
    the x label says so and gives n. ``pvalues`` is either the name of a column of
    ``df`` (one p-value per cell, e.g. from :func:`analysis.stats.paired_comparison`
    merged in) or a frame with columns ``x``, ``y`` and ``p_col``; cells with
    ``p < alpha`` get a ``*`` after the mean. ``default``: ``{x: level, y: level}``
    of the reference cell, drawn with a thick outline and labelled ``default_name``.

    Raises:
        ValueError: a column is missing, or a cell has several different p-values.
    """
    _require(df, [x, y, value], "df")
    cells = df[[y, x, value]].dropna(subset=[value])
    per_cell = cells.groupby([y, x]).size()
    if (per_cell > 1).any():
        summary = _stats.summarize(cells, value=value, by=[y, x], rng=rng, confidence_level=confidence_level)
    else:
        summary = cells.rename(columns={value: "mean"}).assign(n=1, ci_low=np.nan, ci_high=np.nan)
    mean = summary.pivot_table(index=y, columns=x, values="mean", aggfunc="first", sort=True)
    half = (summary.assign(half=(summary["ci_high"] - summary["ci_low"]) / 2)
            .pivot_table(index=y, columns=x, values="half", aggfunc="first", sort=True, dropna=False)
            .reindex(index=mean.index, columns=mean.columns))
    star = _significant_cells(df, pvalues, x=x, y=y, p_col=p_col, alpha=alpha, grid=mean)
    half_widths = half.to_numpy(float)
    text = _cell_texts(mean.to_numpy(float), half_widths, star, fmt)
    import seaborn as sns

    ax = _get_ax(ax, figsize=(max(5.6, 2.6 + 1.25 * mean.shape[1]), 2.2 + 0.8 * mean.shape[0]))
    sns.heatmap(mean, annot=text, fmt="", cmap=cmap, ax=ax, cbar_kws={"label": f"mean {axis_label(value)}"},
                annot_kws={"fontsize": "small"}, linewidths=0.5, linecolor="white")
    ax.tick_params(axis="x", labelrotation=0)
    ax.tick_params(axis="y", labelrotation=0)
    outlined = default is not None and x in default and y in default and _outline_cell(ax, mean, default[x], default[y], default_name)
    n = summary["n"].astype(int)
    count = f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}-{n.max()}"
    notes = ["cells: mean"
             + (f" ± half-width of the {100 * confidence_level:.0f}% CI" if np.isfinite(half_widths).any() else "")
             + f", {count} runs each"]
    if pvalues is not None:
        notes.append(f"* p < {alpha:g}")
    if outlined:
        notes.append(f"outlined: the {default_name}")
    ax.set_xlabel(f"{x}\n" + "; ".join(notes))
    ax.set_ylabel(y)
    ax.set_title(f"mean {axis_label(value)}")
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

    Raises:
        ValueError: a column is missing, fewer than 2 methods, or a clique names a method not in ``ranks``.
    """
    _require(ranks, [method_col, rank_col], "ranks")
    ranked = ranks.sort_values(rank_col, kind="stable")
    names, vals = list(ranked[method_col]), ranked[rank_col].to_numpy(float)
    k = len(names)
    if k < 2:
        raise ValueError("need at least 2 methods in `ranks`")
    unknown = [method for clique in cliques for method in clique if method not in set(names)]
    if unknown:
        raise ValueError(f"cliques mention methods not in `ranks`: {unknown}")
    low, high = 1, max(k, int(np.ceil(vals.max())))
    n_left = (k + 1) // 2
    step = 0.22
    ax = _get_ax(ax, figsize=(7.0, 1.4 + 0.3 * n_left))
    look = styles(names)
    # axis and ticks
    ax.plot([low, high], [0, 0], color="k", lw=1)
    for tick in range(low, high + 1):
        ax.plot([tick, tick], [0, 0.06], color="k", lw=1)
        ax.text(tick, 0.1, str(tick), ha="center", va="bottom", fontsize="small")
    # method connectors and labels
    for i, (method, rank) in enumerate(zip(names, vals)):
        if i < n_left:
            label_y, label_x, align = -(i + 1) * step - 0.15, low - 0.3, "right"
        else:
            label_y, label_x, align = -(k - i) * step - 0.15, high + 0.3, "left"
        ax.plot([rank, rank, label_x], [0, label_y, label_y], color=look[method]["color"], lw=1.0)
        ax.text(label_x + (-0.05 if align == "right" else 0.05), label_y, f"{display_name(method)} ({rank:.2f})", ha=align,
                va="center", fontsize="small", color=look[method]["color"])
    # cliques
    for j, clique in enumerate(cliques):
        clique_ranks = [vals[names.index(method)] for method in clique]
        clique_y = -0.07 - j * 0.06
        ax.plot([min(clique_ranks) - 0.03, max(clique_ranks) + 0.03], [clique_y, clique_y], color="k", lw=3,
                solid_capstyle="round")
    # CD bar
    ax.plot([low, low + cd], [0.45, 0.45], color="k", lw=1.5)
    for end in (low, low + cd):
        ax.plot([end, end], [0.41, 0.49], color="k", lw=1.5)
    ax.text(low + cd / 2, 0.52, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize="small")
    ax.set_xlim(low - 1.8, high + 1.8)
    ax.set_ylim(-(n_left + 1) * step - 0.2, 0.8)
    ax.set_yticks([])
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_xticks([])
    ax.set_xlabel("average rank (lower is better); thick bars join methods not significantly different")
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

    Raises:
        ValueError: not exactly one of ``loss_fn`` or (``true_w``, ``cov``), shapes other than (2,) and (2,
            2), or a constant or non-finite loss surface.
    """
    _require(trajectories, [method_col, "step", "w1", "w2"], "trajectories")
    if (loss_fn is None) == (true_w is None or cov is None):
        raise ValueError("pass exactly one of `loss_fn` or both `true_w` and `cov`")
    mean = trajectories.groupby([method_col, "step"], sort=True)[["w1", "w2"]].mean().reset_index()
    points = [mean[["w1", "w2"]].to_numpy(float)]
    if true_w is not None:
        w_star = np.asarray(true_w, dtype=float).reshape(-1)
        sigma = np.asarray(cov, dtype=float)
        if w_star.shape != (2,) or sigma.shape != (2, 2):
            raise ValueError(f"`true_w` must have shape (2,) and `cov` (2, 2), got {w_star.shape} and {sigma.shape}")
        points.append(w_star[None, :])
    allp = np.vstack(points)
    pmin, pmax = allp.min(axis=0), allp.max(axis=0)
    span = np.where(pmax - pmin > 0, pmax - pmin, 1.0)
    low, high = pmin - padding * span, pmax + padding * span
    W1, W2 = np.meshgrid(np.linspace(low[0], high[0], grid_size), np.linspace(low[1], high[1], grid_size))
    if loss_fn is not None:
        Z = np.asarray(loss_fn(W1, W2), dtype=float)
        if Z.shape != W1.shape:
            Z = np.vectorize(lambda w1, w2: float(loss_fn(w1, w2)))(W1, W2)
    else:
        D = np.stack([W1 - w_star[0], W2 - w_star[1]], axis=-1)
        Z = np.einsum("...i,ij,...j->...", D, sigma, D) + noise_var
    zmin, zmax = np.nanmin(Z), np.nanmax(Z)
    if not np.isfinite(zmin) or not np.isfinite(zmax) or zmax <= zmin:
        raise ValueError("the loss surface is constant or not finite on the plotted grid")
    contour_levels = zmin + (zmax - zmin) * np.linspace(0.0, 1.0, levels + 1)[1:] ** 2
    ax = _get_ax(ax, figsize=(6.8, 5.0))
    ax.contour(W1, W2, Z, levels=contour_levels, colors="0.75", linewidths=0.7)
    methods = sorted(mean[method_col].unique(), key=str)
    look = styles(methods)
    for method in methods:
        trajectory = mean[mean[method_col] == method]
        color = look[method]["color"]
        ax.plot(trajectory["w1"], trajectory["w2"], color=color, linestyle=look[method]["linestyle"], lw=1.5,
                label=display_name(method))
        ax.scatter(trajectory["w1"].iloc[[0]], trajectory["w2"].iloc[[0]], color=color, marker="o", s=20, zorder=3)
        ax.scatter(trajectory["w1"].iloc[[-1]], trajectory["w2"].iloc[[-1]], color=color, marker="x", s=30, zorder=3)
    if true_w is not None:
        ax.scatter([w_star[0]], [w_star[1]], marker="*", s=120, color="k", zorder=4, label="true weights w*")
    ax.set_xlabel("weight w1")
    ax.set_ylabel("weight w2")
    ax.set_title("loss contours and mean trajectories")
    place_legend(ax, title="mean over seeds\n(o start, x end)")
    return ax


# --------------------------------------------------------------------------- #
# reading the figure: layout problems
# --------------------------------------------------------------------------- #
def layout_problems(fig: Figure, *, tolerance: float = 1.0) -> list[str]:
    """What does not read in ``fig``, from the renderer's bounding boxes (display pixels).

    Finds, on every visible Axes (colour bars included): tick labels that overlap
    each other by more than ``tolerance`` pixels in both directions, and tick
    labels, axis labels, titles and legends that leave the figure; and legends
    (of the axes or the figure) whose box covers plotted data of any Axes: lines
    and their markers, scatter points, filled areas (bands, bars) and images.
    Returns one sentence per problem (empty when the figure reads).

    Raises:
        Nothing of its own; whatever matplotlib raises while drawing ``fig``.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox.padded(tolerance)
    problems: list[str] = []
    for number, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        name = _axes_name(ax, number)
        for axis_name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            labels = _drawn_tick_labels(axis)
            boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in labels]
            clashes = [f"{text_a!r} and {text_b!r}" for (text_a, box_a), (text_b, box_b) in _pairs(boxes) if _overlap(box_a, box_b) > tolerance]
            if clashes:
                more = f" and {len(clashes) - 3} more pairs" if len(clashes) > 3 else ""
                problems.append(f"{name}: {axis_name} tick labels overlap: {'; '.join(clashes[:3])}{more}")
            for text, box in boxes:
                if not _inside(box, canvas):
                    problems.append(f"{name}: {axis_name} tick label {text!r} leaves the figure")
        for what, text in (("title", ax.title), ("x label", ax.xaxis.label), ("y label", ax.yaxis.label)):
            if text.get_visible() and text.get_text().strip() and not _inside(text.get_window_extent(renderer), canvas):
                problems.append(f"{name}: the {what} {text.get_text()!r} leaves the figure")
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None] + [(None, figure_legend) for figure_legend in fig.legends]
    for owner, legend in legends:
        if not legend.get_visible():
            continue
        box = legend.get_window_extent(renderer)
        where = _axes_name(owner, fig.axes.index(owner)) if owner is not None else "figure"
        if not _inside(box, canvas):
            problems.append(f"{where}: the legend leaves the figure")
        for number, ax in enumerate(fig.axes):
            if ax.get_visible() and _covers_data(ax, box, renderer):
                problems.append(f"{where}: the legend covers data of {_axes_name(ax, number)}")
    for text in [fig._suptitle, fig._supxlabel, fig._supylabel]:
        if text is not None and text.get_visible() and text.get_text().strip() and not _inside(text.get_window_extent(renderer), canvas):
            problems.append(f"figure: {text.get_text()!r} leaves the figure")
    return problems


def _axes_name(ax: Axes, number: int) -> str:
    title = ax.get_title() or ax.get_label()
    return f"axes {number}" + (f" ({title[:60]!r})" if title and not title.startswith("<") else "")


def _drawn_tick_labels(axis) -> list:
    """The tick labels the axis draws: visible, not empty, at ticks inside the view interval."""
    low, high = sorted(axis.get_view_interval())
    slack = (high - low) * 1e-9
    out = []
    for ticks, locs in ((axis.get_major_ticks(len(axis.get_majorticklocs())), axis.get_majorticklocs()),
                        (axis.get_minor_ticks(len(axis.get_minorticklocs())), axis.get_minorticklocs())):
        for tick, location in zip(ticks, locs):
            if not low - slack <= float(location) <= high + slack:
                continue
            out += [label for label in (tick.label1, tick.label2) if label.get_visible() and label.get_text().strip()]
    return out


def _pairs(boxes):
    return [(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes))]


def _overlap(a, b) -> float:
    """The smaller of the two extents by which boxes ``a`` and ``b`` overlap (0 when apart)."""
    return max(0.0, min(min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)))


def _inside(box, canvas) -> bool:
    return box.x0 >= canvas.x0 and box.y0 >= canvas.y0 and box.x1 <= canvas.x1 and box.y1 <= canvas.y1


def _covers_data(ax: Axes, box, renderer) -> bool:
    """Whether the display-space ``box`` covers any plotted data of ``ax``: lines (their segments,
    or their markers), scatter points, filled areas and bars, images and meshes."""
    from matplotlib.collections import Collection, LineCollection, PathCollection
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.path import Path as MplPath
    from matplotlib.spines import Spine

    if _overlap(ax.get_window_extent(renderer), box) <= 0:
        return False
    for artist in ax.get_children():
        if not artist.get_visible() or artist is ax.patch or isinstance(artist, Spine):
            continue
        if isinstance(artist, Line2D):
            data = artist.get_xydata()
            xy = artist.get_transform().transform(data) if len(data) else np.empty((0, 2))
            xy = xy[np.isfinite(xy).all(axis=1)]
            joined = artist.get_linestyle() not in ("None", "none", " ", "")
            if joined and len(xy) > 1 and MplPath(xy).intersects_bbox(box, filled=False):
                return True
            if len(xy) and _any_inside(xy, box):
                return True
        elif isinstance(artist, PathCollection) or (isinstance(artist, Collection) and len(artist.get_offsets()) > 1):
            offsets = artist.get_offsets()
            if len(offsets) and _any_inside(artist.get_offset_transform().transform(offsets), box):
                return True
        elif isinstance(artist, Collection):
            transform = artist.get_transform()
            filled = not isinstance(artist, LineCollection)
            if any(transform.transform_path(path).intersects_bbox(box, filled=filled) for path in artist.get_paths()):
                return True
        elif isinstance(artist, (AxesImage, Patch)):
            if _overlap(artist.get_window_extent(renderer), box) > 0:
                return True
    return False


def _any_inside(points: np.ndarray, box) -> bool:
    points = points[np.isfinite(points).all(axis=1)]
    return bool(((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)).any())


# --------------------------------------------------------------------------- #
# saving
# --------------------------------------------------------------------------- #
def _wrap_texts(fig: Figure) -> None:
    """Wrap titles and axis labels longer than their axes (suptitles: than the figure), so nothing is cut."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()

    def wrap(text, room_px):
        content = text.get_text()
        if not text.get_visible() or not content.strip() or room_px <= 0:
            return
        box = text.get_window_extent(renderer)
        extent = box.height if text.get_rotation() in (90.0, 270.0) else box.width
        if extent <= room_px:
            return
        lines = content.split("\n")
        chars = max(10, int(max(len(line) for line in lines) * room_px / extent) - 1)
        text.set_text("\n".join(textwrap.fill(line, chars) if len(line) > chars else line for line in lines))

    for ax in fig.axes:
        if ax.get_visible():
            box = ax.get_window_extent(renderer)
            wrap(ax.title, box.width)
            wrap(ax.xaxis.label, box.width)
            wrap(ax.yaxis.label, box.height)
    for text, room in ((fig._suptitle, fig.bbox.width), (fig._supxlabel, fig.bbox.width), (fig._supylabel, fig.bbox.height)):
        if text is not None:
            wrap(text, 0.95 * room)


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
    Parent directories are created. Titles and x labels wider than their axes
    are wrapped first. PDFs are written without a creation date so repeated
    saves are byte-identical. Returns the list of written paths.

    Raises:
        ValueError: ``formats`` is empty or ``fig_or_ax`` is not a matplotlib Figure or Axes.
    """
    if isinstance(formats, str):
        formats = (formats,)
    formats = [str(name).lower().lstrip(".") for name in formats]
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
    _wrap_texts(fig)
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in formats:
        target = base.parent / f"{base.name}.{suffix}"
        meta = {"CreationDate": None} if suffix == "pdf" else None
        fig.savefig(target, format=suffix, dpi=dpi, bbox_inches=bbox_inches, metadata=meta)
        written.append(target)
    return written


# --------------------------------------------------------------------------- #
# time to event, aggregates across tasks
# --------------------------------------------------------------------------- #
def km_curves(km: pd.DataFrame, *, group: str = "method", ax: Axes | None = None) -> Axes:
    """Kaplan-Meier curves with their pointwise bands, one per ``group``.

    Takes :func:`analysis.survival.kaplan_meier`'s frame (columns ``group, time,
    survival, ci_low, ci_high``); draws step functions (share of runs that have
    not yet had the event) and shaded bands.

    Raises:
        ValueError: ``km`` is not a DataFrame or lacks a column it reads.
    """
    _require(km, [group, "time", "survival", "ci_low", "ci_high"], "km")
    ax = _get_ax(ax)
    levels = ordered(km[group].unique())
    look = styles(levels)
    for key in levels:
        curve = km[km[group] == key]
        color = look[key]["color"]
        ax.step(curve["time"], curve["survival"], where="post", color=color, linestyle=look[key]["linestyle"], label=display_name(key))
        ax.fill_between(curve["time"], curve["ci_low"], curve["ci_high"], step="post", color=color, alpha=0.15, lw=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time")
    ax.set_ylabel("share not yet reached")
    level = float(km["confidence_level"].iloc[0]) if "confidence_level" in km else 0.95
    place_legend(ax, title=f"Kaplan-Meier estimate;\nband: pointwise {100 * level:.0f}% CI")
    return ax


def aggregate_intervals(table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Point estimates and intervals of aggregates (IQM, mean) per method, one row per method.

    Takes :func:`analysis.aggregates.aggregate_intervals`' frame (``method,
    aggregate, estimate, ci_low, ci_high``).

    Raises:
        ValueError: ``table`` lacks a column it reads, or holds several rows for one (method, aggregate) (pandas'
            reindex error).
    """
    _require(table, ["method", "aggregate", "estimate", "ci_low", "ci_high"], "table")
    methods = ordered(table["method"])
    aggregates = list(dict.fromkeys(table["aggregate"]))
    ax = _get_ax(ax, figsize=(6.8, 1.4 + 0.45 * len(methods)))
    offsets = np.linspace(-0.15, 0.15, len(aggregates)) if len(aggregates) > 1 else [0.0]
    look = styles(methods)
    for shade, offset, name in zip(("k", "0.55", "0.75", "0.35"), offsets, aggregates):
        rows = table[table["aggregate"] == name].set_index("method").reindex(methods).dropna(subset=["estimate"])
        y = np.array([methods.index(method) for method in rows.index]) + offset
        ax.errorbar(rows["estimate"], y, xerr=[rows["estimate"] - rows["ci_low"], rows["ci_high"] - rows["estimate"]],
                    fmt="none", ecolor=shade, capsize=3)
        ax.scatter(rows["estimate"], y, color=[look[method]["color"] for method in rows.index], edgecolors=shade,
                   zorder=3, marker="o", label=str(name))
    ax.axvline(0, color="0.6", lw=0.8, ls=":")
    ax.set_yticks(np.arange(len(methods)), [display_name(method) for method in methods])
    ax.set_ylim(len(methods) - 0.5, -0.5)
    ax.set_xlabel("normalised score: estimate and interval")
    place_legend(ax, title="aggregate")
    return ax


def probability_of_improvement(table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """P(X > Y) with its interval, one row per pair; 0.5 (no improvement) marked.

    Takes a frame with columns ``x, y, estimate, ci_low, ci_high``.

    Raises:
        ValueError: ``table`` is not a DataFrame or lacks a column it reads.
    """
    _require(table, ["x", "y", "estimate", "ci_low", "ci_high"], "table")
    ax = _get_ax(ax, figsize=(6.0, 0.5 * len(table) + 1.2))
    y = np.arange(len(table))
    ax.errorbar(table["estimate"], y, xerr=[table["estimate"] - table["ci_low"], table["ci_high"] - table["estimate"]],
                fmt="o", color="k", capsize=3)
    ax.axvline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_yticks(y, [f"P({display_name(x_name)} > {display_name(y_name)})"
                      for x_name, y_name in zip(table["x"], table["y"])])
    ax.set_ylim(len(table) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of improvement")
    return ax


def paired_differences_by_task(per_task: pd.DataFrame, *, xlabel: str, ax: Axes | None = None) -> Axes:
    """One row per task: the mean paired difference of two methods with its interval; 0 (no difference) marked.

    Takes a frame with columns ``task, mean_diff, ci_low, ci_high`` (e.g. per task
    :func:`analysis.stats.mean_interval` of seed-paired differences); ``xlabel``
    says what was differenced and what the interval is.
    Raises:
        ValueError: a column is missing.
    """
    _require(per_task, ["task", "mean_diff", "ci_low", "ci_high"], "per_task")
    ax = _get_ax(ax, figsize=(6.4, 0.45 * len(per_task) + 1.6))
    y = np.arange(len(per_task))
    ax.errorbar(per_task["mean_diff"], y, xerr=[per_task["mean_diff"] - per_task["ci_low"], per_task["ci_high"] - per_task["mean_diff"]],
                fmt="o", color="k", capsize=3)
    ax.axvline(0, color="0.6", lw=0.8, ls=":")
    ax.set_yticks(y, [str(task) for task in per_task["task"]])
    ax.set_ylim(len(per_task) - 0.5, -0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.set_xlabel(xlabel)
    return ax


def performance_profiles(table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Fraction of (seed, task) scores above each threshold, per method, with pointwise bands.

    Takes :func:`analysis.aggregates.performance_profile`'s frame (``method,
    threshold, fraction, ci_low, ci_high``).

    Raises:
        ValueError: ``table`` is not a DataFrame or lacks a column it reads.
    """
    _require(table, ["method", "threshold", "fraction", "ci_low", "ci_high"], "table")
    ax = _get_ax(ax)
    methods = ordered(table["method"])
    look = styles(methods)
    for method in methods:
        rows = table[table["method"] == method]
        color = look[method]["color"]
        ax.plot(rows["threshold"], rows["fraction"], color=color, linestyle=look[method]["linestyle"], label=display_name(method))
        ax.fill_between(rows["threshold"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.15, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # a few round thresholds: negative ones are wide labels
    ax.set_xlabel("normalised score threshold")
    ax.set_ylabel("fraction of runs above")
    ax.set_ylim(-0.02, 1.02)
    place_legend(ax, title="band: pointwise interval")
    return ax


def variance_by_source(table: pd.DataFrame, *, source_col: str = "source", ax: Axes | None = None) -> Axes:
    """Standard deviation of a metric per source of randomness, with its interval (the square roots of
    :func:`analysis.stats.variance_by_source`'s variance bounds); the group that varied everything last.

    Raises:
        ValueError: ``table`` is not a DataFrame or lacks ``source_col``, ``sd``, ``variance_low`` or
            ``variance_high``.
    """
    _require(table, [source_col, "sd", "variance_low", "variance_high"], "table")
    order = ([source for source in table[source_col] if source != "all"]
             + [source for source in table[source_col] if source == "all"])
    rows = table.set_index(source_col).loc[order]
    ax = _get_ax(ax)
    y = np.arange(len(rows))
    low, high = np.sqrt(rows["variance_low"].to_numpy(float)), np.sqrt(rows["variance_high"].to_numpy(float))
    sd = rows["sd"].to_numpy(float)
    ax.errorbar(sd, y, xerr=[sd - low, high - sd], fmt="o", color="k", capsize=3)
    ax.set_yticks(y, [str(source) for source in order])
    ax.set_ylim(len(order) - 0.5, -0.5)
    count = f", n = {int(rows['n'].min())}" + (f"-{int(rows['n'].max())}" if rows['n'].max() != rows['n'].min() else "") + " runs each" if "n" in rows else ""
    ax.set_xlabel(f"standard deviation across runs\n(point and 95% interval{count})")
    return ax
