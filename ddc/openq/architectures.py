"""Open question 1 (notebook ``06_oq_architectures``): DDC on modern architectures.

ResNet-20 and ResNet-18 (CIFAR-style, with BatchNorm and skip connections)
carry DDC at one of three placements:

- ``fc``: the classifier head (the models' declared default);
- ``last_stage``: every convolution of the last stage (shortcut projections included);
- ``all_conv``: every convolution, the stem included.

They are compared with no drop, Dropout and DropConnect at a **matched mean
drop rate**: a first sweep trains DDC with the recorder on; for every
(experiment, placement) the expected drop rate DDC realised is the
edge-weighted mean, over the placement's layers, of the recorded
``drop_prob_mean`` averaged over the recorded steps (the pass-through first
step, which drops nothing, left out) and over seeds (:func:`matched_rates`).
Rounded to three decimals, it is the ``p`` of DropConnect (fraction of edges
dropped) and of Dropout (fraction of the layer's outputs dropped) at that
placement, trained by a second sweep. :func:`gaussian_drop_rate` gives the
rate DDC would have if the z-scores were standard normal, for comparison.

BatchNorm and skips are examined on the final weights (:func:`batchnorm_shift`):
for every BN layer the per-channel variance of its input on a fixed batch of
training images in train mode (masks on, batch statistics) and in eval mode
(masks off), against its running variance; for every residual block the
standard deviation of the residual branch against the shortcut, in both modes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import paper

NOTEBOOK = "06_oq_architectures"
PLACEMENTS = ("fc", "last_stage", "all_conv")
METHOD_ORDER = ("none", "dropout", "dropconnect", "ddc")
#: (method, baseline) contrasts tested per placement, paired by seed
CONTRASTS = (("ddc", "none"), ("ddc", "dropconnect"), ("ddc", "dropout"), ("dropconnect", "none"), ("dropout", "none"))


# ----------------------------------------------------------------------------- layers and labels


def input_shape(dataset: str) -> Tuple[int, int, int]:
    return (3, 32, 32) if dataset.startswith("cifar") else (1, 28, 28)


def experiment_model(fields: dict) -> Tuple[str, str]:
    """(dataset, model) of an experiment's fields (``recipe`` plus overrides)."""
    from ..recipes import RECIPES

    recipe = RECIPES[fields["recipe"]]
    return fields.get("dataset", recipe["dataset"]), fields.get("model", recipe["model"])


def _build(model: str, dataset: str) -> nn.Module:
    from .. import models

    return models.build(model, input_shape=input_shape(dataset), num_classes=100 if dataset == "cifar100" else 10)


