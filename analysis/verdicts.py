"""Verdicts on paired comparisons: families, Holm, minimum detectable effects, and the words allowed.

One function, :func:`paired_verdicts`, gives every comparison a notebook
states, so the same comparison on the same runs gets the same estimate,
interval and p-value wherever it is shown (t intervals: nothing is resampled).

Rules (the project's standards):

- **Families.** Each comparison belongs to a named family (``"primary"`` for
  the comparisons an experiment exists to make, ``"secondary"`` for the rest);
  Holm runs within each family only.
- **Intervals that agree with the test.** ``ci_low, ci_high`` is the 95% paired
  t interval, which excludes 0 exactly when the unadjusted ``p_ttest < 0.05``.
  ``ci_low_holm, ci_high_holm`` is the t interval at the level at which Holm's
  step-down procedure tested the comparison (``holm_level``): it excludes 0
  exactly when Holm rejects (``p_holm < alpha``). Neither ever contradicts its
  test.
- **Power stated.** Every row carries the minimum detectable effect at its n,
  alpha and family size (:func:`analysis.power.minimum_detectable_effect`), as
  ``mde_dz`` and in the value's units (``mde = mde_dz * sd_diff``).
- **Words.** ``better`` / ``worse`` (Holm rejects, oriented by
  ``higher_is_better``), ``equivalent`` (TOST within ``±margin`` rejects after
  Holm, when a margin is given), ``inconclusive`` otherwise, and only with at
  least :data:`MIN_VERDICT_N` paired seeds; below that every row says
  ``exploratory``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import power as _power
from . import stats as _stats

__all__ = ["MIN_VERDICT_N", "VERDICT_WORDS", "apply_families", "holm_levels", "paired_verdicts", "verdict_text", "word"]

#: the fewest paired seeds on which a verdict word is printed
MIN_VERDICT_N = 5
VERDICT_WORDS = ("better", "worse", "equivalent", "inconclusive", "exploratory")


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Per p-value, the confidence level at which Holm's step-down procedure tested it.

    With the p-values sorted, ``p_(1) <= ... <= p_(m)``, Holm tests ``p_(i)`` at
    ``alpha / (m − i + 1)`` and stops at the first ``s`` it cannot reject. A
    rejected comparison (``i < s``) gets ``1 − alpha / (m − i + 1)``; every other
    comparison gets the stopping level ``1 − alpha / (m − s + 1)``. A t interval at
    that level excludes 0 exactly when Holm rejects. NaN p-values get NaN and do
    not count towards ``m``.

    Raises:
        Nothing of its own; ``ValueError`` from numpy where a p-value is not a number.
    """
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    thresholds = alpha / (m - np.arange(m))  # alpha/m, alpha/(m-1), ..., alpha
    failed = np.flatnonzero(p[order] >= thresholds)
    stop = int(failed[0]) if len(failed) else m
    levels = 1 - thresholds
    out[order[:stop]] = levels[:stop]
    if stop < m:
        out[order[stop:]] = levels[stop]
    return out


def word(n: int, p_holm: float, diff: float, *, alpha: float = 0.05, p_tost_holm: float = np.nan,
         higher_is_better: bool = True, min_n: int = MIN_VERDICT_N) -> str:
    """The verdict word for one comparison (see the module docstring).

    Raises:
        Nothing of its own: comparisons of numbers (``TypeError`` only where ``n``, ``p_holm`` or ``diff`` is not
            one).
    """
    if n < min_n:
        return "exploratory"
    if p_holm < alpha:
        return "better" if (diff > 0) == higher_is_better else "worse"
    if p_tost_holm < alpha:
        return "equivalent"
    return "inconclusive"


