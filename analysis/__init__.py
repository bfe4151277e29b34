"""Analysis of ddc runs: pure functions on the run store's tidy DataFrames.

Submodules (imported lazily, so ``import analysis`` stays cheap):

* :mod:`analysis.stats` — paired comparisons, Friedman / CD, ANOVA, summaries.
* :mod:`analysis.figures` — matplotlib/seaborn figures and ``save_figure``.

This package never imports the trainer (``ddc``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["figures", "stats"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