def placement_layers(model: str, placement: str, dataset: str = "fashion_mnist") -> List[str]:
    """Qualified names of the layers of ``model`` that ``placement`` regularises."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r}; choose one of {', '.join(PLACEMENTS)}")
    net = _build(model, dataset)
    if placement == "fc":
        return ["fc"]
    convs = [name for name, module in net.named_modules() if isinstance(module, nn.Conv2d)]
    if placement == "all_conv":
        return convs
    prefix = f"layer{net.num_stages}."
    return [name for name in convs if name.startswith(prefix)]


def layer_sizes(model: str, layers: Sequence[str], dataset: str = "fashion_mnist") -> Dict[str, int]:
    """Number of weight edges of each named layer."""
    modules = dict(_build(model, dataset).named_modules())
    return {name: modules[name].weight.numel() for name in layers}


def layer_order(model: str, dataset: str = "fashion_mnist") -> Dict[str, int]:
    """Depth index of every Conv/Linear/BatchNorm layer (model order)."""
    net = _build(model, dataset)
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    return {name: i for i, name in enumerate(names)}


def label(method: str, placement: Optional[str]) -> str:
    return "none" if method == "none" else f"{method}@{placement}"


def parse_label(variant: str) -> Tuple[str, Optional[str]]:
    method, _, placement = variant.partition("@")
    return method, (placement or None)


def annotate(runs):
    """Add ``experiment``, ``method_label`` and ``placement`` columns from the sweep and variant names."""
    runs = runs.copy()
    runs["experiment"] = runs["sweep"].str.removeprefix("06-").str.rsplit("-", n=1).str[0]
    parsed = runs["variant"].map(parse_label)
    runs["method_label"] = parsed.str[0]
    runs["placement"] = parsed.str[1]
    return runs


# ----------------------------------------------------------------------------- sweeps


PLAN_KEYS = ("recipe", "placements", "seeds")


def _split_fields(fields: dict) -> Tuple[str, dict]:
    overrides = {k: v for k, v in fields.items() if k not in PLAN_KEYS}
    return fields["recipe"], overrides


def plan(experiments: Dict[str, dict], placements: Sequence[str], seeds: Sequence[int], available: Iterable[str], log=print):
    """``[(experiment, fields, placements, seeds)]`` for the experiments whose dataset is available.

    ``fields``: a ``recipe`` plus TrainConfig overrides; optional ``placements`` /
    ``seeds`` keys replace the notebook-wide ones for that experiment (seeds are
    cut to the notebook's seeds when those are fewer). Experiments whose dataset
    is missing are skipped with a printed note.
    """
    available = set(available)
    chosen = []
    for experiment, fields in experiments.items():
        dataset, _ = experiment_model(fields)
        if dataset not in available:
            log(f"{experiment}: dataset {dataset!r} is not available here (see `ddc data list`), skipped")
            continue
        own_seeds = [s for s in fields.get("seeds", seeds) if s in set(seeds)] or list(seeds)
        chosen.append((experiment, fields, list(fields.get("placements", placements)), own_seeds))
    return chosen


def ddc_spec(experiment: str, fields: dict, profile: str, placements: Sequence[str], seeds, *, record_every: int,
             device: str = "cpu", ddc_options: Optional[dict] = None) -> dict:
    """Sweep 1: DDC at every placement, recorded every ``record_every`` steps."""
    recipe, overrides = _split_fields(fields)
    dataset, model = experiment_model(fields)
    methods = {
        label("ddc", pl): {"method": "ddc", "method_options": dict(ddc_options or {}), "layers": placement_layers(model, pl, dataset)}
        for pl in placements
    }
    return paper.sweep_spec(f"06-{experiment}-ddc", recipe, profile, methods, seeds, device=device,
                            record_every=record_every, **overrides)


def baseline_spec(experiment: str, fields: dict, profile: str, placements: Sequence[str], seeds, rates, *,
                  record_every: int, device: str = "cpu") -> dict:
    """Sweep 2: no drop, and Dropout and DropConnect at DDC's matched rate per placement.

    ``rates``: the :func:`matched_rates` table (``experiment, placement, p_matched``).
    """
    recipe, overrides = _split_fields(fields)
    dataset, model = experiment_model(fields)
    matched = rates.set_index(["experiment", "placement"])["p_matched"]
    methods = {"none": {"method": "none"}}
    for pl in placements:
        p = float(matched.loc[(experiment, pl)])
        layers = placement_layers(model, pl, dataset)
        for method in ("dropout", "dropconnect"):
            methods[label(method, pl)] = {"method": method, "method_options": {"p": p}, "layers": layers}
    return paper.sweep_spec(f"06-{experiment}-baselines", recipe, profile, methods, seeds, device=device,
                            record_every=record_every, **overrides)


# ----------------------------------------------------------------------------- matched drop rate


def gaussian_drop_rate(p_base: float = 0.3, p_signal: float = 0.5, tau: float = 0.5, points: int = 200001) -> float:
    """DDC's mean drop probability if the layer z-scores were standard normal:
    ``p_base + p_signal * E[c 1(c > tau)]`` with ``c = sigmoid(-z)``, ``z ~ N(0, 1)`` (numerical integral)."""
    import numpy as np

    z = np.linspace(-12, 12, points)
    density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    c = 1.0 / (1.0 + np.exp(z))
    q = np.where(c > tau, c, 0.0)
    return float(p_base + p_signal * np.trapezoid(q * density, z))


def _records(runs, run_dir, metrics: Iterable[str]):
    from ..store import load_records

    records = load_records(paper.run_paths(run_dir, runs))
    return records[records.metric.isin(list(metrics))]


def run_drop_rates(runs, run_dir):
    """Per run: edge-weighted mean over its layers of the recorded expected (``drop_prob_mean``)
    and realised (``realized_drop_rate``) drop rate, averaged over recorded steps after step 0.

    Columns: ``run_id, experiment, placement, seed, expected_rate, realized_rate, recorded_steps``.
    """
    import pandas as pd

    records = _records(runs, run_dir, ["drop_prob_mean", "realized_drop_rate"])
    records = records[(records.step > 0) & records.value.notna()]
    per_layer = records.groupby(["run_id", "layer", "metric"]).value.agg(["mean", "count"]).reset_index()
    rows = []
    for run in runs.itertuples():
        layers = json.loads(run.layers)
        dataset, model = run.dataset, run.model
        sizes = layer_sizes(model, layers, dataset)
        mine = per_layer[per_layer.run_id == run.run_id]
        row = {"run_id": run.run_id, "experiment": run.experiment, "placement": run.placement, "seed": run.seed}
        for metric, name in (("drop_prob_mean", "expected_rate"), ("realized_drop_rate", "realized_rate")):
            values = mine[mine.metric == metric].set_index("layer")["mean"]
            weights = pd.Series(sizes).reindex(values.index)
            row[name] = float((values * weights).sum() / weights.sum()) if len(values) else float("nan")
        row["recorded_steps"] = int(mine["count"].max()) if len(mine) else 0
        rows.append(row)
    return pd.DataFrame(rows)


def matched_rates(per_run, *, rng=0, n_resamples: int = 9999, digits: int = 3, ddc_options: Optional[dict] = None):
    """Per (experiment, placement): DDC's mean expected drop rate over seeds with a bootstrap CI,
    the realised rate, the Gaussian approximation and ``p_matched`` (the mean, rounded)."""
    import numpy as np
    from analysis import stats

    summary = stats.summarize(per_run, value="expected_rate", by=["experiment", "placement"],
                              rng=np.random.default_rng(rng), n_resamples=n_resamples)
    realized = per_run.groupby(["experiment", "placement"], as_index=False).realized_rate.mean()
    out = summary.merge(realized, on=["experiment", "placement"])
    out = out.rename(columns={"mean": "expected_rate"})
    options = {"p_base": 0.3, "p_signal": 0.5, "tau": 0.5, **{k: v for k, v in (ddc_options or {}).items() if k in ("p_base", "p_signal", "tau")}}
    out["gaussian_rate"] = gaussian_drop_rate(**options)
    out["p_matched"] = out["expected_rate"].round(digits)
    return out


# ----------------------------------------------------------------------------- BatchNorm and skip connections


def _load_config(run_path: Path):
    from ..store import read_json
    from ..train import TrainConfig

    values = read_json(Path(run_path) / "config.json")
    values = {k: v for k, v in values.items() if k in TrainConfig.field_names()}
    return TrainConfig.from_dict(values)


def _bn_parent_conv(bn_name: str) -> str:
    """The convolution feeding a BN layer: ``x.bnK -> x.convK``, ``x.shortcut.1 -> x.shortcut.0``."""
    parent, _, leaf = bn_name.rpartition(".")
    if leaf.startswith("bn"):
        conv = "conv" + leaf[2:]
    else:
        conv = str(int(leaf) - 1)
    return f"{parent}.{conv}" if parent else conv


def _channel_var(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().transpose(0, 1).flatten(1).var(dim=1, correction=1)


@torch.no_grad()
def _forward_with_hooks(model, x, bn_layers, blocks):
    captured: Dict[str, dict] = {}
    handles = []
    for name, bn in bn_layers.items():
        handles.append(bn.register_forward_pre_hook(lambda m, args, name=name: captured.setdefault(name, {}).update(var=_channel_var(args[0]))))
    for name, block in blocks.items():
        handles.append(block.bn2.register_forward_hook(lambda m, args, out, name=name: captured.setdefault(name, {}).update(branch=out.detach().double().std().item())))
        handles.append(block.shortcut.register_forward_hook(lambda m, args, out, name=name: captured.setdefault(name, {}).update(shortcut=out.detach().double().std().item())))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def batchnorm_shift(runs, run_dir, *, n_images: int = 128):
    """Train-vs-eval statistics of every BN layer and residual block of every run (final weights).

    For each run: its model is rebuilt with its method, the final weights are
    loaded, and the first ``n_images`` training images are passed
    (1) in eval mode (no masks, BN uses running statistics) and (2) in train
    mode (masks drawn, BN uses batch statistics; BN momentum set to 0 so the
    running statistics stay as trained). Before (2) one forward/backward pass on
    the same batch gives DDC its gradient signal (no optimiser step).

    Returns ``(bn, skip)``. ``bn``: one row per (run, BN layer) with
    ``running_var`` (channel mean), ``train_var``, ``eval_var`` (channel means of
    the unbiased per-channel variance of the BN input), ``eval_over_running``,
    ``train_over_running`` and ``eval_over_train`` (channel means of the
    per-channel ratios; ``eval_over_train < 1`` is the variance shift), and
    ``after_masked`` (the BN input comes from a masked layer). ``skip``: one row
    per (run, block) with the std of the residual branch (after ``bn2``) and of
    the shortcut, in both modes, and their ratios.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep workers: on a shared machine, more threads are slower
    try:
        return _batchnorm_shift(runs, run_dir, n_images)
    finally:
        torch.set_num_threads(threads)


def _batchnorm_shift(runs, run_dir, n_images):
    import pandas as pd

    from ..data import load
    from ..models import BasicBlock
    from ..train import build

    split_cache: Dict[tuple, object] = {}
    bn_rows, skip_rows = [], []
    for run, path in zip(runs.itertuples(), paper.run_paths(run_dir, runs)):
        config = _load_config(path)
        key = (config.dataset, config.seed, config.val_fraction, config.train_subset, config.val_subset, config.test_subset)
        if key not in split_cache:
            split_cache[key] = load(config.dataset, root=config.data_root, val_fraction=config.val_fraction, seed=config.seed,
                                    train_subset=config.train_subset, val_subset=config.val_subset, test_subset=config.test_subset)
        splits = split_cache[key]
        _, model, handle = build(config, splits)
        model.load_state_dict(torch.load(Path(path) / "model.pt", weights_only=True))
        x, y = splits.train.tensors
        x, y = x[:n_images].to(config.device), y[:n_images].to(config.device)
        bn_layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        blocks = {n: m for n, m in model.named_modules() if isinstance(m, BasicBlock)}
        masked = set(handle.methods)
        running = {n: m.running_var.detach().double().clone() for n, m in bn_layers.items()}

        model.eval()
        at_eval = _forward_with_hooks(model, x, bn_layers, blocks)
        for bn in bn_layers.values():
            bn.momentum = 0.0
        model.train()
        with torch.enable_grad():
            nn.functional.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)
        at_train = _forward_with_hooks(model, x, bn_layers, blocks)
        handle.remove()

        base = {"run_id": run.run_id, "experiment": run.experiment, "method": run.method_label,
                "placement": run.placement, "variant": run.variant, "seed": run.seed}
        for depth, name in enumerate(bn_layers):
            r, tr, ev = running[name], at_train[name]["var"], at_eval[name]["var"]
            bn_rows.append({**base, "bn_layer": name, "bn_index": depth, "after_masked": _bn_parent_conv(name) in masked,
                            "running_var": r.mean().item(), "train_var": tr.mean().item(), "eval_var": ev.mean().item(),
                            "eval_over_running": (ev / r).mean().item(), "train_over_running": (tr / r).mean().item(),
                            "eval_over_train": (ev / tr).mean().item()})
        for index, name in enumerate(blocks):
            t, e = at_train[name], at_eval[name]
            skip_rows.append({**base, "block": name, "block_index": index, "stage": int(name.split(".")[0].removeprefix("layer")),
                              "branch_std_train": t["branch"], "shortcut_std_train": t["shortcut"],
                              "branch_std_eval": e["branch"], "shortcut_std_eval": e["shortcut"],
                              "ratio_train": t["branch"] / t["shortcut"], "ratio_eval": e["branch"] / e["shortcut"]})
    return pd.DataFrame(bn_rows), pd.DataFrame(skip_rows)


