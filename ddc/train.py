"""One training run from one config: reproducible, paired across methods, honest about selection.

``run(config, root)`` trains a model with a method on a dataset and writes a
run directory into the run store (see :mod:`ddc.store`). Guarantees:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

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
    """Everything that defines a run. Defaults follow the authors' MNIST recipe."""

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
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """Build and validate; unknown keys raise a ``ValueError`` that lists the allowed ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(map(repr, unknown))}; allowed fields: {', '.join(cls.field_names())}"
            )
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> "TrainConfig":
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
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction!r} must lie in (0, 1)")
        if self.layers is not None and (isinstance(self.layers, str) or not all(isinstance(x, str) for x in self.layers)):
            raise ValueError(f"layers={self.layers!r} must be a list of layer names or glob patterns, or None")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def source_seed(self, source: str) -> int:
        """The seed of one source of randomness (``"data"``, ``"init"``, ``"order"`` or ``"mask"``)."""
        check_choice("source", source, tuple(name[: -len("_seed")] for name in SEED_SOURCES))
        value = getattr(self, f"{source}_seed")
        return self.seed if value is None else value

    def run_id(self) -> str:
        """Stable id: readable prefix plus a hash of every field that affects the numbers.

        Fields added later (:data:`LATER_FIELDS`) stay out of the hash at their
        default, and a source seed equal to ``seed`` is the default, so every
        earlier run keeps its id.
        """
        identity = {
            k: v
            for k, v in self.to_dict().items()
            if k not in OPERATIONAL
            and not (k in LATER_FIELDS and v == LATER_FIELDS[k])
            and not (k in SEED_SOURCES and v == self.seed)
        }
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.dataset}-{self.model}-{self.method}-s{self.seed}-{digest}"


class RunSetupError(ValueError):
    """A run cannot start: a bad config value, missing or broken data, layers that do not fit
    the model, an unavailable device. Raised before anything is written into the run store."""


def _check_device_name(device) -> None:
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be a string such as 'cpu', 'cuda' or 'cuda:1'")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None


def check_device(device: str) -> None:
    """Raise ``ValueError`` naming ``device`` when this process cannot use it."""
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
    """What changes a run's numbers besides its config: torch version, thread count, device."""
    return {"torch": torch.__version__, "num_threads": config.num_threads or DEFAULT_THREADS, "device": config.device}


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


# ----------------------------------------------------------------------------- the run

#: keys of ``summary.json`` (classification and regression runs; a resumed run adds ``resumed_at_epochs``)
SUMMARY_KEYS = (
    "best_epoch", "epochs", "steps", "train_time_s", "n_train", "n_val", "n_test",
    "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc", "final_test_loss", "final_test_acc",
    "best_val_acc", "generalization_gap", "best_val_loss",
)


def build(config: TrainConfig, splits=None):
    """Data, model (seeded init) and method handle for ``config``."""
    from . import data, models

    if splits is None:
        splits = data.load(
            config.dataset,
            root=config.data_root,
            val_fraction=config.val_fraction,
            seed=config.source_seed("data"),
            train_subset=config.train_subset,
            val_subset=config.val_subset,
            test_subset=config.test_subset,
            classes=config.classes,
        )
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


def _loss_fn(task: str):
    return nn.functional.mse_loss if task == "regression" else nn.functional.cross_entropy


@torch.no_grad()
def evaluate(model: nn.Module, inputs, targets, task: str, batch_size: int) -> Dict[str, float]:
    """Mean loss and (classification) accuracy in eval mode."""
    model.eval()
    loss_fn = _loss_fn(task)
    total_loss = torch.zeros((), dtype=torch.float64, device=inputs.device)
    correct = torch.zeros((), dtype=torch.long, device=inputs.device)
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        out = model(x)
        total_loss += loss_fn(out, y, reduction="sum").double()
        if task != "regression":
            correct += (out.argmax(1) == y).sum()
    n = len(inputs)
    result = {"loss": total_loss.item() / (n * (targets[0].numel() if task == "regression" else 1))}
    if task != "regression":
        result["acc"] = correct.item() / n
    return result