def paired_verdicts(
    df: pd.DataFrame,
    *,
    value: str,
    pairs: Sequence[tuple[Any, Any]],
    method_col: str = "method",
    block_col: str | Sequence[str] = "seed",
    by: str | Sequence[str] | None = None,
    family: str | dict = "primary",
    alpha: float = 0.05,
    margin: float | None = None,
    higher_is_better: bool = True,
    power: float = 0.8,
    min_n: int = MIN_VERDICT_N,
    on_unpaired: str = "drop",
) -> pd.DataFrame:
    """Paired t analysis, Holm within families, MDE and a verdict word for each ``(method, baseline)`` pair.

    Input: long frame, one row per (``by`` group, method, block), with numeric
    ``value``. ``pairs`` lists the comparisons ``(method, baseline)``; each is
    made within every ``by`` group (e.g. per experiment) where both are present.
    ``family`` names the family of every pair (a string), or maps a pair to its
    family (a dict; pairs it does not name are ``"secondary"``). Holm runs over
    all rows of a family, across groups.

    Returns one row per comparison: ``<by...>, method, baseline, value, family,
    family_size, n, mean, mean_baseline, mean_diff, sd_diff, df, ci_low, ci_high
    (95% t), t_stat, p_ttest, p_holm, holm_level, ci_low_holm, ci_high_holm,
    cohen_dz, dz_low, dz_high, hedges_g, mde_dz, mde, p_tost, p_tost_holm,
    margin, verdict``. TOST columns are NaN without a ``margin``. A pair with
    fewer than 2 common blocks is left out.

    Raises:
        ValueError: a column is missing, ``alpha`` is not in (0, 0.5), ``margin`` is not positive and finite
            (or None), ``pairs`` is empty or not of pairs, or ``on_unpaired='raise'`` and a block is
            unpaired.
    """
    by_cols = [] if by is None else _stats._as_list(by, "by")
    block_cols = _stats._as_list(block_col, "block_col")
    _stats._require_columns(df, [value, method_col, *block_cols, *by_cols])
    if not (0 < alpha < 0.5):
        raise ValueError(f"`alpha` must be in (0, 0.5), got {alpha!r}")
    if margin is not None and (not np.isfinite(margin) or margin <= 0):
        raise ValueError(f"`margin` must be a positive finite number or None, got {margin!r}")
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"`pairs` must be a non-empty list of (method, baseline) pairs, got {pairs!r}")
    groups = df.groupby(by_cols, sort=True) if by_cols else [((), df)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        wide = _stats._wide(group, value=value, method_col=method_col, block_col=block_cols)
        for method, baseline in pairs:
            if method not in wide.columns or baseline not in wide.columns:
                continue
            both = wide[method].notna() & wide[baseline].notna()
            if on_unpaired == "raise" and not (wide[method].notna() == wide[baseline].notna()).all():
                raise ValueError(f"unpaired blocks between {method!r} and {baseline!r} in group {key}")
            if both.sum() < 2:
                continue
            x, y = wide.loc[both, method].to_numpy(float), wide.loc[both, baseline].to_numpy(float)
            row = _stats.paired_difference(x, y)
            p_tost = _stats.paired_tost_pvalue(x, y, margin) if margin is not None else np.nan
            fam = family if isinstance(family, str) else family.get((method, baseline), "secondary")
            rows.append({**dict(zip(by_cols, key)), method_col: method, "baseline": baseline, "value": value,
                         "family": fam, **row, "p_tost": p_tost})
    columns = [*by_cols, method_col, "baseline", "value", "family", "family_size", "n", "mean", "mean_baseline",
               "mean_diff", "sd_diff", "df", "ci_low", "ci_high", "t_stat", "p_ttest", "p_holm", "holm_level",
               "ci_low_holm", "ci_high_holm", "cohen_dz", "dz_low", "dz_high", "hedges_g", "mde_dz", "mde",
               "p_tost", "p_tost_holm", "margin", "higher_is_better", "verdict"]
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows)
    out["margin"] = np.nan if margin is None else float(margin)
    out["higher_is_better"] = bool(higher_is_better)
    out = apply_families(out, alpha=alpha, power=power, min_n=min_n)
    return out[columns]


