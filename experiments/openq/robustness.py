"""Open question 4 (notebook ``09_oq_robustness``): how robust is DDC to its hyperparameters?

DDC's three numbers, ``tau``, ``p_base`` and ``p_signal`` (the paper's
p_gradient), are varied

- **independently**: a one-at-a-time (OAT) design around the paper's default
  (tau 0.5, p_base 0.3, p_signal 0.5), each factor over its levels with the
  others at their default;
- **jointly**: a small full-factorial grid.

Every setting must satisfy ``0 < tau < 1`` and ``p_base + p_signal <= 1``
(:func:`valid`); invalid grid points are dropped and reported.

Analysis per experiment (architecture x dataset): the variance of test
accuracy each factor and interaction explains (type-II ANOVA on the joint
grid; one-way per factor on the OAT slices), the region of settings within a
practical-equivalence margin of the best one
(:func:`analysis.stats.practical_equivalence`: two one-sided paired t-tests
against the setting with the best *validation* accuracy), and whether
the best region transfers between experiments (:func:`transfer`: Spearman
correlation of the setting means, the accuracy lost in one experiment by
using the other's best setting, overlap of the regions).
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

from experiments import paper

NOTEBOOK = "09_oq_robustness"
FACTORS = ("tau", "p_base", "p_signal")
DEFAULT = {"tau": 0.5, "p_base": 0.3, "p_signal": 0.5}


# ----------------------------------------------------------------------------- the design


def valid(setting: Dict[str, float]) -> bool:
    """``0 < tau < 1``, ``p_base, p_signal >= 0`` and ``p_base + p_signal <= 1``.

    Raises:
        KeyError: ``setting`` lacks one of :data:`FACTORS`.
        ValueError, TypeError: a value is not a number.
    """
    from ddc.functional import check_drop_config

    tau, p_base, p_signal = (float(setting[f]) for f in FACTORS)
    try:
        check_drop_config(p_base, p_signal, tau)  # the rule DDC itself applies
    except ValueError:
        return False
    return True


def setting_label(setting: Dict[str, float]) -> str:
    """A setting's name, ``tau=..,p_base=..,p_signal=..`` in :data:`FACTORS` order.

    Raises:
        KeyError: ``setting`` lacks one of the factors.
    """
    return ",".join(f"{f}={float(setting[f]):g}" for f in FACTORS)


def design(oat: Dict[str, Sequence[float]], joint: Dict[str, Sequence[float]], default: Optional[Dict[str, float]] = None):
    """The settings to train: OAT around ``default`` plus the full grid of ``joint``.

    Factors missing from ``joint`` stay at their default there. Returns
    ``(settings, dropped)``: a DataFrame with one row per distinct valid setting
    (``label, tau, p_base, p_signal, is_default, oat_factor`` (the factor an OAT
    point varies; ``"default"`` for the centre; None when not an OAT point),
    ``in_joint``), and the list of invalid settings that were left out.

    Raises:
        ValueError: ``oat`` or ``joint`` names an unknown factor.
    """
    import pandas as pd

    default = {**DEFAULT, **(default or {})}
    unknown = sorted((set(oat) | set(joint)) - set(FACTORS))
    if unknown:
        raise ValueError(f"unknown factor(s) {unknown}; factors: {', '.join(FACTORS)}")
    rows: Dict[str, dict] = {}
    dropped: List[dict] = []

    def add(setting, **flags):
        setting = {f: float(setting[f]) for f in FACTORS}
        if not valid(setting):
            if setting not in dropped:
                dropped.append(setting)
            return
        row = rows.setdefault(setting_label(setting), {"label": setting_label(setting), **setting, "is_default": setting == default,
                                                       "oat_factor": None, "in_joint": False})
        if flags.get("oat_factor") and row["oat_factor"] is None:
            row["oat_factor"] = flags["oat_factor"]
        row["in_joint"] |= flags.get("in_joint", False)

    add(default, oat_factor="default")
    for factor, levels in oat.items():
        for level in levels:
            point = {**default, factor: level}
            add(point, oat_factor="default" if point == default else factor)
    axes = [joint.get(f, [default[f]]) for f in FACTORS]
    for values in itertools.product(*axes):
        add(dict(zip(FACTORS, values)), in_joint=True)
    return pd.DataFrame(list(rows.values())), dropped


def check_resnet_on_mnist1d() -> str:
    """Whether ResNet-20 accepts MNIST-1D's (1, 40) input through ``ddc.models.build``, in words.

    Raises:
        Nothing: :func:`ddc.models.build`'s ``ValueError`` is caught and returned as words.
    """
    from ddc.models import build

    try:
        build("resnet20", input_shape=(1, 40), num_classes=10)
    except ValueError as error:
        return f"ResNet-20 does not accept MNIST-1D: {error}"
    return "ResNet-20 accepts MNIST-1D"


def spec(experiment: str, fields: dict, profile: str, settings, seeds, *, device: str = "cpu") -> dict:
    """One sweep per experiment: DDC at every setting (variant label = setting label).

    Raises:
        KeyError: ``fields`` has no ``recipe``.
        AttributeError: ``settings`` lacks ``label`` or a factor column.
    """
    recipe = fields["recipe"]
    overrides = {k: v for k, v in fields.items() if k != "recipe"}
    methods = {
        row.label: {"method": "ddc", "method_options": {f: float(getattr(row, f)) for f in FACTORS}}
        for row in settings.itertuples()
    }
    return paper.sweep_spec(f"09-{experiment}", recipe, profile, methods, seeds, device=device, **overrides)


def annotate(runs, settings):
    """Add ``experiment`` and the design flags (joined on the setting label).

    Raises:
        KeyError: ``runs`` lacks ``sweep``, or ``settings`` lacks ``label``, ``is_default``, ``oat_factor`` or
            ``in_joint``.
        AttributeError: ``sweep`` is not text.
    """
    runs = runs.copy()
    runs["experiment"] = runs["sweep"].str.removeprefix("09-")
    runs = runs.rename(columns={"variant": "label"})
    flags = settings[["label", "is_default", "oat_factor", "in_joint"]]
    return runs.drop(columns=[c for c in ("is_default", "oat_factor", "in_joint") if c in runs], errors="ignore").merge(flags, on="label", how="left")


# ----------------------------------------------------------------------------- statistics


def _varying(frame, factors=FACTORS) -> List[str]:
    return [f for f in factors if frame[f].nunique() > 1]


def joint_decomposition(runs, *, value: str = "test_acc"):
    """Per experiment, on the joint grid: type-II ANOVA variance shares with all interactions among the
    factors and the seed as a block (main effects only when there are no residual degrees of freedom).
    Columns: ``experiment, term, sum_sq, df, eta_sq, partial_eta_sq, omega_sq, pvalue`` (``term`` "seed":
    the share the seeds explain).

    Raises:
        AttributeError: ``runs`` lacks ``in_joint``.
        KeyError: it lacks ``experiment``, ``value`` or a factor column.
        ValueError: no ANOVA is possible on an experiment's grid, with or without interactions
            (:func:`analysis.stats.anova`).
    """
    import pandas as pd

    frames = []
    for experiment, group in runs[runs.in_joint].groupby("experiment", sort=True):
        factors = _varying(group)
        if not factors:
            continue
        frames.append(_decompose(group, value, factors).assign(experiment=experiment))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _decompose(frame, value, factors, block: Optional[str] = "seed"):
    """Type-II variance shares and p-values; the seeds pair the runs, so ``block`` (a column) enters as an
    additive block when it has at least 2 levels (see :func:`analysis.stats.anova`)."""
    from analysis import stats

    block = block if block is not None and block in frame and frame[block].nunique() >= 2 else None
    for interactions in (True, False):
        try:
            shares = stats.variance_decomposition(frame, value=value, factors=factors, interactions=interactions, block=block)
            table = stats.anova(frame, value=value, factors=factors, interactions=interactions, block=block)
        except ValueError:
            continue
        return shares.merge(table[["term", "pvalue"]], on="term", how="left").assign(interactions=interactions, block=block or "")
    raise ValueError(f"no ANOVA possible for factors {factors} on {len(frame)} rows")


def pooled_decomposition(runs, *, value: str = "test_acc"):
    """Joint grid pooled over experiments: the ``experiment:factor`` interactions measure how much the
    factors' effects differ between experiments (effects that do not transfer).

    Seeds pair runs within an experiment, so every (experiment, seed) block is centred on its own mean: the
    blocks' spread gets its own row (``experiment_seed``) and the terms are fitted to the within-block
    variation. Shares (``eta_sq``) are of the variance within experiments. The p-values are left out (NaN):
    the within-block residual would count the removed block means as degrees of freedom.

    Raises:
        AttributeError: ``runs`` lacks ``in_joint``.
        KeyError: it lacks ``experiment``, ``seed``, ``value`` or a factor column.
        ValueError: no ANOVA is possible on the pooled grid (:func:`analysis.stats.anova`).
    """
    import numpy as np
    import pandas as pd

    joint = runs[runs.in_joint].copy()
    within_experiment = joint[value] - joint.groupby("experiment")[value].transform("mean")
    block_mean = joint.groupby(["experiment", "seed"])[value].transform("mean")
    joint["centred"] = joint[value] - block_mean
    factors = ["experiment", *_varying(joint)]
    table = _decompose(joint, "centred", factors, block=None)
    ss_within = float((within_experiment**2).sum())
    ss_blocks = float(((block_mean - joint.groupby("experiment")[value].transform("mean")) ** 2).sum())
    scale = (ss_within - ss_blocks) / ss_within if ss_within > 0 else np.nan
    table["eta_sq"] = table["eta_sq"] * scale
    table["pvalue"] = np.nan
    blocks = pd.DataFrame([{"term": "experiment_seed", "sum_sq": ss_blocks,
                            "df": float(joint.groupby(["experiment", "seed"]).ngroups - joint.experiment.nunique()),
                            "eta_sq": ss_blocks / ss_within if ss_within > 0 else np.nan}])
    return pd.concat([table, blocks], ignore_index=True)


def oat_effects(runs, *, value: str = "test_acc", rng=None, n_resamples=None):
    """Per experiment and factor, on its OAT slice (the factor varied, the others at default): the one-way
    variance share (seed-blocked), and every level against the default, paired by seed
    (:func:`analysis.verdicts.paired_verdicts`; a secondary family, Holm over all of them).
    Returns ``(shares, versus_default)``. ``rng``/``n_resamples`` are accepted for old callers.

    Raises:
        AttributeError: ``runs`` lacks ``oat_factor``, ``is_default``, ``label`` or ``seed``.
        ValueError: no ANOVA is possible on a factor's slice, or the paired verdicts refuse the frame (a missing
            column; :func:`analysis.verdicts.paired_verdicts`).
    """
    import pandas as pd
    from analysis import verdicts as V

    shares, versus = [], []
    for experiment, group in runs[runs.oat_factor.notna()].groupby("experiment", sort=True):
        for factor in FACTORS:
            part = group[group.oat_factor.isin([factor, "default"])]
            if part[factor].nunique() < 2:
                continue
            table = _decompose(part, value, [factor])
            row = table[table.term == factor].iloc[0]
            shares.append({"experiment": experiment, "factor": factor, "levels": int(part[factor].nunique()), "n": len(part),
                           "eta_sq": row.eta_sq, "omega_sq": row.omega_sq, "pvalue": row.pvalue,
                           "range_of_means": float(part.groupby(factor)[value].mean().agg(lambda m: m.max() - m.min()))})
        default_label = group.loc[group.is_default, "label"]
        if default_label.empty or group.seed.nunique() < 2 or group.label.nunique() < 2:
            continue
        reference = default_label.iloc[0]
        pairs = [(label, reference) for label in sorted(group.label.unique()) if label != reference]
        versus.append(V.paired_verdicts(group.drop_duplicates(["label", "seed"]), value=value, pairs=pairs, method_col="label",
                                        family="secondary").assign(experiment=experiment))
    if not versus:
        return pd.DataFrame(shares), pd.DataFrame()
    table = V.apply_families(pd.concat(versus, ignore_index=True))
    factor_of = runs.drop_duplicates("label").set_index("label")
    table = table.assign(factor=table.label.map(factor_of.oat_factor), **{f: table.label.map(factor_of[f]) for f in FACTORS})
    return pd.DataFrame(shares), table


def equivalence(runs, *, margin: float, value: str = "test_acc", select: str = "val_acc", alpha: float = 0.05):
    """Per experiment: :func:`analysis.stats.practical_equivalence` over every setting, paired by seed.

    The reference ("best") setting is the one with the highest mean ``select``
    (validation accuracy): validation chooses, ``value`` (test accuracy) reports.
    Equivalence within ``±margin`` is a paired TOST at ``alpha``, Holm-adjusted over
    the experiment's settings (the notebook's primary family).

    Added columns: ``identical_to`` (a setting whose runs this one's equal, seed by
    seed: a degenerate level, :func:`analysis.stats.identical_settings`),
    ``dropconnect_at_p_base`` (``p_signal = 0``: every edge is dropped with
    ``p_base``), ``verdict`` (``reference`` / ``equivalent`` / ``not shown
    equivalent``, or ``exploratory`` below
    :data:`analysis.verdicts.MIN_VERDICT_N` paired seeds).

    Raises:
        ValueError: ``runs`` is empty, or :func:`analysis.stats.practical_equivalence` refuses it (a missing or
            non-finite column, ``margin`` not positive, ``alpha`` not in (0, 0.5)).
        KeyError: ``runs`` lacks ``experiment``.
    """
    import pandas as pd
    from analysis import stats
    from analysis.verdicts import MIN_VERDICT_N

    frames = []
    for experiment, group in runs.groupby("experiment", sort=True):
        table = stats.practical_equivalence(group, value=value, select=select, by=list(FACTORS), margin=margin,
                                            block_col="seed", alpha=alpha)
        table = table.assign(experiment=experiment, label=[setting_label(r) for r in table[list(FACTORS)].to_dict("records")])
        fingerprint = [c for c in ("val_acc", "test_acc", "train_acc", "train_loss", "final_train_acc", "best_epoch") if c in group]
        same = stats.identical_settings(group, setting_col="label", block_col="seed", columns=fingerprint).set_index("label")
        table["identical_to"] = table.label.map(same.group)
        table["dropconnect_at_p_base"] = table.p_signal == 0
        pairs = group.groupby("label").seed.nunique()
        table["verdict"] = ["reference" if r.is_best else "exploratory" if pairs[r.label] < MIN_VERDICT_N
                            else "equivalent" if r.within_margin else "not shown equivalent" for r in table.itertuples()]
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def regime_all(runs, run_dir):
    """:func:`experiments.paper.regime_table` for every setting of every experiment.

    Raises:
        As :func:`experiments.paper.regime_table` (missing run columns or files; a ``window`` out of range).
    """
    return paper.regime_table(runs, run_dir, method_col="label", by=["experiment"])


def relation(a: str, b: str) -> str:
    """How two ``dataset-model`` experiments differ.

    Raises:
        ValueError: ``a`` or ``b`` has no ``-`` (not a ``dataset-model`` name).
    """
    (da, ma), (db, mb) = a.rsplit("-", 1), b.rsplit("-", 1)
    if da == db:
        return "same dataset, other architecture"
    if ma == mb:
        return "same architecture, other dataset"
    return "other dataset and architecture"


def spearman_ci(rho: float, n: int, confidence_level: float = 0.95) -> Tuple[float, float]:
    """Confidence interval of Spearman's rho by Fisher's z with the Bonett-Wright (2000) standard error
    ``sqrt((1 + rho^2 / 2) / (n - 3))``; NaN for ``n <= 3``.

    Raises:
        Nothing: ``n <= 3`` or a non-finite ``rho`` gives NaN, and so does a ``confidence_level`` outside (0, 1).
    """
    import numpy as np
    from scipy.stats import norm

    if n <= 3 or not np.isfinite(rho):
        return float("nan"), float("nan")
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    half = norm.ppf(0.5 + confidence_level / 2) * np.sqrt((1 + rho**2 / 2) / (n - 3))
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def transfer(runs, equivalence_table, *, value: str = "test_acc"):
    """Does the best region of one experiment carry over to another? One row per pair (a, b).

    ``spearman`` (with ``p_spearman`` and a 95% CI, :func:`spearman_ci`) of the
    setting means over the settings both trained; ``regret_a_in_b``: test
    accuracy lost in b by using a's best setting instead of b's, each chosen on
    its own experiment's validation accuracy (``-diff`` of a's best in b's
    equivalence table, with its 90% t interval ``regret_a_in_b_low/high``; it can
    be negative, since b's validation choice need not be b's best on test), and
    the same the other way; ``best_a_in_region_b`` (a's best is b's best or
    equivalent to it by TOST / lenient: not shown worse by more than the
    margin); Jaccard overlap of the two regions (reference plus equivalent
    settings; lenient regions).

    Raises:
        KeyError, AttributeError: ``runs`` lacks ``experiment``, ``label`` or ``value``, or ``equivalence_table``
            lacks a column it reads (``experiment``, ``label``, ``is_best``, ``diff``, ``ci_low``, ``ci_high``,
            ``in_region``, ``not_worse_than_margin``).
        IndexError: an experiment's equivalence table has no reference (``is_best``) row.
    """
    import numpy as np
    import pandas as pd
    from scipy.stats import spearmanr

    means = runs.groupby(["experiment", "label"])[value].mean().unstack("experiment")
    eq = {e: t.set_index("label") for e, t in equivalence_table.groupby("experiment")}
    rows = []
    for a, b in itertools.combinations(sorted(eq), 2):
        common = means[[a, b]].dropna()
        row = {"a": a, "b": b, "relation": relation(a, b), "n_settings": len(common)}
        if len(common) >= 3 and common[a].nunique() > 1 and common[b].nunique() > 1:
            result = spearmanr(common[a], common[b])
            row["spearman"], row["p_spearman"] = float(result.statistic), float(result.pvalue)
            row["spearman_ci_low"], row["spearman_ci_high"] = spearman_ci(row["spearman"], len(common))
        else:
            row.update(spearman=np.nan, p_spearman=np.nan, spearman_ci_low=np.nan, spearman_ci_high=np.nan)
        ea, eb = eq[a], eq[b]
        best_a, best_b = ea.index[ea.is_best][0], eb.index[eb.is_best][0]
        row.update(best_a=best_a, best_b=best_b)
        for source, target, best, table in (("a", "b", best_a, eb), ("b", "a", best_b, ea)):
            hit = table.loc[best] if best in table.index else None
            key = f"regret_{source}_in_{target}"
            row[key] = 0.0 - float(hit["diff"]) if hit is not None else np.nan  # 0.0 - x: no negative zero
            row[f"{key}_low"] = 0.0 - float(hit.ci_high) if hit is not None else np.nan
            row[f"{key}_high"] = 0.0 - float(hit.ci_low) if hit is not None else np.nan
            row[f"best_{source}_in_region_{target}"] = bool(hit.in_region) if hit is not None else False
            row[f"best_{source}_not_worse_in_{target}"] = bool(hit.not_worse_than_margin) if hit is not None else False
        shared = ea.index.intersection(eb.index)
        for column, name in (("in_region", "jaccard_within"), ("not_worse_than_margin", "jaccard_not_worse")):
            ra, rb = set(ea.index[ea[column]]) & set(shared), set(eb.index[eb[column]]) & set(shared)
            row[name] = len(ra & rb) / len(ra | rb) if ra | rb else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- conclusions


def regime(runs, *, n_resamples: int = 9999, seed: int = 0):
    """Per experiment, the paper default's training and test accuracy and their gap (mean and 95% CI over seeds).

    The overfitting check: DDC is a regulariser, and its settings can only be
    told apart where the network fits its training data clearly better than
    held-out data. ``train_acc``/``test_acc`` are those of the best-validation
    epoch; the gap is ``generalization_gap`` (train - test at that epoch).

    Raises:
        AttributeError: ``runs`` lacks ``is_default``.
        KeyError: it lacks ``experiment``, ``seed``, ``train_acc``, ``test_acc`` or ``generalization_gap``.
        ValueError: one of those values is missing or not finite (:func:`analysis.stats.summarize`).
    """
    import numpy as np
    import pandas as pd

    from analysis import stats

    default = runs[runs.is_default]
    if not len(default):
        return pd.DataFrame(columns=["experiment", "metric", "n", "mean", "ci_low", "ci_high"])
    long = default.melt(id_vars=["experiment", "seed"], value_vars=["train_acc", "test_acc", "generalization_gap"], var_name="metric")
    table = stats.summarize(long, value="value", by=["experiment", "metric"], rng=np.random.default_rng(seed), n_resamples=n_resamples)
    return table[["experiment", "metric", "n", "mean", "ci_low", "ci_high"]]


def _regime_text(regime_table, experiment: str) -> str:
    r = regime_table[regime_table.experiment == experiment].set_index("metric")
    if not {"train_acc", "test_acc", "generalization_gap"} <= set(r.index):
        return ""
    train, test, gap = (r.loc[m] for m in ("train_acc", "test_acc", "generalization_gap"))
    verdict = "the overfitting regime" if gap.ci_low > 0 else "no clear overfitting at this budget: read its ranking with care"
    return (f" Regime at the paper default: training accuracy {paper.format_ci(train['mean'], train.ci_low, train.ci_high)}, "
            f"test {paper.format_ci(test['mean'], test.ci_low, test.ci_high)}, gap {paper.format_ci(gap['mean'], gap.ci_low, gap.ci_high)} "
            f"({verdict}).")


def conclusions(summary, equivalence_table, joint, pooled, oat, transfer_table, *, margin: float, regime_table=None,
                regime_methods=None, versus_default=None) -> List[str]:
    """Sentences built from the stored tables (every number quoted from them): one per experiment, the pooled
    analysis, and one per pair of experiments compared for transfer.

    Raises:
        KeyError, AttributeError: a table lacks a column a sentence quotes.
        IndexError: an experiment's equivalence table has no reference (``is_best``) row.
    """
    texts = []
    for experiment, equivalence in equivalence_table.groupby("experiment", sort=True):
        text = _best_setting_text(experiment, equivalence, summary, regime_table)
        text += _equivalence_text(equivalence, margin)
        text += _joint_text(joint[joint.experiment == experiment] if len(joint) else joint)
        if regime_methods is not None and len(regime_methods):
            text += _regime_methods_text(regime_methods[regime_methods.experiment == experiment])
        text += _one_at_a_time_text(oat[oat.experiment == experiment] if len(oat) else oat)
        if versus_default is not None and len(versus_default):
            text += _versus_default_text(versus_default[versus_default.experiment == experiment])
        texts.append(text)
    if len(pooled):
        texts.append(_pooled_text(pooled))
    texts += [_transfer_text(r) for r in transfer_table.itertuples()]
    return texts


def _best_setting_text(experiment: str, equivalence, summary, regime_table) -> str:
    """The best setting by validation accuracy, its test accuracy, the paper default's, and the training regime."""
    settings = summary[summary.experiment == experiment].set_index("label")
    best = equivalence[equivalence.is_best].iloc[0]
    best_row = settings.loc[best.label]
    default = settings[settings.is_default] if "is_default" in settings else settings.iloc[:0]
    text = (f"{experiment}: best setting by validation accuracy {best.label}, test accuracy "
            f"{paper.format_ci(best_row['mean'], best_row.ci_low, best_row.ci_high)} ({int(best_row.n)} seeds)")
    if len(default):
        default_row = default.iloc[0]
        text += f"; the paper default {default.index[0]}: {paper.format_ci(default_row['mean'], default_row.ci_low, default_row.ci_high)}"
    regime_text = _regime_text(regime_table, experiment) if regime_table is not None else ""
    if regime_text:  # (none for an experiment without paper-default runs)
        text += "." + regime_text.rstrip(".")
    return text


