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