def bn_shift_by_placement(bn, runs):
    """Per (experiment, placement, method, seed): the mean ``eval_over_train`` over the BN layers
    fed by the placement's masked convolutions (the same layers for every method, no-drop included).

    Placements that feed no BN layer (``fc``) are left out.
    """
    import pandas as pd

    frames = []
    for (experiment, placement), group in runs[runs.placement.notna()].groupby(["experiment", "placement"]):
        layers = set(json.loads(group.layers.iloc[0]))
        mine = bn[(bn.experiment == experiment) & (bn.placement.isna() | (bn.placement == placement))]
        mine = mine[mine.bn_layer.map(_bn_parent_conv).isin(layers)]
        if mine.empty:
            continue
        frame = mine.groupby(["method", "seed"], as_index=False)[["eval_over_train", "eval_over_running"]].mean()
        frames.append(frame.assign(experiment=experiment, placement=placement, n_bn_layers=mine.bn_layer.nunique()))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["method", "seed", "eval_over_train", "eval_over_running", "experiment", "placement", "n_bn_layers"])


def bn_summary(bn_by_placement, *, rng=0, n_resamples: int = 9999):
    """Mean eval/train variance ratio per (experiment, placement, method) with a bootstrap CI over seeds."""
    import numpy as np
    from analysis import stats

    if bn_by_placement.empty:
        return bn_by_placement.assign(n=[], mean=[], ci_low=[], ci_high=[])
    summary = stats.summarize(bn_by_placement, value="eval_over_train", by=["experiment", "placement", "method"],
                              rng=np.random.default_rng(rng), n_resamples=n_resamples)
    layers = bn_by_placement.groupby(["experiment", "placement"], as_index=False).n_bn_layers.first()
    return summary.merge(layers, on=["experiment", "placement"])


