"""Run the paper notebooks headlessly with Papermill.

Each notebook in ``notebooks/`` has one cell tagged ``parameters`` holding
every default, including ``profile``, ``run_dir``, ``runs_root``, ``device``
and ``seeds``. The driver:

- checks override names against ``papermill.inspect_notebook`` and fails on
  an unknown one (papermill itself only warns);
- executes on the driver's own interpreter (``sys.executable``, whatever
  kernels the Jupyter path holds) into ``<output>/<profile>/<notebook>/``,
  keeping the executed notebook beside what it wrote, and the kernel
  process's own messages out of the terminal (``kernel.log`` when any);
- shows progress in the terminal (:class:`ddc.progress.Board`);
- shares one run store per profile (:func:`ddc.store.default_root`:
  ``$DDC_RUNS``, else ``<output>/<profile>/runs``, where every other command
  looks too) so later notebooks and ``05_report`` read earlier results;
- says which notebook failed, in which cell, with which error.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from . import progress, store
from ._optional import require
from .functional import check_choice
from .recipes import DEFAULT_PROFILE, PROFILES

KERNEL = "python3"  # the name the executed notebooks record; the kernel itself is this interpreter
KERNEL_LOG = "kernel.log"  # the kernel process's own stderr, kept only when not empty
TIMINGS = "timings.json"

#: named selections: the paper notebooks (the main job), and the open questions
#: followed by the report again so that it collects their conclusions too
SUITES = {
    "paper": ["01", "02", "03", "04", "05"],
    "openq": ["06", "07", "08", "09", "05"],
    "all": ["01", "02", "03", "04", "06", "07", "08", "09", "05"],
}

#: notebooks executed more than once per profile, one output folder per variant
#: (``<notebook>-<value>``); a ``-p`` override of the same parameter runs just that value
VARIANTS = {
    "smoke": {"03_ablation": ("factor", ["zscore"])},
    "quick": {"03_ablation": ("factor", ["zscore", "tau", "p_base", "p_gradient"])},
    "full": {"03_ablation": ("factor", ["zscore", "tau", "p_base", "p_gradient", "recalibration", "update", "signal_source"])},
}


def notebooks_dir() -> Path:
    """The repository's ``notebooks/`` folder (the package is installed from the repo).

    Raises:
        Nothing (the folder is not checked).
    """
    return Path(__file__).resolve().parents[1] / "notebooks"


def discover(directory: Optional[Path] = None) -> List[Path]:
    """The notebooks ``NN_name.ipynb`` in ``directory`` (default: the project's ``notebooks/``), in name order.

    Raises:
        FileNotFoundError: there is none.
    """
    directory = Path(directory) if directory else notebooks_dir()
    found = sorted(path for path in directory.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {directory}")
    return found


def select(notebooks: List[Path], only: Optional[Iterable[str]]) -> List[Path]:
    """Notebooks named by ``only`` (stems, prefixes like ``02``, or names like ``baselines``), in that order.

    Raises:
        ValueError: a name matches no notebook (the message lists them).
    """
    if not only:
        return notebooks
    chosen = []
    names = {path.stem: path for path in notebooks}
    for name in only:
        matches = [path for stem, path in names.items() if stem == name or stem.startswith(name) or stem.split("_", 1)[1] == name]
        if not matches:
            raise ValueError(f"only: {name!r} matches no notebook; notebooks: {', '.join(names)}")
        chosen += [match for match in matches if match not in chosen]
    return chosen


def declared_parameters(notebook: Path) -> Dict[str, dict]:
    """The parameters ``notebook``'s cell tagged ``parameters`` declares: name -> papermill's description.

    Raises:
        ddc._optional.MissingExtra: papermill is not installed (``pip install 'ddc[notebooks]'``).
    """
    papermill = require("papermill", "running the notebooks")

    return papermill.inspect_notebook(str(notebook))


#: parameters the driver sets itself, from its own options
DRIVER_PARAMETERS = {"profile": "--profile", "run_dir": "--output", "runs_root": f"${store.RUNS_ENV}"}


def check_parameters(notebooks: List[Path], parameters: Dict[str, object]) -> Dict[Path, Dict[str, object]]:
    """Per notebook, the overrides it declares, each checked against the kind of its default.

    Raises:
        ValueError: a name no selected notebook declares, a parameter the driver sets (``profile``,
            ``run_dir``, ``runs_root``: use the option named), or a value of another kind than the
            notebook's default (text for a number, a fraction for a whole number, ...); the message
            names the parameter, the notebook and the kind expected.
    """
    for name, option in DRIVER_PARAMETERS.items():
        if name in parameters:
            raise ValueError(f"-p {name}=...: the driver sets {name}; use {option} instead")
    per_notebook, used = {}, set()
    for notebook in notebooks:
        declared = declared_parameters(notebook)
        if "parameters" not in _tags(notebook):
            raise ValueError(f"{notebook.name} has no cell tagged 'parameters'")
        per_notebook[notebook] = {k: _checked_value(k, v, declared[k]["default"], notebook)
                                  for k, v in parameters.items() if k in declared}
        used |= set(per_notebook[notebook])
    unknown = sorted(set(parameters) - used)
    if unknown:
        allowed = sorted({name for notebook in notebooks for name in declared_parameters(notebook)})
        raise ValueError(
            f"unknown notebook parameter(s) {', '.join(map(repr, unknown))}; "
            f"parameters of the selected notebooks: {', '.join(allowed)}"
        )
    return per_notebook


def _checked_value(name: str, value, default_source: str, notebook: Path):
    """``value`` for a parameter whose default is ``default_source`` (Python source): the same kind of value.

    A whole-number float (``2e1``) given for an integer default becomes an int; ``None`` defaults and
    defaults that are not literals take any value.

    Raises:
        ValueError: the value is of another kind than the default (named, with the notebook).
    """
    import ast

    try:
        default = ast.literal_eval(default_source)
    except (ValueError, SyntaxError):
        return value
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        expected, ok = "true or false", isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        expected, ok = "a whole number", isinstance(value, int)
    elif isinstance(default, float):
        expected, ok = "a number", isinstance(value, (int, float))
    elif isinstance(default, str):
        expected, ok = "text", isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        expected, ok = "a list, e.g. [1, 2]", isinstance(value, (list, tuple))
    elif isinstance(default, dict):
        expected, ok = "a mapping, e.g. {a: 1}", isinstance(value, dict)
    else:
        return value
    if not ok:
        raise ValueError(f"-p {name}={value!r}: {notebook.stem} expects {expected} (its default is {default_source})")
    return value


def _tags(notebook: Path) -> set:
    nbformat = require("nbformat", "running the notebooks")

    document = nbformat.read(str(notebook), as_version=4)
    return {tag for cell in document.cells for tag in cell.get("metadata", {}).get("tags", [])}


class NotebookFailed(RuntimeError):
    """A notebook raised: names the notebook, the cell and the error.

    Raises:
        Nothing; it is what :func:`run_notebooks` raises for a failing notebook.
    """


@dataclass
class Executed:
    """One executed notebook: its name (with the variant's suffix), the executed copy, seconds taken.

    Raises:
        Nothing (fields are not checked).
    """
    notebook: str
    output: Path
    seconds: float


def run_notebooks(
    profile: str = DEFAULT_PROFILE,
    *,
    only: Optional[Iterable[str]] = None,
    parameters: Optional[Dict[str, object]] = None,
    output_root: Path = Path(store.OUTPUTS),
    directory: Optional[Path] = None,
    log: Optional[Callable[[str], None]] = None,
    quiet: bool = False,
) -> List[Executed]:
    """Execute the selected notebooks in order at ``profile``; returns what ran.

    Progress goes to stderr: a line per notebook started and finished, and a
    status line (notebook i of n, runs done of total, elapsed, estimate; see
    :class:`ddc.progress.Board`) fed by the sweeps inside the kernels. ``log``
    takes the per-notebook lines instead (no status line); ``quiet`` prints
    nothing. Each notebook's time is kept in ``<output>/<profile>/timings.json``
    for ``INDEX.md`` and the next run's estimate.

    Raises:
        ValueError: an unknown ``profile``, a name in ``only`` that matches no notebook, or a bad parameter.
        FileNotFoundError: no notebooks in ``directory``.
        NotebookFailed: a notebook raised, or its kernel died or never started (the message names it).
        MissingExtra: papermill, ipykernel or jupyter_client is not installed.
        OSError: the output folder or ``timings.json``/``INDEX.md`` cannot be written.
    """
    check_choice("profile", profile, PROFILES)
    notebooks = select(discover(directory), only)
    overrides = check_parameters(notebooks, dict(parameters or {}))
    base = Path(output_root).resolve() / profile
    runs_root = store.default_root(profile, base.parent).resolve()  # shared with every command
    plan = list(_plan(notebooks, profile, overrides))
    names = [notebook.stem + suffix for notebook, suffix, _ in plan]
    timings = read_timings(base)
    executed = []
    with tempfile.TemporaryDirectory(prefix="ddc-progress-") as scratch:
        events = str(Path(scratch) / "events.jsonl")
        board = progress.Board(names, events=events, previous={k: v["seconds"] for k, v in timings.items()})
        say = (lambda _: None) if quiet else (log or board.print)
        show = not quiet and log is None
        with _environment({progress.ENV: events}), (board if show else contextlib.nullcontext()):
            for index, ((notebook, suffix, extra), name) in enumerate(zip(plan, names)):
                run_dir = base / name
                run_dir.mkdir(parents=True, exist_ok=True)
                declared = declared_parameters(notebook)
                values = {"profile": profile, "run_dir": str(run_dir), "runs_root": str(runs_root)}
                values = {k: v for k, v in values.items() if k in declared}
                values.update(extra)
                values.update(overrides[notebook])
                output = run_dir / notebook.name
                board.start_job(index)
                say(f"[{profile} {index + 1}/{len(plan)}] {name}: running -> {output}")
                if show:
                    board.refresh(force=True)
                started = time.perf_counter()
                _execute(notebook, output, values, run_dir)
                executed.append(Executed(name, output, time.perf_counter() - started))
                timings[name] = {"seconds": round(executed[-1].seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                store.write_json(base / TIMINGS, timings)
                say(f"[{profile} {index + 1}/{len(plan)}] {name}: done in {progress.clock(executed[-1].seconds)}")
    write_index(base)
    return executed


def _execute(notebook: Path, output: Path, values: dict, run_dir: Path) -> None:
    """Papermill on the driver's own interpreter; the kernel's own stderr goes to ``kernel.log``."""
    papermill = require("papermill", "running the notebooks")
    PapermillExecutionError = require("papermill.exceptions", "running the notebooks").PapermillExecutionError

    log_path = run_dir / KERNEL_LOG
    try:
        with open(log_path, "w") as kernel_log:
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters=values,
                kernel_name=KERNEL,
                kernel_manager_class=driver_kernel_manager(kernel_log),
                progress_bar=False,
                cwd=str(run_dir),
            )
    except PapermillExecutionError as error:
        raise NotebookFailed(
            f"{notebook.name} failed in cell {error.cell_index} (execution count {error.exec_count}): "
            f"{error.ename}: {error.evalue}\nexecuted notebook kept at {output}; kernel log: {log_path}"
        ) from None
    except Exception as error:  # the kernel died or never started
        raise NotebookFailed(f"{notebook.name}: {type(error).__name__}: {error}\nkernel log: {log_path}") from None
    if log_path.exists() and not log_path.read_text().strip():
        log_path.unlink()


def driver_kernel_manager(kernel_log=None):
    """A kernel manager class that starts the kernel on this interpreter (``sys.executable``).

    Papermill would otherwise start whatever kernel is named ``python3`` first
    on the Jupyter path, possibly another environment with another ``ddc``.
    The kernel spec is ipykernel's own for this interpreter; where it declares
    CurveZMQ support, the transport is encrypted (no "running over TCP without
    encryption" warning). The kernel process's stdout/stderr (its own log,
    not the cells' output) go to ``kernel_log`` when given.

    Raises:
        MissingExtra: ipykernel or jupyter_client is not installed.
    """
    get_kernel_dict = require("ipykernel.kernelspec", "running the notebooks").get_kernel_dict
    KernelSpec = require("jupyter_client.kernelspec", "running the notebooks").KernelSpec
    AsyncKernelManager = require("jupyter_client.manager", "running the notebooks").AsyncKernelManager

    python_arguments = ["-Xfrozen_modules=off"] if sys.version_info >= (3, 11) else []
    try:
        spec = get_kernel_dict(python_arguments=python_arguments)
    except TypeError:  # ipykernel < 6.22 has no python_arguments
        spec = get_kernel_dict()
    spec = {**spec, "display_name": f"Python ({sys.executable})"}

    class DriverKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self):
            return KernelSpec(name=KERNEL, resource_dir="", **spec)

        async def start_kernel(self, **kw):
            if kernel_log is not None:
                kw.setdefault("stdout", kernel_log)
                kw.setdefault("stderr", kernel_log)
            if self._curve():
                kw.setdefault("transport_encryption", "auto")
            return await super().start_kernel(**kw)

        def _curve(self) -> bool:
            zmq = require("zmq", "running the notebooks")

            return "transport_encryption" in self.trait_names() and zmq.has("curve") and bool(
                "curve" in spec.get("metadata", {}).get("supported_encryption", [])
            )

    return DriverKernelManager


@contextlib.contextmanager
def _environment(values: Dict[str, str]):
    """Set environment variables (inherited by the kernels) for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_timings(base: Path) -> Dict[str, dict]:
    """``notebook -> {"seconds", "finished"}`` of the latest execution of each, from ``timings.json``.

    Raises:
        Nothing (a missing or unreadable ``timings.json`` gives ``{}``).
    """
    path = Path(base) / TIMINGS
    if not path.exists():
        return {}
    with contextlib.suppress(ValueError, OSError):
        found = store.read_json(path)
        if isinstance(found, dict):
            return {k: v for k, v in found.items() if isinstance(v, dict) and "seconds" in v}
    return {}


def _plan(notebooks, profile, overrides):
    """(notebook, folder suffix, extra parameters) in execution order."""
    for notebook in notebooks:
        variant = VARIANTS[profile].get(notebook.stem)
        if variant is None:
            yield notebook, "", {}
            continue
        name, values = variant
        if name in overrides[notebook]:
            values = [overrides[notebook][name]]
        for value in values:
            yield notebook, f"-{value}", {name: value}


def write_index(base: Path) -> Path:
    """``INDEX.md``: every report and figure under ``base``, after the notebook timings (``timings.json``).

    Rewritten from what is on disk, so ``ddc figures`` and a partial run keep
    what the index held.

    Raises:
        FileNotFoundError/OSError: ``base`` is not a readable folder, or ``INDEX.md`` cannot be written.
    """
    base = Path(base)
    lines = [f"# Outputs ({base.name} profile)", ""]
    timings = read_timings(base)
    if timings:
        lines += ["| notebook | time | finished |", "|---|---:|---|"]
        lines += [f"| {name} | {progress.clock(timing['seconds'])} | {timing.get('finished', '')} |" for name, timing in sorted(timings.items())]
        lines.append("")
    for folder in sorted(path for path in base.iterdir() if path.is_dir() and path.name[:2].isdigit()):
        figures = sorted(folder.glob("figures/*.png"))
        reports = sorted([*folder.glob("*.md"), *folder.glob("*.html")])
        if not figures and not reports:
            continue
        lines.append(f"## {folder.name}")
        lines += [f"- report: [{report.name}]({report.relative_to(base)})" for report in reports]
        lines += [f"- ![{figure.stem}]({figure.relative_to(base)})" for figure in figures]
        lines.append("")
    index = base / "INDEX.md"
    index.write_text("\n".join(lines) + "\n")
    return index