def _equivalence_text(equivalence, margin: float) -> str:
    """How many other distinct settings are equivalent to the best (paired TOST, Holm), and the degenerate ones."""
    best = equivalence[equivalence.is_best].iloc[0]
    others = equivalence[~equivalence.is_best]
    distinct = others[(others.identical_to == others.label) & (others.identical_to != best.label)]
    words = distinct.verdict.value_counts()
    half = ((distinct.ci_high - distinct.ci_low) / 2).median() if len(distinct) else float("nan")
    text = (f". Of the {len(distinct)} other distinct settings, {int(distinct.within_margin.sum())} are shown equivalent to it within "
            f"±{margin:g} (paired TOST at 5%, Holm over the experiment's settings: {', '.join(f'{n} {w}' for w, n in words.items())}; "
            f"the median 90% t interval is ±{half:.4f} wide against the margin ±{margin:g}), "
            f"{int(distinct.not_worse_than_margin.sum())} are not shown to be worse by more.")
    degenerate = equivalence[(equivalence.identical_to != equivalence.label) | equivalence.dropconnect_at_p_base]
    if len(degenerate):
        text += " Degenerate settings: " + "; ".join(
            (f"{r.label} trains the same runs as {r.identical_to}" if r.identical_to != r.label else f"{r.label}")
            + (" (p_signal = 0: DropConnect at p_base)" if r.dropconnect_at_p_base else "")
            for r in degenerate.itertuples()) + "."
    return text


