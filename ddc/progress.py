"""Progress of long jobs, shown in the terminal that started them.

A sweep that runs inside a notebook kernel cannot draw in the terminal of the
driver that started the kernel: the kernel's output is captured into the
notebook. So the driver (:mod:`ddc.notebooks`) names a file in the environment
variable ``DDC_PROGRESS``; the kernel inherits it, :func:`emit` appends one JSON
line per event to it, and the driver's :class:`Board` reads the lines and draws
one status line: which notebook, runs done of how many, elapsed time and an
estimate. Without ``DDC_PROGRESS``, :func:`emit` does nothing.

:func:`tqdm` picks the progress bar class: the notebook widget when
``ipywidgets`` is installed (``pip install -e ".[lab]"``), else the console bar,
so a kernel without ipywidgets never shows tqdm's "IProgress not found" warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, TextIO

ENV = "DDC_PROGRESS"


def emit(kind: str, **fields) -> None:
    """Append one event ``{"kind": kind, "time": <unix s>, **fields}`` to ``$DDC_PROGRESS``, if set.

    One ``write`` on a file opened for appending, so lines from several
    processes never interleave. Errors are ignored: progress never stops a job.

    Raises:
        Nothing (an ``OSError`` writing the file is ignored).
    """
    path = os.environ.get(ENV)
    if not path:
        return
    line = (json.dumps({"kind": kind, "time": time.time(), **fields}, default=str) + "\n").encode()
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def tqdm(*args, **kwargs):
    """A tqdm bar: the notebook widget where ipywidgets is importable in a kernel, else the console bar.

    Raises:
        Nothing of its own; tqdm's own errors for bad arguments pass through.
    """
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm.std import tqdm as bar
    else:
        from tqdm.auto import tqdm as bar
    return bar(*args, **kwargs)


def clock(seconds: Optional[float]) -> str:
    """``seconds`` as ``m:ss`` or ``h:mm:ss`` (``?`` when unknown).

    Raises:
        Nothing.
    """
    if seconds is None or seconds != seconds:
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Board:
    """The driver's status line for a queue of jobs (notebooks), fed by :func:`emit` events.

    ``jobs``: the names in execution order; ``previous``: seconds each took last
    time (used for the estimate of jobs not started yet; unknown ones are
    counted and said). On a terminal the line is redrawn in place every
    ``interval`` seconds; elsewhere (a log file, CI) a plain line is written at
    most every ``log_interval`` seconds. ``print`` writes a permanent line
    without tearing the status line.

    Raises:
        Nothing on construction (the events file is read later).
    """

    def __init__(
        self,
        jobs: List[str],
        *,
        events: Optional[str] = None,
        previous: Optional[Dict[str, float]] = None,
        stream: Optional[TextIO] = None,
        interval: float = 1.0,
        log_interval: float = 60.0,
        now: Callable[[], float] = time.time,
    ):
        self.jobs, self.events, self.previous = list(jobs), events, dict(previous or {})
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval, self.log_interval, self.now = interval, log_interval, now
        self.started = now()
        self.index = -1
        self.job_started = self.started
        self.sweeps: Dict[str, dict] = {}
        self.planned = 0
        self._offset = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._shown = ""
        self._last_logged = float("-inf")

    # ---- feeding ----------------------------------------------------------------

    def start_job(self, index: int) -> None:
        """Job ``index`` (into ``jobs``) starts now; its sweeps' counts start over.

        Raises:
            OSError: the events file exists but cannot be read.
            KeyError, TypeError, AttributeError: a malformed event (:meth:`read_events`).
        """
        with self._lock:
            self.read_events()
            self.index, self.job_started = index, self.now()
            self.sweeps, self.planned = {}, 0

    def read_events(self) -> None:
        """Read the events appended since the last call (complete lines only).

        Raises:
            OSError: the events file exists but cannot be read (lines that are not JSON are skipped).
            KeyError, TypeError, AttributeError: a line holds JSON that is not a well-formed event (:meth:`apply`).
        """
        if not self.events or not os.path.exists(self.events):
            return
        with open(self.events, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                self.apply(json.loads(line))

    def apply(self, event: dict) -> None:
        """Take one event: ``plan`` adds planned runs; ``sweep`` updates that sweep's counts.

        Raises:
            KeyError: a ``sweep`` event without ``name``.
            ValueError/TypeError: a ``plan`` event whose ``runs`` is not an integer.
        """
        if event.get("kind") == "plan":
            self.planned += int(event.get("runs", 0))
        elif event.get("kind") == "sweep":
            seen = self.sweeps.setdefault(event["name"], {"first": event, "time0": event.get("time", self.now())})
            seen["last"] = event

    # ---- what is shown ------------------------------------------------------------

    def runs(self):
        """(done, total, seconds per run trained here or None) over the current job's sweeps.

        Raises:
            Nothing of its own.
        """
        sweeps = self.sweeps.values()
        done = sum(sweep["last"].get("done", 0) + sweep["last"].get("failed", 0) for sweep in sweeps)
        total = max(self.planned, sum(sweep["last"].get("total", 0) for sweep in sweeps))
        trained = sum(sweep["last"].get("done", 0) + sweep["last"].get("failed", 0) - sweep["first"].get("done", 0)
                      - sweep["first"].get("failed", 0) for sweep in sweeps)
        busy = sum(sweep["last"].get("time", 0) - sweep["time0"] for sweep in sweeps)
        return done, total, (busy / trained if trained > 0 else None)

    def line(self) -> str:
        """E.g. ``[2/5] 02_baselines | runs 34/75 | 5:12, ~6:03 left | all 8:30, ~14:00 left``.

        Raises:
            Nothing of its own.
        """
        now = self.now()
        name = self.jobs[self.index] if 0 <= self.index < len(self.jobs) else ""
        parts = [f"[{self.index + 1}/{len(self.jobs)}] {name}"]
        done, total, per_run = self.runs()
        elapsed = now - self.job_started
        if total:
            parts.append(f"runs {done}/{total}")
        job_left = None
        if per_run is not None and done < total:
            job_left = per_run * (total - done)
        elif name in self.previous:
            job_left = max(self.previous[name] - elapsed, 0.0)
        parts.append(clock(elapsed) + (f", ~{clock(job_left)} left" if job_left is not None else ""))
        later = self.jobs[self.index + 1 :]
        known = [self.previous[j] for j in later if j in self.previous]
        overall = f"all {clock(now - self.started)}"
        if job_left is not None and len(known) == len(later):
            overall += f", ~{clock(job_left + sum(known))} left"
        elif len(known) < len(later):
            overall += f" ({len(later) - len(known)} of {len(later)} to come not timed before)"
        parts.append(overall)
        return " | ".join(parts)

    # ---- drawing ------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Redraw the status line (a terminal) or write it when ``log_interval`` has passed or ``force``.

        Raises:
            OSError: the events file cannot be read, or the stream cannot be written.
            KeyError, TypeError, AttributeError: a malformed event (:meth:`read_events`).
        """
        with self._lock:
            self.read_events()
            if self.index < 0:
                return
            text = self.line()
            if self.interactive:
                width = _columns(self.stream)
                self.stream.write("\r\x1b[K" + text[: width - 1])
                self._shown = text
            elif force or self.now() - self._last_logged >= self.log_interval:
                self.stream.write(text + "\n")
                self._last_logged = self.now()
            self.stream.flush()

    def print(self, message: str) -> None:
        """A permanent line (the status line is redrawn below it).

        Raises:
            OSError: the stream cannot be written.
        """
        with self._lock:
            if self.interactive and self._shown:
                self.stream.write("\r\x1b[K")
            self.stream.write(message + "\n")
            self.stream.flush()
            self._shown = ""

    def __enter__(self) -> "Board":
        self._thread = threading.Thread(target=self._loop, name="ddc-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.interactive and self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            self._shown = ""

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # drawing never stops the job
                self.refresh()


def _columns(stream) -> int:
    with contextlib.suppress(OSError, AttributeError, ValueError):
        return os.get_terminal_size(stream.fileno()).columns
    return 120
