"""Sweeps: a grid of training runs, run on every core or on a cluster, resumable.

A *spec* (YAML file or dict) describes the grid::

    name: ddc-ablation                 # optional; default: the file's stem
    base:                              # TrainConfig fields shared by every run
      recipe: synthetic-linreg2d       # optional: start from a named recipe ...
      profile: smoke                   # ... at a profile (default: quick)
      epochs: 5
    methods:                           # optional axis: label -> fields of that variant
      baseline: {method: none}
      ddc:
        method: ddc
        method_options: {tau: 0.5}
        grid: {method_options.p_base: [0.2, 0.3]}   # axes local to this variant
    grid:                              # axes crossed with each other (and with the rest)
      method_options.normalize: [zscore, none]      # dotted keys reach into method_options
      lr: [0.01, 0.05]
    zip:                               # axes varied together (equal lengths); a mapping,
      - {train_subset: [200, 400], epochs: [4, 2]}  # or a list of such groups
    seeds: [0, 1, 2]

Every axis key is a :class:`ddc.train.TrainConfig` field, a dotted
``method_options.NAME``, or ``recipe`` / ``profile``. Values are resolved in
the order recipe < base < method variant < its local axes < grid < zip < seed;
``method_options`` mappings are merged key by key. ``methods`` may also be a
plain list of method names. Each run is identified by
:meth:`TrainConfig.run_id`, so a run shared by two sweeps is trained once.

The whole spec is expanded and validated (unknown keys, empty axes, bad
values: a ``ValueError`` naming the field) before anything runs.

Execution goes through one ``concurrent.futures``-style interface
(:class:`Executor`: ``submit(fn, *args) -> future``, ``as_completed``):

- ``local``: a ``pebble.ProcessPool`` (``spawn`` context) of ``os.cpu_count()``
  workers. Unlike ``concurrent.futures.ProcessPoolExecutor``, whose pool breaks
  and fails every unfinished run when one worker dies, it fails only the task
  of the dead worker and starts a new worker;
- ``dask``: ``dask.distributed`` on an existing scheduler (``address``) or on a
  ``LocalCluster`` bound to 127.0.0.1. The run root must then be a filesystem
  shared by the workers;
- ``serial``: in this process, one run after the other (debugging).

Resumability: finished runs (``<root>/<run_id>/summary.json``) are skipped
before submission; :func:`ddc.train.run` holds the run's lock (so a sweep, a
``ddc train`` and a notebook never write one run at once: a second writer
waits), publishes a run directory whole or not at all and resumes an
interrupted one from its epoch checkpoint; a run that raises leaves
``<root>/.failed/<run_id>.json`` (config + traceback) and the sweep goes on (a
later sweep retries it). A run whose worker dies (killed, out of memory) is
retried once, resuming from its checkpoint; if its worker dies again it fails,
and the rest of the sweep goes on either way. :class:`SweepResult` and the
command's summary say what happened. Killing a sweep, even with SIGKILL to it
and its workers, and starting it again completes the grid with no duplicate
and no partial run.

Results: :func:`sweep_frame` (pandas, one row per finished run of the spec,
config columns flattened, summary metrics, and ``sweep`` / ``variant``
labels) and :func:`sweep_connect` (DuckDB views ``runs``, ``metrics``,
``records`` over the spec's runs).

Scripts that run a local sweep must guard their entry point with
``if __name__ == "__main__":`` (worker processes are spawned).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import itertools
import multiprocessing
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import click

from . import store
from .clierrors import UserError
from .train import TrainConfig

__all__ = [
    "Spec",
    "SweepRun",
    "SweepResult",
    "Executor",
    "LocalExecutor",
    "DaskExecutor",
    "SerialExecutor",
    "BACKENDS",
    "load_spec",
    "make_executor",
    "run_sweep",
    "sweep_status",
    "sweep_frame",
    "sweep_connect",
    "sweep_command",
]

BACKENDS = ("local", "dask", "serial")
FAILED = ".failed"
#: attempts of a run whose worker process dies (the first death is retried once)
WORKER_ATTEMPTS = 2
SPEC_KEYS = ("name", "description", "base", "methods", "grid", "zip", "seeds")
PSEUDO_FIELDS = ("recipe", "profile")  # resolved into TrainConfig fields, never stored
MAPPING_FIELDS = ("method_options",)  # fields that dotted keys may reach into
VARIANT_AXES = ("grid", "zip")  # a methods entry may carry its own axes
SpecLike = Union[str, os.PathLike, Mapping[str, Any], "Spec"]


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class SweepRun:
    """One point of a sweep: its validated config and the labels it came from."""

    config: TrainConfig
    variant: Optional[str]  # label of the ``methods`` entry, or None
    point: Dict[str, Any]  # the axis values (dotted keys) that made this run

    @property
    def run_id(self) -> str:
        return self.config.run_id()


@dataclass
class Spec:
    """A parsed, checked sweep spec. :meth:`expand` gives its validated configs."""

    name: str
    base: Dict[str, Any] = field(default_factory=dict)
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    zips: List[Dict[str, List[Any]]] = field(default_factory=list)
    seeds: Optional[List[int]] = None
    methods: Optional[Dict[str, Dict[str, Any]]] = None
    description: str = ""
    source: Optional[str] = None
    _runs: Optional[List[SweepRun]] = field(default=None, repr=False, compare=False)

    # ---- construction --------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, name: Optional[str] = None, source: Optional[str] = None) -> "Spec":
        if not isinstance(values, Mapping):
            raise ValueError(f"a sweep spec must be a mapping with keys {', '.join(SPEC_KEYS)}; got {type(values).__name__}")
        unknown = sorted(set(values) - set(SPEC_KEYS))
        if unknown:
            import difflib

            hints = [f"{k!r} (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(str(k), SPEC_KEYS, n=1)) else repr(k) for k in unknown]
            raise ValueError(f"unknown sweep spec key(s) {', '.join(hints)}; allowed keys: {', '.join(SPEC_KEYS)}")
        spec_name = values.get("name") or name or "sweep"
        if not isinstance(spec_name, str):
            raise ValueError(f"name={spec_name!r} must be a string")

        base = values.get("base") or {}
        if not isinstance(base, Mapping):
            raise ValueError(f"base must be a mapping of TrainConfig fields; got {base!r}")
        base = dict(base)
        for key in base:
            _check_key(key, "base")

        grid = _parse_grid(values.get("grid"), "grid")
        zips = _parse_zips(values.get("zip"), "zip")
        methods = _parse_methods(values.get("methods"))

        seeds = values.get("seeds")
        if seeds is not None:
            if not isinstance(seeds, (list, tuple)):
                raise ValueError(f"seeds={seeds!r} must be a list of integers")
            if not seeds:
                raise ValueError("seeds is empty: give at least one seed (or leave 'seeds' out to use base.seed)")
            bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
            if bad:
                raise ValueError(f"seeds: {bad!r} are not non-negative integers")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seeds={list(seeds)!r} has duplicates")
            seeds = list(seeds)

        # An axis key set in two places would silently override; reject it.
        places: Dict[str, str] = {}
        for where, keys in [("grid", grid), *((f"zip[{i}]", z) for i, z in enumerate(zips))]:
            for key in keys:
                if key in places:
                    raise ValueError(f"axis {key!r} appears in both {places[key]} and {where}")
                places[key] = where
        for label, entry in (methods or {}).items():
            local = [("grid", entry.get("grid", {}))] + [(f"zip[{i}]", z) for i, z in enumerate(entry.get("zip", []))]
            local_places: Dict[str, str] = {}
            for axis, keys in local:
                for key in keys:
                    where = f"methods[{label!r}].{axis}"
                    other = places.get(key) or local_places.get(key)
                    if other:
                        raise ValueError(f"axis {key!r} appears in both {other} and {where}")
                    local_places[key] = where
            if seeds is not None and "seed" in local_places:
                raise ValueError(f"axis 'seed' in {local_places['seed']} conflicts with 'seeds'; use one of them")
        if seeds is not None and "seed" in places:
            raise ValueError(f"axis 'seed' in {places['seed']} conflicts with 'seeds'; use one of them")

        spec = cls(
            name=spec_name,
            base=base,
            grid=grid,
            zips=zips,
            seeds=seeds,
            methods=methods,
            description=str(values.get("description") or ""),
            source=source,
        )
        spec.expand()  # validate every run now, before anything is submitted
        return spec

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "base": copy.deepcopy(self.base)}
        if self.description:
            out["description"] = self.description
        if self.methods is not None:
            out["methods"] = copy.deepcopy(self.methods)
        if self.grid:
            out["grid"] = copy.deepcopy(self.grid)
        if self.zips:
            out["zip"] = copy.deepcopy(self.zips)
        if self.seeds is not None:
            out["seeds"] = list(self.seeds)
        return out

    # ---- expansion -----------------------------------------------------------

    def runs(self) -> List[SweepRun]:
        """Every run of the sweep, validated, in submission order, unique by run id.

        Order: seeds outermost, so an interrupted sweep has whole seeds done.
        Points that resolve to the same run id (e.g. they differ only in
        operational fields such as ``tag``) are kept once, first one wins.
        """
        if self._runs is None:
            self._runs = self._expand()
        return list(self._runs)

    def _expand(self) -> List[SweepRun]:
        seeds = self.seeds if self.seeds is not None else [None]
        variants: List[Tuple[Optional[str], Dict[str, Any]]] = (
            list(self.methods.items()) if self.methods is not None else [(None, {})]
        )
        out: List[SweepRun] = []
        seen = set()
        for seed in seeds:
            for label, entry in variants:
                fields = {k: v for k, v in entry.items() if k not in VARIANT_AXES}
                local_points = _points(entry.get("grid", {}), entry.get("zip", []))
                for local in local_points:
                    for point in _points(self.grid, self.zips):
                        assignments = [self.base, fields, local, point]
                        if seed is not None:
                            assignments.append({"seed": seed})
                        where = _describe(label, {**local, **point}, seed)
                        config = _resolve(assignments, where)
                        run_id = config.run_id()
                        if run_id in seen:
                            continue
                        seen.add(run_id)
                        full_point = {**fields, **local, **point}
                        if seed is not None:
                            full_point["seed"] = seed
                        out.append(SweepRun(config=config, variant=label, point=full_point))
        return out

    def expand(self) -> List[TrainConfig]:
        """The validated :class:`TrainConfig` of every run (``progress=False``)."""
        return [copy.deepcopy(r.config) for r in self.runs()]

    def run_ids(self) -> List[str]:
        return [r.run_id for r in self.runs()]

    def __len__(self) -> int:
        return len(self.runs())


def load_spec(spec: SpecLike) -> Spec:
    """A :class:`Spec` from a YAML/JSON file path, a dict, or a Spec (returned as is)."""
    if isinstance(spec, Spec):  # one built by hand is parsed again, so it gets the same checks
        return spec if spec._runs is not None else Spec.from_dict(spec.to_dict(), source=spec.source)
    if isinstance(spec, Mapping):
        return Spec.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        from .configfile import load_mapping

        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"no sweep spec at {path}")
        values = load_mapping(path, "sweep spec")  # an empty file is an error, never a default run
        try:
            return Spec.from_dict(values, name=path.stem, source=str(path))
        except ValueError as error:
            raise ValueError(f"sweep spec {path}: {error}") from None
    raise TypeError(f"load_spec takes a path, a mapping or a Spec; got {type(spec).__name__}")


def _check_key(key, where: str) -> None:
    """Reject a key that is not a TrainConfig field, a dotted mapping key, or recipe/profile."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}: key {key!r} must be a non-empty string")
    head, dot, tail = key.partition(".")
    allowed = TrainConfig.field_names()
    if head not in allowed and head not in PSEUDO_FIELDS:
        import difflib

        close = difflib.get_close_matches(head, allowed + list(PSEUDO_FIELDS), n=1)
        raise ValueError(
            f"{where}: unknown config field {head!r}"
            + (f" (in {key!r})" if dot else "")
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; allowed fields: {', '.join(allowed)}, recipe, profile"
        )
    if dot:
        if head not in MAPPING_FIELDS:
            raise ValueError(f"{where}: {key!r}: dotted keys only reach into {', '.join(MAPPING_FIELDS)}, not {head!r}")
        if not tail or "." in tail:
            raise ValueError(f"{where}: {key!r} must look like '{head}.NAME'")


