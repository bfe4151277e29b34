"""DDC's gradient signal is its own, and one non-finite rule holds for every option."""

import itertools
import warnings

import pytest
import torch
from torch import nn

import ddc
from ddc import functional as F

SIGNAL_OPTIONS = list(
    itertools.product(("autograd", "reference"), ("effective", "param"), ("passthrough", "base"), (0.0, 0.9))
)
SIGNAL_IDS = ["-".join(map(str, combo)) for combo in SIGNAL_OPTIONS]


def _layer(seed=0, **options):
    torch.manual_seed(seed)
    layer = nn.Linear(7, 5)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=seed, **options)
    return layer, next(iter(handle.methods.values()))


def _step(layer, x, weights):
    (layer(x) * weights).sum().backward()


def _drop_probs(method, layer):
    """The next step's drop probabilities of weight and bias (no random draw)."""
    out = [method.weight_drop_prob(layer.weight)]
    if method.drop_bias:
        out.append(method.bias_drop_prob(layer.bias))
    return [None if p is None else p.clone() for p in out]


def _zero(layer):
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    opt.zero_grad(set_to_none=False)


def _clip(layer):
    torch.nn.utils.clip_grad_norm_(layer.parameters(), max_norm=1e-6)


def _clean(layer):
    for param in layer.parameters():
        param.grad.nan_to_num_(nan=0.0, posinf=1.0, neginf=-1.0)


USER_OPS = {"zero_grad(set_to_none=False)": _zero, "clip_grad_norm_": _clip, "nan_to_num_": _clean}


@pytest.mark.parametrize("mask", ["batch", "sample"])
@pytest.mark.parametrize("op", list(USER_OPS))
@pytest.mark.parametrize("update, signal_source, first_step, grad_ema", SIGNAL_OPTIONS, ids=SIGNAL_IDS)
def test_changing_grad_in_place_never_changes_the_next_drop_probabilities(update, signal_source, first_step, grad_ema, op, mask):
    layer, method = _layer(
        update=update, signal_source=signal_source, first_step=first_step, grad_ema=grad_ema, mask=mask, drop_bias=True
    )
    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(4, 5, generator=gen)
    for step in range(2):  # step 0: the first step (no mask or p_base); step 1: a masked step
        x = torch.randn(4, 7, generator=gen)
        if op == "nan_to_num_":
            x[0, 3] = float("inf")  # .grad holds inf (and NaN where a dropped edge meets it)
        layer.weight.grad = layer.bias.grad = None
        _step(layer, x, weights)
        before = _drop_probs(method, layer)
        grads = [p.grad.clone() for p in layer.parameters()]
        USER_OPS[op](layer)
        changed = [not torch.equal(g.nan_to_num(), p.grad.nan_to_num()) or g.isnan().any() != p.grad.isnan().any()
                   for g, p in zip(grads, layer.parameters())]
        assert any(changed), "the operation must change .grad for this test to mean anything"
        after = _drop_probs(method, layer)
        for a, b in zip(before, after):
            assert torch.equal(a, b)


@pytest.mark.parametrize("update, signal_source", list(itertools.product(("autograd", "reference"), ("effective", "param"))))
def test_stored_signal_never_shares_memory_with_grad_or_weight(update, signal_source):
    layer, method = _layer(update=update, signal_source=signal_source)
    x = torch.randn(3, 7)
    for _ in range(3):
        layer.weight.grad = None
        layer(x).pow(2).sum().backward()
        signal = method.weight_signal
        for other in (layer.weight, layer.weight.grad):
            assert signal.untyped_storage().data_ptr() != other.untyped_storage().data_ptr()


def test_large_layer_reference_update_gives_autograd_its_own_copy():
    """On a large CPU layer (blocked paths) too, the dense update hands autograd a copy,
    never the new signal."""
    torch.manual_seed(0)
    layer = nn.Linear(1024, 1024)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], update="reference", seed=0)
    method = handle.methods[""]
    x = torch.randn(4, 1024)
    for _ in range(3):
        layer.weight.grad = None
        layer(x).pow(2).mean().backward()
        assert method.weight_signal.data_ptr() != layer.weight.grad.data_ptr()
        before = method.weight_drop_prob(layer.weight)
        layer.weight.grad.zero_()
        assert torch.equal(method.weight_drop_prob(layer.weight), before)


