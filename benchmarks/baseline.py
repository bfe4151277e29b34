"""The authors' copy-in/copy-out Dynamic DropConnect, re-implemented as the speed baseline.

Per training step and masked layer, as in the reference code:

1. from the previous step's gradient ``g`` compute the drop probability with
   the multi-pass formula (abs, mean, std, subtract, divide, sigmoid, compare
   with tau, cast, multiply, multiply, add), each op a new full-size tensor;
2. ``u = torch.rand``, ``keep = (u > p).float()``,
   ``W_eff = W * keep / (keep.mean() + eps)``;
3. ``orig = W.data.clone()``; ``W.data.copy_(W_eff)``; forward and backward
   run on the masked weight; ``W.data.copy_(orig)``;
4. ``opt.step()`` with the dense gradient ``dL/dW_eff`` (the reference update).

The first step has no gradient yet and runs unmasked. The gradient is kept by
reference (no copy), which only flatters the baseline.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import Tensor, nn


class CopyInCopyOut:
    """Wraps the forward/backward of a training step with the reference code's weight swap."""

    def __init__(
        self,
        layers: Iterable[nn.Module],
        *,
        p_base: float = 0.3,
        p_signal: float = 0.5,
        tau: float = 0.5,
        eps: float = 1e-9,
        generator: Optional[torch.Generator] = None,
    ):
        self.layers = list(layers)
        self.p_base, self.p_signal, self.tau, self.eps = p_base, p_signal, tau, eps
        self.generator = generator
        self.previous_grad: Dict[int, Tensor] = {}
        self._saved: Dict[int, Tensor] = {}

    def drop_probability(self, grad: Tensor) -> Tensor:
        a = grad.abs()
        mean = a.mean()
        std = a.std()
        z = (a - mean) / (std + self.eps)
        c = torch.sigmoid(-z)
        q = c * (c > self.tau).float()
        return self.p_base + self.p_signal * q

    @torch.no_grad()
    def before_forward(self) -> None:
        """Write the masked weights into the parameters (keeping the originals aside)."""
        for index, layer in enumerate(self.layers):
            grad = self.previous_grad.get(index)
            if grad is None:
                continue
            p = self.drop_probability(grad)
            u = torch.rand(p.shape, generator=self.generator, dtype=p.dtype)
            keep = (u > p).float()
            w_eff = layer.weight.data * keep / (keep.mean() + self.eps)
            self._saved[index] = layer.weight.data.clone()
            layer.weight.data.copy_(w_eff)

    @torch.no_grad()
    def after_backward(self) -> None:
        """Restore the weights; remember ``dL/dW_eff`` for the next step; call before ``opt.step()``."""
        for index, layer in enumerate(self.layers):
            saved = self._saved.pop(index, None)
            if saved is not None:
                layer.weight.data.copy_(saved)
            if layer.weight.grad is not None:
                self.previous_grad[index] = layer.weight.grad
