"""Optional dependencies: which extra installs each, and one line when it is missing.

``pip install ddc`` gives the layers (torch, numpy) and the command line
(click, pyyaml, tqdm, pebble). Everything else is an extra of
``pyproject.toml``, imported only inside the function that needs it, through
:func:`require`, so that a missing one is a single line naming the command that
installs it, not a traceback from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: top-level import name -> the extra of ``pyproject.toml`` that installs it
EXTRA_OF = {
    "pandas": "runs",
    "pyarrow": "runs",
    "duckdb": "runs",
    "mnist1d": "mnist1d",
    "scipy": "analysis",
    "statsmodels": "analysis",
    "matplotlib": "analysis",
    "seaborn": "analysis",
    "markdown": "analysis",
    "papermill": "notebooks",
    "nbformat": "notebooks",
    "ipykernel": "notebooks",
    "jupyter_client": "notebooks",
    "zmq": "notebooks",
    "dask": "dask",
    "distributed": "dask",
}
#: extras that include others, directly or through another (``"ddc[runs]"`` inside an extra of pyproject.toml)
INCLUDES = {"analysis": ("runs",), "notebooks": ("runs", "mnist1d", "analysis")}


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it.

    Raises:
        Nothing; it is what :func:`require` raises.
    """


def install_hint(module_name: str, purpose: str, extra: str | None = None) -> str:
    """One line: ``{purpose} needs {package}, which is not installed: pip install 'ddc[{extra}]'``.

    ``extra`` defaults to the one that installs the package (:data:`EXTRA_OF`).

    Raises:
        KeyError: ``module_name``'s top-level package is not an optional dependency (see :data:`EXTRA_OF`).
    """
    top = module_name.split(".")[0]
    return f"{purpose} needs {top}, which is not installed: pip install 'ddc[{extra or EXTRA_OF[top]}]'"


def require(module_name: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module_name`` (e.g. ``"pandas"``, ``"mnist1d.data"``) and return it.

    ``purpose`` says in words what needs it (e.g. ``"the run store"``);
    ``extra`` is the extra the message names (default: the package's own).

    Raises:
        MissingExtra: the module's top-level package is not installed; the
            message names the extra (``pip install 'ddc[runs]'``).
        KeyError: ``module_name`` is not an optional dependency (a programming error).
    """
    hint, top = install_hint(module_name, purpose, extra), module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != top:
            raise  # the package is there but one of its own imports is missing: keep its traceback
        raise MissingExtra(hint, name=error.name) from None


def require_extra(extra: str, purpose: str) -> None:
    """Import every package of ``extra`` and the extras it includes (:data:`EXTRA_OF`, :data:`INCLUDES`),
    so that a command fails first, before it reads or writes anything.

    Raises:
        MissingExtra: one of them is not installed (the message names ``extra``).
    """
    covered = {extra, *INCLUDES.get(extra, ())}
    for module_name, owner in EXTRA_OF.items():
        if owner in covered:
            require(module_name, purpose, extra)


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The one-line install hint for ``error`` when it names an optional dependency, else ``None``.

    Raises:
        Nothing.
    """
    if isinstance(error, MissingExtra):
        return str(error)
    top = (error.name or "").split(".")[0]
    if top in EXTRA_OF:
        return install_hint(top, "this command")
    return None
