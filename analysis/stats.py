"""Statistics for comparing regularisation methods across seeds and settings.

Pure functions on tidy :class:`pandas.DataFrame` objects, in the spirit of
``rliable``: every function states which columns it reads, returns a tidy
DataFrame (one row per comparison / group / term), never mutates its input and
never touches the trainer or the run store. The contract is the run store's
*runs table* (one row per run: ``run_id, method, seed, dataset, model, <hparams>,
test_acc, ...``), but any long frame with a value column, a method (or setting)
column and a block column (usually ``seed``) works.

Intervals
    Means and paired mean differences get **t intervals** (``ci_method="t"``):
    exact for normal data at any n >= 2, and the same numbers wherever the same
    runs are compared (no resampling). The paired t interval and the paired
    t-test agree by construction: the ``1 - alpha`` interval excludes 0 exactly
    when ``p_ttest < alpha``. Effect sizes ``d_z`` get the exact noncentral-t
    interval (:func:`dz_interval`). The percentile/BCa bootstrap under-covers at
    small n (95% BCa intervals of a normal mean cover about 87% at n = 5 and
    89% at n = 10), so :func:`bootstrap_ci` and ``interval="bca"`` refuse fewer
    than :data:`BOOTSTRAP_MIN_N` observations.

Randomness
    Every random procedure (bootstrap CIs) takes an explicit ``rng`` that is a
    :class:`numpy.random.Generator` or an integer seed. A fixed integer seed
    reproduces results exactly; a Generator is consumed (its state advances), so
    pass a freshly seeded one to reproduce a call.

Pairing
    Paired procedures pivot the frame to one row per block (``block_col``, which
    may be a list such as ``["dataset", "seed"]``) and one column per method.
    Exactly one row per (method, block) is required. Blocks present for one
    method but not the other raise ``ValueError`` unless ``on_unpaired="drop"``,
    in which case only blocks common to both are used.

Linear models
    Seeds pair the runs of a grid, so :func:`anova` and
    :func:`variance_decomposition` take ``block="seed"``: the seed enters as an
    additive block (a randomised complete block design), the factors as a full
    factorial among themselves; block x factor interactions are not fitted and
    form the residual. :func:`mixed_model` reports t-based p-values and
    intervals with between-within degrees of freedom.
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
    "BOOTSTRAP_MIN_N",
    "adjust_pvalues",
    "anova",
    "binomial_se",
    "bootstrap_ci",
    "critical_difference",
    "dz_interval",
    "friedman_test",
    "identical_settings",
    "independent_jaccard",
    "mcnemar",
    "mean_interval",
    "mixed_model",
    "nemenyi_cd",
    "paired_comparison",
    "paired_difference",
    "pairwise_wilcoxon",
    "practical_equivalence",
    "summarize",
    "trend",
    "variance_by_source",
    "variance_decomposition",
]

RngLike = np.random.Generator | int | np.integer

#: the smallest sample for which the percentile/BCa bootstrap is offered: below
#: it, 95% intervals of a normal mean cover less than 93% (simulated: BCa 89% at
#: n = 10, 92% at n = 20, 93% at n = 30, 94% at n = 50)
BOOTSTRAP_MIN_N = 30


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _as_list(cols: str | Sequence[str], argname: str) -> list[str]:
    if isinstance(cols, str):
        return [cols]
    cols = list(cols)
    if not cols or not all(isinstance(column, str) for column in cols):
        raise ValueError(f"`{argname}` must be a column name or a non-empty list of column names, got {cols!r}")
    return cols


def _require_columns(df: pd.DataFrame, cols: Sequence[str], what: str = "df") -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"`{what}` must be a pandas DataFrame, got {type(df).__name__}")
    missing = [column for column in cols if column not in df.columns]
    if missing:
        raise ValueError(
            f"`{what}` is missing required column(s) {missing}; available columns: {list(df.columns)}"
        )


def _require_numeric_finite(df: pd.DataFrame, value: str) -> None:
    if not pd.api.types.is_numeric_dtype(df[value]) or pd.api.types.is_bool_dtype(df[value]):
        raise ValueError(f"column {value!r} (value) must be numeric, got dtype {df[value].dtype}")
    if df[value].isna().any():
        missing = int(df[value].isna().sum())
        raise ValueError(
            f"column {value!r} (value) has {missing} missing value(s); drop or impute them first "
            f"(e.g. df.dropna(subset=[{value!r}]))"
        )
    infinite = ~np.isfinite(df[value].to_numpy(float))
    if infinite.any():
        raise ValueError(
            f"column {value!r} (value) has {int(infinite.sum())} infinite value(s); every value must be finite"
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
    frame = pd.DataFrame(
        {"_block": _block_key(df, block_cols).to_numpy(), "_method": df[method_col].to_numpy(),
         "_value": df[value].to_numpy()}
    )
    duplicated = frame.duplicated(["_method", "_block"], keep=False)
    if duplicated.any():
        examples = frame.loc[duplicated, ["_method", "_block"]].drop_duplicates().head(3).to_numpy().tolist()
        raise ValueError(
            f"more than one row per ({method_col!r}, {block_cols}) pair, e.g. {examples}; "
            f"filter (e.g. one dataset/setting) or aggregate first, or pass a longer `block_col` list"
        )
    wide = frame.pivot(index="_block", columns="_method", values="_value")
    wide.columns.name = method_col
    wide.index.name = block_cols[0] if len(block_cols) == 1 else "block"
    return wide


def _pair(
    wide: pd.DataFrame, a: Any, b: Any, *, method_col: str, on_unpaired: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return paired arrays (a, b) over common blocks, validating pairing."""
    has_a, has_b = wide[a].notna(), wide[b].notna()
    both = has_a & has_b
    if not (has_a == has_b).all():
        if on_unpaired == "raise":
            only_a = list(wide.index[has_a & ~has_b][:5])
            only_b = list(wide.index[has_b & ~has_a][:5])
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

    ``"holm"`` (default): Holm's step-down adjustment, ``p_adj(i) = max_{j <= i}
    min(1, (m − j + 1) p_(j))`` over the sorted p-values (the values of
    statsmodels' ``multipletests(method="holm")``, computed here because that
    function runs a full garbage collection on every call). Any other ``method``
    goes to :func:`statsmodels.stats.multitest.multipletests`. NaN entries stay
    NaN and do not count towards the family size.

    Raises:
        ValueError: ``method`` is neither 'holm' nor a method of :func:`statsmodels.stats.multitest.multipletests`
            (raised there, when some p-value is finite).
    """
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if not len(finite):
        return out
    if method == "holm":
        m = len(finite)
        order = finite[np.argsort(p[finite], kind="stable")]
        stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
        out[order] = np.maximum.accumulate(stepped)
        return out
    from statsmodels.stats.multitest import multipletests

    out[finite] = multipletests(p[finite], method=method)[1]
    return out


def bootstrap_ci(
    *samples: np.ndarray,
    statistic: Any = None,
    rng: RngLike,
    n_resamples: int = 9999,
    confidence_level: float = 0.95,
    paired: bool = False,
    min_n: int = BOOTSTRAP_MIN_N,
) -> tuple[float, float, str]:
    """Bootstrap confidence interval: BCa, falling back to percentile.

    ``samples`` are 1-D arrays; ``statistic(*samples, axis)`` must be vectorised
    (default: mean of the single sample). Returns ``(low, high, method_used)`` with
    ``method_used`` in ``{"BCa", "percentile"}``. For a constant sample the
    percentile interval collapses to the constant.

    Raises ``ValueError`` when a sample has fewer than ``min_n`` observations
    (default :data:`BOOTSTRAP_MIN_N`): such intervals under-cover (see the module
    docstring); use :func:`mean_interval` / :func:`paired_difference` instead.
    """
    _check_confidence(confidence_level)
    generator = _make_rng(rng)
    samples = tuple(np.asarray(sample, dtype=float).reshape(-1) for sample in samples)
    if statistic is None:
        if len(samples) != 1:
            raise ValueError("`statistic` is required with more than one sample")

        def statistic(x, axis=-1):  # noqa: E306
            return np.mean(x, axis=axis)

    smallest = min(len(sample) for sample in samples)
    if smallest < max(int(min_n), 2):
        raise ValueError(
            f"bootstrap interval on {smallest} observation(s): needs n >= {max(int(min_n), 2)} "
            f"(BOOTSTRAP_MIN_N); use the t interval (mean_interval, paired_difference) at small n"
        )
    options = dict(
        statistic=statistic,
        n_resamples=int(n_resamples),
        vectorized=True,
        paired=paired,
        confidence_level=confidence_level,
        rng=generator,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.bootstrap(samples, method="BCa", **options)
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if np.isfinite(low) and np.isfinite(high):
        return low, high, "BCa"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.bootstrap(samples, method="percentile", **options)
    return float(result.confidence_interval.low), float(result.confidence_interval.high), "percentile"


def mean_interval(x: np.ndarray, confidence_level: float = 0.95) -> tuple[Any, Any]:
    """Student t interval of the mean: ``mean ± t_{n-1} sd / sqrt(n)``, over the last axis.

    Exact coverage for normal data at every ``n >= 2``. ``x``: 1-D sample (returns
    two floats) or an array of samples along its last axis (returns two arrays).
    NaN for fewer than 2 values; a constant sample gives ``(mean, mean)``.

    Raises:
        ValueError: ``confidence_level`` is not in (0, 1).
    """
    _check_confidence(confidence_level)
    x = np.asarray(x, dtype=float)
    n = x.shape[-1] if x.ndim else 1
    if n < 2:
        nan = np.full(x.shape[:-1], np.nan) if x.ndim > 1 else float("nan")
        return nan, nan
    mean = x.mean(axis=-1)
    half = float(sps.t.ppf(0.5 + confidence_level / 2, n - 1)) * x.std(axis=-1, ddof=1) / np.sqrt(n)
    if x.ndim == 1:
        return float(mean - half), float(mean + half)
    return mean - half, mean + half


def dz_interval(dz: Any, n: Any, confidence_level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact confidence interval of the standardised mean difference ``d_z = mean(d) / sd(d)``.

    Inverts the noncentral t distribution of ``t = d_z sqrt(n)`` (df ``n - 1``):
    the bounds are the noncentrality parameters whose CDF at the observed ``t``
    is ``1 - a/2`` and ``a/2`` (:func:`scipy.special.nctdtrinc`), divided by
    ``sqrt(n)`` (Steiger & Fouladi 1997; Cumming 2012, ch. 11). Vectorised over
    ``dz`` and ``n`` (arrays broadcast). NaN where ``n < 2`` or ``d_z`` is not
    finite (constant differences).

    Raises:
        ValueError: ``confidence_level`` is not in (0, 1), or ``dz`` and ``n`` do not broadcast.
    """
    _check_confidence(confidence_level)
    dz, n = np.broadcast_arrays(np.asarray(dz, dtype=float), np.asarray(n, dtype=float))
    defined = np.isfinite(dz) & (n >= 2)
    low, high = np.full(dz.shape, np.nan), np.full(dz.shape, np.nan)
    if defined.any():
        t, df, root = dz[defined] * np.sqrt(n[defined]), n[defined] - 1, np.sqrt(n[defined])
        alpha = 1 - confidence_level
        low[defined] = special.nctdtrinc(df, 1 - alpha / 2, t) / root
        high[defined] = special.nctdtrinc(df, alpha / 2, t) / root
    return low, high


