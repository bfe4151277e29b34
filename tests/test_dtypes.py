"""Every method and option on float16, bfloat16 and float64 weights, and under autocast."""

import math

import pytest
import torch
from torch import nn

import ddc

DTYPES = (torch.float16, torch.bfloat16, torch.float64)
CASES = [
    ("dropout", {}),
    ("standout", {}),
    ("standout", dict(form="tied")),
    ("dropconnect", {}),
    ("dropconnect", dict(mask="sample", drop_bias=True, recalibration="expected")),
    ("ddc", {}),
    ("ddc", dict(normalize="rank")),
    ("ddc", dict(normalize="mean", scope="row", recalibration="per_edge")),
    ("ddc", dict(normalize="none", update="reference", drop_bias=True)),
    ("ddc", dict(scope="global", grad_ema=0.5, signal_source="param")),
    ("ddc", dict(recalibration="expected", first_step="base")),
    ("ddc", dict(mask="sample", drop_bias=True, recalibration="per_edge")),
    ("ddc", dict(signal="weight", recalibration="none")),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for m, o in CASES]


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc1 = nn.Linear(3 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def _layers(method, options):
    if method == "standout" and options.get("form") == "tied" or options.get("mask") == "sample":
        return ["fc1", "fc2"]
    return ["conv", "fc1", "fc2"]


def _train(model, dtype, steps=4, autocast=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 1, 6, 6, generator=gen, dtype=dtype)
        y = torch.randint(0, 3, (8,), generator=gen)
        opt.zero_grad()
        if autocast is None:
            out = model(x)
        else:
            with torch.autocast("cpu", dtype=autocast):
                out = model(x)
        loss = nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method, options", CASES, ids=IDS)
def test_every_method_and_option_trains_in_every_floating_dtype(method, options, dtype):
    torch.manual_seed(0)
    model = Small().to(dtype)
    handle = ddc.apply(model, method, layers=_layers(method, options), seed=0, **options)
    for m in handle.methods.values():
        m.keep_last = True
    losses, out = _train(model, dtype)
    assert all(math.isfinite(v) for v in losses)
    assert out.dtype == dtype
    for name, param in model.named_parameters():
        assert param.dtype == dtype and param.grad.dtype == dtype and torch.isfinite(param).all(), name
    for name, m in handle.methods.items():
        if m.last.scale is not None:
            assert m.last.scale.dtype == dtype, name
        signal = getattr(m, "weight_signal", None)
        if signal is not None:
            assert signal.dtype == dtype and torch.isfinite(signal).all()
    model.eval()
    assert model(torch.randn(2, 1, 6, 6, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalize", ["zscore", "rank", "mean"])
def test_ddc_drops_small_gradient_edges_more_in_every_dtype(dtype, normalize):
    """The masks still follow the signal: edges with a below-median |signal| are dropped more."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 64).to(dtype)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0, normalize=normalize)
    method = handle.methods[""]
    method.keep_last = True
    x = torch.randn(32, 64, dtype=dtype) * torch.linspace(0.01, 3, 64, dtype=dtype)  # graded inputs: graded |dL/dW|
    layer(x).pow(2).mean().backward()
    small_dropped = big_dropped = 0.0
    for _ in range(20):
        layer(x)
        signal = method.last.signal.abs().float()
        small = signal < signal.median()
        dropped = ~method.last.keep_mask
        small_dropped += dropped[small].float().mean().item()
        big_dropped += dropped[~small].float().mean().item()
    assert small_dropped > big_dropped + 20 * 0.1


@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("method, options", CASES, ids=IDS)
def test_every_method_trains_under_autocast(method, options, autocast):
    torch.manual_seed(0)
    model = Small()
    handle = ddc.apply(model, method, layers=_layers(method, options), seed=0, **options)
    losses, _ = _train(model, torch.float32, autocast=autocast)
    assert all(math.isfinite(v) for v in losses)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32 and param.grad.dtype == torch.float32, name
    for m in handle.methods.values():
        signal = getattr(m, "weight_signal", None)
        if signal is not None:
            assert signal.dtype == torch.float32
