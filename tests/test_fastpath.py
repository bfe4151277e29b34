"""The CPU fast paths against naive computations (correctness only: timings live in benchmarks/)."""

import math

import pytest
import torch
from torch import nn

import ddc
from ddc import _fastpath as fast
from ddc import functional as F


def _signal(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=dtype) * torch.rand(shape, generator=gen, dtype=dtype)) * 1e-3


@pytest.fixture
def small_chunks(monkeypatch):
    """Force many blocks (and ragged last blocks) on small tensors."""
    monkeypatch.setattr(fast, "CHUNK", 64)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("scope", ["layer", "row"])
@pytest.mark.parametrize("shape", [(37, 23), (8, 3, 5, 5), (301,)])
def test_streamed_stats_match_std_mean(small_chunks, scope, shape):
    signal = _signal(shape, dtype=torch.float64)
    mu, sd = fast.streamed_stats(signal, scope, want_sd=True)
    ref_mu, ref_sd = F.signal_stats(signal.abs(), scope)  # (mean, std) via torch.std_mean
    torch.testing.assert_close(mu, ref_mu.reshape(mu.shape), rtol=1e-12, atol=0)
    torch.testing.assert_close(sd, ref_sd.reshape(sd.shape), rtol=1e-10, atol=0)


@pytest.mark.parametrize("n", [3, 7, 1000, 4097])
def test_constant_signal_is_exactly_zero_variance(small_chunks, n):
    signal = torch.full((n,), 0.1)  # 0.1 is not a float32 sum-friendly number
    mu, sd = fast.streamed_stats(signal, "layer", want_sd=True)
    assert mu.item() == signal[0].item() and sd.item() == 0.0
    p = F.drop_probability(signal, p_base=0.25, p_signal=0.5)
    assert torch.all(p == 0.25)


# ----------------------------------------------------------------------------- fused pipeline


CONFIGS = [
    ("small", "zscore", "layer"),
    ("big", "zscore", "row"),
    ("small", "mean", "layer"),
    ("big", "mean", "row"),
    ("small", "none", "layer"),
]


def _naive_p(signal, prefer, normalize, scope, p_base, p_signal, tau, eps=F.EPS):
    """The pre-fast-path formula, op by op on full tensors."""
    a = signal.abs()
    if normalize == "none":
        z = a
    else:
        dims = None if scope == "layer" or a.dim() < 2 else tuple(range(1, a.dim()))
        sd, mu = torch.std_mean(a) if dims is None else torch.std_mean(a, dim=dims, keepdim=True)
        z = (a - mu) / (sd + eps) if normalize == "zscore" else (a - mu) / (mu + eps)
    c = torch.sigmoid(z if prefer == "big" else -z)
    q = torch.where(c > tau, c, torch.zeros((), dtype=c.dtype))
    return q * p_signal + p_base


@pytest.mark.parametrize("prefer,normalize,scope", CONFIGS)
@pytest.mark.parametrize("shape", [(37, 23), (6, 3, 3, 3)])
def test_drop_probability_matches_op_by_op_formula(small_chunks, prefer, normalize, scope, shape):
    signal = _signal(shape, seed=3, dtype=torch.float64)
    ours = F.drop_probability(signal, p_base=0.2, p_signal=0.6, tau=0.55, prefer=prefer, normalize=normalize, scope=scope)
    expected = _naive_p(signal, prefer, normalize, scope, 0.2, 0.6, 0.55)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("prefer,normalize,scope", CONFIGS)
