"""The torch.compile path of the fast drop_and_keep (``compile=True``): same masks and drop probabilities as the eager path."""

import os
import shutil

import pytest
import torch

import ddc
from ddc import _fastpath as fast

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.skipif(
        not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c),
        reason="torch.compile (Inductor) needs a C++ compiler on the CPU; none found",
    ),
]


def both(signal, **options):
    out = []
    for enabled in (False, True):
        generator = torch.Generator().manual_seed(7)
        out.append(fast.drop_and_keep(signal, generator=generator, compile=enabled, **options))
        out[-1] += (generator.initial_seed(), generator.get_state())
    return out


@pytest.mark.parametrize(
    "shape, options",
    [
        ((96, 130), dict(scope="layer", normalize="zscore", prefer="small", want_prob=True)),
        ((16, 3, 5, 5), dict(scope="row", normalize="zscore", prefer="small", want_prob=True)),
    ],
)
def test_compiled_masks_match_eager(shape, options):
    signal = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    (p0, k0, m0, _, state0), (p1, k1, m1, _, state1) = both(signal, p_base=0.2, p_signal=0.6, tau=0.4, **options)
    assert torch.equal(k0, k1) and k1.shape == signal.shape
    torch.testing.assert_close(p1, p0, rtol=0, atol=3e-7)
    assert torch.equal(state0, state1)  # the generator advanced by exactly the same draws
    assert torch.equal(m0, m1)


def test_compiled_path_maps_a_nonfinite_signal_to_p_base():
    signal = torch.randn(96, 130)
    signal[3, 4] = float("nan")
    (p0, k0, *_), (p1, k1, *_) = both(signal, p_base=0.2, p_signal=0.6, tau=0.4, want_prob=True)
    assert torch.equal(k0, k1)
    assert torch.all(p1 == torch.tensor(0.2))


def test_compile_option():
    """An explicit option, not module state: per apply() (DDC only) and per drop_and_keep call."""
    layer = torch.nn.Linear(4, 3)
    handle = ddc.apply(layer, "ddc", layers=[torch.nn.Linear], compile=True)
    assert handle.methods[""].compile_masks is True
    handle.remove()
    assert ddc.apply(layer, "ddc", layers=[torch.nn.Linear]).methods[""].compile_masks is False
    ddc.detach(layer)
    with pytest.raises(ValueError, match="compile='yes'.*False, True"):
        ddc.apply(torch.nn.Linear(4, 3), "ddc", layers=[torch.nn.Linear], compile="yes")
    with pytest.raises(ValueError, match="compile=True.*method='ddc' only"):
        ddc.apply(torch.nn.Linear(4, 3), "dropconnect", layers=[torch.nn.Linear], compile=True)
    with pytest.raises(ValueError, match="compile"):
        fast.drop_and_keep(torch.randn(3, 3), p_base=0.3, p_signal=0.5, compile="yes")
    assert "compile" not in ddc.method_options("ddc")  # not a run-config option: run ids stay as they were


def test_ddc_layer_trains_the_same_with_the_compile_path():
    def train(enabled):
        torch.manual_seed(0)
        layer = torch.nn.Linear(40, 30)
        ddc.apply(layer, "ddc", layers=[torch.nn.Linear], seed=2, compile=enabled)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        x = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
        losses = []
        for _ in range(4):
            loss = layer(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, layer.weight.detach().clone()

    (l0, w0), (l1, w1) = train(False), train(True)
    assert l0 == pytest.approx(l1, rel=1e-6)
    torch.testing.assert_close(w1, w0, rtol=1e-6, atol=1e-7)
