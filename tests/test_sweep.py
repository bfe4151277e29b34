"""Sweeps: spec expansion and validation, failures, SIGKILL + resume, local == dask, results."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from ddc import store
from ddc.sweep import Spec, load_spec, run_sweep, sweep_command, sweep_connect, sweep_frame, sweep_status
from ddc.train import TrainConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sweeps"

#: a few seconds per run on one core: synthetic regression, no recorder
TINY = {"dataset": "synthetic", "model": "linreg2d", "lr": 0.01, "schedule": "constant", "batch_size": 64, "weight_decay": 0.0}


def tiny_spec(**overrides):
    spec = {
        "name": "tiny",
        "base": {**TINY, "epochs": 2},
        "methods": {
            "none": {"method": "none"},
            "ddc": {"method": "ddc", "grid": {"method_options.p_base": [0.2, 0.3]}},
        },
        "seeds": [0, 1],
    }
    spec.update(overrides)
    return spec


def finished_runs(root: Path):
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / "summary.json").exists())


def summaries(root: Path, run_ids):
    out = {}
    for run_id in run_ids:
        summary = store.read_json(root / run_id / "summary.json")
        summary.pop("train_time_s")  # wall clock, the only field allowed to differ
        out[run_id] = summary
    return out


def assert_complete(root: Path, spec: Spec):
    """Exactly the grid, every run whole, nothing partial, no epoch twice."""
    ids = spec.run_ids()
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert entries == sorted(ids)
    assert len(set(ids)) == len(ids)
    for config in spec.expand():
        run = root / config.run_id()
        assert (run / "summary.json").exists() and (run / "metrics.parquet").exists() and (run / "config.json").exists()
        metrics = pd.read_parquet(run / "metrics.parquet")
        assert not metrics.duplicated(["epoch", "split", "metric"]).any()
        assert sorted(metrics["epoch"].unique()) == list(range(config.epochs))
        assert store.read_json(run / "summary.json")["epochs"] == config.epochs
    partial = root / store.PARTIAL
    assert not partial.exists() or not any(partial.iterdir())
    assert not (root / ".failed").exists() or not any((root / ".failed").iterdir())


# ----------------------------------------------------------------------------- expansion


def test_expand_grid_zip_methods_seeds():
    spec = load_spec(
        {
            "base": {"recipe": "synthetic-linreg2d", "profile": "smoke", "method_options": {}},
            "methods": {
                "none": {"method": "none"},
                "dc": {"method": "dropconnect", "method_options": {"p": 0.4}},
                "ddc": {
                    "method": "ddc",
                    "method_options": {"tau": 0.25},
                    "grid": {"method_options.p_base": [0.2, 0.3], "method_options.normalize": ["zscore", "none"]},
                },
            },
            "grid": {"batch_size": [16, 32]},
            "zip": {"lr": [0.01, 0.02], "epochs": [2, 3]},
            "seeds": [0, 1, 2],
        }
    )
    runs = spec.runs()
    assert len(runs) == 3 * (1 + 1 + 4) * 2 * 2
    assert len({r.run_id for r in runs}) == len(runs)
    configs = spec.expand()
    assert all(isinstance(c, TrainConfig) and c.progress is False for c in configs)
    assert {(c.lr, c.epochs) for c in configs} == {(0.01, 2), (0.02, 3)}  # zipped, never crossed
    assert {c.seed for c in configs} == {0, 1, 2}
    assert {c.dataset for c in configs} == {"synthetic"} and {c.schedule for c in configs} == {"constant"}  # the recipe
    ddc = [r for r in runs if r.variant == "ddc"]
    assert len(ddc) == 3 * 4 * 2 * 2
    assert all(r.config.method_options["tau"] == 0.25 for r in ddc)  # variant options merged with its grid
    assert {(r.config.method_options["p_base"], r.config.method_options["normalize"]) for r in ddc} == {
        (0.2, "zscore"), (0.3, "zscore"), (0.2, "none"), (0.3, "none")
    }
    assert {r.config.method_options["p"] for r in runs if r.variant == "dc"} == {0.4}
    assert all(r.config.method_options == {} for r in runs if r.variant == "none")
    # seeds outermost: an interrupted sweep has whole seeds done
    assert [r.config.seed for r in runs] == sorted(r.config.seed for r in runs)
    # the ids are TrainConfig's: stable across loads
    assert load_spec(spec.to_dict()).run_ids() == spec.run_ids()


def test_plain_axes_method_list_and_dedup():
    spec = load_spec({"base": {**TINY, "epochs": 1}, "grid": {"method": ["none", "dropout"], "tag": ["a", "b"]}})
    # tag does not change a run's numbers, so it does not make a new run
    assert [c.method for c in spec.expand()] == ["none", "dropout"]
    assert spec.seeds is None and {c.seed for c in spec.expand()} == {0}
    listed = load_spec({"base": TINY, "methods": ["none", "ddc"], "seeds": [3]})
    assert [(r.variant, r.config.method, r.config.seed) for r in listed.runs()] == [("none", "none", 3), ("ddc", "ddc", 3)]


def test_example_specs_load_and_expand():
    paths = sorted(EXAMPLES.glob("*.yaml"))
    assert paths
    for path in paths:
        spec = load_spec(path)
        assert spec.name and len(spec.expand()) >= 2 and spec.source == str(path)
    assert len(load_spec(EXAMPLES / "mnist1d-ablation.yaml").runs()) >= 100


@pytest.mark.parametrize(
    "change, named",
    [
        ({"base": {**TINY, "epoch": 3}}, "'epoch'.*did you mean 'epochs'"),
        ({"grid": {"lrr": [0.1]}}, "grid axis 'lrr'.*unknown config field 'lrr'"),
        ({"grid": {"method_option.p_base": [0.2]}}, "unknown config field 'method_option'"),
        ({"grid": {"lr.x": [0.2]}}, "'lr.x'.*only reach into method_options"),
        ({"grid": {"method_options.p_bse": [0.2]}}, "p_bse"),  # unknown option, named by the method
        ({"grid": {"lr": []}}, "grid axis 'lr' is empty"),
        ({"grid": {"method_options.p_base": []}}, "'method_options.p_base' is empty"),
        ({"grid": {"lr": 0.1}}, "grid axis 'lr' must be a list"),
        ({"zip": {"lr": [0.1, 0.2], "epochs": [1]}}, "equal lengths"),
        ({"zip": {"epochs": []}}, "zip axis 'epochs' is empty"),
        ({"seeds": []}, "seeds is empty"),
        ({"methods": {}}, "methods axis is empty"),
        ({"methods": {"ddc": {"method": "ddc", "grid": {"method_options.tau": []}}}}, r"methods\['ddc'\].grid axis 'method_options.tau' is empty"),
        ({"methods": {"x": {"method": "ddc", "methd_options": {}}}}, r"methods\['x'\].*'methd_options'"),
        ({"methods": {"x": {"method": "ddcc"}}}, "method='ddcc'"),
        ({"grid": {"method_options.tau": [0.5, 1.5]}}, "tau=1.5"),  # a bad value in one point
        ({"grid": {"seed": [1]}}, "'seed'.*conflicts with 'seeds'"),
        ({"grid": {"lr": [0.1]}, "zip": {"lr": [0.2]}}, "axis 'lr' appears in both"),
        ({"seed": [0, 1]}, "unknown sweep spec key.*'seed' \\(did you mean 'seeds'\\?\\)"),
    ],
)
def test_bad_spec_rejected_before_anything_runs(tmp_path, change, named):
    spec = tiny_spec(methods={"ddc": {"method": "ddc"}})
    spec.update(change)
    with pytest.raises(ValueError, match=named):
        load_spec(spec)
    root = tmp_path / "runs"
    with pytest.raises(ValueError, match=named):
        run_sweep(spec, root, backend="local", progress=False)
    assert not root.exists()  # nothing started, nothing written


def test_cli_rejects_typo_and_dry_run_lists_status(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_spec(grid={"learning_rate": [0.1]})))
    result = CliRunner().invoke(sweep_command, [str(bad), "--root", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "learning_rate" in result.output
    assert not (tmp_path / "runs").exists()

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_spec()))
    result = CliRunner().invoke(sweep_command, [str(good), "--root", str(tmp_path / "runs"), "--dry-run"])
    assert result.exit_code == 0, result.output
    ids = load_spec(good).run_ids()
    assert all(f"pending  {i}" in result.output for i in ids) and f"{len(ids)} runs, 0 done" in result.output
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- failures


def test_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    # a training subset larger than the data fails when the data is loaded, at run time
    # (a model that does not fit the data is refused before the sweep starts: test_cli_errors.py)
    spec = load_spec({"name": "fails", "base": {**TINY, "epochs": 1}, "grid": {"train_subset": [100, 10**6]}})
    good, bad = spec.run_ids()
    root = tmp_path / "runs"
    store.write_json(root / ".failed" / f"{good}.json", {"stale": True})  # an earlier failure of a run that now works
    result = run_sweep(spec, root, backend="serial", progress=False)
    assert result.completed == [good] and list(result.failed) == [bad] and not result.ok
    assert "train_subset" in result.failed[bad]
    record = store.read_json(root / ".failed" / f"{bad}.json")
    assert record["config"]["train_subset"] == 10**6 and "Traceback" in record["traceback"] and record["sweep"] == "fails"
    assert not (root / ".failed" / f"{good}.json").exists()
    assert sweep_status(spec, root) == {good: "done", bad: "failed"}
    assert finished_runs(root) == [good]
    # again: the finished run is skipped, the failed one retried (and recorded again)
    again = run_sweep(spec, root, backend="serial", progress=False)
    assert again.skipped == [good] and list(again.failed) == [bad]

    path = tmp_path / "fails.yaml"
    path.write_text(yaml.safe_dump(spec.to_dict()))
    result = CliRunner().invoke(sweep_command, [str(path), "--root", str(root), "--backend", "serial", "--no-progress"])
    assert result.exit_code == 1 and "1 already done" in result.output and "1 failed" in result.output



def test_finished_runs_made_under_another_torch_are_named_in_one_warning(tmp_path, monkeypatch):
    import json
    import warnings

    from ddc import train

    monkeypatch.setattr(train, "_WARNED_REUSED", set())
    spec = load_spec({"name": "reused", "base": {**TINY, "epochs": 1}, "seeds": [0, 1, 2]})
    root = tmp_path / "runs"
    first = run_sweep(spec, root, backend="serial", progress=False)
    assert sorted(first.completed) == sorted(spec.run_ids())
    for run_id in spec.run_ids()[:2]:
        config = json.loads((root / run_id / "config.json").read_text())
        config["environment"]["torch"] = "0.0.1"
        (root / run_id / "config.json").write_text(json.dumps(config))
    with pytest.warns(train.ReusedRunWarning) as caught:
        again = run_sweep(spec, root, backend="serial", progress=False)
    assert again.skipped == spec.run_ids() and len(caught) == 1
    message = str(caught[0].message)
    assert all(run_id in message for run_id in spec.run_ids()[:2]) and spec.run_ids()[2] not in message
    assert "torch '0.0.1'" in message and "reused as they are" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each run is named once in a process
        run_sweep(spec, root, backend="serial", progress=False)



# ----------------------------------------------------------------------------- SIGKILL and resume

SCRIPT = "import sys\nfrom ddc.sweep import sweep_command\nif __name__ == '__main__':\n    sweep_command(sys.argv[1:])\n"


@pytest.mark.slow
@pytest.mark.xdist_group("sweep-processes")
def test_sigkill_mid_sweep_then_restart_completes_the_grid(tmp_path):
    spec_dict = tiny_spec(base={**TINY, "epochs": 12, "batch_size": 16}, seeds=[0, 1])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    spec = load_spec(spec_path)
    ids = spec.run_ids()
    root = tmp_path / "runs"
    command = [sys.executable, "-c", SCRIPT, str(spec_path), "--root", str(root), "--workers", "2", "--no-progress"]

    def checkpointed():  # interrupted runs that have an epoch checkpoint to resume from
        partial = root / store.PARTIAL
        return [p.name for p in partial.iterdir() if (p / "checkpoint.pt").exists()] if partial.exists() else []

    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        # kill once a run is finished and another is part-way (so the restart must resume it)
        while not (root.exists() and finished_runs(root) and checkpointed()):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every worker, no clean-up
        proc.wait()
        proc.stdout.close()
    time.sleep(0.2)  # let the kernel reap the workers
    done_at_kill = finished_runs(root)
    assert 1 <= len(done_at_kill) < len(ids)
    interrupted = checkpointed()
    assert interrupted and not set(interrupted) & set(done_at_kill)

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(done_at_kill)} already done, {len(ids) - len(done_at_kill)} completed, 0 failed" in again.stdout
    assert_complete(root, spec)
    assert sweep_status(spec, root) == {i: "done" for i in ids}


# ----------------------------------------------------------------------------- local == dask, results


@pytest.mark.slow
@pytest.mark.xdist_group("sweep-processes")
def test_local_and_dask_give_identical_runs_and_one_table(tmp_path):
    spec = load_spec(tiny_spec(seeds=[0]))
    ids = spec.run_ids()
    local = run_sweep(spec, tmp_path / "local", workers=2, backend="local", progress=False)
    dask = run_sweep(spec, tmp_path / "dask", workers=2, backend="dask", progress=False)  # LocalCluster on 127.0.0.1
    for result in (local, dask):
        assert result.ok and sorted(result.completed) == sorted(ids), result
        assert_complete(result.root, spec)
    assert summaries(local.root, ids) == summaries(dask.root, ids)
    for run_id in ids:
        a = pd.read_parquet(local.root / run_id / "metrics.parquet")
        b = pd.read_parquet(dask.root / run_id / "metrics.parquet")
        pd.testing.assert_frame_equal(a, b)

    # a second call submits nothing
    again = run_sweep(spec, local.root, workers=2, progress=False)
    assert again.skipped == ids and not again.completed and again.ok

    # another sweep's run in the same root stays out of this sweep's table
    other = run_sweep({"name": "other", "base": {**TINY, "epochs": 1}}, local.root, backend="serial", progress=False)
    assert other.ok and set(finished_runs(local.root)) == set(ids) | set(other.run_ids)
    frame = local.frame()
    assert list(frame["run_id"]) == ids
    assert set(frame["sweep"]) == {"tiny"} and list(frame["variant"]) == ["none", "ddc", "ddc"]
    assert {"p_base", "method", "seed", "test_loss", "val_loss", "path"} <= set(frame.columns)
    pd.testing.assert_frame_equal(frame, sweep_frame(spec, local.root))
    con = sweep_connect(spec, local.root)
    try:
        per_variant = dict(con.execute("SELECT variant, count(*) FROM runs GROUP BY variant").fetchall())
        assert per_variant == {"none": 1, "ddc": 2}
        rows = con.execute("SELECT count(DISTINCT run_id), count(*) FROM metrics").fetchone()
        assert rows[0] == len(ids) and rows[1] == len(pd.concat(store.load_metrics(local.root / i) for i in ids))
    finally:
        con.close()
    empty = sweep_frame(spec, tmp_path / "nothing-here")
    assert empty.empty and {"sweep", "variant", "run_id"} <= set(empty.columns)


# ----------------------------------------------------------------------------- kill tests: a worker, a ddc train


def _holders(root: Path):
    """run id -> pid of the process holding its lock now."""
    locks = root / ".locks"
    out = {}
    for lock in locks.glob("*.lock") if locks.exists() else []:
        text = lock.read_text().split()
        if len(text) >= 2 and text[0] == "pid":
            out[lock.stem] = int(text[1])
    return out


def _wait_for(condition, what, proc=None, log=None, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {log.read_text() if log else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.xdist_group("sweep-processes")
def test_sigkill_of_a_worker_retries_its_run_and_the_rest_goes_on(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(base={**TINY, "epochs": 12, "batch_size": 16}, seeds=[0, 1])))
    spec = load_spec(spec_path)
    root, log = tmp_path / "runs", tmp_path / "sweep.log"
    command = [sys.executable, "-c", SCRIPT, str(spec_path), "--root", str(root), "--workers", "2", "--no-progress"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        def a_worker_mid_run():
            partial = root / store.PARTIAL
            held = _holders(root)
            return next(((run_id, pid) for run_id, pid in held.items() if (partial / run_id / "checkpoint.pt").exists()), None)

        victim, pid = _wait_for(a_worker_mid_run, "a run with a checkpoint", proc, log)
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert f"{len(spec)} completed, 0 failed" in output
    retried = [line for line in output.splitlines() if line.strip().startswith("retried ")]
    assert len(retried) == 1 and "SIGKILL" in retried[0] and "then completed" in retried[0], output
    assert_complete(root, spec)


@pytest.mark.slow
@pytest.mark.xdist_group("sweep-processes")
def test_sigkill_of_a_ddc_train_sharing_the_root_with_a_sweep(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    # the shared run is long (the ddc train is killed part-way), the others short
    methods = {"none": {"method": "none"}, "ddc": {"method": "ddc", "epochs": 200}}
    spec_path.write_text(yaml.safe_dump(tiny_spec(base={**TINY, "epochs": 2}, methods=methods, seeds=[0])))
    spec = load_spec(spec_path)
    shared = next(r for r in spec.runs() if r.variant == "ddc")  # the sweep also has this run
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(shared.config.to_dict()))
    root = tmp_path / "runs"
    train_log, sweep_log = tmp_path / "train.log", tmp_path / "sweep.log"
    train_command = [sys.executable, "-m", "ddc.cli", "train", "--config", str(config_path), "--root", str(root), "--no-progress"]
    sweep_command_line = [sys.executable, "-c", SCRIPT, str(spec_path), "--root", str(root), "--workers", "2", "--no-progress"]
    with open(train_log, "w") as out:
        trainer = subprocess.Popen(train_command, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    sweep = None
    try:
        checkpoint = root / store.PARTIAL / shared.run_id / "checkpoint.pt"
        _wait_for(checkpoint.exists, "the ddc train's first checkpoint", trainer, train_log)
        with open(sweep_log, "w") as out:
            sweep = subprocess.Popen(sweep_command_line, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        # the sweep's worker for the shared run waits for the lock the ddc train holds
        _wait_for(lambda: "waiting" in sweep_log.read_text(), "the sweep to wait for the shared run", sweep, sweep_log)
        assert trainer.poll() is None
        os.killpg(trainer.pid, signal.SIGKILL)
        trainer.wait()
        assert sweep.wait(timeout=300) == 0, sweep_log.read_text()
    finally:
        for proc in (trainer, sweep):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    output = sweep_log.read_text()
    assert f"run {shared.run_id} is being written by pid {trainer.pid}" in output
    assert f"resuming run {shared.run_id} from its checkpoint at epoch" in output
    assert f"{len(spec)} completed, 0 failed" in output
    assert_complete(root, spec)
    assert store.read_json(root / shared.run_id / "summary.json")["resumed_at_epochs"][0] >= 1


@pytest.mark.slow
@pytest.mark.xdist_group("sweep-processes")
def test_sigkill_of_every_worker_retries_their_runs_on_a_fresh_pool(tmp_path):
    """kill -9 of both workers at once: each of their runs is retried once, the rest goes on, no traceback."""
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(base={**TINY, "epochs": 12, "batch_size": 16}, seeds=[0, 1])))
    spec = load_spec(spec_path)
    root, log = tmp_path / "runs", tmp_path / "sweep.log"
    command = [sys.executable, "-c", SCRIPT, str(spec_path), "--root", str(root), "--workers", "2", "--no-progress"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        def both_workers_mid_run():
            partial = root / store.PARTIAL
            held = {run_id: pid for run_id, pid in _holders(root).items() if (partial / run_id / "checkpoint.pt").exists()}
            return held if len(set(held.values())) == 2 else None

        victims = _wait_for(both_workers_mid_run, "both workers mid-run", proc, log)
        for pid in set(victims.values()):
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert "Traceback" not in output and "Unexpected error" not in output, output
    assert f"{len(spec)} completed, 0 failed" in output, output
    retried = [line.strip() for line in output.splitlines() if line.strip().startswith("retried ")]
    assert sorted(line.split()[1].rstrip(":") for line in retried) == sorted(victims), output
    assert all("then completed" in line for line in retried), output
    assert "leaked semaphore" not in output, output
    assert_complete(root, spec)


def _return_then_die(value):
    """In a pool worker: return ``value``, then SIGKILL this worker while it is idle."""
    import threading

    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return value


@pytest.mark.slow
@pytest.mark.xdist_group("sweep-processes")
def test_a_broken_local_pool_is_replaced_by_a_fresh_one():
    """Every worker dead while idle breaks pebble's pool ('All workers expired'): the next submit gets a fresh pool."""
    from ddc.sweep.executors import LocalExecutor

    executor = LocalExecutor(1)
    try:
        assert executor.submit(_return_then_die, 7).result(timeout=120) == 7
        deadline = time.monotonic() + 60
        while executor._pool.active:  # pebble: False once its pool broke
            assert time.monotonic() < deadline, "the pool never broke"
            time.sleep(0.05)
        assert executor.submit(pow, 2, 5).result(timeout=120) == 32  # was: RuntimeError: Unexpected error within the Pool
        assert executor.submit(pow, 3, 2).result(timeout=120) == 9
    finally:
        executor.shutdown()
