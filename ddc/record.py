"""What a method used in one training step, as a typed record for the Recorder.

A method on a layer keeps one :class:`StepRecord` per forward pass in
``method.last`` while a recorder asks for it (``method.keep_last = True``);
otherwise ``method.last`` is ``None`` and nothing is retained. The record is
the whole protocol between the methods and :mod:`ddc.recorder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from . import functional

__all__ = ["StepRecord"]


@dataclass
class StepRecord:
    """The tensors one masked forward pass of a layer used (all on the layer's device).

    Attributes:
        keep_mask: bool keep mask ``keep = u > drop_prob`` (Yang & Chen, arXiv
            2502.19948, section 3; ``docs/method.md`` section 2). Weight methods:
            the weight's shape (``out x in [x k...]``), or ``batch x`` that
            with one mask per example; output methods (Dropout, Standout): the
            layer output's shape. ``None`` when no mask was drawn (DDC's first
            step, before any gradient signal).
        scale: the re-calibration factor the kept entries were multiplied by
            (``W_eff = W * keep_mask * scale``); broadcasts against
            ``keep_mask`` (a 0-dim tensor for the layer-wide modes).
        signal: the tensor the drop probabilities came from (DDC: ``dL/dW_eff``
            of the previous step, or the weight), ``None`` for methods that
            use no signal. Same shape as the weight.
        drop_prob: the drop probabilities used, a tensor that broadcasts
            against ``keep_mask`` (a 0-dim tensor for one probability), or
            ``None`` when they were not materialised (see
            ``drop_prob_options``).
        drop_prob_options: for drop probabilities not materialised, the
            keyword arguments of :func:`ddc.functional.drop_probability`
            (statistics ``stats`` and ``finite`` included) that give them
            from ``signal``, elementwise; ``None`` otherwise.

    Raises:
        Nothing on construction (fields are not checked);
        :meth:`full_drop_prob` raises ``ValueError`` when there are no drop probabilities.
    """

    keep_mask: Optional[Tensor] = None
    scale: Optional[Tensor] = None
    signal: Optional[Tensor] = None
    drop_prob: Optional[Tensor] = None
    drop_prob_options: Optional[Dict[str, Any]] = None

    @property
    def has_drop_prob(self) -> bool:
        """Whether drop probabilities can be read (materialised, or from the signal).

        Raises:
            Nothing.
        """
        return self.drop_prob is not None or self._from_signal

    @property
    def _from_signal(self) -> bool:
        return self.drop_prob is None and self.drop_prob_options is not None and self.signal is not None

    @property
    def drop_prob_shape(self) -> Optional[torch.Size]:
        """Shape of :meth:`full_drop_prob`, without computing it; ``None`` when there is none.

        Raises:
            Nothing.
        """
        if self.drop_prob is not None:
            return self.drop_prob.shape
        return self.signal.shape if self._from_signal else None

    def full_drop_prob(self) -> Tensor:
        """Every drop probability (computed from the signal when not materialised).

        Returns:
            ``drop_prob``, or ``drop_probability(signal, **drop_prob_options)``:
            the signal's shape, its dtype (float32 for 16-bit signals).
        Raises:
            ValueError: the record holds no drop probabilities.
        """
        if self.drop_prob is not None:
            return self.drop_prob
        self._check_from_signal()
        return functional.drop_probability(self.signal.detach(), **self.drop_prob_options)

    def drop_prob_at(self, index: Tensor) -> Tensor:
        """Drop probabilities of the flat (row-major) edges ``index``.

        Computed from those edges' signal with the step's statistics when not
        materialised, so reading a subset costs the subset, not the layer.

        Args:
            index: 1-D int64 tensor of flat positions, on the record's device.
        Returns:
            1-D tensor of ``len(index)`` drop probabilities.
        Raises:
            ValueError: the record holds no drop probabilities.
        """
        if self.drop_prob is not None:
            return self.drop_prob.detach().reshape(-1).index_select(0, index)
        self._check_from_signal()
        values = self.signal.detach().reshape(-1).index_select(0, index)
        return functional.drop_probability(values, **self.drop_prob_options)

    def _check_from_signal(self) -> None:
        if not self._from_signal:
            raise ValueError("StepRecord: no drop probabilities (drop_prob is None and none can be computed from a signal)")
