"""Values of quantities, and how they reach the host.

A quantity's ``compute`` returns a dict from a metric name (or a tuple of
names) to a value: a Python number, a 0-dim tensor, or an :class:`OnHost`,
arithmetic finished on the host from device tensors. On the CPU reading a
tensor is no synchronisation, so values are finished at once
(:func:`finish_now`); on an accelerator they wait on the device as one float64
vector per layer and step (:class:`DeviceValues`) until the flush moves all of
them to the host in one transfer.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

MetricKey = Union[str, Tuple[str, ...]]


class OnHost:
    """A value (or, under a tuple key, several) finished on the host: ``finish(*inputs)``.

    Each input reaches ``finish`` as a Python number (a 0-dim tensor) or a
    1-D numpy array (any other tensor, flattened). A step then spends no
    device op on what is arithmetic on a few numbers (rates from counts, a
    standard deviation from a sum of squares), and sorts happen on the host.

    Raises:
        Nothing on construction; ``finish``'s own errors surface where the value is finished.
    """

    __slots__ = ("finish", "inputs")

    def __init__(self, finish: Callable[..., Union[float, Sequence[float]]], *inputs: Tensor):
        self.finish, self.inputs = finish, inputs


Value = Union[float, int, Tensor, OnHost]
Values = Dict[MetricKey, Value]


def _names(key: MetricKey) -> Tuple[str, ...]:
    return key if isinstance(key, tuple) else (key,)


def _results(key: MetricKey, result) -> List[float]:
    if isinstance(key, tuple):
        result = [float(value) for value in result]
        if len(result) != len(key):
            raise ValueError(f"recorder: {len(result)} values for the {len(key)} metrics {key}")
        return result
    return [float(result)]


def _host_input(tensor: Tensor):
    if tensor.dim() == 0:
        return tensor.item()
    values = tensor.detach().reshape(-1).cpu()
    if values.dtype not in (torch.float32, torch.float64):
        values = values.double()
    return values.numpy()


def finish_now(values: Values) -> Tuple[List[str], List[float]]:
    """Metric names and finished floats of ``values`` (reads device tensors at once).

    Raises:
        ValueError: a tuple key gets a different number of values.
        RuntimeError: a tensor value (not under :class:`OnHost`) has more than one element (``item``).
    """
    names: List[str] = []
    finished: List[float] = []
    for key, value in values.items():
        if isinstance(value, OnHost):
            result = value.finish(*(_host_input(tensor) for tensor in value.inputs))
        elif isinstance(value, Tensor):
            result = value.item()
        else:
            result = value
        names.extend(_names(key))
        finished.extend(_results(key, result))
    return names, finished


class DeviceValues:
    """``values`` of one layer and step kept on the device: every tensor they need, copied
    into one float64 vector, so that later steps cannot change them.

    Raises:
        Nothing of its own; tensors on different devices raise torch's ``RuntimeError`` (``cat``).
    """

    def __init__(self, values: Values, device: torch.device):
        self.keys = list(values)
        self.plan = []  # per key: a number, or (finish or None, [(size, is_scalar) per input])
        pieces = []
        for value in values.values():
            if isinstance(value, (OnHost, Tensor)):
                finish, inputs = (value.finish, value.inputs) if isinstance(value, OnHost) else (None, (value,))
                self.plan.append((finish, [(tensor.numel(), tensor.dim() == 0) for tensor in inputs]))
                pieces.extend(tensor.detach().reshape(-1).to(torch.float64) for tensor in inputs)
            else:
                self.plan.append(value)
        self.vector = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64, device=device)

    def finish(self, host: np.ndarray) -> Tuple[List[str], List[float]]:
        """Names and floats from ``host``, this object's ``vector`` on the host.

        Raises:
            ValueError: a tuple key gets a different number of values.
        """
        names: List[str] = []
        finished: List[float] = []
        position = 0
        for key, how in zip(self.keys, self.plan):
            if not isinstance(how, tuple):
                result = how
            else:
                finish, shapes = how
                inputs = []
                for size, is_scalar in shapes:
                    part = host[position : position + size]
                    inputs.append(float(part[0]) if is_scalar else part)
                    position += size
                result = inputs[0] if finish is None else finish(*inputs)
            names.extend(_names(key))
            finished.extend(_results(key, result))
        return names, finished