def _joint_text(shares) -> str:
    """The seed-blocked ANOVA of one experiment's joint grid: each term's share of the variance ('' without one)."""
    if not len(shares):
        return ""
    effects = shares[shares.term != "Residual"].sort_values("eta_sq", ascending=False)
    residual = shares[shares.term == "Residual"].iloc[0]
    effects = effects[effects.term != "seed"]
    top = effects.iloc[0]
    seeds = shares[shares.term == "seed"]
    return (f" Joint grid (seed-blocked ANOVA): {top.term} explains the most variance ({100 * top.eta_sq:.1f}%, p = {top.pvalue:.3g}); "
            + ", ".join(f"{r.term} {100 * r.eta_sq:.1f}%" for r in effects.iloc[1:].itertuples())
            + (f"; the seeds {100 * seeds.eta_sq.iloc[0]:.1f}%" if len(seeds) else "")
            + f"; residual {100 * residual.eta_sq:.1f}%.")


def _regime_methods_text(regime) -> str:
    """The range of training and test accuracy over one experiment's settings, and which still rise at the end."""
    rising = regime[regime.converged < regime.judged]
    return (f" Regime of the {len(regime)} settings: training accuracy {regime.final_train_acc.min():.3f}"
            f"-{regime.final_train_acc.max():.3f}, test {regime.test_acc.min():.3f}-{regime.test_acc.max():.3f}; "
            + ("convergence not judged (fewer than 3 epochs)." if regime.judged.sum() == 0 else
               "all converged by the end of the budget." if len(rising) == 0 else
               f"{len(rising)} still rising at the end of the budget (" + ", ".join(rising.label) + ")."))


