"""Tests for analysis.power (the seed planner) and analysis.verdicts (families, Holm, MDE, words)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from analysis import power as P
from analysis import verdicts as V
from analysis.power import _power_by_integration


# --------------------------------------------------------------------------- #
# power
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n,family", [(3, 1), (5, 1), (10, 1), (5, 4), (10, 7), (20, 3)])
def test_mde_matches_statsmodels(n, family):
    mde = P.minimum_detectable_effect(n, alpha=0.05, family_size=family, power=0.8)
    ref = TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05 / family, power=0.8)
    assert mde == pytest.approx(ref, rel=1e-6)
    assert P.power_at(n, mde, alpha=0.05, family_size=family) == pytest.approx(0.8, abs=1e-8)


def test_power_figures_from_the_issue_and_the_planner():
    # n = 3 seeds, 7 Holm-corrected comparisons: power 3% at a true d_z of 1
    assert P.power_at(3, 1.0, family_size=7) == pytest.approx(0.028, abs=0.001)
    needed = P.seeds_needed(1.0)
    assert P.power_at(needed, 1.0) >= 0.8 > P.power_at(needed - 1, 1.0)
    assert needed == 10
    assert P.seeds_needed(1.0, family_size=7) > needed
    # more seeds, smaller detectable effects; larger families, larger ones
    mdes = [P.minimum_detectable_effect(n) for n in (2, 3, 5, 10, 30)]
    assert all(a > b for a, b in zip(mdes, mdes[1:]))
    assert P.minimum_detectable_effect(5, family_size=4) > P.minimum_detectable_effect(5)
    assert np.isfinite(P.minimum_detectable_effect(2, family_size=7))  # statsmodels' own solver gives up here
    assert np.isnan(P.minimum_detectable_effect(1)) and np.isnan(P.power_at(1, 1.0))
    with pytest.raises(ValueError, match="effect_size"):
        P.seeds_needed(0.0)
    with pytest.raises(ValueError, match="family_size"):
        P.minimum_detectable_effect(5, family_size=0)


def test_power_integral_agrees_with_statsmodels():
    for n, effect, level in ((3, 1.0, 0.05 / 7), (5, 1.68, 0.05), (10, 0.5, 0.01)):
        assert _power_by_integration(n, effect, level) == pytest.approx(TTestPower().power(effect, n, level), abs=1e-7)


def test_mde_is_what_a_simulation_detects():
    rng = np.random.default_rng(3)
    n = 6
    mde = P.minimum_detectable_effect(n)
    d = rng.normal(mde, 1.0, size=(4000, n))
    p = sps.ttest_1samp(d, 0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.025)


# --------------------------------------------------------------------------- #
# Holm levels and verdicts
# --------------------------------------------------------------------------- #
def holm_reject(p, alpha=0.05):
    """Holm's step-down procedure, as in Holm (1979): reject in order until the first failure."""
    reject = np.zeros(len(p), bool)
    for step, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] >= alpha / (len(p) - step):
            break
        reject[i] = True
    return reject


def test_holm_levels_agree_with_holm_decisions():
    rng = np.random.default_rng(0)
    assert (holm_reject(np.array([0.01, 0.04, 0.03, 0.005])) == multipletests([0.01, 0.04, 0.03, 0.005], method="holm")[0]).all()
    for _ in range(2000):
        m = int(rng.integers(1, 8))
        p = rng.uniform(0, 0.08, m) ** rng.uniform(0.5, 2)
        levels = V.holm_levels(p, 0.05)
        reject = holm_reject(p)
        # a level-L interval excludes 0 exactly when p < 1 - L
        assert ((p < 1 - levels) == reject).all()
    assert np.isnan(V.holm_levels([np.nan, 0.01])[0]) and V.holm_levels([np.nan, 0.01])[1] == pytest.approx(0.95)