# ----------------------------------------------------------------------------- drop dynamics


def drop_dynamics(runs, run_dir):
    """Recorded expected/realised drop rate per (run, layer, step), with run labels and layer depth."""
    records = _records(runs, run_dir, ["drop_prob_mean", "realized_drop_rate"])
    labels = runs[["run_id", "experiment", "method_label", "placement", "variant", "seed", "model"]]
    out = records.merge(labels, on="run_id").rename(columns={"method_label": "method"})
    depth = {model: layer_order(model) for model in out.model.unique()}
    out["layer_index"] = [depth[m].get(layer, -1) for m, layer in zip(out.model, out.layer)]
    out["role"] = out.layer.map(layer_role)
    return out.drop(columns=["epoch"], errors="ignore").reset_index(drop=True)


def layer_role(name: str) -> str:
    """``stem``, ``conv1`` / ``conv2`` (first/second conv of a block; conv2 feeds the skip addition), ``shortcut``, ``fc``."""
    if name == "fc":
        return "fc"
    if name == "conv1":
        return "stem"
    if ".shortcut" in name:
        return "shortcut"
    return name.rsplit(".", 1)[-1]


def layer_drop_summary(dynamics):
    """Per (run, layer): the mean over recorded steps after step 0 of DDC's expected drop rate."""
    d = dynamics[(dynamics.metric == "drop_prob_mean") & (dynamics.step > 0)]
    keys = ["experiment", "method", "placement", "variant", "seed", "layer", "layer_index", "role"]
    return d.groupby(keys, as_index=False, dropna=False).value.mean().rename(columns={"value": "drop_rate"})