def _one_at_a_time_text(shares) -> str:
    """Each factor's share of the variance and range of means when varied alone ('' without such runs)."""
    if not len(shares):
        return ""
    return " One at a time: " + ", ".join(
        f"{row.factor} {100 * row.eta_sq:.1f}% (range of means {row.range_of_means:.4f})" for row in shares.itertuples()) + "."


def _versus_default_text(verdicts) -> str:
    """The verdicts of every one-at-a-time level against the paper default, with the family, n and MDE."""
    if not len(verdicts):
        return ""
    words = verdicts.verdict.value_counts()
    return (f" Each one-at-a-time level against the paper default (secondary, Holm over {int(verdicts.family_size.iloc[0])}, "
            f"{int(verdicts.n.iloc[0])} paired seeds, MDE d_z {verdicts.mde_dz.iloc[0]:.2f}, about {verdicts.mde.median():.4f} test accuracy at "
            f"the median observed sd): " + ", ".join(f"{n} {w}" for w, n in words.items()) + ".")


def _pooled_text(pooled) -> str:
    """Pooled over experiments: the share of variance of the main effects, their interactions with the experiment, seeds."""
    effects = pooled[~pooled.term.isin(["Residual", "experiment", "experiment_seed"])]
    non_transfer = effects[effects.term.str.startswith("experiment:")]
    return (f"Pooled over experiments (accuracy centred per experiment, seeds as blocks), the factors' main effects explain "
            f"{100 * effects[~effects.term.str.contains('experiment')].eta_sq.sum():.1f}% of the variance and their interactions with "
            f"the experiment {100 * non_transfer.eta_sq.sum():.1f}% (effects that differ between experiments); seeds "
            f"{100 * pooled[pooled.term == 'experiment_seed'].eta_sq.sum():.1f}%, residual "
            f"{100 * pooled[pooled.term == 'Residual'].eta_sq.iloc[0]:.1f}%.")


