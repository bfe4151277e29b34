"""The run store: one directory per run, the contract between ``ddc`` and ``analysis``.

Layout of a finished run ``<root>/<run_id>/``::

    config.json          resolved configuration (everything needed to rerun it)
    metrics.parquet      per-epoch metrics, long: run_id, epoch, step, split, metric, value
    records/part-*.parquet  recorder output, long: run_id, step, epoch, layer, metric, value
    snapshots/step-*.pt  full tensors (drop probability, mask, gradient) every N steps
    summary.json         final numbers (test accuracy at the best validation epoch, ...)

Every file is written to a temporary name and renamed into place, so a killed
process never leaves half a file. A run is trained in ``<root>/.partial/<run_id>``
and the whole directory is renamed to ``<root>/<run_id>`` when it finishes:
readers only ever see complete runs.

Pandas, pyarrow and DuckDB are imported when used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

PARTIAL = ".partial"
#: environment variable naming the run store that every command and the notebooks use
RUNS_ENV = "DDC_RUNS"
#: where ``make paper`` / ``ddc notebooks run`` put executed notebooks and, per profile, the run store
OUTPUTS = "outputs"
METRIC_COLUMNS = ["run_id", "epoch", "step", "split", "metric", "value"]
RECORD_COLUMNS = ["run_id", "step", "epoch", "layer", "metric", "value"]


# ----------------------------------------------------------------------------- the default store


def default_root(profile: Optional[str] = None, outputs: PathLike = OUTPUTS) -> Path:
    """The run store used when none is given: ``$DDC_RUNS`` when set, else ``<outputs>/<profile>/runs``.

    That is the store ``make paper`` (``ddc notebooks run``) writes at ``profile``
    (default :data:`ddc.recipes.DEFAULT_PROFILE`), relative to the working
    directory. Every command (``train``, ``sweep``, ``runs``, ``report``,
    ``figures``) and the notebook driver resolve their default through this one
    function, so they find each other's runs.
    """
    from .recipes import DEFAULT_PROFILE

    env = os.environ.get(RUNS_ENV)
    if env:
        return Path(env)
    return Path(outputs) / (profile or DEFAULT_PROFILE) / "runs"


# ----------------------------------------------------------------------------- atomic files


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: PathLike, obj) -> Path:
    """Write ``obj`` as JSON, atomically."""

    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())

    return _atomic(Path(path), write)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def read_json(path: PathLike):
    with open(path) as fh:
        return json.load(fh)


def write_parquet(path: PathLike, frame) -> Path:
    """Write a pandas DataFrame as parquet, atomically."""
    return _atomic(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def write_torch(path: PathLike, obj) -> Path:
    import torch

    return _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


# ----------------------------------------------------------------------------- one run


class RunDir:
    """Writes one run. Work happens under ``<root>/.partial/<run_id>``; ``finish`` publishes it."""

    def __init__(self, root: PathLike, run_id: str):
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"run_id={run_id!r} must be a non-empty name without '/' or a leading '.'")
        self.root = Path(root)
        self.run_id = run_id
        self.final = self.root / run_id
        self.path = self.root / PARTIAL / run_id

    @property
    def finished(self) -> bool:
        return (self.final / "summary.json").exists()

    def start(self, config: dict) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / "config.json", config)
        return self

    def write_metrics(self, rows: Sequence[dict]) -> None:
        """Rewrite ``metrics.parquet`` with all rows so far (small: one row per epoch and metric)."""
        import pandas as pd

        write_parquet(self.path / "metrics.parquet", pd.DataFrame(list(rows), columns=METRIC_COLUMNS))

    def records_dir(self) -> Path:
        return self.path / "records"

    def snapshot(self, step: int, tensors: dict) -> Path:
        return write_torch(self.path / "snapshots" / f"step-{step:08d}.pt", tensors)

    def finish(self, summary: dict) -> Path:
        """Write ``summary.json`` and move the run into place in one rename."""
        write_json(self.path / "summary.json", summary)
        if self.final.exists():  # a stale copy from a crashed publish; the new run replaces it
            shutil.rmtree(self.final)
        os.replace(self.path, self.final)
        return self.final


class RecordWriter:
    """Buffers long-format rows and flushes them as numbered parquet parts.

    Memory is bounded by ``flush_rows``; each part is written atomically, so an
    interrupted run keeps every part written before the interruption.
    """

    def __init__(self, directory: PathLike, run_id: str, flush_rows: int = 20_000):
        self.directory = Path(directory)
        self.run_id = run_id
        self.flush_rows = flush_rows
        self.rows: List[tuple] = []
        existing = sorted(self.directory.glob("part-*.parquet")) if self.directory.exists() else []
        self.next_part = len(existing)

    def add(self, step: int, epoch: int, layer: str, metric: str, value: float) -> None:
        self.rows.append((self.run_id, step, epoch, layer, metric, value))
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=RECORD_COLUMNS)
        frame["value"] = frame["value"].astype("float64")
        write_parquet(self.directory / f"part-{self.next_part:05d}.parquet", frame)
        self.next_part += 1
        self.rows = []


# ----------------------------------------------------------------------------- reading


def run_dirs(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    """Finished run directories under the given roots or run paths (sorted, no duplicates)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for path in map(Path, paths):
        if (path / "summary.json").exists():
            found.append(path)
        elif path.is_dir():
            found += [p for p in path.glob("*") if (p / "summary.json").exists() and not p.name.startswith(".")]
        else:
            raise FileNotFoundError(f"no run directory or run root at {path}")
    return sorted(set(found))


