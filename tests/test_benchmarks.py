"""The benchmark entry point runs and reports every variant (timings are not checked here)."""

import json

import pytest
import torch

from benchmarks import run


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_benchmark_smoke(tmp_path, capsys, keep_threads):
    variants = ["plain", "dropconnect", "ddc", "ddc+recorder", "ddc+recorder-exact", "baseline"]
    code = run.main(["--cases", "simplecnn1", "--variants", *variants, "--repeats", "2", "--warmup", "1",
                     "--threads", str(torch.get_num_threads()), "--no-memory", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "simplecnn1.json").read_text())
    assert list(result["variants"]) == variants
    for entry in result["variants"].values():
        assert entry["median_ms"] > 0 and entry["steps"] == 2
    assert "recorder adds <= 5% over ddc" in result["checks"]
    assert "| ddc+recorder-exact |" in capsys.readouterr().out


def test_per_example_case_runs_only_its_variants(tmp_path, keep_threads):
    code = run.main(["--cases", "linear1024-sample", "--variants", "plain", "dropconnect", "baseline", "--repeats", "1",
                     "--warmup", "0", "--threads", str(torch.get_num_threads()), "--no-memory", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "linear1024-sample.json").read_text())
    assert list(result["variants"]) == ["plain", "dropconnect"]  # no copy-in/copy-out baseline for per-example masks
    assert all(name.startswith("(info)") for name in result["checks"])
