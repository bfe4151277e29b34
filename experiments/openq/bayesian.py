"""Open question 08: the Bayesian reading of DDC (Monte-Carlo DDC at test time).

Models are trained with the trainer (``ddc.train.run`` through
``experiments.paper.run_specs``, so they land in the run store and are shared with
``02_baselines``), then reloaded from their ``model.pt`` and evaluated

* deterministically (eval mode, the plain network), and
* by Monte Carlo: the method that regularised the layer keeps sampling masks
  at test time and ``T`` softmax outputs are averaged (MC-Dropout,
  MC-DropConnect, MC-DDC). Only the regularised layer samples; every other
  module stays in eval mode. DDC's drop probabilities need a gradient signal,
  which a trained model does not store: we use the dense gradient of the mean
  training loss over the whole training subset at the final weights (the
  gradient DDC would see at its next step, without mini-batch noise). The
  signal is set once and never updated (no backward pass at test time).

Scores: accuracy, NLL, Brier score, expected calibration error (equal-width
confidence bins) with reliability diagrams, and out-of-distribution detection
as the AUROC of the predictive entropy, in-distribution test inputs against

* corrupted ones (additive Gaussian noise, 90-degree rotation), and
* held-out classes: models trained with a class filter (``TrainConfig.classes``,
  e.g. Fashion-MNIST classes 0-7) are shown the official test images of the
  classes they never saw (``DataSplits.heldout``, normalised with the training
  statistics). Runs without a filter have no ``auroc_heldout`` column.

The variational view: with keep ~ Bernoulli(1 - p) and a scale s, a weight's
effective value is the two-point mixture {0 with prob. p, s*w with prob. 1-p}.
Its mean is (1-p) s w, its standard deviation sqrt(p (1-p)) s |w|, so the
signal-to-noise ratio |E w| / sd(w) = sqrt((1-p)/p) depends on the edge only
through p. DropConnect's uniform p = 0.5 gives SNR 1 on every edge; DDC gives
each edge its own SNR, low for small-gradient edges (like a Gaussian-dropout
posterior with per-edge alpha = p / (1-p)).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ddc import functional as dfn
from experiments.paper import load_trained  # noqa: F401  (re-exported: the run's splits and best-validation weights)

NOTEBOOK = "08_oq_bayesian"

#: trained methods: the same specs as ``experiments.paper.BASELINE_METHODS`` (so 02's runs are reused)
TRAIN_METHODS: Dict[str, dict] = {
    "none": {"method": "none"},
    "dropout": {"method": "dropout", "method_options": {"p": 0.5}},
    "dropconnect": {"method": "dropconnect", "method_options": {"p": 0.5}},
    "ddc": {"method": "ddc"},
}
#: metrics where lower is better
LOWER_IS_BETTER = ("nll", "brier", "ece")
#: every score; ``auroc_heldout`` only exists for runs trained on a class subset
METRICS = ("acc", "nll", "brier", "ece", "auroc_noise", "auroc_rotation", "auroc_heldout")
#: the out-of-distribution inputs: corruptions of the test images, then held-out classes
OOD_KINDS = ("noise", "rotation", "heldout")
PROB_FLOOR = 1e-12


# ----------------------------------------------------------------------------- scores


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the targets under predictive probabilities ``(N, C)``.

    Raises:
        RuntimeError: a target is outside ``[0, C)``, or ``targets`` does not have one entry per row of ``probs``
            (torch's gather error).
    """
    picked = probs.gather(1, targets.view(-1, 1)).squeeze(1)
    return float(-picked.clamp_min(PROB_FLOOR).log().double().mean())


