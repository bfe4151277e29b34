"""Running a sweep: every unfinished run of a spec into the run store, through an executor.

Resumability: finished runs (``<root>/<run_id>/summary.json``) are skipped
before submission; :func:`ddc.train.run` holds the run's lock (so a sweep, a
``ddc train`` and a notebook never write one run at once: a second writer
waits), publishes a run directory whole or not at all and resumes an
interrupted one from its epoch checkpoint; a run that raises leaves
``<root>/.failed/<run_id>.json`` (config + traceback) and the sweep goes on (a
later sweep retries it). A run whose worker dies (killed, out of memory) is
retried once, resuming from its checkpoint; if its worker dies again it fails,
and the rest of the sweep goes on either way. :class:`SweepResult` says what
happened. Killing a sweep, even with SIGKILL to it and its workers, and
starting it again completes the grid with no duplicate and no partial run.

Scripts that run a local sweep must guard their entry point with
``if __name__ == "__main__":`` (worker processes are spawned).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import store
from ..train import RunSetupError, TrainConfig, warn_if_made_elsewhere
from .executors import BACKENDS, Executor, check_workers, make_executor, worker_death
from .results import failed_path, sweep_connect, sweep_frame, sweep_root
from .spec import Spec, SpecLike, SweepRun, load_spec

#: attempts of a run whose worker process dies (the first death is retried once)
WORKER_ATTEMPTS = 2


@dataclass
class SweepResult:
    """What a sweep did, and its runs as one table.

    Raises:
        Nothing on construction; see :meth:`frame`, :meth:`connect` and :meth:`failures`.
    """

    spec: Spec
    root: Path
    run_ids: List[str]
    skipped: List[str] = field(default_factory=list)  # finished before this call
    completed: List[str] = field(default_factory=list)  # finished by this call
    failed: Dict[str, str] = field(default_factory=dict)  # run id -> error
    retried: Dict[str, str] = field(default_factory=dict)  # run id -> why it was retried (its worker died)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every run of the spec is finished and none failed.

        Raises:
            Nothing.
        """
        return not self.failed and len(self.skipped) + len(self.completed) == len(self.run_ids)

    @property
    def done(self) -> List[str]:
        """The finished runs' ids, in the spec's order.

        Raises:
            Nothing.
        """
        finished = set(self.skipped) | set(self.completed)
        return [run_id for run_id in self.run_ids if run_id in finished]

    @property
    def remaining(self) -> int:
        """Runs neither finished nor failed (yet).

        Raises:
            Nothing.
        """
        return len(self.run_ids) - len(self.skipped) - len(self.completed) - len(self.failed)

    def frame(self):
        """Runs table of this sweep (see :func:`sweep_frame`).

        Raises:
            MissingExtra: pandas is not installed.
        """
        return sweep_frame(self.spec, self.root)

    def connect(self):
        """DuckDB connection over this sweep's runs (see :func:`sweep_connect`).

        Raises:
            MissingExtra: duckdb is not installed.
        """
        return sweep_connect(self.spec, self.root)

    def failures(self) -> Dict[str, dict]:
        """The failure records (config, error, traceback) of the failed runs.

        Raises:
            OSError, ValueError: a failure record exists but cannot be read or is not JSON (:func:`ddc.store.read_json`).
        """
        records = {}
        for run_id in self.failed:
            path = failed_path(self.root, run_id)
            if path.exists():
                records[run_id] = store.read_json(path)
        return records

    def __repr__(self) -> str:
        return (
            f"SweepResult({self.spec.name!r}, root={str(self.root)!r}, runs={len(self.run_ids)}, "
            f"skipped={len(self.skipped)}, completed={len(self.completed)}, failed={len(self.failed)}, "
            f"retried={len(self.retried)}, "
            f"seconds={self.seconds:.1f})"
        )


