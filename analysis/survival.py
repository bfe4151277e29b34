"""Time-to-event analysis of censored outcomes, e.g. the steps a run needs to reach a target loss.

A run that never reaches the target within its budget is *right-censored* at
the budget: all we know is that it would need more steps. Giving it
``budget + 1`` steps and averaging (or t-testing) understates its time. Here:

- :func:`kaplan_meier`: the Kaplan-Meier estimate of the share of runs that have
  *not yet* reached the target after t steps, with pointwise log-log intervals
  (:func:`scipy.stats.ecdf` on :class:`scipy.stats.CensoredData`);
- :func:`median_times`: each group's median time to the event, with the
  Brookmeyer-Crowley interval read off the pointwise band (``inf`` where the
  band never falls to one half);
- :func:`logrank_tests`: log-rank tests between groups
  (:func:`scipy.stats.logrank`), Holm within families, with the hazard ratio
  the test could detect (:func:`analysis.power.logrank_detectable_hazard_ratio`)
  and a verdict word: ``faster`` / ``slower`` / ``inconclusive``, or
  ``exploratory`` below :data:`analysis.verdicts.MIN_VERDICT_N` runs per group.

Input frames have one row per run: a ``time`` column (the step of the event,
or the budget for a censored run), a boolean ``event`` column (True: the
target was reached at ``time``) and a ``group`` column (the method).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import power as _power
from . import stats as _stats

__all__ = ["censored", "kaplan_meier", "logrank_tests", "median_times"]


def _check(df: pd.DataFrame, time: str, event: str, group: str) -> None:
    _stats._require_columns(df, [time, event, group])
    _stats._require_numeric_finite(df, time)
    if not pd.api.types.is_bool_dtype(df[event]):
        raise ValueError(f"column {event!r} (event) must be boolean: True where the event happened")
    if (df[time] < 0).any():
        raise ValueError(f"column {time!r} (time) must be >= 0")


def censored(times: np.ndarray, events: np.ndarray) -> sps.CensoredData:
    """:class:`scipy.stats.CensoredData` with exact times where ``events`` and right-censoring elsewhere.

    Raises:
        IndexError: ``times`` and ``events`` differ in length.
        ValueError: a time is NaN (from :class:`scipy.stats.CensoredData`).
    """
    times, events = np.asarray(times, dtype=float), np.asarray(events, dtype=bool)
    return sps.CensoredData(uncensored=times[events], right=times[~events])


def kaplan_meier(
    df: pd.DataFrame, *, time: str, event: str, group: str, confidence_level: float = 0.95
) -> pd.DataFrame:
    """Kaplan-Meier survival (share of runs without the event yet) per group, as a step function.

    Returns a tidy frame ``<group>, time, survival, ci_low, ci_high, at_risk`` with
    one row at time 0 (survival 1) and one per distinct event time; ``survival``
    holds from that time until the next row. Intervals: pointwise, log-log
    (``ecdf(...).sf.confidence_interval(method="log-log")``); where that band is
    undefined (survival 0) the lower bound is 0 and the upper one carries over.

    Raises:
        ValueError: a column is missing, ``time`` is not numeric and finite or has a negative value, ``event`` is
            not boolean, or (for a group with an event) ``confidence_level`` is not in (0, 1) (from scipy).
    """
    _check(df, time, event, group)
    frames = []
    for key, g in df.groupby(group, sort=True):
        data = censored(g[time].to_numpy(), g[event].to_numpy())
        frame = pd.DataFrame({group: [key], "time": [0.0], "survival": [1.0], "ci_low": [1.0], "ci_high": [1.0],
                              "at_risk": [len(g)]})
        if g[event].any():
            sf = sps.ecdf(data).sf
            with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
                # undefined where survival is 1 or 0; those points get [0, 1] below
                warnings.simplefilter("ignore", RuntimeWarning)
                band = sf.confidence_interval(confidence_level, method="log-log")
            times = sf.quantiles
            at_risk = [(g[time].to_numpy() >= t).sum() for t in times]
            frame = pd.concat([frame, pd.DataFrame({group: key, "time": times, "survival": sf.probabilities,
                                                    "ci_low": band.low.evaluate(times), "ci_high": band.high.evaluate(times),
                                                    "at_risk": at_risk})], ignore_index=True)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    # where the log-log band is undefined (survival 0) keep the previous upper bound and a lower bound of 0
    out["ci_high"] = out.groupby(group)["ci_high"].ffill()
    out["ci_low"] = out["ci_low"].fillna(0.0)
    return out


def _first_time_below(times: np.ndarray, values: np.ndarray, level: float) -> float:
    below = np.flatnonzero(values <= level)
    return float(times[below[0]]) if len(below) else float("inf")


def median_times(
    df: pd.DataFrame, *, time: str, event: str, group: str, confidence_level: float = 0.95
) -> pd.DataFrame:
    """Median time to the event per group, with its interval (Brookmeyer & Crowley 1982).

    The median is the first time the Kaplan-Meier survival falls to 0.5 or below
    (``inf``: more than half the runs never had the event). The interval runs
    from the first time the band's lower bound falls to 0.5 to the first time
    its upper bound does. Returns ``<group>, n, events, share_reached, median,
    median_low, median_high, confidence_level``.

    Raises:
        ValueError: as :func:`kaplan_meier`: a column is missing, ``time`` is not numeric, finite and >= 0,
            ``event`` is not boolean, or ``confidence_level`` is not in (0, 1).
    """
    km = kaplan_meier(df, time=time, event=event, group=group, confidence_level=confidence_level)
    rows = []
    for key, g in df.groupby(group, sort=True):
        curve = km[km[group] == key]
        t = curve["time"].to_numpy()
        rows.append({group: key, "n": len(g), "events": int(g[event].sum()), "share_reached": float(g[event].mean()),
                     "median": _first_time_below(t, curve["survival"].to_numpy(), 0.5),
                     "median_low": _first_time_below(t, curve["ci_low"].to_numpy(), 0.5),
                     "median_high": _first_time_below(t, curve["ci_high"].to_numpy(), 0.5),
                     "confidence_level": float(confidence_level)})
    return pd.DataFrame(rows)


def logrank_tests(
    df: pd.DataFrame,
    *,
    time: str,
    event: str,
    group: str,
    pairs: Sequence[tuple[Any, Any]],
    family: str | dict = "primary",
    alpha: float = 0.05,
    power: float = 0.8,
) -> pd.DataFrame:
    """Log-rank tests of ``(group, baseline)`` pairs, Holm within each family.

    ``statistic`` is scipy's signed ``Z``: positive when ``group`` has more events
    than expected under the null, i.e. reaches the target sooner. Each row:
    ``<group>, baseline, family, family_size, n, n_baseline, events,
    events_baseline, statistic, pvalue, p_holm, mde_hazard_ratio, verdict``.
    ``mde_hazard_ratio``: the hazard ratio (>1) a log-rank test on this many
    events detects with probability ``power`` at the family's Bonferroni level
    (Schoenfeld 1981). Verdict: ``faster`` / ``slower`` (Holm p < alpha),
    ``inconclusive``, or ``exploratory`` with fewer than
    :data:`analysis.verdicts.MIN_VERDICT_N` runs in either group. When neither
    group has an event, or every run's time is the same, p is 1.

    Raises:
        ValueError: a column is missing, ``time`` is not numeric, finite and >= 0, ``event`` is not boolean, or
            (where a pair is tested) ``alpha`` or ``power`` is not in (0, 1) (from
            :func:`analysis.power.logrank_detectable_hazard_ratio`).
    """
    from .verdicts import MIN_VERDICT_N

    _check(df, time, event, group)
    rows = []
    for name, baseline in pairs:
        a, b = df[df[group] == name], df[df[group] == baseline]
        if a.empty or b.empty:
            continue
        both = pd.concat([a, b])
        if not both[event].any() or both[time].nunique() == 1:
            statistic, pvalue = 0.0, 1.0
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                result = sps.logrank(censored(a[time], a[event]), censored(b[time], b[event]))
            statistic, pvalue = float(result.statistic), float(result.pvalue)
            if not np.isfinite(pvalue):
                statistic, pvalue = 0.0, 1.0
        fam = family if isinstance(family, str) else family.get((name, baseline), "secondary")
        rows.append({group: name, "baseline": baseline, "family": fam, "n": len(a), "n_baseline": len(b),
                     "events": int(a[event].sum()), "events_baseline": int(b[event].sum()),
                     "statistic": statistic, "pvalue": pvalue})
    columns = [group, "baseline", "family", "family_size", "n", "n_baseline", "events", "events_baseline",
               "statistic", "pvalue", "p_holm", "mde_hazard_ratio", "verdict"]
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows)
    out["family_size"] = out.groupby("family")["family"].transform("size").astype(int)
    out["p_holm"] = np.nan
    for _, index in out.groupby("family").groups.items():
        out.loc[index, "p_holm"] = _stats.adjust_pvalues(out.loc[index, "pvalue"], "holm")
    out["mde_hazard_ratio"] = [
        _power.logrank_detectable_hazard_ratio(int(e + eb), alpha=alpha, family_size=int(m), power=power)
        for e, eb, m in zip(out["events"], out["events_baseline"], out["family_size"])]
    out["verdict"] = [
        "exploratory" if min(r.n, r.n_baseline) < MIN_VERDICT_N
        else ("faster" if r.statistic > 0 else "slower") if r.p_holm < alpha else "inconclusive"
        for r in out.itertuples()]
    return out[columns]
