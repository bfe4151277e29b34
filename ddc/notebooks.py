"""Run the paper notebooks headlessly with Papermill.

Each notebook in ``notebooks/`` has one cell tagged ``parameters`` holding
every default, including ``profile``, ``run_dir``, ``runs_root``, ``device``
and ``seeds``. The driver:

- checks override names against ``papermill.inspect_notebook`` and fails on
  an unknown one (papermill itself only warns);
- executes with kernel ``python3`` into ``<output>/<profile>/<notebook>/``,
  keeping the executed notebook beside what it wrote;
- shares one run store per profile (:func:`ddc.store.default_root`:
  ``$DDC_RUNS``, else ``<output>/<profile>/runs``, where every other command
  looks too) so later notebooks and ``05_report`` read earlier results;
- says which notebook failed, in which cell, with which error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from . import store
from .functional import check_choice
from .recipes import DEFAULT_PROFILE, PROFILES

KERNEL = "python3"

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
    """The repository's ``notebooks/`` folder (the package is installed from the repo)."""
    return Path(__file__).resolve().parents[1] / "notebooks"


def discover(directory: Optional[Path] = None) -> List[Path]:
    directory = Path(directory) if directory else notebooks_dir()
    found = sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {directory}")
    return found


def select(notebooks: List[Path], only: Optional[Iterable[str]]) -> List[Path]:
    """Notebooks named by ``only`` (stems, prefixes like ``02``, or names like ``baselines``), in that order."""
    if not only:
        return notebooks
    chosen = []
    names = {p.stem: p for p in notebooks}
    for name in only:
        matches = [p for stem, p in names.items() if stem == name or stem.startswith(name) or stem.split("_", 1)[1] == name]
        if not matches:
            raise ValueError(f"only: {name!r} matches no notebook; notebooks: {', '.join(names)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def declared_parameters(notebook: Path) -> Dict[str, dict]:
    import papermill

    return papermill.inspect_notebook(str(notebook))


def check_parameters(notebooks: List[Path], parameters: Dict[str, object]) -> Dict[Path, Dict[str, object]]:
    """Per notebook, the overrides it declares; a name no selected notebook declares is an error."""
    per_notebook, used = {}, set()
    for notebook in notebooks:
        declared = declared_parameters(notebook)
        if "parameters" not in _tags(notebook):
            raise ValueError(f"{notebook.name} has no cell tagged 'parameters'")
        per_notebook[notebook] = {k: v for k, v in parameters.items() if k in declared}
        used |= set(per_notebook[notebook])
    unknown = sorted(set(parameters) - used)
    if unknown:
        allowed = sorted({k for nb in notebooks for k in declared_parameters(nb)})
        raise ValueError(
            f"unknown notebook parameter(s) {', '.join(map(repr, unknown))}; "
            f"parameters of the selected notebooks: {', '.join(allowed)}"
        )
    return per_notebook


def _tags(notebook: Path) -> set:
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    return {tag for cell in nb.cells for tag in cell.get("metadata", {}).get("tags", [])}


class NotebookFailed(RuntimeError):
    """A notebook raised: names the notebook, the cell and the error."""


@dataclass
class Executed:
    notebook: str
    output: Path
    seconds: float


def run_notebooks(
    profile: str = DEFAULT_PROFILE,
    *,
    only: Optional[Iterable[str]] = None,
    parameters: Optional[Dict[str, object]] = None,
    output_root: Path = Path("outputs"),
    directory: Optional[Path] = None,
    log=print,
) -> List[Executed]:
    """Execute the selected notebooks in order at ``profile``; returns what ran."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    check_choice("profile", profile, PROFILES)
    notebooks = select(discover(directory), only)
    overrides = check_parameters(notebooks, dict(parameters or {}))
    base = Path(output_root).resolve() / profile
    runs_root = store.default_root(profile, base.parent).resolve()  # shared with every command
    executed = []
    for notebook, suffix, extra in _plan(notebooks, profile, overrides):
        run_dir = base / (notebook.stem + suffix)
        run_dir.mkdir(parents=True, exist_ok=True)
        declared = declared_parameters(notebook)
        values = {"profile": profile, "run_dir": str(run_dir), "runs_root": str(runs_root)}
        values = {k: v for k, v in values.items() if k in declared}
        values.update(extra)
        values.update(overrides[notebook])
        output = run_dir / notebook.name
        log(f"[{profile}] {notebook.name} -> {output}")
        started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters=values,
                kernel_name=KERNEL,
                progress_bar=False,
                cwd=str(run_dir),
            )
        except PapermillExecutionError as error:
            raise NotebookFailed(
                f"{notebook.name} failed in cell {error.cell_index} (execution count {error.exec_count}): "
                f"{error.ename}: {error.evalue}\nexecuted notebook kept at {output}"
            ) from None
        executed.append(Executed(notebook.stem + suffix, output, time.perf_counter() - started))
        log(f"[{profile}] {notebook.stem + suffix} done in {executed[-1].seconds:.0f} s")
    write_index(base, executed)
    return executed


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


def write_index(base: Path, executed: List[Executed]) -> Path:
    """``INDEX.md``: every figure and report under ``base``, with the notebook timings."""
    lines = [f"# Outputs ({base.name} profile)", ""]
    if executed:
        lines += ["| notebook | seconds |", "|---|---|"]
        lines += [f"| {e.notebook} | {e.seconds:.0f} |" for e in executed]
        lines.append("")
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and p.name[:2].isdigit()):
        figures = sorted(folder.glob("figures/*.png"))
        reports = sorted(folder.glob("*.md"))
        if not figures and not reports:
            continue
        lines.append(f"## {folder.name}")
        lines += [f"- report: [{r.name}]({r.relative_to(base)})" for r in reports]
        lines += [f"- ![{f.stem}]({f.relative_to(base)})" for f in figures]
        lines.append("")
    index = base / "INDEX.md"
    index.write_text("\n".join(lines) + "\n")
    return index