def run_sweep(
    spec: SpecLike,
    root=None,
    *,
    workers: Optional[int] = None,
    backend: str = "local",
    address: Optional[str] = None,
    progress: bool = True,
    threads: Optional[int] = 1,
    executor: Optional[Executor] = None,
) -> SweepResult:
    """Run every unfinished run of ``spec`` into ``root``; failures are recorded, not raised.

    ``root``: default :func:`ddc.sweep.sweep_root`. ``workers`` defaults to
    ``os.cpu_count()`` (local) and is capped by the number of runs left;
    ``threads`` is the torch threads of a worker outside training (None:
    torch's default): every run trains with its config's ``num_threads``
    (:data:`ddc.train.DEFAULT_THREADS` unless set), whoever runs it. An
    ``executor`` you made yourself (any :class:`Executor`) replaces
    ``backend``/``workers``/``address``; it is not shut down. Finished runs
    made under another torch version are named in one
    :class:`ddc.train.ReusedRunWarning`.

    Raises:
        ValueError: a bad spec (naming the field or run), ``backend`` or ``workers``.
        ddc.train.RunSetupError: a run ``ddc train`` would refuse before training (see :func:`check_runnable`),
            or a finished run made from other data than its config loads now (:func:`check_reused_data`); nothing written.
        FileNotFoundError: no spec file at the path given.
        OSError: the run root cannot be created.
        ddc._optional.MissingExtra: pandas or pyarrow is not installed (``pip install 'ddc[runs]'``); nothing runs.
    """
    started = time.perf_counter()
    spec = load_spec(spec)  # validates everything before anything runs
    store.require_parquet()
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {', '.join(BACKENDS)}")
    if workers is not None:
        check_workers(workers)
    root = Path(sweep_root(root, spec)).absolute()
    runs = spec.runs()
    result = SweepResult(spec=spec, root=root, run_ids=[run.run_id for run in runs])
    pending = []
    for run in runs:
        if store.RunDir(root, run.run_id).finished:
            result.skipped.append(run.run_id)
        else:
            pending.append(run)
    check_runnable(pending, spec.name)  # what `ddc train` would refuse, refused before anything is written
    check_reused_data([run for run in runs if run.run_id in set(result.skipped)], root)
    skipped = set(result.skipped)
    warn_if_made_elsewhere([(run.config, root / run.run_id) for run in runs if run.run_id in skipped])
    with _ProgressBar(result, enabled=progress) as bar:
        if pending:
            root.mkdir(parents=True, exist_ok=True)
            _execute(pending, result, bar, executor, backend=backend, workers=workers, address=address, threads=threads)
    result.seconds = time.perf_counter() - started
    return result


def check_runnable(runs: List[SweepRun], sweep: str = "") -> None:
    """Refuse, before anything runs or is written, the runs that ``ddc train`` would refuse before training.

    Each distinct setting is checked once: the device is usable here, the
    dataset's files are found (``data_root``, ``$DDC_DATA``, ...), and the
    method and its ``layers`` fit the model built for the dataset's shape (one
    model per distinct (model, input shape, classes); nothing is loaded or trained).

    Raises:
        ddc.train.RunSetupError: the first run that cannot start, with ``ddc train``'s message and the run's id.
    """
    import torch

    from .. import data, models
    from ..apply import apply
    from ..train import check_device

    checked: set = set()
    built: Dict[tuple, Any] = {}
    for run in runs:
        config = run.config
        where = f" (run {run.run_id}{f' [{run.variant}]' if run.variant else ''}" + (f" of sweep {sweep!r})" if sweep else ")")
        try:
            if ("device", config.device) not in checked:
                check_device(config.device)
                checked.add(("device", config.device))
            if config.dataset in data.SOURCES and ("data", config.dataset, config.data_root) not in checked:
                data.find(config.dataset, config.data_root)
                checked.add(("data", config.dataset, config.data_root))
            shape = data.IMAGE_SHAPES.get(config.dataset, (len(data.SYNTHETIC_WEIGHTS),))
            classes = len(config.classes) if config.classes else data.NUM_CLASSES[config.dataset]
            key = (config.model, shape, classes)
            if key not in built:
                with torch.random.fork_rng(devices=[]):
                    built[key] = models.build(config.model, input_shape=shape, num_classes=classes)
            layers = ("layers", key, config.method, json_key(config.layers), json_key(config.method_options))
            if layers not in checked:
                apply(built[key], config.method, layers=config.layers, **config.method_options).remove()
                checked.add(layers)
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise RunSetupError(f"{error}{where}") from error


