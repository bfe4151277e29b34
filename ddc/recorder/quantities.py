"""The recorder's quantities: one small class per group of metrics.

Each quantity says *when* it is computed (``every``, a schedule; by default
the recorder's) and *what* it computes (``compute``: one layer at one step ->
metric values). Quantities that need to see every step (drop counts) do it
in ``observe``; those that need the weight before the optimizer step (update
norm) in ``before_optimizer_step``. See :mod:`ddc.recorder` for adding one.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..methods import DynamicDropConnect, LayerMethod
from ..record import StepRecord
from .ordering import drop_prob_order_statistics, quantile_labels, signal_quantiles, unbiased_std
from .schedules import Schedule, as_schedule
from .subsets import EdgeSubsets, tensor_reader
from .transfer import OnHost, Values

#: the quantile levels recorded by default
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def layer_signal(layer: nn.Module, method: Optional[LayerMethod]) -> Optional[Tensor]:
    """The gradient signal of a layer: DDC's own ``dL/dW_eff``, else ``weight.grad`` (or None).

    Raises:
        AttributeError: ``layer`` has no ``weight``.
    """
    if isinstance(method, DynamicDropConnect) and method.signal == "grad":
        return method.weight_signal
    return layer.weight.grad


class LayerStep:
    """What quantities read of one layer at one step (built by the recorder each step).

    Attributes:
        name, layer, method: the layer's name, the module, its method (or None).
        record: the method's :class:`ddc.record.StepRecord` of this step
            (empty when there is none).
        keep_mask: this step's keep mask (or None); stays readable here
            after :meth:`release_keep_mask`.
        subsets: the recorder's :class:`EdgeSubsets`.

    Raises:
        Nothing of its own (built by the recorder).
    """

    def __init__(self, name: str, layer: nn.Module, method: Optional[LayerMethod], subsets: EdgeSubsets):
        self.name, self.layer, self.method, self.subsets = name, layer, method, subsets
        record = method.last if method is not None else None
        self.record = record if record is not None else StepRecord()
        self.keep_mask = self.record.keep_mask
        self._keep_mask_sample: Optional[Tensor] = None

    @property
    def weight(self) -> Tensor:
        """The layer's weight, detached (its shape).

        Raises:
            AttributeError: the layer has no ``weight``.
        """
        return self.layer.weight.detach()

    @property
    def signal(self) -> Optional[Tensor]:
        """The layer's gradient signal (:func:`layer_signal`), the weight's shape, or None.

        Raises:
            AttributeError: the layer has no ``weight``.
        """
        return layer_signal(self.layer, self.method)

    def sample(self, values: Tensor, limit: Optional[int] = None) -> Tensor:
        """``values`` flattened, or this layer's subset of ``limit`` (default ``max_edges``) of them.

        Raises:
            Nothing of its own.
        """
        return self.subsets.sample(self.name, values, limit)

    def samples(self, values: Tensor) -> Tuple[Tensor, Tensor]:
        """The moments sample and the sort sample of ``values`` (see :meth:`EdgeSubsets.samples`).

        Raises:
            Nothing of its own.
        """
        return self.subsets.samples(self.name, values.numel(), tensor_reader(values), values.device)

    def keep_mask_sample(self) -> Tensor:
        """This step's keep mask on the ``max_edges`` subset (gathered once per step).

        Raises:
            AttributeError: there is no keep mask this step (``keep_mask`` is None).
        """
        if self._keep_mask_sample is None:
            self._keep_mask_sample = self.sample(self.keep_mask)
        return self._keep_mask_sample

    def release_keep_mask(self) -> None:
        """Nothing reads the record's full keep mask after this step: let the record drop it,
        so it is not held until the next forward pass draws a new one.

        Raises:
            Nothing.
        """
        self.record.keep_mask = None


def centred_moments(values: Tensor) -> Tuple[Tensor, Tensor, int]:
    """``(mean, sum of squared deviations, count)`` of a 1-D tensor by two passes (float32 at least).

    Raises:
        RuntimeError: ``values`` is not 1-D (``torch.dot``).
    """
    if values.dtype not in (torch.float32, torch.float64):
        values = values.float()
    mean = values.mean()
    centred = values - mean
    return mean, torch.dot(centred, centred), values.numel()


def std_on_host(square_sum: Tensor, count: int, divisor: float = 1.0) -> OnHost:
    """The unbiased standard deviation (divided by ``divisor``), finished on the host.

    Raises:
        Nothing (the standard deviation is finished later, on the host).
    """
    return OnHost(lambda total: unbiased_std(total, count) / divisor, square_sum)


def norm_on_host(values: Tensor) -> OnHost:
    """Frobenius norm: the square root (on the host) of one dot product, read at memory speed.

    Raises:
        Nothing of its own.
    """
    flat = values.reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return OnHost(lambda square_sum: math.sqrt(max(square_sum, 0.0)), torch.dot(flat, flat))


class Quantity:
    """Base class: a group of metrics, with a schedule (*when*) and a compute (*what*).

    Args:
        every: schedule of this quantity (an int ``k``, a ``step -> bool``, or
            None for the recorder's own ``every``).

    Raises:
        ValueError: ``every`` is an int below 0 (:func:`ddc.recorder.schedules.as_schedule`).
        :meth:`compute` raises ``NotImplementedError`` on this base class.
    """

    def __init__(self, every: Union[int, Schedule, None] = None):
        self.schedule: Optional[Schedule] = None if every is None else as_schedule(every)

    def compute(self, layer: LayerStep) -> Values:
        """This step's metrics of one layer: ``{name: value}`` (values: see :mod:`ddc.recorder.transfer`).

        Raises:
            NotImplementedError: on this base class; each quantity defines it.
        """
        raise NotImplementedError

    def observe(self, layer: LayerStep) -> None:
        """Called every step, scheduled or not, before ``compute``.

        Raises:
            Nothing (does nothing here).
        """

    def before_optimizer_step(self, layers: Dict[str, nn.Module]) -> None:
        """Called before the optimizer step of a step on this quantity's schedule.

        Raises:
            Nothing (does nothing here).
        """

    def snapshot(self, name: str) -> dict:
        """Full tensors of layer ``name`` for a snapshot (on the CPU).

        Raises:
            Nothing (nothing here).
        """
        return {}

    def state_dict(self) -> dict:
        """State a resumed recording needs (none here).

        Raises:
            Nothing.
        """
        return {}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output, on ``device`` (nothing here).

        Raises:
            Nothing.
        """
        pass


class SignalStats(Quantity):
    """``grad_abs_mean``, ``grad_abs_std``, ``grad_abs_q*`` of ``|signal|`` and ``zscore_q*`` of its
    layer z-score (DDC's signal ``dL/dW_eff``; ``weight.grad`` for other methods).

    Raises:
        ValueError: ``every`` is an int below 0.
    """

    def __init__(self, quantiles: Sequence[float] = QUANTILES, every=None):
        super().__init__(every)
        self.quantiles = tuple(quantiles)
        labels = quantile_labels(self.quantiles)
        self.names = tuple(f"grad_abs_{label}" for label in labels) + tuple(f"zscore_{label}" for label in labels)

    def compute(self, layer: LayerStep) -> Values:
        """``grad_abs_mean``, ``grad_abs_std`` and the quantiles of ``|signal|`` and its z-score; ``{}`` without a signal.

        Raises:
            Nothing of its own.
        """
        signal = layer.signal
        if signal is None:
            return {}
        moments, for_sort = layer.samples(signal)
        mean, square_sum, count = centred_moments(moments.abs())
        quantiles = partial(signal_quantiles, count=count, quantiles=self.quantiles)
        return {
            "grad_abs_mean": mean,
            "grad_abs_std": std_on_host(square_sum, count),
            self.names: OnHost(quantiles, for_sort.abs(), mean, square_sum),
        }


class DropProbStats(Quantity):
    """The drop probability used this step: ``drop_prob_mean`` (the expected drop rate),
    ``drop_prob_std``, ``drop_prob_min``, ``drop_prob_max``, ``drop_prob_q*``; DDC:
    ``frac_q_positive`` (share of edges with a signal term, ``p > p_base``) and
    ``rank_corr_grad_drop`` (Spearman correlation of the signal behind the drop
    probability with it).

    Raises:
        ValueError: ``every`` is an int below 0.
    """

    def __init__(self, quantiles: Sequence[float] = QUANTILES, every=None):
        super().__init__(every)
        self.quantiles = tuple(quantiles)
        self.names = tuple(f"drop_prob_{label}" for label in quantile_labels(self.quantiles))

    def compute(self, layer: LayerStep) -> Values:
        """The drop-probability statistics of this step; ``{}`` when the record holds none.

        Raises:
            Nothing of its own.
        """
        record, subsets = layer.record, layer.subsets
        if not record.has_drop_prob:
            return {}
        shape = record.drop_prob_shape
        numel = shape.numel()
        if subsets.counts_exact(numel) or numel <= subsets.max_edges:
            every_edge = record.full_drop_prob()
            moments, for_sort = layer.samples(every_edge)
        else:  # only the subset is read: computed from the signal when not materialised
            every_edge = None
            device = (record.signal if record.drop_prob is None else record.drop_prob).device
            moments, for_sort = subsets.samples(layer.name, numel, self._reader(record), device)
        out: Values = {}
        if moments.numel() > 1:
            mean, square_sum, count = centred_moments(moments)
            out["drop_prob_std"], out["drop_prob_mean"] = std_on_host(square_sum, count), mean
        else:
            out["drop_prob_std"], out["drop_prob_mean"] = 0.0, moments.mean()
        out["drop_prob_min"], out["drop_prob_max"] = torch.aminmax(moments)
        method = layer.method
        if isinstance(method, DynamicDropConnect) and method.p_signal > 0:
            counted = every_edge if subsets.counts_exact(numel) else moments
            size = counted.numel()
            out["frac_q_positive"] = OnHost(lambda above: above / size, torch.count_nonzero(counted > method.p_base))
        inputs = (for_sort,)
        names = self.names
        if record.signal is not None and record.signal.shape == shape:
            # the signal this step's drop probabilities came from (usually not the current one)
            inputs += (layer.sample(record.signal, subsets.sort_edges).abs(),)
            names += ("rank_corr_grad_drop",)
        out[names] = OnHost(partial(drop_prob_order_statistics, quantiles=self.quantiles), *inputs)
        return out

    @staticmethod
    def _reader(record: StepRecord):
        return lambda index: record.full_drop_prob().reshape(-1) if index is None else record.drop_prob_at(index)


class MaskStats(Quantity):
    """The sampled mask: ``realized_drop_rate``, ``recal_keep_rate`` (the keep rate the
    re-calibration divided by, ``1 / scale`` averaged) and ``mask_jaccard`` (Jaccard
    overlap of the dropped sets of this and the previous recorded step).

    Raises:
        ValueError: ``every`` is an int below 0.
    """

    def __init__(self, every=None):
        super().__init__(every)
        self.previous_keep: Dict[str, Tensor] = {}
        self.previous_kept: Dict[str, Tensor] = {}

    def compute(self, layer: LayerStep) -> Values:
        """``realized_drop_rate``, ``recal_keep_rate`` and (from the second mask on) ``mask_jaccard``; ``{}`` without a mask.

        Raises:
            AttributeError: the record has a keep mask but no ``scale``.
        """
        keep, scale, subsets = layer.keep_mask, layer.record.scale, layer.subsets
        if keep is None:
            return {}
        if not subsets.counts_exact(keep.numel()):
            keep = layer.keep_mask_sample()
        edges = keep.numel()
        kept = torch.count_nonzero(keep)
        out: Values = {"realized_drop_rate": OnHost(lambda kept: 1.0 - kept / edges, kept)}
        if scale.numel() > 1:
            scale = scale if subsets.counts_exact(scale.numel()) else layer.sample(scale)
            out["recal_keep_rate"] = scale.float().reciprocal().mean()
        else:
            out["recal_keep_rate"] = OnHost(lambda scale: 1.0 / scale, scale.reshape(()))
        previous = self.previous_keep.get(layer.name)
        if previous is not None and previous.shape == keep.shape:
            both_kept = torch.count_nonzero(keep & previous)
            out["mask_jaccard"] = OnHost(partial(self._jaccard, edges), kept, self.previous_kept[layer.name], both_kept)
            previous.copy_(keep)
        else:
            self.previous_keep[layer.name] = keep.clone()
        self.previous_kept[layer.name] = kept
        return out

    @staticmethod
    def _jaccard(edges: int, kept: int, kept_before: int, both_kept: int) -> float:
        # Dropped sets D = ~K: |D & D'| = n - |K| - |K'| + |K & K'|, |D | D'| = n - |K & K'|.
        return (edges - kept - kept_before + both_kept) / max(edges - both_kept, 1)

    def state_dict(self) -> dict:
        """The previous recorded masks and their kept counts, on the CPU.

        Raises:
            Nothing.
        """
        return {
            "previous_keep": {name: keep.cpu() for name, keep in self.previous_keep.items()},
            "previous_kept": {name: kept.cpu() for name, kept in self.previous_kept.items()},
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output, on ``device``.

        Raises:
            KeyError: ``state`` lacks ``previous_keep`` or ``previous_kept``.
        """
        self.previous_keep = {name: keep.to(device) for name, keep in state["previous_keep"].items()}
        self.previous_kept = {name: kept.to(device) for name, kept in state["previous_kept"].items()}


class KeptCounts:
    """Per-edge count of the steps each edge was kept.

    A bool mask adds into ``recent``, uint8 counts of up to 255 steps, without
    a cast of the whole mask (adding it into int32 casts it); they are added
    into the int32 ``total`` before they can overflow. Small masks
    (``direct``) add straight into ``total``.

    Raises:
        Nothing of its own; a ``total`` not of ``shape`` fails later, in :meth:`add`.
    """

    def __init__(self, shape: torch.Size, device: torch.device, total: Optional[Tensor] = None):
        self.shape = torch.Size(shape)
        self.total = torch.zeros(shape, dtype=torch.int32, device=device) if total is None else total
        self.recent = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.recent_steps = 0
        self.steps = 0  # masks counted (examples, for per-example masks)

    def add(self, keep: Tensor, direct: bool = False) -> None:
        """Count one mask of ``shape`` (``direct``: into ``total`` at once).

        Raises:
            RuntimeError: ``keep`` does not broadcast into ``shape`` (torch).
        """
        self.steps += 1
        if direct:
            self.total += keep
            return
        self.recent += keep.view(torch.uint8) if keep.dtype == torch.bool else keep.to(torch.uint8)
        self.recent_steps += 1
        if self.recent_steps == 255:
            self.totals()

    def add_examples(self, keep: Tensor) -> None:
        """Count per-example masks, ``batch x shape``.

        Raises:
            RuntimeError: ``keep[i]`` is not of ``shape`` (torch).
        """
        self.total += keep.sum(0, dtype=torch.int32)
        self.steps += keep.shape[0]

    def totals(self) -> Tensor:
        """The int32 counts, with the recent ones added in.

        Raises:
            Nothing.
        """
        if self.recent_steps:
            self.total += self.recent
            self.recent.zero_()
            self.recent_steps = 0
        return self.total


class DropFrequency(Quantity):
    """Per-edge drop frequency since attach (1 - kept count / steps): ``drop_freq_mean``,
    ``drop_freq_std``, ``drop_freq_max``; snapshots get ``drop_count`` and ``steps_counted``.

    Masks are counted every step. A layer above ``exact_edges`` (and
    ``max_edges``) whose full counts no snapshot will show (``full_counts``
    False) is counted on its ``max_edges`` subset only.

    Raises:
        ValueError: ``every`` is an int below 0.
    """

    def __init__(self, full_counts: bool = True, every=None):
        super().__init__(every)
        self.full_counts = full_counts
        self.counts: Dict[str, KeptCounts] = {}
        self.on_subset: set = set()

    def observe(self, layer: LayerStep) -> None:
        """Count this step's keep mask (per edge; per example for per-example masks).

        Raises:
            Nothing of its own.
        """
        keep, subsets = layer.keep_mask, layer.subsets
        if keep is None:
            return
        per_example = keep.dim() > layer.layer.weight.dim()
        if not (per_example or self.full_counts or subsets.counts_exact(keep.numel())) and keep.numel() > subsets.max_edges:
            keep = layer.keep_mask_sample()
            self.on_subset.add(layer.name)
            layer.release_keep_mask()  # (the mask statistics read the same subset)
        shape = keep.shape[1:] if per_example else keep.shape
        counts = self.counts.get(layer.name)
        if counts is None or counts.shape != shape:
            counts = self.counts[layer.name] = KeptCounts(shape, keep.device)
        if per_example:
            counts.add_examples(keep)
        else:
            counts.add(keep, direct=keep.numel() <= subsets.max_edges)

    def compute(self, layer: LayerStep) -> Values:
        """``drop_freq_mean``, ``drop_freq_std``, ``drop_freq_max`` since attach; ``{}`` before any mask.

        Raises:
            Nothing of its own.
        """
        counts = self.counts.get(layer.name)
        if counts is None:
            return {}
        steps = max(counts.steps, 1)
        if layer.subsets.counts_exact(counts.total.numel()):
            per_edge = counts.totals()
        else:  # (the recent counts are added on the subset only)
            per_edge = layer.sample(counts.total) + layer.sample(counts.recent)
        edges = per_edge.numel()
        sample = layer.sample(per_edge)
        mean, square_sum, count = centred_moments(sample)
        if sample.numel() == edges:  # the whole layer: the moments' mean is the mean
            mean_rate = OnHost(lambda kept: 1.0 - kept / steps, mean)
        else:
            mean_rate = OnHost(lambda kept: 1.0 - kept / (edges * steps), per_edge.sum())
        return {
            "drop_freq_mean": mean_rate,
            "drop_freq_max": OnHost(lambda least: 1.0 - least / steps, per_edge.min()),
            "drop_freq_std": std_on_host(square_sum, count, divisor=steps),
        }

    def snapshot(self, name: str) -> dict:
        """``drop_count`` (the weight's shape, on the CPU) and ``steps_counted``; ``{}`` when counted on a subset.

        Raises:
            Nothing.
        """
        counts = self.counts.get(name)
        if counts is None or name in self.on_subset:  # (no weight-shaped counts to show)
            return {}
        return {"drop_count": (counts.steps - counts.totals()).cpu(), "steps_counted": counts.steps}

    def state_dict(self) -> dict:
        """The kept counts (on the CPU) and the steps counted, per layer.

        Raises:
            Nothing.
        """
        return {
            "kept_count": {name: counts.totals().cpu() for name, counts in self.counts.items()},
            "steps_counted": {name: counts.steps for name, counts in self.counts.items()},
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output, on ``device``.

        Raises:
            KeyError: ``state`` lacks ``kept_count`` or ``steps_counted`` (or a layer in the latter).
        """
        self.counts = {}
        for name, total in state["kept_count"].items():
            counts = KeptCounts(total.shape, device, total=total.to(device))
            counts.steps = state["steps_counted"][name]
            self.counts[name] = counts


class WeightNorm(Quantity):
    """``weight_norm``: the Frobenius norm of the weight.

    Raises:
        ValueError: ``every`` is an int below 0.
    """

    def compute(self, layer: LayerStep) -> Values:
        """``weight_norm`` of this step.

        Raises:
            Nothing of its own.
        """
        return {"weight_norm": norm_on_host(layer.weight)}


class UpdateNorm(Quantity):
    """``update_norm``: the Frobenius norm of this step's change of the weight (needs the
    recorder's ``optimizer``: the weight is copied before the optimizer step).

    Raises:
        ValueError: ``every`` is an int below 0.
    """

    def __init__(self, every=None):
        super().__init__(every)
        self.before: Dict[str, Tensor] = {}

    def before_optimizer_step(self, layers: Dict[str, nn.Module]) -> None:
        """Copy each layer's weight before the optimizer changes it.

        Raises:
            AttributeError: a layer has no ``weight``.
        """
        self.before = {name: layer.weight.detach().clone() for name, layer in layers.items()}

    def compute(self, layer: LayerStep) -> Values:
        """``update_norm`` of this step; ``{}`` without a copy from before the step.

        Raises:
            Nothing of its own.
        """
        before = self.before.pop(layer.name, None)
        return {} if before is None else {"update_norm": norm_on_host(layer.weight - before)}


class NonfiniteSteps(Quantity):
    """DDC: ``nonfinite_steps``, the steps whose signal was not finite (every edge got ``p_base``).

    Raises:
        ValueError: ``every`` is an int below 0.
    """

    def compute(self, layer: LayerStep) -> Values:
        """``nonfinite_steps`` of a DDC layer (a 0-dim tensor); ``{}`` for other methods.

        Raises:
            Nothing.
        """
        method = layer.method
        return {"nonfinite_steps": method.nonfinite_steps} if isinstance(method, DynamicDropConnect) else {}


def default_quantities(quantiles: Sequence[float] = QUANTILES, full_counts: bool = True) -> list:
    """The recorder's quantities, in the order their metrics are written.

    Raises:
        Nothing of its own.
    """
    return [
        SignalStats(quantiles),
        DropProbStats(quantiles),
        MaskStats(),
        DropFrequency(full_counts),
        WeightNorm(),
        UpdateNorm(),
        NonfiniteSteps(),
    ]