def _wilcoxon(d: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank on differences; all-zero differences -> (0, 1)."""
    if np.all(d == 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.wilcoxon(d, zero_method="wilcox", method="auto")
    return float(result.statistic), float(result.pvalue)


def _wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided p-value the exact signed-rank test can give on n pairs: ``2 / 2**n``."""
    return float(min(1.0, 2.0 / 2.0**n))


def _hedges_j(df: float) -> float:
    """Exact small-sample correction J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2)); undefined (NaN) for df <= 1."""
    if df <= 1:
        return float("nan")
    return float(np.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / np.sqrt(df / 2))


def paired_difference(
    x: np.ndarray, y: np.ndarray, *, confidence_level: float = 0.95
) -> dict[str, float]:
    """Everything the paired t analysis says about ``d = x - y`` (1-D arrays of equal length).

    Returns a dict with ``n, mean, mean_baseline, mean_diff, sd_diff, df, ci_low,
    ci_high`` (t interval of the mean difference), ``t_stat, p_ttest`` (two-sided
    paired t-test, :func:`scipy.stats.ttest_rel`), ``cohen_dz = mean(d)/sd(d)``
    with its exact interval ``dz_low, dz_high`` (:func:`dz_interval`), and
    ``hedges_g = J(n-1) d_z`` (NaN at n = 2, where J is undefined).

    Constant differences (``sd = 0``): the interval collapses to the mean, p is 1
    when every difference is 0 and 0 otherwise, ``d_z`` is 0 or ±inf (its
    interval NaN). Fewer than 2 pairs raise ``ValueError``.

    Raises:
        ValueError: ``x`` and ``y`` differ in length, hold fewer than 2 pairs or a non-finite value, or
            ``confidence_level`` is not in (0, 1).
    """
    _check_confidence(confidence_level)
    x, y = np.asarray(x, dtype=float).reshape(-1), np.asarray(y, dtype=float).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"paired samples must have equal lengths, got {len(x)} and {len(y)}")
    n = len(x)
    if n < 2:
        raise ValueError(f"fewer than 2 pairs (got {n}); a paired interval needs >= 2")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired samples must be finite (no NaN or inf)")
    d = x - y
    mean_diff, sd = float(d.mean()), float(np.std(d, ddof=1))
    low, high = mean_interval(d, confidence_level)
    if sd == 0:
        t_stat, p = (0.0, 1.0) if mean_diff == 0 else (float(np.sign(mean_diff) * np.inf), 0.0)
        dz = 0.0 if mean_diff == 0 else float(np.sign(mean_diff) * np.inf)
    else:
        result = sps.ttest_rel(x, y)
        t_stat, p, dz = float(result.statistic), float(result.pvalue), mean_diff / sd
    # constant differences: d_z is 0 or infinite and has no sampling distribution
    dz_lo, dz_hi = dz_interval(dz, n, confidence_level) if sd > 0 else (np.nan, np.nan)
    return {
        "n": n, "mean": float(x.mean()), "mean_baseline": float(y.mean()), "mean_diff": mean_diff, "sd_diff": sd,
        "df": n - 1, "ci_low": low, "ci_high": high, "t_stat": t_stat, "p_ttest": p,
        "cohen_dz": dz, "dz_low": float(dz_lo), "dz_high": float(dz_hi), "hedges_g": _hedges_j(n - 1) * dz,
    }


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
    rng: RngLike | None = None,
    n_resamples: int = 9999,
    confidence_level: float = 0.95,
    correction: str = "holm",
    on_unpaired: str = "raise",
    interval: str = "t",
) -> pd.DataFrame:
    """Compare every method against ``baseline``, paired by block (seed).

    Input: long frame with columns ``value`` (numeric, finite), ``method_col`` and
    ``block_col`` (str or list), exactly one row per (method, block).

    For each method ``m != baseline`` the paired differences ``d = m - baseline``
    over common blocks give (see :func:`paired_difference`):

    * ``mean_diff`` and its interval (``ci_low``, ``ci_high``): with
      ``interval="t"`` (default) the paired t interval, which agrees with
      ``p_ttest`` by construction; ``interval="bca"`` gives the BCa bootstrap of
      the mean difference (needs ``rng`` and n >= :data:`BOOTSTRAP_MIN_N`).
      ``ci_method`` says which was used;
    * ``p_ttest``: two-sided paired t-test (:func:`scipy.stats.ttest_rel`);
    * ``p_wilcoxon``: two-sided Wilcoxon signed-rank test (``zero_method="wilcox"``,
      ``method="auto"``: exact for small n without ties); all-zero ``d`` gives p=1.
      ``wilcoxon_min_p = 2 / 2**n`` is the smallest p it can reach: at n <= 5 it
      cannot fall below 0.0625, so it can never reject at 0.05;
    * ``cohen_dz = mean(d) / sd(d, ddof=1)`` with its exact interval
      ``dz_low, dz_high``; ``hedges_g = J(n-1) * cohen_dz`` with
      ``J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2))`` (NaN at n = 2);
    * ``p_wilcoxon_adj``, ``p_ttest_adj``: ``correction``-adjusted (default Holm,
      via statsmodels ``multipletests``) across the compared methods.

    Returns one row per compared method with columns
    ``method, baseline, n, mean, mean_baseline, mean_diff, sd_diff, df, ci_low,
    ci_high, ci_method, confidence_level, wilcoxon_stat, p_wilcoxon,
    wilcoxon_min_p, t_stat, p_ttest, cohen_dz, dz_low, dz_high, hedges_g,
    p_wilcoxon_adj, p_ttest_adj`` (``method`` is named after ``method_col``).

    Raises:
        ValueError: a column is missing or not numeric, the baseline is absent or alone, ``interval`` is not
            't'/'bca', ``on_unpaired`` is not 'raise'/'drop' (or is 'raise' and a block is
            unpaired), or ``confidence_level`` is not in (0, 1).
    """
    _check_on_unpaired(on_unpaired)
    _check_confidence(confidence_level)
    if interval not in ("t", "bca"):
        raise ValueError(f"`interval` must be 't' or 'bca', got {interval!r}")
    generator = _make_rng(rng) if interval == "bca" else None
    wide = _wide(df, value=value, method_col=method_col, block_col=block_col)
    if baseline not in wide.columns:
        raise ValueError(
            f"baseline {baseline!r} not found in column {method_col!r}; available: {list(wide.columns)}"
        )
    others = [method for method in wide.columns if method != baseline]
    if not others:
        raise ValueError(f"column {method_col!r} has no method other than the baseline {baseline!r}")
    rows = []
    for method in others:
        x, y, n = _pair(wide, method, baseline, method_col=method_col, on_unpaired=on_unpaired)
        row = paired_difference(x, y, confidence_level=confidence_level)
        row["ci_method"] = "t"
        if interval == "bca":
            row["ci_low"], row["ci_high"], row["ci_method"] = bootstrap_ci(
                x - y, rng=generator, n_resamples=n_resamples, confidence_level=confidence_level
            )
        w_stat, p_wilcoxon = _wilcoxon(x - y)
        rows.append(
            {method_col: method, "baseline": baseline, **row, "confidence_level": float(confidence_level),
             "wilcoxon_stat": w_stat, "p_wilcoxon": p_wilcoxon, "wilcoxon_min_p": _wilcoxon_min_p(n)}
        )
    columns = [method_col, "baseline", "n", "mean", "mean_baseline", "mean_diff", "sd_diff", "df", "ci_low",
               "ci_high", "ci_method", "confidence_level", "wilcoxon_stat", "p_wilcoxon", "wilcoxon_min_p",
               "t_stat", "p_ttest", "cohen_dz", "dz_low", "dz_high", "hedges_g"]
    out = pd.DataFrame(rows)[columns]
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
    pvalue, min_pvalue, pvalue_adj, reject`` where ``pvalue_adj`` is
    ``correction``-adjusted (default Holm) across all pairs, ``min_pvalue = 2 / 2**n``
    is the smallest p-value the exact test can reach on n pairs, and ``reject``
    (pandas ``boolean``) is ``pvalue_adj < alpha``, or ``<NA>`` where the test
    cannot reject at all (``min_pvalue >= alpha``, e.g. n <= 5 at 0.05).

    Raises:
        ValueError: a column is missing, ``method_col`` has fewer than 2 methods, or ``on_unpaired`` is not
            'raise'/'drop' (or is 'raise' and a block is unpaired).
    """
    _check_on_unpaired(on_unpaired)
    wide = _wide(df, value=value, method_col=method_col, block_col=block_col)
    methods = sorted(wide.columns, key=str)
    if len(methods) < 2:
        raise ValueError(f"column {method_col!r} needs at least 2 distinct methods, got {methods}")
    rows = []
    for method_a, method_b in itertools.combinations(methods, 2):
        x, y, n = _pair(wide, method_a, method_b, method_col=method_col, on_unpaired=on_unpaired)
        d = x - y
        statistic, p = _wilcoxon(d)
        rows.append(
            {"method_a": method_a, "method_b": method_b, "n": n, "mean_diff": float(d.mean()),
             "median_diff": float(np.median(d)), "statistic": statistic, "pvalue": p, "min_pvalue": _wilcoxon_min_p(n)}
        )
    out = pd.DataFrame(rows)
    out["pvalue_adj"] = adjust_pvalues(out["pvalue"], correction)
    reject = pd.Series(out["pvalue_adj"] < alpha, dtype="boolean")
    reject[out["min_pvalue"] >= alpha] = pd.NA
    out["reject"] = reject
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

    When every block ties every method, the statistics are undefined (NaN) and
    both p-values are 1 (no evidence of any difference).

    Returns one row: ``statistic, pvalue, k, n, iman_davenport_F, iman_davenport_p``.

    Raises:
        ValueError: a column is missing, or there are fewer than 3 methods or fewer than 2 complete blocks.
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
            result = sps.friedmanchisquare(*[wide[column].to_numpy(float) for column in wide.columns])
        chi2, p = float(result.statistic), float(result.pvalue)
    else:
        R = _block_ranks(wide, True).mean(axis=0).to_numpy()
        chi2 = float(12 * n / (k * (k + 1)) * (np.sum(R**2) - k * (k + 1) ** 2 / 4))
        p = float(sps.chi2.sf(chi2, k - 1))
        if (wide.nunique(axis=1) == 1).all():
            chi2 = float("nan")
    if not np.isfinite(chi2):
        # every block ties every method (scipy's statistic is 0/0): no evidence of a difference
        chi2, p, F, pF = float("nan"), 1.0, float("nan"), 1.0
    else:
        denom = n * (k - 1) - chi2
        # denom 0: every block ranks the methods identically (the largest possible chi2)
        F = float((n - 1) * chi2 / denom) if denom > 0 else float("inf")
        pF = float(sps.f.sf(F, k - 1, (k - 1) * (n - 1))) if np.isfinite(F) else 0.0
    return pd.DataFrame(
        [{"statistic": chi2, "pvalue": p, "k": k, "n": n, "iman_davenport_F": F, "iman_davenport_p": pF}]
    )


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference ``q_α sqrt(k (k+1) / (6 n))``.

    ``q_α = studentized_range.ppf(1 − α, k, ∞) / sqrt(2)`` (Demšar 2006; e.g. k=4,
    α=0.05 gives 2.569 and with n=14 CD ≈ 1.25).

    Raises:
        ValueError: ``k < 2``, ``n < 1``, or ``alpha`` is not in (0, 1).
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
    maximal = [span for span in spans
               if not any(other != span and other[0] <= span[0] and span[1] <= other[1] for other in spans)]
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

    Raises:
        ValueError: a column is missing, ``clique_method`` is not 'cd'/'wilcoxon', or there are fewer than 2
            methods or 2 complete blocks.
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
    mean_rank_of = dict(zip(ranks[method_col], ranks["mean_rank"]))
    if clique_method == "cd":
        def same(method_a: Any, method_b: Any) -> bool:
            return abs(mean_rank_of[method_a] - mean_rank_of[method_b]) < cd
    else:
        long = wide.reset_index(drop=True).melt(var_name="_m", value_name="_v", ignore_index=False)
        long["_b"] = long.index
        pairwise = pairwise_wilcoxon(long, value="_v", method_col="_m", block_col="_b", correction=correction,
                                     alpha=alpha)
        significant = {frozenset((method_a, method_b)): bool(reject is not pd.NA and reject)
                       for method_a, method_b, reject in zip(pairwise["method_a"], pairwise["method_b"], pairwise["reject"])}

        def same(method_a: Any, method_b: Any) -> bool:
            return not significant[frozenset((method_a, method_b))]
    return ranks, _contiguous_cliques(order, same), float(cd)


# --------------------------------------------------------------------------- #
# linear models
# --------------------------------------------------------------------------- #
def _design(
    df: pd.DataFrame, value: str, factors: Sequence[str], block: str | None = None
) -> tuple[pd.DataFrame, dict[str, str]]:
    factors = _as_list(factors, "factors")
    if len(set(factors)) != len(factors):
        raise ValueError(f"`factors` has duplicates: {factors}")
    if block is not None and block in factors:
        raise ValueError(f"`block` {block!r} is also listed in `factors`")
    _require_columns(df, [value, *factors, *([block] if block is not None else [])])
    _require_numeric_finite(df, value)
    for factor in factors + ([block] if block is not None else []):
        if df[factor].isna().any():
            raise ValueError(f"column {factor!r} has missing values")
        if df[factor].nunique() < 2:
            raise ValueError(f"column {factor!r} needs at least 2 levels, got {df[factor].unique().tolist()}")
    data = pd.DataFrame({"y": df[value].to_numpy(float)})
    names = {}
    for i, factor in enumerate(factors):
        data[f"f{i}"] = df[factor].to_numpy()
        names[f"f{i}"] = factor
    if block is not None:
        data["b0"] = df[block].to_numpy()
        names["b0"] = block
    return data, names


def _rename_term(term: str, names: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        return names[match.group(1)]

    return re.sub(r"C\(([fb]\d+)(?:,\s*Sum)?\)", sub, term)


def _formula(names: dict[str, str], interactions: bool, sum_contrasts: bool) -> str:
    def term(key: str) -> str:
        return f"C({key}, Sum)" if sum_contrasts else f"C({key})"

    factors = [term(key) for key in names if key.startswith("f")]
    blocks = [term(key) for key in names if key.startswith("b")]
    rhs = (" * " if interactions else " + ").join(factors)
    return "y ~ " + " + ".join([f"({rhs})" if interactions and len(factors) > 1 and blocks else rhs, *blocks])


def anova(
    df: pd.DataFrame,
    *,
    value: str,
    factors: Sequence[str],
    interactions: bool = True,
    typ: int = 2,
    block: str | None = None,
) -> pd.DataFrame:
    """Factorial ANOVA via statsmodels ``ols`` + ``anova_lm``, optionally with a block.

    Input: long frame, one row per run, with numeric ``value`` and the ``factors``
    columns (any dtype; every factor is treated as categorical, ``C(x)``, with >= 2
    levels). ``interactions=True`` fits the full factorial ``a * b * ...``,
    otherwise main effects only. ``typ`` is the sums-of-squares type (1, 2 or 3;
    type 3 uses sum-to-zero contrasts so main effects are meaningful).

    ``block`` (e.g. ``"seed"``) adds the block as an additive categorical term:
    runs that share a seed share initial weights and data order, and the block
    takes that shared variation out of the residual (a randomised complete block
    design). Block x factor interactions are not fitted: they are the error term.

    Returns columns ``term, sum_sq, df, F, pvalue``; ``term`` is a factor name, an
    interaction ``"a:b"``, the block's name, or ``"Residual"`` (and
    ``"Intercept"`` for type 3).

    Raises:
        ValueError: a column is missing or not numeric, ``typ`` is not 1, 2 or 3, or the design leaves no
            residual degrees of freedom (no replicate seeds).
    """
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    if typ not in (1, 2, 3):
        raise ValueError(f"`typ` must be 1, 2 or 3, got {typ!r}")
    data, names = _design(df, value, factors, block)
    model = smf.ols(_formula(names, interactions, typ == 3), data=data).fit()
    if model.df_resid <= 0:
        raise ValueError(
            f"no residual degrees of freedom (n={len(data)} rows for {int(model.df_model) + 1} parameters); "
            f"need replicate seeds per cell or interactions=False"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a term with zero sum of squares gives 0/0
        table = sm.stats.anova_lm(model, typ=typ)
    out = pd.DataFrame(
        {
            "term": [_rename_term(term, names) for term in table.index],
            "sum_sq": table["sum_sq"].to_numpy(float),
            "df": table["df"].to_numpy(float),
            "F": table["F"].to_numpy(float),
            "pvalue": table["PR(>F)"].to_numpy(float),
        }
    )
    return out


def variance_decomposition(
    df: pd.DataFrame, *, value: str, factors: Sequence[str], interactions: bool = True, block: str | None = None
) -> pd.DataFrame:
    """Share of variance explained by each factor / interaction (type-II SS).

    Input as for :func:`anova`; ``block`` (e.g. ``"seed"``) gets its own row, the
    share of the variance that the seeds explain. From the type-II ANOVA table:

    * ``eta_sq = SS_effect / SS_total`` with ``SS_total = Σ (y − ȳ)²`` (for a
      balanced design the effects plus residual sum to 1; for unbalanced designs
      type-II SS need not add up exactly);
    * ``partial_eta_sq = SS_effect / (SS_effect + SS_residual)``;
    * ``omega_sq = (SS_effect − df_effect MS_residual) / (SS_total + MS_residual)``.

    Returns columns ``term, sum_sq, df, eta_sq, partial_eta_sq, omega_sq`` with a
    final ``"Residual"`` row (its ``eta_sq`` is the unexplained share; partial and
    omega are NaN there), sorted by ``eta_sq`` descending among effects.

    Raises:
        ValueError: as :func:`anova`: a column is missing, ``value`` is not numeric and finite, a factor has
            missing values or fewer than 2 levels, or no residual degrees of freedom are left.
    """
    table = anova(df, value=value, factors=factors, interactions=interactions, typ=2, block=block)
    y = df[value].to_numpy(float)
    ss_total = float(np.sum((y - y.mean()) ** 2))
    residual = table[table["term"] == "Residual"].iloc[0]
    ss_res, df_res = float(residual["sum_sq"]), float(residual["df"])
    ms_res = ss_res / df_res
    effects = table[table["term"] != "Residual"].copy()
    denom = ss_total if ss_total > 0 else np.nan
    effects["eta_sq"] = effects["sum_sq"] / denom
    with np.errstate(invalid="ignore", divide="ignore"):
        effects["partial_eta_sq"] = effects["sum_sq"] / (effects["sum_sq"] + ss_res)
    effects["omega_sq"] = (effects["sum_sq"] - effects["df"] * ms_res) / (ss_total + ms_res)
    effects = effects.sort_values("eta_sq", ascending=False)
    residual_row = pd.DataFrame(
        [{"term": "Residual", "sum_sq": ss_res, "df": df_res, "eta_sq": ss_res / denom,
          "partial_eta_sq": np.nan, "omega_sq": np.nan}]
    )
    columns = ["term", "sum_sq", "df", "eta_sq", "partial_eta_sq", "omega_sq"]
    return pd.concat([effects[columns], residual_row], ignore_index=True)


def _between_within_df(exog: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Between-within denominator degrees of freedom per fixed-effect column.

    A column constant within every group is a between-group effect: df = G −
    rank(between-group columns). Any other column is a within-group effect:
    df = N − rank([group indicators, within-group columns]) (SAS ``DDFM=BETWITHIN``;
    for a balanced randomised block design this is the block ANOVA's residual df).
    """
    codes, _ = pd.factorize(groups)
    n, n_groups = len(codes), int(codes.max()) + 1
    indicators = np.zeros((n, n_groups))
    indicators[np.arange(n), codes] = 1.0
    between = []
    for j in range(exog.shape[1]):
        column = exog[:, j]
        spread = pd.Series(column).groupby(codes).agg(lambda values: values.max() - values.min()).to_numpy()
        between.append(bool(np.all(spread == 0)))
    between = np.array(between)
    df_between = n_groups - np.linalg.matrix_rank(exog[:, between]) if between.any() else np.nan
    df_within = n - np.linalg.matrix_rank(np.column_stack([indicators, exog[:, ~between]]))
    return np.where(between, df_between, df_within).astype(float)


