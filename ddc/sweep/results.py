"""A sweep's runs in the run store: their status, one table of them, SQL over them.

Only the spec's own runs are read: runs of other sweeps (or of ``ddc train``)
under the same root are left out. pandas and DuckDB are imported when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import store
from .._optional import require
from .spec import Spec, SpecLike, SweepRun, load_spec

#: where a failed run's record (config, error, traceback) goes, under the run root
FAILED = ".failed"


def failed_path(root, run_id: str) -> Path:
    """Where the failure record of ``run_id`` lives under ``root``: ``<root>/.failed/<run_id>.json``.

    Raises:
        Nothing (the path is not checked).
    """
    return Path(root) / FAILED / f"{run_id}.json"


def sweep_root(root, spec: Spec) -> Path:
    """``root``, or when None the default store (:func:`ddc.store.default_root`) at the spec's profile.

    Raises:
        Nothing of its own.
    """
    if root is not None:
        return Path(root)
    profile = spec.base.get("profile")
    return store.default_root(profile if isinstance(profile, str) else None)


def sweep_status(spec: SpecLike, root) -> Dict[str, str]:
    """``run_id -> done | failed | partial | pending`` for every run of ``spec`` under ``root``.

    ``partial`` is an interrupted run with work in ``.partial`` (it resumes);
    ``failed`` had a failure recorded by an earlier sweep (it is retried).

    Raises:
        ValueError, FileNotFoundError, TypeError: ``spec`` cannot be loaded (:func:`load_spec`).
    """
    spec = load_spec(spec)
    root = Path(root)
    status = {}
    for run_id in spec.run_ids():
        run_dir = store.RunDir(root, run_id)
        if run_dir.finished:
            status[run_id] = "done"
        elif failed_path(root, run_id).exists():
            status[run_id] = "failed"
        elif run_dir.path.exists():
            status[run_id] = "partial"
        else:
            status[run_id] = "pending"
    return status


def _finished_dirs(spec: Spec, root) -> Tuple[List[SweepRun], List[Path]]:
    root = Path(root)
    runs = [run for run in spec.runs() if store.RunDir(root, run.run_id).finished]
    return runs, [root / run.run_id for run in runs]


def sweep_frame(spec: SpecLike, root=None):
    """One row per finished run of ``spec`` under ``root`` (pandas), in the spec's run order.

    Columns: ``sweep`` (the spec's name), ``variant`` (its ``methods`` label,
    or None), then :func:`ddc.store.load_runs`'s ``run_id``, ``path``,
    flattened config (method options as their own columns) and summary
    metrics. ``root``: default :func:`sweep_root`.

    Raises:
        ValueError, FileNotFoundError, TypeError: ``spec`` cannot be loaded (:func:`load_spec`).
    """
    pd = require("pandas", "sweep results")

    spec = load_spec(spec)
    runs, dirs = _finished_dirs(spec, sweep_root(root, spec))
    frame = store.load_runs(dirs) if dirs else pd.DataFrame(columns=["run_id", "path"])
    variants = {run.run_id: run.variant for run in runs}
    order = {run.run_id: position for position, run in enumerate(runs)}
    frame.insert(0, "variant", frame["run_id"].map(variants) if len(frame) else pd.Series(dtype=object))
    frame.insert(0, "sweep", spec.name)
    if len(frame):
        frame = frame.iloc[frame["run_id"].map(order).argsort()].reset_index(drop=True)
    return frame


def sweep_connect(spec: SpecLike, root: Optional[Path] = None):
    """A DuckDB connection with views ``runs`` (= :func:`sweep_frame`), ``metrics`` and ``records``
    over the finished runs of ``spec`` only (empty views when none is finished).

    Raises:
        ValueError, FileNotFoundError, TypeError: ``spec`` cannot be loaded (:func:`load_spec`).
    """
    duckdb = require("duckdb", "SQL over sweep results")

    spec = load_spec(spec)
    root = sweep_root(root, spec)
    _, dirs = _finished_dirs(spec, root)
    frame = sweep_frame(spec, root)
    if dirs:
        connection = store.connect(dirs)
    else:
        connection = duckdb.connect()
        for view, columns in (("metrics", store.METRIC_COLUMNS), ("records", store.RECORD_COLUMNS)):
            connection.execute(f"CREATE VIEW {view} AS SELECT {', '.join(f'NULL AS {column}' for column in columns)} WHERE FALSE")
    connection.register("sweep_runs_df", frame)
    connection.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM sweep_runs_df")
    return connection