def role_contrast(layer_summary, *, rng=0, n_resamples: int = 9999):
    """DDC on all convolutions: per experiment, mean drop rate of block ``conv2`` minus ``conv1``
    (the conv feeding the skip addition vs the first one), per seed, with a bootstrap CI over seeds."""
    import numpy as np
    import pandas as pd
    from analysis import stats

    d = layer_summary[(layer_summary.method == "ddc") & (layer_summary.placement == "all_conv") & layer_summary.role.isin(["conv1", "conv2"])]
    if d.empty:
        return pd.DataFrame(columns=["experiment", "n", "mean_diff", "ci_low", "ci_high", "p_wilcoxon"])
    rows = []
    for experiment, group in d.groupby("experiment"):
        per_seed = group.groupby(["seed", "role"], as_index=False).drop_rate.mean()
        table = stats.paired_comparison(per_seed, value="drop_rate", method_col="role", baseline="conv1",
                                        rng=np.random.default_rng(rng), n_resamples=n_resamples)
        rows.append(table.assign(experiment=experiment))
    return pd.concat(rows, ignore_index=True)


# ----------------------------------------------------------------------------- statistics


def by_placement(runs):
    """Runs with the no-drop run repeated under every placement, so each placement is a complete block design."""
    import pandas as pd

    placed = runs[runs.placement.notna()]
    frames = [placed]
    for (experiment, placement), _ in placed.groupby(["experiment", "placement"]):
        frames.append(runs[(runs.experiment == experiment) & (runs.method_label == "none")].assign(placement=placement))
    return pd.concat(frames, ignore_index=True)