def test_drop_and_keep_equals_drop_probability_then_keep_mask(small_chunks, prefer, normalize, scope):
    signal = _signal((41, 13), seed=4)  # odd columns: blocks are not multiples of a row
    kwargs = dict(p_base=0.3, p_signal=0.5, tau=0.5, prefer=prefer, normalize=normalize, scope=scope)
    prob, keep, _ = fast.drop_and_keep(signal, generator=torch.Generator().manual_seed(9), **kwargs)
    expected_p = F.drop_probability(signal, **kwargs)  # the readable definition (torch.std_mean statistics)
    expected_keep = F.keep_mask(expected_p, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(prob, expected_p, rtol=1e-6, atol=1e-7)  # statistics streamed in blocks: rounding
    assert torch.equal(keep, expected_keep)
    _, keep_only, _ = fast.drop_and_keep(signal, generator=torch.Generator().manual_seed(9), want_prob=False, **kwargs)
    assert torch.equal(keep_only, expected_keep)


def test_block_size_never_changes_the_mask(monkeypatch):
    signal = _signal((50, 27), seed=5)
    results = []
    for chunk in (8, 64, 1 << 20):
        monkeypatch.setattr(fast, "CHUNK", chunk)
        for scope in ("layer", "row"):
            prob, keep, _ = fast.drop_and_keep(
                signal, p_base=0.3, p_signal=0.5, scope=scope, generator=torch.Generator().manual_seed(1)
            )
            results.append((scope, prob, keep))
    for scope in ("layer", "row"):
        same = [(p, k) for s, p, k in results if s == scope]
        for p, k in same[1:]:
            torch.testing.assert_close(p, same[0][0], rtol=1e-6, atol=1e-7)
            assert torch.equal(k, same[0][1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("normalize", F.NORMALIZE)
@pytest.mark.parametrize("scope", F.SCOPE)
def test_nonfinite_signal_gives_p_base_on_every_edge(small_chunks, bad, normalize, scope):
    """One rule for every option: any inf/NaN in the signal puts p_base on every edge of it."""
    signal = _signal((12, 10), seed=6)
    signal[4, 2] = bad
    kwargs = dict(p_base=0.2, p_signal=0.5, normalize=normalize, scope=scope)
    p = F.drop_probability(signal, **kwargs)
    assert torch.all(p == 0.2)
    if normalize != "rank":
        p2, keep, finite = fast.drop_and_keep(signal, generator=torch.Generator().manual_seed(0), **kwargs)
        assert not finite and torch.all(p2 == 0.2) and keep.dtype == torch.bool
        _, _, finite = fast.drop_and_keep(_signal((12, 10), seed=6), generator=torch.Generator().manual_seed(0), **kwargs)
        assert finite


# ----------------------------------------------------------------------------- random bits


def test_uniform_grid_and_spread():
    buf = torch.empty(1 << 16)
    u = fast.uniform_block(1 << 16, torch.Generator().manual_seed(0), buf)
    k = u * 2**16 - 0.5
    assert torch.equal(k, k.round()) and k.min() >= 0 and k.max() <= 2**16 - 1
    counts = torch.histc(u, bins=16, min=0.0, max=1.0)
    expected = u.numel() / 16
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 45  # chi-square with 15 degrees of freedom: P(> 45) ~ 1e-4


@pytest.mark.parametrize("p", [0.0, 1.0 / 3, 0.3, 0.5, 0.8, 1.0])
def test_realized_rate_matches_quantized_probability(p):
    n = 1 << 20
    keep = F.keep_mask(torch.tensor(p), shape=(n,), generator=torch.Generator().manual_seed(2))
    rate = (~keep).float().mean().item()
    effective = math.floor(p * 2**16 + 0.5) / 2**16  # the documented resolution
    assert abs(effective - p) <= 2**-17
    if p in (0.0, 1.0):
        assert rate == p
        return
    sd = math.sqrt(effective * (1 - effective) / n)
    assert abs(rate - effective) < 5 * sd


def test_keep_mask_tensor_probabilities_binomial():
    drop_prob = F.drop_probability(torch.randn(700, 900, generator=torch.Generator().manual_seed(3)), p_base=0.3, p_signal=0.5)
    keep = F.keep_mask(drop_prob, generator=torch.Generator().manual_seed(4))
    n = drop_prob.numel()
    sd = math.sqrt((drop_prob * (1 - drop_prob)).sum().item()) / n
    assert abs((~keep).float().mean().item() - drop_prob.mean().item()) < 5 * sd + 2**-17


def test_keep_mask_same_generator_state_same_mask_and_broadcast_shape():
    p = torch.full((3, 1), 0.4)
    a = F.keep_mask(p, shape=(3, 5), generator=torch.Generator().manual_seed(1))
    b = F.keep_mask(p.expand(3, 5).contiguous(), generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 5) and torch.equal(a, b)


def test_uniform_argument_stays_exact():
    p = torch.tensor([0.3, 0.3, 0.7])
    u = torch.stack([p[0], torch.nextafter(p[1], torch.tensor(1.0)), p[2]])  # equal, one ulp above, equal
    assert F.keep_mask(p, uniform=u).tolist() == [False, True, False]


# ----------------------------------------------------------------------------- masked weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_keep_blocked_equals_formula(small_chunks, dtype):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(33, 17, generator=gen, dtype=dtype)
    keep = torch.rand(33, 17, generator=gen) > 0.4
    scale = F.keep_scale(keep, drop_prob=torch.zeros((), dtype=dtype))
    assert scale.dtype == dtype
    assert torch.equal(F.apply_keep(w, keep, scale), (w * keep) * scale)
    out = torch.empty_like(w)
    assert F.apply_keep(w, keep, scale, out=out) is out and torch.equal(out, (w * keep) * scale)


def test_keep_scale_count_equals_float_mean():
    keep = torch.rand(5, 7, 9) > 0.3
    torch.testing.assert_close(F.keep_scale(keep), 1.0 / (keep.float().mean(dim=(0, 1, 2), keepdim=True) + F.EPS), rtol=0, atol=0)
    torch.testing.assert_close(
        F.keep_scale(keep, batch_dims=1), 1.0 / (keep.float().mean(dim=(1, 2), keepdim=True) + F.EPS), rtol=0, atol=0
    )


@pytest.fixture(params=[False, True], ids=["fresh", "reused"])
def weight_buffer(request, monkeypatch):
    """Every layer's masked weight reuses its memory (``reused``) or none does (``fresh``)."""
    monkeypatch.setattr(fast.WeightBuffer, "MIN_NUMEL", 1 if request.param else 1 << 62)
    return request.param


def test_masked_weight_of_one_graph_survives_a_second_forward(weight_buffer):
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    handle = ddc.apply(layer, "dropconnect", layers=[nn.Linear], p=0.5, seed=0)
    method = handle.methods[""]
    method.keep_last = True
    x1, x2 = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    out1 = layer(x1)
    k1, s1 = method.last.keep_mask, method.last.scale
    out2 = layer(x2)  # the first graph still holds its W_eff: its memory must not be reused
    k2, s2 = method.last.keep_mask, method.last.scale
    (out1.square().sum() + out2.square().sum()).backward()
    w = layer.weight.detach()
    expected = torch.zeros_like(w)
    for x, k, s in ((x1, k1, s1), (x2, k2, s2)):
        w_eff = (w * k * s).requires_grad_()
        x_copy = x.detach().requires_grad_()
        nn.functional.linear(x_copy, w_eff, layer.bias.detach()).square().sum().backward()
        expected += w_eff.grad * k * s
        torch.testing.assert_close(x.grad, x_copy.grad)  # backward read the W_eff of its own forward
        torch.testing.assert_close(nn.functional.linear(x, w * k * s, layer.bias), out1 if x is x1 else out2)
    torch.testing.assert_close(layer.weight.grad, expected)
    if weight_buffer:  # once nothing holds it, the same memory is handed out again
        buffer = method._weight_buffers["weight"].buffer
        layer(x1).sum().backward()
        assert method._weight_buffers["weight"].buffer is buffer


class _KeepsWeight(nn.Linear):
    """A layer whose forward keeps every weight it reads (the masked one inside a training forward)."""

    def forward(self, x):
        self.seen.append(self.weight)
        return super().forward(x)


def test_masked_weight_a_user_keeps_is_never_overwritten(weight_buffer):
    torch.manual_seed(0)
    layer = _KeepsWeight(6, 5)
    layer.seen = []
    ddc.apply(layer, "dropconnect", layers=[_KeepsWeight], p=0.5, seed=0)
    copies = []
    with torch.no_grad():  # no graph holds W_eff: only the user's reference does
        for _ in range(3):
            layer(torch.randn(4, 6))
            copies.append(layer.seen[-1].clone())
    assert len(layer.seen) == 3
    for kept, copy in zip(layer.seen, copies):
        assert torch.equal(kept, copy)
    assert not torch.equal(copies[0], copies[1])


def _buffer_run(update, signal_source, set_to_none):
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    handle = ddc.apply(
        layer, "ddc", layers=[nn.Linear], seed=3, update=update, signal_source=signal_source, drop_bias=True, first_step="base"
    )
    handle.methods[""].keep_last = True
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    masks, kept_grads = [], []
    for step in range(4):
        optimizer.zero_grad(set_to_none=set_to_none)
        layer(torch.randn(8, 40, requires_grad=True)).square().sum().backward()
        optimizer.step()
        masks.append(handle.methods[""].last.keep_mask)
        kept_grads.append((layer.weight.grad, layer.weight.grad.clone()))  # a user keeps .grad
    return masks, kept_grads, layer.weight.detach().clone(), layer.bias.detach().clone()


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("signal_source", ["effective", "param"])
@pytest.mark.parametrize("update", ["autograd", "reference"])
def test_weight_buffer_changes_no_value(monkeypatch, update, signal_source, set_to_none):
    """Four DDC steps give the same masks, gradients and weights with and without the reuse; a kept .grad stays."""
    monkeypatch.setattr(fast.WeightBuffer, "MIN_NUMEL", 1 << 62)
    fresh = _buffer_run(update, signal_source, set_to_none)
    monkeypatch.setattr(fast.WeightBuffer, "MIN_NUMEL", 1)
    reused = _buffer_run(update, signal_source, set_to_none)
    assert all(torch.equal(a, b) for a, b in zip(fresh[0], reused[0]))
    assert torch.equal(fresh[2], reused[2]) and torch.equal(fresh[3], reused[3])
    for (_, fresh_copy), (kept, reused_copy) in zip(fresh[1], reused[1]):
        assert torch.equal(fresh_copy, reused_copy)
        if set_to_none:  # each step's .grad is its own tensor, and nothing overwrote it since
            assert torch.equal(kept, reused_copy)


def test_ddc_fast_path_masks_match_general_path():
    """DDC's fused draw gives the mask of drop_probability + keep_mask with the same generator state."""
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=5, first_step="base")
    method = handle.methods[""]
    method.keep_last = True
    layer(torch.randn(3, 30)).square().sum().backward()
    state = method.rng(torch.device("cpu")).get_state()
    layer(torch.randn(3, 30))
    keep, drop_prob = method.last.keep_mask, method.last.drop_prob
    expected_p = F.drop_probability(method.last.signal, p_base=0.3, p_signal=0.5)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(state)
    assert torch.equal(drop_prob, expected_p)
    assert torch.equal(keep, F.keep_mask(expected_p, generator=gen))
