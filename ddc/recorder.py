"""Watch a method while the network trains: per-layer quantities on a schedule.

A :class:`Recorder` is attached to a model (and optionally its optimizer). The
training loop calls ``recorder.step(step, epoch)`` after each optimizer step;
on scheduled steps the recorder computes small scalar quantities per layer on
the device, and moves them to the host in one transfer per flush (no host
synchronisation on the other steps). Snapshots of full tensors are taken on
their own schedule.

The recorder never changes training: it draws no random numbers from the
global or the methods' generators, only reads tensors, and removes everything
it installed on ``detach`` (the methods' ``keep_last`` flags and the optimizer
hooks). With no recorder attached nothing is installed at all.

Recorded metrics (long format ``run_id, step, epoch, layer, metric, value``):

- gradient signal (DDC's ``dL/dW_eff``; ``weight.grad`` for other methods):
  ``grad_abs_mean``, ``grad_abs_std``, ``grad_abs_q{10,25,50,75,90}``,
  ``zscore_q*`` (quantiles of the layer z-score);
- drop probability used this step: ``drop_prob_mean`` (the expected drop rate),
  ``drop_prob_std``, ``drop_prob_min``, ``drop_prob_max``, ``drop_prob_q*``,
  ``frac_q_positive`` (DDC: share of edges with a signal term, ``p > p_base``);
- ``realized_drop_rate`` of the sampled mask and ``recal_keep_rate``, the keep
  rate the re-calibration divided by (``1 / scale``, averaged);
- mask dynamics: ``mask_jaccard`` (Jaccard overlap of the dropped sets of this
  and the previous recorded step), ``drop_freq_mean``/``drop_freq_std``/
  ``drop_freq_max`` (per-edge cumulative drop frequency since attach),
  ``rank_corr_grad_drop`` (Spearman correlation of the signal that produced
  the drop probability with it);
- ``weight_norm`` and, with an optimizer, ``update_norm`` (Frobenius norm of
  this step's change of the weight).

Recording every step has to stay cheap, so for large layers the distribution
statistics come from a fixed random subset of edges, drawn once from the
recorder's own generator: means and standard deviations (of |g|, the drop
probability, drop frequencies) from ``max_edges`` edges (default 65,536), and
the statistics that need a sort (quantiles, rank correlation) from the first
``sort_edges`` of them (default 2,048: quantiles within a few per cent of the
spread, rank correlations within about 0.02). Layers up to those sizes are exact.
Counts and rates (realised drop rate, recalibration keep rate, mask overlap,
share of edges with a signal term, drop frequencies' mean and max) are exact
for layers of up to ``exact_edges`` edges (default 4,194,304); above that they
come from the same ``max_edges`` subset (standard error at most
``0.5 / sqrt(max_edges)``, 0.002 by default), because even one exact count per
step is a measurable share of a step on such a layer. ``exact_edges=None``
makes them exact everywhere. Norms are always exact, and so are the per-edge
drop counts that snapshots carry (with no snapshot schedule, such a large layer
keeps its drop counts for the subset only).

How it stays cheap: statistics that need a sort are computed on the host with
numpy (its vectorised sorts are several times faster than ``torch.sort`` on
the CPU; on an accelerator the sort samples wait on the device and are
summarised at the flush), arithmetic on counts and sums is finished in Python,
and a large layer's record holds the statistics behind its drop probabilities
rather than the probabilities, so the recorder computes only its subset of
them (``StepRecord.drop_prob_at``). Snapshots have every layer's drop
probabilities.
"""

from __future__ import annotations

import math
import weakref
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .apply import ATTR, select_layers
from .methods import DynamicDropConnect, LayerMethod
from .record import StepRecord

Schedule = Callable[[int], bool]
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


# ----------------------------------------------------------------------------- schedules


