"""Open question 1 (notebook ``06_oq_architectures``): DDC on modern architectures.

ResNet-20 and ResNet-18 (CIFAR-style, with BatchNorm and skip connections)
carry DDC at one of three placements:

- ``fc``: the classifier head (the models' declared default);
- ``last_stage``: every convolution of the last stage (shortcut projections included);
- ``all_conv``: every convolution, the stem included.

The extension, a small Vision Transformer (:class:`ddc.models.VisionTransformer`:
patch embedding, class token, pre-norm blocks, LayerNorm instead of BatchNorm),
carries it on

- ``attn``: the attention projections of every block (``qkv`` and the output ``proj``);
- ``mlp``: the MLP projections of every block (``fc1``, ``fc2``);
- ``attn_mlp``: both (the model's declared default).

:func:`placements_for` says which placements a model takes.

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
The ViT has no BatchNorm; its two residual branches per block (attention, MLP)
are measured the same way against the residual stream they are added to.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from experiments import paper

NOTEBOOK = "06_oq_architectures"
#: placements per model family, in display order
RESNET_PLACEMENTS = ("fc", "last_stage", "all_conv")
VIT_PLACEMENTS = ("attn", "mlp", "attn_mlp")
MODEL_PLACEMENTS = {"resnet18": RESNET_PLACEMENTS, "resnet20": RESNET_PLACEMENTS, "vit": VIT_PLACEMENTS}
#: every placement, in display order
PLACEMENTS = RESNET_PLACEMENTS + VIT_PLACEMENTS
#: DDC's per-layer drop rate compared between two layer roles (role, baseline role), per placement:
#: the conv feeding the skip addition vs the block's first conv; the MLP vs the attention projections
ROLE_CONTRASTS = {"all_conv": ("conv2", "conv1"), "attn_mlp": ("mlp", "attn")}
METHOD_ORDER = ("none", "dropout", "dropconnect", "ddc")
#: (method, baseline) contrasts tested per placement, paired by seed
CONTRASTS = (("ddc", "none"), ("ddc", "dropconnect"), ("ddc", "dropout"), ("dropconnect", "none"), ("dropout", "none"))
#: the primary family (Holm over every experiment and placement): DDC against the baselines at its matched rate,
#: the comparisons that say whether DDC's allocation of the drops helps, not just the amount
PRIMARY_CONTRASTS = (("ddc", "dropconnect"), ("ddc", "dropout"))


# ----------------------------------------------------------------------------- layers and labels


def input_shape(dataset: str) -> Tuple[int, int, int]:
    """Per-example image shape ``(C, H, W)``: ``(3, 32, 32)`` for CIFAR, else ``(1, 28, 28)``.

    Raises:
        AttributeError: ``dataset`` is not a string.
    """
    return (3, 32, 32) if dataset.startswith("cifar") else (1, 28, 28)


def experiment_model(fields: dict) -> Tuple[str, str]:
    """(dataset, model) of an experiment's fields (``recipe`` plus overrides).

    Raises:
        ValueError: ``fields`` is not a mapping with a ``recipe`` key, or names an unknown recipe.
    """
    from ddc.functional import check_choice
    from ddc.recipes import RECIPES

    if not isinstance(fields, dict) or "recipe" not in fields:
        raise ValueError(f"experiment fields must be a mapping with a 'recipe' key (plus TrainConfig overrides); got {fields!r}")
    check_choice("recipe", fields["recipe"], tuple(RECIPES))
    recipe = RECIPES[fields["recipe"]]
    return fields.get("dataset", recipe["dataset"]), fields.get("model", recipe["model"])


def placements_for(model: str) -> Tuple[str, ...]:
    """The placements ``model`` takes (ResNets: ``fc, last_stage, all_conv``; ViT: ``attn, mlp, attn_mlp``).

    Raises:
        ValueError: ``model`` has no placements in notebook 06.
    """
    if model not in MODEL_PLACEMENTS:
        raise ValueError(f"model={model!r} has no placements in notebook 06; choose one of {', '.join(MODEL_PLACEMENTS)}")
    return MODEL_PLACEMENTS[model]


def _build(model: str, dataset: str) -> nn.Module:
    from ddc import models

    return models.build(model, input_shape=input_shape(dataset), num_classes=100 if dataset == "cifar100" else 10)


def placement_layers(model: str, placement: str, dataset: str = "fashion_mnist") -> List[str]:
    """Qualified names of the layers of ``model`` that ``placement`` regularises (model order).

    Raises:
        ValueError: ``placement`` does not apply to ``model``.
    """
    allowed = placements_for(model)
    if placement not in allowed:
        raise ValueError(f"placement={placement!r} does not apply to model {model!r}; choose one of {', '.join(allowed)}")
    net = _build(model, dataset)
    if model == "vit":
        part = {"attn": (".attn.",), "mlp": (".mlp.",), "attn_mlp": (".attn.", ".mlp.")}[placement]
        return [name for name in net.ddc_layers if any(p in name for p in part)]
    if placement == "fc":
        return ["fc"]
    convs = [name for name, module in net.named_modules() if isinstance(module, nn.Conv2d)]
    if placement == "all_conv":
        return convs
    prefix = f"layer{net.num_stages}."
    return [name for name in convs if name.startswith(prefix)]


def layer_sizes(model: str, layers: Sequence[str], dataset: str = "fashion_mnist") -> Dict[str, int]:
    """Number of weight edges of each named layer.

    Raises:
        ValueError: an unknown ``model`` (:func:`ddc.models.build`).
        KeyError: a name in ``layers`` is not a module of the model.
    """
    modules = dict(_build(model, dataset).named_modules())
    return {name: modules[name].weight.numel() for name in layers}


def layer_order(model: str, dataset: str = "fashion_mnist") -> Dict[str, int]:
    """Depth index of every Conv/Linear/BatchNorm layer (model order).

    Raises:
        ValueError: an unknown ``model`` (:func:`ddc.models.build`).
    """
    net = _build(model, dataset)
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    return {name: i for i, name in enumerate(names)}


def label(method: str, placement: Optional[str]) -> str:
    """A variant's name, ``method@placement`` (``"none"`` for no drop); :func:`parse_label` reverses it.

    Raises:
        Nothing: any method and placement are written as text.
    """
    return "none" if method == "none" else f"{method}@{placement}"


def parse_label(variant: str) -> Tuple[str, Optional[str]]:
    """``(method, placement)`` of a :func:`label` (placement None for ``"none"``).

    Raises:
        AttributeError: ``variant`` is not a string.
    """
    method, _, placement = variant.partition("@")
    return method, (placement or None)


def annotate(runs):
    """Add ``experiment``, ``method_label`` and ``placement`` columns from the sweep and variant names.

    Raises:
        KeyError: ``runs`` lacks ``sweep`` or ``variant``.
        AttributeError: ``sweep`` is not text.
    """
    runs = runs.copy()
    runs["experiment"] = runs["sweep"].str.removeprefix("06-").str.rsplit("-", n=1).str[0]
    parsed = runs["variant"].map(parse_label)
    runs["method_label"] = parsed.str[0]
    runs["placement"] = parsed.str[1]
    return runs


# ----------------------------------------------------------------------------- sweeps


PLAN_KEYS = ("recipe", "placements", "seeds", "ddc_options")


def _split_fields(fields: dict) -> Tuple[str, dict]:
    overrides = {k: v for k, v in fields.items() if k not in PLAN_KEYS}
    return fields["recipe"], overrides


def plan(experiments: Dict[str, dict], placements: Optional[Sequence[str]], seeds: Sequence[int], available: Iterable[str],
         log=print):
    """``[(experiment, fields, placements, seeds)]`` for the experiments whose dataset is available.

    ``fields``: a ``recipe`` plus TrainConfig overrides; optional ``placements`` /
    ``seeds`` keys replace the notebook-wide ones for that experiment (seeds are
    cut to the notebook's seeds when those are fewer), an optional
    ``ddc_options`` mapping is laid over the notebook-wide DDC options for that
    experiment's DDC runs (see :func:`ddc_spec`). Notebook-wide
    ``placements``: ``None`` gives every model its own (:func:`placements_for`);
    a list is cut, per experiment, to the placements its model takes, and an
    experiment left with none is skipped with a note. Experiments whose dataset
    is missing are skipped with a printed note.

    Raises:
        ValueError: ``placements`` (shared or an experiment's own) is empty or names an unknown placement.
    """
    if placements is not None:
        if isinstance(placements, str) or not list(placements):
            raise ValueError(f"placements must be None or a non-empty list drawn from {', '.join(PLACEMENTS)}; got {placements!r}")
        unknown = [p for p in placements if p not in PLACEMENTS]
        if unknown:
            raise ValueError(f"placements: {', '.join(map(repr, unknown))} unknown; choose from {', '.join(PLACEMENTS)}")
    available = set(available)
    chosen = []
    for experiment, fields in experiments.items():
        dataset, model = experiment_model(fields)
        allowed = placements_for(model)
        if "placements" in fields:
            own = list(fields["placements"])
            wrong = [p for p in own if p not in allowed]
            if wrong or not own:
                raise ValueError(f"experiment {experiment!r}: placements {own!r} must be a non-empty list drawn from "
                                 f"{', '.join(allowed)} (model {model!r})")
        else:
            own = list(allowed) if placements is None else [p for p in placements if p in allowed]
            if not own:
                log(f"{experiment}: none of the placements {list(placements)} applies to model {model!r} "
                    f"(its placements: {', '.join(allowed)}), skipped")
                continue
        if dataset not in available:
            log(f"{experiment}: dataset {dataset!r} is not available here (see `ddc data list`), skipped")
            continue
        own_seeds = [s for s in fields.get("seeds", seeds) if s in set(seeds)] or list(seeds)
        chosen.append((experiment, fields, own, own_seeds))
    return chosen


def ddc_spec(experiment: str, fields: dict, profile: str, placements: Sequence[str], seeds, *, record_every: int,
             device: str = "cpu", ddc_options: Optional[dict] = None) -> dict:
    """Sweep 1: DDC at every placement, recorded every ``record_every`` steps.

    DDC's options: ``ddc_options`` (notebook-wide), overridden key by key by the
    experiment's own ``fields["ddc_options"]``.

    Raises:
        ValueError: an experiment's ``ddc_options`` is not a mapping of DDC option names to values.
    """
    recipe, overrides = _split_fields(fields)
    dataset, model = experiment_model(fields)
    own = fields.get("ddc_options") or {}
    if not isinstance(own, dict):
        raise ValueError(f"experiment {experiment!r}: ddc_options must be a mapping of DDC option names to values; got {own!r}")
    options = {**dict(ddc_options or {}), **own}
    methods = {
        label("ddc", pl): {"method": "ddc", "method_options": dict(options), "layers": placement_layers(model, pl, dataset)}
        for pl in placements
    }
    return paper.sweep_spec(f"06-{experiment}-ddc", recipe, profile, methods, seeds, device=device,
                            record_every=record_every, **overrides)


def baseline_spec(experiment: str, fields: dict, profile: str, placements: Sequence[str], seeds, rates, *,
                  record_every: int, device: str = "cpu") -> dict:
    """Sweep 2: no drop, and Dropout and DropConnect at DDC's matched rate per placement.

    ``rates``: the :func:`matched_rates` table (``experiment, placement, p_matched``).

    Raises:
        KeyError: ``fields`` has no ``recipe``, ``rates`` lacks a column it reads, or has no row for one of the
            experiment's placements.
        ValueError: an unknown recipe (:func:`experiment_model`), or a placement that does not apply to the model
            (:func:`placement_layers`).
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


GAUSSIAN_OPTIONS = ("p_base", "p_signal", "tau")


def gaussian_drop_rate(p_base: float = 0.3, p_signal: float = 0.5, tau: float = 0.5, points: int = 200001) -> float:
    """DDC's mean drop probability if the layer z-scores were standard normal:
    ``p_base + p_signal * E[c 1(c > tau)]`` with ``c = sigmoid(-z)``, ``z ~ N(0, 1)`` (numerical integral).

    Raises:
        ValueError: ``p_base``, ``p_signal`` or ``tau`` is out of range (:func:`ddc.functional.check_drop_config`).
    """
    import numpy as np

    from ddc.functional import check_drop_config, drop_curve

    check_drop_config(p_base, p_signal, tau)

    z = np.linspace(-12, 12, points)
    density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    q = drop_curve(torch.from_numpy(z), p_base=0.0, p_signal=1.0, tau=tau).numpy()  # c 1(c > tau): the curve at 0, 1
    return float(p_base + p_signal * np.trapezoid(q * density, z))


def _records(runs, run_dir, metrics: Iterable[str]):
    from ddc.store import load_records

    records = load_records(paper.run_paths(run_dir, runs))
    return records[records.metric.isin(list(metrics))]


def run_drop_rates(runs, run_dir):
    """Per run: edge-weighted mean over its layers of the recorded expected (``drop_prob_mean``)
    and realised (``realized_drop_rate``) drop rate, averaged over recorded steps after step 0.

    Columns: ``run_id, experiment, placement, seed, [p_base, p_signal, tau,] expected_rate,
    realized_rate, recorded_steps`` (the DDC options where the runs table has them).

    Raises:
        AttributeError: ``runs`` lacks ``run_id``, ``path``, ``layers``, ``dataset``, ``model``, ``experiment``,
            ``placement`` or ``seed``.
        FileNotFoundError: a run is neither in the store nor at its ``path`` (:func:`ddc.store.load_records`).
        ValueError: ``layers`` is not JSON, or an unknown model (:func:`ddc.models.build`).
        KeyError: a layer the run names is not in its model.
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
        row = {"run_id": run.run_id, "experiment": run.experiment, "placement": run.placement, "seed": run.seed,
               **{k: float(getattr(run, k)) for k in GAUSSIAN_OPTIONS if hasattr(run, k)}}
        for metric, name in (("drop_prob_mean", "expected_rate"), ("realized_drop_rate", "realized_rate")):
            values = mine[mine.metric == metric].set_index("layer")["mean"]
            weights = pd.Series(sizes).reindex(values.index)
            row[name] = float((values * weights).sum() / weights.sum()) if len(values) else float("nan")
        row["recorded_steps"] = int(mine["count"].max()) if len(mine) else 0
        rows.append(row)
    return pd.DataFrame(rows)


def matched_rates(per_run, *, rng=0, n_resamples: int = 9999, digits: int = 3, ddc_options: Optional[dict] = None):
    """Per (experiment, placement): DDC's mean expected drop rate over seeds with a bootstrap CI,
    the realised rate, the Gaussian approximation and ``p_matched`` (the mean, rounded).

    The Gaussian approximation uses the runs' own ``p_base, p_signal, tau`` where
    ``per_run`` has them, else ``ddc_options`` over the paper's defaults.

    Raises:
        ValueError: ``per_run`` lacks ``experiment``, ``placement`` or ``expected_rate``, or a run's
            ``expected_rate`` is NaN (nothing recorded) (:func:`analysis.stats.summarize`); or a ``tau`` out of
            range (:func:`gaussian_drop_rate`).
    """
    import numpy as np
    from analysis import stats

    summary = stats.summarize(per_run, value="expected_rate", by=["experiment", "placement"],
                              rng=np.random.default_rng(rng), n_resamples=n_resamples)
    realized = per_run.groupby(["experiment", "placement"], as_index=False).realized_rate.mean()
    out = summary.merge(realized, on=["experiment", "placement"])
    out = out.rename(columns={"mean": "expected_rate"})
    options = {"p_base": 0.3, "p_signal": 0.5, "tau": 0.5, **{k: v for k, v in (ddc_options or {}).items() if k in GAUSSIAN_OPTIONS}}
    if set(GAUSSIAN_OPTIONS) <= set(per_run.columns):
        own = per_run.groupby(["experiment", "placement"])[list(GAUSSIAN_OPTIONS)].first()
        out["gaussian_rate"] = [gaussian_drop_rate(**own.loc[(e, pl)].to_dict()) for e, pl in zip(out.experiment, out.placement)]
        out = out.merge(own.reset_index(), on=["experiment", "placement"])
    else:
        out["gaussian_rate"] = gaussian_drop_rate(**options)
    out["p_matched"] = out["expected_rate"].round(digits)
    return out


# ----------------------------------------------------------------------------- BatchNorm and skip connections


def _load_config(run_path: Path):
    from ddc.store import read_json
    from ddc.train import TrainConfig

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


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    """Ratio of the channel sums of two per-channel variances (NaN if the denominator is 0).

    Not the mean of per-channel ratios: a channel that masks silence in train
    mode has a variance near 0 there, and its ratio would swamp the layer's."""
    total = denominator.sum().item()
    return numerator.sum().item() / total if total > 0 else float("nan")


def _channel_var(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().transpose(0, 1).flatten(1).var(dim=1, correction=1)


def residual_branches(model: nn.Module) -> Dict[str, tuple]:
    """Every residual addition of ``model``: ``{name: (branch module, shortcut module, "output" | "input")}``.

    The residual branch's value is the branch module's output. The shortcut's is
    the shortcut module's output (``"output"``) or its input (``"input"``: the
    residual stream, read where the pre-norm block reads it). ResNet
    :class:`~ddc.models.BasicBlock` ``X``: branch ``X.bn2``, shortcut ``X.shortcut``.
    ViT :class:`~ddc.models.TransformerBlock` ``X``: ``X.attn`` (branch ``X.attn``,
    stream at ``X.norm1``'s input) and ``X.mlp`` (branch ``X.mlp``, stream at ``X.norm2``'s input).

    Raises:
        Nothing: a model without residual blocks gives ``{}``.
    """
    from ddc.models import BasicBlock, TransformerBlock

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            out[name] = (module.bn2, module.shortcut, "output")
        elif isinstance(module, TransformerBlock):
            out[f"{name}.attn"] = (module.attn, module.norm1, "input")
            out[f"{name}.mlp"] = (module.mlp, module.norm2, "input")
    return out


def _std(x: torch.Tensor) -> float:
    return x.detach().double().std().item()


@torch.no_grad()
def _forward_with_hooks(model, x, bn_layers, blocks):
    captured: Dict[str, dict] = {}
    handles = []
    for name, bn in bn_layers.items():
        handles.append(bn.register_forward_pre_hook(lambda m, args, name=name: captured.setdefault(name, {}).update(var=_channel_var(args[0]))))
    for name, (branch, shortcut, kind) in blocks.items():
        handles.append(branch.register_forward_hook(lambda m, args, out, name=name: captured.setdefault(name, {}).update(branch=_std(out))))
        if kind == "output":
            handles.append(shortcut.register_forward_hook(lambda m, args, out, name=name: captured.setdefault(name, {}).update(shortcut=_std(out))))
        else:
            handles.append(shortcut.register_forward_pre_hook(lambda m, args, name=name: captured.setdefault(name, {}).update(shortcut=_std(args[0]))))
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
    ``train_over_running`` and ``eval_over_train`` (ratios of the per-channel
    variances summed over channels, see :func:`_ratio`; ``eval_over_train < 1``
    is the variance shift), and
    ``after_masked`` (the BN input comes from a masked layer). ``skip``: one row
    per (run, residual addition, see :func:`residual_branches`) with the std of
    the residual branch (ResNet: after ``bn2``; ViT: the attention or MLP
    output) and of the shortcut (ViT: the residual stream it is added to), in
    both modes, and their ratios; ``stage`` is the ResNet stage (None for the
    ViT). A model without BatchNorm (the ViT) adds no ``bn`` rows.

    Raises:
        AttributeError: ``runs`` lacks ``run_id``, ``path``, ``experiment``, ``method_label``, ``placement``,
            ``variant`` or ``seed``.
        FileNotFoundError: a run's ``config.json`` or ``model.pt``, or its dataset's files, are missing.
        ValueError: a stored config that :class:`ddc.train.TrainConfig` or :func:`ddc.train.build` refuses.
        RuntimeError: the stored weights do not fit the rebuilt model.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep workers: on a shared machine, more threads are slower
    try:
        return _batchnorm_shift(runs, run_dir, n_images)
    finally:
        torch.set_num_threads(threads)


def _batchnorm_shift(runs, run_dir, n_images):
    import pandas as pd

    from ddc.data import load
    from ddc.train import build

    split_cache: Dict[tuple, object] = {}
    bn_rows, skip_rows = [], []
    for run, path in zip(runs.itertuples(), paper.run_paths(run_dir, runs)):
        config = _load_config(path)
        key = (config.dataset, config.source_seed("data"), config.val_fraction, config.train_subset, config.val_subset, config.test_subset)
        if key not in split_cache:
            split_cache[key] = load(config.dataset, root=config.data_root, val_fraction=config.val_fraction, seed=config.source_seed("data"),
                                    train_subset=config.train_subset, val_subset=config.val_subset, test_subset=config.test_subset)
        splits = split_cache[key]
        _, model, handle = build(config, splits)
        model.load_state_dict(torch.load(Path(path) / "model.pt", weights_only=True))
        x, y = splits.train.tensors
        x, y = x[:n_images].to(config.device), y[:n_images].to(config.device)
        bn_layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        blocks = residual_branches(model)
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
                            "eval_over_running": _ratio(ev, r), "train_over_running": _ratio(tr, r),
                            "eval_over_train": _ratio(ev, tr)})
        for index, name in enumerate(blocks):
            t, e = at_train[name], at_eval[name]
            stage = int(name.split(".")[0].removeprefix("layer")) if name.startswith("layer") else None
            skip_rows.append({**base, "block": name, "block_index": index, "stage": stage,
                              "branch_std_train": t["branch"], "shortcut_std_train": t["shortcut"],
                              "branch_std_eval": e["branch"], "shortcut_std_eval": e["shortcut"],
                              "ratio_train": t["branch"] / t["shortcut"], "ratio_eval": e["branch"] / e["shortcut"]})
    return pd.DataFrame(bn_rows), pd.DataFrame(skip_rows)


def bn_shift_by_placement(bn, runs):
    """Per (experiment, placement, method, seed): the mean ``eval_over_train`` over the BN layers
    fed by the placement's masked convolutions (the same layers for every method, no-drop included).

    Placements that feed no BN layer (``fc``) are left out.

    Raises:
        AttributeError: ``runs`` lacks ``placement``, ``experiment`` or ``layers``, or ``bn`` lacks ``experiment``,
            ``placement`` or ``bn_layer``.
        KeyError: ``bn`` lacks ``method``, ``seed``, ``eval_over_train`` or ``eval_over_running``.
        ValueError: ``layers`` is not JSON.
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
    """Mean eval/train variance ratio per (experiment, placement, method) with a bootstrap CI over seeds.

    Raises:
        ValueError: ``bn_by_placement`` lacks a column it reads, or an ``eval_over_train`` is NaN or infinite (a BN
            input of zero variance) (:func:`analysis.stats.summarize`).
    """
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
    """Recorded expected/realised drop rate per (run, layer, step), with run labels and layer depth.

    Raises:
        KeyError: ``runs`` lacks a label column (``run_id``, ``experiment``, ``method_label``, ``placement``,
            ``variant``, ``seed``, ``model``).
        AttributeError: it lacks ``path``.
        FileNotFoundError: a run is neither in the store nor at its ``path`` (:func:`ddc.store.load_records`).
        ValueError: an unknown model (:func:`layer_order`).
    """
    records = _records(runs, run_dir, ["drop_prob_mean", "realized_drop_rate"])
    labels = runs[["run_id", "experiment", "method_label", "placement", "variant", "seed", "model"]]
    out = records.merge(labels, on="run_id").rename(columns={"method_label": "method"})
    depth = {model: layer_order(model) for model in out.model.unique()}
    out["layer_index"] = [depth[m].get(layer, -1) for m, layer in zip(out.model, out.layer)]
    out["role"] = out.layer.map(layer_role)
    return out.drop(columns=["epoch"], errors="ignore").reset_index(drop=True)


def layer_role(name: str) -> str:
    """ResNets: ``stem``, ``conv1`` / ``conv2`` (first/second conv of a block; conv2 feeds the skip
    addition), ``shortcut``, ``fc``. ViT: ``attn`` (``qkv``, ``proj``), ``mlp`` (``fc1``, ``fc2``),
    ``patch_embed``, ``head``.

    Raises:
        TypeError: ``name`` is not a string.
    """
    if name in ("fc", "head"):
        return name
    if name == "conv1":
        return "stem"
    if ".shortcut" in name:
        return "shortcut"
    if name.startswith("patch_embed"):
        return "patch_embed"
    for part in ("attn", "mlp"):
        if f".{part}." in name:
            return part
    return name.rsplit(".", 1)[-1]


def layer_drop_summary(dynamics):
    """Per (run, layer): the mean over recorded steps after step 0 of DDC's expected drop rate.

    Raises:
        AttributeError: ``dynamics`` lacks ``metric``, ``step`` or ``value``.
        KeyError: it lacks one of the grouping columns (``experiment``, ``method``, ``placement``, ``variant``,
            ``seed``, ``layer``, ``layer_index``, ``role``).
    """
    d = dynamics[(dynamics.metric == "drop_prob_mean") & (dynamics.step > 0)]
    keys = ["experiment", "method", "placement", "variant", "seed", "layer", "layer_index", "role"]
    return d.groupby(keys, as_index=False, dropna=False).value.mean().rename(columns={"value": "drop_rate"})


def role_contrast(layer_summary, *, rng=0, n_resamples: int = 9999):
    """DDC's drop rate in one layer role minus another, per seed, paired, with a bootstrap CI over seeds.

    Per experiment and placement of :data:`ROLE_CONTRASTS`: on all convolutions,
    block ``conv2`` (feeding the skip addition) minus ``conv1``; on the ViT's
    attention and MLP projections, ``mlp`` minus ``attn``. Each side is the mean
    over its layers of the per-layer mean drop rate. Columns: ``experiment,
    placement, role, baseline, n, mean_diff, ci_low, ci_high, p_wilcoxon, p_ttest, ...``.

    Raises:
        AttributeError: ``layer_summary`` lacks ``method``, ``placement``, ``role`` or ``drop_rate``.
        KeyError: it lacks ``experiment`` or ``seed``.
        ValueError: a seed has one role but not the other, or fewer than 2 seeds have both
            (:func:`analysis.stats.paired_comparison`).
    """
    import numpy as np
    import pandas as pd
    from analysis import stats

    columns = ["experiment", "placement", "role", "baseline", "n", "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "p_ttest"]
    gen = np.random.default_rng(rng)
    rows = []
    for placement, (role, baseline) in ROLE_CONTRASTS.items():
        d = layer_summary[(layer_summary.method == "ddc") & (layer_summary.placement == placement)
                          & layer_summary.role.isin([role, baseline])]
        for experiment, group in d.groupby("experiment", sort=True):
            per_seed = group.groupby(["seed", "role"], as_index=False).drop_rate.mean()
            if per_seed.role.nunique() < 2:
                continue
            table = stats.paired_comparison(per_seed, value="drop_rate", method_col="role", baseline=baseline,
                                            rng=gen, n_resamples=n_resamples)
            rows.append(table.assign(experiment=experiment, placement=placement))
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.concat(rows, ignore_index=True)
    return out[columns + [c for c in out.columns if c not in columns]]


# ----------------------------------------------------------------------------- statistics


def by_placement(runs):
    """Runs with the no-drop run repeated under every placement, so each placement is a complete block design.

    Raises:
        AttributeError: ``runs`` lacks ``placement``, ``experiment`` or ``method_label``.
    """
    import pandas as pd

    placed = runs[runs.placement.notna()]
    frames = [placed]
    for (experiment, placement), _ in placed.groupby(["experiment", "placement"]):
        frames.append(runs[(runs.experiment == experiment) & (runs.method_label == "none")].assign(placement=placement))
    return pd.concat(frames, ignore_index=True)


def contrasts(frame, *, value: str, pairs=CONTRASTS, primary=PRIMARY_CONTRASTS, method_col: str = "method_label",
              higher_is_better: bool = True, rng=None, n_resamples=None):
    """Paired-by-seed verdicts ``method - baseline`` per (experiment, placement): :func:`analysis.verdicts.paired_verdicts`.

    ``primary`` pairs form the primary family (Holm over all of them, across experiments and placements),
    the other ``pairs`` the secondary one. Columns: ``experiment, placement, method, baseline`` and the
    verdict columns (``n, mean_diff, ci_low, ci_high, p_ttest, p_holm, mde, verdict``, ...).
    ``rng`` and ``n_resamples`` are accepted for old callers; t intervals need no resampling.

    Raises:
        ValueError: ``frame`` lacks ``value``, ``method_col``, ``seed``, ``experiment`` or ``placement``, or
            ``pairs`` is empty (:func:`analysis.verdicts.paired_verdicts`).
    """
    from analysis import verdicts as V

    table = V.paired_verdicts(frame, value=value, pairs=list(pairs), method_col=method_col, by=["experiment", "placement"],
                              family={pair: "primary" for pair in primary}, higher_is_better=higher_is_better)
    return table.rename(columns={method_col: "method"})


# ----------------------------------------------------------------------------- conclusions


def regime_all(runs, run_dir):
    """:func:`experiments.paper.regime_table` for every variant of every experiment: training and test accuracy,
    and whether training had converged by the end of the budget.

    Raises:
        As :func:`experiments.paper.regime_table` (missing run columns or files; a ``window`` out of range).
    """
    return paper.regime_table(runs, run_dir, method_col="variant", by=["experiment"])


def regime_summary(runs, *, rng=0, n_resamples: int = 9999):
    """The overfitting check, per experiment, over the no-drop runs' seeds: mean and bootstrap CI of
    ``final_train_acc`` (training accuracy after the last epoch), ``test_acc`` and
    ``generalization_gap`` (training minus test accuracy at the best-validation epoch).

    Long: ``experiment, metric, n, mean, ci_low, ci_high, ...``.

    Raises:
        AttributeError: ``runs`` lacks ``method_label``.
        KeyError: it lacks ``experiment``, ``seed``, ``final_train_acc``, ``test_acc`` or ``generalization_gap``.
        ValueError: one of those values is missing or not finite (:func:`analysis.stats.summarize`).
    """
    import numpy as np
    from analysis import stats

    none = runs[runs.method_label == "none"]
    long = none.melt(id_vars=["experiment", "seed"], value_vars=["final_train_acc", "test_acc", "generalization_gap"],
                     var_name="metric", value_name="value")
    return stats.summarize(long, value="value", by=["experiment", "metric"], rng=np.random.default_rng(rng),
                           n_resamples=n_resamples)


ROLE_TEXT = {
    "all_conv": "With DDC on all convolutions, the second conv of each block (feeding the skip addition) had a mean drop rate",
    "attn_mlp": "With DDC on the attention and MLP projections, the MLP projections had a mean drop rate",
}
ROLE_BASELINE_TEXT = {"all_conv": "the first", "attn_mlp": "the attention projections"}


def conclusions(summary, tests, rates, bn_summary, bn_tests, roles, regime=None, regime_methods=None) -> List[str]:
    """One paragraph per experiment, every number taken from the tables passed in.

    Raises:
        KeyError: an experiment of ``summary`` has no ``none`` variant, or a table lacks a column it reads.
        IndexError: ``rates`` has no row for an (experiment, placement) that DDC ran at.
    """
    texts = []
    for experiment, s in summary.groupby("experiment", sort=True):
        s = s.set_index("variant")
        parts = [f"{experiment}: no-drop test accuracy {paper.format_ci(*s.loc['none', ['mean', 'ci_low', 'ci_high']])} "
                 f"({int(s.loc['none', 'n'])} seeds)."]
        mine_regime = regime[regime.experiment == experiment].set_index("metric") if regime is not None and len(regime) else None
        if mine_regime is not None and {"final_train_acc", "generalization_gap"} <= set(mine_regime.index):
            train, gap = mine_regime.loc["final_train_acc"], mine_regime.loc["generalization_gap"]
            parts.append(f"Overfitting check: without a regulariser the final training accuracy was "
                         f"{paper.format_ci(train['mean'], train.ci_low, train.ci_high)} and the train - test gap at the "
                         f"best-validation epoch {paper.format_ci(gap['mean'], gap.ci_low, gap.ci_high)}.")
        for placement in [p for p in PLACEMENTS if label("ddc", p) in s.index]:
            rate = rates[(rates.experiment == experiment) & (rates.placement == placement)].iloc[0]
            ddc_row = s.loc[label("ddc", placement)]
            options = (f" (p_base {rate.p_base:g}, p_signal {rate.p_signal:g}, tau {rate.tau:g})"
                       if all(k in rates.columns for k in GAUSSIAN_OPTIONS) else "")
            text = (f"DDC on {placement}{options}: mean expected drop rate {paper.format_ci(rate.expected_rate, rate.ci_low, rate.ci_high, 3)} "
                    f"(Gaussian approximation {rate.gaussian_rate:.3f}), so Dropout/DropConnect ran at p = {rate.p_matched:.3f}; "
                    f"test accuracy {paper.format_ci(ddc_row['mean'], ddc_row.ci_low, ddc_row.ci_high)}")
            mine = tests[(tests.experiment == experiment) & (tests.placement == placement) & (tests.method == "ddc")] if len(tests) else tests
            diffs = [f"vs {r.baseline} {r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] ({r.family}, Holm p {r.p_holm:.3g}, "
                     f"n = {int(r.n)}, MDE {r.mde:.4f}: {r.verdict})" for r in mine.itertuples()]
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
        if regime_methods is not None and len(regime_methods):
            mine_methods = regime_methods[regime_methods.experiment == experiment]
            rising = mine_methods[mine_methods.converged < mine_methods.judged]
            parts.append("Regime of every method: " + (
                "convergence not judged (fewer than 3 epochs)" if mine_methods.judged.sum() == 0 else
                f"all {len(mine_methods)} converged by the end of the budget" if len(rising) == 0 else
                "; ".join(f"{r.variant}: {paper.regime_note(r)}" for r in rising.itertuples())
                + f"; the other {len(mine_methods) - len(rising)} converged") + ".")
        role = roles[roles.experiment == experiment] if len(roles) else roles
        for r in role.itertuples():
            parts.append(f"{ROLE_TEXT[r.placement]} {r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] relative to "
                         f"{ROLE_BASELINE_TEXT[r.placement]} ({r.n} seeds).")
        texts.append(" ".join(parts))
    return texts


# ----------------------------------------------------------------------------- figures


def figures(run_dir) -> List[str]:
    """Every figure of notebook 06, from its stored tables; returns the files written.

    Raises:
        FileNotFoundError: a table notebook 06 stores is missing from ``run_dir``.
    """
    import matplotlib.pyplot as plt

    written = []
    for draw in (_accuracy_figures, _drop_dynamics_figures, _layer_drop_figures, _bn_variance_figures, _skip_ratio_figures,
                 _contrasts_figure):
        written += draw(run_dir)
    plt.close("all")
    return written


def _accuracy_figures(run_dir) -> List[str]:
    """Per experiment: test accuracy per method and placement."""
    from analysis import figures as afig

    runs = paper.load_table(run_dir, "runs")
    written = []
    for experiment, group in runs.groupby("experiment", sort=True):
        title = paper.experiment_title(experiment)
        order = ["none"] + [label(m, p) for p in PLACEMENTS for m in METHOD_ORDER[1:] if label(m, p) in set(group.variant)]
        ax = afig.method_comparison(group, value="test_acc", method_col="variant", order=order)
        ax.set_title(f"{title}: test accuracy per method and placement (method@layers)")
        written += paper.save_fig(ax, run_dir, f"{experiment}-test_acc")
    return written


def _drop_dynamics_figures(run_dir) -> List[str]:
    """Per experiment: the expected drop rate over training, per variant."""
    from analysis import figures as afig

    dynamics = paper.load_table(run_dir, "drop_dynamics")
    dynamics = dynamics[dynamics.metric == "drop_prob_mean"]
    written = []
    for experiment, group in dynamics.groupby("experiment", sort=True):
        per_step = group.groupby(["variant", "seed", "step"], as_index=False).value.mean()
        ax = afig.mean_curves(per_step, x="step", y="value", hue="variant", unit="seed")
        ax.set_ylabel("expected drop rate\n(mean over the placement's layers)")
        ax.set_title(f"{paper.experiment_title(experiment)}: drop rate over training")
        written += paper.save_fig(ax, run_dir, f"{experiment}-drop_dynamics")
    return written


def _layer_drop_figures(run_dir) -> List[str]:
    """Per experiment: DDC's mean expected drop rate per layer depth, by placement."""
    from analysis import figures as afig

    layers = paper.load_table(run_dir, "layer_drop_summary")
    layers = layers[layers.method == "ddc"]
    written = []
    for experiment, group in layers.groupby("experiment", sort=True):
        ax = afig.mean_curves(group.assign(placement="ddc@" + group.placement), x="layer_index", y="drop_rate", hue="placement",
                              unit="seed")
        ax.set_xlabel("layer depth index (model order)")
        ax.set_ylabel("DDC mean expected drop rate")
        ax.set_title(f"{paper.experiment_title(experiment)}: DDC's drop rate per layer, by placement")
        written += paper.save_fig(ax, run_dir, f"{experiment}-layer_drop_rates")
    return written


def _bn_variance_figures(run_dir) -> List[str]:
    """Per experiment: BatchNorm input variance in eval over train mode (all-conv placement against none)."""
    from analysis import figures as afig

    bn = paper.load_table(run_dir, "bn_stats")
    written = []
    for experiment, group in bn.groupby("experiment", sort=True):
        shown = group[group.placement.isna() | (group.placement == "all_conv")]
        if shown.empty:
            continue
        ax = afig.mean_curves(shown, x="bn_index", y="eval_over_train", hue="variant", unit="seed")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("BatchNorm layer (model order)")
        ax.set_ylabel("BN input variance, eval / train mode")
        ax.set_title(f"{paper.experiment_title(experiment)}: variance shift at every BN layer (all-conv placement vs none)")
        written += paper.save_fig(ax, run_dir, f"{experiment}-bn_variance_shift")
    return written


def _skip_ratio_figures(run_dir) -> List[str]:
    """Per experiment: std of each residual branch over its shortcut's, in train and in eval mode."""
    import matplotlib.pyplot as plt
    from analysis import figures as afig

    skip = paper.load_table(run_dir, "skip_stats")
    written = []
    for experiment, group in skip.groupby("experiment", sort=True):
        fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4), sharey=True, layout="constrained")
        for ax, mode in zip(axes, ("train", "eval")):
            afig.mean_curves(group, x="block_index", y=f"ratio_{mode}", hue="variant", unit="seed", ax=ax)
            ax.set_xlabel("residual branch (model order; ViT: attention and MLP branches alternate)")
            ax.set_ylabel("std(residual branch) / std(shortcut)")
            ax.set_title(f"{mode} mode")
            if mode == "train":
                ax.get_legend().remove()
        fig.suptitle(f"{paper.experiment_title(experiment)}: the residual branch against the skip connection")
        written += paper.save_fig(fig, run_dir, f"{experiment}-skip_ratio")
    return written


