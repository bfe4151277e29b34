"""Training-step speed and peak memory of the regularisers: ``python -m benchmarks.run``.

For each case, every variant gets its own copy of the model (same initial
weights, same batch, SGD with momentum) in ONE process, and the variants are
timed INTERLEAVED: after a warm-up, round after round, each round runs one full
training step (``zero_grad``, forward, loss, backward, ``opt.step()``) of every
variant, in an order that rotates from round to round. Reported per variant:
median step time, its interquartile range, the ratio of medians to ``plain``
and the median of the per-round ratios (each variant against the plain step
of the same round, which cancels slow drifts of a noisy machine); the JSON
keeps every step time (``times_ms``). The targets are judged on the paired
ratios: DDC against plain, the Recorder against DDC.

Variants: ``plain`` (no method), ``dropout`` (output of the masked layers),
``dropconnect`` (p=0.5), ``ddc`` (our implementation, default options), ``ddc-reference``
(DDC with ``update="reference"``, the authors' dense update),
``ddc+recorder`` (DDC with ``ddc.recorder.Recorder(model, every=1)`` attached,
``recorder.step()`` after every step: all scalar metrics every step),
``ddc+recorder-exact`` (the same with ``exact_edges=None``: exact counts and
rates on every layer, however large), ``ddc+compile`` (DDC with the
``torch.compile`` path on: ``ddc.apply(..., compile=True)``; compiled
during the warm-up), and ``baseline`` (the authors' copy-in/copy-out DDC,
:mod:`benchmarks.baseline`).

Cases: a 4096 x 4096 Linear, SimpleCNN1, ResNet-20 with every convolution
masked, and a 1024 x 1024 Linear with one mask per example
(``mask="sample"`` on DropConnect and DDC; that case runs only the variants in
its ``variants``).

Peak memory: torch's CPU allocations are invisible to ``tracemalloc``, so each
variant runs again in a fresh subprocess: after building the model, the
optimizer and the batch, the process's resident-set high-water mark is reset
(``echo 5 > /proc/self/clear_refs``) and its current RSS read; after the
measured steps the high-water mark ``VmHWM`` is read. ``peak_mb`` is the
difference: what the training steps (gradients, momentum buffers, activations,
masks, method state) add at their peak over the state before the first step.
``live_peak_mb`` is the same probe with glibc's mmap threshold fixed at
64 KiB (``MALLOC_MMAP_THRESHOLD_``, and no top pad): large blocks go back to the system when
freed, so it shows the memory in use rather than what the allocator keeps;
before its measured state it runs two steps of a throwaway copy, so that the
library code the variant executes (file-backed pages, a few MB) is already
resident. The memory target is judged on ``live_peak_mb``.
(Without ``clear_refs`` the fallback is ``ru_maxrss`` minus the RSS before the
steps.)

Results go to ``benchmarks/results/<case>.json`` (machine, torch version,
threads, per-variant numbers) and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

import ddc
from ddc.models import ResNet20, SimpleCNN1
from ddc.recorder import Recorder

from .baseline import CopyInCopyOut

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("plain", "dropout", "dropconnect", "ddc", "ddc-reference", "ddc+recorder", "ddc+recorder-exact", "ddc+compile", "baseline")


# ----------------------------------------------------------------------------- cases


def _linear() -> nn.Module:
    return nn.Linear(4096, 4096)


CASES: Dict[str, dict] = {
    "linear4096": dict(
        title="nn.Linear(4096, 4096), batch 128, loss mean(out^2); methods on the layer",
        build=_linear,
        input=(4096,),
        classes=None,
        layers=[nn.Linear],
        batch=128,
        repeats=40,
        quick_repeats=5,
    ),
    "simplecnn1": dict(
        title="SimpleCNN1 on 1x28x28, batch 128, cross-entropy; methods on the paper layer linear1",
        build=lambda: SimpleCNN1(in_channels=1, num_classes=10, input_size=28),
        input=(1, 28, 28),
        classes=10,
        layers=["linear1"],
        batch=128,
        repeats=40,
        quick_repeats=8,
    ),
    "linear1024-sample": dict(
        title="nn.Linear(1024, 1024), batch 64, loss mean(out^2); one mask per example (mask='sample')",
        build=lambda: nn.Linear(1024, 1024),
        input=(1024,),
        classes=None,
        layers=[nn.Linear],
        options=dict(mask="sample"),
        variants=("plain", "dropconnect", "ddc", "ddc+recorder"),
        batch=64,
        repeats=10,
        quick_repeats=3,
    ),
    "resnet20": dict(
        title="ResNet-20 on 3x32x32, batch 128, cross-entropy; methods on every Conv2d",
        build=lambda: ResNet20(num_classes=10, in_channels=3),
        input=(3, 32, 32),
        classes=10,
        layers=[nn.Conv2d],
        batch=128,
        repeats=20,
        quick_repeats=3,
    ),
}


class Runner:
    """One variant of one case: model, optimizer, batch and a ``step()``."""

    def __init__(self, case: dict, variant: str, seed: int = 0):
        torch.manual_seed(seed)
        self.model = case["build"]()
        self.model.train()
        gen = torch.Generator().manual_seed(seed + 1)
        self.x = torch.randn((case["batch"], *case["input"]), generator=gen)
        self.y = torch.randint(0, case["classes"], (case["batch"],), generator=gen) if case["classes"] else None
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.recorder = None
        self.baseline = None
        self.variant = variant
        selected = ddc.select_layers(self.model, case["layers"], method="ddc")
        self.masked_weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in selected.values())
        options = case.get("options", {})
        if variant == "dropout":
            ddc.apply(self.model, variant, layers=case["layers"], seed=seed)
        elif variant == "dropconnect":
            ddc.apply(self.model, variant, layers=case["layers"], seed=seed, **options)
        elif variant.startswith("ddc"):
            if variant == "ddc-reference":
                options = dict(options, update="reference")
            compile_masks = variant == "ddc+compile"
            ddc.apply(self.model, "ddc", layers=case["layers"], seed=seed, compile=compile_masks, **options)
            if variant == "ddc+recorder":
                self.recorder = Recorder(self.model, every=1).attach()
            elif variant == "ddc+recorder-exact":
                self.recorder = Recorder(self.model, every=1, exact_edges=None).attach()
            elif variant not in ("ddc", "ddc-reference", "ddc+compile"):
                raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        elif variant == "baseline":
            self.baseline = CopyInCopyOut(selected.values(), generator=torch.Generator().manual_seed(seed))
        elif variant != "plain":
            raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        self.last_loss = float("nan")

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        if self.y is None:
            return out.square().mean()
        return nn.functional.cross_entropy(out, self.y)

    def step(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if self.baseline is not None:
            self.baseline.before_forward()
        loss = self.loss(self.model(self.x))
        loss.backward()
        if self.baseline is not None:
            self.baseline.after_backward()
        self.optimizer.step()
        if self.recorder is not None:
            self.recorder.step()
        return loss.detach()


# ----------------------------------------------------------------------------- timing


def _quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def paired_ratio(times, reference) -> float:
    """The median over rounds of ``times[i] / reference[i]`` (both timed in round ``i``)."""
    return statistics.median(a / b for a, b in zip(times, reference))


def time_case(case: dict, variants, repeats: int, warmup: int) -> Dict[str, dict]:
    runners = {v: Runner(case, v) for v in variants}
    for _ in range(warmup):
        for runner in runners.values():
            runner.step()
    times: Dict[str, List[float]] = {v: [] for v in variants}
    order = list(variants)
    for round_ in range(repeats):
        rotated = order[round_ % len(order) :] + order[: round_ % len(order)]
        for v in rotated:
            start = time.perf_counter()
            loss = runners[v].step()
            times[v].append(time.perf_counter() - start)
            runners[v].last_loss = loss
    out = {}
    for v in variants:
        t = times[v]
        entry = {
            "median_ms": 1e3 * statistics.median(t),
            "p25_ms": 1e3 * _quantile(t, 0.25),
            "p75_ms": 1e3 * _quantile(t, 0.75),
            "min_ms": 1e3 * min(t),
            "steps": len(t),
            "final_loss": float(runners[v].last_loss),
            "masked_weight_bytes": runners[v].masked_weight_bytes,
            "times_ms": [round(1e3 * x, 3) for x in t],  # round by round, for paired comparisons
        }
        if "plain" in times:
            entry["ratio_to_plain"] = statistics.median(t) / statistics.median(times["plain"])
            entry["paired_ratio_to_plain"] = paired_ratio(t, times["plain"])
        out[v] = entry
    return out


# ----------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_probe(case_name: str, variant: str, steps: int, threads: int, warm: bool = False) -> dict:
    """Runs in a fresh process: peak RSS the training steps add over the state before them.

    ``warm``: first run two steps of a throwaway copy, so the pages of library code
    the variant touches (a few MB of libtorch's kernels, file-backed and shared)
    are resident before the measured state is taken.
    """
    torch.set_num_threads(threads)
    if warm:
        throwaway = Runner(CASES[case_name], variant)
        for _ in range(2):
            throwaway.step()
        del throwaway
        gc.collect()
    runner = Runner(CASES[case_name], variant)
    gc.collect()
    method = "clear_refs+VmHWM"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
    except OSError:
        method = "ru_maxrss"
        before = _status_kb("VmRSS") if Path("/proc/self/status").exists() else 0
    for _ in range(steps):
        runner.step()
    if method == "ru_maxrss":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        peak = _status_kb("VmHWM")
    return {"peak_mb": (peak - before) / 1024, "memory_method": method, "memory_steps": steps}


#: glibc keeps freed heap memory for reuse, and raises its mmap threshold as
#: large blocks are freed, so the resident set can stay well above what is in
#: use. A fixed low threshold (every block of 64 KiB or more mapped on its own
#: and returned when freed) shows the memory actually in use: ``live_peak_mb``.
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TOP_PAD_": "0"}  # (no 128 KiB steps of heap growth)


def measure_memory(case_name: str, variant: str, steps: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.run", "--memory-probe", case_name, variant, "--memory-steps", str(steps), "--threads", str(threads)]
    root = Path(__file__).resolve().parent.parent
    result = {}
    for key, extra, flags in (("peak_mb", {}, []), ("live_peak_mb", LIVE_ENV, ["--memory-warm"])):
        done = subprocess.run(cmd + flags, cwd=root, capture_output=True, text=True, check=False, env={**os.environ, **extra})
        if done.returncode != 0:
            result[key] = None
            result["memory_error"] = done.stderr.strip().splitlines()[-1:]
            continue
        probe = json.loads(done.stdout.strip().splitlines()[-1])
        result[key] = probe.pop("peak_mb")
        result.update(probe)
    return result


# ----------------------------------------------------------------------------- report


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def markdown(case_name: str, result: dict) -> str:
    rows = [
        f"### {case_name}: {result['title']}",
        "",
        "| variant | median ms | IQR ms | x plain (medians) | x plain (paired) | peak MB over start | in use at the peak, MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, e in result["variants"].items():
        peak, live = e.get("peak_mb"), e.get("live_peak_mb")
        rows.append(
            f"| {v} | {e['median_ms']:.1f} | {e['p25_ms']:.1f}-{e['p75_ms']:.1f} | "
            f"{e.get('ratio_to_plain', float('nan')):.2f} | {e.get('paired_ratio_to_plain', float('nan')):.2f} | "
            f"{'-' if peak is None else f'{peak:.0f}'} | {'-' if live is None else f'{live:.0f}'} |"
        )
    weight_mb = next(iter(result["variants"].values()))["masked_weight_bytes"] / 2**20
    rows.append("")
    rows.append(f"masked layers' weights: {weight_mb:.2f} MB; {result['machine']['cpu']}, "
                f"torch {result['machine']['torch']}, {result['machine']['threads']} threads")
    checks = result.get("checks")
    if checks:
        rows.append("")
        rows.extend(
            f"- {name}: {detail}" if name.startswith("(info)") else f"- {name}: {'met' if ok else 'MISSED'} ({detail})"
            for name, (ok, detail) in checks.items()
        )
    return "\n".join(rows)


TARGETS = {
    "linear4096": {"ddc_over_plain": 2.5, "baseline_over_ddc": 2.0},
    "simplecnn1": {"ddc_over_plain": 1.10},
    "resnet20": {"ddc_over_plain": 1.25},
    # The targets are for shared masks; per-example masks are reported, not judged.
    "linear1024-sample": {"info_only": True},
}


def _over(a: dict, b: dict):
    """How much slower ``a`` is than ``b``: the median of the per-round ratios (each round
    times both, so slow drifts of the machine cancel) and the ratio of the medians, minus one."""
    medians = a["median_ms"] / b["median_ms"] - 1
    if a.get("times_ms") and b.get("times_ms"):
        return paired_ratio(a["times_ms"], b["times_ms"]) - 1, medians
    return medians, medians


def checks(case_name: str, variants: dict) -> dict:
    out = {}
    target = TARGETS.get(case_name, {})
    d, p = variants.get("ddc"), variants.get("plain")
    if d and p and "ddc_over_plain" in target:
        r = d["paired_ratio_to_plain"]
        out["ddc <= %.2fx plain" % target["ddc_over_plain"]] = (r <= target["ddc_over_plain"], f"paired {r:.2f}x, medians {d['ratio_to_plain']:.2f}x")
    b = variants.get("baseline")
    if d and b and "baseline_over_ddc" in target:
        r = b["median_ms"] / d["median_ms"]
        out["ddc >= %.1fx faster than baseline" % target["baseline_over_ddc"]] = (r >= target["baseline_over_ddc"], f"{r:.2f}x")
    rec = variants.get("ddc+recorder")
    if d and rec:
        paired, medians = _over(rec, d)
        out["recorder adds <= 5% over ddc"] = (paired <= 0.05, f"paired {100 * paired:+.1f}%, medians {100 * medians:+.1f}%")
    exact = variants.get("ddc+recorder-exact")
    if d and exact:  # reported, no target: exact counts on every layer
        paired, medians = _over(exact, d)
        out["(info) exact-count recorder over ddc"] = (True, f"paired {100 * paired:+.1f}%, medians {100 * medians:+.1f}%")
    dense = variants.get("ddc-reference")
    if d and dense:  # reported, no target: the authors' dense update (its signal is copied from dL/dW_eff)
        paired, medians = _over(dense, d)
        out["(info) ddc with update='reference' over ddc"] = (True, f"paired {100 * paired:+.1f}%, medians {100 * medians:+.1f}%")
    fused = variants.get("ddc+compile")
    if d and fused:
        r = fused["median_ms"] / d["median_ms"]
        out["(info) ddc with the compile path over ddc"] = (True, f"{r:.2f}x")
    # Judged on the memory in use at the peak: the resident-set peak also counts what glibc
    # keeps of freed blocks, which moves by tens of MB from run to run (both are reported).
    key = "live_peak_mb" if d and p and d.get("live_peak_mb") is not None and p.get("live_peak_mb") is not None else "peak_mb"
    if d and p and d.get(key) is not None and p.get(key) is not None:
        budget = p[key] + 3 * d["masked_weight_bytes"] / 2**20
        what = "in use at the peak" if key == "live_peak_mb" else "resident-set peak"
        detail = f"{what}: {d[key]:.0f} MB vs budget {budget:.0f} MB"
        if key == "live_peak_mb" and d.get("peak_mb") is not None and p.get("peak_mb") is not None:
            detail += f"; resident-set peak {d['peak_mb']:.0f} MB vs plain {p['peak_mb']:.0f} MB"
        out["ddc peak <= plain + 3 x masked weights"] = (d[key] <= budget, detail)
    if target.get("info_only"):
        out = {name if name.startswith("(info)") else f"(info) {name}": (True, f"{'within' if ok else 'outside'}: {detail}") for name, (ok, detail) in out.items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default: per case)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="few rounds, short memory probes: a smoke run")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-steps", type=int, default=None, help="steps per memory probe (default 4, quick 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for <case>.json (default benchmarks/results)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--memory-probe", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_probe:
        steps = args.memory_steps or 4
        print(json.dumps(memory_probe(*args.memory_probe, steps=steps, threads=args.threads, warm=args.memory_warm)))
        return 0

    torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    memory_steps = args.memory_steps or (3 if args.quick else 4)
    started = time.perf_counter()
    for case_name in args.cases:
        case = CASES[case_name]
        repeats = args.repeats or (case["quick_repeats"] if args.quick else case["repeats"])
        t0 = time.perf_counter()
        names = [v for v in args.variants if v in case.get("variants", VARIANTS)]
        variants = time_case(case, names, repeats, warmup)
        if not args.no_memory:
            for v in names:
                variants[v].update(measure_memory(case_name, v, memory_steps, args.threads))
        result = {
            "case": case_name,
            "title": case["title"],
            "batch": case["batch"],
            "repeats": repeats,
            "warmup": warmup,
            "quick": args.quick,
            "machine": machine_info(args.threads),
            "variants": variants,
            "seconds": time.perf_counter() - t0,
        }
        result["checks"] = checks(case_name, variants)
        print(markdown(case_name, result), flush=True)
        print(flush=True)
        if not args.no_write:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{case_name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
