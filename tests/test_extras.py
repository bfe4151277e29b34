"""A missing optional dependency is one line naming the extra that installs it.

Each test hides one installed package (``sys.modules[name] = None`` makes
``import name`` fail as if it were absent) and runs the real function or
command that needs it.
"""

import sys

import pytest
import torch
from click.testing import CliRunner

import ddc
from ddc import data, store
from ddc._optional import MissingExtra, missing_extra, require
from ddc.cli import main
from ddc.train import TrainConfig, run


def hide(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra(monkeypatch):
    hide(monkeypatch, "pandas")
    with pytest.raises(MissingExtra) as caught:
        require("pandas", "the run store")
    assert str(caught.value) == "the run store needs pandas, which is not installed: pip install 'ddc[runs]'"
    assert isinstance(caught.value, ImportError) and caught.value.name == "pandas"


def test_require_of_a_submodule_names_the_package(monkeypatch):
    hide(monkeypatch, "mnist1d", "mnist1d.data")
    with pytest.raises(MissingExtra, match=r"needs mnist1d, .*pip install 'ddc\[mnist1d\]'"):
        require("mnist1d.data", "the MNIST-1D dataset")


def test_require_returns_the_module():
    import numpy

    assert require("pandas", "x").DataFrame is sys.modules["pandas"].DataFrame
    assert numpy is sys.modules["numpy"]


def test_a_plain_missing_module_maps_to_its_extra_and_others_to_none():
    assert missing_extra(ModuleNotFoundError("No module named 'scipy'", name="scipy")).endswith("pip install 'ddc[analysis]'")
    assert missing_extra(ModuleNotFoundError("No module named 'nothing_like_it'", name="nothing_like_it")) is None


def test_the_layers_train_without_any_extra(monkeypatch):
    hide(monkeypatch, "pandas", "pyarrow", "duckdb", "scipy", "papermill", "distributed")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    handle = ddc.apply(model, "ddc", layers=["2"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, targets = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    handle.remove()


def test_a_run_without_the_runs_extra_writes_nothing(monkeypatch, tmp_path):
    hide(monkeypatch, "pyarrow")
    config = TrainConfig(dataset="synthetic", model="linreg2d", epochs=1, progress=False)
    with pytest.raises(MissingExtra, match=r"pyarrow, which is not installed: pip install 'ddc\[runs\]'"):
        run(config, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_mnist1d_without_its_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("DDC_CACHE", str(tmp_path / "cache"))
    hide(monkeypatch, "mnist1d", "mnist1d.data")
    with pytest.raises(MissingExtra, match=r"pip install 'ddc\[mnist1d\]'"):
        data._mnist1d_arrays(12345)


@pytest.mark.parametrize("argv, hidden, extra", [
    (["runs", "sql", "SELECT 1"], "duckdb", "runs"),
    (["train", "--dataset", "synthetic", "--model", "linreg2d", "--epochs", "1", "--no-progress"], "pyarrow", "runs"),
    (["report"], "scipy", "analysis"),
    (["figures"], "seaborn", "analysis"),
    (["report"], "pandas", "analysis"),  # the analysis extra includes runs
    (["notebooks", "list"], "papermill", "notebooks"),
    (["notebooks", "run", "--only", "01"], "pandas", "notebooks"),  # the notebooks extra includes runs
])
def test_cli_says_which_extra_in_one_line_exit_2(monkeypatch, tmp_path, argv, hidden, extra):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDC_RUNS", str(tmp_path / "runs"))
    hide(monkeypatch, hidden)
    for module in [name for name in sys.modules if name.startswith(("analysis", "experiments"))]:
        monkeypatch.delitem(sys.modules, module)  # so that the command imports them again, without the hidden one
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, (result.output, result.exception)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error_lines == [f"Error: {error_lines[0][7:]}"] and f"pip install 'ddc[{extra}]'" in error_lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
