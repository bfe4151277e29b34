"""Statistics for comparing regularisation methods across seeds and settings.

Pure functions on tidy :class:`pandas.DataFrame` objects, in the spirit of
``rliable``: every function states which columns it reads, returns a tidy
DataFrame (one row per comparison / group / term), never mutates its input and
never touches the trainer or the run store. The contract is the run store's
*runs table* (one row per run: ``run_id, method, seed, dataset, model, <hparams>,
test_acc, ...``), but any long frame with a value column, a method (or setting)
column and a block column (usually ``seed``) works.

Randomness
    Every random procedure (bootstrap CIs) takes an explicit ``rng`` that is a
    :class:`numpy.random.Generator` or an integer seed. A fixed integer seed
    reproduces results exactly; a Generator is consumed (its state advances), so
    pass a freshly seeded one to reproduce a call.

Bootstrap CIs
    :func:`scipy.stats.bootstrap` with the BCa method. BCa is undefined for
    degenerate samples (e.g. all values equal) and then returns NaN; in that case
    the interval is recomputed with the percentile method. The method actually
    used is reported per row in the ``ci_method`` column (``"BCa"``,
    ``"percentile"`` or ``"none"`` when fewer than 2 observations make a CI
    impossible).

Pairing
    Paired procedures pivot the frame to one row per block (``block_col``, which
    may be a list such as ``["dataset", "seed"]``) and one column per method.
    Exactly one row per (method, block) is required. Blocks present for one
    method but not the other raise ``ValueError`` unless ``on_unpaired="drop"``,
    in which case only blocks common to both are used.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as sps

__all__ = [
    "adjust_pvalues",
    "anova",
    "bootstrap_ci",
    "critical_difference",
    "friedman_test",
    "mixed_model",
    "nemenyi_cd",
    "paired_comparison",
    "pairwise_wilcoxon",
    "practical_equivalence",
    "summarize",
    "variance_decomposition",
]

RngLike = np.random.Generator | int | np.integer


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _as_list(cols: str | Sequence[str], argname: str) -> list[str]:
    if isinstance(cols, str):
        return [cols]
    cols = list(cols)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise ValueError(f"`{argname}` must be a column name or a non-empty list of column names, got {cols!r}")
    return cols


def _require_columns(df: pd.DataFrame, cols: Sequence[str], what: str = "df") -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"`{what}` must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"`{what}` is missing required column(s) {missing}; available columns: {list(df.columns)}"
        )


def _require_numeric_finite(df: pd.DataFrame, value: str) -> None:
    if not pd.api.types.is_numeric_dtype(df[value]):
        raise ValueError(f"column {value!r} (value) must be numeric, got dtype {df[value].dtype}")
    if df[value].isna().any():
        n = int(df[value].isna().sum())
        raise ValueError(
            f"column {value!r} (value) has {n} missing value(s); drop or impute them first "
            f"(e.g. df.dropna(subset=[{value!r}]))"
        )


def _make_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(
        f"`rng` must be a numpy.random.Generator or an int seed (explicit randomness is required), got {rng!r}"
    )


def _check_confidence(confidence_level: float) -> None:
    if not (0.0 < float(confidence_level) < 1.0):
        raise ValueError(f"`confidence_level` must be in (0, 1), got {confidence_level!r}")


def _block_key(df: pd.DataFrame, block_cols: list[str]) -> pd.Series:
    if len(block_cols) == 1:
        return df[block_cols[0]]
    return pd.Series(list(map(tuple, df[block_cols].to_numpy().tolist())), index=df.index)


def _wide(
    df: pd.DataFrame, *, value: str, method_col: str, block_col: str | Sequence[str]
) -> pd.DataFrame:
    """Pivot to index=block, columns=method (NaN where a block lacks a method)."""
    block_cols = _as_list(block_col, "block_col")
    _require_columns(df, [value, method_col, *block_cols])
    _require_numeric_finite(df, value)
    d = pd.DataFrame(
        {"_block": _block_key(df, block_cols).to_numpy(), "_method": df[method_col].to_numpy(),
         "_value": df[value].to_numpy()}
    )
    dup = d.duplicated(["_method", "_block"], keep=False)
    if dup.any():
        ex = d.loc[dup, ["_method", "_block"]].drop_duplicates().head(3).to_numpy().tolist()
        raise ValueError(
            f"more than one row per ({method_col!r}, {block_cols}) pair, e.g. {ex}; "
            f"filter (e.g. one dataset/setting) or aggregate first, or pass a longer `block_col` list"
        )
    wide = d.pivot(index="_block", columns="_method", values="_value")
    wide.columns.name = method_col
    wide.index.name = block_cols[0] if len(block_cols) == 1 else "block"
    return wide


def _pair(
    wide: pd.DataFrame, a: Any, b: Any, *, method_col: str, on_unpaired: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return paired arrays (a, b) over common blocks, validating pairing."""
    ma, mb = wide[a].notna(), wide[b].notna()
    both = ma & mb
    if not (ma == mb).all():
        if on_unpaired == "raise":
            only_a = list(wide.index[ma & ~mb][:5])
            only_b = list(wide.index[mb & ~ma][:5])
            raise ValueError(
                f"unpaired blocks between {method_col}={a!r} and {method_col}={b!r}: "
                f"only in {a!r}: {only_a}, only in {b!r}: {only_b}; every block (seed) must have both "
                f"methods, or pass on_unpaired='drop' to use the common blocks only"
            )
    n = int(both.sum())
    if n < 2:
        raise ValueError(
            f"fewer than 2 paired blocks for {method_col}={a!r} vs {b!r} (got {n}); need >= 2 paired seeds"
        )
    return wide.loc[both, a].to_numpy(float), wide.loc[both, b].to_numpy(float), n