def _transfer_text(pair) -> str:
    """One pair of experiments: rank correlation of the setting means, the regret of each one's best in the other, overlap."""
    rho = (f"Spearman {pair.spearman:+.2f} [{pair.spearman_ci_low:+.2f}, {pair.spearman_ci_high:+.2f}] over {pair.n_settings} settings"
           if pair.spearman == pair.spearman else f"no rank correlation ({pair.n_settings} settings)")
    return (f"{pair.a} vs {pair.b} ({pair.relation}): {rho}; a's best setting costs {pair.regret_a_in_b:.4f} "
            f"[{pair.regret_a_in_b_low:.4f}, {pair.regret_a_in_b_high:.4f}] accuracy in b "
            f"({'inside' if pair.best_a_in_region_b else 'not shown inside'} b's region), b's best costs {pair.regret_b_in_a:.4f} "
            f"[{pair.regret_b_in_a_low:.4f}, {pair.regret_b_in_a_high:.4f}] in a; overlap of the lenient regions (Jaccard) {pair.jaccard_not_worse:.2f}.")


# ----------------------------------------------------------------------------- figures


def figures(run_dir) -> List[str]:
    """Every figure of notebook 09, from its stored tables; returns the files written.

    Raises:
        FileNotFoundError: a table or ``settings.json`` notebook 09 stores is missing from ``run_dir``.
        KeyError: the stored settings lack ``margin``.
    """
    import matplotlib.pyplot as plt

    runs = paper.load_table(run_dir, "runs")
    settings = paper.load_json(run_dir, "settings")
    written = _one_at_a_time_figure(run_dir, runs)
    written += _joint_grid_figures(run_dir, runs)
    written += _equivalence_figures(run_dir, settings["margin"])
    written += _variance_shares_figure(run_dir)
    written += _transfer_figure(run_dir)
    plt.close("all")
    return written