def contrasts(frame, *, value: str, rng=0, n_resamples: int = 9999, pairs=CONTRASTS, method_col: str = "method_label"):
    """Paired-by-seed differences ``method - baseline`` per (experiment, placement), Holm-adjusted
    across every contrast of an experiment.

    The per-seed differences of all contrasts of an experiment go through one
    :func:`analysis.stats.paired_comparison` against a zero baseline (the same
    numbers as a paired comparison of the two methods, and one Holm family).
    Columns: ``experiment, placement, method, baseline, n, mean_diff, ci_low,
    ci_high, p_wilcoxon, p_ttest, p_wilcoxon_adj, p_ttest_adj``.
    """
    import numpy as np
    import pandas as pd
    from analysis import stats

    columns = ["experiment", "placement", "method", "baseline", "n", "mean_diff", "ci_low", "ci_high",
               "p_wilcoxon", "p_ttest", "p_wilcoxon_adj", "p_ttest_adj"]
    gen = np.random.default_rng(rng)
    out = []
    for experiment, group in frame.groupby("experiment", sort=True):
        diffs = []
        for placement, cell in group.groupby("placement", sort=True):
            wide = cell.pivot_table(index="seed", columns=method_col, values=value, aggfunc="mean")
            for method, baseline in pairs:
                if method in wide and baseline in wide:
                    d = (wide[method] - wide[baseline]).dropna()
                    diffs.append(pd.DataFrame({"contrast": f"{placement}|{method}|{baseline}", "seed": d.index, "d": d.to_numpy()}))
        if not diffs:
            continue
        diffs = pd.concat(diffs, ignore_index=True)
        if diffs.seed.nunique() < 2:
            continue
        zero = diffs.drop_duplicates("seed").assign(contrast="zero", d=0.0)
        table = stats.paired_comparison(pd.concat([diffs, zero], ignore_index=True), value="d", method_col="contrast",
                                        baseline="zero", rng=gen, n_resamples=n_resamples, on_unpaired="drop")
        parts = table.contrast.str.split("|", expand=True)
        out.append(table.assign(experiment=experiment, placement=parts[0], method=parts[1], baseline=parts[2])[columns])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=columns)


# ----------------------------------------------------------------------------- conclusions


def conclusions(summary, tests, rates, bn_summary, bn_tests, roles) -> List[str]:
    """One paragraph per experiment, every number taken from the tables passed in."""
    texts = []
    for experiment, s in summary.groupby("experiment", sort=True):
        s = s.set_index("variant")
        parts = [f"{experiment}: no-drop test accuracy {paper.format_ci(*s.loc['none', ['mean', 'ci_low', 'ci_high']])} "
                 f"({int(s.loc['none', 'n'])} seeds)."]
        for placement in [p for p in PLACEMENTS if label("ddc", p) in s.index]:
            rate = rates[(rates.experiment == experiment) & (rates.placement == placement)].iloc[0]
            ddc_row = s.loc[label("ddc", placement)]
            text = (f"DDC on {placement}: mean expected drop rate {paper.format_ci(rate.expected_rate, rate.ci_low, rate.ci_high, 3)} "
                    f"(Gaussian approximation {rate.gaussian_rate:.3f}), so Dropout/DropConnect ran at p = {rate.p_matched:.3f}; "
                    f"test accuracy {paper.format_ci(ddc_row['mean'], ddc_row.ci_low, ddc_row.ci_high)}")
            mine = tests[(tests.experiment == experiment) & (tests.placement == placement) & (tests.method == "ddc")] if len(tests) else tests
            diffs = [f"vs {r.baseline} {r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] (Holm p: paired t {r.p_ttest_adj:.3g}, Wilcoxon {r.p_wilcoxon_adj:.3g})"
                     for r in mine.itertuples()]
            text += ("; DDC " + ", ".join(diffs)) if diffs else ""
            texts_bn = bn_summary[(bn_summary.experiment == experiment) & (bn_summary.placement == placement)] if len(bn_summary) else bn_summary
            if len(texts_bn):
                b = texts_bn.set_index("method")
                shown = [f"{m} {paper.format_ci(b.loc[m, 'mean'], b.loc[m, 'ci_low'], b.loc[m, 'ci_high'], 3)}" for m in METHOD_ORDER if m in b.index]
                text += (f". BN layers fed by the masked convolutions ({int(b['n_bn_layers'].iloc[0])}): eval/train input-variance ratio "
                         + ", ".join(shown))
                bt = bn_tests[(bn_tests.experiment == experiment) & (bn_tests.placement == placement) & (bn_tests.method == "ddc") & (bn_tests.baseline == "none")] if len(bn_tests) else bn_tests
                if len(bt):
                    r = bt.iloc[0]
                    text += f" (DDC - none {r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}])"
            parts.append(text + ".")
        role = roles[roles.experiment == experiment] if len(roles) else roles
        if len(role):
            r = role.iloc[0]
            parts.append(f"With DDC on all convolutions, the second conv of each block (feeding the skip addition) had a mean drop rate "
                         f"{r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] relative to the first.")
        texts.append(" ".join(parts))
    return texts


