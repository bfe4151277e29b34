"""Every user error is one line: exit code 2, no traceback, the field/file/path named, the run store untouched.

One table of bad inputs across ``train``, ``sweep``, ``runs``, ``data``, ``notebooks``
and config files. Each case runs the real command (click's runner, in this
process) against a run store that already holds a finished run and a partial
one, and compares the bytes of the whole store before and after.
"""

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddc import data, store
from ddc.cli import main

#: a valid, tiny training command; cases add one mistake to it
TRAIN = ["train", "--dataset", "mnist1d", "--model", "mlp", "--epochs", "1", "--train-subset", "64", "--val-subset", "32",
         "--test-subset", "32", "--no-progress"]


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with the hash of its bytes (directories: None)."""
    out = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files of every kind, and a run store with one finished and one partial run."""
    base = tmp_path_factory.mktemp("bad-inputs")

    def write(name, text):
        (base / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        return base / name

    paths = {
        "empty": write("empty.yaml", ""),
        "list": write("list.yaml", "- lr: 0.1\n"),
        "invalid": write("invalid.yaml", "lr: [0.1,\n"),
        "binary": write("binary.yaml", b"\xff\xfe\x00\x01"),
        "typo": write("typo.yaml", "dataset: mnist1d\nmodel: mlp\nepoch: 3\n"),
        "badlr": write("badlr.yaml", "dataset: mnist1d\nmodel: mlp\nlr: fast\n"),
        "badopts": write("badopts.yaml", "dataset: mnist1d\nmodel: mlp\nmethod: ddc\nmethod_options: 3\n"),
        "spec_empty": write("spec_empty.yaml", ""),
        "spec_comment": write("spec_comment.yaml", "# nothing here\n"),
        "spec_list": write("spec_list.yaml", "- base: {}\n"),
        "spec_invalid": write("spec_invalid.yaml", "base: {lr: 0.1\n"),
        "spec_key": write("spec_key.yaml", "base: {dataset: synthetic, model: linreg2d}\nseed: [0, 1]\n"),
        "spec_axis": write("spec_axis.yaml", "base: {dataset: synthetic, model: linreg2d}\ngrid: {learning_rate: [0.1]}\n"),
        "spec_value": write("spec_value.yaml", "base: {dataset: synthetic, model: linreg2d, method: ddc}\ngrid: {method_options.tau: [0.5, 1.5]}\n"),
        "spec_seeds": write("spec_seeds.yaml", "base: {dataset: synthetic, model: linreg2d}\nseeds: []\n"),
        "spec_ok": write("spec_ok.yaml", "base: {dataset: synthetic, model: linreg2d, epochs: 1}\n"),
        "a_file": write("a_file.txt", "not a directory\n"),
        "bad_json": write("trailing_comma.json", '{"epochs": 3,}'),
    }
    # MNIST-format files with labels out of range and with images of the wrong size
    for name, (labels, size) in {"mnist_labels": (12, 28), "mnist_shape": (3, 20)}.items():
        directory = base / name
        directory.mkdir()
        for split, n in (("train", 60), ("t10k", 20)):
            data.write_idx(directory / f"{split}-images-idx3-ubyte", np.zeros((n, size, size), dtype=np.uint8))
            data.write_idx(directory / f"{split}-labels-idx1-ubyte", np.full(n, labels, dtype=np.uint8))
        paths[name] = directory
    paths["no_data"] = base / "no-data"
    paths["no_data"].mkdir()

    root = base / "runs"
    finished = store.RunDir(root, "finished-run").start({"method": "none", "seed": 0})
    finished.write_metrics([{"run_id": "finished-run", "epoch": 0, "step": 1, "split": "val", "metric": "acc", "value": 0.5}])
    finished.finish({"test_acc": 0.5})
    store.RunDir(root, "partial-run").start({"method": "ddc"})
    paths["root"] = root
    # a directory a user made at the final path of the TRAIN run: never deleted, named
    from ddc.cli import TrainConfig

    occupied = base / "occupied"
    run_id = TrainConfig.from_dict({"dataset": "mnist1d", "model": "mlp", "epochs": 1, "train_subset": 64, "val_subset": 32,
                                    "test_subset": 32}).run_id()
    (occupied / run_id).mkdir(parents=True)
    (occupied / run_id / "notes.txt").write_text("my notes\n")
    paths["occupied"] = occupied
    paths["occupied_run"] = occupied / run_id
    return paths


# (argv with {placeholders}, what the one-line message must name)
CASES = [
    # ---- train: fields and values
    (TRAIN + ["--epochs", "0"], "epochs=0"),
    (TRAIN + ["--dataset", "fmnist"], "dataset='fmnist'"),
    (TRAIN + ["--method", "ddcc"], "method='ddcc'"),
    (TRAIN + ["--method", "ddc", "--opt", "p_base=2"], "p_base"),
    (TRAIN + ["--method", "ddc", "--opt", "p_bsae=0.2"], "p_bsae"),
    (TRAIN + ["--method", "ddc", "--opt", "p_base"], "--opt 'p_base'"),
    (TRAIN + ["--method", "ddc", "--opt", "tau=[0.5,"], "--opt tau"),
    (TRAIN + ["--recipe", "mnist-cnn"], "recipe='mnist-cnn'"),
    (TRAIN + ["--profile", "tiny"], "--profile"),
    (TRAIN + ["--lr", "-1"], "lr=-1"),
    (TRAIN + ["--lr", "fast"], "--lr"),
    (TRAIN + ["--epochs", "1e2"], "--epochs"),
    (TRAIN + ["--val-fraction", "1.5"], "val_fraction=1.5"),
    (TRAIN + ["--optimizer", "rmsprop"], "optimizer='rmsprop'"),
    (TRAIN + ["--schedule", "step"], "schedule='step'"),
    (TRAIN + ["--data-seed", "-1"], "data_seed=-1"),
    (TRAIN + ["--classes", "1,x"], "--classes"),
    (TRAIN + ["--classes", "3"], "classes=[3]"),
    (TRAIN + ["--classes", "0,10"], "classes=[0, 10]"),
    (TRAIN + ["--device", "banana"], "device='banana'"),
    (TRAIN + ["--model", "resnet99"], "model='resnet99'"),
    (TRAIN + ["--num-threads", "0"], "num_threads=0"),
    # ---- train: checked when the run is set up, before anything is written
    (TRAIN + ["--device", "cuda:7"], "device='cuda:7'"),
    (TRAIN + ["--method", "ddc", "--layers", "nosuchlayer"], "nosuchlayer"),
    (TRAIN[:3] + ["--model", "simplecnn1", "--method", "dropconnect", "--layers", "conv1", "--opt", "mask=sample"] + TRAIN[5:], "conv1"),
    (TRAIN + ["--train-subset", "100000"], "train_subset"),
    (TRAIN[:1] + ["--dataset", "synthetic", "--model", "mlp"] + TRAIN[5:], "num_classes"),
    (["train", "--dataset", "mnist", "--data-root", "{no_data}", "--epochs", "1"], "dataset 'mnist' not found"),
    (["train", "--dataset", "mnist", "--data-root", "{mnist_labels}", "--epochs", "1"], "train-labels-idx1-ubyte"),
    (["train", "--dataset", "mnist", "--data-root", "{mnist_shape}", "--epochs", "1"], "train-images-idx3-ubyte"),
    (TRAIN + ["--root", "{occupied}"], "{occupied_run}"),
    (TRAIN + ["--root", "{a_file}/runs"], "{a_file}"),
    (TRAIN + ["--root", "{a_file}"], "{a_file}"),
    # ---- config files
    (TRAIN + ["--config", "{empty}"], "{empty}"),
    (TRAIN + ["--config", "{list}"], "{list}"),
    (TRAIN + ["--config", "{invalid}"], "{invalid}"),
    (TRAIN + ["--config", "{binary}"], "{binary}"),
    (TRAIN + ["--config", "{typo}"], "'epoch'"),
    (TRAIN + ["--config", "{badlr}"], "lr='fast'"),
    (TRAIN + ["--config", "{badopts}", "--opt", "tau=0.5"], "method_options=3"),
    (TRAIN + ["--config", "{no_data}/missing.yaml"], "missing.yaml"),
    # ---- sweep
    (["sweep", "{spec_empty}", "--root", "{root}"], "{spec_empty}"),
    (["sweep", "{spec_comment}", "--root", "{root}"], "{spec_comment}"),
    (["sweep", "{spec_list}", "--root", "{root}"], "{spec_list}"),
    (["sweep", "{spec_invalid}", "--root", "{root}"], "{spec_invalid}"),
    (["sweep", "{spec_key}", "--root", "{root}"], "'seed' (did you mean 'seeds'?)"),
    (["sweep", "{spec_axis}", "--root", "{root}"], "learning_rate"),
    (["sweep", "{spec_value}", "--root", "{root}"], "tau=1.5"),
    (["sweep", "{spec_seeds}", "--root", "{root}"], "seeds is empty"),
    (["sweep", "{no_data}/nope.yaml", "--root", "{root}"], "nope.yaml"),
    (["sweep", "{spec_ok}", "--root", "{root}", "--workers", "0"], "--workers"),
    (["sweep", "{spec_ok}", "--root", "{root}", "--backend", "local", "--address", "tcp://127.0.0.1:1"], "--address"),
    # ---- runs
    (["runs", "ls", "{no_data}/nowhere"], "{no_data}/nowhere"),
    (["runs", "ls", "{root}", "--columns", "run_id,accuracy"], "accuracy"),
    (["runs", "sql", "SELEC * FROM runs", "--root", "{root}"], "SELEC"),
    (["runs", "sql", "SELECT nope FROM runs", "--root", "{root}"], "nope"),
    (["runs", "sql", "SELECT * FROM tables", "--root", "{root}"], "tables"),
    (["runs", "sql", "SELECT * FROM runs", "--root", "{no_data}/nowhere"], "{no_data}/nowhere"),
    (["runs", "show", "{root}/.partial/partial-run"], "no summary.json"),
    (["runs", "show", "{no_data}/nowhere"], "nowhere"),
    # ---- data
    (["data", "fetch", "nosuch"], "nosuch"),
    (["data", "fetch", "mnist1d"], "mnist1d"),
    # ---- notebooks (the store of a profile is <output>/<profile>/runs)
    (["notebooks", "run", "--profile", "smoke", "--only", "99", "--output", "{root}"], "'99'"),
    (["notebooks", "run", "--profile", "smoke", "--only", "01", "-p", "nosuch=1", "--output", "{root}"], "nosuch"),
    (["notebooks", "run", "--profile", "smoke", "--only", "01", "-p", "seeds", "--output", "{root}"], "--param 'seeds'"),
    (["notebooks", "run", "--profile", "smoke", "--only", "01", "-p", "seeds=[0,", "--output", "{root}"], "--param seeds"),
    (["notebooks", "run", "--profile", "smoke", "--suite", "paper", "--only", "01", "--output", "{root}"], "--suite"),
    (["notebooks", "run", "--profile", "smoke", "--only", "01", "-p", "profile=gigantic", "--output", "{root}"], "--profile"),
    (TRAIN + ["--momentum", "2"], "momentum=2.0 must lie in [0, 1)"),
    (TRAIN + ["--layers", ""], "layers=[] must name at least one layer"),
    (TRAIN + ["--layers", " , "], "layers=[] must name at least one layer"),
    (["train", "--config", "{bad_json}"], "not valid JSON"),
    # click's own usage errors: one line too
    (TRAIN + ["--no-such-option"], "--no-such-option"),
    (TRAIN + ["--profile", "gigantic"], "'gigantic'"),
    (["sweep"], "SPEC"),
    (["sweep", "--workers", "0", "{a_file}"], "--workers"),
    (["runs", "show", "{root}/no-such-run"], "no-such-run"),
    (["runs", "sql"], "QUERY"),
    (["no-such-command"], "no-such-command"),
    (["notebooks", "run", "--profile", "huge", "--output", "{root}"], "--profile"),
]


def _fill(text: str, files: dict) -> str:
    return text.format(**{k: str(v) for k, v in files.items()})


@pytest.mark.parametrize("argv, named", CASES, ids=[" ".join(a[:1] + a[len(TRAIN):] if a[:len(TRAIN)] == TRAIN else a)[:80] for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, argv, named, monkeypatch, tmp_path):
    monkeypatch.setenv("DDC_DATA", str(tmp_path / "ddc-data"))  # no dataset found by accident
    monkeypatch.chdir(tmp_path)
    argv = [_fill(a, files) for a in argv]
    if "--root" not in argv and argv[0] == "train":
        argv += ["--root", str(files["root"])]
    stores = [files["root"], files["occupied"]]
    before = [snapshot(root) for root in stores]
    result = CliRunner().invoke(main, argv)
    output = result.output
    assert result.exit_code == 2, (argv, result.exit_code, output, result.exception)
    assert "Traceback" not in output and isinstance(result.exception, SystemExit), output
    error_lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, output
    assert [line for line in output.splitlines() if line.strip()] == error_lines, output  # no usage block
    assert _fill(named, files) in error_lines[0], output
    assert [snapshot(root) for root in stores] == before  # nothing written, nothing lost
    assert not (tmp_path / "runs").exists()


def test_table_is_large_and_covers_every_command():
    assert len(CASES) >= 40
    assert {argv[0] for argv, _ in CASES} == {"train", "sweep", "runs", "data", "notebooks", "no-such-command"}


def test_full_disk_names_the_path_and_keeps_the_store(files, monkeypatch, tmp_path):
    root = tmp_path / "runs"
    real = store._atomic

    def full(path, write):
        if Path(path).name == "metrics.parquet":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, write)

    monkeypatch.setattr(store, "_atomic", full)
    result = CliRunner().invoke(main, TRAIN + ["--root", str(root)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = [line for line in result.output.splitlines() if line.startswith("Error:")][0]
    assert "no space left" in line and "metrics.parquet" in line and str(root) in line
    assert store.run_dirs(root) == []  # nothing published; the partial run resumes later
    monkeypatch.setattr(store, "_atomic", real)
    again = CliRunner().invoke(main, TRAIN + ["--root", str(root)])
    assert again.exit_code == 0, again.output
    assert len(store.run_dirs(root)) == 1


def test_read_only_store_names_the_path(monkeypatch, tmp_path):
    root = tmp_path / "runs"
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    (root / ".locks").mkdir(parents=True)
    result = CliRunner().invoke(main, TRAIN + ["--root", str(root)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = [line for line in result.output.splitlines() if line.startswith("Error:")][0]
    assert "cannot write" in line and str(root) in line and "read-only" in line.lower()
    assert [p.name for p in root.iterdir()] == [".locks"] and not any((root / ".locks").iterdir())


# a sweep of one setting that `ddc train` refuses when it sets the run up: the same line, exit 2, nothing written
SWEEP_LIKE_TRAIN = [
    ({"dataset": "mnist1d", "model": "mlp", "method": "ddc", "layers": ["nothere"]}, "nothere"),
    ({"dataset": "mnist1d", "model": "mlp", "device": "cuda:7"}, "device='cuda:7'"),
    ({"dataset": "mnist1d", "model": "simplecnn1", "method": "dropconnect", "layers": ["conv1"],
      "method_options": {"mask": "sample"}}, "conv1"),
    ({"dataset": "mnist", "model": "simplecnn1", "data_root": "{no_data}"}, "dataset 'mnist' not found"),
    ({"recipe": "mnist-simplecnn1", "profile": "smoke"}, "dataset 'mnist' not found"),
]


@pytest.mark.parametrize("base, named", SWEEP_LIKE_TRAIN, ids=[str(sorted(b.items()))[:60] for b, _ in SWEEP_LIKE_TRAIN])
def test_sweep_refuses_what_train_refuses_with_the_same_line(files, base, named, monkeypatch, tmp_path):
    import yaml

    monkeypatch.setenv("DDC_DATA", str(tmp_path / "ddc-data"))
    monkeypatch.chdir(tmp_path)
    base = {key: _fill(value, files) if isinstance(value, str) else value for key, value in base.items()}
    small = {"epochs": 1, "train_subset": 64, "val_subset": 32, "test_subset": 32}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "base": {**small, **base}, "seeds": [0, 1]}))
    train_config = tmp_path / "config.yaml"
    fields = {key: value for key, value in base.items() if key not in ("recipe", "profile")}
    train_config.write_text(yaml.safe_dump({**small, **fields}))
    train_argv = ["train", "--config", str(train_config), "--root", str(tmp_path / "train-runs"), "--no-progress"]
    if "recipe" in base:
        train_argv += ["--recipe", base["recipe"], "--profile", base["profile"]]
    root = tmp_path / "sweep-runs"
    trained = CliRunner().invoke(main, train_argv)
    swept = CliRunner().invoke(main, ["sweep", str(spec), "--root", str(root), "--workers", "1", "--no-progress"])
    lines = {}
    for name, result in (("train", trained), ("sweep", swept)):
        assert result.exit_code == 2, (name, result.exit_code, result.output, result.exception)
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
        error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(error_lines) == 1 and _fill(named, files) in error_lines[0], result.output
        lines[name] = error_lines[0]
    assert lines["sweep"].startswith(lines["train"]) and "(run " in lines["sweep"], lines  # train's line, and which run
    assert not root.exists() and not (tmp_path / "train-runs").exists() and not (tmp_path / "runs").exists()
def test_a_file_size_limit_during_torch_save_is_one_line(tmp_path):
    """torch.save into a file that cannot grow (a full disk, a size limit) ends with one line naming the file,
    not torch's C++ writer's 'unexpected pos' traceback; nothing is published and a rerun without the limit works."""
    import resource
    import signal
    import subprocess
    import sys

    root = tmp_path / "runs"
    argv = [sys.executable, "-m", "ddc.cli"] + TRAIN + ["--epochs", "2", "--root", str(root)]
    limit = 8_000  # the tables and JSON files fit; the checkpoint of the model does not

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    warm = subprocess.run(argv[:-1] + [str(tmp_path / "warm")], capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr  # any dataset cache is written before the limit
    result = subprocess.run(argv, preexec_fn=limited, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(root) in errors[0] and "File too large" in errors[0], output
    assert store.run_dirs(root) == []
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(store.run_dirs(root)) == 1