def brier(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-class Brier score: mean over examples of ``sum_c (p_c - onehot_c)^2``.

    Raises:
        RuntimeError: a target is outside ``[0, C)`` (torch's one-hot error), or ``targets`` does not have one
            entry per row of ``probs``.
    """
    onehot = F.one_hot(targets, probs.shape[1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(1).double().mean())


def reliability(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15):
    """Equal-width confidence bins on (0, 1]: per bin count, mean confidence and accuracy.

    Bin ``b`` holds confidences in ``(b/n, (b+1)/n]``. Returns a DataFrame with
    ``bin, lower, upper, count, confidence, accuracy`` (NaN for empty bins).

    Raises:
        RuntimeError: ``probs`` and ``targets`` differ in length (torch's broadcasting error).
    """
    import pandas as pd

    confidence, predicted = probs.max(1)
    correct = (predicted == targets).double()
    confidence = confidence.double()
    index = (torch.ceil(confidence * n_bins) - 1).clamp(0, n_bins - 1).long()
    counts = torch.bincount(index, minlength=n_bins).double()
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct)
    safe = counts.clamp_min(1)
    empty = counts == 0
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lower": np.arange(n_bins) / n_bins,
            "upper": np.arange(1, n_bins + 1) / n_bins,
            "count": counts.numpy().astype(int),
            "confidence": torch.where(empty, torch.nan, conf_sum / safe).numpy(),
            "accuracy": torch.where(empty, torch.nan, acc_sum / safe).numpy(),
        }
    )


def ece(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: ``sum_b n_b / N * |accuracy_b - confidence_b|``.

    Raises:
        RuntimeError: ``probs`` and ``targets`` differ in length (:func:`reliability`).
    """
    table = reliability(probs, targets, n_bins)
    used = table[table["count"] > 0]
    return float((used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / len(targets))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy (nats) per example.

    Raises:
        IndexError: ``probs`` has fewer than 2 dimensions.
    """
    return -(probs * probs.clamp_min(PROB_FLOOR).log()).sum(1)


def auroc(scores_in, scores_out) -> float:
    """AUROC of ``score`` for telling OOD (positive) from in-distribution inputs.

    ``P(score_out > score_in) + P(tie) / 2``, from the Mann-Whitney U statistic
    with mid-ranks.

    Raises:
        Nothing of its own: an empty sample gives NaN or inf; ``ValueError`` from numpy for values that are not
            numbers.
    """
    from scipy.stats import rankdata

    a = np.asarray(scores_in, dtype=float)
    b = np.asarray(scores_out, dtype=float)
    ranks = rankdata(np.concatenate([a, b]))
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


# ----------------------------------------------------------------------------- corruptions


def corrupt(x: torch.Tensor, kind: str, *, seed: int = 0, noise_sd: float = 1.0) -> torch.Tensor:
    """OOD versions of (normalised) images ``(N, C, H, W)``: ``noise`` or ``rotation`` (90 degrees).

    Raises:
        ValueError: ``kind`` is not 'noise' or 'rotation'.
    """
    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        return x + noise_sd * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if kind == "rotation":
        return torch.rot90(x, 1, dims=(-2, -1))
    raise ValueError(f"kind={kind!r}: choose 'noise' or 'rotation'")


# ----------------------------------------------------------------------------- trained models


def train_specs(recipe: str, profile: str, seeds: Sequence[int], device: str = "cpu", methods=None, **overrides) -> List[dict]:
    """The notebook's sweep: ``methods`` (default :data:`TRAIN_METHODS`) x ``seeds`` on ``recipe`` at ``profile``.

    ``overrides`` are TrainConfig fields laid over the recipe (``classes``,
    ``epochs``, ``train_subset``, ...); ``None`` values are dropped (the recipe's
    value stands).

    Raises:
        TypeError: a spec in ``methods`` is not a mapping, or ``seeds`` is not iterable
            (:func:`experiments.paper.sweep_spec`).
    """
    from experiments import paper

    base = {"device": device, **{k: v for k, v in overrides.items() if v is not None}}
    return [paper.sweep_spec(f"08-{recipe}", recipe, profile, methods or TRAIN_METHODS, seeds, **base)]


def kept_classes(num_classes: int, heldout: Sequence[int]) -> Optional[List[int]]:
    """The training classes when ``heldout`` classes are left out: ``None`` (all) for an empty ``heldout``.

    Raises ``ValueError`` for ids outside ``[0, num_classes)``, repeats, or
    fewer than two classes left.
    """
    heldout = list(heldout or [])
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes for c in heldout) or len(set(heldout)) != len(heldout):
        raise ValueError(f"heldout_classes={heldout!r} must be distinct integers in [0, {num_classes - 1}]")
    kept = [c for c in range(num_classes) if c not in heldout]
    if len(kept) < 2:
        raise ValueError(f"heldout_classes={heldout!r} leaves {len(kept)} class(es); at least 2 must remain")
    return kept if heldout else None


def _check_head(model) -> None:
    if not all(hasattr(model, name) for name in ("linear1", "act4", "linear2")):
        raise ValueError(f"{type(model).__name__}: MC evaluation here needs SimpleCNN1's head linear1 -> act4 -> linear2")


def head(model, h: torch.Tensor) -> torch.Tensor:
    """SimpleCNN1 from ``linear1``'s input to the logits (where every method acts).

    Raises:
        AttributeError: ``model`` lacks ``linear1``, ``act4`` or ``linear2``.
        RuntimeError: ``h`` does not fit ``linear1``.
    """
    return model.linear2(model.act4(model.linear1(h)))


@torch.no_grad()
def head_inputs(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The input of ``linear1`` (flattened conv features) in eval mode, computed once.

    Raises:
        ValueError: ``model`` lacks SimpleCNN1's head (``linear1``, ``act4``, ``linear2``).
        RuntimeError: ``x`` is empty or does not fit the model.
    """
    _check_head(model)
    captured = []
    hook = model.linear1.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    try:
        model.eval()
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        hook.remove()
    return torch.cat(captured)


def gradient_signal(model, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dense gradient of the mean training loss w.r.t. ``linear1.weight`` (no mask), from cached inputs.

    Raises:
        AttributeError: ``model`` lacks ``linear1``, ``act4`` or ``linear2``.
        RuntimeError: ``h`` does not fit the head, ``targets`` has another length, or a target is outside the
            classes.
    """
    weight = model.linear1.weight
    weight.grad = None
    with torch.enable_grad():
        loss = F.cross_entropy(head(model, h), targets)
        (grad,) = torch.autograd.grad(loss, weight)
    return grad.detach()


@torch.no_grad()
def mc_probabilities(
    model, h: torch.Tensor, method: str, options: dict, *, samples: int, seed: int, signal=None
) -> torch.Tensor:
    """Mean softmax over ``samples`` masked forward passes of the head.

    ``method`` is put on ``linear1`` with ``ddc.apply`` (its own seeded
    generator); only ``linear1`` is switched to train mode, so only it samples.
    For ``ddc`` the gradient ``signal`` is loaded into the method and is never
    updated (no backward pass). ``method="none"`` gives the deterministic output.

    Raises:
        ValueError: ``method='ddc'`` without the gradient signal, or a model without SimpleCNN1's head (linear1, act4, linear2).
    """
    from ddc.apply import apply

    _check_head(model)
    model.eval()
    if method == "none" or samples <= 0:
        return torch.softmax(head(model, h), 1)
    handle = apply(model, method, layers=["linear1"], seed=seed, **options)
    try:
        if method == "ddc":
            if signal is None:
                raise ValueError("method='ddc' needs the gradient signal")
            handle.methods["linear1"].weight_signal = signal.clone()
        model.linear1.train()
        total = torch.zeros(len(h), model.linear2.out_features, dtype=torch.float64)
        for _ in range(samples):
            total += torch.softmax(head(model, h), 1).double()
        return (total / samples).to(h.dtype)
    finally:
        model.linear1.eval()
        handle.remove()


def evaluate_run(run_path, *, label: str, samples: int, noise_sd: float = 1.0, n_bins: int = 15, cache=None):
    """Deterministic and (for a masking method) MC scores of one run.

    Returns ``(scores, reliability, posterior)``: one row per inference mode,
    the reliability bins per mode, and for DDC runs the per-edge implied
    posterior of ``linear1`` (else None).

    Raises:
        As :func:`experiments.paper.load_trained` (missing run files or data, a config it cannot use, weights that
            do not fit).
        KeyError: the config lacks ``seed``, ``method``, ``method_options`` or ``run_id``.
        ValueError: the model lacks SimpleCNN1's head, or the config names an unknown method
            (:func:`ddc.apply.method_defaults`).
    """
    import pandas as pd

    config, splits, model = load_trained(run_path, cache)
    seed = int(config["seed"])
    x_test, y_test = splits.test.tensors
    inputs = {"clean": head_inputs(model, x_test)}
    for kind in ("noise", "rotation"):
        inputs[kind] = head_inputs(model, corrupt(x_test, kind, seed=seed, noise_sd=noise_sd))
    if splits.heldout is not None and len(splits.heldout):
        inputs["heldout"] = head_inputs(model, splits.heldout.tensors[0])
    from ddc.apply import method_defaults

    method = config["method"]
    options = {**method_defaults(method), **config["method_options"]}
    signal = None
    if method == "ddc":
        h_train = head_inputs(model, splits.train.tensors[0])
        signal = gradient_signal(model, h_train, splits.train.tensors[1])
    modes = [("deterministic", "none")] + ([("mc", method)] if method != "none" else [])
    rows, bins = [], []
    for inference, used in modes:
        probs = {
            kind: mc_probabilities(model, h, used, options, samples=samples, seed=seed + 17 * i, signal=signal)
            for i, (kind, h) in enumerate(inputs.items())
        }
        clean = probs["clean"]
        ent = {kind: entropy(p).numpy() for kind, p in probs.items()}
        row = {
            "run_id": config["run_id"], "seed": seed, "train_method": label, "inference": inference,
            "model": f"{'mc' if inference == 'mc' else 'det'}:{label}", "samples": samples if inference == "mc" else 1,
            "acc": float((clean.argmax(1) == y_test).double().mean()),
            "nll": nll(clean, y_test), "brier": brier(clean, y_test), "ece": ece(clean, y_test, n_bins),
            **{f"auroc_{kind}": auroc(ent["clean"], ent[kind]) for kind in OOD_KINDS if kind in ent},
            **{f"entropy_{kind}": float(values.mean()) for kind, values in ent.items()},
            "n_test": len(y_test), **({"n_heldout": len(ent["heldout"])} if "heldout" in ent else {}),
        }
        rows.append(row)
        bins.append(reliability(clean, y_test, n_bins).assign(seed=seed, model=row["model"]))
    posterior = None
    if method == "ddc":
        posterior = implied_posterior(model.linear1.weight.detach(), signal, options).assign(seed=seed, run_id=config["run_id"])
    return pd.DataFrame(rows), pd.concat(bins, ignore_index=True), posterior


def evaluate_runs(runs, run_paths, *, samples: int, noise_sd: float = 1.0, n_bins: int = 15, log=print):
    """:func:`evaluate_run` over a runs table (``tag`` = method label); the three tables concatenated.

    Raises:
        KeyError: ``runs`` lacks ``tag`` or ``seed``.
        As :func:`evaluate_run` for each run.
        ValueError: ``runs`` is empty (nothing to concatenate).
    """
    import pandas as pd

    scores, bins, posteriors, cache = [], [], [], {}
    for (_, run), path in zip(runs.iterrows(), run_paths):
        s, b, post = evaluate_run(path, label=run["tag"], samples=samples, noise_sd=noise_sd, n_bins=n_bins, cache=cache)
        scores.append(s)
        bins.append(b)
        if post is not None:
            posteriors.append(post)
        log(f"{run['tag']} seed {run['seed']}: evaluated")
    posterior = pd.concat(posteriors, ignore_index=True) if posteriors else pd.DataFrame()
    return pd.concat(scores, ignore_index=True), pd.concat(bins, ignore_index=True), posterior


# ----------------------------------------------------------------------------- implied posterior


def mixture_moments(weight: torch.Tensor, drop_prob: torch.Tensor, scale) -> Dict[str, torch.Tensor]:
    """Mean, standard deviation and SNR of the two-point mixture {0: p, scale*w: 1-p}, per edge.

    Raises:
        RuntimeError: ``weight`` and ``drop_prob`` do not broadcast.
        TypeError: ``scale`` is not a number or tensor.
    """
    p = drop_prob.double()
    w = weight.double()
    s = torch.as_tensor(scale, dtype=torch.float64)
    mean = (1 - p) * s * w
    sd = torch.sqrt(p * (1 - p)) * s * w.abs()
    snr = torch.sqrt((1 - p) / p.clamp_min(PROB_FLOOR))
    return {"mean": mean, "sd": sd, "snr": snr, "mean_ratio": (1 - p) * s * torch.ones_like(w)}


def implied_posterior(weight: torch.Tensor, signal: torch.Tensor, options: dict):
    """Per-edge implied weight distribution of a DDC layer (one row per edge).

    Drop probabilities from ``signal`` with the run's DDC options; the scale is
    the expected recalibration ``1 / (1 - mean p)`` (the realised keep fraction
    of a large layer is within a fraction of a percent of it). Columns
    ``grad_abs, weight_abs, z_grad, z_weight, drop_prob, mean, sd, snr,
    mean_ratio`` (``mean_ratio = E[w_eff] / w``), plus ``snr_dropconnect`` (1
    for DropConnect at p = 0.5).

    Raises:
        ValueError: a DDC option in ``options`` is out of range (:func:`ddc.functional.drop_probability`).
        RuntimeError: ``weight`` and ``signal`` differ in shape.
    """
    import pandas as pd

    keys = ("p_base", "p_signal", "tau", "prefer", "normalize")
    kwargs = {k: options[k] for k in keys if k in options}
    drop_prob = dfn.drop_probability(signal, **kwargs)
    scale = 1.0 / (1.0 - drop_prob.double().mean())
    moments = mixture_moments(weight, drop_prob, scale)
    g, w = signal.abs().double(), weight.abs().double()
    def z(magnitude):  # DDC's layer z-score (ddc.functional.normalized_signal)
        return dfn.normalized_signal(magnitude, normalize="zscore", scope="layer")

    return pd.DataFrame(
        {
            "edge": np.arange(weight.numel()),
            "grad_abs": g.flatten().numpy(), "weight_abs": w.flatten().numpy(),
            "z_grad": z(g).flatten().numpy(), "z_weight": z(w).flatten().numpy(),
            "drop_prob": drop_prob.double().flatten().numpy(),
            **{k: v.flatten().numpy() for k, v in moments.items()},
            "snr_dropconnect": 1.0,
        }
    )


def posterior_correlations(posterior):
    """Per seed: Spearman correlation of the implied SNR with |g| and with |w|, and the SNR range.

    Raises:
        KeyError: ``posterior`` lacks ``seed``.
        AttributeError: it lacks ``snr``, ``grad_abs``, ``weight_abs`` or ``drop_prob``.
    """
    import pandas as pd
    from scipy.stats import spearmanr

    rows = []
    for seed, group in posterior.groupby("seed", sort=True):
        rows.append(
            {
                "seed": seed,
                "rho_snr_grad": float(spearmanr(group.snr, group.grad_abs).statistic),
                "rho_snr_weight": float(spearmanr(group.snr, group.weight_abs).statistic),
                "snr_mean": float(group.snr.mean()),
                "snr_min": float(group.snr.min()),
                "snr_max": float(group.snr.max()),
                "mean_drop_prob": float(group.drop_prob.mean()),
                "frac_above_dropconnect": float((group.snr > 1.0).mean()),
            }
        )
    return pd.DataFrame(rows)


def posterior_grid(posterior, bins: int = 8):
    """Mean implied SNR in quantile bins of (|g|, |w|), pooled over seeds (for the heatmap).

    Raises:
        AttributeError: ``posterior`` lacks ``grad_abs`` or ``weight_abs``.
        KeyError: it lacks ``snr``, ``drop_prob``, ``z_grad`` or ``z_weight``.
    """
    import pandas as pd

    frame = posterior.assign(
        grad_bin=pd.qcut(posterior.grad_abs.rank(method="first"), bins, labels=False),
        weight_bin=pd.qcut(posterior.weight_abs.rank(method="first"), bins, labels=False),
    )
    return frame.groupby(["grad_bin", "weight_bin"], as_index=False).agg(
        snr=("snr", "mean"), drop_prob=("drop_prob", "mean"), z_grad=("z_grad", "mean"), z_weight=("z_weight", "mean"), n=("snr", "size")
    )


# ----------------------------------------------------------------------------- figures


def _summary_n(scores, order):
    """A summary-like frame (n per model) for the scores figure's interval label."""
    import pandas as pd

    n = scores.groupby("model").seed.nunique().reindex(order)
    return pd.DataFrame({"model": order, "n": n.to_numpy(), "confidence_level": 0.95, "ci_method": "t"})


def figures(run_dir) -> List[str]:
    """Rebuild every figure of the notebook from ``run_dir/results``; returns the files written.

    Raises:
        FileNotFoundError: a table notebook 08 stores is missing from ``run_dir``.
    """
    import matplotlib.pyplot as plt
    from analysis import figures as afig

    from experiments.paper import load_table

    scores = load_table(run_dir, "scores")
    order = sorted(scores.model.unique())
    look = afig.styles(order)
    written = _reliability_figure(run_dir, scores, order, look)
    written += _scores_figure(run_dir, scores, order)
    written += _entropy_figure(run_dir, scores, order)
    written += _implied_posterior_figure(run_dir)
    plt.close("all")
    return written


def _reliability_figure(run_dir, scores, order: List[str], look: dict) -> List[str]:
    """Reliability diagram: accuracy against confidence per bin, pooled over seeds, one line per model."""
    from analysis import figures as afig

    from experiments.paper import load_table, save_fig

    bins = load_table(run_dir, "reliability")
    ax = afig.new_axes(7.5, 5.0)
    pooled = bins.assign(conf_sum=bins.confidence.fillna(0) * bins["count"], acc_sum=bins.accuracy.fillna(0) * bins["count"])
    pooled = pooled.groupby(["model", "bin"], as_index=False)[["count", "conf_sum", "acc_sum"]].sum()
    pooled = pooled[pooled["count"] > 0]
    for name in order:
        part = pooled[pooled.model == name]
        ax.plot(part.conf_sum / part["count"], part.acc_sum / part["count"], marker=look[name]["marker"], ms=4,
                color=look[name]["color"], ls="--" if name.startswith("det:") else "-", label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence (mean in the bin)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(f"Reliability diagram, pooled over {scores.seed.nunique()} seeds")
    afig.place_legend(ax, title="det: eval mode (dashed)\nmc: MC average (solid)")
    return save_fig(ax, run_dir, "reliability")


def _scores_figure(run_dir, scores, order: List[str]) -> List[str]:
    """One panel per score (NLL, ECE, AUROCs): each model's mean, interval and single seeds."""
    import matplotlib.pyplot as plt
    from analysis import figures as afig

    from experiments.paper import save_fig

    shown_metrics = [m for m in ("nll", "ece", "auroc_heldout", "auroc_noise", "auroc_rotation") if m in scores]
    fig, axes = plt.subplots(1, len(shown_metrics), figsize=(3.4 * len(shown_metrics) + 1.6, 1.6 + 0.34 * len(order)),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, metric in zip(axes[0], shown_metrics):
        afig.method_comparison(scores, value=metric, method_col="model", order=order, ax=ax)
        ax.set_xlabel(afig.axis_label(metric))
    fig.suptitle(f"Scores per model: {afig.interval_label(_summary_n(scores, order))}; dots: single seeds", fontsize="medium")
    return save_fig(fig, run_dir, "scores")


def _entropy_figure(run_dir, scores, order: List[str]) -> List[str]:
    """Mean predictive entropy per model on the test inputs and on each out-of-distribution kind."""
    import seaborn as sns
    from analysis import figures as afig

    from experiments.paper import save_fig

    kinds = ["clean"] + [k for k in OOD_KINDS if f"entropy_{k}" in scores]
    long = scores.melt(id_vars=["model", "seed"], value_vars=[f"entropy_{k}" for k in kinds], var_name="inputs", value_name="entropy")
    long["inputs"] = long["inputs"].str.removeprefix("entropy_")
    ax = afig.new_axes(7.5, 1.6 + 0.5 * len(order))
    sns.barplot(long, y="model", x="entropy", hue="inputs", order=order, hue_order=kinds, errorbar=None, alpha=0.6, ax=ax,
                orient="h")
    sns.stripplot(long, y="model", x="entropy", hue="inputs", order=order, hue_order=kinds, dodge=True, palette="dark:black",
                  size=3, legend=False, ax=ax, orient="h")
    ax.set_xlabel("mean predictive entropy (nats)\nbars: mean over seeds; dots: single seeds")
    ax.set_ylabel("")
    ax.set_title("Predictive entropy by input: in-distribution test vs out of distribution")
    afig.place_legend(ax, title="inputs")
    return save_fig(ax, run_dir, "entropy")


def _implied_posterior_figure(run_dir) -> List[str]:
    """DDC's implied per-edge SNR ``sqrt((1-p)/p)``: against z(|g|) per edge, and its mean per |g| and |w| bin."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from analysis import figures as afig

    from experiments.paper import load_table, save_fig

    posterior = load_table(run_dir, "posterior")
    if posterior.empty:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    shown = posterior.sample(min(len(posterior), 20000), random_state=0)
    points = axes[0].scatter(shown.z_grad, shown.snr, c=shown.z_weight.clip(-2, 3), s=3, cmap="viridis", alpha=0.5)
    fig.colorbar(points, ax=axes[0], label="z(|w|) (clipped to [-2, 3])")
    axes[0].axhline(1.0, color=afig.METHOD_STYLES["dropconnect"].color, ls="--")
    axes[0].annotate("DropConnect p = 0.5: SNR 1", xy=(1.0, 1.0), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                     textcoords="offset points", ha="right", va="bottom", fontsize="small",
                     color=afig.METHOD_STYLES["dropconnect"].color)
    axes[0].set_xlabel("z(|g|) (DDC's normalised gradient magnitude)")
    axes[0].set_ylabel("implied SNR  |E w| / sd(w)  = sqrt((1-p)/p)")
    axes[0].set_title("DDC's implied per-edge signal-to-noise ratio")
    grid = load_table(run_dir, "posterior_grid")
    table = grid.pivot(index="weight_bin", columns="grad_bin", values="snr").sort_index(ascending=False)
    sns.heatmap(table, ax=axes[1], cmap="viridis", annot=True, fmt=".2f", annot_kws={"fontsize": 6},
                cbar_kws={"label": "mean implied SNR"})
    axes[1].tick_params(axis="y", labelrotation=0)
    axes[1].set_xlabel("|g| quantile bin (low -> high)")
    axes[1].set_ylabel("|w| quantile bin")
    axes[1].set_title("mean implied SNR by |g| and |w| bin")
    return save_fig(fig, run_dir, "implied_posterior")
