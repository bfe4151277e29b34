"""Degenerate layers follow the formula's intent: std 0 gives z = 0 and p_base, ties share
their average rank, zero-size layers are refused, and a property test over shapes, signals
and every option."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ddc
from ddc import _fastpath as fast
from ddc import functional as F


@pytest.mark.parametrize("recalibration", F.RECALIBRATION)
@pytest.mark.parametrize("normalize", F.NORMALIZE)
def test_one_edge_layer_trains_at_p_base(recalibration, normalize):
    torch.manual_seed(0)
    layer = nn.Linear(1, 1)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0, recalibration=recalibration, normalize=normalize, p_base=0.3)
    method = handle.methods[""]
    method.keep_last = True
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for step in range(6):
        loss = (layer(torch.randn(4, 1)) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item()), step
        if step:
            assert torch.all(method.last.drop_prob == 0.3) if method.last.drop_prob is not None else True
    assert torch.all(method.weight_drop_prob(layer.weight) == 0.3)


@pytest.mark.parametrize("normalize", F.NORMALIZE)
@pytest.mark.parametrize("scope", F.SCOPE)
@pytest.mark.parametrize("value", [0.0, 1e-12, 2.5e-3, 7.0])
def test_equal_values_give_p_base(normalize, scope, value):
    signal = torch.full((5, 4), value)
    signal[::2] *= -1  # equal magnitudes
    p = F.drop_probability(signal, p_base=0.2, p_signal=0.6, normalize=normalize, scope=scope)
    assert torch.all(p == 0.2)
    one = F.drop_probability(torch.full((1, 1), value), p_base=0.2, p_signal=0.6, normalize=normalize, scope=scope)
    assert one.item() == pytest.approx(0.2)


def test_rank_ties_share_their_average_rank():
    signal = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0, 1.0]])
    ranks = F.average_ranks(signal.abs())
    assert ranks.tolist() == [[4.0, 0.5, 4.0, 2.0, 4.0, 0.5]]  # scipy.stats.rankdata(...) - 1
    p = F.drop_probability(torch.full((7, 9), 0.5), p_base=0.3, p_signal=0.5, normalize="rank")
    assert torch.all(p == 0.3)  # was 0.73 down to 0.30 along the tensor when ties broke by position
    p = F.drop_probability(signal, p_base=0.3, p_signal=0.5, normalize="rank")
    assert p[0, 0] == p[0, 2] == p[0, 4] and p[0, 1] == p[0, 5]


@pytest.mark.parametrize("method", ["dropout", "dropconnect", "standout", "ddc"])
@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (1, 0, 3), (0, 2, 3)], ids=str)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_zero_size_layers_are_refused_at_apply(method, shape):
    model = nn.Sequential(nn.Linear(*shape) if len(shape) == 2 else nn.Conv1d(*shape))
    with pytest.raises(ValueError, match="layers: '0' has a zero-size weight"):
        ddc.apply(model, method, layers=["0"])
    assert not ddc.regularized_layers(model)


# ----------------------------------------------------------------------------- property test


@st.composite
def signals(draw):
    rows = draw(st.integers(1, 6))
    cols = draw(st.integers(1, 6))
    kernel = draw(st.sampled_from([(), (1,), (2, 2)]))
    shape = (rows, cols, *kernel)
    n = math.prod(shape)
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    kind = draw(st.sampled_from(["random", "constant", "zero", "few values"]))
    scale = 10.0 ** draw(st.integers(-30, 30) if dtype != torch.float16 else st.integers(-4, 3))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        values = torch.randn(n, generator=gen, dtype=torch.float64) * scale
    elif kind == "constant":
        values = torch.full((n,), scale, dtype=torch.float64) * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    elif kind == "zero":
        values = torch.zeros(n, dtype=torch.float64)
    else:
        pool = torch.randn(3, generator=gen, dtype=torch.float64) * scale
        values = pool[torch.randint(0, 3, (n,), generator=gen)]
    return values.to(dtype).reshape(shape)


@st.composite
def formulas(draw):
    p_base = draw(st.floats(0.0, 1.0))
    p_signal = draw(st.floats(0.0, 1.0 - p_base))
    return dict(
        p_base=p_base,
        p_signal=p_signal,
        tau=draw(st.floats(0.01, 0.99)),
        prefer=draw(st.sampled_from(F.PREFER)),
        normalize=draw(st.sampled_from(F.NORMALIZE)),
        scope=draw(st.sampled_from(F.SCOPE)),
    )


def _groups(x, scope):
    return x.reshape(1, -1) if scope == "layer" else x.reshape(x.shape[0], -1)


@settings(max_examples=300, deadline=None)
@given(signal=signals(), formula=formulas())
def test_drop_probabilities_are_finite_bounded_and_blind_to_positions(signal, formula):
    p = F.drop_probability(signal, **formula)
    assert p.shape == signal.shape and torch.isfinite(p).all()
    low, high = formula["p_base"], formula["p_base"] + formula["p_signal"]
    assert torch.all(p >= low - 1e-6) and torch.all(p <= high + 1e-6)
    # Equal magnitudes within a scope get equal probabilities (what a permutation of equal values keeps), to the
    # last bits: torch's vectorised CPU sigmoid rounds the tail of a tensor (from element 33 on, here) differently
    # from its vector lanes, so equal scores at other positions may differ by an ulp (main did the same).
    ulp = torch.finfo(p.dtype).eps
    for magnitude, prob in zip(_groups(signal.abs(), formula["scope"]), _groups(p, formula["scope"])):
        order = torch.argsort(magnitude, stable=True)
        same = magnitude[order][1:] == magnitude[order][:-1]
        torch.testing.assert_close(prob[order][1:][same], prob[order][:-1][same], rtol=0, atol=4 * ulp)
    if formula["normalize"] != "rank":
        used = []
        prob, keep, finite = fast.drop_and_keep(signal, **formula, generator=torch.Generator().manual_seed(0), stats_out=used)
        # the fast path streams its statistics: the readable definition agrees to rounding, and bit for bit
        # when it is given those statistics (one block here)
        torch.testing.assert_close(prob, p)
        assert bool(finite)
        stats = tuple(used) if used[0] is not None else None
        assert torch.equal(prob, F.drop_probability(signal, **formula, stats=stats))


@st.composite
def ddc_options(draw):
    p_base = draw(st.floats(0.0, 0.9))
    return dict(
        p_base=p_base,
        p_signal=draw(st.floats(0.0, 1.0 - p_base)),
        tau=draw(st.floats(0.05, 0.95)),
        prefer=draw(st.sampled_from(F.PREFER)),
        normalize=draw(st.sampled_from(F.NORMALIZE)),
        scope=draw(st.sampled_from(["layer", "row", "global"])),
        grad_ema=draw(st.sampled_from([0.0, 0.5])),
        recalibration=draw(st.sampled_from(F.RECALIBRATION)),
        drop_bias=draw(st.booleans()),
    )


@settings(max_examples=60, deadline=None)
@given(options=ddc_options(), out_features=st.integers(1, 4), in_features=st.integers(1, 4), signal=signals())
def test_ddc_layers_of_any_size_and_signal_draw_finite_bounded_masks(options, out_features, in_features, signal):
    """The module path (global scope, EMA, re-calibration, bias masks included): whatever the
    stored signal, drop probabilities stay finite and in range, and the masked weights finite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(in_features, out_features), nn.Linear(out_features, 2))
    handle = ddc.apply(model, "ddc", layers=["0", "1"], seed=0, **options)
    method = handle.methods["0"]
    method.keep_last = True
    model(torch.randn(3, in_features)).sum().backward()  # signals for both layers (global scope pools them)
    flat = signal.reshape(-1).float()
    method.weight_signal = flat.repeat(out_features * in_features // flat.numel() + 1)[: out_features * in_features].reshape(out_features, in_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a signal that overflows its statistics counts as non-finite
        p = method.weight_drop_prob(model[0].weight)
        model(torch.randn(3, in_features))
    low, high = options["p_base"], options["p_base"] + options["p_signal"]
    assert torch.isfinite(p).all() and torch.all(p >= low - 1e-6) and torch.all(p <= high + 1e-6)
    keep, scale = method.last.keep_mask, method.last.scale
    assert torch.isfinite(model[0].weight.detach() * keep * scale).all()


def test_equal_magnitudes_past_the_vector_lanes_get_probabilities_within_an_ulp():
    # The case hypothesis found: ties in a 40-edge tensor (row scope, rank); element 33 on is the kernels' tail.
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        pool = torch.randn(3, generator=generator)
        signal = pool[torch.randint(0, 3, (2, 5, 2, 2), generator=generator)]
        for normalize in F.NORMALIZE:
            p = F.drop_probability(signal, p_base=0.0, p_signal=1.0, normalize=normalize, scope="row")
            for magnitude, prob in zip(signal.abs().reshape(2, -1), p.reshape(2, -1)):
                for value in magnitude.unique():
                    group = prob[magnitude == value]
                    assert float(group.max() - group.min()) <= 4 * torch.finfo(p.dtype).eps
