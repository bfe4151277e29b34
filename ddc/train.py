"""Training: one loop (:func:`fit`), and one run from one config (:func:`run`).

:func:`fit` is the training loop of every run and experiment: mini-batch SGD
over tensors, with :class:`Callback` hooks per epoch and per step, and
:class:`Selection` (validation chooses the epoch whose weights are kept).

``run(config, root)`` trains a model with a method on a dataset through
:func:`fit` and writes a run directory into the run store (see
:mod:`ddc.store`). Guarantees:

- **Paired runs.** The seed fixes the data (split, subsets), the initial
  weights, the data order and the masks, whatever the method: masks draw from
  their own generator, never from the global RNG or the data-order generator.
  Each of the four sources may get a seed of its own (``data_seed``,
  ``init_seed``, ``order_seed``, ``mask_seed``), to vary one at a time.
- **Selection on validation.** The reported ``test_acc`` is the test accuracy
  at the epoch with the best validation accuracy (regression: lowest
  validation loss); the last epoch's numbers are reported beside it.
- **One run id, one result.** The same config gives the same numbers on the
  same machine: every run trains with ``num_threads`` torch threads (default
  :data:`DEFAULT_THREADS`, whoever starts it: ``ddc train``, a sweep worker, a
  notebook), and the thread count and the device are part of the run's id.
  The torch version, thread count and device are stored with the run
  (``config.json``: ``environment``).
- **One writer.** ``run`` holds the run's lock (:func:`ddc.store.run_lock`)
  while it trains and publishes; a second writer waits, then finds the run
  finished. Every check of the config, the data, the model and the device
  happens before anything is written (:class:`RunSetupError`).
- **Resumable.** A checkpoint is written atomically at the end of every epoch;
  calling ``run`` again with the same config continues where it stopped, says
  so (with the epoch), records it in the summary (``resumed_at_epochs``), and
  refuses to resume under another torch version, thread count or device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import store
from .apply import apply, make_method, method_defaults
from .functional import check_choice

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("warmup_cosine", "cosine", "constant")
#: fields that do not change a run's numbers, so they stay out of its id
OPERATIONAL = ("data_root", "progress", "tag")
#: torch threads of every run whose config leaves ``num_threads`` unset, whoever
#: starts it: another thread count can pick other kernels and other low-order bits
DEFAULT_THREADS = 1
#: fields added after run ids were first published, with the default that
#: reproduces the earlier behaviour: while a field holds it, it stays out of the
#: id, so every earlier run keeps its id (and its stored results)
LATER_FIELDS = {"classes": None, "num_threads": None, "data_seed": None, "init_seed": None, "order_seed": None, "mask_seed": None}
#: the sources of randomness that ``seed`` drives, each of which may get its own seed
#: (Bouthillier et al., 2021, "Accounting for variance in machine learning benchmarks")
SEED_SOURCES = ("data_seed", "init_seed", "order_seed", "mask_seed")
MASK_SEED_OFFSET = 1_000_003


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults follow the authors' MNIST recipe.

    Raises:
        Nothing on construction (fields are not checked there); :meth:`validate`
        and :meth:`from_dict` raise ``ValueError`` for a bad field.
    """

    dataset: str = "fashion_mnist"
    model: str = "simplecnn1"
    method: str = "none"
    method_options: Dict[str, Any] = field(default_factory=dict)
    layers: Optional[List[str]] = None
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    optimizer: str = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "warmup_cosine"
    warmup_epochs: int = 5
    min_lr: float = 0.001
    seed: int = 0
    #: per-source seeds; None (the default) follows ``seed``. ``data_seed``: the
    #: validation split, the subsets and generated datasets; ``init_seed``: the
    #: initial weights; ``order_seed``: the mini-batch order; ``mask_seed``: the
    #: method's masks. A source seed equal to ``seed`` is the same run (same id).
    data_seed: Optional[int] = None
    init_seed: Optional[int] = None
    order_seed: Optional[int] = None
    mask_seed: Optional[int] = None
    device: str = "cpu"
    val_fraction: float = 0.1
    train_subset: Optional[int] = None
    val_subset: Optional[int] = None
    test_subset: Optional[int] = None
    #: class ids to keep (train, val and test), relabelled 0..k-1 in ascending
    #: order; None keeps every class. See ``ddc.data.load(classes=...)``.
    classes: Optional[List[int]] = None
    record_every: int = 0
    snapshot_every: int = 0
    data_root: Optional[str] = None
    num_threads: Optional[int] = None
    progress: bool = True
    tag: str = ""

    # ---- construction and validation ---------------------------------------

    @classmethod
    def field_names(cls) -> List[str]:
        """The names of every config field, in declaration order.

        Raises:
            Nothing.
        """
        return [config_field.name for config_field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """Build a config from ``{field: value}`` and validate it (:meth:`validate`).

        Raises:
            ValueError: an unknown field (the message lists the allowed ones) or a bad value.
        """
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(map(repr, unknown))}; allowed fields: {', '.join(cls.field_names())}"
            )
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> "TrainConfig":
        """Check every field and make the config canonical (method options spelled out, sorted classes,
        the default thread count as None), so that equal settings get equal run ids; returns ``self``.

        Raises:
            ValueError: a field holds a value it does not allow; the message names the field and the allowed values.
        """
        from .data import DATASETS, check_classes
        from .models import MODELS

        check_choice("dataset", self.dataset, DATASETS)
        # canonical: sorted, and None when every class is named (the same data)
        kept = check_classes(self.dataset, self.classes)
        self.classes = None if kept is None else list(kept)
        check_choice("model", self.model, tuple(MODELS))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        if not isinstance(self.method_options, dict):
            raise ValueError(f"method_options={self.method_options!r} must be a mapping of option names to values")
        make_method(self.method, **self.method_options)  # checks the method and its options
        # Spell out every option, so the stored config is complete and equal
        # settings get equal run ids whether or not a default was written out.
        self.method_options = {**method_defaults(self.method), **self.method_options}
        for name in ("epochs", "batch_size", "eval_batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_epochs", "record_every", "snapshot_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("train_subset", "val_subset", "test_subset", "num_threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        for name in SEED_SOURCES:
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=0)
        if self.num_threads == DEFAULT_THREADS:  # canonical: the default is the same run
            self.num_threads = None
        _check_device_name(self.device)
        for name in ("lr", "min_lr", "weight_decay", "momentum"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative number")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} must be positive")
        if self.momentum >= 1:
            raise ValueError(f"momentum={self.momentum!r} must lie in [0, 1)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction!r} must lie in (0, 1)")
        if self.layers is not None and (isinstance(self.layers, str) or not all(isinstance(layer, str) for layer in self.layers)):
            raise ValueError(f"layers={self.layers!r} must be a list of layer names or glob patterns, or None")
        if self.layers is not None and not any(layer.strip() for layer in self.layers):
            raise ValueError(f"layers={self.layers!r} must name at least one layer (or be None: the model's paper layer)")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """Every field as plain values (what ``config.json`` stores).

        Raises:
            Nothing of its own (``dataclasses.asdict`` deep-copies the values).
        """
        return dataclasses.asdict(self)

    def source_seed(self, source: str) -> int:
        """The seed of one source of randomness (``"data"``, ``"init"``, ``"order"`` or ``"mask"``).

        Raises:
            ValueError: ``source`` is not one of those.
        """
        check_choice("source", source, tuple(name[: -len("_seed")] for name in SEED_SOURCES))
        value = getattr(self, f"{source}_seed")
        return self.seed if value is None else value

    def run_id(self) -> str:
        """Stable id: readable prefix plus a hash of every field that affects the numbers.

        Fields added later (:data:`LATER_FIELDS`) stay out of the hash at their
        default, and a source seed equal to ``seed`` is the default, so every
        earlier run keeps its id.

        Raises:
            Nothing (values JSON cannot encode are hashed as their ``str``).
        """
        identity = {
            name: value
            for name, value in self.to_dict().items()
            if name not in OPERATIONAL
            and not (name in LATER_FIELDS and value == LATER_FIELDS[name])
            and not (name in SEED_SOURCES and value == self.seed)
        }
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.dataset}-{self.model}-{self.method}-s{self.seed}-{digest}"


