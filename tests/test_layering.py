"""The layers point one way: ``ddc`` (the library) never imports ``analysis`` or
``experiments``; ``analysis`` never imports ``ddc`` or ``experiments``.

The one exception is ``ddc``'s command line, which may import the other two
lazily (inside a function), so that ``import ddc`` stays torch-only.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> packages it must never import
FORBIDDEN = {"ddc": {"analysis", "experiments"}, "analysis": {"ddc", "experiments"}}
#: modules that may import a forbidden package inside a function (lazily)
LAZY_ALLOWED = {"ddc/cli.py"}


def _imports(path: Path):
    """``(top-level package, line, at module level?)`` of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name.split(".")[0], node.lineno, id(node) in module_level


def _violations(package: str):
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for top, line, at_module_level in _imports(path):
            if top not in FORBIDDEN[package]:
                continue
            if relative in LAZY_ALLOWED and not at_module_level:
                continue
            found.append(f"{relative}:{line} imports {top}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_point_one_way(package):
    assert _violations(package) == []


def test_the_rule_catches_a_violation(tmp_path, monkeypatch):
    fake = tmp_path / "analysis"
    fake.mkdir()
    (fake / "bad.py").write_text("import numpy\n\ndef f():\n    from ddc import functional\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _violations("analysis") == ["analysis/bad.py:4 imports ddc"]


# ----------------------------------------------------------------------------- optional dependencies
# ``pip install ddc`` gives the layers and the command line; everything else is
# an extra (pyproject.toml). ``ddc`` may import at module level only the
# standard library and the base dependencies; an optional package is imported
# inside the function that needs it, through ``ddc._optional.require``, so that
# its absence is one line naming the extra.

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - python < 3.11
    import tomli as tomllib

import importlib.metadata
import re

from ddc._optional import EXTRA_OF


def _distribution_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _import_names(distributions: set) -> set:
    """Top-level import names of the installed ``distributions`` (e.g. pyyaml -> yaml)."""
    return {
        module for module, owners in importlib.metadata.packages_distributions().items()
        if any(_distribution_name(owner) in distributions for owner in owners)
    }


def _scoped_imports(path: Path):
    """``(top-level package, line, inside a function?)`` of every absolute import in ``path``.

    An import under a module-level ``try``/``if`` or in a class body runs at
    import time, so only a function body counts as "inside a function".
    """
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name.split(".")[0], child.lineno, in_function
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module.split(".")[0], child.lineno, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from walk(ast.parse(path.read_text(), filename=str(path)), False)


def _module_level_violations(package_root: Path, allowed: set):
    found = []
    for path in sorted(package_root.rglob("*.py")):
        for top, line, in_function in _scoped_imports(path):
            if not in_function and top not in allowed and top not in sys.stdlib_module_names:
                found.append(f"{path.relative_to(package_root.parent).as_posix()}:{line} imports {top} at module level")
    return found


def _base_import_names() -> set:
    base = {_distribution_name(requirement) for requirement in _project()["dependencies"]}
    return {"ddc"} | _import_names(base)


def test_ddc_imports_only_base_dependencies_at_module_level():
    assert _module_level_violations(ROOT / "ddc", _base_import_names()) == []


def test_ddc_imports_optional_packages_only_through_require():
    """A plain ``import pandas`` inside a function would fail with a traceback, not the line naming the extra."""
    found = []
    for path in sorted((ROOT / "ddc").rglob("*.py")):
        for top, line, _ in _scoped_imports(path):
            if top in EXTRA_OF:
                found.append(f"{path.relative_to(ROOT).as_posix()}:{line} imports {top} (use ddc._optional.require)")
    assert found == []


def test_base_rule_catches_an_optional_import_at_module_level(tmp_path):
    fake = tmp_path / "ddc"
    fake.mkdir()
    (fake / "bad.py").write_text(
        "import os\nimport torch\ntry:\n    import pandas\nexcept ImportError:\n    pass\n\ndef f():\n    import scipy\n"
    )
    assert _module_level_violations(fake, _base_import_names()) == ["ddc/bad.py:4 imports pandas at module level"]


def _extra_closure(extras: dict, name: str) -> set:
    """Distribution names that ``pip install 'ddc[name]'`` installs directly (following ``ddc[...]`` references)."""
    found = set()
    for requirement in extras[name]:
        if _distribution_name(requirement) == _project()["name"]:
            inner = re.search(r"\[(.*)\]", requirement).group(1)
            for other in inner.split(","):
                found |= _extra_closure(extras, other.strip())
        else:
            found.add(_distribution_name(requirement))
    return found


def test_the_extra_named_for_each_optional_package_installs_it():
    extras = _project()["optional-dependencies"]
    assert {"runs", "analysis", "notebooks", "dask", "lab", "dev", "all"} <= set(extras)
    named = {}
    for module, extra in EXTRA_OF.items():
        assert extra in extras, f"{module}: extra {extra!r} is not in pyproject.toml"
        named[module] = _import_names(_extra_closure(extras, extra))
    # zmq and jupyter_client come with ipykernel; every other one is listed in its extra itself
    missing = sorted(module for module, names in named.items() if module not in names and module not in {"zmq", "jupyter_client"})
    assert missing == []
    from ddc._optional import INCLUDES

    for extra, included in INCLUDES.items():
        assert _extra_closure(extras, extra) >= set().union(*(_extra_closure(extras, e) for e in included))
    assert _extra_closure(extras, "all") >= set().union(*(_extra_closure(extras, e) for e in set(EXTRA_OF.values())))


# ----------------------------------------------------------------------------- experiments use the public API
# ``experiments/``, the notebooks and the examples in the README and docs use
# only the public API of ``ddc``: no ``_private`` name imported from it, no
# ``ddc.x._y`` attribute, no reaching into another object's ``__dict__``
# (such as popping a layer's ``forward``).

import json


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(source: str, where: str):
    """``where:line what`` for every private use of ``ddc`` in ``source`` (Python code)."""
    tree = ast.parse(source)
    bound, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "ddc":
                    continue
                if any(_is_private(part) for part in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno} imports {alias.name}")
                bound.add(alias.asname or "ddc")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ddc":
            if any(_is_private(part) for part in node.module.split(".")):
                found.append(f"{where}:{node.lineno} imports from {node.module}")
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"{where}:{node.lineno} imports {node.module}.{alias.name}")
                bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "__dict__" and ast.unparse(node.value) != "self":
            found.append(f"{where}:{node.lineno} reaches into __dict__")  # a class may keep its own
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append(f"{where}:{node.lineno} uses {ast.unparse(node)}")
    return sorted(set(found), key=lambda entry: int(entry[len(where) + 1:].split(" ")[0]))


def _notebook_code(path: Path) -> str:
    """The notebook's code cells as one Python source; IPython magics and shell lines become blank lines."""
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            lines += ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return "\n".join(lines)


def _markdown_code(path: Path) -> str:
    """The ```python blocks of a markdown file as one Python source."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return "\n".join(blocks)


def _public_api_violations(root: Path):
    found = []
    for path in sorted((root / "experiments").rglob("*.py")):
        found += _private_uses(path.read_text(), path.relative_to(root).as_posix())
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        found += _private_uses(_notebook_code(path), path.relative_to(root).as_posix())
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if path.exists():
            found += _private_uses(_markdown_code(path), path.relative_to(root).as_posix())
    return found


def test_experiments_notebooks_and_examples_use_only_public_ddc():
    assert _public_api_violations(ROOT) == []


def test_public_api_rule_catches_each_kind(tmp_path):
    source = (
        "import ddc\nimport ddc._fast as fast\nfrom ddc.models import _CifarResNet, MLP\nfrom ddc import apply as ddc_apply\n"
        "from ddc._optional import require\nimport torch\n"
        "ddc.apply._attach(None)\nddc_apply._attach(None)\nMLP._private\ntorch._C\nlayer.__dict__.pop('forward')\n"
        "self.__dict__['mapping'] = 1\n"
    )
    assert _private_uses(source, "x.py") == [
        "x.py:2 imports ddc._fast",
        "x.py:3 imports ddc.models._CifarResNet",
        "x.py:5 imports from ddc._optional",
        "x.py:7 uses ddc.apply._attach",
        "x.py:8 uses ddc_apply._attach",
        "x.py:9 uses MLP._private",
        "x.py:11 reaches into __dict__",
    ]
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "n.ipynb").write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": ["from ddc import _x"]},
        {"cell_type": "code", "source": ["%matplotlib inline\n", "from ddc.train import _run\n"]},
    ]}))
    (tmp_path / "README.md").write_text("text\n```python\nimport ddc\nddc.functional._kernel\n```\n")
    assert _public_api_violations(tmp_path) == ["notebooks/n.ipynb:2 imports ddc.train._run", "README.md:2 uses ddc.functional._kernel"]


# ----------------------------------------------------------------------------- short functions
#: the longest a function may be, counted from its ``def`` line to its last, docstring excluded
MAX_FUNCTION_LINES = 60
#: where the rule holds (tests, notebooks and docstring text are exempt)
SHORT_FUNCTION_PACKAGES = ("ddc", "analysis", "experiments", "benchmarks")


def _function_lengths(path: Path):
    """``(name, line, length)`` of every function and method in ``path``; the length leaves out the docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                length -= first.end_lineno - first.lineno + 1
            yield node.name, node.lineno, length


def _long_functions(root: Path):
    found = []
    for package in SHORT_FUNCTION_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for name, line, length in _function_lengths(path):
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root).as_posix()}:{line} {name} has {length} lines")
    return found


