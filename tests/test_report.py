"""ddc report: built from stored runs only, identical when rebuilt, with the expected statistics."""

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddc import train
from ddc.cli import main
from experiments.report import build_report
from ddc.train import TrainConfig


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for method in ("none", "dropconnect", "ddc"):
        for seed in (0, 1, 2):
            config = TrainConfig.from_dict(
                dict(
                    dataset="mnist1d",
                    model="mlp",
                    method=method,
                    seed=seed,
                    epochs=2,
                    lr=0.05,
                    train_subset=200,
                    val_subset=100,
                    test_subset=100,
                    warmup_epochs=0,
                    progress=False,
                )
            )
            train.run(config, root)
    return root


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_contents(runs_root, tmp_path):
    report = build_report(runs_root, tmp_path / "r", n_resamples=499)
    text = report.read_text()
    assert "## mnist1d / mlp" in text and "9 runs" in text
    assert "Paired differences vs `none` (Holm-adjusted p-values)" in text
    assert "Friedman test" in text
    for label in ("none", "dropconnect", "ddc"):
        assert f"| {label} | 3 |" in text
    assert (tmp_path / "r" / "figures").is_dir() and any((tmp_path / "r" / "figures").glob("*.png"))


def test_report_regenerates_identically(runs_root, tmp_path):
    first = build_report(runs_root, tmp_path / "a", n_resamples=499).parent
    second = build_report(runs_root, tmp_path / "b", n_resamples=499).parent
    assert _digest(first) == _digest(second)


def test_report_cli_and_empty_root(runs_root, tmp_path):
    result = CliRunner().invoke(main, ["report", str(runs_root), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "no finished runs" in result.output