def _check_on_unpaired(on_unpaired: str) -> None:
    if on_unpaired not in ("raise", "drop"):
        raise ValueError(f"`on_unpaired` must be 'raise' or 'drop', got {on_unpaired!r}")


# --------------------------------------------------------------------------- #
# primitives
# --------------------------------------------------------------------------- #
def adjust_pvalues(pvalues: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """Multiplicity-adjust a 1-D array of p-values, ignoring NaNs.

    Uses :func:`statsmodels.stats.multitest.multipletests` (``method`` is any of its
    methods, default ``"holm"``) on the finite entries only; NaN entries stay NaN and
    do not count towards the family size.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def bootstrap_ci(
    *samples: np.ndarray,
    statistic: Any = None,
    rng: RngLike,
    n_resamples: int = 9999,
    confidence_level: float = 0.95,
    paired: bool = False,
) -> tuple[float, float, str]:
    """Bootstrap confidence interval: BCa, falling back to percentile.

    ``samples`` are 1-D arrays; ``statistic(*samples, axis)`` must be vectorised
    (default: mean of the single sample). Returns ``(low, high, method_used)`` with
    ``method_used`` in ``{"BCa", "percentile", "none"}`` ("none": some sample has
    fewer than 2 observations, CI is NaN). For a constant sample the percentile
    interval collapses to the constant.
    """
    _check_confidence(confidence_level)
    gen = _make_rng(rng)
    samples = tuple(np.asarray(s, dtype=float).reshape(-1) for s in samples)
    if statistic is None:
        if len(samples) != 1:
            raise ValueError("`statistic` is required with more than one sample")

        def statistic(x, axis=-1):  # noqa: E306
            return np.mean(x, axis=axis)

    if min(len(s) for s in samples) < 2:
        return float("nan"), float("nan"), "none"
    kw = dict(
        statistic=statistic,
        n_resamples=int(n_resamples),
        vectorized=True,
        paired=paired,
        confidence_level=confidence_level,
        rng=gen,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap(samples, method="BCa", **kw)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isfinite(lo) and np.isfinite(hi):
        return lo, hi, "BCa"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap(samples, method="percentile", **kw)
    return float(res.confidence_interval.low), float(res.confidence_interval.high), "percentile"


def _wilcoxon(d: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank on differences; all-zero differences -> (0, 1)."""
    if np.all(d == 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sps.wilcoxon(d, zero_method="wilcox", method="auto")
    return float(r.statistic), float(r.pvalue)


def _ttest_rel(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    d = x - y
    sd = np.std(d, ddof=1)
    if sd == 0:
        # degenerate: identical differences. No evidence if all zero; otherwise the
        # t statistic is infinite and p is 0.
        m = float(np.mean(d))
        return (0.0, 1.0) if m == 0 else (float(np.sign(m) * np.inf), 0.0)
    r = sps.ttest_rel(x, y)
    return float(r.statistic), float(r.pvalue)


def _hedges_j(df: float) -> float:
    """Exact small-sample correction J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2))."""
    if df <= 1:
        return 0.0 if df == 1 else float("nan")
    return float(np.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / np.sqrt(df / 2))


def _cohen_dz(d: np.ndarray) -> float:
    m, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    if sd == 0:
        return 0.0 if m == 0 else float(np.sign(m) * np.inf)
    return m / sd


# --------------------------------------------------------------------------- #
# paired comparisons
# --------------------------------------------------------------------------- #
def paired_comparison(
    df: pd.DataFrame,
    *,
    value: str,
    method_col: str = "method",
    block_col: str | Sequence[str] = "seed",
    baseline: Any,
    rng: RngLike,
    n_resamples: int = 9999,
    confidence_level: float = 0.95,
    correction: str = "holm",
    on_unpaired: str = "raise",
) -> pd.DataFrame:
    """Compare every method against ``baseline``, paired by block (seed).

    Input: long frame with columns ``value`` (numeric, no NaN), ``method_col`` and
    ``block_col`` (str or list), exactly one row per (method, block).

    For each method ``m != baseline`` the paired differences ``d = m - baseline``
    over common blocks give:

    * ``mean_diff`` and its bootstrap CI (``ci_low``, ``ci_high``) — one-sample
      bootstrap of the mean of ``d`` (equivalent to a paired bootstrap), BCa with a
      percentile fallback (``ci_method`` says which was used);
    * ``p_wilcoxon``: two-sided Wilcoxon signed-rank test (``zero_method="wilcox"``,
      ``method="auto"``: exact for small n without ties); all-zero ``d`` gives p=1;
    * ``p_ttest``: two-sided paired t-test (:func:`scipy.stats.ttest_rel`); constant
      ``d`` gives p=1 if all zero, else 0;
    * ``cohen_dz = mean(d) / sd(d, ddof=1)``;
    * ``hedges_g = J(n-1) * cohen_dz`` with the exact correction
      ``J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2))`` (≈ ``1 - 3/(4 df - 1)``);
    * ``p_wilcoxon_adj``, ``p_ttest_adj``: ``correction``-adjusted (default Holm,
      via statsmodels ``multipletests``) across the compared methods.

    Returns one row per compared method with columns
    ``method, baseline, n, mean, mean_baseline, mean_diff, ci_low, ci_high,
    ci_method, confidence_level, wilcoxon_stat, p_wilcoxon, t_stat, p_ttest,
    cohen_dz, hedges_g, p_wilcoxon_adj, p_ttest_adj`` (``method`` is named after
    ``method_col``).
    """
    _check_on_unpaired(on_unpaired)
    _check_confidence(confidence_level)
    gen = _make_rng(rng)
    wide = _wide(df, value=value, method_col=method_col, block_col=block_col)
    if baseline not in wide.columns:
        raise ValueError(
            f"baseline {baseline!r} not found in column {method_col!r}; available: {list(wide.columns)}"
        )
    others = [m for m in wide.columns if m != baseline]
    if not others:
        raise ValueError(f"column {method_col!r} has no method other than the baseline {baseline!r}")
    rows = []
    for m in others:
        x, y, n = _pair(wide, m, baseline, method_col=method_col, on_unpaired=on_unpaired)
        d = x - y
        lo, hi, ci_method = bootstrap_ci(
            d, rng=gen, n_resamples=n_resamples, confidence_level=confidence_level
        )
        w_stat, p_w = _wilcoxon(d)
        t_stat, p_t = _ttest_rel(x, y)
        dz = _cohen_dz(d)
        rows.append(
            {
                method_col: m,
                "baseline": baseline,
                "n": n,
                "mean": float(np.mean(x)),
                "mean_baseline": float(np.mean(y)),
                "mean_diff": float(np.mean(d)),
                "ci_low": lo,
                "ci_high": hi,
                "ci_method": ci_method,
                "confidence_level": float(confidence_level),
                "wilcoxon_stat": w_stat,
                "p_wilcoxon": p_w,
                "t_stat": t_stat,
                "p_ttest": p_t,
                "cohen_dz": dz,
                "hedges_g": _hedges_j(n - 1) * dz,
            }
        )
    out = pd.DataFrame(rows)
    out["p_wilcoxon_adj"] = adjust_pvalues(out["p_wilcoxon"], correction)
    out["p_ttest_adj"] = adjust_pvalues(out["p_ttest"], correction)
    return out


def pairwise_wilcoxon(
    df: pd.DataFrame,
    *,
    value: str,
    method_col: str = "method",
    block_col: str | Sequence[str] = "seed",
    correction: str = "holm",
    alpha: float = 0.05,
    on_unpaired: str = "raise",
) -> pd.DataFrame:
    """Wilcoxon signed-rank tests for all pairs of methods, paired by block.

    Input: long frame with ``value``, ``method_col``, ``block_col``; one row per
    (method, block). Pairs are taken in sorted method order (``method_a < method_b``);
    differences are ``a - b``.

    Returns columns ``method_a, method_b, n, mean_diff, median_diff, statistic,
    pvalue, pvalue_adj, reject`` where ``pvalue_adj`` is ``correction``-adjusted
    (default Holm) across all pairs and ``reject = pvalue_adj < alpha``.
    """
    _check_on_unpaired(on_unpaired)
    wide = _wide(df, value=value, method_col=method_col, block_col=block_col)
    methods = sorted(wide.columns, key=str)
    if len(methods) < 2:
        raise ValueError(f"column {method_col!r} needs at least 2 distinct methods, got {methods}")
    rows = []
    for a, b in itertools.combinations(methods, 2):
        x, y, n = _pair(wide, a, b, method_col=method_col, on_unpaired=on_unpaired)
        d = x - y
        s, p = _wilcoxon(d)
        rows.append(
            {"method_a": a, "method_b": b, "n": n, "mean_diff": float(d.mean()),
             "median_diff": float(np.median(d)), "statistic": s, "pvalue": p}
        )
    out = pd.DataFrame(rows)
    out["pvalue_adj"] = adjust_pvalues(out["pvalue"], correction)
    out["reject"] = out["pvalue_adj"] < alpha
    return out


# --------------------------------------------------------------------------- #
# Friedman / Nemenyi / critical difference
# --------------------------------------------------------------------------- #
def _complete_wide(
    df: pd.DataFrame, *, value: str, method_col: str, block_col: str | Sequence[str], on_incomplete: str
) -> pd.DataFrame:
    if on_incomplete not in ("raise", "drop"):
        raise ValueError(f"`on_incomplete` must be 'raise' or 'drop', got {on_incomplete!r}")
    wide = _wide(df, value=value, method_col=method_col, block_col=block_col)
    incomplete = wide.isna().any(axis=1)
    if incomplete.any():
        if on_incomplete == "raise":
            raise ValueError(
                f"{int(incomplete.sum())} block(s) lack some {method_col!r} (e.g. {list(wide.index[incomplete][:5])}); "
                f"every block must contain every method, or pass on_incomplete='drop'"
            )
        wide = wide.loc[~incomplete]
    return wide


def _block_ranks(wide: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Per-block ranks, 1 = best, ties get average ranks."""
    vals = wide.to_numpy(float)
    ranks = sps.rankdata(-vals if higher_is_better else vals, axis=1, method="average")
    return pd.DataFrame(ranks, index=wide.index, columns=wide.columns)


def friedman_test(
    df: pd.DataFrame,
    *,
    value: str,
    method_col: str = "method",
    block_col: str | Sequence[str] = "seed",
    tie_correction: bool = True,
    on_incomplete: str = "raise",
) -> pd.DataFrame:
    """Friedman rank test that all methods perform equally, blocks = seeds/datasets.

    Input: long frame with ``value``, ``method_col``, ``block_col``; one row per
    (method, block); needs k >= 3 methods and n >= 2 complete blocks.

    ``tie_correction=True`` returns :func:`scipy.stats.friedmanchisquare` (which
    corrects for ties); ``False`` uses the textbook (Demšar 2006, eq. 1) statistic
    ``12 N / (k (k+1)) [Σ_j R_j² − k (k+1)² / 4]`` from average ranks ``R_j``.
    Also reports the Iman–Davenport statistic
    ``F = (N−1) χ² / (N (k−1) − χ²)`` with ``(k−1, (k−1)(N−1))`` d.o.f.

    Returns one row: ``statistic, pvalue, k, n, iman_davenport_F, iman_davenport_p``.
    """
    wide = _complete_wide(df, value=value, method_col=method_col, block_col=block_col, on_incomplete=on_incomplete)
    n, k = wide.shape
    if k < 3:
        raise ValueError(f"Friedman test needs at least 3 methods in {method_col!r}, got {k}; use paired_comparison")
    if n < 2:
        raise ValueError(f"Friedman test needs at least 2 complete blocks ({block_col!r}), got {n}")
    if tie_correction:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = sps.friedmanchisquare(*[wide[c].to_numpy(float) for c in wide.columns])
        chi2, p = float(r.statistic), float(r.pvalue)
    else:
        R = _block_ranks(wide, True).mean(axis=0).to_numpy()
        chi2 = float(12 * n / (k * (k + 1)) * (np.sum(R**2) - k * (k + 1) ** 2 / 4))
        p = float(sps.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    F = float((n - 1) * chi2 / denom) if denom > 0 else float("inf")
    pF = float(sps.f.sf(F, k - 1, (k - 1) * (n - 1))) if np.isfinite(F) else 0.0
    return pd.DataFrame(
        [{"statistic": chi2, "pvalue": p, "k": k, "n": n, "iman_davenport_F": F, "iman_davenport_p": pF}]
    )


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference ``q_α sqrt(k (k+1) / (6 n))``.

    ``q_α = studentized_range.ppf(1 − α, k, ∞) / sqrt(2)`` (Demšar 2006; e.g. k=4,
    α=0.05 gives 2.569 and with n=14 CD ≈ 1.25).
    """
    if k < 2 or n < 1:
        raise ValueError(f"nemenyi_cd needs k >= 2 methods and n >= 1 blocks, got k={k}, n={n}")
    if not (0 < alpha < 1):
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha!r}")
    q = float(sps.studentized_range.ppf(1 - alpha, k, np.inf)) / np.sqrt(2)
    return q * float(np.sqrt(k * (k + 1) / (6.0 * n)))


def _contiguous_cliques(order: list[Any], same: Any) -> list[list[Any]]:
    """Maximal runs order[i..j] (len >= 2) where every pair is `same`."""
    k = len(order)
    spans = []
    for i in range(k):
        j = i
        while j + 1 < k and all(same(order[a], order[j + 1]) for a in range(i, j + 1)):
            j += 1
        if j > i:
            spans.append((i, j))
    maximal = [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]
    return [order[i : j + 1] for i, j in sorted(set(maximal))]


def critical_difference(
    df: pd.DataFrame,
    *,
    value: str,
    method_col: str = "method",
    block_col: str | Sequence[str] = "seed",
    alpha: float = 0.05,
    higher_is_better: bool = True,
    clique_method: str = "cd",
    correction: str = "holm",
    on_incomplete: str = "raise",
) -> tuple[pd.DataFrame, list[list[Any]], float]:
    """Average ranks, Nemenyi critical difference and cliques for a CD diagram.

    Input: long frame with ``value``, ``method_col``, ``block_col``; one row per
    (method, block), every block containing every method (k >= 2, n >= 2).

    Ranks are computed within each block (1 = best; ``higher_is_better`` sets the
    direction; ties get average ranks) and averaged over blocks. The CD is the
    Nemenyi one, :func:`nemenyi_cd`.

    Cliques (groups of methods not significantly different) are maximal runs of
    methods, contiguous in rank order, in which *every* pair is not significantly
    different, according to ``clique_method``:

    * ``"cd"`` (default): two methods differ iff their average ranks differ by at
      least the CD (Nemenyi post-hoc test, Demšar 2006);
    * ``"wilcoxon"``: two methods differ iff the ``correction``-adjusted (default
      Holm) pairwise Wilcoxon p-value is < ``alpha`` (Benavoli et al. 2016).

    Only cliques of >= 2 methods are returned.

    Returns ``(ranks, cliques, cd)``: ``ranks`` has columns ``method`` (named after
    ``method_col``), ``mean_rank``, ``mean``, ``n`` sorted by ``mean_rank``;
    ``cliques`` is a list of lists of method labels; ``cd`` a float.
    """
    if clique_method not in ("cd", "wilcoxon"):
        raise ValueError(f"`clique_method` must be 'cd' or 'wilcoxon', got {clique_method!r}")
    wide = _complete_wide(df, value=value, method_col=method_col, block_col=block_col, on_incomplete=on_incomplete)
    n, k = wide.shape
    if k < 2 or n < 2:
        raise ValueError(f"critical_difference needs >= 2 methods and >= 2 complete blocks, got k={k}, n={n}")
    mean_rank = _block_ranks(wide, higher_is_better).mean(axis=0)
    ranks = (
        pd.DataFrame({method_col: wide.columns, "mean_rank": mean_rank.to_numpy(),
                      "mean": wide.mean(axis=0).to_numpy(), "n": n})
        .sort_values("mean_rank", kind="stable")
        .reset_index(drop=True)
    )
    cd = nemenyi_cd(k, n, alpha)
    order = list(ranks[method_col])
    r = dict(zip(ranks[method_col], ranks["mean_rank"]))
    if clique_method == "cd":
        def same(a: Any, b: Any) -> bool:
            return abs(r[a] - r[b]) < cd
    else:
        long = wide.reset_index(drop=True).melt(var_name="_m", value_name="_v", ignore_index=False)
        long["_b"] = long.index
        pw = pairwise_wilcoxon(long, value="_v", method_col="_m", block_col="_b", correction=correction, alpha=alpha)
        sig = {frozenset((a, b)): bool(s) for a, b, s in zip(pw["method_a"], pw["method_b"], pw["reject"])}

        def same(a: Any, b: Any) -> bool:
            return not sig[frozenset((a, b))]
    return ranks, _contiguous_cliques(order, same), float(cd)


# --------------------------------------------------------------------------- #
# linear models
# --------------------------------------------------------------------------- #
def _design(df: pd.DataFrame, value: str, factors: Sequence[str], extra: Sequence[str] = ()) -> tuple[pd.DataFrame, dict[str, str]]:
    factors = _as_list(factors, "factors")
    if len(set(factors)) != len(factors):
        raise ValueError(f"`factors` has duplicates: {factors}")
    _require_columns(df, [value, *factors, *extra])
    _require_numeric_finite(df, value)
    for f in factors:
        if df[f].isna().any():
            raise ValueError(f"factor column {f!r} has missing values")
        if df[f].nunique() < 2:
            raise ValueError(f"factor column {f!r} needs at least 2 levels, got {df[f].unique().tolist()}")
    data = pd.DataFrame({"y": df[value].to_numpy(float)})
    names = {}
    for i, f in enumerate(factors):
        data[f"f{i}"] = df[f].to_numpy()
        names[f"f{i}"] = f
    for e in extra:
        data[e] = df[e].to_numpy()
    return data, names


def _rename_term(term: str, names: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        return names[m.group(1)]

    return re.sub(r"C\((f\d+)(?:,\s*Sum)?\)", sub, term)


def _formula(names: dict[str, str], interactions: bool, sum_contrasts: bool) -> str:
    terms = [f"C({k}, Sum)" if sum_contrasts else f"C({k})" for k in names]
    return "y ~ " + (" * " if interactions else " + ").join(terms)


def anova(
    df: pd.DataFrame,
    *,
    value: str,
    factors: Sequence[str],
    interactions: bool = True,
    typ: int = 2,
) -> pd.DataFrame:
    """Factorial ANOVA via statsmodels ``ols`` + ``anova_lm``.

    Input: long frame, one row per run, with numeric ``value`` and the ``factors``
    columns (any dtype; every factor is treated as categorical, ``C(x)``, with >= 2
    levels). ``interactions=True`` fits the full factorial ``a * b * ...``,
    otherwise main effects only. ``typ`` is the sums-of-squares type (1, 2 or 3;
    type 3 uses sum-to-zero contrasts so main effects are meaningful).

    Returns columns ``term, sum_sq, df, F, pvalue``; ``term`` is a factor name, an
    interaction ``"a:b"`` or ``"Residual"`` (and ``"Intercept"`` for type 3).
    """
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    if typ not in (1, 2, 3):
        raise ValueError(f"`typ` must be 1, 2 or 3, got {typ!r}")
    data, names = _design(df, value, factors)
    model = smf.ols(_formula(names, interactions, typ == 3), data=data).fit()
    if model.df_resid <= 0:
        raise ValueError(
            f"no residual degrees of freedom (n={len(data)} rows for {int(model.df_model) + 1} parameters); "
            f"need replicate seeds per cell or interactions=False"
        )
    tab = sm.stats.anova_lm(model, typ=typ)
    out = pd.DataFrame(
        {
            "term": [_rename_term(t, names) for t in tab.index],
            "sum_sq": tab["sum_sq"].to_numpy(float),
            "df": tab["df"].to_numpy(float),
            "F": tab["F"].to_numpy(float),
            "pvalue": tab["PR(>F)"].to_numpy(float),
        }
    )
    return out


def variance_decomposition(
    df: pd.DataFrame, *, value: str, factors: Sequence[str], interactions: bool = True
) -> pd.DataFrame:
    """Share of variance explained by each factor / interaction (type-II SS).

    Input as for :func:`anova`. From the type-II ANOVA table:

    * ``eta_sq = SS_effect / SS_total`` with ``SS_total = Σ (y − ȳ)²`` (for a
      balanced design the effects plus residual sum to 1; for unbalanced designs
      type-II SS need not add up exactly);
    * ``partial_eta_sq = SS_effect / (SS_effect + SS_residual)``;
    * ``omega_sq = (SS_effect − df_effect MS_residual) / (SS_total + MS_residual)``.

    Returns columns ``term, sum_sq, df, eta_sq, partial_eta_sq, omega_sq`` with a
    final ``"Residual"`` row (its ``eta_sq`` is the unexplained share; partial and
    omega are NaN there), sorted by ``eta_sq`` descending among effects.
    """
    tab = anova(df, value=value, factors=factors, interactions=interactions, typ=2)
    y = df[value].to_numpy(float)
    ss_total = float(np.sum((y - y.mean()) ** 2))
    res = tab[tab["term"] == "Residual"].iloc[0]
    ss_res, df_res = float(res["sum_sq"]), float(res["df"])
    ms_res = ss_res / df_res
    eff = tab[tab["term"] != "Residual"].copy()
    denom = ss_total if ss_total > 0 else np.nan
    eff["eta_sq"] = eff["sum_sq"] / denom
    eff["partial_eta_sq"] = eff["sum_sq"] / (eff["sum_sq"] + ss_res)
    eff["omega_sq"] = (eff["sum_sq"] - eff["df"] * ms_res) / (ss_total + ms_res)
    eff = eff.sort_values("eta_sq", ascending=False)
    resid = pd.DataFrame(
        [{"term": "Residual", "sum_sq": ss_res, "df": df_res, "eta_sq": ss_res / denom,
          "partial_eta_sq": np.nan, "omega_sq": np.nan}]
    )
    cols = ["term", "sum_sq", "df", "eta_sq", "partial_eta_sq", "omega_sq"]
    return pd.concat([eff[cols], resid], ignore_index=True)


def mixed_model(
    df: pd.DataFrame,
    *,
    value: str,
    factors: Sequence[str],
    group: str = "seed",
    interactions: bool = False,
    reml: bool = True,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """Linear mixed model with a random intercept per ``group`` (e.g. seed).

    Input: long frame, one row per run, with numeric ``value``, the ``factors``
    (treated as categorical ``C(x)``, treatment coding: first sorted level is the
    reference) and ``group``. Fits ``statsmodels.formula.api.mixedlm(
    "value ~ C(f1) + C(f2) [+ interactions]", groups=group)``.

    Returns the fixed-effects table with columns ``term, estimate, std_err, z,
    pvalue, ci_low, ci_high`` and a last row ``term="group_var"`` holding the
    random-intercept variance (other columns NaN except ``estimate``/``std_err``).
    Terms are renamed back to column names, e.g. ``"method[T.ddc]"``.
    """
    import statsmodels.formula.api as smf

    _check_confidence(confidence_level)
    if not isinstance(df, pd.DataFrame) or group not in df.columns:
        cols = list(df.columns) if isinstance(df, pd.DataFrame) else None
        raise ValueError(f"`group` column {group!r} not found in df; available columns: {cols}")
    if df[group].nunique() < 2:
        raise ValueError(f"`group` column {group!r} needs at least 2 groups")
    data, names = _design(df, value, factors)
    data["_group"] = df[group].to_numpy()
    with warnings.catch_warnings():
        # statsmodels' ConvergenceWarning is left visible; only silence nan-sqrt noise
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = smf.mixedlm(_formula(names, interactions, False), data, groups=data["_group"]).fit(reml=reml)
        ci = fit.conf_int(alpha=1 - confidence_level)
        bse_re = fit.bse_re
    fe = fit.fe_params.index
    out = pd.DataFrame(
        {
            "term": [_rename_term(t, names) for t in fe],
            "estimate": fit.fe_params.to_numpy(float),
            "std_err": fit.bse_fe.to_numpy(float),
            "z": fit.tvalues[fe].to_numpy(float),
            "pvalue": fit.pvalues[fe].to_numpy(float),
            "ci_low": ci.loc[fe, 0].to_numpy(float),
            "ci_high": ci.loc[fe, 1].to_numpy(float),
        }
    )
    gv = pd.DataFrame(
        [{"term": "group_var", "estimate": float(fit.cov_re.iloc[0, 0]),
          "std_err": float(np.asarray(bse_re)[0]) if len(bse_re) else np.nan,
          "z": np.nan, "pvalue": np.nan, "ci_low": np.nan, "ci_high": np.nan}]
    )
    return pd.concat([out, gv], ignore_index=True)


# --------------------------------------------------------------------------- #
# descriptive
# --------------------------------------------------------------------------- #
def summarize(
    df: pd.DataFrame,
    *,
    value: str,
    by: str | Sequence[str],
    rng: RngLike,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
) -> pd.DataFrame:
    """Mean, standard deviation, count and bootstrap CI of the mean per group.

    Input: long frame with numeric ``value`` and the grouping column(s) ``by``.
    Groups are processed in sorted order, so a fixed ``rng`` seed reproduces the
    result exactly. CI: BCa bootstrap of the mean with percentile fallback
    (``ci_method``); groups with a single row get NaN CI and ``ci_method="none"``.

    Returns one row per group: ``<by...>, n, mean, std (ddof=1), sem, ci_low,
    ci_high, ci_method, confidence_level``.
    """
    by = _as_list(by, "by")
    _require_columns(df, [value, *by])
    _require_numeric_finite(df, value)
    _check_confidence(confidence_level)
    if len(df) == 0:
        raise ValueError("`df` is empty")
    gen = _make_rng(rng)
    rows = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        x = g[value].to_numpy(float)
        lo, hi, method = bootstrap_ci(x, rng=gen, n_resamples=n_resamples, confidence_level=confidence_level)
        sd = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
        rows.append(
            {**dict(zip(by, key)), "n": len(x), "mean": float(x.mean()), "std": sd,
             "sem": sd / np.sqrt(len(x)) if len(x) > 1 else float("nan"),
             "ci_low": lo, "ci_high": hi, "ci_method": method, "confidence_level": float(confidence_level)}
        )
    return pd.DataFrame(rows)


def practical_equivalence(
    df: pd.DataFrame,
    *,
    value: str,
    by: str | Sequence[str],
    margin: float,
    rng: RngLike,
    block_col: str | Sequence[str] | None = None,
    higher_is_better: bool = True,
    confidence_level: float = 0.90,
    n_resamples: int = 9999,
) -> pd.DataFrame:
    """Which settings perform within ``margin`` of the best one (robustness).

    Input: long frame with numeric ``value``, setting column(s) ``by`` (e.g.
    ``["p_base", "tau"]``) and optionally ``block_col`` (e.g. ``"seed"``) to pair
    runs across settings. The *best* setting has the highest mean (lowest when
    ``higher_is_better=False``). For every setting ``s`` the oriented difference
    ``diff = mean(s) − mean(best)`` (sign flipped when lower is better, so
    ``diff <= 0`` means "worse") gets a bootstrap CI (paired over common blocks
    when ``block_col`` is given, else an independent two-sample bootstrap; BCa with
    percentile fallback).

    Decision rules (``margin > 0`` in units of ``value``):

    * ``within_margin``: ``ci_low > −margin`` — a one-sided non-inferiority test,
      the relevant half of TOST (the setting cannot be meaningfully *better* than
      the best). With the default ``confidence_level=0.90`` this is TOST at
      α = 0.05.
    * ``not_worse_than_margin``: ``ci_high > −margin`` — lenient: the data do not
      show the setting to be worse than the best by more than ``margin``.

    Returns one row per setting: ``<by...>, n, mean, is_best, diff, ci_low,
    ci_high, ci_method, within_margin, not_worse_than_margin`` sorted by ``mean``
    (best first). The best row has ``diff = 0`` and a degenerate CI ``[0, 0]``.
    """
    by = _as_list(by, "by")
    if not np.isfinite(margin) or margin <= 0:
        raise ValueError(f"`margin` must be a positive finite number, got {margin!r}")
    _require_columns(df, [value, *by])
    _require_numeric_finite(df, value)
    gen = _make_rng(rng)
    sign = 1.0 if higher_is_better else -1.0
    setting = pd.Series(list(map(tuple, df[by].to_numpy().tolist())), index=df.index)
    means = df.groupby(setting, sort=True)[value].mean()
    if len(means) < 1:
        raise ValueError("`df` is empty")
    best = (means * sign).idxmax()
    if block_col is not None:
        block_cols = _as_list(block_col, "block_col")
        _require_columns(df, block_cols)
        tmp = pd.DataFrame({"_s": setting.to_numpy(), "_v": df[value].to_numpy()}, index=df.index)
        for c in block_cols:
            tmp[c] = df[c].to_numpy()
        wide = _wide(tmp.assign(_s=tmp["_s"].map(str)), value="_v", method_col="_s", block_col=block_cols)
        key = {s: str(s) for s in means.index}
    rows = []
    for s in means.index:
        x_all = df.loc[setting == s, value].to_numpy(float)
        if s == best:
            lo = hi = 0.0
            method = "none"
            diff = 0.0
        elif block_col is not None:
            x, y, _ = _pair(wide, key[s], key[best], method_col="/".join(by), on_unpaired="drop")
            d = sign * (x - y)
            diff = float(d.mean())
            lo, hi, method = bootstrap_ci(d, rng=gen, n_resamples=n_resamples, confidence_level=confidence_level)
        else:
            y = df.loc[setting == best, value].to_numpy(float)
            diff = float(sign * (x_all.mean() - y.mean()))
            lo, hi, method = bootstrap_ci(
                sign * x_all, sign * y,
                statistic=lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
                rng=gen, n_resamples=n_resamples, confidence_level=confidence_level,
            )
        rows.append({**dict(zip(by, s)), "n": len(x_all), "mean": float(x_all.mean()), "is_best": s == best,
                     "diff": diff, "ci_low": lo, "ci_high": hi, "ci_method": method})
    out = pd.DataFrame(rows)
    out["within_margin"] = out["ci_low"] > -margin
    out["not_worse_than_margin"] = out["ci_high"] > -margin
    out["margin"] = float(margin)
    out["confidence_level"] = float(confidence_level)
    return out.sort_values("mean", ascending=not higher_is_better, kind="stable").reset_index(drop=True)
