"""ddc.functional against the authors' reference vectors and a slow, obvious re-implementation."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddc import functional as F

VECTORS = json.loads((Path(__file__).parent / "reference" / "ddc_reference_vectors.json").read_text())["cases"]


def _tensor(case, key):
    return torch.tensor(case[key], dtype=torch.float32).reshape(case["shape"])


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_reference_vectors(case):
    weight, grad, uniform = (_tensor(case, k) for k in ("weight", "grad", "uniform"))
    signal = grad if case["signal"] == "gradient" else weight
    drop_prob = F.drop_probability(
        signal,
        p_base=case["p_base"],
        p_signal=case["p_signal"],
        tau=case["tau"],
        prefer="small" if case["prefer_small"] else "big",
        eps=case["eps"],
    )
    keep = F.keep_mask(drop_prob, uniform=uniform)
    masked = F.recalibrate(weight, keep, mode="realized", eps=case["eps"])

    torch.testing.assert_close(drop_prob, _tensor(case, "drop_prob"), rtol=1e-6, atol=1e-7)
    assert torch.equal(keep, _tensor(case, "keep_mask").bool())
    assert keep.float().mean().item() == pytest.approx(case["realized_keep_rate"], rel=1e-7)
    torch.testing.assert_close(masked, _tensor(case, "masked_weight"), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- naive reference


def naive_drop_probability(signal, p_base, p_signal, tau, prefer, normalize, scope, eps=1e-9):
    """Element by element in float64, the method document read literally."""
    a = np.abs(np.asarray(signal, dtype=np.float64))
    groups = [a.reshape(1, -1)] if scope == "layer" else [row.reshape(1, -1) for row in a.reshape(a.shape[0], -1)]
    out = []
    for group in groups:
        values = group.ravel()
        n = values.size
        mu = values.sum() / n
        sd = math.sqrt(((values - mu) ** 2).sum() / max(n - 1, 1))  # one value: no spread
        row = []
        for i, value in enumerate(values):
            if normalize == "zscore":
                z = (value - mu) / (sd + eps)
            elif normalize == "none":
                z = value
            elif normalize == "mean":
                z = (value - mu) / (mu + eps)  # a / mean - 1, exactly 0 for equal values
            else:
                from scipy.stats import norm

                below, equal = (values < value).sum(), (values == value).sum()
                rank = below + (equal - 1) / 2  # ties share their average rank
                z = norm.ppf((rank + 0.5) / n)
            c = 1.0 / (1.0 + math.exp(z if prefer == "small" else -z))
            q = c if c > tau else 0.0
            row.append(p_base + p_signal * q)
        out.append(row)
    return np.array(out).reshape(a.shape)


@pytest.mark.parametrize(
    "shape,prefer,normalize,scope,tau,p_base,p_signal",
    [
        ((9, 7), "small", "zscore", "layer", 0.5, 0.3, 0.5),
        ((9, 7), "big", "zscore", "row", 0.5, 0.4, 0.25),
        ((4, 3, 3, 3), "small", "zscore", "row", 0.6, 0.2, 0.6),
        ((5, 11), "small", "mean", "layer", 0.5, 0.1, 0.9),
        ((5, 11), "big", "mean", "row", 0.55, 0.0, 1.0),
        ((6, 6), "small", "none", "layer", 0.5, 0.3, 0.5),
        ((8, 5), "small", "rank", "layer", 0.5, 0.3, 0.5),
        ((8, 5), "big", "rank", "row", 0.7, 0.2, 0.3),
        ((17,), "small", "zscore", "layer", 0.5, 0.3, 0.5),
    ],
)
def test_drop_probability_matches_naive(shape, prefer, normalize, scope, tau, p_base, p_signal):
    gen = torch.Generator().manual_seed(hash((shape, prefer, normalize, scope)) % 2**31)
    signal = torch.randn(shape, generator=gen, dtype=torch.float64) * torch.rand(shape, generator=gen, dtype=torch.float64) * 1e-3
    ours = F.drop_probability(
        signal, p_base=p_base, p_signal=p_signal, tau=tau, prefer=prefer, normalize=normalize, scope=scope
    )
    expected = naive_drop_probability(signal.numpy(), p_base, p_signal, tau, prefer, normalize, scope)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_drop_probability_properties():
    signal = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    p = F.drop_probability(signal, p_base=0.3, p_signal=0.5)
    below_mean = signal.abs() < signal.abs().mean()
    # With tau = 0.5 exactly the below-mean edges get a signal term, in (0.5, 1).
    assert torch.allclose(p[~below_mean], torch.tensor(0.3))
    assert torch.all((p[below_mean] > 0.3 + 0.5 * 0.5) & (p[below_mean] < 0.8))
    assert p.dtype == signal.dtype and p.shape == signal.shape


def test_zero_variance_gives_p_base():
    p = F.drop_probability(torch.full((4, 4), 2.5e-3), p_base=0.25, p_signal=0.5)
    assert torch.all(p == 0.25)


def test_normalize_none_collapses_to_dropconnect_for_tiny_gradients():
    signal = torch.randn(30, 30, generator=torch.Generator().manual_seed(1)) * 1e-6
    p = F.drop_probability(signal, p_base=0.3, p_signal=0.5, normalize="none")
    # sigmoid(-|g|) is just below 0.5 for tiny |g|: never above tau, so q = 0.
    assert torch.allclose(p, torch.tensor(0.3))


def test_nonfinite_signal_falls_back_to_p_base():
    signal = torch.randn(6, 6)
    signal[2, 3] = float("inf")
    p = F.drop_probability(signal, p_base=0.2, p_signal=0.5)
    assert torch.isfinite(p).all() and torch.allclose(p, torch.tensor(0.2))
    signal[2, 3] = float("nan")
    assert torch.allclose(F.drop_probability(signal, p_base=0.2, p_signal=0.5), torch.tensor(0.2))


def test_keep_mask_rule_and_generator():
    drop_prob = torch.tensor([0.0, 0.5, 1.0])
    uniform = torch.tensor([0.0, 0.5, 0.999])
    # keep where u > p, strictly: u == p is dropped, p == 1 always drops.
    assert F.keep_mask(drop_prob, uniform=uniform).tolist() == [False, False, False]
    a = F.keep_mask(torch.full((100,), 0.5), generator=torch.Generator().manual_seed(3))
    b = F.keep_mask(torch.full((100,), 0.5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert F.keep_mask(torch.tensor(0.4), shape=(3, 5)).shape == (3, 5)


@pytest.mark.parametrize("mode", F.RECALIBRATION)
def test_recalibrate_modes(mode):
    weight = torch.arange(1.0, 7.0).reshape(2, 3)
    keep = torch.tensor([[True, False, True], [True, True, False]])
    drop_prob = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    out = F.recalibrate(weight, keep, mode=mode, drop_prob=drop_prob)
    expected = {
        "realized": weight * keep / (4 / 6 + 1e-9),
        "expected": weight * keep / (1 - drop_prob.mean()),
        "per_edge": weight * keep / (1 - drop_prob),
        "none": weight * keep,
    }[mode]
    torch.testing.assert_close(out, expected)


def test_recalibrate_per_example_uses_each_examples_keep_rate():
    weight = torch.ones(2, 2)
    keep = torch.tensor([[[True, True], [True, False]], [[True, False], [False, False]]])
    out = F.recalibrate(weight, keep)
    torch.testing.assert_close(out[0], keep[0] / 0.75)
    torch.testing.assert_close(out[1], keep[1] / 0.25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(p_base=-0.1, p_signal=0.5), "p_base"),
        (dict(p_base=0.3, p_signal=1.5), "p_signal"),
        (dict(p_base=0.6, p_signal=0.5), "p_base \\+ p_signal"),
        (dict(p_base=0.3, p_signal=0.5, tau=1.0), "tau"),
        (dict(p_base=0.3, p_signal=0.5, tau=0.0), "tau"),
        (dict(p_base=0.3, p_signal=0.5, prefer="large"), "prefer.*'small', 'big'"),
        (dict(p_base=0.3, p_signal=0.5, normalize="zcore"), "normalize.*'zscore'"),
        (dict(p_base=0.3, p_signal=0.5, scope="column"), "scope"),
    ],
)
def test_bad_input_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.drop_probability(torch.randn(3, 3), **kwargs)


def test_recalibrate_bad_mode():
    with pytest.raises(ValueError, match="recalibration.*'realized'"):
        F.recalibrate(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool), mode="inverse")
    with pytest.raises(ValueError, match="needs drop_prob"):
        F.recalibrate(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool), mode="per_edge")


def test_realized_drop_rate_matches_mean_probability():
    """Binomial tolerance: |rate - mean p| below 5 standard errors."""
    signal = torch.randn(200, 300, generator=torch.Generator().manual_seed(5))
    drop_prob = F.drop_probability(signal, p_base=0.3, p_signal=0.5)
    n = drop_prob.numel()
    gen = torch.Generator().manual_seed(6)
    rates = torch.stack([(~F.keep_mask(drop_prob, generator=gen)).float().mean() for _ in range(5)])
    sd = math.sqrt((drop_prob * (1 - drop_prob)).sum().item()) / n
    assert abs(rates.mean().item() - drop_prob.mean().item()) < 5 * sd / math.sqrt(5)


@pytest.mark.parametrize("prefer", ["small", "big"])
def test_small_signal_edges_dropped_more_under_small(prefer):
    signal = torch.randn(100, 100, generator=torch.Generator().manual_seed(7))
    drop_prob = F.drop_probability(signal, p_base=0.2, p_signal=0.6, prefer=prefer)
    gen = torch.Generator().manual_seed(8)
    dropped = torch.stack([~F.keep_mask(drop_prob, generator=gen) for _ in range(20)]).float().mean(0)
    small = signal.abs() < signal.abs().median()
    gap = dropped[small].mean() - dropped[~small].mean()
    assert (gap > 0.15) if prefer == "small" else (gap < -0.15)


def test_per_edge_recalibration_is_unbiased():
    weight = torch.randn(20, 20, generator=torch.Generator().manual_seed(9))
    drop_prob = F.drop_probability(torch.randn(20, 20), p_base=0.3, p_signal=0.5)
    gen = torch.Generator().manual_seed(10)
    trials = 4000
    total = torch.zeros_like(weight)
    for _ in range(trials):
        total += F.recalibrate(weight, F.keep_mask(drop_prob, generator=gen), mode="per_edge", drop_prob=drop_prob)
    mean = total / trials
    # Per edge, sd of the estimate is |w| * sqrt(p / (1 - p)) / sqrt(trials).
    tolerance = 5 * weight.abs() * torch.sqrt(drop_prob / (1 - drop_prob)) / math.sqrt(trials) + 1e-6
    assert torch.all((mean - weight).abs() < tolerance)


# ----------------------------------------------------------------------------- the curve on its own


@pytest.mark.parametrize("prefer", F.PREFER)
def test_drop_curve_is_the_formula(prefer):
    """p = p_base + p_signal * c * [c > tau], c = sigmoid(-z) (small) or sigmoid(z) (big), element by element."""
    score = torch.linspace(-4, 4, 81, dtype=torch.float64)
    p = F.drop_curve(score, p_base=0.2, p_signal=0.6, tau=0.55, prefer=prefer)
    for z, value in zip(score.tolist(), p.tolist()):
        c = 1.0 / (1.0 + math.exp(z if prefer == "small" else -z))
        assert value == pytest.approx(0.2 + 0.6 * (c if c > 0.55 else 0.0), rel=1e-15, abs=1e-15)
    assert torch.equal(score, torch.linspace(-4, 4, 81, dtype=torch.float64))  # not in place by default
    out = score.clone()
    assert F.drop_curve(out, p_base=0.2, p_signal=0.6, tau=0.55, prefer=prefer, inplace=True) is out
    assert torch.equal(out, p)


def test_drop_curve_rejects_bad_options():
    with pytest.raises(ValueError, match="p_base \\+ p_signal"):
        F.drop_curve(torch.zeros(3), p_base=0.6, p_signal=0.5)
    with pytest.raises(ValueError, match="tau"):
        F.drop_curve(torch.zeros(3), p_base=0.3, p_signal=0.5, tau=1.0)
    with pytest.raises(ValueError, match="prefer.*'small', 'big'"):
        F.drop_curve(torch.zeros(3), p_base=0.3, p_signal=0.5, prefer="large")


@pytest.mark.parametrize("normalize", F.NORMALIZE)
@pytest.mark.parametrize("scope", F.SCOPE)
def test_drop_probability_is_the_curve_of_the_score(normalize, scope):
    """The definition composes the two public steps, for every normalisation and scope."""
    signal = torch.randn(9, 7, generator=torch.Generator().manual_seed(2))
    options = dict(p_base=0.25, p_signal=0.5, tau=0.5, prefer="small")
    score = F.normalized_signal(signal.abs(), normalize=normalize, scope=scope)
    assert torch.equal(F.drop_probability(signal, normalize=normalize, scope=scope, **options), F.drop_curve(score, **options))


def test_drop_probability_takes_a_parameter_that_requires_grad():
    # A weight signal (DropSmallW) straight from a layer: the probabilities are detached, equal to the no-grad ones.
    layer = torch.nn.Linear(8, 4)
    p = F.drop_probability(layer.weight, p_base=0.3, p_signal=0.5)
    assert not p.requires_grad
    with torch.no_grad():
        assert torch.equal(p, F.drop_probability(layer.weight, p_base=0.3, p_signal=0.5))


def test_drop_curve_is_differentiable_out_of_place():
    score = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    p = F.drop_curve(score, p_base=0.3, p_signal=0.5, tau=0.5)
    assert torch.equal(p.detach(), F.drop_curve(score.detach(), p_base=0.3, p_signal=0.5, tau=0.5))
    (grad,) = torch.autograd.grad(p.sum(), score)
    c = torch.sigmoid(-score.detach())
    # d/dz [p_base + p_signal c [c > tau]] = -p_signal c (1 - c) where c > tau, else 0
    torch.testing.assert_close(grad, torch.where(c > 0.5, -0.5 * c * (1 - c), torch.zeros_like(c)))


def test_recalibrate_refuses_a_mask_of_another_shape():
    with pytest.raises(ValueError, match="keep_mask has shape"):
        F.recalibrate(torch.randn(3, 4), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="keep_mask has shape"):
        F.recalibrate(torch.randn(3, 4), torch.ones(2, 4, 3, dtype=torch.bool))


def test_probabilities_as_numpy_scalars_are_numbers_and_other_types_are_named():
    signal = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    expected = F.drop_probability(signal, p_base=0.25, p_signal=0.5)
    assert torch.equal(F.drop_probability(signal, p_base=np.float64(0.25), p_signal=np.float32(0.5)), expected)
    with pytest.raises(ValueError, match=r"p_base=tensor\(0\.3000\) must be a real number in \[0, 1\], not a Tensor"):
        F.drop_probability(signal, p_base=torch.tensor(0.3), p_signal=0.5)
    with pytest.raises(ValueError, match=r"p_base=1.5 must be a probability in \[0, 1\]"):
        F.drop_probability(signal, p_base=1.5, p_signal=0.0)