def test_no_function_over_60_lines():
    assert _long_functions(ROOT) == []


def test_the_length_rule_leaves_out_docstrings(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    docstring = '    """Many\n' + "    lines\n" * 30 + '    """\n'
    (tmp_path / "ddc").mkdir()
    (tmp_path / "ddc" / "m.py").write_text(f"def short():\n{docstring}{body}\n\ndef long():\n{body}    x = 0\n    return x\n")
    assert _long_functions(tmp_path) == [f"ddc/m.py:{MAX_FUNCTION_LINES + 35} long has {MAX_FUNCTION_LINES + 2} lines"]


# ----------------------------------------------------------------------------- the architecture document
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _named_paths(text: str):
    """Every repository path the text names in backticks (``ddc/train.py``, ``experiments/openq/``, ``tests/test_x.py``)."""
    for name in re.findall(r"`([\w./<>-]+)`", text):
        if "/" in name and "<" not in name and not name.startswith(("http", ".")):
            yield name.split("::")[0]


def test_architecture_document_is_linked_and_names_files_that_exist():
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
    text = ARCHITECTURE.read_text()
    named = sorted(set(_named_paths(text)))
    assert len(named) >= 20
    assert [name for name in named if not (ROOT / name).exists()] == []
    for question in ("how DDC computes drop probabilities", "what the Recorder logs", "a new method",
                     "a new experiment", "a new statistic", "the statistics behind a verdict"):
        assert question in text