def check_reused_data(finished: List[SweepRun], root: Path) -> None:
    """Refuse to skip a finished run that was made from other data than its config loads now
    (another ``data_root``, other files): :func:`ddc.train.check_same_data`. The data of each
    distinct data setting is loaded once; runs recorded before data fingerprints are not checked.

    Raises:
        ddc.train.RunSetupError: the first such run, named with both fingerprints and data roots.
    """
    from ..train import check_same_data, data_fingerprint, load_splits, recorded_data

    fingerprints: Dict[str, Optional[str]] = {}
    for run in finished:
        config = run.config
        if recorded_data(root / run.run_id)[0] is None:
            continue
        key = json_key([config.dataset, config.data_root, config.val_fraction, config.source_seed("data"), config.train_subset,
                        config.val_subset, config.test_subset, config.classes, config.num_threads])
        if key not in fingerprints:
            try:
                fingerprints[key] = data_fingerprint(load_splits(config))
            except (ValueError, FileNotFoundError):  # no data here to compare with: nothing is about to use it
                fingerprints[key] = None
        if fingerprints[key] is not None:
            check_same_data(config, root / run.run_id, current=fingerprints[key])


def json_key(value: Any) -> str:
    """A hashable, order-independent key of a JSON-like value.

    Raises:
        Nothing (values JSON cannot encode are keyed by their ``str``).
    """
    import json

    return json.dumps(value, sort_keys=True, default=str)


class _ProgressBar:
    """The sweep's bar (runs done of total, failed, remaining), and the same numbers as progress events."""

    def __init__(self, result: SweepResult, *, enabled: bool):
        from ..progress import tqdm

        self.result = result
        self.bar = tqdm(total=len(result.run_ids), initial=len(result.skipped), desc=f"sweep {result.spec.name}",
                        unit="run", disable=not enabled, dynamic_ncols=True)

    def __enter__(self) -> "_ProgressBar":
        self.show()
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.close()

    def show(self, advance: int = 0) -> None:
        """Redraw the counts; ``advance``: runs just finished or failed."""
        from ..progress import emit

        result = self.result
        done = len(result.skipped) + len(result.completed)
        self.bar.set_postfix(done=done, failed=len(result.failed), remaining=result.remaining, refresh=not advance)
        if advance:
            self.bar.update(advance)
        # for a driver's status line, e.g. the notebook driver's terminal while this runs in a kernel
        emit("sweep", name=result.spec.name, total=len(result.run_ids), done=done, failed=len(result.failed))

    def write(self, message: str) -> None:
        """A line above the bar, on stderr."""
        self.bar.write(message, file=sys.stderr)


def _execute(pending: List[SweepRun], result: SweepResult, bar: _ProgressBar, executor: Optional[Executor], *,
             backend: str, workers: Optional[int], address: Optional[str], threads: Optional[int]) -> None:
    """Drive ``pending`` through ``executor``, or through one made for ``backend`` and shut down after."""
    if executor is not None:
        _drive(executor, pending, threads, result, bar)
        return
    count = min(workers or os.cpu_count() or 1, len(pending))
    executor = make_executor(backend, workers=count, address=address, threads=threads)
    try:
        _drive(executor, pending, threads, result, bar)
    except BaseException:
        executor.shutdown(cancel=True)
        raise
    executor.shutdown()