class RunSetupError(ValueError):
    """A run cannot start: a bad config value, missing or broken data, layers that do not fit
    the model, an unavailable device. Raised before anything is written into the run store.

    Raises:
        Nothing; it is what setting up a run raises.
    """


def _check_device_name(device) -> None:
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be a string such as 'cpu', 'cuda' or 'cuda:1'")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None


def check_device(device: str) -> None:
    """Check that this process can use ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).

    Raises:
        ValueError: ``device`` is not a device name, or not available here; the message names it.
    """
    _check_device_name(device)
    parsed = torch.device(device)
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device={device!r} is not available: this torch ({torch.__version__}) sees no CUDA device; use device='cpu'")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device={device!r} is not available: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return
    raise ValueError(f"device={device!r} is not available here; use device='cpu'")


def environment(config: "TrainConfig") -> Dict[str, Any]:
    """What changes a run's numbers besides its config: torch version, thread count, device.

    Raises:
        Nothing.
    """
    return {"torch": torch.__version__, "num_threads": config.num_threads or DEFAULT_THREADS, "device": config.device}


class ReusedRunWarning(UserWarning):
    """A finished run is reused by its id although it was made under another environment (another torch version).

    Raises:
        Nothing; it is what :func:`warn_if_made_elsewhere` warns with.
    """


#: run ids this process has warned about (:func:`warn_if_made_elsewhere` warns once per run)
_WARNED_REUSED: set = set()


def environment_change(config: "TrainConfig", run_path) -> str:
    """How the environment a finished run at ``run_path`` was made under differs from this process's.

    ``""`` when they agree, or when the run predates recorded environments.
    Otherwise e.g. ``"torch '2.12.0' (here '2.13.0')"``, one entry per
    differing key of :func:`environment`. An unreadable ``config.json`` counts as unknown.

    Raises:
        Nothing (an unreadable or unrecorded environment gives ``""``).
    """
    try:
        stored = store.read_json(Path(run_path) / "config.json").get("environment")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(stored, dict):
        return ""
    current = environment(config)
    return ", ".join(f"{key} {stored.get(key)!r} (here {current[key]!r})" for key in current if stored.get(key) != current[key])


