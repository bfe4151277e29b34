"""Sweeps: a grid of training runs, run on every core or on a cluster, resumable.

Three parts, one module each:

- :mod:`ddc.sweep.spec`: the YAML spec (base, methods, grid, zip, seeds),
  parsed, checked and expanded into validated :class:`ddc.train.TrainConfig`
  runs before anything runs (:class:`Spec`, :func:`load_spec`);
- :mod:`ddc.sweep.executors`: where runs execute, one
  ``concurrent.futures``-style interface over a ``pebble`` process pool
  (``local``), ``dask.distributed`` (``dask``) and this process (``serial``),
  and the control of worker processes;
- :mod:`ddc.sweep.results`: a sweep's runs in the store: :func:`sweep_status`,
  :func:`sweep_frame` (pandas), :func:`sweep_connect` (DuckDB).

:func:`run_sweep` (:mod:`ddc.sweep.runner`) joins them: it skips finished
runs, trains the rest through an executor, records failures and retries a run
whose worker died once. The command line is ``ddc sweep`` (:mod:`ddc.cli`).

Scripts that run a local sweep must guard their entry point with
``if __name__ == "__main__":`` (worker processes are spawned).
"""

from .executors import BACKENDS, DaskExecutor, Executor, LocalExecutor, SerialExecutor, make_executor
from .results import FAILED, failed_path, sweep_connect, sweep_frame, sweep_root, sweep_status
from .runner import WORKER_ATTEMPTS, SweepResult, run_sweep
from .spec import Spec, SpecLike, SweepRun, load_spec

__all__ = [
    "Spec",
    "SweepRun",
    "SweepResult",
    "Executor",
    "LocalExecutor",
    "DaskExecutor",
    "SerialExecutor",
    "BACKENDS",
    "FAILED",
    "WORKER_ATTEMPTS",
    "load_spec",
    "make_executor",
    "run_sweep",
    "sweep_root",
    "sweep_status",
    "sweep_frame",
    "sweep_connect",
    "failed_path",
    "SpecLike",
    "sweep_command",
]


def __getattr__(name: str):
    # The click command lives in ddc.cli (which imports this package); it is
    # reachable here too, for scripts and tests that know it by this name.
    if name == "sweep_command":
        from ..cli import sweep

        return sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