def flatten_config(config: dict) -> dict:
    """One row of columns from a nested config: method options become top-level columns."""
    row = {}
    for key, value in config.items():
        if key == "method_options" and isinstance(value, dict):
            row.update({k: _scalar(v) for k, v in value.items()})
        elif isinstance(value, dict):
            row.update({f"{key}.{k}": _scalar(v) for k, v in value.items()})
        else:
            row[key] = _scalar(value)
    return row


def _scalar(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def load_runs(paths) -> "pandas.DataFrame":
    """One row per finished run: ``run_id``, flattened config columns, summary columns."""
    import pandas as pd

    rows = []
    for path in run_dirs(paths):
        row = {"run_id": path.name, "path": str(path)}
        row.update(flatten_config(read_json(path / "config.json")))
        row.update(read_json(path / "summary.json"))
        rows.append(row)
    return pd.DataFrame(rows)


def load_metrics(paths) -> "pandas.DataFrame":
    """Per-epoch metrics of all runs, long format (``METRIC_COLUMNS``)."""
    import pandas as pd

    frames = [pd.read_parquet(p / "metrics.parquet") for p in run_dirs(paths) if (p / "metrics.parquet").exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)


def load_records(paths) -> "pandas.DataFrame":
    """Recorder rows of all runs, long format (``RECORD_COLUMNS``)."""
    import pandas as pd

    frames = [pd.read_parquet(part) for p in run_dirs(paths) for part in sorted((p / "records").glob("part-*.parquet"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECORD_COLUMNS)


def connect(paths):
    """A DuckDB connection (in memory, no server) with views ``runs``, ``metrics``, ``records``.

    ``runs`` comes from the JSON files; ``metrics`` and ``records`` are read
    straight from the parquet files by DuckDB.
    """
    import duckdb

    dirs = run_dirs(paths)
    con = duckdb.connect()
    runs = load_runs(dirs)
    con.register("runs_df", runs)
    con.execute("CREATE VIEW runs AS SELECT * FROM runs_df")
    for view, pattern, columns in (
        ("metrics", "metrics.parquet", METRIC_COLUMNS),
        ("records", "records/part-*.parquet", RECORD_COLUMNS),
    ):
        files = [str(f) for d in dirs for f in sorted(d.glob(pattern))]
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{listing}])")
        else:
            empty = ", ".join(f"NULL AS {c}" for c in columns)
            con.execute(f"CREATE VIEW {view} AS SELECT {empty} WHERE FALSE")
    return con


def sql(query: str, paths) -> "pandas.DataFrame":
    """Run SQL over the runs under ``paths``; tables ``runs``, ``metrics``, ``records``."""
    con = connect(paths)
    try:
        return con.execute(query).df()
    finally:
        con.close()