def warn_if_made_elsewhere(reused: Sequence[Tuple["TrainConfig", Path]], *, stacklevel: int = 2) -> None:
    """One :class:`ReusedRunWarning` naming the finished runs among ``reused`` (``(config, run path)``
    pairs, reused as they are) that were made under another environment than this process's.

    Each run is named once per process. A run's id covers its seed, config,
    thread count and device, not the torch version: another version may pick
    other kernels, so its numbers could differ in their low-order bits from a
    run trained here. ``stacklevel``: as for :func:`warnings.warn`, counted from
    the caller (2, the default: the caller's caller is named).

    Raises:
        ReusedRunWarning: only as an exception where warnings are errors (``-W error``).
    """
    changes = []
    for config, run_path in reused:
        run_id = config.run_id()
        change = environment_change(config, run_path)
        if change and run_id not in _WARNED_REUSED:
            _WARNED_REUSED.add(run_id)
            changes.append(f"run {run_id} at {run_path} was made under {change}")
    if not changes:
        return
    shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more such runs" if len(changes) > 5 else "")
    warnings.warn(
        f"{shown}; reused as {'it is' if len(changes) == 1 else 'they are'}: a run id covers the seed, the config, "
        f"the thread count and the device, not the torch version (move a run away to train it again here)",
        ReusedRunWarning,
        stacklevel=stacklevel + 1,
    )


@contextlib.contextmanager
def _torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