def _one_at_a_time_figure(run_dir, runs) -> List[str]:
    """One panel per factor: test accuracy as that factor varies with the others at the default, per experiment."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from analysis import figures as afig

    oat = runs[runs.oat_factor.notna()]
    if not len(oat):
        return []
    experiments = sorted(oat.experiment.unique())
    look = afig.styles([paper.experiment_title(e) for e in experiments])
    fig, axes = plt.subplots(1, len(FACTORS), figsize=(3.6 * len(FACTORS) + 2.6, 3.8), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, factor in zip(axes[0], FACTORS):
        part = oat[oat.oat_factor.isin([factor, "default"])].assign(experiment=lambda f: f.experiment.map(paper.experiment_title))
        for experiment in experiments:
            name = paper.experiment_title(experiment)
            sns.lineplot(data=part[part.experiment == name], x=factor, y="test_acc", marker=look[name]["marker"],
                         color=look[name]["color"], errorbar=("ci", 95), seed=0, ax=ax, label=name)
        ax.axvline(DEFAULT[factor], color="grey", lw=0.8, ls=":")
        ax.set_title(f"{factor} varied, the others at the default")
        ax.set_ylabel(afig.axis_label("test_acc"))
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles, labels = axes[0][0].get_legend_handles_labels()
    n = oat.groupby(["experiment", "label"]).seed.nunique()
    fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize="small",
               title=f"mean; band: 95% bootstrap CI\nover n = {n.min()}" + (f"-{n.max()}" if n.max() != n.min() else "")
               + " seeds;\ndotted: the default", title_fontsize="small")
    return paper.save_fig(fig, run_dir, "one_at_a_time")


def _joint_grid_figures(run_dir, runs) -> List[str]:
    """Per experiment: mean test accuracy over (tau, p_base), one heatmap per p_signal level."""
    import matplotlib.pyplot as plt
    from analysis import figures as afig

    written = []
    for experiment, group in runs[runs.in_joint].groupby("experiment", sort=True):
        levels = sorted(group.p_signal.unique())
        fig, axes = plt.subplots(1, len(levels), figsize=(4.8 * len(levels), 4.2), squeeze=False, layout="constrained")
        for ax, level in zip(axes[0], levels):
            afig.ablation_heatmap(group[group.p_signal == level], x="tau", y="p_base", value="test_acc", default=DEFAULT, ax=ax)
            ax.set_title(f"p_signal = {level:g}")
        fig.suptitle(f"{paper.experiment_title(experiment)}: mean test accuracy on the joint grid")
        written += paper.save_fig(fig, run_dir, f"{experiment}-joint_grid")
    return written


def _equivalence_figures(run_dir, margin: float) -> List[str]:
    """Per experiment: each setting's paired difference from the best, coloured by its equivalence verdict."""
    import numpy as np
    from analysis import figures as afig

    verdicts = {"within": ("#009E73", "within the margin of the best"), "lenient": ("#E69F00", "not shown worse than the margin"),
                "worse": ("#D55E00", "worse by more than the margin")}
    written = []
    for experiment, group in paper.load_table(run_dir, "equivalence").groupby("experiment", sort=True):
        group = group.reset_index(drop=True)
        ax = afig.new_axes(8.0, 0.3 * len(group) + 2.0)
        y = np.arange(len(group))
        kind = np.where(group.within_margin, "within", np.where(group.not_worse_than_margin, "lenient", "worse"))
        ax.errorbar(group["diff"], y, xerr=[group["diff"] - group.ci_low, group.ci_high - group["diff"]], fmt="none", ecolor="grey")
        for key, (color, text) in verdicts.items():
            mask = kind == key
            if mask.any():
                ax.scatter(group["diff"][mask], y[mask], color=color, zorder=3, label=text)
        ax.axvline(-margin, color="black", ls="--", lw=0.8, label=f"- margin ({margin:g})")
        ax.set_yticks(y, group.label, fontsize="small")
        ax.invert_yaxis()
        level = float(group.confidence_level.iloc[0]) if "confidence_level" in group else 0.90
        ax.set_xlabel(f"test accuracy minus the best setting's, paired by seed\nmean and {100 * level:.0f}% CI, "
                      f"n = {int(group.n.min())} seeds")
        ax.set_title(f"{paper.experiment_title(experiment)}: practical equivalence with the best setting")
        afig.place_legend(ax)
        written += paper.save_fig(ax, run_dir, f"{experiment}-equivalence")
    return written


