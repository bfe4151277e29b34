"""Where a sweep's runs execute: one ``concurrent.futures``-style interface, three backends.

:class:`Executor`: ``submit(fn, *args) -> future``, ``as_completed(futures)``.

- ``local`` (:class:`LocalExecutor`): a ``pebble.ProcessPool`` (``spawn``
  context) of ``os.cpu_count()`` workers. Unlike
  ``concurrent.futures.ProcessPoolExecutor``, whose pool breaks and fails every
  unfinished run when one worker dies, it fails only the task of the dead
  worker and starts a new worker;
- ``dask`` (:class:`DaskExecutor`): ``dask.distributed`` on an existing
  scheduler (``address``) or on a ``LocalCluster`` bound to 127.0.0.1. The run
  root must then be a filesystem shared by the workers;
- ``serial`` (:class:`SerialExecutor`): in this process, one run after the
  other (debugging).

Process control: a local worker dies with its sweep (Linux, ``PR_SET_PDEATHSIG``),
and :func:`worker_death` tells a dead worker from a failing task.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Optional

from .._optional import require

BACKENDS = ("local", "dask", "serial")


class Executor:
    """The ``concurrent.futures``-style interface every backend implements.

    ``submit(fn, *args)`` returns a future with ``result()`` / ``exception()``;
    ``as_completed(futures)`` yields them as they finish. Use as a context
    manager; ``shutdown(cancel=True)`` drops what has not started.
    ``workers``: how many runs a sweep keeps submitted at once (it submits the
    next run as one finishes).

    Raises:
        :meth:`submit` raises ``NotImplementedError`` on this base class; nothing else of its own.
    """

    workers: int = 1

    def submit(self, function: Callable, *args) -> Any:  # pragma: no cover - interface
        """Schedule ``function(*args)``; returns its future.

        Raises:
            NotImplementedError: always, here; every backend implements it.
        """
        raise NotImplementedError

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        """The ``futures`` as they finish.

        Raises:
            Nothing of its own; ``concurrent.futures.as_completed``'s errors pass through.
        """
        return concurrent.futures.as_completed(list(futures))

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the submitted work and free the workers (``cancel``: drop what has not started).

        Raises:
            Nothing (does nothing here).
        """

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.shutdown(cancel=exc_type is not None)


def _init_worker(threads: Optional[int]) -> None:
    _die_with_parent()
    _bars_without_semaphores()
    if threads:
        import torch

        torch.set_num_threads(threads)


