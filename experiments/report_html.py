"""One self-contained HTML report to send a colleague: conclusions, every figure, tables, configuration, versions.

``build_html_report(paths, out_dir, outputs=...)`` writes ``out_dir/report.html``:

- the conclusions each notebook computed from its data (``<outputs>/NN_*/results/conclusions.json``);
- the statistics of the run store: the markdown report of :func:`experiments.report.build_report`
  (tables with intervals and corrected tests, and its figures), converted to HTML; comparisons
  a notebook decided on the same runs are left out there (one line says which), so each has one answer;
- every figure the notebooks drew (``<outputs>/NN_*/figures/*.png``);
- the notebooks' result tables (small ones in full, large ones named);
- the configuration: each notebook's settings and the run configurations the report compares;
- the versions of Python, the libraries, ddc and the git commit.

Images are embedded as ``data:`` URIs and the styles are inline, so the file
stands alone: no link leaves the page and no image is fetched. Without
``outputs`` (``ddc report --html`` on any run store) the notebook sections are
left out. Pages are deterministic except for the generation time and versions.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

#: a results table with at most this many rows is shown in full; larger ones are named only
MAX_TABLE_ROWS = 60

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.8em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.6em; } .meta { color: #555; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } nav ul { columns: 2; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
details { margin: 0.4em 0; } summary { cursor: pointer; } code { background: #f3f3f3; padding: 0 0.2em; }
"""


def build_html_report(
    paths,
    out_dir,
    *,
    outputs=None,
    title: str = "ddc report",
    log=None,
    **report_options,
) -> Path:
    """Write ``out_dir/report.md`` (via :func:`experiments.report.build_report`) and ``out_dir/report.html``.

    ``paths``: run stores or run folders; ``outputs``: the folder ``ddc notebooks
    run`` wrote for one profile (``outputs/<profile>``), whose notebooks'
    conclusions, figures, tables and settings are included when given.
    ``report_options`` go to ``build_report`` (``value``, ``baseline``,
    ``n_resamples``). Raises ``ValueError`` when ``paths`` hold no finished run.
    """
    from experiments.report import build_report, decided_comparisons

    # a comparison a notebook decided is restated from the notebook, not tested again on the same runs
    decided = decided_comparisons(outputs) if outputs is not None else ()
    markdown_report = build_report(paths, out_dir, title=title, log=log, decided=decided, **report_options)
    return write_html(markdown_report, paths=paths, outputs=outputs, title=title, log=log)


def write_html(markdown_report, *, paths, outputs=None, title: str = "ddc report", log=None) -> Path:
    """``report.html`` beside a markdown report written by ``build_report`` from the runs under ``paths``.

    Raises:
        FileNotFoundError: ``markdown_report`` does not exist, or a path in ``paths`` is neither a run directory
            nor a folder (:func:`ddc.store.load_runs`).
        ModuleNotFoundError: ``markdown`` is not installed (the ``analysis`` extra).
        OSError: ``report.html`` cannot be written.
    """
    say = log or (lambda _: None)
    say("report: writing the HTML report")
    target = Path(markdown_report).parent / "report.html"
    target.write_text(render(markdown_report, paths=paths, outputs=outputs, title=title), encoding="utf-8")
    say(f"report: written to {target}")
    return target


def outputs_of(store) -> Optional[Path]:
    """The notebook outputs beside a run store (``outputs/<profile>`` for ``outputs/<profile>/runs``), if any.

    Raises:
        Nothing: a missing folder, or one without notebook outputs, gives None.
    """
    parent = Path(store).resolve().parent
    return parent if _notebook_folders(parent) else None


def render(markdown_report: Path, *, paths, outputs=None, title: str = "ddc report") -> str:
    """The HTML page for a written markdown report (and the notebook outputs, when given).

    Raises:
        FileNotFoundError: ``markdown_report`` does not exist, or a path in ``paths`` is neither a run directory
            nor a folder (:func:`ddc.store.load_runs`).
        ModuleNotFoundError: ``markdown`` is not installed (the ``analysis`` extra).
        ValueError: a notebook's stored ``conclusions.json`` or ``settings.json`` is not JSON.
    """
    import time

    markdown_report = Path(markdown_report)
    notebooks = _notebook_folders(outputs) if outputs is not None else []
    sections: List[Tuple[str, str, str]] = []  # (anchor, heading, html)
    if notebooks:
        sections.append(("conclusions", "Conclusions", _conclusions(notebooks)))
    sections.append(("statistics", "Statistics from the run store", _markdown_html(markdown_report)))
    if notebooks:
        sections.append(("figures", "Figures of the notebooks", _figures(notebooks)))
        sections.append(("tables", "Tables of the notebooks", _tables(notebooks)))
    sections.append(("configuration", "Configuration", _configuration(paths, notebooks, outputs)))
    sections.append(("versions", "Versions", _versions()))
    profile = f"; profile <code>{html.escape(Path(outputs).name)}</code>" if outputs is not None else ""
    contents = "".join(f'<li><a href="#{anchor}">{html.escape(heading)}</a></li>' for anchor, heading, _ in sections)
    body = "".join(f'<section><h2 id="{anchor}">{html.escape(heading)}</h2>{content}</section>' for anchor, heading, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"meta\">Generated {time.strftime('%Y-%m-%d %H:%M %Z')}{profile}. "
        "Every number below was computed from stored runs; nothing was trained to write this page.</p>"
        f"<nav><h2 id=\"contents\">Contents</h2><ul>{contents}</ul></nav>{body}</body></html>\n"
    )


# ----------------------------------------------------------------------------- pieces


