"""The paper notebooks' experiments and figures, as importable functions.

Notebooks call these so that their cells stay short, and ``ddc figures``
calls the ``figures_*`` functions to regenerate every figure from what the
notebooks stored (tables in ``<run_dir>/results`` and the shared run store),
without training.

Conventions for every notebook ``run_dir``:

- ``results/``: the numbers, as parquet/JSON, written by the notebook;
- ``figures/``: PNG and PDF, written by ``figures_<notebook>(run_dir)``;
- ``<notebook>.ipynb``: the executed notebook (written by the driver).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ddc.apply import apply
from ddc.train import Callback

# ----------------------------------------------------------------------------- common


def results_dir(run_dir) -> Path:
    """``run_dir/results``, where a notebook's tables and JSON go (made when missing).

    Raises:
        OSError: the folder cannot be made.
    """
    path = Path(run_dir) / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(run_dir) -> Path:
    """``run_dir/figures``, where a notebook's figures go (made when missing).

    Raises:
        OSError: the folder cannot be made.
    """
    path = Path(run_dir) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_table(frame, run_dir, name: str) -> Path:
    """Write a results table as parquet (atomic) and CSV (for reading by eye).

    Raises:
        ddc.store.StoreWriteError: the parquet file cannot be written.
        OSError: the results folder cannot be made, or the CSV cannot be written.
        ddc._optional.MissingExtra: pyarrow is not installed.
    """
    from ddc.store import write_parquet

    path = write_parquet(results_dir(run_dir) / f"{name}.parquet", frame)
    frame.to_csv(results_dir(run_dir) / f"{name}.csv", index=False)
    return path


def load_table(run_dir, name: str):
    """The results table ``name`` that :func:`save_table` wrote under ``run_dir``, as a DataFrame.

    Raises:
        FileNotFoundError: no such table.
    """
    import pandas as pd

    return pd.read_parquet(Path(run_dir) / "results" / f"{name}.parquet")


def save_json(obj, run_dir, name: str) -> Path:
    """Write ``obj`` as ``run_dir/results/<name>.json`` (atomically); returns the path.

    Raises:
        ddc.store.StoreWriteError: the file cannot be written.
    """
    from ddc.store import write_json

    return write_json(results_dir(run_dir) / f"{name}.json", obj)


def load_json(run_dir, name: str):
    """The JSON value :func:`save_json` wrote as ``name`` under ``run_dir``.

    Raises:
        FileNotFoundError: no such file.
    """
    return json.loads((Path(run_dir) / "results" / f"{name}.json").read_text())


def save_fig(ax_or_fig, run_dir, name: str) -> List[str]:
    """Save a figure as PNG and PDF under ``run_dir/figures`` and close it; returns the paths.

    Raises:
        ValueError: ``ax_or_fig`` is not a matplotlib Figure or Axes (:func:`analysis.figures.save_figure`).
        OSError: the figures folder or a file in it cannot be written.
    """
    import matplotlib.pyplot as plt
    from analysis.figures import save_figure

    paths = save_figure(ax_or_fig, figures_dir(run_dir) / name, formats=("png", "pdf"))
    fig = ax_or_fig if hasattr(ax_or_fig, "savefig") else ax_or_fig.figure
    plt.close(fig)
    return [str(p) for p in paths]


def format_ci(mean: float, low: float, high: float, digits: int = 4) -> str:
    """``"mean [low, high]"`` with ``digits`` decimals, in the units of the values (e.g. accuracy).

    Raises:
        TypeError, ValueError: a value is not a number, or ``digits`` is negative (Python's format error).
    """
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


DATASET_NAMES = {"mnist1d": "MNIST-1D", "fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100", "synthetic": "synthetic regression"}
MODEL_NAMES = {"simplecnn1": "SimpleCNN1", "simplecnn2": "SimpleCNN2", "mlp": "MLP", "resnet20": "ResNet-20",
               "resnet18": "ResNet-18", "vgg13bn": "VGG-13-BN", "alexnet": "AlexNet", "vit": "ViT", "linreg2d": "2-D linear model"}


def experiment_title(name: str) -> str:
    """A recipe-like name in words for figure titles: ``"02-mnist1d-simplecnn1"`` -> ``"MNIST-1D, SimpleCNN1"``.

    Raises:
        Nothing: any name is read as its text.
    """
    parts = [p for p in str(name).split("-") if not p.isdigit()]
    words = [DATASET_NAMES.get(p) or MODEL_NAMES.get(p) or p for p in parts]
    return ", ".join(words)


# ----------------------------------------------------------------------------- 01 synthetic regression

SYNTHETIC_METHODS: Dict[str, dict] = {
    "none": {"method": "none"},
    "dropout": {"method": "dropout", "p": 0.5},
    "dropconnect": {"method": "dropconnect", "p": 0.5},
    "ddc": {"method": "ddc"},
    "ddc_big": {"method": "ddc", "prefer": "big"},
}


def synthetic_trajectories(
    methods: Dict[str, dict],
    seeds: Sequence[int],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    init: Sequence[float] = (-1.0, 2.0),
    n_train: Optional[int] = None,
):
    """Train the 2-weight regression with each method and seed; one row per step.

    Every method starts from the same ``init`` and, for one seed, sees the same
    mini-batches (the batch order comes from a generator seeded by the seed;
    full batches only, reshuffled when a pass is used up); masks draw from
    their own generator. The loop is :func:`ddc.train.fit`, for ``steps``
    steps. ``loss`` is the full training-set MSE of the plain (unmasked)
    weights after the step.

    Returns a DataFrame with columns ``method, seed, step, w1, w2, loss``.

    Raises:
        KeyError: a spec in ``methods`` has no ``"method"``.
        ValueError: an unknown method or option (:func:`ddc.apply`), a bad ``n_train`` (:func:`ddc.data.load`), or
            a ``batch_size`` that is not a positive integer (:func:`ddc.train.fit`).
    """
    import pandas as pd

    from ddc.data import load
    from ddc.models import LinearRegression2D
    from ddc.train import fit

    rows = []
    for seed in seeds:
        splits = load("synthetic", seed=seed, train_subset=n_train)
        inputs, targets = splits.train.tensors
        for label, spec in methods.items():
            options = {k: v for k, v in spec.items() if k != "method"}
            model = LinearRegression2D()
            with torch.no_grad():
                model.linear.weight.copy_(torch.tensor([list(init)]))
            handle = apply(model, spec["method"], layers=["linear"], seed=seed + 7919, **options)
            trajectory = _Trajectory(label, seed, model, inputs, targets)
            fit(model, torch.optim.SGD(model.parameters(), lr=lr), inputs, targets, loss_fn=nn.functional.mse_loss,
                batch_size=batch_size, order_generator=torch.Generator().manual_seed(seed), max_steps=steps,
                drop_last=True, task="regression", callbacks=[trajectory])
            rows += trajectory.rows
            handle.remove()
    return pd.DataFrame(rows)


class _Trajectory(Callback):
    """The weights and the full training-set loss, before training (step 0) and after every step."""

    def __init__(self, label, seed, model, inputs, targets):
        self.label, self.seed, self.model, self.inputs, self.targets = label, seed, model, inputs, targets
        self.rows = [_trajectory_row(label, seed, 0, model, inputs, targets)]

    def on_step(self, state, step) -> None:
        self.rows.append(_trajectory_row(self.label, self.seed, step.index + 1, self.model, self.inputs, self.targets))


@torch.no_grad()
def _trajectory_row(label, seed, step, model, x, y) -> dict:
    model.eval()
    w1, w2 = model.linear.weight[0].tolist()
    loss = nn.functional.mse_loss(model(x), y).item()
    return {"method": label, "seed": seed, "step": step, "w1": w1, "w2": w2, "loss": loss}


def steps_to_target(trajectories, target_loss: float):
    """First step at which each (method, seed) reaches ``loss <= target_loss``: a time-to-event outcome.

    A run that never reaches it is right-censored at its last step (``reached =
    False``, ``steps_to_target`` = the budget): it would need more steps, how
    many is unknown, so analyse with :mod:`analysis.survival`, not as a number.
    Columns: ``method, seed, steps_to_target, reached``.

    Raises:
        KeyError: ``trajectories`` lacks ``method`` or ``seed``.
        AttributeError: it lacks ``step`` or ``loss``.
    """
    import pandas as pd

    rows = []
    for (method, seed), group in trajectories.groupby(["method", "seed"], sort=False):
        hit = group[group.loss <= target_loss]
        reached = not hit.empty
        rows.append(
            {
                "method": method,
                "seed": seed,
                "steps_to_target": int(hit.step.min()) if reached else int(group.step.max()),
                "reached": reached,
            }
        )
    return pd.DataFrame(rows)


def synthetic_regime(trajectories, *, window: float = 0.2, tolerance: float = 0.05):
    """Per method: the final training loss and whether it stopped falling by the end of the budget.

    A run has converged when its loss changed by less than ``tolerance`` (relative to its mean over the
    window) over the last ``window`` of its steps, by a least-squares line (:func:`analysis.stats.trend`).
    Columns: ``method, n, final_loss, relative_change, converged``.

    Raises:
        KeyError: ``trajectories`` lacks ``step``, ``method`` or ``seed``.
        AttributeError: it lacks ``loss``.
        ValueError: ``window`` is not in (0, 1] (:func:`analysis.stats.trend`).
    """
    import numpy as np
    import pandas as pd
    from analysis import stats

    rows = []
    for (method, seed), group in trajectories.sort_values("step").groupby(["method", "seed"], sort=True):
        loss = group.loss.to_numpy(float)
        tail = loss[-max(3, int(np.ceil(window * len(loss)))):]
        change = stats.trend(loss, window=window) / max(float(np.mean(tail)), 1e-12)
        rows.append({"method": method, "seed": seed, "final_loss": loss[-1], "relative_change": change,
                     "converged": abs(change) < tolerance})
    per_run = pd.DataFrame(rows)
    return (per_run.groupby("method", sort=True)
            .agg(n=("seed", "size"), final_loss=("final_loss", "mean"), relative_change=("relative_change", "mean"),
                 converged=("converged", "sum")).reset_index())


def figures_01_synthetic_regression(run_dir) -> List[str]:
    """Redraw notebook 01's figures (weight trajectories over the loss contours, loss curves, steps to target) from its tables.

    Returns the figure files written.

    Raises:
        FileNotFoundError: a table 01 stores is missing from ``run_dir``.
    """
    from analysis import figures

    from ddc.data import SYNTHETIC_NOISE_STD, SYNTHETIC_WEIGHTS

    trajectories = load_table(run_dir, "trajectories")
    order = [m for m in SYNTHETIC_METHODS if m in set(trajectories.method)] or sorted(trajectories.method.unique())
    seeds = trajectories.seed.nunique()
    written = []
    ax = figures.synthetic_contours(
        trajectories, true_w=list(SYNTHETIC_WEIGHTS), cov=torch.eye(2).numpy(), noise_var=SYNTHETIC_NOISE_STD**2
    )
    ax.set_title(f"2-D linear regression: loss contours and mean trajectories over {seeds} seeds")
    written += save_fig(ax, run_dir, "contours_trajectories")

    ax = figures.mean_curves(trajectories, x="step", y="loss", hue="method", unit="seed", order=order)
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("training loss of the plain weights (MSE, log scale)")
    ax.set_title("Training loss over SGD steps")
    written += save_fig(ax, run_dir, "loss_curves")

    ax = figures.km_curves(load_table(run_dir, "kaplan_meier"), group="method")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("share of runs not yet at the target loss")
    ax.set_title("Steps to the target loss: Kaplan-Meier, 95% bands (censored at the budget)")
    written += save_fig(ax, run_dir, "steps_to_target")
    return written


# ----------------------------------------------------------------------------- 05 report


def figures_05_report(run_dir) -> List[str]:
    """Redraw the report's figures from the stored results, and write ``report.md`` and ``report.html`` again
    (with the settings 05 stored; nothing is trained). Returns the figure files.

    Raises:
        KeyError: a notebook's stored verdict table lacks ``baseline`` (:func:`experiments.report.restate_verdicts`).
        ValueError: 02's stored scores cannot be aggregated (:func:`experiments.report.aggregate_across_tasks`).
        OSError: the report or its figures cannot be written.
    """
    from ddc.store import default_root, run_dirs
    from experiments.report import build_paper_report
    from experiments.report_html import write_html

    run_dir = Path(run_dir)
    base = run_dir.parent
    settings = load_json(run_dir, "settings") if (run_dir / "results" / "settings.json").exists() else {}
    # the store beside the outputs (so they can move), else where 05 read it
    candidates = [default_root(base.name, base.parent)] + ([Path(settings["runs_root"])] if settings.get("runs_root") else [])
    store_root = next((c for c in candidates if c.is_dir() and run_dirs(c)), None)
    if store_root is None:
        return []
    title = settings.get("title", f"ddc report ({base.name} profile)")
    options = {"baseline": settings.get("baseline", "none"), "seed": settings.get("bootstrap_seed", 0)}
    if "bootstrap_resamples" in settings:
        options["n_resamples"] = settings["bootstrap_resamples"]
    report = build_paper_report(base, run_dir, title=title, **options)
    write_html(report, paths=store_root, outputs=base, title=title)
    return [str(p) for p in sorted((run_dir / "figures").glob("*.png"))]


# ----------------------------------------------------------------------------- regeneration


def figure_functions() -> Dict[str, callable]:
    """Notebook stem -> its figure function: ``figures_<stem>`` here, ``figures`` in ``experiments.openq`` modules.

    Raises:
        ModuleNotFoundError: an openq module fails to import for a reason other than being absent.
    """
    import importlib

    from experiments import openq

    functions = {
        name[len("figures_") :]: f for name, f in globals().items() if name.startswith("figures_") and name[8:10].isdigit()
    }
    for module_name in openq.MODULES:
        try:
            module = importlib.import_module(f"{openq.__name__}.{module_name}")
        except ModuleNotFoundError as error:
            if error.name != f"{openq.__name__}.{module_name}":
                raise
            continue
        functions[module.NOTEBOOK] = module.figures
    return functions


def regenerate_figures(base, log=print) -> List[str]:
    """Call every notebook's figure function whose notebook has stored results under ``base``.

    Raises:
        FileNotFoundError, NotADirectoryError: ``base`` is not a folder.
        ModuleNotFoundError: as :func:`figure_functions`.
        Whatever a notebook's figure function raises (e.g. ``FileNotFoundError`` for a table it needs).
    """
    import time

    from ddc.progress import clock

    base = Path(base)
    written = []
    functions = figure_functions()
    # the report last: its HTML page embeds every other notebook's figures
    folders = sorted((p for p in base.iterdir() if p.is_dir() and p.name[:2].isdigit()), key=lambda p: ("report" in p.name, p.name))
    for number, folder in enumerate(folders, 1):
        function = functions.get(folder.name.split("-")[0])
        if function is None:
            log(f"[{number}/{len(folders)}] {folder.name}: no figure function, skipped")
            continue
        if not (folder / "results").exists():
            log(f"[{number}/{len(folders)}] {folder.name}: no stored results, skipped")
            continue
        log(f"[{number}/{len(folders)}] {folder.name}: drawing ...")
        started = time.perf_counter()
        paths = function(folder)
        log(f"[{number}/{len(folders)}] {folder.name}: {len(paths)} file(s) in {clock(time.perf_counter() - started)}")
        written += paths
    return written


# ----------------------------------------------------------------------------- shared: runs in the store


def run_paths(run_dir, runs) -> List[Path]:
    """Run directories of ``runs``, found in the profile's default store (``$DDC_RUNS``, else the
    store beside ``run_dir``, so outputs can move), else where they were written.

    Raises:
        AttributeError: ``runs`` lacks ``run_id`` or ``path``.
    """
    from ddc.store import default_root

    base = Path(run_dir).parent
    store_root = default_root(base.name, base.parent)
    return [store_root / run_id if (store_root / run_id).exists() else Path(path) for run_id, path in zip(runs.run_id, runs.path)]


# ----------------------------------------------------------------------------- 04 dynamics


def snapshot_table(run_path, layer: str):
    """Per snapshot step: |signal|, cumulative drop frequency and drop probability of ``layer``, long.

    Columns: ``step, edge, grad_abs, drop_freq, drop_prob`` (drop_prob NaN where absent).

    Raises:
        KeyError: a snapshot has no entry for ``layer``.
        RuntimeError: a snapshot file is not one :func:`torch.load` can read.
    """
    import numpy as np
    import pandas as pd

    frames = []
    for path in sorted((Path(run_path) / "snapshots").glob("step-*.pt")):
        step = int(path.stem.split("-")[1])
        entry = torch.load(path)[layer]
        if "signal" not in entry or "drop_count" not in entry:
            continue
        grad_abs = entry["signal"].abs().flatten().numpy()
        freq = (entry["drop_count"].double() / max(entry["steps_counted"], 1)).flatten().numpy()
        if freq.size != grad_abs.size:
            continue  # output masks (dropout): no per-edge frequency
        drop_prob = entry["drop_prob"].flatten().numpy() if entry.get("drop_prob") is not None and entry["drop_prob"].numel() == grad_abs.size else np.full(grad_abs.size, np.nan)
        frames.append(pd.DataFrame({"step": step, "edge": np.arange(grad_abs.size), "grad_abs": grad_abs, "drop_freq": freq, "drop_prob": drop_prob}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["step", "edge", "grad_abs", "drop_freq", "drop_prob"])


def gradient_rank_stability(snapshots):
    """Spearman correlation of per-edge |g| between consecutive snapshots (is |g| a stable proxy?).

    Raises:
        AttributeError: ``snapshots`` lacks ``step``, ``edge`` or ``grad_abs``.
    """
    import pandas as pd
    from scipy.stats import spearmanr

    steps = sorted(snapshots.step.unique())
    rows = []
    for earlier, later in zip(steps, steps[1:]):
        a = snapshots[snapshots.step == earlier].sort_values("edge").grad_abs.to_numpy()
        b = snapshots[snapshots.step == later].sort_values("edge").grad_abs.to_numpy()
        rows.append({"step": later, "previous_step": earlier, "spearman": spearmanr(a, b).statistic})
    return pd.DataFrame(rows)


def mask_overlap_against_null(records, runs, *, layer: str, method_col: str = "tag"):
    """The overlap of consecutive masks against what chance alone gives at the same drop rates.

    For every recorded step with a ``mask_jaccard`` (overlap of this and the previous recorded mask's dropped
    sets), the null is the expected overlap of two *independent* uniform masks at the two steps' realised drop
    rates, :func:`analysis.stats.independent_jaccard` (``r / (2 − r)`` at equal rates): a method "drops the
    same edges more consistently" only if its overlap beats that. Per run, both are averaged over steps.

    Returns a long frame ``<method_col>, seed, run_id, quantity, mask_jaccard, steps`` with ``quantity`` in
    ``observed`` / ``independent masks`` (one row each per run), ready for a paired comparison by seed.

    Raises:
        AttributeError: ``records`` lacks ``layer`` or ``metric``, or has ``mask_jaccard`` but no
            ``realized_drop_rate`` rows for ``layer``.
        KeyError: ``runs`` lacks ``run_id``, ``seed`` or ``method_col``.
    """
    import pandas as pd
    from analysis import stats

    wanted = records[(records.layer == layer) & records.metric.isin(["mask_jaccard", "realized_drop_rate"])]
    if wanted.empty:
        return pd.DataFrame(columns=[method_col, "seed", "run_id", "quantity", "mask_jaccard", "steps"])
    wide = wanted.pivot_table(index=["run_id", "step"], columns="metric", values="value").reset_index()
    if "mask_jaccard" not in wide:
        return pd.DataFrame(columns=[method_col, "seed", "run_id", "quantity", "mask_jaccard", "steps"])
    wide = wide.sort_values(["run_id", "step"])
    wide["previous_rate"] = wide.groupby("run_id").realized_drop_rate.shift()
    wide["null"] = stats.independent_jaccard(wide.realized_drop_rate, wide.previous_rate)
    wide = wide.dropna(subset=["mask_jaccard", "null"])
    per_run = wide.groupby("run_id").agg(observed=("mask_jaccard", "mean"), null=("null", "mean"), steps=("step", "size"))
    per_run = per_run.join(runs.set_index("run_id")[[method_col, "seed"]]).reset_index()
    long = per_run.melt(id_vars=[method_col, "seed", "run_id", "steps"], value_vars=["observed", "null"],
                        var_name="quantity", value_name="mask_jaccard")
    long["quantity"] = long.quantity.replace({"null": "independent masks"})
    return long[[method_col, "seed", "run_id", "quantity", "mask_jaccard", "steps"]]


#: the sources of randomness a run has, each with a seed of its own (``TrainConfig.<source>_seed``)
SEED_SOURCES = ("data", "init", "order", "mask")


def variance_source_specs(name: str, recipe: str, profile: str, values: Sequence[int], *, method: str = "ddc",
                          method_options: Optional[dict] = None, **base) -> List[dict]:
    """Sweeps that vary one source of randomness at a time (Bouthillier et al. 2021), and all together.

    The base run has every source seeded ``values[0]``. For each source in :data:`SEED_SOURCES`, one run per
    other value sets that source's seed alone (``<source>_seed``); a second sweep varies ``seed`` itself,
    which moves every source together. Variants are labelled ``<source>=<value>``.

    Raises:
        IndexError: ``values`` is empty.
        TypeError: ``method_options`` is not a mapping.
    """
    first, others = values[0], list(values[1:])
    options = {"method": method, "method_options": dict(method_options or {})}
    one_at_a_time = {f"{source}={v}": {**options, f"{source}_seed": v} for source in SEED_SOURCES for v in others}
    return [sweep_spec(f"{name}-one_source", recipe, profile, one_at_a_time, [first], **base),
            sweep_spec(f"{name}-all_sources", recipe, profile, {"all": options}, list(values), **base)]


def variance_sources_table(runs):
    """Runs of :func:`variance_source_specs` labelled by the source that varied: ``source`` (``all`` for the
    sweep over ``seed``), with the base run (every source at the first seed) in every source's group.

    Raises:
        AttributeError: ``runs`` lacks ``sweep``, ``seed`` or ``variant``, or ``sweep``/``variant`` is not text.
    """
    import pandas as pd

    together = runs[runs.sweep.str.endswith("-all_sources")]
    base = together[together.seed == together.seed.min()]
    alone = runs[runs.sweep.str.endswith("-one_source")]
    frames = [together.assign(source="all")]
    for source in SEED_SOURCES:
        frames += [base.assign(source=source), alone[alone.variant.str.startswith(f"{source}=")].assign(source=source)]
    return pd.concat(frames, ignore_index=True)


def figures_04_dynamics(run_dir) -> List[str]:
    """Redraw notebook 04's figures (variance by source, drop rate and mask overlap over training, DDC's drop-probability heatmap).

    Returns the figure files written.

    Raises:
        FileNotFoundError: a table or run 04 stores is missing.
    """
    from analysis import figures

    from ddc.store import load_records

    settings = load_json(run_dir, "settings")
    runs = load_table(run_dir, "runs")
    records = load_records(run_paths(run_dir, runs))
    labels = runs[["run_id", "tag"]].rename(columns={"tag": "method"})
    layer = settings["layer"]
    where = f"{DATASET_NAMES.get(settings['dataset'], settings['dataset'])}, {MODEL_NAMES.get(settings['model'], settings['model'])}, layer {layer}"
    written = []
    if (Path(run_dir) / "results" / "variance_sources.parquet").exists():
        ax = figures.variance_by_source(load_table(run_dir, "variance_sources"))
        ax.set_title("Variance of test accuracy, one source of randomness at a time")
        written += save_fig(ax, run_dir, "variance_sources")
    ax = figures.drop_rate_dynamics(records, layer=layer, hue="method", runs=labels)
    ax.set_title(f"{where}: expected (solid) and realised (dashed) drop rate")
    written += save_fig(ax, run_dir, "drop_rate_dynamics")
    ax = figures.mask_overlap(records, layer=layer, hue="method", runs=labels)
    ax.set_title(f"{where}: overlap of the dropped edges between consecutive steps")
    written += save_fig(ax, run_dir, "mask_overlap")
    ddc_ids = runs.loc[runs.method == "ddc", "run_id"]
    if len(ddc_ids):
        ddc_records = records[records.run_id == ddc_ids.iloc[0]]
        ax = figures.drop_prob_heatmap(ddc_records, layer=layer)
        ax.set_title(f"DDC drop-probability quantiles over training ({where})")
        written += save_fig(ax, run_dir, "drop_prob_heatmap")
        snapshots = load_table(run_dir, "ddc_snapshots")
        last = snapshots[snapshots.step == snapshots.step.max()]
        ax = figures.grad_vs_drop(last.grad_abs.to_numpy(), last.drop_freq.to_numpy())
        ax.set_ylabel("fraction of steps the edge was dropped")
        ax.set_title(f"DDC: |gradient| at step {int(last.step.iloc[0])} against how often each edge was dropped")
        written += save_fig(ax, run_dir, "grad_vs_drop_frequency")
        stability = load_table(run_dir, "gradient_rank_stability")
        if not stability.empty:
            ax = figures.new_axes()
            ax.plot(stability.step, stability.spearman, marker=figures.METHOD_STYLES["ddc"].marker,
                    color=figures.METHOD_STYLES["ddc"].color)
            ax.set_xlabel("training step")
            ax.set_ylabel("Spearman correlation of per-edge |g|\nwith the previous snapshot")
            ax.set_title("DDC: is the gradient magnitude a stable per-edge proxy? (one run)")
            written += save_fig(ax, run_dir, "gradient_rank_stability")
    return written


# ----------------------------------------------------------------------------- 02 baselines / sweeps

BASELINE_METHODS: Dict[str, dict] = {
    "none": {"method": "none"},
    "dropout": {"method": "dropout", "method_options": {"p": 0.5}},
    "dropconnect": {"method": "dropconnect", "method_options": {"p": 0.5}},
    "standout": {"method": "standout"},
    "ddc": {"method": "ddc"},
}


def available_datasets() -> set:
    """Names of the datasets this machine has or can generate (:func:`ddc.data.describe`).

    Raises:
        Nothing of its own: a dataset whose files are missing or wrong is left out (:func:`ddc.data.describe`).
    """
    from ddc.data import describe

    return {row["name"] for row in describe() if row["available"]}


def sweep_spec(name: str, recipe: str, profile: str, methods: Dict[str, dict], seeds, **base) -> dict:
    """A sweep spec over ``methods`` (labels kept in each run's ``tag``) for one recipe.

    Raises:
        TypeError: a spec in ``methods`` is not a mapping, or ``seeds`` is not iterable.
    """
    variants = {label: {**spec, "tag": label} for label, spec in methods.items()}
    return {
        "name": name,
        "base": {"recipe": recipe, "profile": profile, "progress": False, **base},
        "methods": variants,
        "seeds": list(seeds),
    }


def run_specs(specs: Sequence[dict], runs_root, *, workers=None, backend: str = "local", log=print):
    """Run each sweep spec; raise with the failures' first lines if any run failed.

    Returns the concatenated sweep frames (one row per run, ``sweep`` and
    ``variant`` columns added).

    Raises:
        RuntimeError: a sweep had failed runs (the message names them).
    """
    import os

    import pandas as pd

    from ddc import progress
    from ddc.sweep import load_spec, run_sweep, sweep_frame

    # under the notebook driver, progress goes to its terminal; run by hand, a bar shows in the notebook
    driven = bool(os.environ.get(progress.ENV))
    progress.emit("plan", runs=sum(len(load_spec(spec).runs()) for spec in specs))
    frames = []
    for spec in specs:
        result = run_sweep(spec, runs_root, workers=workers, backend=backend, progress=not driven)
        log(f"{spec['name']}: {len(result.run_ids)} runs ({len(result.skipped)} reused) in {progress.clock(result.seconds)}")
        if result.failed:
            details = "; ".join(f"{run_id}: {info.get('error', '')}" for run_id, info in result.failures().items())
            raise RuntimeError(f"sweep {spec['name']}: {len(result.failed)} run(s) failed: {details}")
        frames.append(sweep_frame(spec, runs_root))
    return pd.concat(frames, ignore_index=True)


def figures_02_baselines(run_dir) -> List[str]:
    """Redraw notebook 02's figures (test accuracy and learning curves per task, the critical-difference diagram) from its tables.

    Returns the figure files written.

    Raises:
        FileNotFoundError: a table or run 02 stores is missing.
    """
    import matplotlib.pyplot as plt
    from analysis import figures

    from ddc.store import load_metrics

    runs = load_table(run_dir, "runs")
    summaries = load_table(run_dir, "summary")
    metrics = load_metrics(run_paths(run_dir, runs))
    written = []
    for experiment, group in runs.groupby("sweep", sort=True):
        name = experiment.removeprefix("02-")
        title = experiment_title(name)
        order = [m for m in BASELINE_METHODS if m in set(group.tag)] + sorted(set(group.tag) - set(BASELINE_METHODS))
        summary = summaries[summaries.experiment.isin([experiment, name])]
        ax = figures.method_comparison(summary if len(summary) else group, value="test_acc", method_col="tag", order=order,
                                       points=group if len(summary) else None)
        ax.set_title(f"{title}: test accuracy at the best-validation epoch")
        written += save_fig(ax, run_dir, f"{name}-test_acc")
        group_metrics = metrics[metrics.run_id.isin(group.run_id)]
        for split, what in (("val", "validation accuracy"), ("train", "training accuracy (is the no-drop model overfitting?)")):
            ax = figures.learning_curves(group_metrics, group[["run_id", "tag"]], metric="acc", split=split, hue="tag")
            ax.set_title(f"{title}: {what}")
            written += save_fig(ax, run_dir, f"{name}-{'val' if split == 'val' else 'train'}_curves")
        plt.close("all")
    if (Path(run_dir) / "results" / "ranks_across_experiments.parquet").exists():
        # Demšar (2006): methods ranked within each experiment (dataset x model), ranks averaged over experiments
        ranks = load_table(run_dir, "ranks_across_experiments")
        cliques = [c.split(", ") for c in ranks.cliques.iloc[0].split(" | ")] if ranks.cliques.iloc[0] else []
        ax = figures.critical_difference_diagram(ranks, cliques, float(ranks.cd.iloc[0]), method_col="tag")
        ax.set_title(f"Average ranks across {runs.sweep.nunique()} experiments (Nemenyi CD = {float(ranks.cd.iloc[0]):.2f})")
        written += save_fig(ax, run_dir, "critical_difference")
    return written


# ----------------------------------------------------------------------------- 03 ablation

#: factor -> (axis of the factor, partner axis for a 2-D grid, the paper's default cell)
ABLATION_GRIDS: Dict[str, dict] = {
    "zscore": {"normalize": ["zscore", "none", "mean", "rank"], "scope": ["layer", "row"]},
    "tau": {"tau": [0.3, 0.5, 0.7], "p_base": [0.2, 0.3, 0.4]},
    "p_base": {"p_base": [0.1, 0.2, 0.3, 0.4], "p_signal": [0.25, 0.5]},
    "p_gradient": {"p_signal": [0.0, 0.25, 0.5], "prefer": ["small", "big"]},
    "recalibration": {"recalibration": ["realized", "expected", "per_edge", "none"], "update": ["autograd", "reference"]},
    "update": {"update": ["autograd", "reference"], "signal_source": ["effective", "param"]},
    "signal_source": {"signal_source": ["effective", "param"], "grad_ema": [0.0, 0.9]},
}
DDC_DEFAULTS = {
    "normalize": "zscore",
    "scope": "layer",
    "tau": 0.5,
    "p_base": 0.3,
    "p_signal": 0.5,
    "prefer": "small",
    "recalibration": "realized",
    "update": "autograd",
    "signal_source": "effective",
    "grad_ema": 0.0,
}


def ablation_spec(name: str, recipe: str, profile: str, grid: Dict[str, list], seeds, **base) -> dict:
    """A DDC sweep over ``grid`` (method option -> levels).

    Raises:
        AttributeError: ``grid`` is not a mapping.
        TypeError: a level list or ``seeds`` is not iterable.
    """
    return {
        "name": name,
        "base": {"recipe": recipe, "profile": profile, "progress": False, "method": "ddc", "tag": "ddc", **base},
        "grid": {f"method_options.{axis}": list(levels) for axis, levels in grid.items()},
        "seeds": list(seeds),
    }


def cell_label(frame, axes: Sequence[str]):
    """One string per row naming its grid cell, e.g. ``normalize=zscore, scope=layer``.

    Raises:
        KeyError: ``frame`` lacks a column named in ``axes``.
    """
    return frame[list(axes)].astype(str).apply(lambda row: ", ".join(f"{a}={v}" for a, v in zip(axes, row)), axis=1)


def cell_values(label: str, axes: Sequence[str]) -> dict:
    """The inverse of :func:`cell_label` for one label: ``{axis: level as text}`` (empty when it names other axes).

    Raises:
        Nothing: a label that names other axes gives ``{}``.
    """
    values = dict(part.split("=", 1) for part in str(label).split(", ") if "=" in part)
    return values if set(axes) <= set(values) else {}


def figures_03_ablation(run_dir) -> List[str]:
    """Redraw notebook 03's ablation figures (the heatmap over two factors, test accuracy per setting) from its stored tables.

    Returns the figure files written.

    Raises:
        FileNotFoundError: a table 03 stores is missing from ``run_dir``.
    """
    import matplotlib.pyplot as plt
    from analysis import figures

    settings = load_json(run_dir, "settings")
    runs = load_table(run_dir, "runs")
    axes = settings["axes"]
    where = experiment_title(settings["experiment"])
    reference = str(settings.get("reference", ""))
    written = []
    if len(axes) == 2:
        # each cell gets the Holm p of its (merged) setting against the reference, and its own runs for its interval
        verdicts = load_table(run_dir, "verdicts").set_index("cell")
        degenerate = load_table(run_dir, "degenerate").set_index("cell")
        cells = runs.assign(cell=cell_label(runs, axes))
        cells["pvalue"] = cells.cell.map(degenerate.merged_label).map(verdicts.p_holm)
        ax = figures.ablation_heatmap(cells, x=axes[0], y=axes[1], value="test_acc", pvalues="pvalue",
                                      default=cell_values(reference.split(" ≡ ")[0], axes),
                                      default_name="default" if settings.get("reference_because") == "the paper default" else "reference")
        ax.set_title(f"Ablation of {settings['factor']} on {where}: mean test accuracy per setting "
                     f"(* Holm paired t p < 0.05 against {reference})")
        written += save_fig(ax, run_dir, "heatmap")
    runs = runs.assign(cell=cell_label(runs, axes))
    summary = load_table(run_dir, "summary")
    ax = figures.method_comparison(summary, value="test_acc", method_col="cell", points=runs)
    ax.set_title(f"Ablation of {settings['factor']} on {where}: test accuracy per setting")
    written += save_fig(ax, run_dir, "settings")
    plt.close("all")
    return written


# ----------------------------------------------------------------------------- shared statistics: regime, verdicts, degenerate settings

#: run columns that fingerprint what a run trained: runs equal in all of them, seed by seed, are the same run
FINGERPRINT = ("val_acc", "val_loss", "test_acc", "train_acc", "train_loss", "final_train_acc", "final_train_loss", "best_epoch")


def accuracy_summary(runs, *, by, value: str = "test_acc"):
    """:func:`analysis.stats.summarize` (mean, t interval over seeds) plus the test-set noise of one run:
    ``binomial_se``, the binomial standard error of an accuracy equal to the mean on ``n_test`` images.

    Raises:
        ValueError: a ``by`` or ``value`` column is missing, ``value`` is not numeric and finite, or ``runs`` is
            empty (:func:`analysis.stats.summarize`).
    """
    from analysis import stats

    by = [by] if isinstance(by, str) else list(by)
    table = stats.summarize(runs, value=value, by=by)
    if "n_test" in runs:
        sizes = runs.groupby(by, dropna=False)["n_test"].mean().rename("n_test").reset_index()
        table = table.merge(sizes, on=by, how="left")
        table["binomial_se"] = stats.binomial_se(table["mean"], table["n_test"])
    return table


def regime_table(runs, run_dir, *, method_col: str = "tag", by: Sequence[str] = (), window: float = 0.2,
                 tolerance: float = 0.01):
    """The regime of every method: does it fit its training data, how well does it generalise, has it converged?

    Training accuracy per epoch comes from the run store; see :func:`regime_from_rises` for the columns.

    Raises:
        AttributeError: ``runs`` lacks ``run_id`` or ``path``.
        FileNotFoundError: a run is neither in the store nor at its ``path`` (:func:`ddc.store.load_metrics`).
        ValueError: ``window`` is not in (0, 1] (:func:`analysis.stats.trend`).
        As :func:`regime_from_rises` for the other columns.
    """
    from analysis import stats

    from ddc.store import load_metrics

    metrics = load_metrics(run_paths(run_dir, runs))
    curves = metrics[(metrics.split == "train") & (metrics.metric == "acc")].sort_values(["run_id", "epoch"])
    rise = {run_id: stats.trend(group.value.to_numpy(), window=window)
            for run_id, group in curves.groupby("run_id", sort=False)}
    return regime_from_rises(runs.assign(train_rise=runs.run_id.map(rise)), method_col=method_col, by=by, window=window,
                             tolerance=tolerance)


def regime_from_rises(runs, *, method_col: str = "tag", by: Sequence[str] = (), window: float = 0.2, tolerance: float = 0.01):
    """Per (``by``..., method), over its seeds, from one row per run with ``train_rise`` (the rise of training
    accuracy over the last ``window`` of the budget, :func:`analysis.stats.trend`; NaN when not measurable):

    ``final_train_acc`` (training accuracy of the last epoch, masks on), ``train_acc`` and ``test_acc`` at the
    best-validation epoch, ``test_binomial_se`` (test-set noise of one run, from ``n_test``),
    ``generalization_gap`` with its t interval, ``train_rise``, ``converged`` (seeds whose rise is below
    ``tolerance``) of ``n``, ``judged`` (seeds with a measurable rise). A method still rising at the end of
    its budget underfits: its comparisons say so (:func:`regime_note`).

    Raises:
        KeyError: ``runs`` lacks a ``by`` column or ``method_col``.
        AttributeError: it lacks ``generalization_gap``, ``test_acc``, ``train_acc``, ``final_train_acc`` or
            ``train_rise``.
    """
    import numpy as np
    import pandas as pd
    from analysis import stats

    by = list(by)
    rows = []
    for key, group in runs.groupby(by + [method_col], sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        gap = group.generalization_gap.to_numpy(float)
        low, high = stats.mean_interval(gap) if len(gap) > 1 else (np.nan, np.nan)
        test = float(group.test_acc.mean())
        rows.append({**dict(zip(by + [method_col], key)), "n": len(group),
                     "final_train_acc": float(group.final_train_acc.mean()), "train_acc": float(group.train_acc.mean()),
                     "test_acc": test,
                     "test_binomial_se": float(stats.binomial_se(test, group.n_test.mean())) if "n_test" in group else np.nan,
                     "generalization_gap": float(gap.mean()), "gap_ci_low": low, "gap_ci_high": high,
                     "train_rise": float(group.train_rise.mean()),
                     "converged": int((group.train_rise < tolerance).sum()),
                     "judged": int(group.train_rise.notna().sum()), "window": window, "tolerance": tolerance})
    return pd.DataFrame(rows)


def regime_note(row) -> str:
    """``"train 0.93 / test 0.75 ± 0.010, converged (5 of 5 seeds)"``, or says that training was still rising.

    Raises:
        AttributeError: ``row`` lacks a column of :func:`regime_from_rises`.
    """
    text = (f"final training accuracy {row.final_train_acc:.3f}, test {row.test_acc:.3f} ± {row.test_binomial_se:.3f} "
            f"(binomial SE), gap {row.generalization_gap:+.3f}")
    if row.judged == 0:
        return text + ", convergence not judged (fewer than 3 epochs)"
    if row.converged == row.n:
        return text + f", converged by the end of the budget ({row.converged} of {row.n} seeds)"
    return (text + f", NOT converged: training accuracy still rose {row.train_rise:+.3f} over the last "
            f"{100 * row.window:.0f}% of epochs ({row.n - row.converged} of {row.n} seeds rising by >= {row.tolerance:g}); "
            f"its comparisons are those of an underfitted model")


def load_trained(run_path, cache: Optional[dict] = None):
    """``(config, splits, model)`` of a finished run: its own data splits and its best-validation weights, eval mode.

    ``cache`` (a dict) keeps loaded splits, so runs that differ only in the method share them.

    Raises:
        FileNotFoundError: ``config.json`` or ``model.pt`` is missing, or the dataset's files are not found
            (:func:`ddc.data.load`).
        KeyError: the config lacks a field it reads (``dataset``, ``seed``, ``val_fraction``, ``model``, a subset).
        ValueError: the config's data or model settings are refused (:func:`ddc.data.load`,
            :func:`ddc.models.build`).
        RuntimeError: the stored weights do not fit the model.
    """
    from ddc import data, models

    run_path = Path(run_path)
    config = json.loads((run_path / "config.json").read_text())
    data_seed = config["seed"] if config.get("data_seed") is None else config["data_seed"]  # as TrainConfig.source_seed
    keys = ("dataset", "data_root", "val_fraction", "train_subset", "val_subset", "test_subset", "classes")
    key = (data_seed,) + tuple(str(config.get(k)) for k in keys)
    if cache is not None and key in cache:
        splits = cache[key]
    else:
        splits = data.load(config["dataset"], root=config.get("data_root"), val_fraction=config["val_fraction"],
                           seed=data_seed, train_subset=config["train_subset"], val_subset=config["val_subset"],
                           test_subset=config["test_subset"], classes=config.get("classes"))
        if cache is not None:
            cache[key] = splits
    model = models.build(config["model"], input_shape=splits.input_shape, num_classes=splits.num_classes)
    model.load_state_dict(torch.load(run_path / "model.pt", weights_only=True))
    model.eval()
    return config, splits, model


@torch.no_grad()
def test_correct(run_path, cache: Optional[dict] = None, batch_size: int = 1000):
    """Per test example, whether the run's best-validation model classifies it correctly (bool array).

    Raises:
        As :func:`load_trained`: a missing run file or dataset (``FileNotFoundError``), a config it cannot use
            (``KeyError``, ``ValueError``), or weights that do not fit (``RuntimeError``).
    """
    _, splits, model = load_trained(run_path, cache)
    x, y = splits.test.tensors
    predictions = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return (predictions == y).numpy()


def mcnemar_table(runs, run_dir, pairs, *, method_col: str = "tag", by: Sequence[str] = ()):
    """McNemar's exact test for each ``(method, baseline)`` pair on each seed the two share (single-seed comparisons).

    Columns: ``<by...>, method, baseline, seed, n, acc_a, acc_b, diff, only_a, only_b, pvalue``.

    Raises:
        KeyError: ``runs`` lacks a ``by`` column or ``method_col``.
        AttributeError: it lacks ``run_id``, ``path`` or ``seed``.
        As :func:`load_trained` for each run it reloads.
    """
    import pandas as pd
    from analysis import stats

    by = list(by)
    paths = dict(zip(runs.run_id, run_paths(run_dir, runs)))
    cache, rows = {}, []
    for key, group in (runs.groupby(by, sort=True) if by else [((), runs)]):
        key = key if isinstance(key, tuple) else (key,)
        for method, baseline in pairs:
            a, b = group[group[method_col] == method], group[group[method_col] == baseline]
            for seed in sorted(set(a.seed) & set(b.seed)):
                run_a, run_b = a[a.seed == seed].run_id.iloc[0], b[b.seed == seed].run_id.iloc[0]
                result = stats.mcnemar(test_correct(paths[run_a], cache), test_correct(paths[run_b], cache))
                rows.append({**dict(zip(by, key)), "method": method, "baseline": baseline, "seed": seed, **result})
    return pd.DataFrame(rows)


def degenerate_settings(runs, run_dir, *, setting_col: str, layer: Optional[str] = None, columns: Sequence[str] = FINGERPRINT):
    """Settings that are not what their labels say: identical runs, or DropConnect at ``p_base`` in disguise.

    ``identical_to``: the first setting (sorted) whose runs equal this one's in every ``columns`` value, seed by
    seed (:func:`analysis.stats.identical_settings`). ``dropconnect_at_p_base``: every drop probability the
    recorder saw on ``layer`` (after the pass-through first step) equals ``p_base`` (``drop_prob_min ==
    drop_prob_max == p_base`` at every recorded step, every seed); None when the runs have no such records.
    ``note``: a sentence saying which, if any.

    Raises:
        ValueError: ``runs`` lacks ``setting_col`` or ``seed`` (:func:`analysis.stats.identical_settings`).
        AttributeError: it lacks ``run_id`` or ``path``.
        FileNotFoundError: a run is neither in the store nor at its ``path`` (:func:`ddc.store.load_records`).
    """
    import numpy as np
    import pandas as pd
    from analysis import stats

    from ddc.store import load_records

    present = [c for c in columns if c in runs]
    table = stats.identical_settings(runs, setting_col=setting_col, block_col="seed", columns=present)
    table = table.rename(columns={"group": "identical_to"})
    uniform = {}
    records = load_records(run_paths(run_dir, runs))
    if len(records):
        wanted = records[records.metric.isin(["drop_prob_min", "drop_prob_max"]) & ((records.layer == layer) if layer else True)]
        wide = wanted.pivot_table(index=["run_id", "step", "layer"], columns="metric", values="value").reset_index()
        p_base = runs.set_index("run_id")["p_base"] if "p_base" in runs else pd.Series(0.3, index=runs.run_id)
        if {"drop_prob_min", "drop_prob_max"} <= set(wide.columns):
            wide["p_base"] = wide.run_id.map(p_base)
            wide["uniform"] = (np.isclose(wide.drop_prob_min, wide.p_base, atol=1e-7)
                               & np.isclose(wide.drop_prob_max, wide.p_base, atol=1e-7))
            per_run = wide.groupby("run_id").uniform.all()
            setting_of = runs.set_index("run_id")[setting_col]
            for setting, flags in per_run.groupby(per_run.index.map(setting_of)):
                uniform[setting] = bool(flags.all())
    table["dropconnect_at_p_base"] = table[setting_col].map(lambda s: uniform.get(s))
    notes = []
    for row in table.itertuples():
        parts = []
        if row.identical_to != getattr(row, setting_col):
            parts.append(f"trains the same runs as {row.identical_to}")
        if row.dropconnect_at_p_base:
            p = runs.loc[runs[setting_col] == getattr(row, setting_col), "p_base"].iloc[0] if "p_base" in runs else None
            parts.append("reduces to DropConnect" + (f" at p_base = {p:g}" if p is not None else "")
                         + " (every recorded drop probability equals p_base)")
        notes.append("; ".join(parts))
    table["note"] = notes
    members = table.groupby("identical_to")[setting_col].apply(lambda group: " ≡ ".join(map(str, group)))
    table["merged_label"] = table["identical_to"].map(members)
    return table


def merge_degenerate(runs, degenerate, *, setting_col: str):
    """Runs with every group of identical settings kept once, under one label naming all its members
    (``"a ≡ b"``, :func:`degenerate_settings`' ``merged_label``), so an analysis counts it as one level.

    Raises:
        KeyError: ``degenerate`` lacks ``setting_col``, ``identical_to`` or ``merged_label``, or ``runs`` lacks
            ``setting_col``.
    """
    first = degenerate[degenerate[setting_col] == degenerate["identical_to"]]
    keep = runs[runs[setting_col].isin(first[setting_col])].copy()
    keep[setting_col] = keep[setting_col].map(dict(zip(first[setting_col], first["merged_label"])))
    return keep


def reference_setting(runs, default_label: str, *, setting_col: str = "cell", select: str = "val_acc"):
    """The setting every other one is compared with: the paper default when the grid has it (possibly merged
    with identical settings), else the setting with the highest mean ``select`` (validation accuracy; test
    accuracy never chooses). Returns ``(label, reason)``.

    Raises:
        KeyError: ``runs`` lacks ``setting_col`` or ``select``.
        ValueError: ``runs`` has no rows (and so no best setting).
    """
    for label in runs[setting_col].unique():
        if default_label in str(label).split(" ≡ "):
            return label, "the paper default"
    best = runs.groupby(setting_col)[select].mean().idxmax()
    return best, "the highest validation accuracy (the paper default is not in this grid)"


def model_default_layer(recipe_name: str, profile: str = "quick") -> str:
    """The first layer a recipe's model puts DDC on by default (the layer whose drop probabilities are recorded).

    Raises:
        ValueError: an unknown recipe or profile (:func:`ddc.recipes.recipe`).
    """
    from ddc import models, recipes

    return list(models.MODELS[recipes.recipe(recipe_name, profile)["model"]].ddc_layers)[0]
