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

One writer per run: every writer (``ddc train``, sweeps, notebooks, all through
:func:`ddc.train.run`) holds :func:`run_lock` (``<root>/.locks/<run_id>.lock``,
an ``flock`` that dies with its process) while it trains and publishes a run.
Nothing is ever deleted at a run's final path: a directory there that is not a
finished run stops the writer with :class:`RunPathOccupied`, naming it.

Readers (:func:`scan`, :func:`load_runs`, :func:`connect`) take every good run
and name the bad ones (a finished run's ``config.json`` or ``summary.json``
missing or unreadable, a truncated parquet file) instead of failing on them.

Pandas, pyarrow and DuckDB are imported when used.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ._optional import require

PathLike = Union[str, os.PathLike]

PARTIAL = ".partial"
LOCKS = ".locks"
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

    Raises:
        Nothing (the path is not checked or created).
    """
    from .recipes import DEFAULT_PROFILE

    from_environment = os.environ.get(RUNS_ENV)
    if from_environment:
        return Path(from_environment)
    return Path(outputs) / (profile or DEFAULT_PROFILE) / "runs"


# ----------------------------------------------------------------------------- errors


class StoreWriteError(OSError):
    """Writing into the run store failed (disk full, read-only, not a directory, ...).

    The message names the path and says what happened; ``errno`` is the
    operating system's. What was written before stays as it was.

    Raises:
        Nothing on construction; it is what the store's writers raise.
    """

    def __init__(self, path: PathLike, error: OSError):
        super().__init__(error.errno, error.strerror or str(error), str(path))
        self.path = Path(path)
        self.message = describe_os_error(path, error)

    def __str__(self) -> str:
        return self.message


class RunPathOccupied(FileExistsError):
    """Something that is not a finished run sits at a run's final path; it is never deleted.

    Raises:
        Nothing; it is what :meth:`RunDir.check_final_path` raises.
    """


class RunBusy(RuntimeError):
    """Another process is writing this run (it holds the run's lock).

    Raises:
        Nothing; it is what taking a held run lock raises.
    """


def describe_os_error(path: PathLike, error: OSError) -> str:
    """One line: what failed, where, and what to do about a full disk or a read-only store.

    Raises:
        Nothing.
    """
    where = getattr(error, "filename", None) or path
    what = error.strerror or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device of {where} ({what}): free some space and run again; finished runs are kept and an interrupted run resumes from its last epoch"
    if error.errno == errno.EFBIG:
        return f"cannot write {where}: {what} (a file-size limit of this system or file system): finished runs are kept and an interrupted run resumes from its last epoch"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {what}; choose a run store you can write (--root)"
    return f"cannot write {where}: {what}"


def _writing(path: PathLike):
    """Re-raise an ``OSError`` as :class:`StoreWriteError` naming ``path``."""

    @contextlib.contextmanager
    def context():
        try:
            yield
        except StoreWriteError:
            raise
        except OSError as error:
            raise StoreWriteError(path, error) from error

    return context()


# ----------------------------------------------------------------------------- atomic files


def _atomic(path: Path, write) -> Path:
    """``write(temporary)`` into a new file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(descriptor)
        try:
            write(temporary)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
    return path


def write_json(path: PathLike, value) -> Path:
    """Write ``value`` as JSON (sorted keys; numpy and torch scalars as numbers), atomically; returns ``path``.

    Raises:
        StoreWriteError: the file cannot be written (the message names the path).
        TypeError: ``value`` holds something JSON cannot store.
    """

    def write(temporary):
        with open(temporary, "w") as fh:
            json.dump(value, fh, indent=2, sort_keys=True, default=_json_default)
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
    """The JSON value in ``path``.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not JSON (``json.JSONDecodeError``).
    """
    with open(path) as fh:
        return json.load(fh)


def require_parquet() -> None:
    """Check that the run store's tables can be written (pandas and pyarrow), before a run writes anything.

    Raises:
        ddc._optional.MissingExtra: pandas or pyarrow is not installed (``pip install 'ddc[runs]'``).
    """
    require("pandas", "the run store")
    require("pyarrow", "the run store's parquet files")


def write_parquet(path: PathLike, frame) -> Path:
    """Write a pandas DataFrame as parquet (no index), atomically; returns ``path``.

    Raises:
        StoreWriteError: the file cannot be written (the message names the path).
    """
    require("pyarrow", "writing parquet files")
    return _atomic(Path(path), lambda temporary: frame.to_parquet(temporary, index=False))


def write_torch(path: PathLike, value) -> Path:
    """``torch.save(value)`` into ``path``, atomically; returns ``path``.

    Raises:
        StoreWriteError: the file cannot be written (the message names the path).
    """
    import torch

    # Serialised in memory first, then written by Python: a full disk (or a file-size limit) then
    # surfaces as the OSError it is, instead of torch's C++ writer's "unexpected pos" RuntimeError.
    buffer = io.BytesIO()
    torch.save(value, buffer)

    def write(temporary):
        with open(temporary, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())

    return _atomic(Path(path), write)


# ----------------------------------------------------------------------------- one run


class RunDir:
    """Writes one run. Work happens under ``<root>/.partial/<run_id>``; ``finish`` publishes it.

    Hold :func:`run_lock` for the run while writing (``ddc.train.run`` does).

    Raises:
        ValueError: ``run_id`` is empty, holds a ``/`` or starts with ``.``.
    """

    def __init__(self, root: PathLike, run_id: str):
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"run_id={run_id!r} must be a non-empty name without '/' or a leading '.'")
        self.root = Path(root)
        self.run_id = run_id
        self.final = self.root / run_id
        self.path = self.root / PARTIAL / run_id

    @property
    def finished(self) -> bool:
        """Whether the run is published (its final path holds ``summary.json``).

        Raises:
            Nothing of its own.
        """
        return (self.final / "summary.json").exists()

    def check_final_path(self) -> None:
        """Check that the final path is free or holds this finished run.

        Raises:
            RunPathOccupied: the final path holds something that is not a finished run (it is left alone).
        """
        if self.finished or not (self.final.exists() or self.final.is_symlink()):
            return
        kind = "a directory" if self.final.is_dir() else "a file"
        raise RunPathOccupied(
            f"{self.final} is {kind} but not a finished run of this store (no summary.json); "
            f"ddc never deletes it: move it away to train run {self.run_id} there"
        )

    def start(self, config: dict) -> "RunDir":
        """Create the work directory and write ``config.json``; returns ``self``.

        Raises:
            StoreWriteError: the directory or the file cannot be written.
        """
        with _writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / "config.json", config)
        return self

    def write_metrics(self, rows: Sequence[dict]) -> None:
        """Rewrite ``metrics.parquet`` with all rows so far (small: one row per epoch and metric).

        Raises:
            StoreWriteError: the file cannot be written.
        """
        pd = require("pandas", "the run store")

        write_parquet(self.path / "metrics.parquet", pd.DataFrame(list(rows), columns=METRIC_COLUMNS))

    def records_dir(self) -> Path:
        """Where the Recorder's parquet parts go (not created here).

        Raises:
            Nothing.
        """
        return self.path / "records"

    def snapshot(self, step: int, tensors: dict) -> Path:
        """Save the Recorder's full tensors of ``step`` as ``snapshots/step-NNNNNNNN.pt``; returns the path.

        Raises:
            StoreWriteError: the file cannot be written.
        """
        return write_torch(self.path / "snapshots" / f"step-{step:08d}.pt", tensors)

    def finish(self, summary: Optional[dict] = None, *, required: Sequence[str] = ("config.json",)) -> Path:
        """Write ``summary.json`` (unless None: already written) and move the run into place in one rename.

        Raises:
            RuntimeError: the run lacks a ``required`` file (nothing is published).
            RunPathOccupied: something is at the final path, another writer's finished run included
                (it is not replaced).
            StoreWriteError: a file or the rename cannot be written.
        """
        if summary is not None:
            write_json(self.path / "summary.json", summary)
        missing = [name for name in (*required, "summary.json") if not (self.path / name).exists()]
        if missing:
            raise RuntimeError(f"refusing to publish run {self.run_id}: {self.path} lacks {', '.join(missing)}")
        self.check_final_path()
        if self.finished:
            raise RunPathOccupied(f"run {self.run_id} was published at {self.final} by another writer; {self.path} is left as it is")
        with _writing(self.final):
            os.rename(self.path, self.final)  # an empty directory there would be replaced: checked above
        return self.final