#: a mixed model's group variance at most this share of the total variance is "on the boundary" (0)
BOUNDARY_SHARE = 1e-3


def _fit_mixedlm(data: pd.DataFrame, formula: str, reml: bool):
    """``(model, fit, random-effect std errors)`` of statsmodels' ``mixedlm(formula, groups=data["_group"])``.

    statsmodels warns "MLE may be on the boundary" whenever a variance is below
    0.01 in absolute terms, i.e. always for accuracies (variances ~1e-4): whether
    the group variance is at its boundary is judged against the total variance
    instead (by :func:`mixed_model`) and said in the table. Its optimizer's
    "failed to converge ... retrying" notes are dropped when a retry converged;
    other warnings (e.g. a final fit that did not converge) stay visible.
    """
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # nan-sqrt noise
        model = smf.mixedlm(formula, data, groups=data["_group"])
        fit = model.fit(reml=reml)
        bse_re = fit.bse_re
    for caught_warning in caught:
        text = str(caught_warning.message)
        settled = issubclass(caught_warning.category, ConvergenceWarning) and (
            "boundary" in text or (fit.converged and ("failed to converge" in text or "Retrying" in text)))
        if not settled:
            warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename, caught_warning.lineno)
    return model, fit, bse_re


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
    """Linear mixed model with a random intercept per ``group`` (e.g. seed), with t-based inference.

    Input: long frame, one row per run, with numeric ``value``, the ``factors``
    (treated as categorical ``C(x)``, treatment coding: first sorted level is the
    reference) and ``group``. Fits ``statsmodels.formula.api.mixedlm(
    "value ~ C(f1) + C(f2) [+ interactions]", groups=group)``.

    statsmodels reports Wald z tests, which at 3-5 seeds are far too liberal.
    Here each fixed effect's ``t = estimate / std_err`` is referred to a t
    distribution with **between-within** degrees of freedom (``df``; see
    :func:`_between_within_df`), and the interval is ``estimate ± t_df std_err``.
    For a balanced design with a random seed intercept this reproduces the
    randomised-block ANOVA's tests.

    Returns the fixed-effects table with columns ``term, estimate, std_err, t, df,
    pvalue, ci_low, ci_high, df_method, note`` and a last row ``term="group_var"``
    holding the random-intercept variance (other columns NaN except
    ``estimate``/``std_err``). Terms are renamed back to column names, e.g.
    ``"method[T.ddc]"``. When the group variance is estimated at its boundary
    (0; at most :data:`BOUNDARY_SHARE` of the total variance), the ``group_var``
    row's ``note`` says so (the fixed effects are then those of ordinary least
    squares); statsmodels' "MLE may be on the boundary" warning, raised for any
    variance below 0.01 in absolute terms, is not passed on.

    Raises:
        ValueError: ``group`` is not a column or has fewer than 2 groups, a factor or ``value`` column is
            missing, or ``confidence_level`` is not in (0, 1).
    """
    _check_confidence(confidence_level)
    if not isinstance(df, pd.DataFrame) or group not in df.columns:
        cols = list(df.columns) if isinstance(df, pd.DataFrame) else None
        raise ValueError(f"`group` column {group!r} not found in df; available columns: {cols}")
    if df[group].nunique() < 2:
        raise ValueError(f"`group` column {group!r} needs at least 2 groups")
    data, names = _design(df, value, factors)
    data["_group"] = df[group].to_numpy()
    model, fit, bse_re = _fit_mixedlm(data, _formula(names, interactions, False), reml)
    group_var = float(fit.cov_re.iloc[0, 0])
    boundary = group_var <= BOUNDARY_SHARE * (group_var + float(fit.scale))
    fixed_effects = fit.fe_params.index
    estimate, std_err = fit.fe_params.to_numpy(float), fit.bse_fe.to_numpy(float)
    dof = _between_within_df(model.exog, data["_group"].to_numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        t = estimate / std_err
    pvalue = 2 * sps.t.sf(np.abs(t), dof)
    half = sps.t.ppf(0.5 + confidence_level / 2, dof) * std_err
    out = pd.DataFrame(
        {
            "term": [_rename_term(term, names) for term in fixed_effects],
            "estimate": estimate,
            "std_err": std_err,
            "t": t,
            "df": dof,
            "pvalue": pvalue,
            "ci_low": estimate - half,
            "ci_high": estimate + half,
            "df_method": "between-within",
            "note": "",
        }
    )
    note = (f"variance of the {group} intercepts estimated at its boundary (0): the {group}s explain no variance "
            "beyond the residual, and the fixed effects equal ordinary least squares'") if boundary else ""
    group_row = pd.DataFrame(
        [{"term": "group_var", "estimate": group_var,
          "std_err": float(np.asarray(bse_re)[0]) if len(bse_re) else np.nan,
          "t": np.nan, "df": np.nan, "pvalue": np.nan, "ci_low": np.nan, "ci_high": np.nan, "df_method": "", "note": note}]
    )
    return pd.concat([out, group_row], ignore_index=True)


# --------------------------------------------------------------------------- #
# descriptive
# --------------------------------------------------------------------------- #
def summarize(
    df: pd.DataFrame,
    *,
    value: str,
    by: str | Sequence[str],
    rng: RngLike | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    interval: str = "t",
) -> pd.DataFrame:
    """Mean, standard deviation, count and confidence interval of the mean per group.

    Input: long frame with numeric ``value`` and the grouping column(s) ``by``.
    Groups are processed in sorted order. CI: the t interval of the mean
    (``interval="t"``, default; :func:`mean_interval`), or the BCa bootstrap
    (``interval="bca"``: needs ``rng`` and n >= :data:`BOOTSTRAP_MIN_N` per group).
    Groups with a single row get NaN CI and ``ci_method="none"``.

    Returns one row per group: ``<by...>, n, mean, std (ddof=1), sem, ci_low,
    ci_high, ci_method, confidence_level``.

    Raises:
        ValueError: a column is missing or not numeric and finite, ``df`` is empty, ``interval`` is not
            't'/'bca', or ``confidence_level`` is not in (0, 1).
    """
    by = _as_list(by, "by")
    _require_columns(df, [value, *by])
    _require_numeric_finite(df, value)
    _check_confidence(confidence_level)
    if interval not in ("t", "bca"):
        raise ValueError(f"`interval` must be 't' or 'bca', got {interval!r}")
    if len(df) == 0:
        raise ValueError("`df` is empty")
    generator = _make_rng(rng) if interval == "bca" else None
    rows = []
    for key, group in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        x = group[value].to_numpy(float)
        if len(x) < 2:
            low, high, method = float("nan"), float("nan"), "none"
        elif interval == "bca":
            low, high, method = bootstrap_ci(x, rng=generator, n_resamples=n_resamples,
                                             confidence_level=confidence_level)
        else:
            (low, high), method = mean_interval(x, confidence_level), "t"
        sd = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
        rows.append(
            {**dict(zip(by, key)), "n": len(x), "mean": float(x.mean()), "std": sd,
             "sem": sd / np.sqrt(len(x)) if len(x) > 1 else float("nan"),
             "ci_low": low, "ci_high": high, "ci_method": method, "confidence_level": float(confidence_level)}
        )
    return pd.DataFrame(rows)


def paired_tost_pvalue(x: np.ndarray, y: np.ndarray, margin: float) -> float:
    """p-value of the paired two one-sided t-tests (TOST; Schuirmann 1987) that ``mean(x - y)`` lies in ``(-margin, margin)``.

    ``x``, ``y``: paired values, shape ``(n,)`` each, ``n >= 2``, in the units
    of the metric; ``margin`` in the same units. The larger of the two one-sided
    p-values (:func:`statsmodels.stats.weightstats.ttost_paired`). Constant
    differences have no spread to test: the p-value is then 0 when ``|mean|`` is
    inside the margin, else 1.

    Raises:
        ValueError: ``x`` and ``y`` differ in shape (numpy's broadcasting error).
    """
    from statsmodels.stats.weightstats import ttost_paired

    differences = x - y
    if np.std(differences, ddof=1) == 0:  # constant differences: the test is decided by the mean alone
        return 0.0 if abs(float(differences.mean())) < margin else 1.0
    return float(ttost_paired(x, y, -margin, margin)[0])


def _paired_tost(x: np.ndarray, y: np.ndarray, margin: float, alpha: float) -> dict:
    """The paired columns of one :func:`practical_equivalence` row: ``diff``, its ``1 - 2 alpha`` t interval, ``p_tost``."""
    low, high = mean_interval(x - y, 1 - 2 * alpha)
    return dict(diff=float((x - y).mean()), ci_low=low, ci_high=high, ci_method="t",
                p_tost=paired_tost_pvalue(x, y, margin), _df=len(x) - 1)


def _welch_tost(x: np.ndarray, y: np.ndarray, margin: float, alpha: float) -> dict:
    """The unpaired columns of one :func:`practical_equivalence` row: Welch's ``1 - 2 alpha`` interval and TOST."""
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttost_ind

    if len(x) < 2 or len(y) < 2:
        low = high = p_tost = float("nan")
    else:
        compared = CompareMeans(DescrStatsW(x), DescrStatsW(y))
        low, high = (float(bound) for bound in compared.tconfint_diff(alpha=2 * alpha, usevar="unequal"))
        p_tost = float(ttost_ind(x, y, -margin, margin, usevar="unequal")[0])
    return dict(diff=float(x.mean() - y.mean()), ci_low=low, ci_high=high, ci_method="welch t", p_tost=p_tost, _df=np.nan)


def _settings_wide(df: pd.DataFrame, setting: pd.Series, value: str, block_col) -> pd.DataFrame:
    """``value`` as a (block x setting) table, each setting named by ``str`` of its tuple of levels."""
    block_cols = _as_list(block_col, "block_col")
    _require_columns(df, block_cols)
    frame = pd.DataFrame({"_s": setting.map(str).to_numpy(), "_v": df[value].to_numpy()}, index=df.index)
    for column in block_cols:
        frame[column] = df[column].to_numpy()
    return _wide(frame, value="_v", method_col="_s", block_col=block_cols)


def _with_holm_intervals(out: pd.DataFrame, alpha: float, correction: str | None) -> pd.DataFrame:
    """``out`` with ``p_tost_holm`` and the t intervals ``ci_low_holm, ci_high_holm`` at each setting's Holm level."""
    out["p_tost_holm"] = adjust_pvalues(out["p_tost"], "holm") if correction == "holm" else out["p_tost"]
    level = np.full(len(out), 1 - alpha)  # the level of each one-sided test
    if correction == "holm":
        from .verdicts import holm_levels

        level = holm_levels(out["p_tost"].to_numpy(), alpha)
    half_width = {}
    for i, row in out.iterrows():
        if row["is_best"] or not np.isfinite(level[i]) or row["ci_method"] != "t":
            continue
        widen = sps.t.ppf(level[i], row["_df"]) / sps.t.ppf(1 - alpha, row["_df"])
        half_width[i] = (row["ci_high"] - row["ci_low"]) / 2 * widen
    out["ci_low_holm"] = [out["diff"][i] - half_width[i] if i in half_width else np.nan for i in out.index]
    out["ci_high_holm"] = [out["diff"][i] + half_width[i] if i in half_width else np.nan for i in out.index]
    return out


def practical_equivalence(
    df: pd.DataFrame,
    *,
    value: str,
    by: str | Sequence[str],
    margin: float,
    select: str | None = None,
    block_col: str | Sequence[str] | None = None,
    higher_is_better: bool = True,
    alpha: float = 0.05,
    correction: str | None = "holm",
) -> pd.DataFrame:
    """Which settings perform within ``margin`` of the chosen best one: two one-sided t-tests (TOST).

    Input: long frame with numeric ``value`` (the reported metric, e.g.
    ``test_acc``), setting column(s) ``by`` (e.g. ``["p_base", "tau"]``),
    optionally ``select`` (the metric that *chooses*, e.g. ``val_acc``; default
    ``value``) and ``block_col`` (e.g. ``"seed"``) to pair runs across settings.

    The *best* (reference) setting has the highest mean of ``select`` (lowest when
    ``higher_is_better=False``): validation chooses, the test metric reports.
    For every other setting ``s`` the oriented difference of ``value``,
    ``diff = mean(s) − mean(best)`` (sign flipped when lower is better), is tested
    for equivalence within ``(−margin, +margin)`` by two one-sided t-tests
    (Schuirmann 1987): :func:`statsmodels.stats.weightstats.ttost_paired` over
    common blocks when ``block_col`` is given, else Welch's
    :func:`~statsmodels.stats.weightstats.ttost_ind`. ``p_tost`` is the larger
    of the two one-sided p-values; ``equivalent = p_tost < alpha``, which holds
    exactly when the ``1 − 2 alpha`` t interval (``ci_low``, ``ci_high``; 90% at
    the default alpha) lies inside ``(−margin, margin)``.

    * ``p_tost_holm``: ``p_tost`` Holm-adjusted over the settings of this call
      (``correction="holm"``, default; ``None`` leaves it equal to ``p_tost``), and
      ``ci_low_holm, ci_high_holm``: the t interval at level ``1 − 2 a_i``, where
      ``a_i`` is the level at which Holm tested that setting
      (:func:`analysis.verdicts.holm_levels`), which lies inside the margin exactly
      when the adjusted test declares equivalence;
    * ``within_margin``: ``p_tost_holm < alpha``, for the settings other than the
      reference (always False on the reference row, so "k of N within margin"
      counts the other settings only);
    * ``in_region``: the reference plus every equivalent setting;
    * ``not_worse_than_margin``: lenient, ``ci_high > −margin``: the data do not
      show the setting to be worse than the reference by more than ``margin``.

    Returns one row per setting: ``<by...>, n, mean, select_mean, is_best, diff,
    ci_low, ci_high, ci_method, p_tost, p_tost_holm, ci_low_holm, ci_high_holm,
    within_margin, in_region, not_worse_than_margin, margin, confidence_level``
    sorted by ``select_mean``
    (best first). ``n`` counts the setting's runs (the pairs used are the blocks
    it shares with the reference). The reference row has ``diff = 0``, a
    degenerate CI ``[0, 0]`` and ``p_tost`` NaN.

    Raises:
        ValueError: a column is missing or not numeric and finite, ``df`` is empty, ``margin`` is not
            positive and finite, ``alpha`` is not in (0, 0.5), or ``correction`` is not 'holm'/None.
    """
    by = _as_list(by, "by")
    if not np.isfinite(margin) or margin <= 0:
        raise ValueError(f"`margin` must be a positive finite number, got {margin!r}")
    if not (0 < alpha < 0.5):
        raise ValueError(f"`alpha` must be in (0, 0.5), got {alpha!r}")
    select = value if select is None else select
    _require_columns(df, [value, select, *by])
    _require_numeric_finite(df, value)
    _require_numeric_finite(df, select)
    if len(df) == 0:
        raise ValueError("`df` is empty")
    sign = 1.0 if higher_is_better else -1.0
    setting = pd.Series(list(map(tuple, df[by].to_numpy().tolist())), index=df.index)
    means = df.groupby(setting, sort=True)[value].mean()
    select_means = df.groupby(setting, sort=True)[select].mean()
    best = (select_means * sign).idxmax()
    wide = _settings_wide(df, setting, value, block_col) if block_col is not None else None
    values_of = {key: df.loc[index, value].to_numpy(float)
                 for key, index in df.groupby(setting, sort=True).groups.items()}
    rows = []
    for key in means.index:
        x_all = values_of[key]
        row = {**dict(zip(by, key)), "n": len(x_all), "mean": float(x_all.mean()),
               "select_mean": float(select_means[key]), "is_best": key == best}
        if key == best:
            row.update(diff=0.0, ci_low=0.0, ci_high=0.0, ci_method="none", p_tost=np.nan, _df=np.nan)
        elif block_col is not None:
            x, y, _ = _pair(wide, str(key), str(best), method_col="/".join(by), on_unpaired="drop")
            row.update(_paired_tost(sign * x, sign * y, margin, alpha))
        else:
            row.update(_welch_tost(sign * x_all, sign * values_of[best], margin, alpha))
        rows.append(row)
    out = pd.DataFrame(rows)
    if correction not in ("holm", None):
        raise ValueError(f"`correction` must be 'holm' or None, got {correction!r}")
    out = _with_holm_intervals(out, alpha, correction).drop(columns="_df")
    equivalent = (out["p_tost_holm"] < alpha) & ~out["is_best"]
    out["within_margin"] = equivalent.astype(bool)
    out["in_region"] = (equivalent | out["is_best"]).astype(bool)
    out["not_worse_than_margin"] = (out["ci_high"] > -margin) | out["is_best"]
    out["margin"] = float(margin)
    out["confidence_level"] = float(1 - 2 * alpha)
    return out.sort_values("select_mean", ascending=not higher_is_better, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- #
# test-set noise, single runs, degenerate settings, nulls
# --------------------------------------------------------------------------- #
def binomial_se(accuracy: Any, n: Any) -> np.ndarray:
    """Binomial standard error ``sqrt(acc (1 − acc) / n)`` of an accuracy measured on ``n`` test examples.

    The test-set part of an accuracy's noise: another test set of the same size
    would move it by about this much. Vectorised; NaN where ``n < 1`` or the
    accuracy is outside ``[0, 1]``.

    Raises:
        ValueError: ``accuracy`` and ``n`` do not broadcast (numpy's error).
    """
    acc, n = np.broadcast_arrays(np.asarray(accuracy, dtype=float), np.asarray(n, dtype=float))
    valid = (n >= 1) & (acc >= 0) & (acc <= 1)
    out = np.full(acc.shape, np.nan)
    out[valid] = np.sqrt(acc[valid] * (1 - acc[valid]) / n[valid])
    return out


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's test of two classifiers on the same test examples (one seed each).

    ``correct_a``, ``correct_b``: 1-D boolean arrays, one entry per test example
    (whether each model classified it correctly). Uses the exact binomial test on
    the discordant pairs (:func:`statsmodels.stats.contingency_tables.mcnemar`,
    ``exact=True``). Returns ``n, acc_a, acc_b, diff (acc_a − acc_b), only_a,
    only_b, pvalue``; ``pvalue = 1`` when there are no discordant examples.

    Raises:
        ValueError: ``correct_a``/``correct_b`` are not boolean, are empty, or differ in length.
    """
    from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

    a, b = np.asarray(correct_a).reshape(-1), np.asarray(correct_b).reshape(-1)
    if a.dtype != bool or b.dtype != bool:
        raise ValueError("`correct_a` and `correct_b` must be boolean arrays (one entry per test example)")
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"`correct_a` and `correct_b` must be non-empty and of equal length, got {len(a)} and {len(b)}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    table = [[int(np.sum(a & b)), only_a], [only_b, int(np.sum(~a & ~b))]]
    p = 1.0 if only_a + only_b == 0 else float(_mcnemar(table, exact=True).pvalue)
    return {"n": len(a), "acc_a": float(a.mean()), "acc_b": float(b.mean()), "diff": float(a.mean() - b.mean()),
            "only_a": only_a, "only_b": only_b, "pvalue": p}


def trend(values: np.ndarray, window: float = 0.2) -> float:
    """How much a curve still moves at its end: the least-squares change over its last ``window`` share.

    ``values``: 1-D, in order (e.g. training accuracy per epoch). The last
    ``max(3, ceil(window * len))`` values get a least-squares line; the result is
    its slope times the span it covers (``slope * (w − 1)``), in the values'
    units. A training curve has converged when this is small (e.g. below 0.01 of
    accuracy); a large positive value means it was still rising when the budget
    ended. NaN for fewer than 3 values.

    Raises:
        ValueError: ``window`` is not in (0, 1].
    """
    curve = np.asarray(values, dtype=float).reshape(-1)
    curve = curve[np.isfinite(curve)]
    if len(curve) < 3:
        return float("nan")
    if not (0 < window <= 1):
        raise ValueError(f"`window` must be in (0, 1], got {window!r}")
    w = min(len(curve), max(3, int(np.ceil(window * len(curve)))))
    slope = np.polyfit(np.arange(w, dtype=float), curve[-w:], 1)[0]
    return float(slope * (w - 1))


def variance_by_source(
    df: pd.DataFrame, *, value: str, source_col: str = "source", total: str = "all", confidence_level: float = 0.95
) -> pd.DataFrame:
    """Variance of ``value`` when one source of randomness varies at a time, and its share of the total.

    Input: one row per run with ``source_col`` naming the source that varied
    (e.g. ``data``, ``init``, ``order``, ``mask``; every other source held fixed)
    and the group ``total`` where every source varied together (Bouthillier et
    al. 2021). Per group: ``n``, ``mean``, ``sd``, ``variance`` (ddof 1) with its
    chi-square interval ``[(n−1) s² / χ²_{1−a/2}, (n−1) s² / χ²_{a/2}]`` (normal
    data), and ``share = variance / variance(total)`` with the F interval of a
    ratio of two variances (``share / F_{1−a/2}(n−1, n_t−1)``, ``share /
    F_{a/2}(...)``; the groups are treated as independent samples). Shares need
    not add up to 1: sources interact, and each estimate carries its own noise.

    Raises:
        ValueError: a column is missing or not numeric and finite, no row has ``source_col == total``, or
            ``confidence_level`` is not in (0, 1).
    """
    _require_columns(df, [value, source_col])
    _require_numeric_finite(df, value)
    _check_confidence(confidence_level)
    a = 1 - confidence_level
    groups = {source: group[value].to_numpy(float) for source, group in df.groupby(source_col, sort=True)}
    if total not in groups:
        raise ValueError(f"no rows with {source_col} == {total!r} (every source varied together); got {sorted(groups, key=str)}")
    var_total, df_total = float(np.var(groups[total], ddof=1)), len(groups[total]) - 1
    rows = []
    for key, x in groups.items():
        n = len(x)
        var = float(np.var(x, ddof=1)) if n > 1 else float("nan")
        low = (n - 1) * var / sps.chi2.ppf(1 - a / 2, n - 1) if n > 1 else float("nan")
        high = (n - 1) * var / sps.chi2.ppf(a / 2, n - 1) if n > 1 else float("nan")
        share = var / var_total if var_total > 0 else float("nan")
        if n > 1 and df_total > 0 and key != total and np.isfinite(share):
            share_lo = share / sps.f.ppf(1 - a / 2, n - 1, df_total)
            share_hi = share / sps.f.ppf(a / 2, n - 1, df_total)
        else:
            share_lo = share_hi = float("nan")
        rows.append({source_col: key, "n": n, "mean": float(x.mean()), "sd": float(np.sqrt(var)) if n > 1 else float("nan"),
                     "variance": var, "variance_low": low, "variance_high": high, "share": share,
                     "share_low": share_lo, "share_high": share_hi, "confidence_level": float(confidence_level)})
    return pd.DataFrame(rows)


def independent_jaccard(rate_a: Any, rate_b: Any = None) -> np.ndarray:
    """Expected Jaccard overlap of two independent uniform masks that drop at rates ``rate_a`` and ``rate_b``.

    Over many edges, ``|A ∩ B| / |A ∪ B| → r_a r_b / (r_a + r_b − r_a r_b)``, which
    is ``r / (2 − r)`` for equal rates: the overlap that consecutive masks show by
    chance alone (DropConnect at rate r). A claim that a method "drops the same
    edges more consistently" must beat this null at the method's own rate.
    Vectorised; ``rate_b`` defaults to ``rate_a``; NaN where both rates are 0.

    Raises:
        ValueError: ``rate_a`` and ``rate_b`` do not broadcast (numpy's error).
    """
    a = np.asarray(rate_a, dtype=float)
    b = a if rate_b is None else np.asarray(rate_b, dtype=float)
    union = a + b - a * b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, a * b / np.where(union > 0, union, 1.0), np.nan)


def identical_settings(
    df: pd.DataFrame, *, setting_col: str, block_col: str | Sequence[str] = "seed", columns: Sequence[str]
) -> pd.DataFrame:
    """Settings whose runs are identical, block by block: degenerate levels of a design.

    Input: long frame, one row per (setting, block), with the numeric ``columns``
    that fingerprint a run (e.g. ``val_acc, test_acc, train_loss, final_train_loss``).
    Two settings are identical when every column agrees exactly in every block
    they share (and they share at least one): they trained the same numbers, so
    an analysis must not count them as separate levels.

    Returns one row per setting: ``<setting_col>, group`` (the first setting of its
    group in sorted order; a setting alone in its group names itself),
    ``group_size``.

    Raises:
        ValueError: ``df`` is not a DataFrame, a named column is missing, or ``block_col``/``columns`` is not a
            column name or a non-empty list of names.
    """
    block_cols = _as_list(block_col, "block_col")
    columns = _as_list(columns, "columns")
    _require_columns(df, [setting_col, *block_cols, *columns])
    blocks = _block_key(df, block_cols)
    fingerprints: dict[Any, dict[Any, tuple]] = {}
    for setting, block, values in zip(df[setting_col], blocks, df[columns].itertuples(index=False, name=None)):
        fingerprints.setdefault(setting, {})[block] = tuple(values)
    settings = sorted(fingerprints, key=str)
    group = {setting: setting for setting in settings}
    for i, first in enumerate(settings):
        if group[first] != first:
            continue
        for other in settings[i + 1 :]:
            if group[other] != other:
                continue
            shared = set(fingerprints[first]) & set(fingerprints[other])
            if shared and all(fingerprints[first][block] == fingerprints[other][block] for block in shared):
                group[other] = first
    out = pd.DataFrame({setting_col: settings, "group": [group[setting] for setting in settings]})
    out["group_size"] = out.groupby("group")["group"].transform("size")
    return out
