"""08_oq_bayesian: the notebook at smoke (its stored data) and the module's maths."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from experiments import paper
from ddc.notebooks import run_notebooks
from experiments.openq import bayesian as B


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    run_notebooks("smoke", only=["08"], output_root=root, log=lambda *_: None)
    return root / "smoke" / "08_oq_bayesian"


def test_scores_table(run_dir):
    scores = paper.load_table(run_dir, "scores")
    assert set(scores.model) == {"det:none", "det:dropout", "det:dropconnect", "det:ddc", "mc:dropout", "mc:dropconnect", "mc:ddc"}
    assert scores.groupby("model").seed.nunique().min() == 2
    for metric in B.METRICS:  # auroc_heldout included: the notebook holds classes 8 and 9 out by default
        assert scores[metric].notna().all()
    assert scores[["acc", "ece", "auroc_noise", "auroc_rotation", "auroc_heldout"]].stack().between(0, 1).all()
    assert (scores.query("inference == 'mc'").samples > 1).all()
    assert (scores.n_heldout > 0).all() and (scores.n_test > 0).all()


def test_models_were_trained_on_the_kept_classes_only(run_dir):
    runs = paper.load_table(run_dir, "runs")
    settings = json.loads((run_dir / "results" / "settings.json").read_text())
    assert settings["heldout_classes"] == [8, 9] and settings["train_classes"] == list(range(8))
    for path in paper.run_paths(run_dir, runs):
        config, splits, model = B.load_trained(path)
        assert config["classes"] == list(range(8))
        assert model.linear2.out_features == 8 == splits.num_classes
        assert set(splits.test.tensors[1].tolist()) <= set(range(8))
        assert set(splits.heldout.tensors[1].tolist()) == {8, 9}


def test_statistics_and_intervals(run_dir):
    summary = paper.load_table(run_dir, "summary")
    assert ((summary.ci_low <= summary["mean"] + 1e-12) & (summary["mean"] <= summary.ci_high + 1e-12)).all()
    versus = paper.load_table(run_dir, "verdicts")
    assert set(versus.model) == {"mc:ddc"} and set(versus.baseline) == {"mc:dropout", "mc:dropconnect", "det:none"}
    assert set(versus.value) == set(B.METRICS)
    assert {"p_holm", "ci_low", "ci_high", "mean_diff", "mde", "verdict"} <= set(versus.columns)
    primary = versus[versus.family == "primary"]
    assert set(primary.value) == {"nll"} and (primary.family_size == 3).all()
    assert (versus.higher_is_better == ~versus.value.isin(B.LOWER_IS_BETTER)).all()
    # the paired difference is recomputable from the stored scores
    scores = paper.load_table(run_dir, "scores")
    wide = scores.pivot(index="seed", columns="model", values="nll")
    row = versus.query("baseline == 'mc:dropout' and value == 'nll'").iloc[0]
    assert row.mean_diff == pytest.approx((wide["mc:ddc"] - wide["mc:dropout"]).mean())
    regime = paper.load_table(run_dir, "regime")
    assert set(regime.tag) == set(paper.load_table(run_dir, "runs").tag)


def test_reliability_and_posterior_tables(run_dir):
    bins = paper.load_table(run_dir, "reliability")
    scores = paper.load_table(run_dir, "scores")
    n_test = bins.groupby(["model", "seed"])["count"].sum()
    assert n_test.nunique() == 1
    # ECE recomputed from the stored bins equals the stored ECE
    for (model, seed), group in bins.groupby(["model", "seed"]):
        used = group[group["count"] > 0]
        ece = (used["count"] * (used.accuracy - used.confidence).abs()).sum() / used["count"].sum()
        stored = scores.query("model == @model and seed == @seed").ece.iloc[0]
        assert ece == pytest.approx(stored)
    posterior = paper.load_table(run_dir, "posterior")
    assert np.allclose(posterior.snr, np.sqrt((1 - posterior.drop_prob) / posterior.drop_prob))
    assert posterior.drop_prob.between(0.3 - 1e-6, 0.8 + 1e-6).all()
    corr = paper.load_table(run_dir, "posterior_correlations")
    assert (corr.rho_snr_grad > 0.5).all()  # DDC: more certain about large-gradient edges


def test_conclusion_quotes_stored_numbers(run_dir):
    conclusion = json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"]
    text = " ".join(conclusion)
    summary = paper.load_table(run_dir, "summary").set_index(["metric", "model"])
    assert f"{summary.loc[('nll', 'mc:ddc'), 'mean']:.4f}" in text
    post = paper.load_table(run_dir, "posterior_summary").set_index("metric")
    assert f"{post.loc['rho_snr_grad', 'mean']:.4f}" in text
    assert f"{summary.loc[('auroc_heldout', 'mc:ddc'), 'mean']:.4f}" in text
    assert "held out" in text and "Overfitting regime" in text
    overfit = paper.load_table(run_dir, "overfitting").set_index(["metric", "tag"])
    assert f"{overfit.loc[('generalization_gap', 'none'), 'mean']:.4f}" in text
    assert {p.name for p in (run_dir / "figures").glob("*.png")} == {
        "reliability.png", "scores.png", "entropy.png", "implied_posterior.png"
    }
    assert B.figures(run_dir)  # rebuilt from the stored tables alone


# ----------------------------------------------------------------------------- maths


def _probs(n=200, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, c, generator=g), 1)
    targets = torch.randint(c, (n,), generator=g)
    return probs, targets


def test_nll_matches_cross_entropy():
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(1))
    targets = torch.randint(7, (50,), generator=torch.Generator().manual_seed(2))
    assert B.nll(torch.softmax(logits, 1), targets) == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-5)


def test_brier_and_ece_against_loops():
    probs, targets = _probs()
    brier = sum(sum((float(probs[i, c]) - (1.0 if c == int(targets[i]) else 0.0)) ** 2 for c in range(5)) for i in range(200)) / 200
    assert B.brier(probs, targets) == pytest.approx(brier)
    n_bins, total = 10, 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(200) if lo < float(probs[i].max()) <= hi or (b == 0 and float(probs[i].max()) == 0)]
        if members:
            conf = sum(float(probs[i].max()) for i in members) / len(members)
            acc = sum(int(probs[i].argmax()) == int(targets[i]) for i in members) / len(members)
            total += len(members) / 200 * abs(acc - conf)
    assert B.ece(probs, targets, n_bins) == pytest.approx(total)


def test_auroc_against_pairwise_count():
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=40), 1)
    b = np.round(rng.normal(0.5, 1, size=30), 1)  # rounding makes ties
    pairs = sum((y > x) + 0.5 * (y == x) for x in a for y in b) / (len(a) * len(b))
    assert B.auroc(a, b) == pytest.approx(pairs)
    assert B.auroc([0, 1], [2, 3]) == 1.0 and B.auroc([2, 3], [0, 1]) == 0.0


def test_mixture_moments_against_sampling():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, dtype=torch.float64, generator=g)
    p = torch.tensor([0.1, 0.3, 0.5, 0.6, 0.8, 0.9], dtype=torch.float64)
    s = 1.7
    keep = torch.rand(200_000, 6, generator=g, dtype=torch.float64) > p
    samples = w * keep * s
    moments = B.mixture_moments(w, p, s)
    assert torch.allclose(samples.mean(0), moments["mean"], atol=0.02)
    assert torch.allclose(samples.std(0), moments["sd"], atol=0.02)
    assert torch.allclose(moments["snr"], moments["mean"].abs() / moments["sd"])


def test_entropy_and_corruptions():
    probs = torch.full((3, 4), 0.25)
    assert torch.allclose(B.entropy(probs), torch.full((3,), np.log(4.0), dtype=torch.float32))
    x = torch.randn(2, 1, 5, 5)
    assert torch.equal(B.corrupt(x, "rotation"), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(B.corrupt(x, "noise", seed=4), B.corrupt(x, "noise", seed=4))
    with pytest.raises(ValueError):
        B.corrupt(x, "blur")


def test_kept_classes():
    assert B.kept_classes(10, [8, 9]) == list(range(8))
    assert B.kept_classes(10, []) is None
    for bad in ([10], [8, 8], list(range(9)), [True]):
        with pytest.raises(ValueError, match="heldout_classes"):
            B.kept_classes(10, bad)


def test_train_specs_lay_overrides_over_the_recipe():
    from ddc.sweep import load_spec

    (spec,) = B.train_specs("fashion_mnist-simplecnn1", "smoke", [0], classes=[0, 1, 2], epochs=1, train_subset=None)
    configs = load_spec(spec).expand()
    assert len(configs) == len(B.TRAIN_METHODS)
    assert all(c.classes == [0, 1, 2] and c.epochs == 1 and c.train_subset == 256 for c in configs)


def test_every_figure_reads(run_dir):
    from notebook_checks import unreadable_figures

    assert unreadable_figures(run_dir, B.figures) == {}


def test_executed_notebook_is_clean(run_dir):
    from notebook_checks import stray_outputs

    assert stray_outputs(run_dir / "08_oq_bayesian.ipynb") == []
