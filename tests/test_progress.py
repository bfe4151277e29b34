"""Progress of long jobs: events from sweeps (also inside kernels) and the driver's status line."""

import io
import json
import sys

import nbformat
import pytest

from ddc import progress
from ddc.notebooks import TIMINGS, read_timings, run_notebooks, write_index
from ddc.sweep import run_sweep


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_emit_appends_json_lines_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.emit("sweep", name="x", done=1)  # no file named: nothing happens
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(progress.ENV, str(events))
    progress.emit("plan", runs=3)
    progress.emit("sweep", name="x", total=3, done=1, failed=0)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["kind"] for e in lines] == ["plan", "sweep"] and lines[1]["done"] == 1 and "time" in lines[0]


def test_clock():
    assert progress.clock(0) == "0:00" and progress.clock(65.4) == "1:05" and progress.clock(3725) == "1:02:05"
    assert progress.clock(None) == "?" and progress.clock(float("nan")) == "?"


def test_board_counts_runs_and_estimates(tmp_path):
    clock = Clock()
    events = tmp_path / "events.jsonl"
    board = progress.Board(["01_a", "02_b", "03_c"], events=str(events), previous={"03_c": 100.0}, stream=io.StringIO(), now=clock)
    board.start_job(1)
    clock.t += 10
    assert board.line() == "[2/3] 02_b | 0:10 | all 0:10"  # nothing known yet about this job
    # a plan of 10 runs in two sweeps; 2 were already in the store
    with open(events, "a") as fh:
        fh.write(json.dumps({"kind": "plan", "runs": 10, "time": clock.t}) + "\n")
        fh.write(json.dumps({"kind": "sweep", "name": "s1", "total": 6, "done": 2, "failed": 0, "time": clock.t}) + "\n")
        fh.write(json.dumps({"kind": "sweep", "name": "s1", "total": 6, "done": 4, "failed": 0, "time": clock.t + 20}) + "\n")
        fh.write('{"kind": "sweep", "name": "s1", "tot')  # a line still being written is left for later
    clock.t += 20
    board.read_events()
    done, total, per_run = board.runs()
    assert (done, total, per_run) == (4, 10, 10.0)  # 2 runs trained in 20 s
    line = board.line()
    assert "runs 4/10" in line and "0:30, ~1:00 left" in line  # 6 runs left at 10 s each
    assert "all 0:30, ~2:40 left" in line  # plus 100 s for 03_c, timed before
    board.start_job(2)  # a new job starts from zero runs, its estimate from its previous time
    clock.t += 40
    assert "runs" not in board.line() and "0:40, ~1:00 left" in board.line()


def test_board_redraws_on_a_terminal_and_logs_lines_elsewhere():
    clock = Clock()
    terminal = Terminal()
    with progress.Board(["01_a"], stream=terminal, now=clock, interval=3600) as board:
        board.start_job(0)
        board.refresh()
        board.print("permanent")
        board.refresh()
    text = terminal.getvalue()
    assert text.startswith("\r\x1b[K[1/1] 01_a") and "\r\x1b[Kpermanent\n" in text and text.endswith("\r\x1b[K")
    log = io.StringIO()
    board = progress.Board(["01_a"], stream=log, now=clock, log_interval=60)
    board.start_job(0)
    board.refresh(force=True)
    board.refresh()  # too soon: nothing
    clock.t += 61
    board.refresh()
    assert log.getvalue().count("[1/1] 01_a") == 2 and "\r" not in log.getvalue()


def test_sweep_reports_every_run_to_the_events_file(tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(progress.ENV, str(events))
    spec = {"name": "tiny", "base": {"recipe": "synthetic-linreg2d", "profile": "smoke"}, "methods": ["none", "ddc"], "seeds": [0]}
    run_sweep(spec, tmp_path / "runs", backend="serial", progress=False)
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["done"], e["total"]) for e in seen] == [(0, 2), (1, 2), (2, 2)]
    events.unlink()
    run_sweep(spec, tmp_path / "runs", backend="serial", progress=False)  # all reused: done from the start
    assert [json.loads(line)["done"] for line in events.read_text().splitlines()] == [2]


def _tiny_notebook(directory):
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('profile = "smoke"\nrun_dir = "."\nruns_root = "runs"')
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, os, sys\n"
        "import ddc\n"
        "from ddc import progress\n"
        'progress.emit("sweep", name="fake", total=3, done=3, failed=0)\n'
        'with open(os.path.join(run_dir, "seen.json"), "w") as fh:\n'
        '    json.dump({"executable": sys.executable, "ddc": ddc.__file__, "runs_root": runs_root}, fh)'
    )
    nb.cells = [parameters, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    directory.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(directory / "01_tiny.ipynb"))
    return directory


def test_driver_pins_the_kernel_shows_progress_and_keeps_timings(tmp_path, monkeypatch, capsys):
    import ddc

    # another environment's `python3` kernel first on the Jupyter path must not be used
    impostor = tmp_path / "jupyter" / "kernels" / "python3"
    impostor.mkdir(parents=True)
    (impostor / "kernel.json").write_text(json.dumps(
        {"argv": [sys.executable, "-c", "raise SystemExit('the wrong kernel')", "{connection_file}"], "display_name": "other", "language": "python"}
    ))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("DDC_RUNS", raising=False)
    notebooks = _tiny_notebook(tmp_path / "notebooks")
    executed = run_notebooks("smoke", directory=notebooks, output_root=tmp_path / "out")
    base = tmp_path / "out" / "smoke"
    seen = json.loads((base / "01_tiny" / "seen.json").read_text())
    assert seen["executable"] == sys.executable and seen["ddc"] == ddc.__file__
    assert seen["runs_root"] == str(base / "runs")
    err = capsys.readouterr().err
    assert "[smoke 1/1] 01_tiny: running" in err and "[smoke 1/1] 01_tiny: done in" in err
    assert "[1/1] 01_tiny" in err  # the status line
    assert "without encryption" not in err and "IPKernelApp" not in err  # the kernel's own log stays out
    assert not (base / "01_tiny" / "kernel.log").exists() or "Traceback" not in (base / "01_tiny" / "kernel.log").read_text()
    # timings survive an index rewritten later (as `ddc figures` does)
    assert read_timings(base)["01_tiny"]["seconds"] == pytest.approx(executed[0].seconds, abs=0.1)
    write_index(base)
    assert "| 01_tiny |" in (base / "INDEX.md").read_text()
    assert (base / TIMINGS).exists()
    # quiet: nothing on the terminal
    run_notebooks("smoke", directory=notebooks, output_root=tmp_path / "out", quiet=True)
    assert capsys.readouterr().err == ""