def _drive(executor: Executor, pending: List[SweepRun], threads: Optional[int], result: SweepResult, bar: _ProgressBar) -> None:
    """Run ``pending`` with at most ``executor.workers`` in flight; collect outcomes as they come,
    and resubmit once a run whose worker died.

    Only runs a worker has taken are in the executor, so a pool that breaks
    (every worker killed at once) fails only the runs it was running, and each
    of them is retried once (a local executor starts a fresh pool); the runs
    not yet submitted go on as if nothing happened.
    """
    by_future: Dict[Any, SweepRun] = {}
    attempts: Dict[str, int] = {}
    root, sweep = result.root, result.spec.name
    queue = list(pending)
    slots = max(int(getattr(executor, "workers", 1) or 1), 1)

    def submit(run: SweepRun) -> None:
        attempts[run.run_id] = attempts.get(run.run_id, 0) + 1
        by_future[executor.submit(_run_task, run.run_id, run.config.to_dict(), str(root), threads, sweep)] = run

    while queue or by_future:
        while queue and len(by_future) < slots:
            submit(queue.pop(0))
        future = next(iter(executor.as_completed(list(by_future))))
        run = by_future.pop(future)
        outcome = _outcome(future, run, root, sweep, attempts[run.run_id])
        if outcome["status"] == "worker died" and attempts[run.run_id] < WORKER_ATTEMPTS:
            result.retried[run.run_id] = outcome["error"]
            bar.write(f"RETRY {run.run_id}: {outcome['error']}; retrying it once (it resumes from its checkpoint)")
            submit(run)
            continue
        if outcome["status"] == "done":
            result.completed.append(run.run_id)
        else:
            result.failed[run.run_id] = outcome["error"]
            bar.write(f"FAILED {run.run_id}: {first_line(outcome['error'])} (details: {failed_path(root, run.run_id)})")
        bar.show(1)


def _outcome(future, run: SweepRun, root: Path, sweep: str, attempt: int) -> dict:
    """The task's result dict; a dead worker or a task that could not be shipped becomes a failure."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - a worker died or the task could not be shipped
        died = worker_death(error)
        message = f"{died} (attempt {attempt} of {WORKER_ATTEMPTS})" if died else f"{type(error).__name__}: {error}"
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        with contextlib.suppress(Exception):
            _record_failure(root, run.run_id, run.config.to_dict(), message, trace, sweep)
        return {"run_id": run.run_id, "status": "worker died" if died else "failed", "error": message}


def first_line(text: str) -> str:
    """The first line of ``text``, with `` ...`` when more follow ('' for no text).

    Raises:
        Nothing.
    """
    lines = str(text).strip().splitlines()
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


# ----------------------------------------------------------------------------- one task, in a worker


def _record_failure(root: Path, run_id: str, config: dict, error: str, trace: str, sweep: str) -> Path:
    return store.write_json(
        failed_path(root, run_id),
        {
            "run_id": run_id,
            "sweep": sweep,
            "config": config,
            "error": error,
            "traceback": trace,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def _run_task(run_id: str, config: dict, root: str, threads: Optional[int], sweep: str) -> dict:
    """Train one run in a worker; never raises for a failing run (it is recorded instead)."""
    started = time.perf_counter()
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from ..train import run

        train_config = TrainConfig.from_dict(config)
        if train_config.run_id() != run_id:
            raise RuntimeError(f"config resolves to run id {train_config.run_id()} in this worker, not {run_id}: different ddc versions?")
        path = run(train_config, root)  # holds the run's lock: waits while another writer has it
        with contextlib.suppress(FileNotFoundError):
            failed_path(Path(root), run_id).unlink()
        return {"run_id": run_id, "status": "done", "path": str(path), "seconds": time.perf_counter() - started}
    except Exception as error:  # noqa: BLE001 - the sweep goes on; the traceback is kept
        trace = traceback.format_exc()
        message = f"{type(error).__name__}: {error}"
        try:
            failed = str(_record_failure(Path(root), run_id, config, message, trace, sweep))
        except Exception:  # noqa: BLE001 - e.g. an unwritable root; the parent records it
            failed = None
        return {
            "run_id": run_id,
            "status": "failed",
            "error": message,
            "traceback": trace,
            "failed_path": failed,
            "seconds": time.perf_counter() - started,
        }