def _bars_without_semaphores() -> None:
    """Give tqdm a thread lock in a worker.

    tqdm's default lock makes a named multiprocessing semaphore; a worker
    killed by SIGKILL cannot unlink it, and the sweep ends with
    ``resource_tracker: There appear to be N leaked semaphore objects``. A
    worker's bars are written by its own threads only.
    """
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


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
    the pool replaces it and the other tasks go on. When every worker dies at
    once pebble's pool breaks (``BrokenProcessPool``): the tasks it held fail
    as their workers' deaths and the next ``submit`` starts a fresh pool. ``threads``: torch threads
    of a worker outside training (each run trains with its config's ``num_threads``).
    ``workers`` defaults to ``os.cpu_count()``.

    Raises:
        ValueError: ``context`` is not ``spawn`` or ``forkserver``, or ``workers`` is not a positive integer.
    """

    def __init__(self, workers: Optional[int] = None, *, threads: Optional[int] = 1, context: str = "spawn"):
        if context not in ("spawn", "forkserver"):
            raise ValueError(f"context={context!r} must be 'spawn' or 'forkserver' (fork is unsafe with torch threads)")
        self.workers = check_workers(workers or os.cpu_count() or 1)
        self.threads = threads
        self._context = multiprocessing.get_context(context)
        self._pool = self._new_pool()
        self._futures: list = []  # of the current pool, not yet done
        self.renewed = 0  # pools replaced after they broke

    def _new_pool(self):
        import pebble

        return pebble.ProcessPool(max_workers=self.workers, initializer=_init_worker, initargs=(self.threads,),
                                  context=self._context)

    def _broken(self) -> bool:
        """The pool stopped working (pebble's ``ERROR`` state: e.g. every worker died at once)."""
        import pebble.pool.base_pool as base

        pool = self._pool
        status = pool._context.status
        return status == base.PoolStatus.ERROR or (status == base.PoolStatus.RUNNING and not pool.active)

    def _renew(self) -> None:
        """Replace a broken pool by a fresh one; its tasks still pending fail as a dead worker's."""
        from concurrent.futures.process import BrokenProcessPool

        old, self._pool = self._pool, self._new_pool()
        self.renewed += 1
        for future in self._futures:
            if not future.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(BrokenProcessPool("the worker pool broke (its workers died)"))
        self._futures = []
        with contextlib.suppress(Exception):
            old.stop()
            old.join(timeout=30)

    def submit(self, function, *args):
        """Schedule ``function(*args)`` on a worker process (it must be picklable by name).

        A pool that broke (every worker died at once) is replaced by a fresh
        one first, so one dead pool fails only the runs it was running.

        Raises:
            RuntimeError: the pool refused the task while it was not broken
                (e.g. it was closed).
        """
        if self._broken():
            self._renew()
        try:
            future = self._pool.schedule(function, args=args)
        except RuntimeError:
            if not self._broken():
                raise
            self._renew()
            future = self._pool.schedule(function, args=args)
        self._futures = [f for f in self._futures if not f.done()] + [future]
        return future

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the tasks (``cancel``: stop the workers now) and join them.

        Raises:
            Nothing of its own.
        """
        if cancel or self._broken():
            self._pool.stop()
        else:
            self._pool.close()
        self._pool.join()


class DaskExecutor(Executor):
    """``dask.distributed``: an existing scheduler at ``address``, or a loopback ``LocalCluster``
    of ``workers`` single-threaded processes (default ``os.cpu_count()``).

    Raises:
        ValueError: ``workers`` is not a positive integer.
        OSError: the scheduler at ``address`` cannot be reached (``distributed``'s error).
        MissingExtra: ``distributed`` is not installed.
    """

    def __init__(self, workers: Optional[int] = None, *, address: Optional[str] = None, threads: Optional[int] = 1):
        distributed = require("distributed", "the dask sweep backend")
        Client, LocalCluster = distributed.Client, distributed.LocalCluster

        self.threads = threads
        self._cluster = None
        if address:
            self._client = Client(address)
            self.workers = max(len(self._client.scheduler_info().get("workers", {})), 1)
        else:
            self.workers = check_workers(workers or os.cpu_count() or 1)
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
        """The ``distributed.Client``.

        Raises:
            Nothing.
        """
        return self._client

    def submit(self, function, *args):
        """Schedule ``function(*args)`` on the cluster (never cached as a pure call).

        Raises:
            Nothing of its own; ``distributed``'s errors (a closed client) pass through.
        """
        return self._client.submit(function, *args, pure=False)

    def as_completed(self, futures):
        """The futures as they finish (``distributed.as_completed``).

        Raises:
            MissingExtra: ``distributed`` is not installed (not reached once the executor exists).
        """
        as_completed = require("distributed", "the dask sweep backend").as_completed

        return as_completed(list(futures))

    def shutdown(self, cancel: bool = False) -> None:
        """Close the client, and the local cluster when this executor started one.

        Raises:
            Nothing (errors while closing are suppressed).
        """
        with contextlib.suppress(Exception):
            self._client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()


class SerialExecutor(Executor):
    """Runs each call in this process when submitted (for debugging: breakpoints work).

    A ``KeyboardInterrupt`` stops the sweep; any other error goes into the call's future.

    Raises:
        Nothing on construction; :meth:`submit` re-raises ``KeyboardInterrupt``.
    """

    def __init__(self, workers: Optional[int] = None, **_):
        self.workers = 1

    def submit(self, function, *args):
        """Call ``function(*args)`` now; returns a finished future.

        Raises:
            KeyboardInterrupt: the call was interrupted (it stops the sweep).
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(function(*args))
        except BaseException as error:  # noqa: BLE001 - delivered through the future
            if isinstance(error, KeyboardInterrupt):
                raise
            future.set_exception(error)
        return future


def check_workers(workers) -> int:
    """``workers``, checked.

    Raises:
        ValueError: ``workers`` is not a positive integer.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive integer")
    return workers


def make_executor(backend: str = "local", *, workers: Optional[int] = None, address: Optional[str] = None, threads: Optional[int] = 1) -> Executor:
    """An :class:`Executor` for ``backend`` (``local``, ``dask`` or ``serial``).

    ``workers``: processes (default: the backend's); ``address``: a dask
    scheduler (``dask`` only); ``threads``: torch threads of a worker outside training.

    Raises:
        ValueError: an unknown ``backend``, an ``address`` without ``dask``, or a bad ``workers``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {', '.join(BACKENDS)}")
    if address and backend != "dask":
        raise ValueError(f"address={address!r} is only used by backend='dask'")
    if workers is not None:
        check_workers(workers)
    if backend == "local":
        return LocalExecutor(workers, threads=threads)
    if backend == "dask":
        return DaskExecutor(workers, address=address, threads=threads)
    return SerialExecutor()



def worker_death(error: BaseException) -> str:
    """What killed the worker of a task, or '' when ``error`` is not a worker's death.

    ``error``: what the task's future raised (pebble's ``ProcessExpired``,
    ``BrokenProcessPool``, dask's ``KilledWorker``, or the task's own error).

    Raises:
        Nothing.
    """
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

