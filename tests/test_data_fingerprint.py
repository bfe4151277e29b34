"""One run id, one result, whatever folder the data came from: a run records a fingerprint of its data,
and a finished run is reused (ddc train, a sweep's skip) or an interrupted one resumed only on the same data."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from ddc import data, store, train
from ddc.cli import main

SMALL = ["--dataset", "mnist", "--model", "mlp", "--epochs", "1", "--train-subset", "40", "--val-subset", "10",
         "--test-subset", "10", "--no-progress"]


def fake_mnist(directory, seed):
    """MNIST-format IDX files with random pixels: another ``seed``, other content."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, n in (("train", 120), ("t10k", 40)):
        data.write_idx(directory / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        data.write_idx(directory / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    return directory


def snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("DDC_DATA", str(tmp_path / "no-ddc-data"))
    monkeypatch.chdir(tmp_path)
    a = fake_mnist(tmp_path / "a", seed=0)
    b = fake_mnist(tmp_path / "b", seed=1)  # same shapes and labels, other pixels
    same = tmp_path / "copy-of-a"
    shutil.copytree(a, same)
    return {"a": a, "b": b, "same": same, "root": tmp_path / "runs"}


def test_fingerprint_is_of_the_data_not_of_its_folder(folders):
    load = lambda root: data.load("mnist", root=root, train_subset=40, val_subset=10, test_subset=10)
    a, same, b = (train.data_fingerprint(load(folders[k])) for k in ("a", "same", "b"))
    assert a == same != b and a.startswith("sha256:")
    assert load(folders["a"]).info["fingerprint"] == a  # recorded by data.load


def test_train_refuses_a_finished_run_made_from_other_data(folders):
    root = folders["root"]
    first = CliRunner().invoke(main, ["train", *SMALL, "--data-root", str(folders["a"]), "--root", str(root)])
    assert first.exit_code == 0, first.output
    (run,) = store.run_dirs(root)
    recorded = json.loads((run / "config.json").read_text())["data_info"]["fingerprint"]
    assert json.loads((run / "summary.json").read_text())["data_fingerprint"] == recorded

    before = snapshot(root)
    other = CliRunner().invoke(main, ["train", *SMALL, "--data-root", str(folders["b"]), "--root", str(root)])
    assert other.exit_code == 2 and "Traceback" not in other.output, other.output
    (line,) = [line for line in other.output.splitlines() if line.startswith("Error:")]
    for named in (run.name, recorded, str(folders["a"]), str(folders["b"]), "another --root"):
        assert named in line, line
    assert snapshot(root) == before  # nothing written

    # the same data in another folder is the same run: reused
    again = CliRunner().invoke(main, ["train", *SMALL, "--data-root", str(folders["same"]), "--root", str(root)])
    assert again.exit_code == 0 and f"run {run.name} written to" in again.output, again.output
    assert snapshot(root) == before


def test_sweep_refuses_to_skip_a_finished_run_made_from_other_data(folders, tmp_path):
    root = folders["root"]
    assert CliRunner().invoke(main, ["train", *SMALL, "--data-root", str(folders["a"]), "--root", str(root)]).exit_code == 0
    base = {"dataset": "mnist", "model": "mlp", "epochs": 1, "train_subset": 40, "val_subset": 10, "test_subset": 10}
    spec = tmp_path / "spec.yaml"
    before = snapshot(root)
    for folder, code in (("b", 2), ("same", 0)):
        spec.write_text(yaml.safe_dump({"name": "fp", "base": {**base, "data_root": str(folders[folder])}}))
        result = CliRunner().invoke(main, ["sweep", str(spec), "--root", str(root), "--backend", "serial", "--no-progress"])
        assert result.exit_code == code, result.output
        if code == 2:
            (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
            assert "other data" in line and str(folders["b"]) in line and str(folders["a"]) in line, line
        else:
            assert "1 already done" in result.output
        assert snapshot(root) == before


def test_an_interrupted_run_resumes_only_on_its_data(folders, monkeypatch):
    root = folders["root"]
    config = lambda folder: train.TrainConfig.from_dict(
        {"dataset": "mnist", "model": "mlp", "epochs": 3, "train_subset": 40, "val_subset": 10, "test_subset": 10,
         "data_root": str(folders[folder]), "progress": False})
    original, calls = train.evaluate, {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.run(config("a"), root)
    monkeypatch.setattr(train, "evaluate", original)
    before = snapshot(root)
    with pytest.raises(train.RunSetupError, match=r"other data than would be resumed"):
        train.run(config("b"), root)
    assert snapshot(root) == before
    messages = []
    path = train.run(config("same"), root, log=messages.append)
    assert any("resuming run" in m for m in messages)
    assert json.loads((path / "summary.json").read_text())["resumed_at_epochs"]


def test_runs_recorded_before_fingerprints_are_reused_unchecked(folders):
    root = folders["root"]
    assert CliRunner().invoke(main, ["train", *SMALL, "--data-root", str(folders["a"]), "--root", str(root)]).exit_code == 0
    (run,) = store.run_dirs(root)
    stored = json.loads((run / "config.json").read_text())
    del stored["data_info"]["fingerprint"]
    (run / "config.json").write_text(json.dumps(stored))
    result = CliRunner().invoke(main, ["train", *SMALL, "--data-root", str(folders["b"]), "--root", str(root)])
    assert result.exit_code == 0 and f"run {run.name} written to" in result.output, result.output
