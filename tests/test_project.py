"""The project's own files agree with each other."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# conda-forge package names that differ from PyPI's
CONDA_TO_PYPI = {"pytorch": "torch", "python-duckdb": "duckdb"}


def _requirement(spec: str):
    match = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", spec)
    name = re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")
    return name, match.group(2).replace(" ", "")


def _pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    # "ddc[runs,...]" inside an extra names other extras of the project itself, not a dependency
    return dict(_requirement(s) for s in specs if not s.startswith(project["name"] + "["))


def _environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "environment.yml must use conda-forge only"
    found, pip_section = {}, None
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip_section = item["pip"]
            continue
        name, version = _requirement(item.replace("=", "==", 1) if re.match(r"^[\w.-]+=[^=]", item) else item)
        found[CONDA_TO_PYPI.get(name, name)] = version
    assert found.pop("python") == "==3.11"
    assert found.pop("pip") == ""
    assert "-e ." in pip_section, "environment.yml must pip-install the project itself"
    for spec in pip_section:
        if not spec.startswith("-"):
            name, version = _requirement(spec)
            found[name] = version
    return found


def test_environment_yml_matches_pyproject():
    assert _environment() == _pyproject()


def test_packages_are_ddc_analysis_and_experiments():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["ddc*", "analysis*", "experiments*"]


def test_importing_ddc_needs_only_torch():
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import ddc\n"
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - {'ddc'} - set(sys.stdlib_module_names)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]", f"import ddc pulled in more than torch: {out}"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
