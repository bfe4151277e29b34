"""Tests for analysis.stats: against scipy/statsmodels, hand computations and Demšar (2006)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from analysis import stats as S

METHODS = ["none", "dropout", "dropconnect", "ddc"]


def make_runs(n_seeds: int = 6, seed: int = 0) -> pd.DataFrame:
    """Runs table: one row per (method, seed), with a seed effect shared by all methods."""
    rng = np.random.default_rng(seed)
    seed_effect = rng.normal(0, 0.01, n_seeds)
    offsets = {"none": 0.0, "dropout": 0.01, "dropconnect": 0.012, "ddc": 0.02}
    rows = []
    for m in METHODS:
        for s in range(n_seeds):
            rows.append(
                {
                    "run_id": f"{m}-{s}",
                    "method": m,
                    "seed": s,
                    "dataset": "mnist1d",
                    "test_acc": 0.85 + offsets[m] + seed_effect[s] + rng.normal(0, 0.004),
                }
            )
    return pd.DataFrame(rows)


# Per-dataset ranks with the column sums of Demšar (2006), Table 6 (C4.5 variants on
# 14 data sets): average ranks 3.143, 2.000, 2.893, 1.964. The Friedman statistic
# (without tie correction), Iman–Davenport F and the Nemenyi CD depend only on the
# average ranks, k and N, so they must reproduce the published 9.28, 3.69, 1.25.
DEMSAR_RANKS = [
    [3.0, 1.0, 4.0, 2.0], [2.0, 4.0, 1.0, 3.0], [4.0, 3.0, 2.0, 1.0], [3.0, 1.0, 2.0, 4.0],
    [4.0, 2.0, 3.0, 1.0], [3.0, 1.0, 4.0, 2.0], [4.0, 2.0, 3.0, 1.0], [3.0, 1.0, 2.0, 4.0],
    [2.0, 3.0, 4.0, 1.0], [3.0, 2.0, 4.0, 1.0], [2.0, 1.0, 4.0, 3.0], [4.0, 2.0, 3.0, 1.0],
    [3.0, 4.0, 2.0, 1.0], [4.0, 1.0, 2.5, 2.5],
]
DEMSAR_METHODS = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]


def demsar_df() -> pd.DataFrame:
    rows = [
        {"method": m, "dataset": i, "rank_value": r}
        for i, row in enumerate(DEMSAR_RANKS)
        for m, r in zip(DEMSAR_METHODS, row)
    ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- #
# paired_comparison
# --------------------------------------------------------------------------- #
def test_paired_comparison_hand_computed():
    df = pd.DataFrame(
        {"method": ["base"] * 4 + ["new"] * 4, "seed": [0, 1, 2, 3] * 2,
         "acc": [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]}
    )
    out = S.paired_comparison(df, value="acc", baseline="base", rng=0, n_resamples=999)
    assert len(out) == 1
    r = out.iloc[0]
    assert r["method"] == "new" and r["baseline"] == "base" and r["n"] == 4
    assert r["mean_diff"] == pytest.approx(2.5)
    assert r["mean"] == pytest.approx(2.5) and r["mean_baseline"] == pytest.approx(0.0)
    sd = np.std([1, 2, 3, 4], ddof=1)  # 1.2909944
    assert r["cohen_dz"] == pytest.approx(2.5 / sd)
    # exact J(3) = Γ(1.5) / (sqrt(1.5) Γ(1)) = 0.7236012...
    assert r["hedges_g"] == pytest.approx(0.7236012 * 2.5 / sd, rel=1e-6)
    # close to the common approximation 1 - 3/(4 df - 1)
    assert r["hedges_g"] == pytest.approx((1 - 3 / 11) * 2.5 / sd, rel=0.01)
    assert r["p_wilcoxon"] == pytest.approx(0.125)  # exact: 2 / 2**4
    assert r["p_ttest"] == pytest.approx(sps.ttest_rel([1, 2, 3, 4], [0, 0, 0, 0]).pvalue)
    half = sps.t.ppf(0.975, 3) * sd / 2
    assert r["ci_low"] == pytest.approx(2.5 - half) and r["ci_high"] == pytest.approx(2.5 + half)
    assert r["ci_method"] == "t" and r["df"] == 3
    # exact d_z interval: the noncentral t with the observed t at its 97.5% / 2.5% points
    t_obs = 2.5 / sd * 2
    assert sps.nct.cdf(t_obs, 3, r["dz_low"] * 2) == pytest.approx(0.975, abs=1e-6)
    assert sps.nct.cdf(t_obs, 3, r["dz_high"] * 2) == pytest.approx(0.025, abs=1e-6)
    assert r["wilcoxon_min_p"] == pytest.approx(0.125)
    # single comparison: Holm adjustment is the identity
    assert r["p_wilcoxon_adj"] == pytest.approx(r["p_wilcoxon"])


def test_paired_comparison_matches_scipy_and_statsmodels():
    df = make_runs()
    out = S.paired_comparison(df, value="test_acc", baseline="none", rng=42, n_resamples=2000)
    assert list(out["method"]) == ["ddc", "dropconnect", "dropout"]  # sorted, baseline excluded
    wide = df.pivot(index="seed", columns="method", values="test_acc")
    for _, r in out.iterrows():
        x, y = wide[r["method"]].to_numpy(), wide["none"].to_numpy()
        d = x - y
        assert r["mean_diff"] == pytest.approx(d.mean())
        assert r["p_wilcoxon"] == pytest.approx(sps.wilcoxon(x, y).pvalue)
        assert r["p_ttest"] == pytest.approx(sps.ttest_rel(x, y).pvalue)
        assert r["t_stat"] == pytest.approx(sps.ttest_rel(x, y).statistic)
        ref = sps.ttest_rel(x, y).confidence_interval(0.95)
        assert r["ci_low"] == pytest.approx(ref.low)
        assert r["ci_high"] == pytest.approx(ref.high)
    assert np.allclose(out["p_wilcoxon_adj"], multipletests(out["p_wilcoxon"], method="holm")[1])
    assert np.allclose(out["p_ttest_adj"], multipletests(out["p_ttest"], method="holm")[1])


def test_paired_comparison_reproducible_and_bca_only_at_large_n():
    df = make_runs(n_seeds=S.BOOTSTRAP_MIN_N)
    a = S.paired_comparison(df, value="test_acc", baseline="none", rng=7, n_resamples=999, interval="bca")
    b = S.paired_comparison(df, value="test_acc", baseline="none", rng=np.random.default_rng(7), n_resamples=999,
                            interval="bca")
    pd.testing.assert_frame_equal(a, b)
    assert set(a["ci_method"]) <= {"BCa", "percentile"}
    c = S.paired_comparison(df, value="test_acc", baseline="none", rng=8, n_resamples=999, interval="bca")
    assert not np.allclose(a["ci_low"], c["ci_low"])
    # the t interval needs no randomness and is the same on every call
    pd.testing.assert_frame_equal(S.paired_comparison(df, value="test_acc", baseline="none"),
                                  S.paired_comparison(df, value="test_acc", baseline="none", rng=3))
    with pytest.raises(ValueError, match="BOOTSTRAP_MIN_N"):
        S.paired_comparison(make_runs(n_seeds=5), value="test_acc", baseline="none", rng=0, interval="bca")
    with pytest.raises(ValueError, match="rng"):
        S.paired_comparison(df, value="test_acc", baseline="none", interval="bca")
    with pytest.raises(ValueError, match="interval"):
        S.paired_comparison(df, value="test_acc", baseline="none", interval="percentile")


def test_paired_comparison_all_zero_differences():
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "seed": [1, 2, 3] * 2, "v": [0.5, 0.6, 0.7] * 2})
    r = S.paired_comparison(df, value="v", baseline="a", rng=0, n_resamples=500).iloc[0]
    assert r["mean_diff"] == 0 and r["p_wilcoxon"] == 1.0 and r["p_ttest"] == 1.0
    assert r["cohen_dz"] == 0.0 and r["hedges_g"] == 0.0
    assert r["ci_low"] == 0.0 and r["ci_high"] == 0.0
    assert np.isnan(r["dz_low"])  # no interval for a constant difference


def test_hedges_g_undefined_at_two_seeds():
    df = pd.DataFrame({"method": ["a"] * 2 + ["b"] * 2, "seed": [1, 2] * 2, "v": [0.5, 0.6, 0.7, 0.75]})
    r = S.paired_comparison(df, value="v", baseline="a").iloc[0]
    assert np.isfinite(r["cohen_dz"]) and np.isnan(r["hedges_g"])
    assert r["wilcoxon_min_p"] == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_values_are_rejected(bad):
    df = make_runs(n_seeds=3)
    df.loc[2, "test_acc"] = bad
    for call in (lambda: S.paired_comparison(df, value="test_acc", baseline="none"),
                 lambda: S.summarize(df, value="test_acc", by="method"),
                 lambda: S.anova(df, value="test_acc", factors=["method"]),
                 lambda: S.friedman_test(df, value="test_acc")):
        with pytest.raises(ValueError, match="infinite"):
            call()
    with pytest.raises(ValueError, match="finite"):
        S.paired_difference(np.array([1.0, bad]), np.array([0.0, 0.0]))


# --------------------------------------------------------------------------- #
# coverage of the intervals used for verdicts (normal paired differences)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n", [3, 5, 10])
def test_interval_coverage_at_small_n(n):
    rng = np.random.default_rng(20260)
    draws, true_mean, sd = 4000, 0.4, 1.3
    d = rng.normal(true_mean, sd, size=(draws, n))
    low, high = S.mean_interval(d, 0.95)
    coverage = np.mean((low <= true_mean) & (true_mean <= high))
    assert 0.93 <= coverage <= 0.97, coverage
    # the d_z interval, vectorised over the draws
    dz = d.mean(axis=1) / d.std(axis=1, ddof=1)
    dz_low, dz_high = S.dz_interval(dz, n, 0.95)
    true_dz = true_mean / sd
    coverage_dz = np.mean((dz_low <= true_dz) & (true_dz <= dz_high))
    assert 0.93 <= coverage_dz <= 0.97, coverage_dz
    # what paired_comparison prints is the same interval
    row = S.paired_difference(d[0], np.zeros(n))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low[0], high[0]))
    assert (row["dz_low"], row["dz_high"]) == pytest.approx((dz_low[0], dz_high[0]))


def test_t_interval_and_t_test_never_disagree():
    rng = np.random.default_rng(5)
    for n in (2, 3, 5):
        for _ in range(200):
            x, y = rng.normal(0.3, 1, n), rng.normal(0, 1, n)
            r = S.paired_difference(x, y)
            excludes_zero = r["ci_low"] > 0 or r["ci_high"] < 0
            assert excludes_zero == (r["p_ttest"] < 0.05)


def test_bootstrap_refuses_small_samples():
    with pytest.raises(ValueError, match="n >= 30"):
        S.bootstrap_ci(np.arange(5.0), rng=0)
    lo, hi, method = S.bootstrap_ci(np.random.default_rng(0).normal(size=40), rng=0, n_resamples=999)
    assert lo < hi and method == "BCa"


def test_paired_comparison_errors():
    df = make_runs(n_seeds=3)
    with pytest.raises(ValueError, match="test_loss"):
        S.paired_comparison(df, value="test_loss", baseline="none", rng=0)
    with pytest.raises(ValueError, match="baseline 'nope'"):
        S.paired_comparison(df, value="test_acc", baseline="nope", rng=0)
    with pytest.raises(ValueError, match="unpaired"):
        S.paired_comparison(df.drop(index=0), value="test_acc", baseline="none", rng=0)
    # dropping the unpaired block is allowed on request
    out = S.paired_comparison(df.drop(index=0), value="test_acc", baseline="none", rng=0,
                              on_unpaired="drop", n_resamples=200)
    assert (out["n"] == 2).all()
    few = df[df["seed"] == 0]
    with pytest.raises(ValueError, match="fewer than 2 paired"):
        S.paired_comparison(few, value="test_acc", baseline="none", rng=0)
    with pytest.raises(ValueError, match="more than one row"):
        S.paired_comparison(pd.concat([df, df]), value="test_acc", baseline="none", rng=0)
    bad = df.copy()
    bad.loc[3, "test_acc"] = np.nan
    with pytest.raises(ValueError, match="missing value"):
        S.paired_comparison(bad, value="test_acc", baseline="none", rng=0)
    with pytest.raises(ValueError, match="rng"):
        S.paired_comparison(df, value="test_acc", baseline="none", rng="zero", interval="bca")
    with pytest.raises(ValueError, match="block_col|seed"):
        S.paired_comparison(df.drop(columns="seed"), value="test_acc", baseline="none", rng=0)


def test_block_col_list():
    a = make_runs(n_seeds=3).assign(dataset="a")
    b = make_runs(n_seeds=3, seed=1).assign(dataset="b")
    df = pd.concat([a, b], ignore_index=True)
    out = S.paired_comparison(df, value="test_acc", baseline="none", block_col=["dataset", "seed"],
                              rng=0, n_resamples=200)
    assert (out["n"] == 6).all()


# --------------------------------------------------------------------------- #
# multiplicity
# --------------------------------------------------------------------------- #
def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone max 0.06
    assert np.allclose(S.adjust_pvalues(p), [0.03, 0.06, 0.06, 0.02])
    # NaNs are ignored and do not count towards m
    out = S.adjust_pvalues([0.01, np.nan, 0.04])
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.02, 0.04])
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 9):
        p = rng.uniform(0, 0.2, m)
        p[0] = p[-1]  # a tie
        assert np.allclose(S.adjust_pvalues(p), multipletests(p, method="holm")[1])
    assert np.allclose(S.adjust_pvalues(p, "fdr_bh"), multipletests(p, method="fdr_bh")[1])


def test_pairwise_wilcoxon():
    df = make_runs()
    out = S.pairwise_wilcoxon(df, value="test_acc")
    assert len(out) == 6
    assert list(out.columns) == ["method_a", "method_b", "n", "mean_diff", "median_diff", "statistic",
                                 "pvalue", "min_pvalue", "pvalue_adj", "reject"]
    wide = df.pivot(index="seed", columns="method", values="test_acc")
    for _, r in out.iterrows():
        ref = sps.wilcoxon(wide[r["method_a"]], wide[r["method_b"]])
        assert r["pvalue"] == pytest.approx(ref.pvalue)
        assert r["statistic"] == pytest.approx(ref.statistic)
    assert np.allclose(out["pvalue_adj"], multipletests(out["pvalue"], method="holm")[1])
    assert (out["reject"] == (out["pvalue_adj"] < 0.05)).all()  # 6 seeds: the test can reject
    # at 5 seeds the exact test cannot fall below 2/2**5 = 0.0625: no reject column to read
    few = S.pairwise_wilcoxon(make_runs(n_seeds=5), value="test_acc")
    assert few["reject"].isna().all() and (few["min_pvalue"] == 0.0625).all()


# --------------------------------------------------------------------------- #
# Friedman / CD
# --------------------------------------------------------------------------- #
def test_friedman_matches_scipy():
    df = make_runs()
    out = S.friedman_test(df, value="test_acc", method_col="method", block_col="seed")
    wide = df.pivot(index="seed", columns="method", values="test_acc")
    ref = sps.friedmanchisquare(*[wide[c] for c in wide.columns])
    assert len(out) == 1
    r = out.iloc[0]
    assert r["statistic"] == pytest.approx(ref.statistic) and r["pvalue"] == pytest.approx(ref.pvalue)
    assert r["k"] == 4 and r["n"] == 6


def test_friedman_all_ties_gives_no_evidence():
    df = pd.DataFrame({"method": list("abc") * 8, "seed": np.repeat(range(8), 3), "v": 0.5})
    for tie_correction in (True, False):
        r = S.friedman_test(df, value="v", tie_correction=tie_correction).iloc[0]
        assert np.isnan(r["statistic"]) and np.isnan(r["iman_davenport_F"])
        assert r["pvalue"] == 1.0 and r["iman_davenport_p"] == 1.0
    # one block that ties and others that agree perfectly: a finite statistic
    df.loc[df.seed > 0, "v"] = df.loc[df.seed > 0, "method"].map({"a": 0.1, "b": 0.2, "c": 0.3})
    r = S.friedman_test(df, value="v", tie_correction=False).iloc[0]
    assert np.isfinite(r["statistic"]) and r["iman_davenport_p"] < 0.05


def test_friedman_errors():
    df = make_runs()
    with pytest.raises(ValueError, match="at least 3 methods"):
        S.friedman_test(df[df["method"].isin(["none", "ddc"])], value="test_acc")
    with pytest.raises(ValueError, match="lack some"):
        S.friedman_test(df.drop(index=0), value="test_acc")
    out = S.friedman_test(df.drop(index=0), value="test_acc", on_incomplete="drop")
    assert out["n"].iloc[0] == 5


def test_demsar_2006_example():
    df = demsar_df()
    ranks, cliques, cd = S.critical_difference(
        df, value="rank_value", method_col="method", block_col="dataset", higher_is_better=False
    )
    mr = dict(zip(ranks["method"], ranks["mean_rank"]))
    published = {"C4.5": 3.143, "C4.5+m": 2.000, "C4.5+cf": 2.893, "C4.5+m+cf": 1.964}
    for m, v in published.items():
        assert mr[m] == pytest.approx(v, abs=5e-4)
    assert list(ranks["method"]) == ["C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"]
    # q_0.05 = 2.569, CD = 2.569 * sqrt(4*5 / (6*14)) = 1.25
    assert S.nemenyi_cd(4, 1, 0.05) / np.sqrt(20 / 6) == pytest.approx(2.569, abs=5e-4)
    assert cd == pytest.approx(1.25, abs=5e-3)
    # At α=0.05 Nemenyi finds no difference: one clique with all four methods.
    assert cliques == [["C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"]]
    # At α=0.10 (q=2.291, CD=1.12) C4.5 is worse than C4.5+m and C4.5+m+cf.
    _, cliques10, cd10 = S.critical_difference(
        df, value="rank_value", method_col="method", block_col="dataset", higher_is_better=False, alpha=0.10
    )
    assert cd10 == pytest.approx(1.12, abs=5e-3)
    assert cliques10 == [["C4.5+m+cf", "C4.5+m", "C4.5+cf"], ["C4.5+cf", "C4.5"]]
    # Friedman without tie correction: χ²_F = 9.28, Iman–Davenport F_F = 3.69 (published).
    fr = S.friedman_test(df, value="rank_value", method_col="method", block_col="dataset",
                         tie_correction=False).iloc[0]
    assert fr["statistic"] == pytest.approx(9.28, abs=5e-3)
    assert fr["iman_davenport_F"] == pytest.approx(3.69, abs=5e-3)
    assert fr["iman_davenport_p"] < 0.05  # F(3, 39) critical value is 2.85


def test_critical_difference_wilcoxon_cliques_and_direction():
    rng = np.random.default_rng(3)
    rows = []
    for s in range(10):
        for m, mu in [("a", 0.0), ("b", 0.001), ("c", 1.0)]:
            rows.append({"method": m, "seed": s, "v": mu + rng.normal(0, 0.01)})
    df = pd.DataFrame(rows)
    ranks, cliques, _ = S.critical_difference(df, value="v", clique_method="wilcoxon")
    assert ranks["method"].iloc[0] == "c"
    assert cliques == [["b", "a"]] or cliques == [["a", "b"]]
    ranks_low, _, _ = S.critical_difference(df, value="v", higher_is_better=False)
    assert ranks_low["method"].iloc[-1] == "c"
    with pytest.raises(ValueError, match="clique_method"):
        S.critical_difference(df, value="v", clique_method="bogus")


# --------------------------------------------------------------------------- #
# linear models
# --------------------------------------------------------------------------- #
def make_grid(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in [0.1, 0.3, 0.5]:
        for tau in [0.5, 1.0]:
            for s in range(4):
                acc = 0.8 + 0.1 * p - 0.02 * tau + 0.05 * p * tau + rng.normal(0, 0.01)
                rows.append({"p_base": p, "tau": tau, "seed": s, "test_acc": acc})
    return pd.DataFrame(rows)


def test_anova_matches_statsmodels():
    df = make_grid()
    out = S.anova(df, value="test_acc", factors=["p_base", "tau"])
    ref = sm.stats.anova_lm(smf.ols("test_acc ~ C(p_base) * C(tau)", data=df).fit(), typ=2)
    assert list(out["term"]) == ["p_base", "tau", "p_base:tau", "Residual"]
    assert np.allclose(out["sum_sq"], ref["sum_sq"])
    assert np.allclose(out["F"].iloc[:3], ref["F"].iloc[:3])
    assert np.allclose(out["pvalue"].iloc[:3], ref["PR(>F)"].iloc[:3])
    main = S.anova(df, value="test_acc", factors=["p_base", "tau"], interactions=False)
    assert list(main["term"]) == ["p_base", "tau", "Residual"]
    t3 = S.anova(df, value="test_acc", factors=["p_base", "tau"], typ=3)
    assert t3["term"].iloc[0] == "Intercept"
    with pytest.raises(ValueError, match="lr"):
        S.anova(df, value="test_acc", factors=["p_base", "lr"])
    with pytest.raises(ValueError, match="typ"):
        S.anova(df, value="test_acc", factors=["p_base"], typ=4)


def test_seed_block_takes_seed_variation_out_of_the_residual():
    rng = np.random.default_rng(2)
    seed_effect = rng.normal(0, 0.03, 5)
    rows = [{"p": p, "seed": s, "acc": 0.8 + 0.005 * p + seed_effect[s] + rng.normal(0, 0.002)}
            for s in range(5) for p in (0, 1, 2)]
    df = pd.DataFrame(rows)
    plain = S.anova(df, value="acc", factors=["p"]).set_index("term")
    blocked = S.anova(df, value="acc", factors=["p"], block="seed").set_index("term")
    ref = sm.stats.anova_lm(smf.ols("acc ~ C(p) + C(seed)", data=df).fit(), typ=2)
    assert list(blocked.index) == ["p", "seed", "Residual"]
    assert blocked.loc["p", "pvalue"] == pytest.approx(ref.loc["C(p)", "PR(>F)"])
    assert blocked.loc["p", "pvalue"] < 0.01 < plain.loc["p", "pvalue"]
    shares = S.variance_decomposition(df, value="acc", factors=["p"], block="seed").set_index("term")
    assert shares["eta_sq"].sum() == pytest.approx(1.0)
    assert shares.loc["seed", "eta_sq"] > shares.loc["p", "eta_sq"]
    two = make_grid()
    out = S.anova(two, value="test_acc", factors=["p_base", "tau"], block="seed")
    assert list(out["term"]) == ["p_base", "tau", "seed", "p_base:tau", "Residual"] or set(out["term"]) == {
        "p_base", "tau", "seed", "p_base:tau", "Residual"}
    with pytest.raises(ValueError, match="block"):
        S.anova(two, value="test_acc", factors=["p_base", "seed"], block="seed")


def test_variance_decomposition_balanced():
    df = make_grid()
    out = S.variance_decomposition(df, value="test_acc", factors=["p_base", "tau"])
    assert out["term"].iloc[-1] == "Residual"
    assert out["eta_sq"].sum() == pytest.approx(1.0)  # balanced design
    y = df["test_acc"]
    ss_tot = ((y - y.mean()) ** 2).sum()
    ss_res = out.set_index("term").loc["Residual", "sum_sq"]
    row = out.set_index("term").loc["p_base"]
    assert row["eta_sq"] == pytest.approx(row["sum_sq"] / ss_tot)
    assert row["partial_eta_sq"] == pytest.approx(row["sum_sq"] / (row["sum_sq"] + ss_res))
    assert out["eta_sq"].iloc[0] == out["eta_sq"].iloc[:-1].max()


def test_mixed_model_matches_statsmodels():
    df = make_runs(n_seeds=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = S.mixed_model(df, value="test_acc", factors=["method"], group="seed")
        ref = smf.mixedlm("test_acc ~ C(method)", df, groups=df["seed"]).fit(reml=True)
    assert list(out.columns) == ["term", "estimate", "std_err", "t", "df", "pvalue", "ci_low", "ci_high", "df_method", "note"]
    assert out["term"].iloc[-1] == "group_var"
    assert "method[T.none]" in set(out["term"])
    fe = out.iloc[:-1]
    assert np.allclose(fe["estimate"], ref.fe_params.to_numpy(), atol=1e-8)
    assert np.allclose(fe["std_err"], ref.bse_fe.to_numpy(), rtol=1e-4)
    # between-within df: N - G - (k - 1) = 32 - 8 - 3 for the treatment terms, G - 1 for the intercept
    assert list(fe["df"]) == [7.0, 21.0, 21.0, 21.0]
    assert np.allclose(fe["pvalue"], 2 * sps.t.sf(np.abs(fe["t"]), fe["df"]))
    with pytest.raises(ValueError, match="group"):
        S.mixed_model(df, value="test_acc", factors=["method"], group="nope")


def test_mixed_model_t_tests_match_the_block_anova():
    # balanced randomised blocks with a positive seed variance: the mixed model's t test of a
    # two-level factor is the seed-blocked ANOVA's F test (t^2 = F, same df), not a z test
    rng = np.random.default_rng(11)
    seed_effect = rng.normal(0, 0.02, 4)
    rows = [{"method": m, "seed": s, "acc": 0.8 + 0.004 * (m == "b") + seed_effect[s] + rng.normal(0, 0.003)}
            for s in range(4) for m in ("a", "b")]
    df = pd.DataFrame(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed = S.mixed_model(df, value="acc", factors=["method"], group="seed").set_index("term")
    blocked = S.anova(df, value="acc", factors=["method"], block="seed").set_index("term")
    row = mixed.loc["method[T.b]"]
    assert row["df"] == blocked.loc["Residual", "df"] == 3
    assert row["t"] ** 2 == pytest.approx(blocked.loc["method", "F"], rel=1e-4)
    assert row["pvalue"] == pytest.approx(blocked.loc["method", "pvalue"], rel=1e-3)
    # and equals the paired t-test
    wide = df.pivot(index="seed", columns="method", values="acc")
    assert row["pvalue"] == pytest.approx(sps.ttest_rel(wide["b"], wide["a"]).pvalue, rel=1e-3)


# --------------------------------------------------------------------------- #
# summaries
# --------------------------------------------------------------------------- #
def test_summarize():
    df = make_runs()
    out = S.summarize(df, value="test_acc", by="method", rng=0, n_resamples=2000)
    g = df.groupby("method")["test_acc"]
    assert list(out["method"]) == sorted(METHODS)
    assert np.allclose(out["mean"], g.mean().to_numpy())
    assert np.allclose(out["std"], g.std(ddof=1).to_numpy())
    assert (out["n"] == 6).all()
    assert ((out["ci_low"] <= out["mean"]) & (out["mean"] <= out["ci_high"])).all()
    assert (out["ci_method"] == "t").all()
    first = df.loc[df["method"] == "ddc", "test_acc"].to_numpy()
    ref = sps.ttest_1samp(first, 0).confidence_interval(0.95)
    assert out["ci_low"].iloc[0] == pytest.approx(ref.low) and out["ci_high"].iloc[0] == pytest.approx(ref.high)
    # the bootstrap on request, at large n only, reproducible with a seed
    big = make_runs(n_seeds=S.BOOTSTRAP_MIN_N)
    a = S.summarize(big, value="test_acc", by="method", rng=0, n_resamples=999, interval="bca")
    pd.testing.assert_frame_equal(a, S.summarize(big, value="test_acc", by="method", rng=0, n_resamples=999, interval="bca"))
    with pytest.raises(ValueError, match="BOOTSTRAP_MIN_N"):
        S.summarize(df, value="test_acc", by="method", rng=0, interval="bca")
    # multi-column grouping and singleton groups
    one = S.summarize(df.head(7), value="test_acc", by=["dataset", "method"], rng=0, n_resamples=200)
    assert list(one.columns[:2]) == ["dataset", "method"]
    single = one[one["n"] == 1].iloc[0]
    assert np.isnan(single["ci_low"]) and single["ci_method"] == "none"
    with pytest.raises(ValueError, match="'group'"):
        S.summarize(df, value="test_acc", by="group", rng=0)


def test_practical_equivalence_is_tost_and_the_reference_is_chosen_on_validation():
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(0)
    rows = []
    for s in range(8):
        base = rng.normal(0, 0.01)
        for p, mu, val in [(0.1, 0.90, 0.95), (0.3, 0.899, 0.94), (0.5, 0.80, 0.90), (0.7, 0.905, 0.80)]:
            rows.append({"p_base": p, "seed": s, "acc": mu + base + rng.normal(0, 0.001), "val": val + rng.normal(0, 1e-4)})
    df = pd.DataFrame(rows)
    out = S.practical_equivalence(df, value="acc", select="val", by="p_base", margin=0.01, block_col="seed")
    t = out.set_index("p_base")
    # 0.7 has the highest test accuracy, but validation chooses 0.1
    assert t.loc[0.1, "is_best"] and t.loc[0.1, "diff"] == 0 and not t.loc[0.7, "is_best"]
    assert list(out["p_base"]) == [0.1, 0.3, 0.5, 0.7]  # sorted by the choosing metric
    wide = df.pivot(index="seed", columns="p_base", values="acc")
    assert t.loc[0.3, "p_tost"] == pytest.approx(ttost_paired(wide[0.3], wide[0.1], -0.01, 0.01)[0])
    assert bool(t.loc[0.3, "within_margin"]) and bool(t.loc[0.3, "in_region"])
    assert not t.loc[0.5, "within_margin"] and not t.loc[0.5, "not_worse_than_margin"]
    # the reference is never counted "within margin" of itself, but belongs to its region
    assert not t.loc[0.1, "within_margin"] and t.loc[0.1, "in_region"]
    # uncorrected: equivalent exactly when the 90% t interval lies inside the margin
    raw = S.practical_equivalence(df, value="acc", select="val", by="p_base", margin=0.01, block_col="seed", correction=None)
    others = raw[~raw["is_best"]]
    inside = (others["ci_low"] > -0.01) & (others["ci_high"] < 0.01)
    assert (inside == others["within_margin"]).all()
    # Holm over the settings (default): the adjusted p decides, and the Holm-level interval agrees with it
    others = out[~out["is_best"]]
    assert np.allclose(others["p_tost_holm"], multipletests(others["p_tost"], method="holm")[1])
    inside_holm = (others["ci_low_holm"] > -0.01) & (others["ci_high_holm"] < 0.01)
    assert (inside_holm == others["within_margin"]).all() and (others["within_margin"] == (others["p_tost_holm"] < 0.05)).all()
    # unpaired version (Welch TOST)
    unpaired = S.practical_equivalence(df, value="acc", select="val", by="p_base", margin=0.01)
    assert (unpaired["ci_method"].iloc[1:] == "welch t").all()
    # lower-is-better flips the best setting
    low = S.practical_equivalence(df, value="acc", by="p_base", margin=0.01, higher_is_better=False)
    assert low.loc[low["is_best"], "p_base"].item() == 0.5
    with pytest.raises(ValueError, match="margin"):
        S.practical_equivalence(df, value="acc", by="p_base", margin=-1)


def test_tost_size_at_the_margin():
    # true difference exactly at the margin: equivalence may be declared at most ~5% of the time
    # (one call, 2000 settings, each paired with the same reference)
    rng = np.random.default_rng(9)
    draws = 2000
    for n in (3, 5):
        d = rng.normal(0.01, 0.01, size=(draws, n))
        frame = pd.DataFrame({"s": np.repeat(np.arange(-1, draws), n), "seed": np.tile(np.arange(n), draws + 1),
                              "acc": np.r_[np.zeros(n), -d.ravel()], "val": np.r_[np.ones(n), np.zeros(draws * n)]})
        out = S.practical_equivalence(frame, value="acc", select="val", by="s", margin=0.01, block_col="seed", correction=None)
        assert out["is_best"].sum() == 1 and out.loc[out.is_best, "s"].item() == -1
        size = out["within_margin"].sum() / draws
        assert size <= 0.06, (n, size)


# --------------------------------------------------------------------------- #
# test-set noise, single runs, degenerate settings, nulls
# --------------------------------------------------------------------------- #
def test_binomial_se():
    assert S.binomial_se(0.8, 2000) == pytest.approx(np.sqrt(0.8 * 0.2 / 2000))
    assert np.isnan(S.binomial_se(0.8, 0)) and np.isnan(S.binomial_se(1.2, 10))
    assert np.allclose(S.binomial_se([0.5, 0.9], [100, 400]), [0.05, 0.015])


def test_mcnemar_against_the_binomial_test():
    rng = np.random.default_rng(4)
    a = rng.random(500) < 0.8
    b = a.copy()
    flip = rng.choice(500, 40, replace=False)
    b[flip] = ~b[flip]
    r = S.mcnemar(a, b)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert (r["only_a"], r["only_b"]) == (only_a, only_b)
    assert r["pvalue"] == pytest.approx(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    assert S.mcnemar(a, a)["pvalue"] == 1.0
    with pytest.raises(ValueError, match="boolean"):
        S.mcnemar(a.astype(int), b)


def test_independent_jaccard_matches_simulated_masks():
    rng = np.random.default_rng(1)
    for ra, rb in ((0.5, 0.5), (0.531, 0.531), (0.2, 0.6)):
        a, b = rng.random(200_000) < ra, rng.random(200_000) < rb
        simulated = np.sum(a & b) / np.sum(a | b)
        assert S.independent_jaccard(ra, rb) == pytest.approx(simulated, abs=0.005)
    # the numbers: DDC's 0.531 drop rate gives 0.361 by chance; DropConnect at 0.5 gives 1/3
    assert S.independent_jaccard(0.531) == pytest.approx(0.3615, abs=5e-4)
    assert S.independent_jaccard(0.5) == pytest.approx(1 / 3)


def test_identical_settings_groups_bit_identical_runs():
    rows = []
    for s in range(3):
        for cell in ("a", "b", "c", "d"):
            same = cell in ("a", "c")
            rows.append({"cell": cell, "seed": s, "test_acc": 0.9 + (0 if same else 0.01 * (cell == "b") + s * 1e-3),
                         "val_acc": 0.8 + (s * 1e-3 if same else 0.02 * (cell == "d"))})
    out = S.identical_settings(pd.DataFrame(rows), setting_col="cell", columns=["test_acc", "val_acc"]).set_index("cell")
    assert out.loc["c", "group"] == "a" and out.loc["a", "group"] == "a" and out.loc["a", "group_size"] == 2
    assert out.loc["b", "group"] == "b" and out.loc["d", "group_size"] == 1


def test_trend_measures_what_is_left_to_rise():
    flat = np.r_[np.linspace(0, 1, 40), np.ones(10)]
    assert S.trend(flat, window=0.2) == pytest.approx(0.0, abs=1e-12)
    rising = np.linspace(0.5, 0.9, 50)  # rises 0.4 over 49 steps: 0.0816 over its last 10 values... of 9 intervals
    assert S.trend(rising, window=0.2) == pytest.approx(0.4 / 49 * 9)
    noisy = np.r_[np.linspace(0, 1, 40), 1 + np.random.default_rng(0).normal(0, 0.005, 10)]
    assert abs(S.trend(noisy)) < 0.01
    assert np.isnan(S.trend([1.0, 2.0]))


def test_variance_by_source_intervals_and_shares():
    rng = np.random.default_rng(12)
    sds = {"data": 0.02, "init": 0.01, "order": 0.005, "all": 0.025}
    df = pd.DataFrame([{"source": k, "acc": 0.8 + rng.normal(0, sd)} for k, sd in sds.items() for _ in range(8)])
    out = S.variance_by_source(df, value="acc").set_index("source")
    x = df[df.source == "data"].acc
    assert out.loc["data", "variance"] == pytest.approx(x.var())
    assert out.loc["data", "variance_low"] == pytest.approx(7 * x.var() / sps.chi2.ppf(0.975, 7))
    assert out.loc["all", "share"] == pytest.approx(1.0) and np.isnan(out.loc["all", "share_low"])
    assert out.loc["data", "share"] == pytest.approx(x.var() / df[df.source == "all"].acc.var())
    assert out.loc["data", "share_low"] < out.loc["data", "share"] < out.loc["data", "share_high"]
    # coverage of the variance interval for normal data: 4000 groups of n = 5, true variance 4
    samples = rng.normal(0, 2.0, size=(4000, 5))
    many = pd.DataFrame({"source": np.repeat(np.arange(4000), 5), "acc": samples.ravel()})
    many = pd.concat([many, df[df.source == "all"]], ignore_index=True)
    table = S.variance_by_source(many, value="acc")
    table = table[table.source != "all"]
    assert 0.93 <= np.mean((table.variance_low <= 4.0) & (4.0 <= table.variance_high)) <= 0.97
    with pytest.raises(ValueError, match="all"):
        S.variance_by_source(df[df.source != "all"], value="acc")


def test_mixed_model_reports_a_group_variance_on_the_boundary_in_its_table():
    import warnings

    def runs(shrink, seed):
        noise = np.random.default_rng(seed).normal(0, 0.01, size=(2, 5))
        noise -= shrink * noise.mean(axis=0, keepdims=True)  # shrink: seeds' means pulled together
        return pd.DataFrame([{"a": a, "seed": s, "v": (0.1 if a == "x" else 0.2) + noise[i, s]} for i, a in enumerate("xy")
                             for s in range(5)])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning escapes: statsmodels' boundary warning and its settled retries
        flat = S.mixed_model(runs(0.5, 0), value="v", factors=["a"], group="seed").set_index("term")
        # statsmodels warns here too (a variance below 0.01), though the seeds carry a third of the variance
        spread = S.mixed_model(runs(0.0, 0), value="v", factors=["a"], group="seed").set_index("term")
    assert "boundary" in flat.loc["group_var", "note"] and (flat.drop("group_var").note == "").all()
    assert spread.loc["group_var", "note"] == "" and spread.loc["group_var", "estimate"] > 0.2 * 0.0001
