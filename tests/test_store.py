"""Run store: atomic files, whole-or-nothing runs, reading back with pandas and DuckDB."""

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from ddc import store


def make_run(root, run_id, method="ddc", seed=0, acc=0.9):
    run = store.RunDir(root, run_id).start(
        {"dataset": "synthetic", "method": method, "seed": seed, "method_options": {"p_base": 0.3}, "layers": ["fc1"]}
    )
    run.write_metrics(
        [
            {"run_id": run_id, "epoch": e, "step": 10 * e, "split": "val", "metric": "acc", "value": acc - 0.1 / (e + 1)}
            for e in range(3)
        ]
    )
    writer = store.RecordWriter(run.records_dir(), run_id, flush_rows=4)
    for step in range(10):
        writer.add(step, 0, "fc1", "drop_prob_mean", 0.4 + step / 100)
    writer.flush()
    return run.finish({"test_acc": acc, "best_epoch": 2})


def test_runs_appear_only_when_finished(tmp_path):
    run = store.RunDir(tmp_path, "r1").start({"method": "ddc"})
    assert store.run_dirs(tmp_path) == []
    assert (tmp_path / ".partial" / "r1" / "config.json").exists()
    run.finish({"test_acc": 0.5})
    assert store.run_dirs(tmp_path) == [tmp_path / "r1"]
    assert not (tmp_path / ".partial" / "r1").exists()


def test_load_runs_metrics_records(tmp_path):
    make_run(tmp_path, "a", seed=0, acc=0.9)
    make_run(tmp_path, "b", method="dropout", seed=1, acc=0.8)
    runs = store.load_runs(tmp_path)
    assert list(runs.run_id) == ["a", "b"]
    assert {"method", "seed", "p_base", "test_acc", "best_epoch", "layers"} <= set(runs.columns)
    assert runs.loc[runs.run_id == "b", "test_acc"].item() == 0.8
    metrics = store.load_metrics(tmp_path)
    assert list(metrics.columns) == store.METRIC_COLUMNS and len(metrics) == 6
    records = store.load_records(tmp_path / "a")
    assert list(records.columns) == store.RECORD_COLUMNS and len(records) == 10
    assert records.value.tolist() == pytest.approx([0.4 + s / 100 for s in range(10)])


def test_duckdb_sql_over_runs(tmp_path):
    make_run(tmp_path, "a", acc=0.9)
    make_run(tmp_path, "b", method="dropout", acc=0.8)
    result = store.sql(
        "SELECT r.method, max(m.value) AS best_val FROM metrics m JOIN runs r USING (run_id) "
        "WHERE m.split = 'val' GROUP BY r.method ORDER BY r.method",
        tmp_path,
    )
    assert result.method.tolist() == ["ddc", "dropout"]
    assert result.best_val.tolist() == pytest.approx([0.9 - 0.1 / 3, 0.8 - 0.1 / 3])
    counts = store.sql("SELECT run_id, count(*) AS n FROM records GROUP BY run_id ORDER BY run_id", tmp_path)
    assert counts.n.tolist() == [10, 10]


def test_empty_views_when_nothing_recorded(tmp_path):
    store.RunDir(tmp_path, "x").start({"method": "none"}).finish({"test_acc": 0.1})
    assert len(store.sql("SELECT * FROM records", tmp_path)) == 0


