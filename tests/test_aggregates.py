"""Tests for analysis.aggregates: IQM, stratified bootstrap, P(X > Y), performance profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import aggregates as A


def scores(seed: int = 0, n_seeds: int = 5, n_tasks: int = 3):
    rng = np.random.default_rng(seed)
    task_level = rng.normal(0, 1, n_tasks)
    shared = rng.normal(0, 0.3, (n_seeds, n_tasks))
    return {"ddc": task_level + shared + 0.4 + rng.normal(0, 0.1, (n_seeds, n_tasks)),
            "none": task_level + shared + rng.normal(0, 0.1, (n_seeds, n_tasks))}


def test_interquartile_mean_against_scipy_and_by_hand():
    x = np.arange(1.0, 9.0).reshape(2, 4)  # 1..8: the middle half is 3, 4, 5, 6
    assert A.interquartile_mean(x) == pytest.approx(4.5)
    y = np.random.default_rng(1).normal(size=(7, 5))
    assert A.interquartile_mean(y) == pytest.approx(sps.trim_mean(y.ravel(), 0.25))


def test_intervals_reproduce_from_the_generator_state():
    s = scores()
    a = A.aggregate_intervals(s, rng=np.random.default_rng(7), n_resamples=500)
    b = A.aggregate_intervals(s, rng=np.random.default_rng(7), n_resamples=500)
    pd.testing.assert_frame_equal(a, b)
    c = A.aggregate_intervals(s, rng=np.random.default_rng(8), n_resamples=500)
    assert not np.allclose(a.ci_low, c.ci_low)
    # the generator passed is the one used: it advances, so a second call differs
    gen = np.random.default_rng(7)
    first = A.aggregate_intervals(s, rng=gen, n_resamples=500)
    second = A.aggregate_intervals(s, rng=gen, n_resamples=500)
    pd.testing.assert_frame_equal(first, a)
    assert not np.allclose(first.ci_low, second.ci_low)
    # global numpy state plays no part (rliable's bug)
    np.random.seed(0)
    x = A.aggregate_intervals(s, rng=np.random.default_rng(7), n_resamples=500)
    np.random.seed(1)
    pd.testing.assert_frame_equal(x, A.aggregate_intervals(s, rng=np.random.default_rng(7), n_resamples=500))
    assert ((a.ci_low <= a.estimate) & (a.estimate <= a.ci_high)).all()
    with pytest.raises(ValueError, match="Generator"):
        A.aggregate_intervals(s, rng=7)


def test_bootstrap_is_stratified_by_task():
    # scores constant within each task but different between tasks: resampling seeds within a task
    # cannot move the mean; a bootstrap that mixed tasks would
    constant = {"m": np.tile([0.0, 1.0, 5.0], (4, 1))}
    point, low, high = A.stratified_bootstrap(constant, np.mean, rng=np.random.default_rng(0), n_resamples=300)
    assert point == low == high == pytest.approx(2.0)


def test_paired_resampling_keeps_differences_paired():
    # y = x + 1 run by run: every resample of the mean difference is exactly 1
    x = np.random.default_rng(2).normal(size=(6, 3))
    point, low, high = A.stratified_bootstrap({"x": x + 1, "y": x}, lambda a, b: float(np.mean(a - b)),
                                              rng=np.random.default_rng(0), n_resamples=300)
    assert point == pytest.approx(1) and low == pytest.approx(1) and high == pytest.approx(1)


def test_probability_of_improvement_by_hand():
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    y = np.array([[2.0, 5.0], [0.0, 6.0]])
    # task 0: pairs (1>2 no, 1>0 yes, 3>2 yes, 3>0 yes) = 3/4; task 1: (5=5 half, 5<6, 5=5 half, 5<6) = 1/4
    assert A.probability_of_improvement(x, y) == pytest.approx((0.75 + 0.25) / 2)
    assert A.probability_of_improvement(y, x) == pytest.approx(1 - 0.5)
    u = sps.mannwhitneyu(x[:, 0], y[:, 0]).statistic
    assert u / 4 == pytest.approx(0.75)
    s = scores()
    point, low, high = A.probability_of_improvement_interval(s["ddc"], s["none"], rng=np.random.default_rng(0),
                                                             n_resamples=500)
    assert low <= point <= high and point > 0.5


def test_performance_profile():
    s = {"m": np.array([[0.1, 0.5], [0.9, 0.3]])}
    out = A.performance_profile(s, [0.0, 0.2, 0.4, 1.0], rng=np.random.default_rng(0), n_resamples=200)
    assert list(out.fraction) == [1.0, 0.75, 0.5, 0.0]
    assert ((out.ci_low <= out.fraction) & (out.fraction <= out.ci_high)).all()


def test_scores_from_frame_and_normalise():
    rows = [{"dataset": d, "model": "mlp", "method": m, "seed": s, "acc": 0.5 + 0.1 * (m == "ddc") + 0.01 * s + (d == "b") * 0.2}
            for d in ("a", "b") for m in ("ddc", "none") for s in range(3)]
    rows.append({"dataset": "c", "model": "mlp", "method": "ddc", "seed": 0, "acc": 0.9})  # task without 'none'
    arrays, tasks, seeds = A.scores_from_frame(pd.DataFrame(rows), value="acc", task_col=["dataset", "model"])
    assert tasks == ["a / mlp", "b / mlp"] and seeds == [0, 1, 2]
    assert arrays["ddc"].shape == (3, 2) and arrays["ddc"][0, 1] == pytest.approx(0.8)
    low = arrays["none"].mean(axis=0)
    norm = A.normalise(arrays["ddc"], low, 1.0)
    assert norm[:, 0] == pytest.approx((arrays["ddc"][:, 0] - low[0]) / (1 - low[0]))
    with pytest.raises(ValueError, match="zero range"):
        A.normalise(arrays["ddc"], 1.0, 1.0)