def every(k: int, start: int = 0) -> Schedule:
    """Steps ``start, start + k, start + 2k, ...``; ``k = 0`` never."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"every: k={k!r} must be a non-negative int (0 = never)")
    return (lambda step: step >= start and (step - start) % k == 0) if k else never


def never(step: int) -> bool:
    return False


def logarithmic(base: float = 2.0, dense_until: int = 10) -> Schedule:
    """Every step up to ``dense_until``, then steps near powers of ``base``."""
    if base <= 1:
        raise ValueError(f"logarithmic: base={base!r} must be > 1")

    def schedule(step: int) -> bool:
        if step <= dense_until:
            return True
        exponent = round(math.log(step, base))
        return step == round(base**exponent)

    return schedule


def as_schedule(value: Union[int, Schedule, None]) -> Schedule:
    if value is None:
        return never
    if callable(value):
        return value
    return every(value)


# ----------------------------------------------------------------------------- quantities


@lru_cache(maxsize=256)
def _quantile_positions(n: int, quantiles: Tuple[float, ...]):
    """Indices below/above and interpolation weights of ``quantiles`` in a sorted vector of ``n``."""
    import numpy as np

    position = np.asarray(quantiles, dtype=np.float64) * (n - 1)
    low = np.floor(position).astype(np.intp)
    high = np.ceil(position).astype(np.intp)
    return low, high, position - low


def _sorted_quantiles(ordered, quantiles: Sequence[float]):
    """Quantiles of an ascending numpy vector, interpolated linearly as ``torch.quantile``/``np.quantile``."""
    low, high, fraction = _quantile_positions(ordered.size, tuple(quantiles))
    below = ordered[low].astype("float64")
    return below + (ordered[high] - below) * fraction


def _tied_ranks(ordered):
    """0-based average ranks of an ascending vector, in its own order: ties share the mean
    of their positions (as scipy's ``rankdata`` - 1)."""
    import numpy as np

    n = ordered.size
    new = ordered[1:] != ordered[:-1]
    if new.all():
        return np.arange(n, dtype=np.float64)
    starts = np.flatnonzero(np.concatenate(([True], new)))
    sizes = np.diff(np.append(starts, n))
    return np.repeat(starts + (sizes - 1) / 2, sizes)


def _average_ranks(ordered, order):
    """Average ranks (as :func:`_tied_ranks`) of the vector that ``order`` sorts into ``ordered``."""
    import numpy as np

    ranks = np.empty(ordered.size)
    ranks[order] = _tied_ranks(ordered)
    return ranks


def _host(values):
    import numpy as np

    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.dtype not in (torch.float32, torch.float64):
            values = values.double()
        return values.numpy()
    return np.asarray(values)


def _pearson(a, b) -> float:
    import numpy as np

    a, b = a - a.mean(), b - b.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def order_statistics(
    quantiles: Sequence[float],
    labels: Sequence[str],
    samples: Dict[str, object],
    moments: Dict[str, float],
    orders: Optional[Dict[str, object]] = None,
):
    """The recorder's sort-based statistics of one layer-step, computed on the host with numpy.

    ``samples`` holds 1-D vectors of the sort subset: ``magnitude`` (|signal|),
    ``drop_prob``, and ``used`` (|signal| behind the drop probabilities, the
    same edges); ``moments`` the layer's ``grad_abs_mean``/``grad_abs_std``
    (for the z-score quantiles). Returns ``(names, values)``.

    ``orders`` (optional) passes sorting permutations between steps: an
    ``orders["used"]`` given is taken as ``argsort(used)``, and
    ``orders["magnitude"]`` is set to ``argsort(magnitude)``. With DDC this
    step's ``magnitude`` is the next step's ``used`` (same edges), so the
    recorder sorts each signal sample once.

    numpy's vectorised sorts are several times faster than ``torch.sort`` on
    the CPU (2,048 fresh floats: ``np.sort`` about 20 us, ``torch.sort``
    110 us), and on an accelerator the samples are summarised at the flush,
    so a step launches no sort at all. When the drop probability is a
    monotone function of ``used`` on the sample (DDC with layer statistics),
    the one sort of ``used`` orders both; otherwise the drop probability gets
    its own sort. Quantiles and average ranks do not depend on which sort
    ordered the ties, so the results are the same either way.
    """
    import numpy as np

    names: List[str] = []
    values: List[float] = []
    orders = {} if orders is None else orders
    magnitude = samples.get("magnitude")
    if magnitude is not None:
        magnitude = _host(magnitude)
        order = orders["magnitude"] = np.argsort(magnitude)
        q = _sorted_quantiles(magnitude[order], quantiles)
        z = (q - moments["grad_abs_mean"]) / (moments["grad_abs_std"] + 1e-9)  # z is increasing in |g|
        names += [f"grad_abs_{label}" for label in labels] + [f"zscore_{label}" for label in labels]
        values += q.tolist() + z.tolist()
    drop_prob = samples.get("drop_prob")
    if drop_prob is None:
        return names, values
    drop_prob, used = _host(drop_prob), samples.get("used")
    used = None if used is None else _host(used)
    if used is None or used.size != drop_prob.size:
        q = _sorted_quantiles(np.sort(drop_prob), quantiles)
        rho = None
    else:
        order_used = orders.get("used")
        if order_used is None or order_used.size != used.size:
            order_used = np.argsort(used)
        by_used = drop_prob[order_used]
        used_ranks = _tied_ranks(used[order_used])  # ranks in the order of ``used``
        steps = np.diff(by_used)
        if (steps <= 0).all():  # one sort orders both: read ``by_used`` backwards
            ordered = by_used[::-1]
            drop_ranks = _tied_ranks(ordered)[::-1]
        elif (steps >= 0).all():
            ordered = by_used
            drop_ranks = _tied_ranks(ordered)
        else:
            order = np.argsort(drop_prob, kind="stable")  # (faster than the default on many ties)
            ordered = drop_prob[order]
            drop_ranks = _average_ranks(ordered, order)[order_used]
        q = _sorted_quantiles(ordered, quantiles)
        rho = _pearson(used_ranks, drop_ranks)
    names += [f"drop_prob_{label}" for label in labels]
    values += q.tolist()
    if rho is not None:
        names.append("rank_corr_grad_drop")
        values.append(rho)
    return names, values


class _Derived:
    """A metric finished on the host: ``fn(*values)`` of raw device scalars.

    The raw scalars travel with the rest (Python floats at once on the CPU, the
    flush's one transfer elsewhere), so a step spends no tensor op on what is
    arithmetic on a few numbers: rates from counts, a standard deviation from
    a sum of squares, the Jaccard index from three counts.
    """

    __slots__ = ("fn", "raw")

    def __init__(self, fn: Callable[..., float], *raw: Tensor):
        self.fn, self.raw = fn, raw


def _split(out: Dict[str, object]) -> Tuple[List[Tensor], list]:
    """The device scalars behind ``out``'s values, and how to finish each value from them."""
    raws: List[Tensor] = []
    plan = []
    for value in out.values():
        if isinstance(value, _Derived):
            raws.extend(value.raw)
            plan.append((value.fn, len(value.raw)))
        elif isinstance(value, Tensor):
            raws.append(value)
            plan.append((None, 1))
        else:
            plan.append((float(value), 0))
    return raws, plan


def _finish(plan: list, host: Sequence[float]) -> List[float]:
    values, position = [], 0
    for how, count in plan:
        if count == 0:
            values.append(how)
        elif how is None:
            values.append(float(host[position]))
        else:
            values.append(float(how(*host[position : position + count])))
        position += count
    return values


def _std_mean(values: Tensor) -> Tuple[_Derived, Tensor]:
    """Unbiased standard deviation (finished on the host) and mean, by two passes:
    several times faster on the CPU than ``torch.std_mean`` for these sizes."""
    if values.dtype not in (torch.float32, torch.float64):
        values = values.float()
    mean = values.mean()
    centred = values - mean
    n = values.numel()
    return _Derived(lambda square_sum: math.sqrt(square_sum / (n - 1)) if n > 1 else 0.0, torch.dot(centred, centred)), mean


def _norm(values: Tensor) -> _Derived:
    """Frobenius norm as the square root (on the host) of one ``torch.dot``: on a 16.8M-edge
    weight it reads memory once at full speed, faster than ``torch.linalg.vector_norm``
    here and, in float32, about 8 times closer to the float64 value."""
    flat = values.reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return _Derived(lambda square_sum: math.sqrt(max(square_sum, 0.0)), torch.dot(flat, flat))


def _remember(tensor: Tensor, data) -> tuple:
    """A cache entry of something derived from ``tensor``, valid while that tensor object lives unchanged."""
    return weakref.ref(tensor), tensor._version, data


def _recall(entry: Optional[tuple], tensor) -> object:
    """The data of a :func:`_remember` entry if it was derived from ``tensor`` as it is now, else None."""
    if entry is None or tensor is None:
        return None
    ref, version, data = entry
    return data if ref() is tensor and version == tensor._version else None


class _DropProbReader:
    """The drop probabilities of a record that did not materialise them, read a subset at a time."""

    def __init__(self, record: StepRecord):
        self.record, self.shape = record, record.drop_prob_shape
        self.device = record.signal.device

    def numel(self) -> int:
        return self.shape.numel()


def _weight_layers(model: nn.Module, layers) -> Dict[str, nn.Module]:
    if layers is None:
        chosen = {name: module for name, module in model.named_modules() if ATTR in module._modules}
        if not chosen:
            raise ValueError("layers: the model carries no method; name the layers to record (layers=...)")
        return chosen
    return select_layers(model, layers)


class Recorder:
    """Records per-layer quantities into a :class:`ddc.store.RecordWriter` (or memory).

    Args:
        model: the model, with or without methods applied.
        writer: where rows go (``add(step, epoch, layer, metric, value)``;
            ``flush()``); ``None`` keeps them in ``self.rows``.
        layers: which layers (default: every layer that carries a method).
        every: schedule of scalar recording (int ``k`` = every k steps, or ``step -> bool``).
        snapshot_every: schedule of full-tensor snapshots; ``snapshot_fn(step, tensors)`` stores them.
        optimizer: when given, ``update_norm`` is recorded via step hooks.
        flush_every: recorded steps held on the device before one host transfer.
        max_edges, sort_edges: sizes of the fixed edge subsets behind moments and order statistics.
        exact_edges: largest layer whose counts and rates are exact (``None``: all layers).
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
        for field, value in (("max_edges", max_edges), ("sort_edges", sort_edges), ("flush_every", flush_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Recorder: {field}={value!r} must be a positive int")
        if exact_edges is not None and (not isinstance(exact_edges, int) or exact_edges < 1):
            raise ValueError(f"Recorder: exact_edges={exact_edges!r} must be a positive int or None (all exact)")
        self.model = model
        self.writer = writer
        self.layers = _weight_layers(model, layers)
        self.schedule = as_schedule(every)
        self.snapshot_schedule = as_schedule(snapshot_every)
        if snapshot_every and snapshot_fn is None:
            raise ValueError("snapshot_fn: needed when snapshot_every is set")
        self.snapshot_fn = snapshot_fn
        self.optimizer = optimizer
        self.quantiles = tuple(quantiles)
        self.quantile_names = [f"q{round(q * 100):02d}" for q in self.quantiles]
        self.max_edges = max_edges
        self.sort_edges = sort_edges
        self.exact_edges = exact_edges
        self.flush_every = flush_every
        self._generator = torch.Generator().manual_seed(seed)
        self.rows: List[tuple] = []
        self._pending: List[tuple] = []
        self._pending_steps = 0
        self._handles: list = []
        self._attached = False
        self._previous_keep: Dict[str, Tensor] = {}
        self._previous_kept: Dict[str, Tensor] = {}
        self._kept_count: Dict[str, Tensor] = {}  # int32 per-edge kept counts, folded from ...
        self._kept_partial: Dict[str, Tensor] = {}  # ... uint8 counts of up to 255 recent steps (no cast per step)
        self._partial_steps: Dict[str, int] = {}
        self._steps_counted: Dict[str, int] = {}
        self._before_update: Dict[str, Tensor] = {}
        self._subsets: Dict[tuple, Tensor] = {}
        self._keep_sample: Dict[str, tuple] = {}
        self._sorted: Dict[str, tuple] = {}  # name -> _remember(signal, argsort of its sort sample)
        self._step = 0

    # ---- lifecycle ----------------------------------------------------------

    def attach(self) -> "Recorder":
        if self._attached:
            return self
        for method in self._methods().values():
            method.keep_last = True
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
        self._attached = True
        return self

    def detach(self) -> None:
        for method in self._methods().values():
            method.keep_last = False
            method.last = None
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._sorted = {}
        self.flush()
        self._attached = False

    def __enter__(self) -> "Recorder":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return self._attached

    def _methods(self) -> Dict[str, LayerMethod]:
        # The recorded layers' own children: no walk over the whole model every step.
        return {name: layer._modules[ATTR] for name, layer in self.layers.items() if ATTR in layer._modules}

    # ---- per step -------------------------------------------------------------

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self.schedule(self._step):
            self._before_update = {n: m.weight.detach().clone() for n, m in self.layers.items()}

    @torch.no_grad()
    def step(self, step: Optional[int] = None, epoch: int = 0) -> None:
        """Call after each optimizer step (or after backward when there is none)."""
        if step is not None:
            self._step = step
        methods = self._methods()
        for name, method in methods.items():
            self._count_drops(name, method)
        if self.schedule(self._step):
            for name, layer in self.layers.items():
                names, values, samples = self._layer_quantities(name, layer, methods.get(name))
                self._pending.append((self._step, epoch, name, names, values, samples))
            self._before_update = {}
            self._pending_steps += 1
            if self._pending_steps >= self.flush_every:
                self._drain()
        if self.snapshot_schedule(self._step):
            self.snapshot_fn(self._step, self.snapshot(methods))
        for name, (step, _) in self._keep_sample.items():
            if step == self._step and name in methods:
                # Counted on its subset: nothing reads the full mask again, and held until
                # the next forward it would make that forward's mask fresh memory.
                methods[name].last.keep_mask = None
        self._step += 1

    def _count_drops(self, name: str, method: LayerMethod) -> None:
        """Per-edge count of steps the edge was kept.

        One byte-wide add of the mask per step; every 255 steps the bytes are
        folded into the int32 counts (an int32 += bool add casts the whole
        mask, which on a 16.8M-edge layer costs a quarter of a plain step).
        Layers up to ``max_edges`` edges add straight into the int32 counts.
        A layer above ``exact_edges`` (and ``max_edges``) whose full counts no
        snapshot will show is counted on its ``max_edges`` subset only.
        """
        keep = method.last.keep_mask if method.last is not None else None
        if keep is None:
            return
        per_sample = keep.dim() > self.layers[name].weight.dim()
        if not per_sample and self.snapshot_schedule is never and self._large(keep) and keep.numel() > self.max_edges:
            keep = self._sample(name, keep)
            self._keep_sample[name] = (self._step, keep)  # the mask statistics of this step reuse it
        shape = keep.shape[1:] if per_sample else keep.shape
        if name not in self._kept_count or self._kept_count[name].shape != shape:
            self._kept_count[name] = torch.zeros(shape, dtype=torch.int32, device=keep.device)
            self._kept_partial[name] = torch.zeros(shape, dtype=torch.uint8, device=keep.device)
            self._partial_steps[name] = 0
            self._steps_counted[name] = 0
        if per_sample:
            self._kept_count[name] += keep.sum(0, dtype=torch.int32)
            self._steps_counted[name] += keep.shape[0]
            return
        self._steps_counted[name] += 1
        if keep.numel() <= self.max_edges:  # small: one add straight into the counts beats add + fold
            self._kept_count[name] += keep
            return
        self._kept_partial[name] += keep.view(torch.uint8) if keep.dtype == torch.bool else keep.to(torch.uint8)
        self._partial_steps[name] += 1
        if self._partial_steps[name] == 255:
            self._fold(name)

    def _fold(self, name: str) -> None:
        if self._partial_steps.get(name):
            self._kept_count[name] += self._kept_partial[name]
            self._kept_partial[name].zero_()
            self._partial_steps[name] = 0

    def _kept_counts(self, name: str) -> Tensor:
        """The per-edge kept counts (int32), with the recent byte counts folded in."""
        self._fold(name)
        return self._kept_count[name]

    def _large(self, tensor: Tensor) -> bool:
        return self.exact_edges is not None and tensor.numel() > self.exact_edges

    def _whole(self, drop_prob) -> bool:
        """Whether this layer's drop probabilities are read in full (exact counts wanted), not on the subset."""
        return not (self._large(drop_prob) and drop_prob.numel() > self.max_edges)

    def _sample(self, name: str, tensor: Tensor, limit: Optional[int] = None) -> Tensor:
        """``tensor`` flattened, or its fixed random subset of ``limit`` entries when larger.

        Subsets of one layer are nested: the first ``sort_edges`` of the
        ``max_edges`` subset, so every statistic looks at the same edges. The
        indices of each part are kept in ascending order: a gather in memory
        order is tens of times faster on a large layer than a random one.
        """
        limit = self.max_edges if limit is None else limit
        numel = tensor.numel()
        if numel <= limit:
            return tensor.record.full_drop_prob().reshape(-1) if isinstance(tensor, _DropProbReader) else tensor.detach().reshape(-1)
        key = (name, numel)
        if key not in self._subsets:
            size = max(self.max_edges, self.sort_edges)
            perm = torch.randperm(numel, generator=self._generator)[:size]
            head, tail = perm[: self.sort_edges], perm[self.sort_edges :]
            self._subsets[key] = torch.cat([head.sort().values, tail.sort().values]).to(tensor.device)
        index = self._subsets[key][:limit]
        if isinstance(tensor, _DropProbReader):
            return tensor.record.drop_prob_at(index)
        return tensor.detach().reshape(-1).index_select(0, index)

    def _samples(self, name: str, tensor: Tensor):
        """``(_sample(tensor), _sample(tensor, sort_edges))``, the second cut from the first when it can be."""
        big = self._sample(name, tensor)
        if big.numel() > self.sort_edges and tensor.numel() > self.max_edges and self.sort_edges <= self.max_edges:
            return big, big[: self.sort_edges]
        return big, self._sample(name, tensor, self.sort_edges)

    def _layer_quantities(self, name: str, layer: nn.Module, method: Optional[LayerMethod]) -> Tuple[tuple, object, Optional[dict]]:
        """This step's quantities of one layer: their names, their values, and the sort samples.

        On the CPU the values are Python floats, the order statistics included,
        and the samples ``None``. On an accelerator the values are one float64
        vector of raw scalars with the plan that finishes them (see
        :class:`_Derived`), and the samples float64 copies, all left on the
        device until the next drain, which computes the order statistics on
        the host.
        """
        out: Dict[str, object] = {}
        samples: Dict[str, Tensor] = {}
        weight = layer.weight.detach()
        signal = self._signal(layer, method)
        if signal is not None:
            self._signal_stats(name, signal, out, samples)
        last = method.last if method is not None and method.last is not None else StepRecord()
        drop_prob, keep, scale = last.drop_prob, last.keep_mask, last.scale
        if drop_prob is None and last.has_drop_prob:
            reader = _DropProbReader(last)
            drop_prob = last.full_drop_prob() if self._whole(reader) else reader
        if drop_prob is not None:
            sample = self._drop_prob_stats(name, drop_prob, out, samples)
            if isinstance(method, DynamicDropConnect) and method.p_signal > 0:
                values = sample if self._large(drop_prob) else drop_prob
                n = values.numel()
                out["frac_q_positive"] = _Derived(lambda count: count / n, torch.count_nonzero(values > method.p_base))
            used = last.signal
            if used is not None and drop_prob.shape == used.shape:
                # ``used`` is the signal this step's drop probabilities came from (usually not the current one)
                samples["used"] = self._sample(name, used, self.sort_edges).abs()
        if keep is not None:
            self._mask_stats(name, keep, scale, out)
        if name in self._kept_count:
            self._drop_freq_stats(name, out)
        out["weight_norm"] = _norm(weight)
        if name in self._before_update:
            out["update_norm"] = _norm(weight - self._before_update[name])
        if isinstance(method, DynamicDropConnect):
            out["nonfinite_steps"] = method.nonfinite_steps
        names = list(out)
        raws, plan = _split(out)
        if not self._defer(weight):
            # On the CPU reading a value is no synchronisation: take Python floats now
            # rather than paying a dozen tensor ops to gather them into one vector.
            values = _finish(plan, [raw.item() for raw in raws])
            orders = {}
            order = _recall(self._sorted.get(name), last.signal)
            if order is not None:
                orders["used"] = order  # this signal's sample was sorted when it was recorded
            more_names, more = order_statistics(self.quantiles, self.quantile_names, samples, dict(zip(names, values)), orders)
            if signal is not None and "magnitude" in orders:
                self._sorted[name] = _remember(signal, orders["magnitude"])
            return tuple(names + more_names), values + more, None
        vector = torch.stack([raw.reshape(()).to(torch.float64) for raw in raws]) if raws else torch.zeros(0, dtype=torch.float64, device=weight.device)
        return tuple(names), (vector, plan), {key: value.to(torch.float64, copy=True) for key, value in samples.items()}

    @staticmethod
    def _defer(weight: Tensor) -> bool:
        """Whether this layer's values wait on the device for the drain (anything but the CPU)."""
        return weight.device.type != "cpu"

    def _mask_stats(self, name: str, keep: Tensor, scale: Tensor, out: Dict[str, object]) -> None:
        """Realised drop rate, recalibration keep rate and the overlap with the last recorded mask."""
        if self._large(keep):
            step, sample = self._keep_sample.get(name, (None, None))
            keep = sample if step == self._step else self._sample(name, keep)
        n = keep.numel()
        kept = torch.count_nonzero(keep)
        out["realized_drop_rate"] = _Derived(lambda k: 1.0 - k / n, kept)
        if scale.numel() > 1:
            scale = self._sample(name, scale) if self._large(scale) else scale
            out["recal_keep_rate"] = scale.float().reciprocal().mean()
        else:
            out["recal_keep_rate"] = _Derived(lambda s: 1.0 / s, scale.reshape(()))
        previous = self._previous_keep.get(name)
        if previous is not None and previous.shape == keep.shape:
            # Dropped sets D = ~K: |D & D'| = n - |K| - |K'| + |K & K'|, |D | D'| = n - |K & K'|.
            both_kept = torch.count_nonzero(keep & previous)
            out["mask_jaccard"] = _Derived(lambda k, k0, both: (n - k - k0 + both) / max(n - both, 1), kept, self._previous_kept[name], both_kept)
            previous.copy_(keep)
        else:
            self._previous_keep[name] = keep.clone()
        self._previous_kept[name] = kept

    def _drop_freq_stats(self, name: str, out: Dict[str, object]) -> None:
        """Mean, max and spread of the per-edge drop frequency (1 - kept count / steps) since attach."""
        steps = max(self._steps_counted[name], 1)
        total = self._kept_count[name]
        if self._large(total):
            counts = self._sample(name, total) + self._sample(name, self._kept_partial[name])
        else:
            counts = self._kept_counts(name)
        n = counts.numel()
        sample = self._sample(name, counts)
        sd, mean = _std_mean(sample)
        if sample.numel() == n:  # the whole layer: the moments' mean is the mean
            out["drop_freq_mean"] = _Derived(lambda kept: 1.0 - kept / steps, mean)
        else:
            out["drop_freq_mean"] = _Derived(lambda kept: 1.0 - kept / (n * steps), counts.sum())
        out["drop_freq_max"] = _Derived(lambda least: 1.0 - least / steps, counts.min())
        out["drop_freq_std"] = _Derived(lambda square_sum: sd.fn(square_sum) / steps, *sd.raw)

    @staticmethod
    def _signal(layer: nn.Module, method: Optional[LayerMethod]) -> Optional[Tensor]:
        if isinstance(method, DynamicDropConnect) and method.signal == "grad":
            return method.weight_signal
        return layer.weight.grad

    def _signal_stats(self, name: str, signal: Tensor, out: Dict[str, Tensor], samples: dict) -> None:
        big, small = self._samples(name, signal)
        sd, mu = _std_mean(big.abs())
        out["grad_abs_mean"], out["grad_abs_std"] = mu, sd
        samples["magnitude"] = small.abs()

    def _drop_prob_stats(self, name: str, drop_prob: Tensor, out: Dict[str, Tensor], samples: dict) -> Tensor:
        """Moments of the drop probability and its sort sample; returns the moments sample."""
        values, small = self._samples(name, drop_prob)
        if values.numel() > 1:
            out["drop_prob_std"], out["drop_prob_mean"] = _std_mean(values)
        else:
            out["drop_prob_std"], out["drop_prob_mean"] = 0.0, values.mean()
        out["drop_prob_min"], out["drop_prob_max"] = torch.aminmax(values)
        samples["drop_prob"] = small
        return values

    def snapshot(self, methods: Optional[Dict[str, LayerMethod]] = None) -> dict:
        """Full tensors per layer (on the CPU): drop probability, mask, signal, weight, drop counts."""
        methods = self._methods() if methods is None else methods
        tensors = {}
        for name, layer in self.layers.items():
            method = methods.get(name)
            last = method.last if method is not None and method.last is not None else StepRecord()
            entry = {"weight": layer.weight.detach().cpu().clone()}
            signal = self._signal(layer, method)
            if signal is not None:
                entry["signal"] = signal.detach().cpu().clone()
            if last.has_drop_prob:
                entry["drop_prob"] = last.full_drop_prob().detach().cpu().clone()
            if last.keep_mask is not None:
                entry["keep"] = last.keep_mask.detach().cpu().clone()
            if name in self._kept_count and name not in self._keep_sample:  # (not when counted on a subset)
                entry["drop_count"] = (self._steps_counted[name] - self._kept_counts(name)).cpu()
                entry["steps_counted"] = self._steps_counted[name]
            tensors[name] = entry
        return tensors

    # ---- checkpoints ----------------------------------------------------------

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the recording seamlessly."""
        self._drain()
        for name in self._kept_count:
            self._fold(name)
        return {
            "step": self._step,
            "previous_keep": {k: v.cpu() for k, v in self._previous_keep.items()},
            "previous_kept": {k: v.cpu() for k, v in self._previous_kept.items()},
            "kept_count": {k: v.cpu() for k, v in self._kept_count.items()},
            "steps_counted": dict(self._steps_counted),
            "subsets": {k: v.cpu() for k, v in self._subsets.items()},
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        device = next(iter(self.layers.values())).weight.device
        self._step = state["step"]
        self._previous_keep = {k: v.to(device) for k, v in state["previous_keep"].items()}
        self._previous_kept = {k: v.to(device) for k, v in state["previous_kept"].items()}
        self._kept_count = {k: v.to(device) for k, v in state["kept_count"].items()}
        self._kept_partial = {k: torch.zeros(v.shape, dtype=torch.uint8, device=device) for k, v in self._kept_count.items()}
        self._partial_steps = {k: 0 for k in self._kept_count}
        self._steps_counted = dict(state["steps_counted"])
        self._subsets = {k: v.to(device) for k, v in state["subsets"].items()}
        self._generator.set_state(state["generator"])

    # ---- output ---------------------------------------------------------------

    def _drain(self) -> None:
        """Move pending device values (and sort samples) to the host in one transfer and emit rows."""
        if not self._pending:
            return
        on_device = []
        for *_, values, samples in self._pending:
            if samples is not None:
                on_device.append(values[0])
                on_device.extend(samples.values())
        host = torch.cat(on_device).cpu().numpy() if on_device else None
        position = 0
        for step, epoch, layer, names, values, samples in self._pending:
            if samples is not None:
                vector, plan = values
                values = _finish(plan, host[position : position + vector.numel()].tolist())
                position += vector.numel()
                arrays = {}
                for key, sample in samples.items():
                    arrays[key] = host[position : position + sample.numel()]
                    position += sample.numel()
                more_names, more = order_statistics(self.quantiles, self.quantile_names, arrays, dict(zip(names, values)))
                names, values = tuple(names) + tuple(more_names), values + more
            for metric, value in zip(names, values):
                self._emit(step, epoch, layer, metric, value)
        self._pending = []
        self._pending_steps = 0

    def _emit(self, step, epoch, layer, metric, value) -> None:
        if self.writer is not None:
            self.writer.add(step, epoch, layer, metric, value)
        else:
            self.rows.append((step, epoch, layer, metric, value))

    def flush(self) -> None:
        self._drain()
        if self.writer is not None:
            self.writer.flush()

    def to_frame(self):
        """Rows kept in memory (no writer) as a DataFrame."""
        from ._optional import require

        pd = require("pandas", "Recorder.to_frame")

        self._drain()
        return pd.DataFrame(self.rows, columns=["step", "epoch", "layer", "metric", "value"])