# ----------------------------------------------------------------------------- figures


def figures(run_dir) -> List[str]:
    """Every figure of notebook 06, from its stored tables."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from analysis import figures as afig

    runs = paper.load_table(run_dir, "runs")
    written = []
    for experiment, group in runs.groupby("experiment", sort=True):
        order = ["none"] + [label(m, p) for p in PLACEMENTS for m in METHOD_ORDER[1:] if label(m, p) in set(group.variant)]
        ax = afig.method_comparison(group, value="test_acc", method_col="variant", rng=0, order=order)
        ax.tick_params(axis="x", labelrotation=60)
        ax.set_title(f"{experiment}: test accuracy (mean, 95% CI over seeds)")
        written += paper.save_fig(ax, run_dir, f"{experiment}-test_acc")

    dynamics = paper.load_table(run_dir, "drop_dynamics")
    dynamics = dynamics[dynamics.metric == "drop_prob_mean"]
    for experiment, group in dynamics.groupby("experiment", sort=True):
        per_step = group.groupby(["variant", "seed", "step"], as_index=False).value.mean()
        ax = sns.lineplot(data=per_step, x="step", y="value", hue="variant", errorbar=("ci", 95), seed=0)
        ax.set_ylabel("expected drop rate (mean over the placement's layers)")
        ax.set_title(f"{experiment}: drop rate over training")
        written += paper.save_fig(ax, run_dir, f"{experiment}-drop_dynamics")

    layers = paper.load_table(run_dir, "layer_drop_summary")
    layers = layers[layers.method == "ddc"]
    for experiment, group in layers.groupby("experiment", sort=True):
        fig, ax = plt.subplots(figsize=(8, 4))
        sns.lineplot(data=group, x="layer_index", y="drop_rate", hue="placement", style="placement", markers=True,
                     errorbar=("ci", 95), seed=0, ax=ax)
        ax.set_xlabel("layer depth index (model order)")
        ax.set_ylabel("DDC mean expected drop rate")
        ax.set_title(f"{experiment}: DDC drop rate per layer")
        written += paper.save_fig(ax, run_dir, f"{experiment}-layer_drop_rates")

    bn = paper.load_table(run_dir, "bn_stats")
    for experiment, group in bn.groupby("experiment", sort=True):
        shown = group[group.placement.isna() | (group.placement == "all_conv")]
        if shown.empty:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        sns.lineplot(data=shown, x="bn_index", y="eval_over_train", hue="variant", errorbar=("ci", 95), seed=0, ax=ax)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("BatchNorm layer (model order)")
        ax.set_ylabel("BN input variance, eval / train mode")
        ax.set_title(f"{experiment}: variance shift at every BN layer (all-conv placement vs none)")
        written += paper.save_fig(ax, run_dir, f"{experiment}-bn_variance_shift")

    skip = paper.load_table(run_dir, "skip_stats")
    for experiment, group in skip.groupby("experiment", sort=True):
        long = group.melt(id_vars=["variant", "seed", "block_index"], value_vars=["ratio_train", "ratio_eval"], var_name="mode", value_name="ratio")
        long["mode"] = long["mode"].str.removeprefix("ratio_")
        fig, ax = plt.subplots(figsize=(8, 4))
        sns.lineplot(data=long, x="block_index", y="ratio", hue="variant", style="mode", errorbar=None, ax=ax)
        ax.set_xlabel("residual block (model order)")
        ax.set_ylabel("std(residual branch) / std(shortcut)")
        ax.set_title(f"{experiment}: branch vs skip, train (solid) and eval (dashed)")
        ax.legend(fontsize="x-small", ncol=2)
        written += paper.save_fig(ax, run_dir, f"{experiment}-skip_ratio")
    plt.close("all")
    return written