def _contrasts_figure(run_dir) -> List[str]:
    """DDC minus each baseline (paired by seed, mean and 95% CI) for every architecture and placement."""
    from analysis import figures as afig

    tests = paper.load_table(run_dir, "verdicts")
    tests = tests[tests.method == "ddc"]
    if not len(tests):
        return []
    rows = [(experiment, placement) for experiment in sorted(tests.experiment.unique()) for placement in PLACEMENTS
            if ((tests.experiment == experiment) & (tests.placement == placement)).any()]
    baselines = [baseline for baseline in METHOD_ORDER if baseline in set(tests.baseline)]
    ax = afig.new_axes(10.0, 0.55 * len(rows) + 2.2)
    for offset, baseline in enumerate(baselines):
        against = tests[tests.baseline == baseline].set_index(["experiment", "placement"])
        positions, means, below, above = [], [], [], []
        for position, key in enumerate(rows):
            if key in against.index:
                contrast = against.loc[key]
                positions.append(position + (offset - (len(baselines) - 1) / 2) * 0.2)
                means.append(contrast.mean_diff)
                below.append(contrast.mean_diff - contrast.ci_low)
                above.append(contrast.ci_high - contrast.mean_diff)
        style = afig.method_style(baseline)
        ax.errorbar(means, positions, xerr=[below, above], fmt=style.marker, color=style.color, capsize=3,
                    label=f"DDC minus {style.name}")
    ax.axvline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_yticks(range(len(rows)), [f"{paper.experiment_title(experiment)} / {placement}" for experiment, placement in rows])
    ax.invert_yaxis()
    n = tests["n"]
    ax.set_xlabel("test accuracy difference, paired by seed\n"
                  f"mean and 95% CI, n = {n.min()}" + (f"-{n.max()}" if n.max() != n.min() else "") + " seeds")
    ax.set_title("DDC against no drop and the matched-rate baselines, every architecture and placement")
    afig.place_legend(ax)
    return paper.save_fig(ax, run_dir, "ddc_contrasts")