def test_interrupted_write_keeps_previous_file(tmp_path):
    path = tmp_path / "summary.json"
    store.write_json(path, {"v": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        store.write_json(path, {"v": Boom()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind


def test_killed_writer_leaves_previous_state(tmp_path):
    """SIGKILL in the middle of writing a parquet part: earlier parts intact, no partial file."""
    make_run(tmp_path, "a")
    records = tmp_path / "a" / "records"
    before = sorted(p.name for p in records.iterdir())
    script = textwrap.dedent(
        f"""
        import os, signal, pandas as pd
        from ddc import store
        frame = pd.DataFrame({{"x": range(10)}})
        def die(tmp):
            with open(tmp, "wb") as fh:
                fh.write(b"PAR1 half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        store._atomic(__import__("pathlib").Path({str(records / "part-00009.parquet")!r}), die)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    after = sorted(p.name for p in records.iterdir() if not p.name.startswith("."))
    assert after == before
    assert len(store.load_records(tmp_path / "a")) == 10


def test_bad_run_id(tmp_path):
    with pytest.raises(ValueError, match="run_id"):
        store.RunDir(tmp_path, "../escape")


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        store.load_runs(tmp_path / "nope")


# ----------------------------------------------------------------------------- one writer, nothing lost


def test_published_run_is_complete_and_nothing_at_its_path_is_replaced(tmp_path):
    run = store.RunDir(tmp_path, "r1")
    run.path.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="lacks config.json"):
        run.finish({"test_acc": 0.5})  # no config: never published
    assert store.run_dirs(tmp_path) == [] and not (tmp_path / "r1").exists()
    store.write_json(run.path / "config.json", {"method": "none"})
    (tmp_path / "r1").mkdir()  # a user's (empty) directory at the final path
    with pytest.raises(store.RunPathOccupied, match=f"{tmp_path / 'r1'} is a directory but not a finished run"):
        run.finish(None)
    assert (tmp_path / "r1").is_dir() and not any((tmp_path / "r1").iterdir()) and run.path.exists()
    (tmp_path / "r1").rmdir()
    assert run.finish(None) == tmp_path / "r1" and store.run_dirs(tmp_path) == [tmp_path / "r1"]


def test_run_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    with store.run_lock(tmp_path, "r1"):
        assert store.lock_holder(tmp_path, "r1").startswith(f"pid {os.getpid()} on ")
        with pytest.raises(store.RunBusy, match=f"run r1 is being written by pid {os.getpid()} on"):
            with store.run_lock(tmp_path, "r1", wait=False):
                pass
        with store.run_lock(tmp_path, "r2", wait=False):  # another run is free
            pass
    with store.run_lock(tmp_path, "r1", wait=False):  # released
        pass
    assert store.lock_holder(tmp_path, "r1") is None
    # a holder killed by SIGKILL leaves no lock behind
    script = textwrap.dedent(
        f"""
        import os, signal
        from ddc import store
        with store.run_lock({str(tmp_path)!r}, "r1"):
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    with store.run_lock(tmp_path, "r1", wait=False):
        pass


def test_readers_take_every_good_run_and_name_the_bad_ones(tmp_path):
    make_run(tmp_path, "a")
    make_run(tmp_path, "b")
    make_run(tmp_path, "c")
    (tmp_path / "b" / "config.json").unlink()  # the two-writer bug of the first round: no config.json
    metrics = tmp_path / "c" / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:40])  # truncated
    make_run(tmp_path, "d")
    (tmp_path / "d" / "summary.json").write_text("{")
    (tmp_path / "notes").mkdir()  # not a run at all: ignored
    good, bad = store.scan(tmp_path)
    assert good == [tmp_path / "a"]
    assert bad[tmp_path / "b"] == "no config.json" and "metrics.parquet is not a whole parquet file" in bad[tmp_path / "c"]
    assert "summary.json cannot be read" in bad[tmp_path / "d"] and len(bad) == 3
    with pytest.warns(UserWarning, match="skipped 3 run directories"):
        assert list(store.load_runs(tmp_path).run_id) == ["a"]
    with pytest.warns(UserWarning):
        assert store.sql("SELECT count(*) AS n FROM metrics", tmp_path).n.item() == 3


def test_empty_root_gives_no_rows(tmp_path):
    for query in ("SELECT * FROM runs", "SELECT method, avg(test_acc) AS acc FROM runs GROUP BY method",
                  "SELECT * FROM metrics", "SELECT * FROM records"):
        assert len(store.sql(query, tmp_path)) == 0
    assert store.load_runs(tmp_path).empty and {"run_id", "method", "test_acc", "seed"} <= set(store.load_runs(tmp_path).columns)