def run(config: TrainConfig, root, *, splits=None, wait: bool = True, log: Optional[Callable[[str], None]] = None) -> Path:
    """Train ``config`` and publish its run directory under ``root``; returns its path.

    A finished run with the same id is returned as it is (nothing retrained).
    An unfinished one with a checkpoint is resumed (``log`` says so). Raises
    :class:`RunSetupError` for a config that cannot run (nothing written),
    :class:`ddc.store.RunPathOccupied` when something that is not a finished
    run sits at the run's path (it is left alone), :class:`ddc.store.RunBusy`
    when another process writes the run and ``wait`` is False (with ``wait``,
    the default, it waits for it), :class:`ddc.store.StoreWriteError` when the
    store cannot be written. ``log``: one-line notes (default: stderr).
    """
    log = log or _to_stderr
    try:
        config.validate()
        run_dir = store.RunDir(root, config.run_id())
        if run_dir.finished:
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
                return run_dir.final
            run_dir.check_final_path()
            with _torch_threads(config.num_threads or DEFAULT_THREADS):
                return _train(config, run_dir, splits, model, handle, log)
    finally:
        handle.remove()


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train(config: TrainConfig, run_dir: store.RunDir, splits, model, handle, log) -> Path:
    run_id = run_dir.run_id
    required = ("config.json", "metrics.parquet", "model.pt")
    checkpoint_path = run_dir.path / "checkpoint.pt"
    if not checkpoint_path.exists() and all((run_dir.path / name).exists() for name in (*required, "summary.json")):
        log(f"run {run_id} was complete in {run_dir.path} but not published; publishing it")
        return run_dir.finish(None, required=required)
    optimizer = _make_optimizer(config, model)
    data_generator = torch.Generator().manual_seed(config.source_seed("order"))
    env = environment(config)
    state = {"epoch": 0, "step": 0, "metrics": [], "best": None, "train_time": 0.0, "environment": env, "resumed": []}

    if checkpoint_path.exists():
        state = _restore(checkpoint_path, model, optimizer, handle, data_generator)
        started = state.get("environment")
        if started is not None and started != env:
            changed = ", ".join(f"{k} {started.get(k)!r} -> {env[k]!r}" for k in env if started.get(k) != env[k])
            raise RunSetupError(
                f"run {run_id} stopped at epoch {state['epoch']} of {config.epochs} and would resume with other settings "
                f"({changed}), mixing two kinds of numbers in one run; resume it with the settings it started with, "
                f"or delete {run_dir.path} to train it again from the start"
            )
        state.setdefault("resumed", []).append(state["epoch"])
        state["environment"] = env
        log(f"resuming run {run_id} from its checkpoint at epoch {state['epoch']} of {config.epochs}")
    else:
        run_dir.start({**config.to_dict(), "run_id": run_id, "data_info": _jsonable(splits.info), "environment": env})

    recorder, writer = _recorder(config, run_dir, model, optimizer, run_id, state)
    train_x, train_y = _to_device(splits.train, config.device)
    val = _to_device(splits.val, config.device)
    test = _to_device(splits.test, config.device)
    loss_fn = _loss_fn(splits.task)

    from .progress import tqdm

    bar = tqdm(
        range(state["epoch"], config.epochs),
        desc=run_id,
        disable=None if config.progress else True,
        initial=state["epoch"],
        total=config.epochs,
    )
    for epoch in bar:
        started = time.perf_counter()
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(len(train_x), generator=data_generator).to(config.device)
        running_loss = torch.zeros((), dtype=torch.float64, device=config.device)
        running_correct = torch.zeros((), dtype=torch.long, device=config.device)
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            x, y = train_x[index], train_y[index]
            out = model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running_loss += loss.detach().double() * len(index)
            if splits.task != "regression":
                running_correct += (out.detach().argmax(1) == y).sum()
            if recorder is not None:
                recorder.step(state["step"], epoch)
            state["step"] += 1
        state["train_time"] += time.perf_counter() - started

        epoch_metrics = {"train": {"loss": running_loss.item() / len(train_x)}}
        if splits.task != "regression":
            epoch_metrics["train"]["acc"] = running_correct.item() / len(train_x)
        epoch_metrics["val"] = evaluate(model, *val, splits.task, config.eval_batch_size)
        best = _better(state["best"], epoch, epoch_metrics, splits.task)
        if best is not state["best"]:
            # Test numbers are reported only for the best-validation and the last
            # epoch: keep the best weights and evaluate the test split once, at the end.
            state["best_model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["metrics"] += _metric_rows(run_id, epoch, state["step"], epoch_metrics)
        state["metrics"].append({"run_id": run_id, "epoch": epoch, "step": state["step"], "split": "train", "metric": "lr", "value": lr})
        state["best"], state["last"] = best, epoch_metrics
        state["epoch"] = epoch + 1
        bar.set_postfix(_postfix(epoch_metrics))

        if recorder is not None:
            recorder.flush()
            state["record_parts"] = writer.next_part
            state["recorder"] = recorder.state_dict()
        run_dir.write_metrics(state["metrics"])
        _checkpoint(checkpoint_path, model, optimizer, handle, data_generator, state)
    bar.close()
    if recorder is not None:
        recorder.detach()

    final_test = evaluate(model, *test, splits.task, config.eval_batch_size)
    model.load_state_dict(state["best_model"])
    best_test = final_test if state["best"]["epoch"] == config.epochs - 1 else evaluate(model, *test, splits.task, config.eval_batch_size)
    state["best"]["metrics"]["test"], state["last"]["test"] = best_test, final_test
    for epoch, values in sorted({state["best"]["epoch"]: best_test, config.epochs - 1: final_test}.items()):
        state["metrics"] += _metric_rows(run_id, epoch, None, {"test": values}, state["metrics"])
    run_dir.write_metrics(state["metrics"])
    summary = _summary(config, state, state["last"], splits)
    if state.get("resumed"):
        summary["resumed_at_epochs"] = list(state["resumed"])
    # the weights the reported test accuracy belongs to: the best-validation epoch's
    store.write_torch(run_dir.path / "model.pt", model.state_dict())
    parts = state.get("record_parts", 0)
    if len(list(run_dir.records_dir().glob("part-*.parquet"))) < parts:
        raise RuntimeError(f"run {run_id}: {run_dir.records_dir()} lacks record parts written before; not publishing it")
    store.write_json(run_dir.path / "summary.json", summary)
    checkpoint_path.unlink()  # summary, model and metrics are in place: a crash from here on publishes as it is
    return run_dir.finish(None, required=required)


def _metric_rows(run_id, epoch, step, metrics, previous=None):
    """Long-format rows of one epoch's ``{split: {metric: value}}``; ``step=None`` reuses the epoch's step."""
    if step is None:
        step = next(r["step"] for r in previous if r["epoch"] == epoch)
    return [
        {"run_id": run_id, "epoch": epoch, "step": step, "split": split, "metric": metric, "value": value}
        for split, values in metrics.items()
        for metric, value in values.items()
    ]


def _recorder(config, run_dir, model, optimizer, run_id, state):
    if not config.record_every and not config.snapshot_every:
        return None, None
    from .recorder import Recorder

    layers = config.layers
    if config.method == "none" and layers is None:
        layers = list(getattr(model, "ddc_layers", ()))
    writer = store.RecordWriter(run_dir.records_dir(), run_id)
    # Parts written after the last checkpoint belong to an epoch that is being redone.
    for part in sorted(run_dir.records_dir().glob("part-*.parquet"))[state.get("record_parts", 0) :]:
        part.unlink()
    writer.next_part = state.get("record_parts", 0)
    recorder = Recorder(
        model,
        writer,
        layers=layers,
        every=config.record_every,
        snapshot_every=config.snapshot_every or None,
        snapshot_fn=run_dir.snapshot,
        optimizer=optimizer,
        seed=config.seed,
    )
    if "recorder" in state:
        recorder.load_state_dict(state["recorder"])
    return recorder.attach(), writer


def _better(best, epoch, metrics, task):
    key = ("loss", -1) if task == "regression" else ("acc", 1)
    score = metrics["val"][key[0]] * key[1]
    if best is None or score > best["score"]:  # ties keep the earlier epoch
        return {"score": score, "epoch": epoch, "metrics": metrics}
    return best


def _postfix(metrics):
    shown = {f"{split}_{name}": round(value, 4) for split in ("train", "val") for name, value in metrics[split].items()}
    return shown


def _summary(config, state, last, splits) -> Dict[str, Any]:
    best = state["best"]
    summary = {
        "best_epoch": best["epoch"],
        "epochs": config.epochs,
        "steps": state["step"],
        "train_time_s": round(state["train_time"], 3),
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
    }
    for split in ("train", "val", "test"):
        for metric, value in best["metrics"][split].items():
            summary[f"{split}_{metric}"] = value  # at the best validation epoch
        for metric, value in last[split].items():
            summary[f"final_{split}_{metric}"] = value
    if splits.task != "regression":
        summary["best_val_acc"] = best["metrics"]["val"]["acc"]
        summary["generalization_gap"] = best["metrics"]["train"]["acc"] - best["metrics"]["test"]["acc"]
    else:
        summary["best_val_loss"] = best["metrics"]["val"]["loss"]
    return summary


def _checkpoint(path, model, optimizer, handle, data_generator, state) -> None:
    store.write_torch(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "method": handle.state_dict(),
            "data_generator": data_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "state": state,
        },
    )


def _restore(path, model, optimizer, handle, data_generator) -> dict:
    checkpoint = torch.load(path, weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    handle.load_state_dict(checkpoint["method"])
    data_generator.set_state(checkpoint["data_generator"])
    torch.set_rng_state(checkpoint["torch_rng"])
    return checkpoint["state"]


def _jsonable(info: dict) -> dict:
    return json.loads(json.dumps(info, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