def apply_families(table: pd.DataFrame, *, alpha: float = 0.05, power: float = 0.8, min_n: int = MIN_VERDICT_N) -> pd.DataFrame:
    """(Re)compute everything that depends on the families: Holm p, Holm-level intervals, MDE and words.

    ``table`` holds rows of :func:`paired_verdicts` (``family, n, mean_diff, sd_diff, df, p_ttest, p_tost,
    higher_is_better`` are read), possibly concatenated from several calls (e.g. one per metric, each
    with its own orientation): Holm then runs over each family across all of them. Returns a copy.

    Raises:
        KeyError: ``table`` lacks a column it reads (``family``, ``n``, ``mean_diff``, ``sd_diff``, ``df``,
            ``p_ttest``, ``p_tost``, ``higher_is_better``).
        ValueError: ``alpha`` or ``power`` is not in (0, 1) (from
            :func:`analysis.power.minimum_detectable_effect`), or ``n`` is NaN.
    """
    out = table.copy().reset_index(drop=True)
    out["family_size"] = out.groupby("family")["family"].transform("size").astype(int)
    for column in ("p_holm", "p_tost_holm", "holm_level"):
        out[column] = np.nan
    for _, index in out.groupby("family").groups.items():
        out.loc[index, "p_holm"] = _stats.adjust_pvalues(out.loc[index, "p_ttest"], "holm")
        out.loc[index, "holm_level"] = holm_levels(out.loc[index, "p_ttest"].to_numpy(), alpha)
        out.loc[index, "p_tost_holm"] = _stats.adjust_pvalues(out.loc[index, "p_tost"], "holm")
    se = out["sd_diff"] / np.sqrt(out["n"])
    half = sps.t.ppf(0.5 + out["holm_level"] / 2, out["df"]) * se
    out["ci_low_holm"] = out["mean_diff"] - half
    out["ci_high_holm"] = out["mean_diff"] + half
    out["mde_dz"] = [_power.minimum_detectable_effect(int(n), alpha=alpha, family_size=int(m), power=power)
                     for n, m in zip(out["n"], out["family_size"])]
    out["mde"] = out["mde_dz"] * out["sd_diff"]
    out["verdict"] = [word(int(r.n), r.p_holm, r.mean_diff, alpha=alpha, p_tost_holm=r.p_tost_holm,
                           higher_is_better=bool(r.higher_is_better), min_n=min_n) for r in out.itertuples()]
    return out


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def verdict_text(row: Any, *, method_col: str = "method", digits: int = 4, name: str | None = None) -> str:
    """One sentence for one row of :func:`paired_verdicts`: estimate, interval, p, n, MDE and the word.

    ``name`` replaces the default ``"<method> − <baseline>"`` label.

    Raises:
        TypeError: ``row`` lacks a field the sentence needs (``mean_diff``, ``ci_low``, ``dz_low``, ``n``, ...),
            which reads as None.
    """
    get = row.get if hasattr(row, "get") else lambda k, default=None: getattr(row, k, default)
    label = name or f"{get(method_col)} − {get('baseline')}"
    if np.isfinite(get("dz_low")):
        effect = f"d_z {get('cohen_dz'):+.2f} [{get('dz_low'):+.2f}, {get('dz_high'):+.2f}]"
    else:
        effect = "d_z undefined (every seed gives the same difference)"
    text = (f"{label} ({get('value')}): {_signed(get('mean_diff'), digits)} "
            f"[95% CI {_signed(get('ci_low'), digits)}, {_signed(get('ci_high'), digits)}], {effect}, "
            f"paired t p = {get('p_ttest'):.3g}, Holm p = {get('p_holm'):.3g} "
            f"({get('family')} family of {int(get('family_size'))}), n = {int(get('n'))} seeds, "
            f"MDE d_z {get('mde_dz'):.2f}")
    if get("sd_diff") > 0:
        text += f" (≈ {get('mde'):.{digits}f} at the observed sd of the differences)"
    margin = get("margin")
    if margin is not None and margin == margin:
        text += f", TOST ±{margin:g} Holm p = {get('p_tost_holm'):.3g}"
    return text + f": **{get('verdict')}**"
