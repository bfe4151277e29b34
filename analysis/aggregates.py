"""Aggregates across tasks, after Agarwal et al. (2021), "Deep RL at the edge of the statistical precipice".

Pure numpy/scipy on ``(seeds x tasks)`` score arrays, one per method, as in
``rliable``; rliable itself is archived and ignores its ``random_state`` (its
bootstrap calls the global RNG), so everything random here takes an explicit
:class:`numpy.random.Generator` and the same generator state gives the same
intervals.

- :func:`interquartile_mean` (IQM: the mean of the middle 50% of all
  seed x task scores) and the mean, of normalised scores (:func:`normalise`);
- :func:`stratified_bootstrap`: percentile intervals of any aggregate, seeds
  resampled with replacement *within each task* (the strata). Runs of one
  seed are paired across methods (same initial weights and data order), so
  every method gets the same resampled seeds: differences keep their pairing;
- :func:`probability_of_improvement`: ``P(X > Y)``, the probability that a run
  of method X beats a run of method Y on a task drawn at random (the
  Mann-Whitney U statistic over all run pairs of a task, ties counting 1/2,
  averaged over tasks), with its stratified bootstrap interval;
- :func:`performance_profile`: the fraction of (seed, task) scores above each
  threshold, with pointwise intervals.

Arrays are ``float`` of shape ``(n_seeds, n_tasks)``; a dict maps each method
to one, all with the same shape. :func:`scores_from_frame` builds them from a
tidy frame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "aggregate_intervals",
    "interquartile_mean",
    "normalise",
    "performance_profile",
    "probability_of_improvement",
    "probability_of_improvement_interval",
    "scores_from_frame",
    "stratified_bootstrap",
]

Scores = Mapping[Any, np.ndarray]


def _generator(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"`rng` must be a numpy.random.Generator (explicit randomness), got {rng!r}")
    return rng


def _check_scores(scores: Scores) -> dict[Any, np.ndarray]:
    if not scores:
        raise ValueError("`scores` is empty: pass {method: (n_seeds, n_tasks) array}")
    out = {m: np.asarray(a, dtype=float) for m, a in scores.items()}
    shapes = {a.shape for a in out.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every score array must be 2-D (n_seeds, n_tasks) with one shape, got {sorted(shapes)}")
    if any(not np.isfinite(a).all() for a in out.values()):
        raise ValueError("scores must be finite (no NaN or inf)")
    return out


def interquartile_mean(scores: np.ndarray) -> float:
    """IQM: the mean of the middle 50% of all values of ``scores`` (any shape), 25% trimmed each side.

    :func:`scipy.stats.trim_mean` with ``proportiontocut=0.25`` on the flattened
    array (Agarwal et al. 2021, section 4.3).

    Raises:
        Nothing of its own; ``ValueError`` from numpy where ``scores`` holds values that are not numbers. An empty
            array gives NaN.
    """
    return float(sps.trim_mean(np.asarray(scores, dtype=float).reshape(-1), 0.25))


def _mean(scores: np.ndarray) -> float:
    return float(np.mean(scores))


AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {"iqm": interquartile_mean, "mean": _mean}


def normalise(scores: np.ndarray, low: np.ndarray | float, high: np.ndarray | float) -> np.ndarray:
    """Per-task normalised scores ``(score − low) / (high − low)``; ``low``/``high`` broadcast over tasks.

    E.g. ``low`` = the no-drop mean accuracy of each task and ``high = 1``: 0 is
    the unregularised level, 1 a perfect score, and the value is the share of
    the baseline's test error a method removed. Raises where ``high == low``.
    """
    scores = np.asarray(scores, dtype=float)
    low, high = np.broadcast_to(np.asarray(low, dtype=float), scores.shape[-1:]), np.broadcast_to(
        np.asarray(high, dtype=float), scores.shape[-1:])
    if np.any(high == low):
        raise ValueError("normalise: `high` equals `low` for some task (zero range)")
    return (scores - low) / (high - low)


def _resampled_indices(n_seeds: int, n_tasks: int, n_resamples: int, gen: np.random.Generator) -> np.ndarray:
    """``(n_resamples, n_seeds, n_tasks)`` seed indices, drawn with replacement within each task."""
    return gen.integers(0, n_seeds, size=(n_resamples, n_seeds, n_tasks))


def stratified_bootstrap(
    scores: Scores,
    statistic: Callable[..., float],
    *,
    rng: np.random.Generator,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and percentile interval of ``statistic(*arrays)`` under the stratified bootstrap.

    ``scores``: ``{method: (n_seeds, n_tasks)}``; ``statistic`` receives the
    arrays in the dict's order. Each resample draws, for every task, ``n_seeds``
    seeds with replacement (the same draw for every method, so paired runs stay
    paired) and evaluates the statistic. Returns ``(point, low, high)``.

    Raises:
        ValueError: ``scores`` is empty, its arrays are not 2-D of one shape or not finite, or
            ``confidence_level`` is not in (0, 1).
    """
    gen = _generator(rng)
    arrays = list(_check_scores(scores).values())
    n_seeds, n_tasks = arrays[0].shape
    if not (0 < confidence_level < 1):
        raise ValueError(f"`confidence_level` must be in (0, 1), got {confidence_level!r}")
    point = float(statistic(*arrays))
    index = _resampled_indices(n_seeds, n_tasks, int(n_resamples), gen)
    tasks = np.arange(n_tasks)
    values = np.array([statistic(*(a[i, tasks] for a in arrays)) for i in index])
    alpha = 1 - confidence_level
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)


