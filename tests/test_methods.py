"""Methods as drop-in modules: apply/remove round trips, gradients, seeds, errors."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import ddc
from ddc import functional as F

WEIGHT_METHODS = ("dropconnect", "ddc")
ALL_METHODS = ("dropout", "dropconnect", "standout", "ddc")


class Net(nn.Module):
    """Linear and Conv layers, with a declared default selection."""

    ddc_layers = ("fc1",)
    dropout_layers = ("fc1",)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.act(self.conv(x))
        h = self.act(self.conv1d(h.flatten(2)))
        return self.fc2(self.act(self.fc1(h.flatten(1))))


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net()


def batch(seed=0, n=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def train_steps(model, steps=3, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("method", ALL_METHODS)
def test_apply_then_remove_restores_model_exactly(method):
    model = make_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [id(p) for p in model.parameters()]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = ddc.apply(model, method, layers=["conv", "fc1"] if method != "standout" else ["fc1"], seed=0)
    assert [id(p) for p in model.parameters()] == params_before
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert set(model.state_dict()) == set(before)  # method state never leaks into the model's keys
    handle.remove()
    handle.remove()  # idempotent
    assert type(model.fc1) is nn.Linear and "forward" not in model.fc1.__dict__
    assert not ddc.regularized_layers(model)
    assert [id(p) for p in model.parameters()] == params_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # the optimizer built before apply still drives the same parameters


@pytest.mark.parametrize("method", ALL_METHODS)
def test_context_manager_removes(method):
    model = make_net()
    with ddc.apply(model, method, seed=0) as handle:
        assert set(ddc.regularized_layers(model)) == {"fc1"} == set(handle.methods)
    assert not ddc.regularized_layers(model)


@pytest.mark.parametrize("method", ("dropout", "dropconnect", "ddc"))
def test_eval_mode_is_bit_identical_to_plain_model(method):
    model = make_net()
    reference = copy.deepcopy(model).eval()
    layers = ["conv", "conv1d", "fc1", "fc2"] if method != "dropout" else ["fc1"]
    ddc.apply(model, method, layers=layers, seed=0)
    train_steps(model, steps=2)  # DDC now has gradient signals
    reference.load_state_dict(model.state_dict())
    model.eval()
    x, _ = batch(5)
    assert torch.equal(model(x), reference(x))


def test_trained_model_exports_plain_state_dict():
    model = make_net()
    handle = ddc.apply(model, "ddc", layers=[nn.Linear, nn.Conv2d], seed=1)
    train_steps(model)
    plain = Net()
    plain.load_state_dict(model.state_dict())  # strict: same keys, same shapes
    handle.remove()
    x, _ = batch(2)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))


def test_module_repr_shows_configuration():
    model = make_net()
    ddc.apply(model, "ddc", p_base=0.2, p_signal=0.6)
    text = repr(model.fc1)
    assert "DynamicDropConnect(p_base=0.2, p_signal=0.6" in text and "update='autograd'" in text


def test_applying_twice_to_a_layer_is_refused():
    model = make_net()
    ddc.apply(model, "ddc")
    with pytest.raises(ValueError, match="already carries method='ddc'"):
        ddc.apply(model, "dropconnect", layers="fc1")


# ----------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("method", ALL_METHODS)
def test_same_seed_same_masks_and_losses(method):
    runs = []
    for _ in range(2):
        model = make_net()
        ddc.apply(model, method, seed=123)
        runs.append(train_steps(model, steps=4))
    assert runs[0] == runs[1]
    model = make_net()
    ddc.apply(model, method, seed=124)
    assert train_steps(model, steps=4) != runs[0]


def test_masks_do_not_touch_the_global_rng():
    model = make_net()
    ddc.apply(model, "ddc", layers=[nn.Linear], seed=0)
    torch.manual_seed(42)
    train_steps(model, steps=2)
    after = torch.rand(1)
    torch.manual_seed(42)
    assert torch.equal(torch.rand(1), after)


def test_handle_state_round_trip_resumes_identically():
    model = make_net()
    handle = ddc.apply(model, "ddc", layers=[nn.Linear], seed=7)
    train_steps(model, steps=2)
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(handle.state_dict())
    x, _ = batch(9)
    first = model(x)

    other = make_net(seed=99)
    other.load_state_dict(saved_model)
    other_handle = ddc.apply(other, "ddc", layers=[nn.Linear], seed=0)
    other_handle.load_state_dict(saved)
    assert torch.equal(other(x), first)


# ----------------------------------------------------------------------------- gradients


def _layer_with_mixed_mask(update):
    """A 1x2 Linear whose first DropConnect mask keeps exactly one edge."""
    for seed in range(100):
        layer = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        handle = ddc.apply(layer, "dropconnect", layers=[nn.Linear], p=0.5, update=update, seed=seed)
        method = next(iter(handle.methods.values()))
        method.keep_last = True
        x = torch.tensor([[3.0, 5.0]])
        out = layer(x)
        keep = method.last.keep_mask
        if keep.sum() == 1:
            return layer, out, keep
        handle.remove()
    raise AssertionError("no seed gave a mixed mask")


def test_update_rules_hand_computed():
    # W = [1, 2], x = [3, 5], loss = out. dL/dW_eff = x = [3, 5].
    # One edge kept: realised keep rate 1/2, so scale = 2 (up to eps).
    layer, out, keep = _layer_with_mixed_mask("autograd")
    kept = keep[0].tolist().index(True)
    expected_out = 2.0 * [1.0, 2.0][kept] * [3.0, 5.0][kept]
    assert out.item() == pytest.approx(expected_out, rel=1e-6)
    out.sum().backward()
    expected = [0.0, 0.0]
    expected[kept] = 2.0 * [3.0, 5.0][kept]  # keep * scale * dL/dW_eff
    assert layer.weight.grad[0].tolist() == pytest.approx(expected, rel=1e-6)

    layer, out, keep = _layer_with_mixed_mask("reference")
    out.sum().backward()
    assert layer.weight.grad[0].tolist() == pytest.approx([3.0, 5.0])  # dense: dL/dW_eff itself


def test_ddc_signal_is_dense_effective_gradient_by_default():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], first_step="base", seed=0)
    method = next(iter(handle.methods.values()))
    method.keep_last = True
    x = torch.randn(5, 6)
    out = layer(x)
    out.pow(2).sum().backward()
    keep, scale = method.last.keep_mask, method.last.scale
    w_eff = (layer.weight.detach() * keep * scale).requires_grad_()
    torch.nn.functional.linear(x, w_eff, layer.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(method.weight_signal, w_eff.grad)
    torch.testing.assert_close(layer.weight.grad, w_eff.grad * keep * scale)


def test_signal_source_param_is_zero_on_dropped_edges():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], first_step="base", signal_source="param", seed=0)
    method = next(iter(handle.methods.values()))
    method.keep_last = True
    layer(torch.randn(4, 8)).sum().backward()
    dropped = ~method.last.keep_mask
    assert dropped.any() and torch.all(method.weight_signal[dropped] == 0)


def test_first_step_passthrough_then_masks():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    plain = copy.deepcopy(layer)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0)
    method = next(iter(handle.methods.values()))
    x = torch.randn(4, 5)
    out = layer(x)
    assert torch.equal(out, plain(x))  # no gradient yet: W unchanged
    out.sum().backward()
    assert method.weight_signal is not None
    assert not torch.equal(layer(x), plain(x))


def test_first_step_base_drops_with_p_base():
    layer = nn.Linear(100, 100)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], first_step="base", p_base=0.25, seed=0)
    method = next(iter(handle.methods.values()))
    method.keep_last = True
    layer(torch.randn(2, 100))
    rate = (~method.last.keep_mask).float().mean().item()
    assert abs(rate - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 10_000)


def test_grad_ema_blends_magnitudes():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], grad_ema=0.9, seed=0)
    method = next(iter(handle.methods.values()))
    x1, x2 = torch.randn(1, 3), torch.randn(1, 3)
    layer(x1).sum().backward()
    first = method.weight_signal.clone()
    assert torch.allclose(first, x1.abs().expand(2, 3))
    method.keep_last = True
    layer.weight.grad = None
    layer(x2).sum().backward()
    grad_eff = x2.abs().expand(2, 3)  # dL/dW_eff of a sum does not depend on the mask
    torch.testing.assert_close(method.weight_signal, 0.9 * first + 0.1 * grad_eff)


def test_global_scope_pools_statistics_across_layers():
    model = make_net()
    handle = ddc.apply(model, "ddc", layers=["fc1", "fc2"], scope="global", seed=0)
    train_steps(model, steps=1)
    m1, m2 = handle.methods["fc1"], handle.methods["fc2"]
    pooled = torch.cat([m1.weight_signal.abs().flatten(), m2.weight_signal.abs().flatten()])
    sd, mu = torch.std_mean(pooled)
    (got_mu, got_sd), finite = m1.global_stats.get(m1)
    assert finite
    torch.testing.assert_close(got_mu, mu)
    torch.testing.assert_close(got_sd, sd)
    expected = F.drop_probability(m2.weight_signal, p_base=0.3, p_signal=0.5, stats=(mu, sd))
    torch.testing.assert_close(m2.weight_drop_prob(model.fc2.weight), expected)


def test_weight_signal_ablation_uses_weight_magnitude():
    layer = nn.Linear(10, 10)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], signal="weight", p_base=0.4, p_signal=0.25)
    method = next(iter(handle.methods.values()))
    expected = F.drop_probability(layer.weight.detach(), p_base=0.4, p_signal=0.25)
    torch.testing.assert_close(method.weight_drop_prob(layer.weight), expected)


def test_drop_bias_masks_bias():
    torch.manual_seed(0)
    layer = nn.Linear(4, 200)
    handle = ddc.apply(layer, "dropconnect", layers=[nn.Linear], p=0.5, drop_bias=True, recalibration="none", seed=0)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(1.0)
    out = layer(torch.randn(1, 4))
    frac_zero = (out == 0).float().mean().item()
    assert 0.3 < frac_zero < 0.7
    handle.remove()


# ----------------------------------------------------------------------------- per-example masks


def test_sample_mask_linear_matches_naive_loop():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    handle = ddc.apply(layer, "dropconnect", layers=[nn.Linear], p=0.5, mask="sample", seed=3)
    method = next(iter(handle.methods.values()))
    method.keep_last = True
    x = torch.randn(5, 6)
    out = layer(x)
    keep, scale = method.last.keep_mask, method.last.scale
    assert keep.shape == (5, 4, 6)
    assert not torch.equal(keep[0], keep[1])
    naive = torch.stack([nn.functional.linear(x[b], layer.weight * keep[b] * scale[b], layer.bias) for b in range(5)])
    torch.testing.assert_close(out, naive)
    out.sum().backward()
    expected_grad = sum(torch.outer(torch.ones(4), x[b]) * keep[b] * scale[b] for b in range(5))
    torch.testing.assert_close(layer.weight.grad, expected_grad)


@pytest.mark.parametrize("record", [False, True])
@pytest.mark.parametrize(
    "method, options",
    [
        ("dropconnect", dict(p=0.4)),
        ("dropconnect", dict(p=0.4, update="reference", drop_bias=True)),
        ("ddc", dict()),
        ("ddc", dict(recalibration="per_edge")),
    ],
)
def test_sample_masks_in_chunks_equal_one_full_mask(monkeypatch, method, options, record):
    """Per-example masks are made a few examples at a time and made again in backward;
    outputs, gradients and the DDC signal equal those of the whole batch x out x in mask."""
    import ddc.methods as M

    monkeypatch.setattr(M, "EXAMPLE_CHUNK_EDGES", 60)  # 30 edges: chunks of 2 examples, the last of 1
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    handle = ddc.apply(layer, method, layers=[nn.Linear], mask="sample", seed=3, **options)
    m = next(iter(handle.methods.values()))
    m.keep_last = record
    x = torch.randn(7, 3, 6, requires_grad=True)
    weights = torch.randn(7, 3, 5)
    (layer(x) * weights).sum().backward()  # DDC: the first step gives the signal
    x.grad, layer.weight.grad = None, None
    drop_prob = m.weight_drop_prob(layer.weight)
    generator = torch.Generator()
    generator.set_state(m.rng(torch.device("cpu")).get_state())
    out = layer(x)
    (out * weights).sum().backward()

    keep = F.keep_mask(drop_prob, generator=generator, shape=(7, 5, 6))
    scale = F.keep_scale(keep, mode=m.recalibration, drop_prob=drop_prob, eps=m.eps, batch_dims=1)
    w = layer.weight.detach().requires_grad_()
    bias = layer.bias
    if m.drop_bias:
        bias_keep = F.keep_mask(torch.full((), 0.4), generator=generator, shape=(7, 5))
        bias = layer.bias * bias_keep * F.keep_scale(bias_keep, mode=m.recalibration, eps=m.eps, batch_dims=1)
    effective = w * keep * scale if m.update == "autograd" else (w.detach() * keep * scale).requires_grad_()
    xr = x.detach().requires_grad_()
    expected = torch.bmm(xr, effective.transpose(1, 2)) + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, xr.grad)
    dense = torch.einsum("bto,bti->oi", weights, x.detach())  # dL/dW_eff summed over the batch
    torch.testing.assert_close(layer.weight.grad, w.grad if m.update == "autograd" else dense)
    if method == "ddc":
        torch.testing.assert_close(m.weight_signal, dense)
    if record:
        assert torch.equal(m.last.keep_mask, keep)
        torch.testing.assert_close(m.last.scale, scale)
    handle.remove()


def test_sample_mask_ddc_trains():
    model = make_net()
    ddc.apply(model, "ddc", mask="sample", seed=0)
    losses = train_steps(model, steps=3)
    assert all(math.isfinite(v) for v in losses)


# ----------------------------------------------------------------------------- baselines


def test_dropout_rate_and_scaling():
    layer = nn.Linear(50, 400)
    handle = ddc.apply(layer, "dropout", layers=[nn.Linear], p=0.3, seed=0)
    x = torch.randn(64, 50)
    with torch.no_grad():
        out = layer(x)
        plain = nn.functional.linear(x, layer.weight, layer.bias)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(out[~dropped], plain[~dropped] / 0.7)
    handle.remove()


def test_standout_keep_probability_and_inference_rule():
    torch.manual_seed(0)
    layer = nn.Linear(10, 300)
    handle = ddc.apply(layer, "standout", layers=[nn.Linear], alpha=1.5, beta=-0.5, seed=0)
    x = torch.randn(64, 10)
    with torch.no_grad():
        plain = nn.functional.linear(x, layer.weight, layer.bias)
        pi = torch.sigmoid(1.5 * plain - 0.5)
        kept = torch.stack([layer(x) != 0 for _ in range(20)]).float().mean(0)
    assert abs(kept.mean().item() - pi.mean().item()) < 0.01
    layer.eval()
    torch.testing.assert_close(layer(x), plain * pi)
    handle.remove()


def test_standout_tied_form():
    layer = nn.Linear(3, 2)
    handle = ddc.apply(layer, "standout", layers=[nn.Linear], alpha=0.5, beta=0.2, form="tied")
    layer.eval()
    x = torch.randn(4, 3)
    plain = nn.functional.linear(x, layer.weight, layer.bias)
    tied = nn.functional.linear(x, 0.5 * layer.weight + 0.2, 0.5 * layer.bias)
    torch.testing.assert_close(layer(x), plain * torch.sigmoid(tied))
    handle.remove()


def test_dropconnect_realized_rate():
    layer = nn.Linear(200, 200)
    handle = ddc.apply(layer, "dropconnect", layers=[nn.Linear], p=0.4, seed=0)
    method = next(iter(handle.methods.values()))
    method.keep_last = True
    layer(torch.randn(2, 200))
    rate = (~method.last.keep_mask).float().mean().item()
    assert abs(rate - 0.4) < 5 * math.sqrt(0.24 / 40_000)


# ----------------------------------------------------------------------------- non-finite


def test_nonfinite_gradient_falls_back_to_p_base_and_warns_once():
    layer = nn.Linear(20, 20)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], p_base=0.3, seed=0)
    method = next(iter(handle.methods.values()))
    method.weight_signal = torch.randn(20, 20)
    method.weight_signal[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        drop_prob = method.weight_drop_prob(layer.weight)
    assert torch.allclose(drop_prob, torch.tensor(0.3))
    out = layer(torch.randn(3, 20))
    assert torch.isfinite(out).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.weight_drop_prob(layer.weight)  # second time: no warning
    assert method.nonfinite_steps.item() == 3


def test_inf_loss_never_makes_effective_weights_nan():
    layer = nn.Linear(4, 4)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0)
    method = next(iter(handle.methods.values()))
    method.keep_last = True
    layer(torch.full((1, 4), float("inf"))).sum().backward()
    with pytest.warns(RuntimeWarning):
        layer(torch.ones(1, 4))
    w_eff = layer.weight * method.last.keep_mask * method.last.scale
    assert torch.isfinite(w_eff).all()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "method,kwargs,match",
    [
        ("ddc", dict(p_base=1.2), "p_base"),
        ("ddc", dict(p_base=0.6, p_signal=0.6), "p_base \\+ p_signal"),
        ("ddc", dict(tau=1.5), "tau"),
        ("ddc", dict(update="dense"), "update.*'autograd', 'reference'"),
        ("ddc", dict(recalibration="scaled"), "recalibration"),
        ("ddc", dict(signal_source="grad"), "signal_source"),
        ("ddc", dict(first_step="skip"), "first_step"),
        ("ddc", dict(scope="unit"), "scope.*'global'"),
        ("ddc", dict(grad_ema=1.0), "grad_ema"),
        ("ddc", dict(p_bsae=0.3), "unknown option.*'p_bsae'.*allowed options: p_base"),
        ("dropout", dict(p=-0.1), "p="),
        ("dropconnect", dict(tau=0.5), "unknown option.*'tau'"),
        ("standout", dict(form="free"), "form"),
        ("ddc", dict(layers="fc9"), "layers: 'fc9' matches no layer.*fc1"),
        ("ddc", dict(layers=nn.LSTM), "matches no layer"),
        ("ddc", dict(layers=[]), "layers: the selection is empty"),
        ("ddc", dict(layers=3.5), "layers: 3.5 is neither a name/pattern, an nn.Module type nor a list"),
        ("ddc", dict(layers=[0]), "layers: 0 is neither a name/pattern nor an nn.Module type"),
        ("ddc", dict(layers=b"fc1"), "layers: b'fc1' is neither a name/pattern, an nn.Module type nor a list"),
        ("ddc", dict(layers={"fc1": 0.5}), "layers: {'fc1': 0.5} is neither a name/pattern, an nn.Module type nor a list"),
        ("dropconnect", dict(layers=nn.ReLU), "has no weight"),
        ("ddc", dict(layers="conv", mask="sample"), "mask='sample'.*nn.Linear only"),
        ("ddc", dict(seed=1, generator=torch.Generator()), "seed and generator"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(method, kwargs, match):
    model = make_net()
    with pytest.raises(ValueError, match=match):
        ddc.apply(model, method, **kwargs)
    assert not ddc.regularized_layers(model)  # a refused apply leaves nothing behind


def test_unknown_method_and_missing_default():
    with pytest.raises(ValueError, match="method='dropblock'.*'ddc'"):
        ddc.apply(make_net(), "dropblock")
    with pytest.raises(ValueError, match="declares no default `ddc_layers`"):
        ddc.apply(nn.Sequential(nn.Linear(2, 2)), "ddc")


def test_none_method_attaches_nothing():
    model = make_net()
    handle = ddc.apply(model, "none")
    assert handle.methods == {} and not ddc.regularized_layers(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generator_on_wrong_device_is_explained():
    layer = nn.Linear(3, 3).cuda()
    ddc.apply(layer, "dropconnect", layers=[nn.Linear], generator=torch.Generator())
    with pytest.raises(ValueError, match="generator is on cpu"):
        layer(torch.randn(1, 3, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ALL_METHODS)
def test_cuda_training_and_eval_identity(method):
    model = make_net().cuda()
    reference = copy.deepcopy(model).eval()
    ddc.apply(model, method, layers=["fc1"], seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x.cuda()), y.cuda())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item())
    if method != "standout":
        reference.load_state_dict(model.state_dict())
        model.eval()
        x, _ = batch(7)
        assert torch.equal(model(x.cuda()), reference(x.cuda()))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("method", ["dropconnect", "ddc"])
def test_sample_masks_made_again_in_backward_equal_the_kept_ones(monkeypatch, method, device):
    """The chunked masks are made again in backward from the saved generator state (Philox on
    CUDA): the same outputs and gradients as a run that keeps every mask (record=True)."""
    import ddc.methods as M

    monkeypatch.setattr(M, "EXAMPLE_CHUNK_EDGES", 60)

    def run(record):
        torch.manual_seed(0)
        layer = nn.Linear(6, 5).to(device)
        handle = ddc.apply(layer, method, layers=[nn.Linear], mask="sample", seed=3)
        next(iter(handle.methods.values())).keep_last = record
        x = torch.randn(7, 6, device=device, requires_grad=True)
        outs, grads = [], []
        for _ in range(3):
            out = layer(x)
            out.pow(2).sum().backward()
            outs.append(out.detach())
            grads.append((x.grad.clone(), layer.weight.grad.clone()))
            x.grad, layer.weight.grad = None, None
        return outs, grads

    (outs_a, grads_a), (outs_b, grads_b) = run(False), run(True)
    for a, b in zip(outs_a + [g for pair in grads_a for g in pair], outs_b + [g for pair in grads_b for g in pair]):
        torch.testing.assert_close(a, b)


def test_large_layer_signal_kept_by_the_caller_is_never_written_over():
    """A signal someone keeps is never written over by a later step (on a layer large enough
    for the blocked CPU paths), and keeping it changes no gradient."""

    def run(hold=False):
        torch.manual_seed(0)
        layer = nn.Linear(1024, 1024)
        handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0)
        method = next(iter(handle.methods.values()))
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        x = torch.randn(8, 1024)
        grads, held = [], []
        for step in range(3):
            opt.zero_grad(set_to_none=True)
            signal = method.weight_signal
            if hold and signal is not None:
                held.append((signal, signal.clone()))
            del signal
            layer(x).pow(2).mean().backward()
            assert layer.weight.grad.data_ptr() != method.weight_signal.data_ptr()
            grads.append(layer.weight.grad.clone())
            opt.step()
        handle.remove()
        return grads, held

    fresh, _ = run()
    kept, held = run(hold=True)
    assert len(held) == 2 and all(torch.equal(a, b) for a, b in held)
    assert all(torch.equal(a, b) for a, b in zip(kept, fresh))