@contextlib.contextmanager
def run_lock(root: PathLike, run_id: str, *, wait: bool = True, on_wait: Optional[Callable[[str], None]] = None):
    """Exclusive lock on one run of the store, for as long as the block runs.

    ``<root>/.locks/<run_id>.lock`` is locked with ``flock``, which the kernel
    drops when its process dies (even by SIGKILL), so no stale lock survives.
    The holder writes who it is into the file. When another process holds it:
    ``wait=True`` calls ``on_wait(holder)`` once and blocks until it is free;
    ``wait=False`` raises :class:`RunBusy` naming the holder.

    Raises:
        RunBusy: another process holds the lock and ``wait`` is False.
        StoreWriteError: the lock file cannot be made (read-only root, ...).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: one writer per run is then up to the user
        yield
        return
    path = Path(root) / LOCKS / f"{run_id}.lock"
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(root, run_id) or "another process"
            if not wait:
                raise RunBusy(f"run {run_id} is being written by {holder} (lock {path}); it was left alone") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def lock_holder(root: PathLike, run_id: str) -> Optional[str]:
    """Who holds (or last held) the lock of ``run_id``: ``"pid N on HOST since TIME"``, or None.

    Raises:
        Nothing (an unreadable lock file gives None).
    """
    try:
        text = (Path(root) / LOCKS / f"{run_id}.lock").read_text().strip()
    except OSError:
        return None
    return text or None


class RecordWriter:
    """Buffers long-format rows and flushes them as numbered parquet parts.

    Memory is bounded by ``flush_rows``; each part is written atomically, so an
    interrupted run keeps every part written before the interruption.

    Raises:
        Nothing on construction; :meth:`flush` and :meth:`add` raise
        ``StoreWriteError``, and ``MissingExtra`` without pandas.
    """

    def __init__(self, directory: PathLike, run_id: str, flush_rows: int = 20_000):
        self.directory = Path(directory)
        self.run_id = run_id
        self.flush_rows = flush_rows
        self.rows: List[tuple] = []
        existing = sorted(self.directory.glob("part-*.parquet")) if self.directory.exists() else []
        self.next_part = len(existing)

    def add(self, step: int, epoch: int, layer: str, metric: str, value: float) -> None:
        """Buffer one row; flushes a part when ``flush_rows`` rows are buffered.

        Raises:
            StoreWriteError: the part flushed cannot be written.
            MissingExtra: pandas is not installed (at a flush).
        """
        self.rows.append((self.run_id, step, epoch, layer, metric, value))
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as the next part (``part-NNNNN.parquet``); nothing when none is buffered.

        Raises:
            StoreWriteError: the part cannot be written.
        """
        if not self.rows:
            return
        pd = require("pandas", "the run store")

        frame = pd.DataFrame(self.rows, columns=RECORD_COLUMNS)
        frame["value"] = frame["value"].astype("float64")
        write_parquet(self.directory / f"part-{self.next_part:05d}.parquet", frame)
        self.next_part += 1
        self.rows = []


