"""The recorder's orchestrator: layers, schedules, edge subsets, host transfer and the writer."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..apply import ATTR, select_layers
from ..methods import LayerMethod
from ..record import StepRecord
from .quantities import QUANTILES, LayerStep, Quantity, default_quantities, layer_signal
from .schedules import Schedule, as_schedule, never
from .subsets import EdgeSubsets
from .transfer import DeviceValues, Values, finish_now


def _weight_layers(model: nn.Module, layers) -> Dict[str, nn.Module]:
    if layers is None:
        chosen = {name: module for name, module in model.named_modules() if ATTR in module._modules}
        if not chosen:
            raise ValueError("layers: the model carries no method; name the layers to record (layers=...)")
        return chosen
    return select_layers(model, layers)


def _check_sizes(max_edges, sort_edges, exact_edges, flush_every) -> None:
    for field, value in (("max_edges", max_edges), ("sort_edges", sort_edges), ("flush_every", flush_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"Recorder: {field}={value!r} must be a positive int")
    if exact_edges is not None and (not isinstance(exact_edges, int) or exact_edges < 1):
        raise ValueError(f"Recorder: exact_edges={exact_edges!r} must be a positive int or None (all exact)")


class Recorder:
    """Records per-layer quantities into a :class:`ddc.store.RecordWriter` (or memory).

    Args:
        model: the model, with or without methods applied.
        writer: where rows go (``add(step, epoch, layer, metric, value)``;
            ``flush()``); ``None`` keeps them in ``self.rows``.
        layers: which layers (default: every layer that carries a method).
        every: schedule of scalar recording (int ``k`` = every k steps, or
            ``step -> bool``); a quantity may have its own.
        snapshot_every: schedule of full-tensor snapshots; ``snapshot_fn(step, tensors)`` stores them.
        optimizer: when given, ``update_norm`` is recorded via step hooks.
        quantiles: quantile levels of the distribution statistics.
        max_edges, sort_edges: sizes (edges) of the fixed edge subsets behind
            moments and order statistics.
        exact_edges: largest layer (edges) whose counts and rates are exact (``None``: all layers).
        flush_every: recorded steps held before one host transfer and write.
        seed: seed of the recorder's own generator (edge subsets).
    Raises:
        ValueError: a size that is not a positive int, ``snapshot_every``
            without ``snapshot_fn``, or no layers to record.
    """

    def __init__(
        self,
        model: nn.Module,
        writer=None,
        *,
        layers=None,
        every: Union[int, Schedule] = 1,
        snapshot_every: Union[int, Schedule, None] = None,
        snapshot_fn: Optional[Callable[[int, dict], object]] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        quantiles: Sequence[float] = QUANTILES,
        max_edges: int = 1 << 16,
        sort_edges: int = 2048,
        exact_edges: Optional[int] = 1 << 22,
        flush_every: int = 50,
        seed: int = 0,
    ):
        _check_sizes(max_edges, sort_edges, exact_edges, flush_every)
        self.model, self.writer, self.optimizer = model, writer, optimizer
        self.layers = _weight_layers(model, layers)
        self.schedule = as_schedule(every)
        self.snapshot_schedule = as_schedule(snapshot_every)
        if snapshot_every and snapshot_fn is None:
            raise ValueError("snapshot_fn: needed when snapshot_every is set")
        self.snapshot_fn = snapshot_fn
        self.quantiles = tuple(quantiles)
        self.max_edges, self.sort_edges, self.exact_edges = max_edges, sort_edges, exact_edges
        self.flush_every = flush_every
        self.subsets = EdgeSubsets(max_edges, sort_edges, exact_edges, seed)
        # Layers above exact_edges are counted on their subset unless a snapshot may show the counts.
        self.quantities: List[Quantity] = default_quantities(self.quantiles, full_counts=self.snapshot_schedule is not never)
        self.rows: List[tuple] = []
        self._pending: List[tuple] = []  # (step, epoch, layer, DeviceValues or (names, floats))
        self._pending_steps = 0
        self._handles: list = []
        self._attached = False
        self._step = 0

    def register(self, quantity: Quantity) -> "Recorder":
        """Record one more quantity (its metrics follow the default ones); returns the recorder.

        Raises:
            TypeError: ``quantity`` is not a :class:`ddc.recorder.Quantity`.
        """
        if not isinstance(quantity, Quantity):
            raise TypeError(f"register: {type(quantity).__name__} is not a ddc.recorder.Quantity")
        self.quantities.append(quantity)
        return self

    # ---- lifecycle ----------------------------------------------------------

    def attach(self) -> "Recorder":
        """Ask the methods for their step records and hook the optimizer (idempotent).

        Raises:
            Nothing of its own.
        """
        if self._attached:
            return self
        for method in self._methods().values():
            method.keep_last = True
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
        self._attached = True
        return self

    def detach(self) -> None:
        """Remove everything :meth:`attach` installed and write what is pending.

        Raises:
            Nothing of its own; the writer's errors from :meth:`flush` pass through.
        """
        for method in self._methods().values():
            method.keep_last = False
            method.last = None
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.flush()
        self._attached = False

    def __enter__(self) -> "Recorder":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        """Whether :meth:`attach` is in effect.

        Raises:
            Nothing.
        """
        return self._attached

    def _methods(self) -> Dict[str, LayerMethod]:
        # The recorded layers' own children: no walk over the whole model every step.
        return {name: layer._modules[ATTR] for name, layer in self.layers.items() if ATTR in layer._modules}

    def _due(self, quantity: Quantity, step: int) -> bool:
        return (quantity.schedule or self.schedule)(step)

    # ---- per step -------------------------------------------------------------

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        for quantity in self.quantities:
            if self._due(quantity, self._step):
                quantity.before_optimizer_step(self.layers)

    @torch.no_grad()
    def step(self, step: Optional[int] = None, epoch: int = 0) -> None:
        """Call after each optimizer step (or after backward when there is none).

        Raises:
            ValueError: two due quantities record a metric of one name.
            Errors of ``snapshot_fn`` and of the writer (at a flush) pass through.
        """
        if step is not None:
            self._step = step
        methods = self._methods()
        layer_steps = [LayerStep(name, layer, methods.get(name), self.subsets) for name, layer in self.layers.items()]
        for layer_step in layer_steps:
            for quantity in self.quantities:
                quantity.observe(layer_step)
        due = [quantity for quantity in self.quantities if self._due(quantity, self._step)]
        if due:
            for layer_step in layer_steps:
                values = self._compute(due, layer_step)
                if self._values_wait_for_flush(layer_step.layer.weight):
                    values = DeviceValues(values, layer_step.layer.weight.device)
                else:
                    values = finish_now(values)
                self._pending.append((self._step, epoch, layer_step.name, values))
            self._pending_steps += 1
            if self._pending_steps >= self.flush_every:
                self._drain()
        if self.snapshot_schedule(self._step):
            self.snapshot_fn(self._step, self.snapshot(methods))
        self._step += 1

    @staticmethod
    def _compute(quantities: List[Quantity], layer_step: LayerStep) -> Values:
        values: Values = {}
        for quantity in quantities:
            computed = quantity.compute(layer_step)
            repeated = values.keys() & computed.keys()
            if repeated:
                raise ValueError(f"recorder: {type(quantity).__name__} records {sorted(map(str, repeated))} again")
            values.update(computed)
        return values

    @staticmethod
    def _values_wait_for_flush(weight: Tensor) -> bool:
        """Whether a layer's values wait on the device for the flush (anything but the CPU,
        where reading a value is no synchronisation)."""
        return weight.device.type != "cpu"

    def snapshot(self, methods: Optional[Dict[str, LayerMethod]] = None) -> dict:
        """Full tensors per layer, on the CPU: ``weight``, ``signal``, ``drop_prob``, ``keep``,
        and the quantities' own (``drop_count``, ``steps_counted``), as far as they exist.

        Raises:
            Nothing of its own.
        """
        methods = self._methods() if methods is None else methods
        tensors = {}
        for name, layer in self.layers.items():
            method = methods.get(name)
            record = method.last if method is not None and method.last is not None else StepRecord()
            entry = {"weight": layer.weight.detach().cpu().clone()}
            signal = layer_signal(layer, method)
            if signal is not None:
                entry["signal"] = signal.detach().cpu().clone()
            if record.has_drop_prob:
                entry["drop_prob"] = record.full_drop_prob().detach().cpu().clone()
            if record.keep_mask is not None:
                entry["keep"] = record.keep_mask.detach().cpu().clone()
            for quantity in self.quantities:
                entry.update(quantity.snapshot(name))
            tensors[name] = entry
        return tensors

    # ---- checkpoints ----------------------------------------------------------

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the recording seamlessly.

        Raises:
            ValueError: two quantities keep state under one key.
        """
        self._drain()
        state = {"step": self._step, **self.subsets.state_dict()}
        for quantity in self.quantities:
            own = quantity.state_dict()
            if own.keys() & state.keys():
                raise ValueError(f"Recorder.state_dict: {type(quantity).__name__} repeats the keys {sorted(own.keys() & state.keys())}")
            state.update(own)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (on the recorded layers' device).

        Raises:
            KeyError: ``state`` lacks a key :meth:`state_dict` writes (``step``,
                ``subsets``, ``generator``, or a quantity's own).
        """
        device = next(iter(self.layers.values())).weight.device
        self._step = state["step"]
        self.subsets.load_state_dict(state, device)
        for quantity in self.quantities:
            quantity.load_state_dict(state, device)

    # ---- output ---------------------------------------------------------------

    def _drain(self) -> None:
        """Move pending device values to the host in one transfer and emit their rows."""
        if not self._pending:
            return
        waiting = [values.vector for *_, values in self._pending if isinstance(values, DeviceValues)]
        host = torch.cat(waiting).cpu().numpy() if waiting else None
        position = 0
        for step, epoch, layer, values in self._pending:
            if isinstance(values, DeviceValues):
                size = values.vector.numel()
                values = values.finish(host[position : position + size])
                position += size
            for metric, value in zip(*values):
                self._emit(step, epoch, layer, metric, value)
        self._pending = []
        self._pending_steps = 0

    def _emit(self, step, epoch, layer, metric, value) -> None:
        if self.writer is not None:
            self.writer.add(step, epoch, layer, metric, value)
        else:
            self.rows.append((step, epoch, layer, metric, value))

    def flush(self) -> None:
        """Write everything pending (one host transfer) and flush the writer.

        Raises:
            Nothing of its own; the writer's errors pass through.
        """
        self._drain()
        if self.writer is not None:
            self.writer.flush()

    def to_frame(self):
        """Rows kept in memory (no writer) as a DataFrame: ``step, epoch, layer, metric, value``.

        Raises:
            MissingExtra: pandas is not installed.
        """
        from .._optional import require

        pd = require("pandas", "Recorder.to_frame")

        self._drain()
        return pd.DataFrame(self.rows, columns=["step", "epoch", "layer", "metric", "value"])