def _parse_grid(grid, where: str) -> Dict[str, List[Any]]:
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        raise ValueError(f"{where} must be a mapping of axis name -> list of values; got {grid!r}")
    out = {}
    for key, values in grid.items():
        _check_key(key, f"{where} axis {key!r}")
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{where} axis {key!r} must be a list of values; got {values!r}")
        if len(values) == 0:
            raise ValueError(f"{where} axis {key!r} is empty: give at least one value")
        out[key] = list(values)
    return out


def _parse_zips(zips, where: str) -> List[Dict[str, List[Any]]]:
    if zips is None:
        return []
    groups = [zips] if isinstance(zips, Mapping) else zips
    if not isinstance(groups, (list, tuple)):
        raise ValueError(f"{where} must be a mapping of axis -> list (or a list of such mappings); got {zips!r}")
    out = []
    for i, group in enumerate(groups):
        label = f"{where}[{i}]" if not isinstance(zips, Mapping) else where
        parsed = _parse_grid(group, label)
        if not parsed:
            raise ValueError(f"{label} is empty: give at least one axis")
        lengths = {key: len(values) for key, values in parsed.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{label}: zipped axes must have equal lengths; got {lengths}")
        out.append(parsed)
    return out


def _parse_methods(methods) -> Optional[Dict[str, Dict[str, Any]]]:
    if methods is None:
        return None
    if isinstance(methods, (list, tuple)):  # shorthand: a list of method names
        if not all(isinstance(m, str) for m in methods):
            raise ValueError(f"methods={methods!r}: a list of methods must hold method names; use a mapping label -> fields")
        methods = {m: {"method": m} for m in methods}
    if not isinstance(methods, Mapping):
        raise ValueError(f"methods must be a mapping of label -> config fields (or a list of method names); got {methods!r}")
    if not methods:
        raise ValueError("methods axis is empty: give at least one method")
    out = {}
    for label, entry in methods.items():
        where = f"methods[{label!r}]"
        if not isinstance(label, str) or not label:
            raise ValueError(f"methods: label {label!r} must be a non-empty string")
        if entry is None:
            entry = {"method": label}
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping of config fields (e.g. {{method: ddc, method_options: {{...}}}}); got {entry!r}")
        entry = dict(entry)
        for key in entry:
            if key not in VARIANT_AXES:
                _check_key(key, where)
        parsed = {k: v for k, v in entry.items() if k not in VARIANT_AXES}
        if "grid" in entry:
            parsed["grid"] = _parse_grid(entry["grid"], f"{where}.grid")
        if "zip" in entry:
            parsed["zip"] = _parse_zips(entry["zip"], f"{where}.zip")
        out[label] = parsed
    return out


def _points(grid: Mapping[str, List[Any]], zips: Sequence[Mapping[str, List[Any]]]) -> List[Dict[str, Any]]:
    """Cartesian product of the grid axes and the zip groups (each group moves together)."""
    factors: List[List[Dict[str, Any]]] = [[{key: value} for value in values] for key, values in grid.items()]
    for group in zips:
        keys = list(group)
        factors.append([dict(zip(keys, values)) for values in zip(*(group[k] for k in keys))])
    points = []
    for combo in itertools.product(*factors):
        point: Dict[str, Any] = {}
        for part in combo:
            point.update(part)
        points.append(point)
    return points


def _assign(values: Dict[str, Any], key: str, value) -> None:
    head, dot, tail = key.partition(".")
    if dot:
        current = values.get(head)
        current = dict(current) if isinstance(current, Mapping) else {}
        current[tail] = copy.deepcopy(value)
        values[head] = current
    elif head in MAPPING_FIELDS and isinstance(value, Mapping) and isinstance(values.get(head), Mapping):
        values[head] = {**values[head], **copy.deepcopy(dict(value))}
    else:
        values[head] = copy.deepcopy(value)


def _resolve(assignments: Sequence[Mapping[str, Any]], where: str) -> TrainConfig:
    from . import recipes

    assigned: Dict[str, Any] = {}
    for part in assignments:
        for key, value in part.items():
            _assign(assigned, key, value)
    recipe_name = assigned.pop("recipe", None)
    profile = assigned.pop("profile", None)
    values: Dict[str, Any] = {}
    try:
        if recipe_name is not None:
            values.update(recipes.recipe(recipe_name, profile or recipes.DEFAULT_PROFILE))
        elif profile is not None:
            raise ValueError(f"profile={profile!r} needs a recipe")
        for key, value in assigned.items():
            _assign(values, key, value)
        values["progress"] = False  # workers never draw progress bars
        return TrainConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from None


def _describe(label, point, seed) -> str:
    parts = []
    if label is not None:
        parts.append(f"methods[{label!r}]")
    parts += [f"{k}={v!r}" for k, v in point.items()]
    if seed is not None:
        parts.append(f"seed={seed}")
    return "run " + (", ".join(parts) if parts else "(base)")


# ----------------------------------------------------------------------------- executors


class Executor:
    """The ``concurrent.futures``-style interface every backend implements.

    ``submit(fn, *args)`` returns a future with ``result()`` / ``exception()``;
    ``as_completed(futures)`` yields them as they finish. Use as a context
    manager; ``shutdown(cancel=True)`` drops what has not started.
    """

    workers: int = 1

    def submit(self, fn: Callable, *args) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        return concurrent.futures.as_completed(list(futures))

    def shutdown(self, cancel: bool = False) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(cancel=exc_type is not None)


def _init_worker(threads: Optional[int]) -> None:
    _die_with_parent()
    if threads:
        import torch

        torch.set_num_threads(threads)


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the sweep process dies, even by SIGKILL.

    Otherwise orphaned workers would keep training until their current run
    ends. The run itself is safe either way (published whole or resumed).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - no libc: workers simply outlive the parent
        pass


class LocalExecutor(Executor):
    """Worker processes on this machine (``pebble.ProcessPool``, ``spawn``/``forkserver``).

    A worker that dies fails only its own task (``pebble.ProcessExpired``);
    the pool replaces it and the other tasks go on. ``threads``: torch threads
    of a worker outside training (each run trains with its config's ``num_threads``).
    """

    def __init__(self, workers: Optional[int] = None, *, threads: Optional[int] = 1, context: str = "spawn"):
        import pebble

        if context not in ("spawn", "forkserver"):
            raise ValueError(f"context={context!r} must be 'spawn' or 'forkserver' (fork is unsafe with torch threads)")
        self.workers = _check_workers(workers or os.cpu_count() or 1)
        self.threads = threads
        self._pool = pebble.ProcessPool(
            max_workers=self.workers,
            initializer=_init_worker,
            initargs=(threads,),
            context=multiprocessing.get_context(context),
        )

    def submit(self, fn, *args):
        return self._pool.schedule(fn, args=args)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            self._pool.stop()
        else:
            self._pool.close()
        self._pool.join()


class DaskExecutor(Executor):
    """``dask.distributed``: an existing scheduler at ``address``, or a loopback ``LocalCluster``."""

    def __init__(self, workers: Optional[int] = None, *, address: Optional[str] = None, threads: Optional[int] = 1):
        from distributed import Client, LocalCluster

        self.threads = threads
        self._cluster = None
        if address:
            self._client = Client(address)
            self.workers = max(len(self._client.scheduler_info().get("workers", {})), 1)
        else:
            self.workers = _check_workers(workers or os.cpu_count() or 1)
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            self._client = Client(self._cluster)

    @property
    def client(self):
        return self._client

    def submit(self, fn, *args):
        return self._client.submit(fn, *args, pure=False)

    def as_completed(self, futures):
        from distributed import as_completed

        return as_completed(list(futures))

    def shutdown(self, cancel: bool = False) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()


class SerialExecutor(Executor):
    """Runs each call in this process when submitted (for debugging: breakpoints work)."""

    def __init__(self, workers: Optional[int] = None, **_):
        self.workers = 1

    def submit(self, fn, *args):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as error:  # noqa: BLE001 - delivered through the future
            if isinstance(error, KeyboardInterrupt):
                raise
            future.set_exception(error)
        return future


def _check_workers(workers) -> int:
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive integer")
    return workers


def make_executor(backend: str = "local", *, workers: Optional[int] = None, address: Optional[str] = None, threads: Optional[int] = 1) -> Executor:
    """An :class:`Executor` for ``backend`` (``local``, ``dask`` or ``serial``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {', '.join(BACKENDS)}")
    if address and backend != "dask":
        raise ValueError(f"address={address!r} is only used by backend='dask'")
    if workers is not None:
        _check_workers(workers)
    if backend == "local":
        return LocalExecutor(workers, threads=threads)
    if backend == "dask":
        return DaskExecutor(workers, address=address, threads=threads)
    return SerialExecutor()


# ----------------------------------------------------------------------------- one task


def _failed_path(root: Path, run_id: str) -> Path:
    return Path(root) / FAILED / f"{run_id}.json"


def _record_failure(root: Path, run_id: str, config: dict, error: str, trace: str, sweep: str) -> Path:
    return store.write_json(
        _failed_path(root, run_id),
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
        from .train import run

        train_config = TrainConfig.from_dict(config)
        if train_config.run_id() != run_id:
            raise RuntimeError(f"config resolves to run id {train_config.run_id()} in this worker, not {run_id}: different ddc versions?")
        path = run(train_config, root)  # holds the run's lock: waits while another writer has it
        with contextlib.suppress(FileNotFoundError):
            _failed_path(Path(root), run_id).unlink()
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


# ----------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """What a sweep did, and its runs as one table."""

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
        return not self.failed and len(self.skipped) + len(self.completed) == len(self.run_ids)

    @property
    def done(self) -> List[str]:
        finished = set(self.skipped) | set(self.completed)
        return [r for r in self.run_ids if r in finished]

    def frame(self):
        """Runs table of this sweep (see :func:`sweep_frame`)."""
        return sweep_frame(self.spec, self.root)

    def connect(self):
        """DuckDB connection over this sweep's runs (see :func:`sweep_connect`)."""
        return sweep_connect(self.spec, self.root)

    def failures(self) -> Dict[str, dict]:
        """The failure records (config, error, traceback) of the failed runs."""
        out = {}
        for run_id in self.failed:
            path = _failed_path(self.root, run_id)
            if path.exists():
                out[run_id] = store.read_json(path)
        return out

    def __repr__(self) -> str:
        return (
            f"SweepResult({self.spec.name!r}, root={str(self.root)!r}, runs={len(self.run_ids)}, "
            f"skipped={len(self.skipped)}, completed={len(self.completed)}, failed={len(self.failed)}, "
            f"retried={len(self.retried)}, "
            f"seconds={self.seconds:.1f})"
        )


def sweep_status(spec: SpecLike, root) -> Dict[str, str]:
    """``run_id -> done | failed | partial | pending`` for every run of ``spec`` under ``root``.

    ``partial`` is an interrupted run with work in ``.partial`` (it resumes);
    ``failed`` had a failure recorded by an earlier sweep (it is retried).
    """
    spec = load_spec(spec)
    root = Path(root)
    out = {}
    for run_id in spec.run_ids():
        run_dir = store.RunDir(root, run_id)
        if run_dir.finished:
            out[run_id] = "done"
        elif _failed_path(root, run_id).exists():
            out[run_id] = "failed"
        elif run_dir.path.exists():
            out[run_id] = "partial"
        else:
            out[run_id] = "pending"
    return out


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

    ``workers`` defaults to ``os.cpu_count()`` (local) and is capped by the
    number of runs left; ``threads`` is the torch threads of a worker outside
    training (None: torch's default): every run trains with its config's
    ``num_threads`` (:data:`ddc.train.DEFAULT_THREADS` unless set), whoever runs it. An ``executor`` you made yourself (any
    :class:`Executor`) replaces ``backend``/``workers``/``address``; it is not shut down.
    """
    from .progress import emit, tqdm

    started = time.perf_counter()
    spec = load_spec(spec)  # validates everything before anything runs
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {', '.join(BACKENDS)}")
    if workers is not None:
        _check_workers(workers)
    root = Path(_root(root, spec)).absolute()
    runs = spec.runs()
    result = SweepResult(spec=spec, root=root, run_ids=[r.run_id for r in runs])
    pending = []
    for r in runs:
        if store.RunDir(root, r.run_id).finished:
            result.skipped.append(r.run_id)
        else:
            pending.append(r)

    bar = tqdm(
        total=len(runs),
        initial=len(result.skipped),
        desc=f"sweep {spec.name}",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )

    def show(advance: int = 0):
        bar.set_postfix(
            done=len(result.skipped) + len(result.completed),
            failed=len(result.failed),
            remaining=len(runs) - len(result.skipped) - len(result.completed) - len(result.failed),
            refresh=not advance,
        )
        if advance:
            bar.update(advance)
        # for a driver's status line, e.g. the notebook driver's terminal while this runs in a kernel
        emit("sweep", name=spec.name, total=len(runs), done=len(result.skipped) + len(result.completed), failed=len(result.failed))

    show()
    try:
        if pending:
            root.mkdir(parents=True, exist_ok=True)
            own = executor is None
            if own:
                count = min(workers or os.cpu_count() or 1, len(pending))
                executor = make_executor(backend, workers=count, address=address, threads=threads)
            try:
                _drive(executor, pending, root, threads, spec.name, result, bar, show)
            except BaseException:
                if own:
                    executor.shutdown(cancel=True)
                    own = False
                raise
            finally:
                if own:
                    executor.shutdown()
    finally:
        bar.close()
    result.seconds = time.perf_counter() - started
    return result


def _drive(executor: Executor, pending: List[SweepRun], root: Path, threads, sweep: str, result: SweepResult, bar, show) -> None:
    by_future: Dict[Any, SweepRun] = {}
    attempts: Dict[str, int] = {}

    def submit(r: SweepRun) -> None:
        attempts[r.run_id] = attempts.get(r.run_id, 0) + 1
        by_future[executor.submit(_run_task, r.run_id, r.config.to_dict(), str(root), threads, sweep)] = r

    for r in pending:
        submit(r)
    while by_future:
        for future in executor.as_completed(list(by_future)):
            r = by_future.pop(future)
            outcome = _outcome(future, r, root, sweep, attempts[r.run_id])
            if outcome["status"] == "worker died" and attempts[r.run_id] < WORKER_ATTEMPTS:
                result.retried[r.run_id] = outcome["error"]
                bar.write(f"RETRY {r.run_id}: {outcome['error']}; retrying it once (it resumes from its checkpoint)", file=sys.stderr)
                submit(r)
                break  # wait again, on the new future too
            if outcome["status"] == "done":
                result.completed.append(r.run_id)
            else:
                result.failed[r.run_id] = outcome["error"]
                bar.write(f"FAILED {r.run_id}: {_first_line(outcome['error'])} (details: {_failed_path(root, r.run_id)})", file=sys.stderr)
            show(1)


def _outcome(future, r: SweepRun, root: Path, sweep: str, attempt: int) -> dict:
    """The task's result dict; a dead worker or a task that could not be shipped becomes a failure."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - a worker died or the task could not be shipped
        died = _worker_death(error)
        message = f"{died} (attempt {attempt} of {WORKER_ATTEMPTS})" if died else f"{type(error).__name__}: {error}"
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        with contextlib.suppress(Exception):
            _record_failure(root, r.run_id, r.config.to_dict(), message, trace, sweep)
        return {"run_id": r.run_id, "status": "worker died" if died else "failed", "error": message}


def _worker_death(error: BaseException) -> str:
    """What killed the worker of a task, or '' when ``error`` is not a worker's death."""
    import signal

    code = getattr(error, "exitcode", None)
    if type(error).__name__ == "ProcessExpired" and isinstance(code, int):
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"its worker process died of {name} (exit code {code})"
        return f"its worker process exited with code {code}"
    if isinstance(error, concurrent.futures.process.BrokenProcessPool):
        return f"its worker process died ({error})"
    if type(error).__name__ == "KilledWorker":  # dask: the task's workers died (dask retries them itself)
        return f"its dask worker died ({error})"
    return ""


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


# ----------------------------------------------------------------------------- results


def _finished_dirs(spec: Spec, root) -> Tuple[List[SweepRun], List[Path]]:
    root = Path(root)
    runs = [r for r in spec.runs() if store.RunDir(root, r.run_id).finished]
    return runs, [root / r.run_id for r in runs]


def _root(root, spec: Spec) -> Path:
    """``root``, or when None the default store (:func:`ddc.store.default_root`) at the spec's profile."""
    if root is not None:
        return Path(root)
    profile = spec.base.get("profile")
    return store.default_root(profile if isinstance(profile, str) else None)


def sweep_frame(spec: SpecLike, root=None):
    """One row per finished run of ``spec`` under ``root`` (pandas).

    Columns: ``sweep`` (the spec's name), ``variant`` (its ``methods`` label,
    or None), then :func:`ddc.store.load_runs`'s ``run_id``, ``path``,
    flattened config (method options as their own columns) and summary
    metrics. Runs of other sweeps under the same root are left out.
    """
    import pandas as pd

    spec = load_spec(spec)
    root = _root(root, spec)
    runs, dirs = _finished_dirs(spec, root)
    frame = store.load_runs(dirs) if dirs else pd.DataFrame(columns=["run_id", "path"])
    variants = {r.run_id: r.variant for r in runs}
    order = {r.run_id: i for i, r in enumerate(runs)}
    frame.insert(0, "variant", frame["run_id"].map(variants) if len(frame) else pd.Series(dtype=object))
    frame.insert(0, "sweep", spec.name)
    if len(frame):
        frame = frame.iloc[frame["run_id"].map(order).argsort()].reset_index(drop=True)
    return frame


def sweep_connect(spec: SpecLike, root=None):
    """DuckDB connection with views ``runs`` (= :func:`sweep_frame`), ``metrics``, ``records``
    over the finished runs of ``spec`` only."""
    import duckdb

    spec = load_spec(spec)
    root = _root(root, spec)
    _, dirs = _finished_dirs(spec, root)
    frame = sweep_frame(spec, root)
    if dirs:
        con = store.connect(dirs)
    else:
        con = duckdb.connect()
        for view, columns in (("metrics", store.METRIC_COLUMNS), ("records", store.RECORD_COLUMNS)):
            con.execute(f"CREATE VIEW {view} AS SELECT {', '.join(f'NULL AS {c}' for c in columns)} WHERE FALSE")
    con.register("sweep_runs_df", frame)
    con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM sweep_runs_df")
    return con


# ----------------------------------------------------------------------------- CLI


@click.command("sweep", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("spec_path", metavar="SPEC", type=click.Path(exists=True, dir_okay=False))
@click.option("--root", default=None, type=click.Path(file_okay=False), help="Run store root [default: $DDC_RUNS, else outputs/<the spec's profile>/runs].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Parallel runs [default: all cores / the cluster's workers].")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Where runs execute [default: dask with --address, else local].")
@click.option("--address", default=None, help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (implies --backend dask).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch threads of a worker outside training; each run trains with its config's num_threads (default 1).")
@click.option("--dry-run", is_flag=True, help="List the run ids and whether each is done, failed, partial or pending; run nothing.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar of the sweep.")
def sweep_command(spec_path, root, workers, backend, address, threads, dry_run, progress):
    """Run the grid of runs described by the YAML sweep SPEC into the run store.

    Finished runs are skipped, interrupted ones resume, failing ones are
    recorded under ROOT/.failed and the sweep goes on. Run it again after an
    interruption to complete the grid. Exits with status 1 if any run failed.
    """
    backend = backend or ("dask" if address else "local")
    try:
        spec = load_spec(spec_path)
        if address and backend != "dask":
            raise ValueError("--address needs --backend dask")
    except ValueError as error:
        raise UserError(error) from None
    root = str(_root(root, spec))

    if dry_run:
        status = sweep_status(spec, root) if Path(root).exists() else {r: "pending" for r in spec.run_ids()}
        variants = {r.run_id: r.variant for r in spec.runs()}
        for run_id, state in status.items():
            label = f"  [{variants[run_id]}]" if variants[run_id] else ""
            click.echo(f"{state:<8} {run_id}{label}")
        counts = {s: list(status.values()).count(s) for s in ("done", "failed", "partial", "pending")}
        click.echo(f"sweep {spec.name}: {len(status)} runs, " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (root {root})")
        return

    try:
        result = run_sweep(spec, root, workers=workers, backend=backend, address=address, progress=progress, threads=threads)
    except OSError as error:  # the store cannot be written: named, one line
        from .clierrors import store_error

        raise store_error(error) from None
    click.echo(
        f"sweep {spec.name}: {len(result.run_ids)} runs, {len(result.skipped)} already done, "
        f"{len(result.completed)} completed, {len(result.failed)} failed in {result.seconds:.1f}s (root {root})"
    )
    for run_id, why in result.retried.items():
        state = "failed again" if run_id in result.failed else "then completed"
        click.echo(f"  retried {run_id}: {why}; {state}")
    if result.failed:
        for run_id, error in result.failed.items():
            click.echo(f"  failed {run_id}: {_first_line(error)}", err=True)
        click.echo(f"tracebacks in {Path(root) / FAILED}; run the sweep again to retry them", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover - `python -m ddc.sweep SPEC ...`
    # Import the module by its name so worker tasks pickle as ddc.sweep._run_task, not __main__.
    from ddc.sweep import sweep_command as _command

    _command()
