"""One run store that every command finds, and one profile default in every command."""

import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ddc import recipes, store
from ddc.cli import main
from ddc.sweep import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "mnist1d", "--model", "mlp", "--method", "none", "--epochs", "1", "--train-subset", "64",
        "--val-subset", "32", "--test-subset", "32", "--warmup-epochs", "0", "--no-progress"]


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_every_profile_option_has_the_same_default():
    with_profile = {" ".join(path): param.default for path, command in _commands(main)
                    for param in command.params if param.name == "profile"}
    assert {"train", "recipes", "runs ls", "runs sql", "report", "notebooks run", "figures"} <= set(with_profile)
    assert set(with_profile.values()) == {recipes.DEFAULT_PROFILE}
    # the library and sweep specs (a recipe without a profile) agree
    assert recipes.recipe("mnist1d-mlp") == recipes.recipe("mnist1d-mlp", recipes.DEFAULT_PROFILE)
    spec = load_spec({"name": "s", "base": {"recipe": "mnist1d-mlp"}, "seeds": [0]})
    assert spec.runs()[0].config.epochs == recipes.recipe("mnist1d-mlp")["epochs"]


def test_default_root_is_the_env_or_the_profile_store(monkeypatch):
    monkeypatch.delenv(store.RUNS_ENV, raising=False)
    assert store.default_root() == Path("outputs") / recipes.DEFAULT_PROFILE / "runs"
    assert store.default_root("smoke", "/x") == Path("/x/smoke/runs")
    monkeypatch.setenv(store.RUNS_ENV, "/somewhere/runs")
    assert store.default_root("full") == Path("/somewhere/runs")


def test_no_store_error_says_where_it_looked_and_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(store.RUNS_ENV, raising=False)
    for args in (["runs", "sql", "SELECT 1"], ["runs", "ls"], ["report"], ["runs", "ls", "--profile", "smoke"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        message = result.output.strip().splitlines()[-1]
        profile = "smoke" if "smoke" in args else recipes.DEFAULT_PROFILE
        # how THIS command takes a store: --root for runs sql, the store's folder as an argument for ls and report
        how = "--root PATH" if args[:2] == ["runs", "sql"] else f"`ddc {' '.join(args[:2] if args[0] == 'runs' else args[:1])} PATH`"
        assert f"outputs/{profile}/runs" in message and how in message and store.RUNS_ENV in message, message
        assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["runs", "sql", "SELECT 1", "--root", "nowhere"])
    assert result.exit_code == 2 and "no run store at nowhere" in result.output
    result = CliRunner().invoke(main, ["figures"])
    assert result.exit_code == 2 and "outputs/quick" in result.output and "--output" in result.output
    monkeypatch.setenv(store.RUNS_ENV, str(tmp_path / "elsewhere"))
    result = CliRunner().invoke(main, ["runs", "sql", "SELECT 1"])
    assert result.exit_code == 2 and f"${store.RUNS_ENV}" in result.output and "elsewhere" in result.output


def test_commands_find_each_others_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(store.RUNS_ENV, raising=False)
    runner = CliRunner()
    result = runner.invoke(main, ["train", *TINY])
    assert result.exit_code == 0, result.output
    default = tmp_path / "outputs" / recipes.DEFAULT_PROFILE / "runs"
    assert len(store.run_dirs(default)) == 1
    result = runner.invoke(main, ["runs", "sql", "SELECT count(*) AS n FROM runs"])
    assert result.exit_code == 0 and result.output.split() == ["n", "1"], result.output
    assert runner.invoke(main, ["runs", "ls"]).exit_code == 0
    # DDC_RUNS moves every command at once
    monkeypatch.setenv(store.RUNS_ENV, str(tmp_path / "shared"))
    assert runner.invoke(main, ["train", *TINY, "--seed", "1"]).exit_code == 0
    assert len(store.run_dirs(tmp_path / "shared")) == 1
    result = runner.invoke(main, ["runs", "sql", "SELECT seed FROM runs"])
    assert result.exit_code == 0 and result.output.split() == ["seed", "1"], result.output


def test_default_outputs_are_ignored_by_git(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [store.default_root(p) / "abc" / "config.json" for p in recipes.PROFILES]
    paths += [Path(store.OUTPUTS) / p / "report" / "report.md" for p in recipes.PROFILES]
    for path in paths:
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0
        assert ignored, f"{path} is not ignored by git"