def _notebook_folders(outputs) -> List[Path]:
    """The notebook output folders (``NN_name[-variant]``) under ``outputs``, in order; report
    folders (with a ``report.md``, shown in the statistics section) left out."""
    outputs = Path(outputs)
    if not outputs.is_dir():
        return []
    return sorted(p for p in outputs.iterdir() if p.is_dir() and re.match(r"^\d\d_", p.name) and not (p / "report.md").exists())


def _anchor(*parts: str) -> str:
    return "-".join(re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in parts)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _conclusions(notebooks: Sequence[Path]) -> str:
    parts = []
    for folder in notebooks:
        path = folder / "results" / "conclusions.json"
        if not path.exists():
            continue
        found = json.loads(path.read_text()).get("conclusion", [])
        texts = found if isinstance(found, list) else [found]
        parts.append(f'<h3 id="{_anchor("conclusions", folder.name)}">{html.escape(folder.name)}</h3><ul>'
                     + "".join(f"<li>{_inline(text)}</li>" for text in texts) + "</ul>")
    return "".join(parts) or "<p>No notebook stored conclusions.</p>"


def _inline(text: str) -> str:
    """A conclusion as HTML: escaped (they quote ``p < 0.05``), with markdown's `code` and **bold**."""
    escaped = html.escape(str(text), quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _markdown_html(report: Path) -> str:
    """The markdown report as HTML, one heading level down, its images embedded."""
    import markdown

    text = report.read_text()
    text = re.sub(r"^(#{1,5}) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    text = re.sub(r"^## .*\n", "", text, count=1)  # the title is the page's
    rendered = markdown.markdown(text, extensions=["tables"])

    def embed(match):
        attributes = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        source = html.unescape(attributes.get("src", ""))
        path = report.parent / source
        return _image(path, html.unescape(attributes.get("alt", ""))) if source and path.is_file() else match.group(0)

    return re.sub(r"<img\s+([^>]*?)\s*/?>", embed, rendered)


def _figures(notebooks: Sequence[Path]) -> str:
    parts = []
    for folder in notebooks:
        figures = sorted((folder / "figures").glob("*.png"))
        if not figures:
            continue
        parts.append(f'<h3 id="{_anchor("figures", folder.name)}">{html.escape(folder.name)}</h3>')
        for figure in figures:
            caption = f"{folder.name} / {figure.stem}"
            parts.append(f"<figure>{_image(figure, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "".join(parts) or "<p>No notebook figures.</p>"


def _tables(notebooks: Sequence[Path]) -> str:
    import pandas as pd

    parts = []
    for folder in notebooks:
        tables = sorted((folder / "results").glob("*.parquet"))
        if not tables:
            continue
        shown, named = [], []
        for path in tables:
            frame = pd.read_parquet(path)
            if len(frame) <= MAX_TABLE_ROWS:
                shown.append(f"<details><summary>{html.escape(path.stem)} ({len(frame)} rows)</summary>{_frame_html(frame)}</details>")
            else:
                named.append(f"{path.stem} ({len(frame)} rows)")
        parts.append(f'<h3 id="{_anchor("tables", folder.name)}">{html.escape(folder.name)}</h3>' + "".join(shown))
        if named:
            parts.append("<p>Too long to show here, in <code>results/</code> as parquet and CSV: " + html.escape(", ".join(named)) + ".</p>")
    return "".join(parts) or "<p>No notebook tables.</p>"


def _frame_html(frame) -> str:
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype.kind == "f":
            frame[column] = frame[column].map(lambda v: "" if v != v else f"{v:.4g}")
        elif frame[column].dtype.kind == "O":
            frame[column] = frame[column].map(lambda v: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
    return frame.to_html(index=False, border=0, escape=True)


def _configuration(paths, notebooks: Sequence[Path], outputs) -> str:
    from ddc.store import load_runs

    from experiments.report import METHOD_FIELDS, _label_and_setting

    parts = []
    if outputs is not None:
        parts.append(f"<p>Notebook outputs: <code>{html.escape(str(Path(outputs).resolve()))}</code></p>")
    for folder in notebooks:
        path = folder / "results" / "settings.json"
        if path.exists():
            parts.append(f"<details><summary>{html.escape(folder.name)}: notebook settings</summary>"
                         f"<pre>{html.escape(json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True))}</pre></details>")
    runs = load_runs(paths)
    if len(runs):
        runs = _label_and_setting(runs)
        stores = ", ".join(f"<code>{html.escape(str(Path(p).resolve()))}</code>" for p in (paths if isinstance(paths, (list, tuple)) else [paths]))
        parts.append(f"<p>{len(runs)} runs from {stores}. Run configurations, one row per experimental setting "
                     f"(the fields that tell methods apart, {', '.join(METHOD_FIELDS)}, are in the labels):</p>")
        rows = []
        for setting, group in runs.groupby("setting", sort=True):
            fields = json.loads(setting)
            rows.append({"runs": len(group), "labels": ", ".join(sorted(set(group.label))), **fields})
        import pandas as pd

        parts.append(_frame_html(pd.DataFrame(rows)))
    return "".join(parts)


def _versions() -> str:
    rows = versions()
    return "<table><tbody>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items()) + "</tbody></table>"


def versions() -> Dict[str, str]:
    """Python, platform, processor, the versions of ddc and its libraries, and the git commit when in a checkout.

    Raises:
        Nothing: a package that is absent is "not installed", and a failing ``git`` leaves the commit out.
    """
    import platform
    import subprocess
    from importlib import metadata

    found = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    for package in ("ddc", "torch", "numpy", "pandas", "scipy", "statsmodels", "matplotlib", "seaborn", "papermill"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:
        import torch

        found["torch threads"] = str(torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True,
                                   timeout=10).stdout.strip()
            if commit:
                found["git commit"] = commit + (" (with uncommitted changes)" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return found