def test_loaded_method_state_is_a_copy():
    layer, method = _layer()
    layer(torch.randn(3, 7)).sum().backward()
    saved = method.method_state()
    other_layer, other = _layer(seed=1)
    other.load_method_state(saved)
    before = other.weight_drop_prob(other_layer.weight)
    saved["weight_signal"].zero_()
    assert torch.equal(other.weight_drop_prob(other_layer.weight), before)


def test_weight_signal_recorded_is_the_weight_the_mask_used():
    layer, method = _layer(signal="weight")
    method.keep_last = True
    layer(torch.randn(3, 7)).sum().backward()
    used = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)  # the optimizer step changes the weight in place
    assert torch.equal(method.last.signal, used)


# ----------------------------------------------------------------------------- non-finite


NONFINITE_OPTIONS = list(
    itertools.product(F.NORMALIZE, ("layer", "row"), (0.0, 0.9), ("effective", "param"), ("autograd", "reference"))
)


@pytest.mark.parametrize(
    "normalize, scope, grad_ema, signal_source, update", NONFINITE_OPTIONS,
    ids=["-".join(map(str, combo)) for combo in NONFINITE_OPTIONS],
)
def test_one_nonfinite_rule_for_every_option(normalize, scope, grad_ema, signal_source, update):
    """Warn once per layer, count the step, drop every edge with p_base; finite steps recover."""
    layer, method = _layer(
        normalize=normalize, scope=scope, grad_ema=grad_ema, signal_source=signal_source, update=update, p_base=0.25
    )
    method.keep_last = True
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(6, 5, generator=gen)
    _step(layer, torch.randn(6, 7, generator=gen), weights)  # a finite first step
    bad = torch.randn(6, 7, generator=gen)
    bad[2, 4] = float("inf")
    _step(layer, bad, weights)  # (its forward still uses the finite signal)
    assert method.nonfinite_steps.item() == 0
    with pytest.warns(RuntimeWarning, match="non-finite gradient signal"):
        layer(torch.randn(6, 7, generator=gen))
    assert torch.all(method.last.drop_prob == 0.25)
    assert method.nonfinite_steps.item() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per layer
        _step(layer, torch.randn(6, 7, generator=gen), weights)  # p_base again, then a finite gradient
    assert torch.all(method.last.drop_prob == 0.25) and method.nonfinite_steps.item() == 2
    layer(torch.randn(6, 7, generator=gen))
    assert method.nonfinite_steps.item() == 2
    assert torch.isfinite(method.last.drop_prob).all()
    if normalize != "none":
        assert (method.last.drop_prob > 0.25).any()


def test_global_scope_leaves_a_nonfinite_layer_out_of_the_pool():
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(6, 4), "b": nn.Linear(6, 4)})
    handle = ddc.apply(model, "ddc", layers=["a", "b"], scope="global", seed=0, p_base=0.2)
    a, b = handle.methods["a"], handle.methods["b"]
    x = torch.randn(3, 6)
    bad = x.clone()
    bad[0, 0] = float("nan")
    (model["a"](bad).sum() + model["b"](x).pow(2).sum()).backward()
    with pytest.warns(RuntimeWarning, match="layer 'a'"):
        p_a = a.weight_drop_prob(model["a"].weight)
    assert torch.all(p_a == 0.2) and a.nonfinite_steps.item() == 1
    p_b = b.weight_drop_prob(model["b"].weight)
    sd, mu = torch.std_mean(b.weight_signal.abs())  # the pool holds b alone
    expected = F.drop_probability(b.weight_signal, p_base=0.2, p_signal=0.5, stats=(mu, sd))
    torch.testing.assert_close(p_b, expected)
    assert b.nonfinite_steps.item() == 0