# ----------------------------------------------------------------------------- reading


def _is_run_like(path: Path) -> bool:
    return (path / "summary.json").exists() or (path / "config.json").exists()


def check_run(path: PathLike) -> Optional[str]:
    """Why the run directory ``path`` cannot be read (one line), or None for a good run.

    A good run has ``config.json`` and ``summary.json`` holding JSON objects,
    and every parquet file it has is whole (starts and ends with ``PAR1``).

    Raises:
        Nothing of its own: unreadable files are the answer, not an error.
    """
    path = Path(path)
    for name in ("config.json", "summary.json"):
        try:
            value = read_json(path / name)
        except FileNotFoundError:
            return f"no {name}"
        except (OSError, ValueError) as error:
            return f"{name} cannot be read ({type(error).__name__}: {' '.join(str(error).split())})"
        if not isinstance(value, dict):
            return f"{name} holds {type(value).__name__}, not an object"
    for part in [path / "metrics.parquet", *sorted((path / "records").glob("part-*.parquet"))]:
        if part.exists() and not _is_complete_parquet(part):
            return f"{part.relative_to(path)} is not a whole parquet file"
    return None


def _is_complete_parquet(path: Path) -> bool:
    """True when ``path`` starts and ends with parquet's magic bytes ``PAR1`` (a file not cut short)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(-4, os.SEEK_END)
            return head == b"PAR1" and handle.read(4) == b"PAR1"
    except OSError:
        return False


def scan(paths: Union[PathLike, Iterable[PathLike]]) -> Tuple[List[Path], Dict[Path, str]]:
    """``(good, bad)``: the readable finished runs under the given roots or run paths
    (sorted, no duplicates), and ``{path: why}`` for run directories that cannot be read.

    A root's entries starting with ``.`` (``.partial``, ``.locks``, ...) and
    directories with neither ``config.json`` nor ``summary.json`` are not runs.

    Raises:
        FileNotFoundError: a path is neither a run directory nor a directory.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    candidates = []
    for path in map(Path, paths):
        if _is_run_like(path):
            candidates.append(path)
        elif path.is_dir():
            candidates += [entry for entry in path.iterdir()
                           if not entry.name.startswith(".") and entry.is_dir() and _is_run_like(entry)]
        else:
            raise FileNotFoundError(f"no run directory or run root at {path}")
    good, bad = [], {}
    for path in sorted(set(candidates)):
        why = check_run(path)
        if why is None:
            good.append(path)
        else:
            bad[path] = why
    return good, bad


