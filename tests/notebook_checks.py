"""Shared by the notebook tests: every figure a notebook makes reads (redrawn from its stored
results and checked with :func:`analysis.figures.layout_problems`, renderer bounding boxes), and
the executed notebook holds only meant outputs."""

from pathlib import Path
from unittest import mock

import matplotlib

matplotlib.use("Agg")

from analysis import figures  # noqa: E402


def unreadable_figures(run_dir, figure_function) -> dict:
    """``{figure name: [problem, ...]}`` for the figures ``figure_function(run_dir)`` saves (empty: all read).

    Each figure is checked as it is saved, after :func:`analysis.figures.save_figure`
    wrapped its long titles, i.e. as the PNG shows it.
    """
    problems, real = {}, figures.save_figure
    saved = []

    def checked(fig_or_ax, path, *args, **kwargs):
        written = real(fig_or_ax, path, *args, **kwargs)
        fig = fig_or_ax if hasattr(fig_or_ax, "savefig") else fig_or_ax.figure
        saved.append(Path(path).name)
        found = figures.layout_problems(fig)
        if found:
            problems[Path(path).name] = found
        return written

    with mock.patch.object(figures, "save_figure", checked):
        figure_function(run_dir)
    assert saved, f"{getattr(figure_function, '__name__', figure_function)} saved no figure from {run_dir}"
    return problems


def stray_outputs(notebook) -> list:
    """Warnings (stderr) and unintended values (``execute_result``) in an executed notebook; empty when clean."""
    import nbformat

    found = []
    nb = nbformat.read(str(notebook), as_version=4)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stderr":
                found.append(f"cell {index}: stderr {output.text[:300]!r}")
            elif output.output_type == "execute_result":
                found.append(f"cell {index}: value {output.data.get('text/plain', '')[:200]!r}")
    return found