# ----------------------------------------------------------------------------- schedule


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The authors' per-epoch schedule: linear warm-up, then cosine down to ``min_lr``.

    When ``lr <= min_lr`` the schedule is constant (their MNIST recipe).

    Raises:
        Nothing of its own (the config is validated before).
    """
    base, floor = config.lr, min(config.min_lr, config.lr)
    if config.schedule == "constant" or base <= floor:
        return base
    warmup = config.warmup_epochs if config.schedule == "warmup_cosine" else 0
    warmup = min(warmup, max(config.epochs - 1, 0))
    if epoch < warmup:
        return base * (epoch + 1) / (warmup + 1)
    span = max(config.epochs - warmup - 1, 1)
    progress = min((epoch - warmup) / span, 1.0)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- the loop


@dataclass
class Step:
    """One optimizer step, as :meth:`Callback.on_step` sees it (after ``optimizer.step()``).

    Raises:
        Nothing (fields are not checked).
    """

    #: steps taken before this one, over the whole run (0-based)
    index: int
    #: the epoch it belongs to (0-based)
    epoch: int
    #: the mini-batch: ``(batch, *input_shape)``
    inputs: Tensor
    #: its targets: ``(batch,)`` class ids, or ``(batch, 1)`` for regression
    targets: Tensor
    #: ``model(inputs)`` in training mode: ``(batch, classes)`` or ``(batch, 1)``
    outputs: Tensor
    #: the batch's mean loss (a scalar tensor, still attached to its graph)
    loss: Tensor
    #: the epoch's learning rate, or None when :func:`fit` leaves it to the optimizer
    lr: Optional[float]


@dataclass
class Best:
    """The epoch that validation chose (:class:`Selection`).

    Raises:
        Nothing (fields are not checked).
    """

    #: its index (0-based)
    epoch: int
    #: the selection score: higher is better (validation accuracy, or minus validation loss)
    score: float
    #: ``{split: {metric: value}}`` of that epoch: ``train`` (running means) and ``val``;
    #: a caller adds ``test`` once it has evaluated the chosen weights
    metrics: Dict[str, Dict[str, float]]
    #: ``model.state_dict()`` at its end, cloned
    weights: Dict[str, Tensor]


@dataclass
class FitState:
    """Where a :func:`fit` loop stands. Callbacks read it; pass it back to ``fit`` to continue.

    Raises:
        Nothing (fields are not checked).
    """

    #: epochs finished
    epoch: int = 0
    #: optimizer steps taken
    step: int = 0
    #: seconds spent inside the epochs' step loops (the steps and the ``on_step`` hooks)
    train_time: float = 0.0
    #: the number of epochs ``fit`` was asked for (None: until ``max_steps``)
    epochs: Optional[int] = None
    #: the current epoch's learning rate (None when ``fit`` does not set it)
    lr: Optional[float] = None
    #: the last epoch's running means over its batches: ``loss``, and ``acc`` for classification
    train_metrics: Dict[str, float] = field(default_factory=dict)
    #: the last epoch's validation metrics, when :class:`Selection` evaluated it (else None)
    val_metrics: Optional[Dict[str, float]] = None
    #: the best epoch so far, by validation (:class:`Selection`)
    best: Optional[Best] = None


class Callback:
    """A hook into :func:`fit`; override the methods you need (each does nothing by default).

    ``fit`` calls every callback, in list order: ``on_epoch_start`` after it
    set the epoch's learning rate; ``on_step`` after each optimizer step
    (``state.step`` still counts the steps before it); ``on_epoch_end`` after
    it updated ``state.epoch`` and ``state.train_metrics``. A callback that
    puts the model into eval mode need not restore it: every step starts with
    ``model.train()``.

    Raises:
        Nothing; a hook's own error stops :func:`fit` and passes through it.
    """

    def on_epoch_start(self, state: FitState) -> None:
        """Called before the epoch's first step.

        Raises:
            Nothing (does nothing by default).
        """

    def on_step(self, state: FitState, step: Step) -> None:
        """Called after each optimizer step.

        Raises:
            Nothing (does nothing by default).
        """

    def on_epoch_end(self, state: FitState) -> None:
        """Called after the epoch's last step.

        Raises:
            Nothing (does nothing by default).
        """


class Selection(Callback):
    """Validation chooses: evaluate on validation, keep the weights of the best epoch.

    ``validate(model) -> {metric: value}`` runs after every ``every``-th epoch
    and after the last one (it must leave the model's weights alone). The
    epoch with the highest ``metric`` (the lowest, with ``maximize=False``)
    wins; a tie keeps the earlier epoch. Sets ``state.val_metrics`` (None on
    the epochs it skips) and ``state.best``. The test split is never looked at
    here: a caller evaluates it on ``state.best.weights`` once training ends.

    Raises:
        ValueError: ``every`` is not a positive integer.
    """

    def __init__(self, model: nn.Module, validate: Callable[[nn.Module], Dict[str, float]], *,
                 metric: str = "acc", maximize: bool = True, every: int = 1):
        _check_int("every", every, minimum=1)
        self.model, self.validate, self.metric, self.maximize, self.every = model, validate, metric, maximize, every

    def on_epoch_end(self, state: FitState) -> None:
        """Evaluate on validation when due; keep the weights when the score beats the best so far.

        Raises:
            KeyError: ``validate``'s result lacks ``metric``. ``validate``'s own errors pass through.
        """
        if state.epoch % self.every and state.epoch != state.epochs:
            state.val_metrics = None
            return
        state.val_metrics = metrics = self.validate(self.model)
        score = metrics[self.metric] if self.maximize else -metrics[self.metric]
        if state.best is None or score > state.best.score:  # ties keep the earlier epoch
            weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
            state.best = Best(epoch=state.epoch - 1, score=score, weights=weights,
                              metrics={"train": dict(state.train_metrics), "val": metrics})


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch_size: int,
    order_generator: torch.Generator,
    epochs: Optional[int] = None,
    max_steps: Optional[int] = None,
    learning_rate: Optional[Callable[[int], float]] = None,
    drop_last: bool = False,
    task: str = "classification",
    callbacks: Sequence[Callback] = (),
    state: Optional[FitState] = None,
) -> FitState:
    """The training loop of every run and experiment: mini-batch SGD over tensors, with callbacks.

    Each epoch draws a permutation of the ``len(inputs)`` examples from
    ``order_generator`` (the data order, and nothing else, comes from it) and
    takes mini-batches of ``batch_size`` in that order; with ``drop_last`` an
    incomplete last batch is skipped, unless it is the epoch's only one. Each
    step: ``model.train()``, ``loss = loss_fn(model(x), y)``,
    ``optimizer.zero_grad(set_to_none=True)``, ``loss.backward()``,
    ``optimizer.step()``. ``learning_rate(epoch)``, when given, sets every
    parameter group's rate at the start of each epoch.

    ``inputs``: ``(N, *input_shape)``; ``targets``: ``(N,)`` class ids, or
    ``(N, 1)`` with ``task="regression"`` (no accuracy is counted then). Runs
    until ``epochs`` epochs are finished or ``max_steps`` steps are taken
    (an epoch cut short still ends, with its callbacks). ``state``: a state
    from an earlier call (a resumed run) to continue from; returns the state.

    Raises:
        ValueError: neither ``epochs`` nor ``max_steps`` is given, or ``batch_size`` is not a positive integer.
    """
    if epochs is None and max_steps is None:
        raise ValueError("fit needs epochs or max_steps (or both)")
    _check_int("batch_size", batch_size, minimum=1)
    state = FitState() if state is None else state
    state.epochs = epochs
    while (epochs is None or state.epoch < epochs) and (max_steps is None or state.step < max_steps):
        state.lr = None if learning_rate is None else learning_rate(state.epoch)
        if state.lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = state.lr
        for callback in callbacks:
            callback.on_epoch_start(state)
        _fit_epoch(model, optimizer, inputs, targets, loss_fn, batch_size, order_generator, max_steps, drop_last,
                   task, callbacks, state)
        state.epoch += 1
        for callback in callbacks:
            callback.on_epoch_end(state)
    return state


def _fit_epoch(model, optimizer, inputs, targets, loss_fn, batch_size, order_generator, max_steps, drop_last, task,
               callbacks, state: FitState) -> None:
    """One epoch of :func:`fit`: its steps, their callbacks, and the epoch's running means."""
    started = time.perf_counter()
    order = torch.randperm(len(inputs), generator=order_generator).to(inputs.device)
    running_loss = torch.zeros((), dtype=torch.float64, device=inputs.device)
    running_correct = torch.zeros((), dtype=torch.long, device=inputs.device)
    seen = 0
    for index in _batches(order, batch_size, drop_last):
        model.train()
        batch_inputs, batch_targets = inputs[index], targets[index]
        outputs = model(batch_inputs)
        loss = loss_fn(outputs, batch_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running_loss += loss.detach().double() * len(index)
        seen += len(index)
        if task != "regression":
            running_correct += (outputs.detach().argmax(1) == batch_targets).sum()
        step = Step(state.step, state.epoch, batch_inputs, batch_targets, outputs, loss, state.lr)
        for callback in callbacks:
            callback.on_step(state, step)
        state.step += 1
        if max_steps is not None and state.step >= max_steps:
            break
    state.train_time += time.perf_counter() - started
    state.train_metrics = {"loss": running_loss.item() / seen}
    if task != "regression":
        state.train_metrics["acc"] = running_correct.item() / seen


def _batches(order: Tensor, batch_size: int, drop_last: bool) -> Iterator[Tensor]:
    """Consecutive slices of ``order`` of ``batch_size``; ``drop_last`` skips a short last one unless it is the only one."""
    stop = len(order) - len(order) % batch_size if drop_last and len(order) >= batch_size else len(order)
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


# ----------------------------------------------------------------------------- the run

#: keys of ``summary.json`` (classification and regression runs; a resumed run adds ``resumed_at_epochs``)
SUMMARY_KEYS = (
    "best_epoch", "epochs", "steps", "train_time_s", "n_train", "n_val", "n_test",
    "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc", "final_test_loss", "final_test_acc",
    "best_val_acc", "generalization_gap", "best_val_loss",
)
#: the files a published run must hold
RUN_FILES = ("config.json", "metrics.parquet", "model.pt")


@dataclass
class RunState(FitState):
    """A run's :class:`FitState` plus what its checkpoint keeps for a resume.

    Raises:
        Nothing (fields are not checked).
    """

    #: ``metrics.parquet`` so far, one dict per row (:data:`ddc.store.METRIC_COLUMNS`)
    metric_rows: List[Dict[str, Any]] = field(default_factory=list)
    #: the last epoch's ``{split: {metric: value}}`` (``train``, ``val``; ``test`` once reported)
    last: Optional[Dict[str, Dict[str, float]]] = None
    #: what the run trains under (:func:`environment`)
    environment: Dict[str, Any] = field(default_factory=dict)
    #: the epochs at which it was resumed
    resumed_at_epochs: List[int] = field(default_factory=list)
    #: record parts written by the end of the last finished epoch
    record_parts: int = 0
    #: the Recorder's state at the end of the last finished epoch
    recorder: Optional[Dict[str, Any]] = None

    def to_checkpoint(self) -> Dict[str, Any]:
        """The plain dict a checkpoint stores (the same keys since the first checkpoints).

        Raises:
            Nothing.
        """
        saved = {"epoch": self.epoch, "step": self.step, "metrics": self.metric_rows, "last": self.last,
                 "train_time": self.train_time, "environment": self.environment, "resumed": self.resumed_at_epochs,
                 "record_parts": self.record_parts}
        if self.best is not None:
            saved["best"] = {"score": self.best.score, "epoch": self.best.epoch, "metrics": self.best.metrics}
            saved["best_model"] = self.best.weights
        if self.recorder is not None:
            saved["recorder"] = self.recorder
        return saved

    @classmethod
    def from_checkpoint(cls, saved: Dict[str, Any]) -> "RunState":
        """The state that :meth:`to_checkpoint` stored.

        Raises:
            KeyError: ``saved`` lacks ``epoch``, ``step``, ``train_time`` or
                ``metrics`` (or ``best_model`` beside ``best``).
        """
        best = saved.get("best")
        return cls(
            epoch=saved["epoch"], step=saved["step"], train_time=saved["train_time"], metric_rows=saved["metrics"],
            last=saved.get("last"), environment=saved.get("environment") or {}, resumed_at_epochs=list(saved.get("resumed", [])),
            record_parts=saved.get("record_parts", 0), recorder=saved.get("recorder"),
            best=None if best is None else Best(best["epoch"], best["score"], best["metrics"], saved["best_model"]),
        )


def load_splits(config: TrainConfig):
    """The data of ``config`` (:func:`ddc.data.load` with the config's data fields).

    Raises:
        ValueError: the data do not fit the config.
        FileNotFoundError: the dataset's files are missing.
    """
    from . import data

    return data.load(
        config.dataset,
        root=config.data_root,
        val_fraction=config.val_fraction,
        seed=config.source_seed("data"),
        train_subset=config.train_subset,
        val_subset=config.val_subset,
        test_subset=config.test_subset,
        classes=config.classes,
    )


def data_fingerprint(splits) -> str:
    """``"sha256:<hex>"``: what ``splits`` hold, wherever their files lay.

    :func:`ddc.data.load` computes it over the chosen examples as stored (before
    scaling and normalisation, the same on every CPU) and their labels
    (``info["fingerprint"]``); splits made otherwise are hashed here, tensor by tensor.
    Recorded in a run's ``config.json`` (``data_info.fingerprint``) and
    ``summary.json`` (``data_fingerprint``), and compared before a finished run
    is reused or an interrupted one resumed (:func:`check_same_data`).

    Raises:
        Nothing of its own; ``splits`` without ``train``/``val``/``test`` datasets raises ``AttributeError``.
    """
    recorded = (getattr(splits, "info", None) or {}).get("fingerprint")
    if recorded:
        return recorded
    digest = hashlib.sha256()
    for split in (splits.train, splits.val, splits.test):
        for tensor in split.tensors:
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return f"sha256:{digest.hexdigest()}"


def recorded_data(run_path) -> Tuple[Optional[str], Optional[str]]:
    """``(fingerprint, data_root)`` a run at ``run_path`` recorded in its ``config.json``;
    ``(None, None)`` when it predates data fingerprints (or its config cannot be read).

    Raises:
        AttributeError: ``config.json`` holds JSON that is not an object (or ``data_info`` is not one).
    """
    try:
        recorded = store.read_json(Path(run_path) / "config.json")
    except (OSError, ValueError):
        return None, None
    return (recorded.get("data_info") or {}).get("fingerprint"), recorded.get("data_root")


def check_same_data(config: TrainConfig, run_path, splits=None, *, current: Optional[str] = None, what: str = "reused"):
    """Refuse to reuse (or resume) the run at ``run_path`` for ``config`` when it was made from other data.

    The run's recorded fingerprint (:func:`recorded_data`) is compared with
    ``current``, else :func:`data_fingerprint` of ``splits``, else of the data
    ``config`` loads now. Runs recorded before fingerprints existed are reused
    unchecked, and so is a finished run whose data cannot be loaded here (no data is
    about to be used). Returns the splits it loaded (or ``splits``; None when it loaded none).

    Raises:
        RunSetupError: the fingerprints differ; the message names the run, both fingerprints and data roots, and what to do.
    """
    recorded, recorded_root = recorded_data(run_path)
    if recorded is None:
        return splits
    if current is None:
        if splits is None:
            try:
                with _torch_threads(config.num_threads or DEFAULT_THREADS):
                    splits = load_splits(config)
            except (ValueError, FileNotFoundError):
                return None
        current = data_fingerprint(splits)
    if current != recorded:
        raise RunSetupError(
            f"run {Path(run_path).name} at {run_path} was made from other data than would be {what} here: its data "
            f"fingerprint {recorded} (data_root {recorded_root or 'default'}) differs from {current} of the "
            f"{config.dataset} data found now (data_root {config.data_root or 'default'}); use another --root for "
            f"runs of this data, or move that run away to train it again"
        )
    return splits


def build(config: TrainConfig, splits=None):
    """Data, model (seeded init) and method handle for ``config``: ``(splits, model, handle)``.

    ``splits``: data already loaded for ``config`` (:func:`ddc.data.load`), else it is loaded here.

    Raises:
        ValueError: the data, the model or the layers do not fit the config.
        FileNotFoundError: the dataset's files are missing.
    """
    from . import models

    if splits is None:
        splits = load_splits(config)
    torch.manual_seed(config.source_seed("init"))  # the same initial weights for every method
    model = models.build(config.model, input_shape=splits.input_shape, num_classes=splits.num_classes)
    model.to(config.device)
    handle = apply(
        model,
        config.method,
        layers=config.layers,
        seed=config.source_seed("mask") + MASK_SEED_OFFSET,
        **config.method_options,
    )
    return splits, model, handle


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _to_device(dataset, device):
    inputs, targets = dataset.tensors
    return inputs.to(device), targets.to(device)


def loss_function(task: str) -> Callable[..., Tensor]:
    """The training loss of a task: mean squared error for ``"regression"``, else cross-entropy.

    Raises:
        Nothing (any other ``task`` gets cross-entropy).
    """
    return nn.functional.mse_loss if task == "regression" else nn.functional.cross_entropy


@torch.no_grad()
def evaluate(model: nn.Module, inputs: Tensor, targets: Tensor, task: str, batch_size: int) -> Dict[str, float]:
    """Mean loss and (classification) accuracy in eval mode, in batches of ``batch_size``.

    ``inputs``: ``(N, *input_shape)``; ``targets``: ``(N,)`` class ids or
    ``(N, k)`` regression targets. Returns ``{"loss": ...}`` (per example;
    regression: per target element) plus ``"acc"`` (a fraction) for
    classification. Leaves the model in eval mode.

    Raises:
        ValueError: ``batch_size`` is 0 (``range``).
        ZeroDivisionError, IndexError: no examples (classification, regression).
        The model's and the loss's errors (a shape mismatch: ``RuntimeError``) pass through.
    """
    model.eval()
    loss_fn = loss_function(task)
    total_loss = torch.zeros((), dtype=torch.float64, device=inputs.device)
    correct = torch.zeros((), dtype=torch.long, device=inputs.device)
    for start in range(0, len(inputs), batch_size):
        batch_inputs, batch_targets = inputs[start : start + batch_size], targets[start : start + batch_size]
        outputs = model(batch_inputs)
        total_loss += loss_fn(outputs, batch_targets, reduction="sum").double()
        if task != "regression":
            correct += (outputs.argmax(1) == batch_targets).sum()
    count = len(inputs)
    result = {"loss": total_loss.item() / (count * (targets[0].numel() if task == "regression" else 1))}
    if task != "regression":
        result["acc"] = correct.item() / count
    return result


def run(config: TrainConfig, root, *, splits=None, wait: bool = True, log: Optional[Callable[[str], None]] = None) -> Path:
    """Train ``config`` and publish its run directory under ``root``; returns its path.

    A finished run with the same id is returned as it is (nothing retrained;
    :class:`ReusedRunWarning` when it was made under another torch version).
    An unfinished one with a checkpoint is resumed (``log`` says so).
    ``splits``: the config's data, already loaded. ``log``: one-line notes
    (default: stderr). With ``wait`` (the default) a run that another process
    is writing is waited for.

    Raises:
        RunSetupError: the config cannot run (nothing written), or a resume would change its environment.
        ddc.store.RunPathOccupied: something that is not a finished run sits at the run's path (it is left alone).
        ddc.store.RunBusy: another process writes the run and ``wait`` is False.
        ddc.store.StoreWriteError: the store cannot be written.
        ddc._optional.MissingExtra: pandas or pyarrow is not installed (``pip install 'ddc[runs]'``); nothing written.
    """
    log = log or _to_stderr
    store.require_parquet()
    try:
        config.validate()
        run_dir = store.RunDir(root, config.run_id())
        if run_dir.finished:
            check_same_data(config, run_dir.final, splits)
            warn_if_made_elsewhere([(config, run_dir.final)])
            return run_dir.final
        run_dir.check_final_path()
        check_device(config.device)
        with _torch_threads(config.num_threads or DEFAULT_THREADS):  # data statistics are reductions too
            splits, model, handle = build(config, splits)
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise RunSetupError(str(error)) from error
    run_id = run_dir.run_id

    def waiting(holder: str) -> None:
        log(f"run {run_id} is being written by {holder}; waiting for it to finish (Ctrl-C to stop waiting)")

    try:
        with store.run_lock(root, run_id, wait=wait, on_wait=waiting):
            if run_dir.finished:  # the other writer finished it while this one waited
                check_same_data(config, run_dir.final, splits)
                warn_if_made_elsewhere([(config, run_dir.final)])
                return run_dir.final
            run_dir.check_final_path()
            with _torch_threads(config.num_threads or DEFAULT_THREADS):
                return _train(config, run_dir, splits, model, handle, log)
    finally:
        handle.remove()


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class _Run:
    """What one run's training touches, so that its steps are short functions of one argument."""

    config: TrainConfig
    run_dir: store.RunDir
    splits: Any
    model: nn.Module
    handle: Any
    optimizer: torch.optim.Optimizer
    order_generator: torch.Generator
    log: Callable[[str], None]

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir.path / "checkpoint.pt"


def _train(config: TrainConfig, run_dir: store.RunDir, splits, model, handle, log) -> Path:
    """Train (or resume) the run under its lock and publish it."""
    if not (run_dir.path / "checkpoint.pt").exists() and all((run_dir.path / name).exists() for name in (*RUN_FILES, "summary.json")):
        log(f"run {run_dir.run_id} was complete in {run_dir.path} but not published; publishing it")
        return run_dir.finish(None, required=RUN_FILES)
    order_generator = torch.Generator().manual_seed(config.source_seed("order"))
    job = _Run(config, run_dir, splits, model, handle, _make_optimizer(config, model), order_generator, log)
    state = _start_or_resume(job)
    recorder, writer = _recorder(job, state)
    device = config.device
    validation, task = _to_device(splits.val, device), splits.task
    selection = Selection(model, lambda trained: evaluate(trained, *validation, task, config.eval_batch_size),
                          metric="loss" if task == "regression" else "acc", maximize=task != "regression")
    from .progress import tqdm

    bar = tqdm(total=config.epochs, initial=state.epoch, desc=run_dir.run_id, disable=None if config.progress else True)
    fit(model, job.optimizer, *_to_device(splits.train, device), loss_fn=loss_function(task), batch_size=config.batch_size,
        order_generator=order_generator, epochs=config.epochs, learning_rate=lambda epoch: learning_rate(config, epoch),
        task=task, callbacks=[selection, _RunLog(job, bar, recorder, writer)], state=state)
    bar.close()
    if recorder is not None:
        recorder.detach()
    return _publish(job, state)


def _start_or_resume(job: _Run) -> RunState:
    """A new run's state (its ``config.json`` written), or the checkpoint's (the environment checked)."""
    config, run_dir = job.config, job.run_dir
    current = environment(config)
    if not job.checkpoint_path.exists():
        data_info = {**_jsonable(job.splits.info), "fingerprint": data_fingerprint(job.splits)}
        run_dir.start({**config.to_dict(), "run_id": run_dir.run_id, "data_info": data_info, "environment": current})
        return RunState(environment=current)
    check_same_data(config, run_dir.path, job.splits, what="resumed")
    state = RunState.from_checkpoint(_restore(job))
    started = state.environment or None  # checkpoints before environments were stored carry none
    if started is not None and started != current:
        changed = ", ".join(f"{key} {started.get(key)!r} -> {current[key]!r}" for key in current if started.get(key) != current[key])
        raise RunSetupError(
            f"run {run_dir.run_id} stopped at epoch {state.epoch} of {config.epochs} and would resume with other settings "
            f"({changed}), mixing two kinds of numbers in one run; resume it with the settings it started with, "
            f"or delete {run_dir.path} to train it again from the start"
        )
    state.resumed_at_epochs.append(state.epoch)
    state.environment = current
    job.log(f"resuming run {run_dir.run_id} from its checkpoint at epoch {state.epoch} of {config.epochs}")
    return state


class _RunLog(Callback):
    """A run's bookkeeping: the Recorder's steps, and per epoch its metric rows, the progress bar,
    the record parts, ``metrics.parquet`` and the checkpoint."""

    def __init__(self, job: _Run, bar, recorder, writer):
        self.job, self.bar, self.recorder, self.writer = job, bar, recorder, writer

    def on_step(self, state: FitState, step: Step) -> None:
        if self.recorder is not None:
            self.recorder.step(step.index, step.epoch)

    def on_epoch_end(self, state: RunState) -> None:
        run_id, epoch = self.job.run_dir.run_id, state.epoch - 1
        state.last = {"train": dict(state.train_metrics), "val": state.val_metrics}
        state.metric_rows += _metric_rows(run_id, epoch, state.step, state.last)
        state.metric_rows.append({"run_id": run_id, "epoch": epoch, "step": state.step, "split": "train", "metric": "lr", "value": state.lr})
        self.bar.set_postfix(_postfix(state.last))
        self.bar.update(1)
        if self.recorder is not None:
            self.recorder.flush()
            state.record_parts = self.writer.next_part
            state.recorder = self.recorder.state_dict()
        self.job.run_dir.write_metrics(state.metric_rows)
        _checkpoint(self.job, state)


def _publish(job: _Run, state: RunState) -> Path:
    """Test at the chosen and the last epoch, write the summary and the chosen weights, publish the run."""
    config, run_dir, model, task = job.config, job.run_dir, job.model, job.splits.task
    test = _to_device(job.splits.test, config.device)
    final_test = evaluate(model, *test, task, config.eval_batch_size)
    model.load_state_dict(state.best.weights)
    best_test = final_test if state.best.epoch == config.epochs - 1 else evaluate(model, *test, task, config.eval_batch_size)
    state.best.metrics["test"], state.last["test"] = best_test, final_test
    for epoch, values in sorted({state.best.epoch: best_test, config.epochs - 1: final_test}.items()):
        state.metric_rows += _metric_rows(run_dir.run_id, epoch, None, {"test": values}, state.metric_rows)
    run_dir.write_metrics(state.metric_rows)
    summary = _summary(config, state, job.splits)
    # the weights the reported test accuracy belongs to: the best-validation epoch's
    store.write_torch(run_dir.path / "model.pt", model.state_dict())
    if len(list(run_dir.records_dir().glob("part-*.parquet"))) < state.record_parts:
        raise RuntimeError(f"run {run_dir.run_id}: {run_dir.records_dir()} lacks record parts written before; not publishing it")
    store.write_json(run_dir.path / "summary.json", summary)
    job.checkpoint_path.unlink()  # summary, model and metrics are in place: a crash from here on publishes as it is
    return run_dir.finish(None, required=RUN_FILES)


def _metric_rows(run_id, epoch, step, metrics, previous=None):
    """Long-format rows of one epoch's ``{split: {metric: value}}``; ``step=None`` reuses the epoch's step."""
    if step is None:
        step = next(row["step"] for row in previous if row["epoch"] == epoch)
    return [
        {"run_id": run_id, "epoch": epoch, "step": step, "split": split, "metric": metric, "value": value}
        for split, values in metrics.items()
        for metric, value in values.items()
    ]


def _recorder(job: _Run, state: RunState):
    """``(recorder, writer)`` attached to the run's model, or ``(None, None)`` with recording off."""
    config, run_dir = job.config, job.run_dir
    if not config.record_every and not config.snapshot_every:
        return None, None
    from .recorder import Recorder

    layers = config.layers
    if config.method == "none" and layers is None:
        layers = list(getattr(job.model, "ddc_layers", ()))
    writer = store.RecordWriter(run_dir.records_dir(), run_dir.run_id)
    # Parts written after the last checkpoint belong to an epoch that is being redone.
    for part in sorted(run_dir.records_dir().glob("part-*.parquet"))[state.record_parts :]:
        part.unlink()
    writer.next_part = state.record_parts
    recorder = Recorder(
        job.model,
        writer,
        layers=layers,
        every=config.record_every,
        snapshot_every=config.snapshot_every or None,
        snapshot_fn=run_dir.snapshot,
        optimizer=job.optimizer,
        seed=config.seed,
    )
    if state.recorder is not None:
        recorder.load_state_dict(state.recorder)
    return recorder.attach(), writer


def _postfix(metrics):
    return {f"{split}_{name}": round(value, 4) for split in ("train", "val") for name, value in metrics[split].items()}


def _summary(config: TrainConfig, state: RunState, splits) -> Dict[str, Any]:
    best, last = state.best, state.last
    summary = {
        "best_epoch": best.epoch,
        "epochs": config.epochs,
        "steps": state.step,
        "train_time_s": round(state.train_time, 3),
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "data_fingerprint": data_fingerprint(splits),
    }
    for split in ("train", "val", "test"):
        for metric, value in best.metrics[split].items():
            summary[f"{split}_{metric}"] = value  # at the best validation epoch
        for metric, value in last[split].items():
            summary[f"final_{split}_{metric}"] = value
    if splits.task != "regression":
        summary["best_val_acc"] = best.metrics["val"]["acc"]
        summary["generalization_gap"] = best.metrics["train"]["acc"] - best.metrics["test"]["acc"]
    else:
        summary["best_val_loss"] = best.metrics["val"]["loss"]
    if state.resumed_at_epochs:
        summary["resumed_at_epochs"] = list(state.resumed_at_epochs)
    return summary


def _checkpoint(job: _Run, state: RunState) -> None:
    store.write_torch(
        job.checkpoint_path,
        {
            "model": job.model.state_dict(),
            "optimizer": job.optimizer.state_dict(),
            "method": job.handle.state_dict(),
            "data_generator": job.order_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "state": state.to_checkpoint(),
        },
    )


def _restore(job: _Run) -> Dict[str, Any]:
    """Load the checkpoint into the model, optimizer, method and generators; returns its saved state."""
    checkpoint = torch.load(job.checkpoint_path, weights_only=False)
    job.model.load_state_dict(checkpoint["model"])
    job.optimizer.load_state_dict(checkpoint["optimizer"])
    job.handle.load_state_dict(checkpoint["method"])
    job.order_generator.set_state(checkpoint["data_generator"])
    torch.set_rng_state(checkpoint["torch_rng"])
    return checkpoint["state"]


def _jsonable(info: dict) -> dict:
    return json.loads(json.dumps(info, default=lambda value: value.tolist() if hasattr(value, "tolist") else str(value)))