def aggregate_intervals(
    scores: Scores,
    *,
    rng: np.random.Generator,
    aggregates: Sequence[str] = ("iqm", "mean"),
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """Each method's IQM and mean (of already normalised scores) with stratified bootstrap intervals.

    Returns a tidy frame ``method, aggregate, estimate, ci_low, ci_high,
    n_seeds, n_tasks``. Methods are processed in the dict's order, each from
    the generator's current state.

    Raises:
        ValueError: an unknown aggregate name, or ``scores`` is empty, not 2-D of one shape, or not finite.
    """
    scores = _check_scores(scores)
    unknown = [a for a in aggregates if a not in AGGREGATES]
    if unknown:
        raise ValueError(f"unknown aggregate(s) {unknown}; available: {', '.join(AGGREGATES)}")
    rows = []
    for method, array in scores.items():
        for name in aggregates:
            point, low, high = stratified_bootstrap({method: array}, AGGREGATES[name], rng=rng,
                                                    n_resamples=n_resamples, confidence_level=confidence_level)
            rows.append({"method": method, "aggregate": name, "estimate": point, "ci_low": low, "ci_high": high,
                         "n_seeds": array.shape[0], "n_tasks": array.shape[1]})
    return pd.DataFrame(rows)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """``P(X > Y)``: per task, the share of (run of X, run of Y) pairs where X scores higher (ties 1/2),
    averaged over tasks. ``x``, ``y``: ``(n_seeds, n_tasks)``.

    Per task this is the Mann-Whitney ``U / (n_x n_y)`` (Agarwal et al. 2021, eq. 3).

    Raises:
        ValueError: ``x`` and ``y`` are not ``(n_seeds, n_tasks)`` arrays over the same tasks.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n_seeds, n_tasks) with the same tasks, got {x.shape} and {y.shape}")
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(greater + 0.5 * ties))


def probability_of_improvement_interval(
    x: np.ndarray, y: np.ndarray, *, rng: np.random.Generator, n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> tuple[float, float, float]:
    """:func:`probability_of_improvement` with its stratified bootstrap interval: ``(point, low, high)``.

    Raises:
        ValueError: ``rng`` is not a :class:`numpy.random.Generator`, ``x`` and ``y`` are not 2-D arrays of one
            shape or not finite, or ``confidence_level`` is not in (0, 1) (from :func:`stratified_bootstrap`).
    """
    return stratified_bootstrap({"x": x, "y": y}, probability_of_improvement, rng=rng, n_resamples=n_resamples,
                                confidence_level=confidence_level)


def performance_profile(
    scores: Scores, thresholds: np.ndarray, *, rng: np.random.Generator, n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """Score distributions: per method and threshold ``tau``, the fraction of (seed, task) scores above ``tau``.

    Pointwise percentile intervals from the stratified bootstrap. Returns a tidy
    frame ``method, threshold, fraction, ci_low, ci_high``.

    Raises:
        ValueError: ``rng`` is not a :class:`numpy.random.Generator`, ``scores`` is empty, its arrays are not 2-D
            of one shape or not finite, or ``confidence_level`` is outside [0, 1] (numpy's quantile error).
    """
    gen = _generator(rng)
    scores = _check_scores(scores)
    thresholds = np.asarray(thresholds, dtype=float).reshape(-1)
    alpha = 1 - confidence_level
    frames = []
    for method, array in scores.items():
        n_seeds, n_tasks = array.shape
        index = _resampled_indices(n_seeds, n_tasks, int(n_resamples), gen)
        resampled = array[index, np.arange(n_tasks)]  # (n_resamples, n_seeds, n_tasks)
        above = (resampled.reshape(len(index), -1)[:, :, None] > thresholds).mean(axis=1)
        low, high = np.quantile(above, [alpha / 2, 1 - alpha / 2], axis=0)
        frames.append(pd.DataFrame({"method": method, "threshold": thresholds,
                                    "fraction": (array.reshape(-1)[:, None] > thresholds).mean(axis=0),
                                    "ci_low": low, "ci_high": high}))
    return pd.concat(frames, ignore_index=True)


def scores_from_frame(
    df: pd.DataFrame, *, value: str, method_col: str = "method", task_col: str | Sequence[str] = "task",
    seed_col: str = "seed", methods: Sequence[Any] | None = None,
) -> tuple[dict[Any, np.ndarray], list[Any], list[Any]]:
    """``({method: (n_seeds, n_tasks)}, tasks, seeds)`` from a tidy frame, one row per (method, task, seed).

    Only tasks where every method has every seed of the task are kept, and only
    the seeds every kept task has; raises if none are left.

    Raises:
        ValueError: a column is missing, no task has every method, or no seed is shared by every task and
            method.
    """
    tasks_cols = [task_col] if isinstance(task_col, str) else list(task_col)
    missing = [c for c in [value, method_col, seed_col, *tasks_cols] if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; available: {list(df.columns)}")
    frame = df.assign(_task=df[tasks_cols].astype(str).agg(" / ".join, axis=1))
    methods = list(methods) if methods is not None else sorted(frame[method_col].unique(), key=str)
    frame = frame[frame[method_col].isin(methods)]
    cube = frame.pivot_table(index=seed_col, columns=["_task", method_col], values=value, aggfunc="first")
    complete = cube.notna()
    tasks = [t for t in sorted(frame["_task"].unique())
             if all((t, m) in cube.columns for m in methods)]
    if not tasks:
        raise ValueError("no task has every method")
    seeds = [s for s in cube.index if all(complete.loc[s, (t, m)] for t in tasks for m in methods)]
    if len(seeds) < 1:
        raise ValueError("no seed is shared by every task and method")
    arrays = {m: np.column_stack([cube.loc[seeds, (t, m)].to_numpy(float) for t in tasks]) for m in methods}
    return arrays, tasks, seeds
