"""07_oq_learned_mapping: the notebook at smoke (its stored data) and the module's maths."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import ddc
from ddc import functional as dfn
from experiments import paper
from ddc.notebooks import run_notebooks
from experiments.openq import learned_mapping as L


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
    versus = paper.load_table(run_dir, "verdicts")
    row = versus.query("method == 'learned' and baseline == 'ddc' and value == 'test_acc'").iloc[0]
    assert row.family == "primary" and row.verdict == "exploratory"  # 2 seeds at smoke
    assert (versus.query("value == 'test_loss'").family == "secondary").all()
    runs = paper.load_table(run_dir, "runs").pivot(index="seed", columns="method", values="test_acc")
    assert row.mean_diff == pytest.approx((runs["learned"] - runs["ddc"]).mean())
    assert row.ci_low <= row.mean_diff <= row.ci_high
    regime = paper.load_table(run_dir, "regime").set_index("metric")
    assert regime.loc["test_acc", "n"] == len(paper.load_table(run_dir, "runs"))
    regime_methods = paper.load_table(run_dir, "regime_methods")
    assert set(regime_methods.method) == {"ddc", "learned"} and (regime_methods.test_binomial_se > 0).all()
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
    assert torch.allclose(features[:, 0], dfn.normalized_signal(signal.abs()).reshape(-1), atol=1e-5)
    assert torch.allclose(features[:, 0], features[:, 2]) and (features[:, 3] == 2).all()
    z = dfn.normalized_signal(signal.abs())
    expected = dfn.drop_probability(signal, p_base=0.3, p_signal=0.5, tau=0.5)
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


# ----------------------------------------------------------------------------- where the methods act


@pytest.mark.parametrize("overrides, message", [
    (dict(layers="conv"), "layers='conv' is not allowed; choose one of 'fc', 'last_stage', 'fc+last_stage'"),
    (dict(layers="last_stage", model="simplecnn1"), "layers='last_stage' needs a CIFAR ResNet"),
    (dict(layers="fc+last_stage", model="simplecnn1"), "model='simplecnn1' has no residual stages"),
])
def test_run_config_rejects_bad_layers(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        L.RunConfig(**overrides)


def test_mapped_layers_and_positions():
    from ddc import models

    model = models.build("resnet20", input_shape=(1, 28, 28), num_classes=10)
    stage = [f"layer3.{block}.conv{i}" for block in range(3) for i in (1, 2)]
    assert L.mapped_layers(model, "fc", "fc") == ["fc"]
    assert L.mapped_layers(model, "last_stage", "fc") == stage
    assert L.mapped_layers(model, "fc+last_stage", "fc") == stage + ["fc"]
    positions = L.layer_positions(stage + ["fc"])
    assert positions["layer3.0.conv1"] == 0 and positions["fc"] == 1 and positions["layer3.1.conv1"] == pytest.approx(2 / 6)
    assert L.layer_positions(["fc"]) == {"fc": 0.0}  # one layer: the head-only feature, unchanged


def _resnet_with_signals(names, seed=0):
    """A ResNet-20 with learned methods on ``names`` after two training steps (signals present)."""
    from ddc import models

    torch.manual_seed(seed)
    model = models.build("resnet20", input_shape=(1, 28, 28), num_classes=10)
    mapping = L.Mapping(8, seed=seed)
    with torch.no_grad():  # a non-trivial mapping (its last layer starts at zero)
        mapping.out.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
    rng = ddc.methods.MaskRNG(seed=seed)
    positions = L.layer_positions(names)
    methods = {name: L.LearnedDropConnect(mapping, layer_index=positions[name], rng=rng) for name in names}
    for name in names:
        L.attach(model.get_submodule(name), methods[name])
    x, y = torch.randn(8, 1, 28, 28), torch.randint(10, (8,))
    model.train()
    for _ in range(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    return model, mapping, methods, x, y


def _reference_meta_loss(model, methods, x, y, x_meta, y_meta, lr, temperature, generator):
    """The look-ahead through the whole network (functional_call on the model, no captured features)."""
    from torch.func import functional_call

    weights = {name: model.get_submodule(name).weight.detach().clone().requires_grad_(True) for name in methods}
    effective = {}
    for name, method in methods.items():
        keep = L.relaxed_keep(method.drop_prob(weights[name]), temperature, generator)
        effective[name] = weights[name] * keep / keep.mean()
    params = {name: value.detach() for name, value in model.named_parameters()}
    buffers = {name: value.clone() for name, value in model.named_buffers() if "ddc_method" not in name}
    with ddc.disabled(*[model.get_submodule(name) for name in methods]):
        model.train()
        out = functional_call(model, {**params, **buffers, **{f"{n}.weight": w for n, w in effective.items()}}, (x,))
        grads = torch.autograd.grad(nn.functional.cross_entropy(out, y), list(weights.values()), create_graph=True)
        model.eval()
        updated = {f"{n}.weight": weights[n] - lr * g for n, g in zip(weights, grads)}
        return nn.functional.cross_entropy(functional_call(model, {**params, **updated}, (x_meta,)), y_meta)


def test_meta_step_over_convolutions_matches_the_whole_network_and_leaves_the_model_alone():
    names = [f"layer3.{block}.conv{i}" for block in range(3) for i in (1, 2)] + ["fc"]
    model, mapping, methods, x, y = _resnet_with_signals(names)
    x_meta, y_meta = torch.randn(6, 1, 28, 28), torch.randint(10, (6,))
    captured = {}
    hook = model.layer3.register_forward_pre_hook(lambda m, a: captured.__setitem__("h", a[0].detach()))
    with ddc.disabled(*[model.get_submodule(n) for n in names]), torch.no_grad():
        model.train()
        model(x)  # (this forward moves the running statistics; the snapshot below is taken after it)
        h_train = captured["h"]
        model.eval()
        model(x_meta)
        h_meta = captured["h"]
    hook.remove()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    signals = {n: m.weight_signal.clone() for n, m in methods.items()}
    attached = {n: model.get_submodule(n)._modules.get("ddc_method") for n in names}

    reference = _reference_meta_loss(model, methods, x, y, x_meta, y_meta, 0.05, 0.5, torch.Generator().manual_seed(9))
    expected = torch.autograd.grad(reference, list(mapping.parameters()))
    optimizer = torch.optim.SGD(mapping.parameters(), lr=0.0)  # lr 0: the step leaves phi where it is
    loss = L.meta_step_layers(methods, model, "layer3", "fc", h_train, y, h_meta, y_meta, lr=0.05, optimizer=optimizer,
                              temperature=0.5, generator=torch.Generator().manual_seed(9))
    assert loss == pytest.approx(float(reference.detach()), rel=1e-5)
    got = [p.grad for p in mapping.parameters()]
    assert all(g is not None for g in got) and float(mapping.out.weight.grad.abs().sum()) > 0  # phi learns from the meta loss
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # nothing of the model moved: parameters, BatchNorm running statistics, signals, methods (still active)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(methods[n].weight_signal, signals[n]) for n in names)
    assert all(model.get_submodule(n)._modules.get("ddc_method") is attached[n] and attached[n].active for n in names)
    assert all(model.get_submodule(n).weight.grad is not None for n in names)  # the model's own gradients kept


def _fashion_mnist():
    if "fashion_mnist" not in paper.available_datasets():
        pytest.skip("Fashion-MNIST is not available")


TINY = dict(train_subset=48, val_subset=48, test_subset=48, epochs=2, batch_size=24, meta_batch=24, eval_batch_size=48)


@pytest.fixture(scope="module")
def multi_layer_runs():
    _fashion_mnist()
    config = L.RunConfig(layers="fc+last_stage", **TINY)
    splits = L.load_splits(config, 0)
    return {method: L.train_run(method, 0, config, splits=splits) for method in ("none", "uniform", "ddc", "learned")}


def test_multi_layer_runs_complete_with_the_budget_matched_per_layer(multi_layer_runs):
    import pandas as pd

    names = [f"layer3.{block}.conv{i}" for block in range(3) for i in (1, 2)] + ["fc"]
    for method, (summary, trajectory, edges, grid) in multi_layer_runs.items():
        assert 0 <= summary["test_acc"] <= 1 and summary["steps"] == 4
        if method == "none":
            assert edges is None and grid is None
            continue
        trajectory = pd.DataFrame(trajectory)
        assert list(dict.fromkeys(edges.layer)) == names  # every masked method acts on the same layers
        masked = trajectory.dropna(subset=["mean_drop"])
        assert len(masked) >= 2
        for name in names:  # the learned (and uniform) mapping's mean is pinned to DDC's, layer by layer
            assert np.allclose(masked[f"mean_drop[{name}]"], masked[f"target[{name}]"], atol=1e-4)
        sizes = edges.groupby("layer", sort=False).size()[names].to_numpy()
        weighted = masked[[f"target[{name}]" for name in names]].to_numpy() @ sizes / sizes.sum()
        assert np.allclose(masked.target, weighted)  # the step's target: edge-weighted over the layers
        if method != "ddc":
            means = edges.groupby("layer")[["p_learned", "p_ddc"]].mean()
            assert np.allclose(means.p_learned, means.p_ddc, atol=1e-4)
    learned_trajectory = pd.DataFrame(multi_layer_runs["learned"][1])
    assert learned_trajectory.meta_loss.notna().sum() >= 2 and multi_layer_runs["learned"][0]["seconds_meta"] > 0
    grid = multi_layer_runs["learned"][3]
    assert grid.groupby("layer").layer_index.first().to_dict() == L.layer_positions(names)
    shape = L.mapping_shape(pd.concat([r[2] for r in multi_layer_runs.values() if r[2] is not None]))
    assert set(shape.layer) == {"all", *names} and len(shape.query("layer == 'all'")) == 3


def test_multi_layer_learned_mapping_moves_away_from_uniform(multi_layer_runs):
    edges = multi_layer_runs["learned"][2]
    assert edges.groupby("layer").p_learned.std().gt(0).all()  # phi was trained: the probabilities vary per edge
    uniform = multi_layer_runs["uniform"][2]
    assert uniform.groupby("layer").p_learned.std().lt(1e-6).all()  # uniform: DropConnect at DDC's rate per layer


def test_head_only_meta_step_matches_the_whole_network():
    """The head-only fast path (``meta_step`` on captured head features) against the look-ahead through the
    whole network, in this process: the same loss and hypergradient, whatever kernels this CPU picks."""
    model, mapping, methods, x, y = _resnet_with_signals(["fc"])
    x_meta, y_meta = torch.randn(6, 1, 28, 28), torch.randint(10, (6,))
    captured = {}
    hook = model.fc.register_forward_pre_hook(lambda m, a: captured.__setitem__("h", a[0].detach()))
    with ddc.disabled(model.fc), torch.no_grad():
        model.train()
        model(x)
        h_train = captured["h"]
        model.eval()
        model(x_meta)
        h_meta = captured["h"]
    hook.remove()
    weight = model.fc.weight.detach().clone()
    reference = _reference_meta_loss(model, methods, x, y, x_meta, y_meta, 0.05, 0.5, torch.Generator().manual_seed(9))
    expected = torch.autograd.grad(reference, list(mapping.parameters()))
    optimizer = torch.optim.SGD(mapping.parameters(), lr=0.0)
    generator = torch.Generator().manual_seed(9)
    loss = L.meta_step(methods["fc"], model.fc, h_train, y, h_meta, y_meta, lr=0.05, optimizer=optimizer,
                       temperature=0.5, generator=generator)
    assert loss == pytest.approx(float(reference.detach()), rel=1e-5)
    got = [p.grad for p in mapping.parameters()]
    assert float(mapping.out.weight.grad.abs().sum()) > 0
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert torch.equal(model.fc.weight, weight)  # the look-ahead leaves the head alone
    # both paths draw the same relaxed masks: the generators advanced alike
    again = torch.Generator().manual_seed(9)
    L.relaxed_keep(methods["fc"].drop_prob(weight), 0.5, again)
    assert torch.equal(again.get_state(), generator.get_state())


def test_head_only_run_meta_learns_every_step():
    """``layers="fc"``: one meta step per training step, finite losses, only the head mapped (invariants;
    the trajectory's numbers depend on this CPU's kernels and are not pinned)."""
    _fashion_mnist()
    summary, trajectory, edges, grid = L.train_run("learned", 0, L.RunConfig(layers="fc", **TINY))
    meta = [row["meta_loss"] for row in trajectory if "meta_loss" in row]
    assert len(meta) == summary["steps"] == 4 and all(np.isfinite(meta)) and min(meta) > 0
    assert set(edges.layer) == {"fc"} and set(grid.layer_index) == {0.0}
    assert not any(key.startswith("mean_drop[") for key in trajectory[-1])


@pytest.fixture(scope="module")
def multi_layer_run_dir(tmp_path_factory):
    _fashion_mnist()
    root = tmp_path_factory.mktemp("outputs_multi")
    run_notebooks("smoke", only=["07"], parameters={"layers": "fc+last_stage"}, output_root=root, log=lambda *_: None)
    return root / "smoke" / "07_oq_learned_mapping"


def test_notebook_with_several_layers(multi_layer_run_dir):
    run_dir = multi_layer_run_dir
    assert paper.load_json(run_dir, "settings")["layers"] == "fc+last_stage"
    edges = paper.load_table(run_dir, "edges")
    names = list(dict.fromkeys(edges.layer))
    assert len(names) == 7 and names[-1] == "fc"
    conclusion = " ".join(json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"])
    assert "fc+last_stage (7 layers" in conclusion and "edge-weighted" in conclusion
    by_layer = paper.load_table(run_dir, "mapping_shape_layers").set_index(["metric", "layer", "method"])
    for name in names:  # every layer's shape is quoted from the stored table
        assert f"{by_layer.loc[('sd_p', name, 'learned'), 'mean']:.4f}" in conclusion
    summary = paper.load_table(run_dir, "mapping_shape_summary").set_index(["metric", "method"])
    assert summary.loc[("rho_z_grad", "ddc"), "n"] == 2  # pooled over layers: one row per run
    assert {p.name for p in (run_dir / "figures").glob("*.png")} == {"test_acc.png", "training.png", "mapping.png", "edges.png"}


def test_every_figure_reads(run_dir):
    from notebook_checks import unreadable_figures

    assert unreadable_figures(run_dir, L.figures) == {}


def test_every_figure_of_several_layers_reads(multi_layer_run_dir):
    from notebook_checks import unreadable_figures

    assert unreadable_figures(multi_layer_run_dir, L.figures) == {}


def test_executed_notebook_is_clean(run_dir):
    from notebook_checks import stray_outputs

    assert stray_outputs(run_dir / "07_oq_learned_mapping.ipynb") == []