def run_dirs(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    """Good finished run directories under the given roots or run paths (sorted, no duplicates).

    Bad ones (see :func:`scan`) are left out with a ``UserWarning`` naming them.

    Raises:
        FileNotFoundError: a path is neither a run directory nor a directory (:func:`scan`).
    """
    good, bad = scan(paths)
    if bad:
        listing = "; ".join(f"{path}: {why}" for path, why in bad.items())
        warnings.warn(f"skipped {len(bad)} run director{'y' if len(bad) == 1 else 'ies'} that cannot be read: {listing}", stacklevel=2)
    return good


def flatten_config(config: dict) -> dict:
    """One row of columns from a nested config: method options become top-level columns.

    Raises:
        TypeError: a list or dict value holds something JSON cannot encode.
    """
    row = {}
    for key, value in config.items():
        if key == "method_options" and isinstance(value, dict):
            row.update({option: _scalar(setting) for option, setting in value.items()})
        elif isinstance(value, dict):
            row.update({f"{key}.{name}": _scalar(entry) for name, entry in value.items()})
        else:
            row[key] = _scalar(value)
    return row


def _scalar(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def load_runs(paths) -> "pandas.DataFrame":
    """One row per good finished run: ``run_id``, flattened config columns, summary columns.

    With no run the frame is empty but has the columns of a training run
    (:func:`empty_runs_frame`), so queries on it give no rows rather than errors.

    Raises:
        FileNotFoundError: a path is neither a run directory nor a directory (:func:`scan`).
    """
    pd = require("pandas", "the run store")

    rows = []
    for path in run_dirs(paths):
        row = {"run_id": path.name, "path": str(path)}
        row.update(flatten_config(read_json(path / "config.json")))
        row.update(read_json(path / "summary.json"))
        rows.append(row)
    return pd.DataFrame(rows) if rows else empty_runs_frame()


def empty_runs_frame() -> "pandas.DataFrame":
    """No rows; ``run_id``, ``path``, the fields of :class:`ddc.train.TrainConfig` and its summary keys.

    Raises:
        MissingExtra: pandas is not installed.
    """
    pd = require("pandas", "the run store")

    from .train import SUMMARY_KEYS, TrainConfig  # the trainer defines what a run holds

    fields = [name for name in TrainConfig.field_names() if name != "method_options"]
    columns = ["run_id", "path", *fields, *(key for key in SUMMARY_KEYS if key not in fields)]
    return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})


def load_metrics(paths) -> "pandas.DataFrame":
    """Per-epoch metrics of all runs, long format (``METRIC_COLUMNS``).

    Raises:
        FileNotFoundError: a path is neither a run directory nor a directory (:func:`scan`).
    """
    pd = require("pandas", "the run store")

    frames = [pd.read_parquet(run / "metrics.parquet") for run in run_dirs(paths) if (run / "metrics.parquet").exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)


def load_records(paths) -> "pandas.DataFrame":
    """Recorder rows of all runs, long format (``RECORD_COLUMNS``).

    Raises:
        FileNotFoundError: a path is neither a run directory nor a directory (:func:`scan`).
    """
    pd = require("pandas", "the run store")

    frames = [pd.read_parquet(part) for run in run_dirs(paths) for part in sorted((run / "records").glob("part-*.parquet"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECORD_COLUMNS)


def connect(paths):
    """A DuckDB connection (in memory, no server) with views ``runs``, ``metrics``, ``records``.

    ``runs`` comes from the JSON files; ``metrics`` and ``records`` are read
    straight from the parquet files by DuckDB.

    Raises:
        FileNotFoundError: a path is neither a run directory nor a directory (:func:`scan`).
    """
    duckdb = require("duckdb", "SQL over the run store")

    dirs = run_dirs(paths)
    connection = duckdb.connect()
    connection.register("runs_df", load_runs(dirs))
    connection.execute("CREATE VIEW runs AS SELECT * FROM runs_df")
    for view, pattern, columns in (
        ("metrics", "metrics.parquet", METRIC_COLUMNS),
        ("records", "records/part-*.parquet", RECORD_COLUMNS),
    ):
        files = [str(file) for run in dirs for file in sorted(run.glob(pattern))]
        if files:
            listing = ", ".join("'" + file.replace("'", "''") + "'" for file in files)
            connection.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{listing}])")
        else:
            empty = ", ".join(f"NULL AS {column}" for column in columns)
            connection.execute(f"CREATE VIEW {view} AS SELECT {empty} WHERE FALSE")
    return connection


def sql(query: str, paths) -> "pandas.DataFrame":
    """Run SQL over the runs under ``paths``; tables ``runs``, ``metrics``, ``records``.

    Raises:
        duckdb.Error: the query is not valid SQL over those tables.
        FileNotFoundError: a path does not exist (:func:`scan`).
    """
    connection = connect(paths)
    try:
        return connection.execute(query).df()
    finally:
        connection.close()
