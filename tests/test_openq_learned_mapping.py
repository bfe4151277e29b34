"""07_oq_learned_mapping: the notebook at smoke (its stored data) and the module's maths."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import ddc
from ddc import functional as F
from ddc import paper
from ddc.notebooks import run_notebooks
from ddc.openq import learned_mapping as L


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    run_notebooks("smoke", only=["07"], output_root=root, log=lambda *_: None)
    return root / "smoke" / "07_oq_learned_mapping"


def test_runs_and_matched_budget(run_dir):
    runs = paper.load_table(run_dir, "runs")
    assert set(runs.method) == {"ddc", "learned"}
    assert runs.groupby("method").seed.nunique().min() == 2
    assert runs.test_acc.between(0, 1).all()
    trajectory = paper.load_table(run_dir, "trajectory")
    masked = trajectory.dropna(subset=["mean_drop", "target"])
    assert len(masked.query("method == 'learned'")) > 0
    assert np.allclose(masked.mean_drop, masked.target, atol=1e-4)  # the learned mapping's mean is pinned to DDC's
    assert trajectory.query("method == 'learned'").meta_loss.notna().any()
    # one learning-curve point per (method, seed, epoch), on the epoch's last step
    curve = trajectory.dropna(subset=["val_acc"])
    assert len(curve) == len(runs) * 2 and curve.groupby(["method", "seed"]).epoch.nunique().eq(2).all()
    # the fit of the training set and the time split are recorded per run
    assert runs.train_acc.between(0, 1).all()
    assert np.allclose(runs.generalization_gap, runs.train_acc - runs.test_acc)
    assert (runs[["seconds_train", "seconds_eval"]] > 0).all().all()
    assert (runs.query("method == 'learned'").seconds_meta > 0).all() and (runs.query("method == 'ddc'").seconds_meta == 0).all()


def test_statistics_and_intervals(run_dir):
    summary = paper.load_table(run_dir, "summary")
    assert ((summary.ci_low <= summary["mean"] + 1e-12) & (summary["mean"] <= summary.ci_high + 1e-12)).all()
    versus = paper.load_table(run_dir, "versus_ddc")
    row = versus.query("method == 'learned' and metric == 'test_acc'").iloc[0]
    runs = paper.load_table(run_dir, "runs").pivot(index="seed", columns="method", values="test_acc")
    assert row.mean_diff == pytest.approx((runs["learned"] - runs["ddc"]).mean())
    assert row.ci_low <= row.mean_diff <= row.ci_high
    regime = paper.load_table(run_dir, "regime").set_index("metric")
    assert regime.loc["test_acc", "n"] == len(paper.load_table(run_dir, "runs"))
    timing = paper.load_table(run_dir, "timing")
    assert set(timing.method) == {"ddc", "learned"} and (timing.steps > 0).all()


def test_edges_grid_and_shape(run_dir):
    edges = paper.load_table(run_dir, "edges")
    learned = edges[edges.method == "learned"]
    assert learned.p_learned.between(0, 1).all()
    for seed, group in learned.groupby("seed"):
        assert group.p_learned.mean() == pytest.approx(group.p_ddc.mean(), abs=1e-4)
    grid = paper.load_table(run_dir, "mapping_grid")
    assert np.allclose(grid.p_ddc, L.ddc_curve(grid.z_grad))
    shape = paper.load_table(run_dir, "mapping_shape").set_index(["method", "seed"])
    assert (shape.loc["ddc"].rho_z_grad < -0.5).all()  # DDC's formula drops small-gradient edges


def test_conclusion_quotes_stored_numbers(run_dir):
    conclusion = " ".join(json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"])
    summary = paper.load_table(run_dir, "summary").set_index(["metric", "method"])
    assert f"{summary.loc[('test_acc', 'learned'), 'mean']:.4f}" in conclusion
    shape = paper.load_table(run_dir, "mapping_shape_summary").set_index(["metric", "method"])
    assert f"{shape.loc[('rho_z_grad', 'learned'), 'mean']:.4f}" in conclusion
    assert {p.name for p in (run_dir / "figures").glob("*.png")} == {"test_acc.png", "training.png", "mapping.png", "edges.png"}
    assert L.figures(run_dir)
    assert "Regime (" in conclusion and "Time per run" in conclusion


# ----------------------------------------------------------------------------- maths


def test_matched_probability_pins_the_mean_and_its_gradient_is_implicit():
    g = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(300, generator=g, dtype=torch.float64)).requires_grad_(True)
    for target in (0.05, 0.3, 0.62):
        p = L.matched_probability(logits, target)
        assert float(p.detach().mean()) == pytest.approx(target, abs=1e-9)
    # d mean(p) / d logits is zero when the mean is pinned
    p = L.matched_probability(logits, 0.4)
    (grad,) = torch.autograd.grad(p.mean(), logits)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-10)
    # and the shift's gradient matches finite differences
    shift = L.matched_shift(logits, 0.4)
    (grad,) = torch.autograd.grad(shift, logits)
    bump = torch.zeros_like(logits)
    bump[7] = 1e-6
    numeric = (float(L.matched_shift(logits.detach() + bump, 0.4)) - float(L.matched_shift(logits.detach() - bump, 0.4))) / 2e-6
    assert float(grad[7]) == pytest.approx(numeric, rel=1e-4)


def test_relaxed_keep_matches_its_probability():
    p = torch.tensor([0.1, 0.3, 0.5, 0.8], dtype=torch.float64).repeat(50_000, 1)
    for temperature in (0.5, 2.0):
        m = L.relaxed_keep(p, temperature, torch.Generator().manual_seed(1))
        assert torch.allclose((m > 0.5).double().mean(0), 1 - p[0], atol=0.01)  # exact at any temperature
    cold = L.relaxed_keep(p, 0.02, torch.Generator().manual_seed(2))
    assert torch.allclose(cold.mean(0), 1 - p[0], atol=0.01)  # the mean tends to 1 - p


def test_features_ddc_curve_and_target():
    g = torch.Generator().manual_seed(3)
    signal, weight = torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)
    features = L.edge_features(signal, weight, signal.abs(), layer_index=2)
    assert features.shape == (80, 4)
    assert torch.allclose(features[:, 0], F.normalized_signal(signal.abs()).reshape(-1), atol=1e-5)
    assert torch.allclose(features[:, 0], features[:, 2]) and (features[:, 3] == 2).all()
    z = F.normalized_signal(signal.abs())
    expected = F.drop_probability(signal, p_base=0.3, p_signal=0.5, tau=0.5)
    assert np.allclose(L.ddc_curve(z.numpy()), expected.numpy(), atol=1e-5)
    assert L.ddc_target(signal, 0.3, 0.5, 0.5) == pytest.approx(float(expected.mean()), abs=1e-6)


def test_learned_method_on_a_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = L.LearnedDropConnect(L.Mapping(8, seed=0), rng=ddc.methods.MaskRNG(seed=0))
    remove = L.attach(model[2], method)
    assert set(model.state_dict()) == set(before)  # the mapping is not part of the model
    x, y = torch.randn(16, 6), torch.randint(3, (16,))
    for _ in range(3):
        model.train()
        nn.functional.cross_entropy(model(x), y).backward()
    assert method.weight_signal is not None and method.mean_drop == pytest.approx(method.target, abs=1e-5)
    model.eval()
    plain = nn.functional.linear(model[1](model[0](x)), model[2].weight, model[2].bias)
    assert torch.equal(model(x), plain)  # eval mode is the plain layer
    remove()
    assert "ddc_method" not in model[2]._modules


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs=0 must be an integer >= 1"),
    ("batch_size", 2.5, "batch_size=2.5 must be an integer >= 1"),
    ("val_subset", 1, "val_subset=1 must be an integer >= 2"),
    ("temperature", 0.0, "temperature=0.0 must be a positive number"),
    ("ema_decay", 1.0, "ema_decay=1.0 must lie in [0, 1)"),
    ("dataset", "imagenet", "dataset='imagenet' is not allowed; choose one of"),
    ("model", "resnet21", "model='resnet21' is not allowed; choose one of"),
    ("p_base", 0.8, "exceeds 1"),
])
def test_run_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        L.RunConfig(**{field: value})


def test_train_run_rejects_bad_method_and_layer():
    config = L.RunConfig(dataset="mnist1d", model="simplecnn1", layer="linear2", train_subset=20, val_subset=10,
                         test_subset=10, epochs=1, batch_size=10)
    with pytest.raises(ValueError, match=r"method='dropout': choose one of none, uniform, ddc, learned"):
        L.train_run("dropout", 0, config)
    with pytest.raises(ValueError, match=r"layer='conv1' must name a Linear layer of simplecnn1: one of"):
        L.train_run("learned", 0, dataclasses.replace(config, layer="conv1"))
