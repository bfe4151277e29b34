"""Tests for analysis.survival: Kaplan-Meier, medians, log-rank, and the hazard ratio a test can detect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import power as P
from analysis import survival as Sv


def frame(groups):
    return pd.DataFrame([{"method": g, "seed": i, "steps": t, "reached": e}
                         for g, runs in groups.items() for i, (t, e) in enumerate(runs)])


def test_kaplan_meier_by_hand():
    df = frame({"a": [(1, True), (2, True), (2, False), (3, True), (4, False)]})
    km = Sv.kaplan_meier(df, time="steps", event="reached", group="method").set_index("time")
    # S(1) = 4/5; at 2 one event among 4 at risk: 4/5 * 3/4; at 3 one among 2: * 1/2; 4 is censored
    assert km.loc[0.0, "survival"] == 1.0
    assert km.loc[1.0, "survival"] == pytest.approx(0.8)
    assert km.loc[2.0, "survival"] == pytest.approx(0.6)
    assert km.loc[3.0, "survival"] == pytest.approx(0.3)
    assert km.loc[4.0, "survival"] == pytest.approx(0.3)  # censoring is not an event
    assert list(km.at_risk) == [5, 5, 4, 2, 1]
    assert ((km.ci_low <= km.survival) & (km.survival <= km.ci_high)).all()


def test_censored_runs_are_not_counted_as_late_events():
    # b: half the runs reach the target at step 5, half never within 20 steps. Treating the censored runs as
    # reaching it at 21 would give a mean of 13; the Kaplan-Meier median is 5 and its upper bound is open
    df = frame({"a": [(10, True)] * 6, "b": [(5, True)] * 3 + [(20, False)] * 3})
    med = Sv.median_times(df, time="steps", event="reached", group="method").set_index("method")
    assert med.loc["a", "median"] == 10 and med.loc["b", "median"] == 5
    assert med.loc["b", "median_high"] == np.inf and med.loc["b", "share_reached"] == 0.5
    assert med.loc["b", "events"] == 3
    all_reach = Sv.median_times(frame({"d": [(2, True), (4, True), (6, True), (8, True), (9, True)]}),
                                time="steps", event="reached", group="method").iloc[0]
    assert all_reach["median"] == 6 and all_reach["median_low"] <= 6 <= all_reach["median_high"]
    never = frame({"c": [(20, False)] * 5})
    assert Sv.median_times(never, time="steps", event="reached", group="method")["median"].item() == np.inf


def test_logrank_against_scipy_and_its_direction():
    rng = np.random.default_rng(0)
    fast = [(min(int(t) + 1, 100), t < 99) for t in rng.exponential(5, 15)]
    slow = [(min(int(t) + 1, 100), t < 99) for t in rng.exponential(100, 15)]
    df = frame({"ddc": fast, "dropconnect": slow, "none": slow})
    out = Sv.logrank_tests(df, time="steps", event="reached", group="method",
                           pairs=[("ddc", "dropconnect"), ("ddc", "none"), ("dropconnect", "none")],
                           family={("ddc", "dropconnect"): "primary", ("ddc", "none"): "primary"})
    first = out.iloc[0]
    a, b = df[df.method == "ddc"], df[df.method == "dropconnect"]
    ref = sps.logrank(Sv.censored(a.steps, a.reached), Sv.censored(b.steps, b.reached))
    assert first.statistic == pytest.approx(ref.statistic) and first.pvalue == pytest.approx(ref.pvalue)
    assert first.statistic > 0 and first.verdict == "faster"
    primary = out[out.family == "primary"]
    assert (primary.family_size == 2).all()
    assert np.allclose(primary.p_holm, np.minimum(1, np.maximum.accumulate(np.sort(primary.pvalue) * [2, 1]))[
        np.argsort(np.argsort(primary.pvalue))])
    same = out.iloc[2]  # identical samples
    assert same.pvalue == pytest.approx(1.0) and same.verdict == "inconclusive"
    assert out.mde_hazard_ratio.gt(1).all()


def test_logrank_with_few_runs_is_exploratory_and_ties_give_p_one():
    df = frame({"a": [(3, True)] * 4, "b": [(3, True)] * 4})
    out = Sv.logrank_tests(df, time="steps", event="reached", group="method", pairs=[("a", "b")])
    assert out.pvalue.item() == 1.0 and out.verdict.item() == "exploratory"
    with pytest.raises(ValueError, match="boolean"):
        Sv.logrank_tests(df.assign(reached=1), time="steps", event="reached", group="method", pairs=[("a", "b")])


def test_schoenfeld_detectable_hazard_ratio():
    # HR 2 needs 4 (1.96 + 0.8416)^2 / ln(2)^2 = 65.3 events
    needed = 4 * (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) ** 2 / np.log(2) ** 2
    assert P.logrank_detectable_hazard_ratio(int(np.ceil(needed))) < 2 < P.logrank_detectable_hazard_ratio(int(needed) - 1)
    assert P.logrank_detectable_hazard_ratio(0) == np.inf
    assert P.logrank_detectable_hazard_ratio(40, family_size=2) > P.logrank_detectable_hazard_ratio(40)