def _variance_shares_figure(run_dir) -> List[str]:
    """Joint grid: the share of test accuracy's variance (eta squared) per term, stacked per experiment."""
    from analysis import figures as afig

    shares = paper.load_table(run_dir, "joint_variance")
    if not len(shares):
        return []
    wide = shares.pivot_table(index="experiment", columns="term", values="eta_sq", aggfunc="first").fillna(0.0)
    wide.index = [paper.experiment_title(e) for e in wide.index]
    ax = afig.new_axes(9.0, 1.8 + 0.45 * len(wide))
    wide.plot.barh(stacked=True, colormap="tab20", ax=ax)
    ax.invert_yaxis()
    ax.set_xlabel(afig.axis_label("eta_sq"))
    ax.set_title("Joint grid: share of the variance of test accuracy explained per term")
    afig.place_legend(ax, title="term")
    return paper.save_fig(ax, run_dir, "variance_shares")


def _transfer_figure(run_dir) -> List[str]:
    """Spearman correlation of the setting means between every pair of experiments."""
    import numpy as np
    import seaborn as sns
    from analysis import figures as afig

    table = paper.load_table(run_dir, "transfer")
    if not len(table):
        return []
    names = sorted(set(table.a) | set(table.b))
    matrix = np.eye(len(names))
    for r in table.itertuples():
        i, j = names.index(r.a), names.index(r.b)
        matrix[i, j] = matrix[j, i] = r.spearman
    titles = [paper.experiment_title(n) for n in names]
    ax = afig.new_axes(2.0 * len(names) + 3.0, 1.3 * len(names) + 2.0)
    sns.heatmap(matrix, annot=True, fmt=".2f", vmin=-1, vmax=1, cmap="coolwarm", xticklabels=titles, yticklabels=titles, ax=ax,
                cbar_kws={"label": "Spearman correlation"})
    ax.tick_params(axis="x", labelrotation=0)
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_title("Transfer: Spearman correlation of the setting means between experiments")
    return paper.save_fig(ax, run_dir, "transfer_spearman")
