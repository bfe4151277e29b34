"""Activation checkpointing (torch.utils.checkpoint) recomputes a forward in backward: it must draw the same masks.

torch restores only the global RNG for the recomputation; a method with its own generator (``seed=``) replays
the state of the draw it stands for (``LayerMethod.rng``). Compared with the same training without checkpointing:
outputs, input and weight gradients, and weights after four steps, bit for bit.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import ddc

CASES = [
    ("ddc", {}),
    ("ddc", {"drop_bias": True, "first_step": "base"}),
    ("ddc", {"update": "reference", "grad_ema": 0.5}),
    ("ddc", {"mask": "sample"}),
    ("dropconnect", {"p": 0.4}),
    ("dropout", {"p": 0.4}),
    ("standout", {}),
]


class Segments(nn.Module):
    """Two checkpointed segments, one layer each (drawing from one shared generator), then a head;
    ``use_reentrant`` None: no checkpoint."""

    def __init__(self, use_reentrant):
        super().__init__()
        self.fc, self.fc2, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.use_reentrant = use_reentrant

    def forward(self, x):
        for layer in (self.fc, self.fc2):
            segment = lambda t, layer=layer: torch.tanh(layer(t))  # noqa: E731
            x = segment(x) if self.use_reentrant is None else checkpoint(segment, x, use_reentrant=self.use_reentrant)
        return self.head(x)


def _train(use_reentrant, method, options):
    torch.manual_seed(0)
    model = Segments(use_reentrant)
    layers = ["fc", "fc2"] if options.get("mask") == "sample" else ["fc", "fc2", "head"]
    ddc.apply(model, method, layers=layers, seed=3, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for step in range(4):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step), requires_grad=True)
        optimizer.zero_grad()
        out = model(x)
        out.square().mean().backward()
        optimizer.step()
        seen += [out.detach(), x.grad, model.fc.weight.grad.clone()]
    return seen + [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}-{'-'.join(o) or 'default'}" for m, o in CASES])
def test_checkpointed_training_equals_plain_training(method, options, use_reentrant):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reentrant checkpoint warns about inputs without grad
        plain = _train(None, method, options)
        checkpointed = _train(use_reentrant, method, options)
    assert len(plain) == len(checkpointed)
    for expected, got in zip(plain, checkpointed):
        assert torch.equal(expected, got)


def test_a_recomputation_does_not_move_the_generator():
    """The masks after a checkpointed step are those of the plain run: the replay draws from a copy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        states = []
        for use_reentrant in (None, False):
            torch.manual_seed(0)
            model = Segments(use_reentrant)
            handle = ddc.apply(model, "dropconnect", layers=["fc"], p=0.5, seed=1)
            model(torch.randn(2, 16, requires_grad=True)).sum().backward()
            states.append(handle.methods["fc"].mask_rng.get("cpu").get_state())
    assert torch.equal(states[0], states[1])


class SharedAcrossSegments(nn.Module):
    """``fc`` used in two checkpointed segments of one forward: one mask in the forward, two recomputations."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(16, 16), nn.Linear(16, 4)

    def segment(self, x):
        return torch.tanh(self.fc(x))

    def forward(self, x):
        for _ in range(2):
            x = checkpoint(self.segment, x, use_reentrant=True)
        return self.head(x)


def test_a_layer_shared_across_checkpointed_segments_warns_once():
    torch.manual_seed(0)
    model = SharedAcrossSegments()
    ddc.apply(model, "dropconnect", layers=["fc"], p=0.4, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            model(torch.randn(8, 16, requires_grad=True)).sum().backward()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "ddc:" in str(w.message)]
    assert len(messages) == 1 and "'fc'" in messages[0] and "checkpointed segment" in messages[0]