def make_runs(n_seeds: int, effect: float = 0.01, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for experiment in ("a", "b"):
        for s in range(n_seeds):
            shared = rng.normal(0, 0.01)
            for method, mu in (("none", 0.0), ("dropconnect", 0.0005), ("ddc", effect)):
                rows.append({"experiment": experiment, "method": method, "seed": s,
                             "test_acc": 0.8 + mu + shared + rng.normal(0, 0.003)})
    return pd.DataFrame(rows)


def test_paired_verdicts_families_intervals_and_words():
    df = make_runs(6)
    pairs = [("ddc", "none"), ("ddc", "dropconnect"), ("dropconnect", "none")]
    family = {("ddc", "none"): "primary", ("ddc", "dropconnect"): "primary"}
    out = V.paired_verdicts(df, value="test_acc", pairs=pairs, by="experiment", family=family, margin=0.005)
    assert len(out) == 6
    primary = out[out.family == "primary"]
    assert (primary.family_size == 4).all() and (out[out.family == "secondary"].family_size == 2).all()
    # Holm within each family only
    assert np.allclose(primary.p_holm, multipletests(primary.p_ttest, method="holm")[1])
    # every row: the 95% interval agrees with the raw t-test, the Holm interval with Holm
    for r in out.itertuples():
        wide = df[df.experiment == r.experiment].pivot(index="seed", columns="method", values="test_acc")
        ref = sps.ttest_rel(wide[r.method], wide[r.baseline])
        assert r.p_ttest == pytest.approx(ref.pvalue)
        assert (r.ci_low, r.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
        assert ((r.ci_low > 0) or (r.ci_high < 0)) == (r.p_ttest < 0.05)
        assert ((r.ci_low_holm > 0) or (r.ci_high_holm < 0)) == (r.p_holm < 0.05)
        assert r.mde_dz == pytest.approx(P.minimum_detectable_effect(6, family_size=r.family_size))
        assert r.mde == pytest.approx(r.mde_dz * r.sd_diff)
    ddc = out[(out.method == "ddc") & (out.baseline == "none")]
    assert (ddc.verdict == "better").all()
    assert set(out.verdict) <= set(V.VERDICT_WORDS)
    # dropconnect is 0.0005 from none with a 0.005 margin and 6 seeds: equivalent, or at worst inconclusive
    assert set(out[(out.method == "dropconnect")].verdict) <= {"equivalent", "inconclusive"}
    # the same comparison on the same runs gives the same numbers in another table
    again = V.paired_verdicts(df[df.experiment == "a"], value="test_acc", pairs=[("ddc", "none")])
    first = out[(out.experiment == "a") & (out.method == "ddc") & (out.baseline == "none")].iloc[0]
    assert (again.mean_diff.iloc[0], again.ci_low.iloc[0], again.p_ttest.iloc[0]) == (
        first.mean_diff, first.ci_low, first.p_ttest)


def test_fewer_than_five_seeds_are_exploratory():
    out = V.paired_verdicts(make_runs(4, effect=0.05), value="test_acc", pairs=[("ddc", "none")], by="experiment")
    assert (out.p_holm < 0.05).all()  # a clear effect...
    assert (out.verdict == "exploratory").all()  # ...but not enough seeds for a verdict word
    lower = V.paired_verdicts(make_runs(5, effect=-0.05), value="test_acc", pairs=[("ddc", "none")], by="experiment")
    assert (lower.verdict == "worse").all()
    flipped = V.paired_verdicts(make_runs(5, effect=-0.05), value="test_acc", pairs=[("ddc", "none")],
                                by="experiment", higher_is_better=False)
    assert (flipped.verdict == "better").all()


def test_verdict_text_carries_n_interval_and_mde():
    out = V.paired_verdicts(make_runs(5), value="test_acc", pairs=[("ddc", "none")], by="experiment", margin=0.01)
    text = V.verdict_text(out.iloc[0])
    row = out.iloc[0]
    for piece in (f"{row.mean_diff:+.4f}", f"{row.ci_low:+.4f}", "n = 5 seeds", f"MDE d_z {row.mde_dz:.2f}",
                  "primary family of 2", row.verdict, "TOST"):
        assert piece in text


def test_paired_verdicts_bad_input():
    df = make_runs(5)
    with pytest.raises(ValueError, match="pairs"):
        V.paired_verdicts(df, value="test_acc", pairs=[])
    with pytest.raises(ValueError, match="margin"):
        V.paired_verdicts(df, value="test_acc", pairs=[("ddc", "none")], by="experiment", margin=0)
    with pytest.raises(ValueError, match="nope"):
        V.paired_verdicts(df, value="nope", pairs=[("ddc", "none")])
    empty = V.paired_verdicts(df, value="test_acc", pairs=[("ddc", "absent")], by="experiment")
    assert empty.empty and "verdict" in empty.columns
