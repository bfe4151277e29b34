"""A markdown report from stored runs only: tables with intervals and corrected tests, and figures.

``build_report(paths, out_dir)`` never trains. Runs are grouped by
(dataset, model); within a group, methods (the run's ``tag`` when set, else
its ``method``) are compared with the baseline, paired by seed. The same runs
give the same report byte for byte: every resampling uses a fixed seed and
rows are sorted.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

GROUP = ("dataset", "model")
#: more labels than this get their learning curves as small multiples, not as lines on one axes
MAX_CURVES = 8
#: config fields that say *which* method a run is, or which repetition; all
#: other fields define the experimental setting that runs are grouped by
METHOD_FIELDS = ("method", "method_options", "layers", "seed", "tag")


def _label_and_setting(runs):
    """``label``: the tag (or method), plus the method options that tell apart runs
    sharing it; ``setting``: the remaining config, so one group is one experiment."""
    import json

    from ddc.train import OPERATIONAL, TrainConfig

    runs = runs.copy()
    configs = [json.loads((Path(p) / "config.json").read_text()) for p in runs.path]
    base = [c.get("tag") or c["method"] for c in configs]
    options = [c.get("method_options") or {} for c in configs]
    keys = sorted({k for o in options for k in o})
    varying = {}
    for label in set(base):
        members = [o for b, o in zip(base, options) if b == label]
        varying[label] = [k for k in keys if len({json.dumps(m.get(k)) for m in members}) > 1]
    runs["label"] = [
        b + (" (" + ", ".join(f"{k}={o.get(k)}" for k in varying[b]) + ")" if varying[b] else "")
        for b, o in zip(base, options)
    ]
    setting_fields = [f for f in TrainConfig.field_names() if f not in METHOD_FIELDS + OPERATIONAL]
    runs["setting"] = [json.dumps({f: c.get(f) for f in setting_fields}, sort_keys=True) for c in configs]
    return runs


def _markdown_table(frame, digits: int = 4) -> str:
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype.kind == "f":
            frame[column] = frame[column].map(lambda v: "" if v != v else f"{v:.{digits}g}")
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _setting_differences(setting: str, all_settings) -> str:
    """The config fields in which ``setting`` differs from the other settings of its dataset/model."""
    import json

    mine = json.loads(setting)
    others = [json.loads(s) for s in all_settings if s != setting]
    keys = sorted({k for o in others for k in o if o.get(k) != mine.get(k)})
    return ", ".join(f"{k}={mine.get(k)}" for k in keys)


def group_statistics(runs, *, value: str, baseline: str, seed: int = 0, n_resamples: int = 9999, skip=()):
    """Summary (mean, t interval per label, binomial SE of one run) and paired verdicts vs ``baseline`` for one group.

    The group is one experiment, so its comparisons form one family: Holm runs over them, and only them.
    ``skip``: ``(label, baseline)`` pairs left out of the tests (a notebook already decided them).
    ``seed`` and ``n_resamples`` are kept for callers; t intervals need no resampling.

    Raises:
        ValueError: ``runs`` is empty, lacks ``label`` or ``value``, or ``value`` is not numeric and finite
            (:func:`analysis.stats.summarize`).
        AttributeError: ``runs`` has no ``seed`` column when there is a pair to test.
    """
    from analysis import stats
    from analysis import verdicts as V

    summary = stats.summarize(runs, value=value, by="label")
    if "n_test" in runs and value.endswith("acc"):
        sizes = runs.groupby("label")["n_test"].mean()
        summary["binomial_se"] = stats.binomial_se(summary["mean"], summary["label"].map(sizes).to_numpy())
    tests = None
    labels = sorted(set(runs.label))
    pairs = [(label, baseline) for label in labels if label != baseline and (label, baseline) not in set(skip)]
    if baseline in labels and pairs and runs.seed.nunique() >= 2:
        # methods against the baseline are one experiment; the settings of one method (labels "ddc (tau=0.3)") another
        family = {pair: (f"{pair[0].split(' (')[0]} settings" if " (" in pair[0] else "methods") for pair in pairs}
        tests = V.paired_verdicts(runs, value=value, pairs=pairs, method_col="label", family=family)
        tests = tests if len(tests) else None
    return summary, tests, None


def decided_comparisons(outputs) -> List[dict]:
    """The comparisons the notebooks under ``outputs`` decided, by the runs they compared.

    For each notebook folder with stored verdict tables (``results/verdicts*.parquet``)
    and its runs (``results/runs.parquet``, with ``run_id``): one dict per verdict row,
    ``{"notebook", "runs", "baseline_runs"}`` (run ids as frozensets), the rows' label
    matched to the runs by the column they share (``tag``, ``label``, ``method`` or
    ``cell``), within the row's ``experiment`` when both tables have one.

    Raises:
        Nothing of its own (a missing ``outputs`` gives ``[]``); pandas' and pyarrow's errors for a stored table
            that cannot be read pass through.
    """
    import pandas as pd

    found: List[dict] = []
    outputs = Path(outputs)
    if not outputs.is_dir():
        return found
    for folder in sorted(p for p in outputs.iterdir() if p.is_dir() and p.name[:2].isdigit()):
        runs_path = folder / "results" / "runs.parquet"
        tables = {name: table for name, table in _verdict_tables(folder).items() if "baseline" in table}
        if not tables or not runs_path.exists():
            continue
        runs = pd.read_parquet(runs_path)
        if "run_id" not in runs:
            continue
        for table in tables.values():
            label_col = next((c for c in ("tag", "label", "method", "cell") if c in table and c in runs), None)
            if label_col is None:
                continue
            by_experiment = "experiment" in table and "experiment" in runs
            for row in table.itertuples(index=False):
                row = row._asdict()
                scope = runs[runs.experiment == row["experiment"]] if by_experiment else runs
                compared = frozenset(scope.run_id[scope[label_col] == row[label_col]])
                baseline = frozenset(scope.run_id[scope[label_col] == row["baseline"]])
                if compared and baseline:
                    found.append({"notebook": folder.name, "runs": compared, "baseline_runs": baseline})
    return found


def decided_pairs(group, decided, baseline: str) -> dict:
    """``{(label, baseline): notebook}`` for the labels of ``group`` whose runs, and the baseline's,
    are exactly those of a comparison in ``decided`` (:func:`decided_comparisons`).

    Raises:
        AttributeError: ``group`` lacks ``label`` or ``run_id``.
        KeyError: an entry of ``decided`` lacks ``runs``, ``baseline_runs`` or ``notebook``.
    """
    if baseline not in set(group.label):
        return {}
    base_runs = frozenset(group.run_id[group.label == baseline])
    index = {(d["runs"], d["baseline_runs"]): d["notebook"] for d in decided}
    out = {}
    for label in sorted(set(group.label) - {baseline}):
        notebook = index.get((frozenset(group.run_id[group.label == label]), base_runs))
        if notebook is not None:
            out[(label, baseline)] = notebook
    return out


def _group_figures(group, summary, metrics, *, value: str, title: str, stem: Path):
    """The figures of one group: ``value`` per label (point and interval), and the validation
    accuracy curves (small multiples when there are more labels than one axes can tell apart).
    Yields ``(path, alt text)``."""
    import matplotlib.pyplot as plt
    from analysis import figures

    ax = figures.method_comparison(summary, value=value, method_col="label", points=group)
    ax.set_title(f"{title}: {figures.axis_label(value)}")
    for path in figures.save_figure(ax, Path(f"{stem}-{value}"), formats=("png",)):
        yield path, f"{title}: {value}"
    plt.close(ax.figure)
    group_metrics = metrics[metrics.run_id.isin(group.run_id)]
    if group_metrics.empty or "acc" not in set(group_metrics.metric):
        return
    if group.label.nunique() > MAX_CURVES:
        fig = figures.learning_curve_grid(group_metrics, group[["run_id", "label"]], metric="acc", split="val", hue="label")
        fig.suptitle(f"{title}: {fig.get_suptitle()}", fontsize="medium")
    else:
        ax = figures.learning_curves(group_metrics, group[["run_id", "label"]], metric="acc", split="val", hue="label")
        ax.set_title(f"{title}: validation accuracy")
        fig = ax.figure
    for path in figures.save_figure(fig, Path(f"{stem}-val-acc"), formats=("png",)):
        yield path, f"{title}: validation accuracy"
    plt.close(fig)


def build_report(
    paths,
    out_dir,
    *,
    value: str = "test_acc",
    baseline: str = "none",
    title: str = "ddc report",
    n_resamples: int = 9999,
    log=None,
    decided=(),
) -> Path:
    """Write ``out_dir/report.md`` (and its figures) from the finished runs under ``paths``.

    ``log`` (e.g. ``print``) is told what is being done, one line per group.
    ``decided``: comparisons the notebooks already decided (:func:`decided_comparisons`):
    a pair of labels whose runs are exactly those of a decided comparison is not
    tested again (its family here is the rest), and the group says so in one line.

    Raises:
        ValueError: there are no finished runs under ``paths``.
    """
    say = log or (lambda _: None)
    from ddc.store import load_metrics, load_runs

    out_dir = Path(out_dir)
    runs = load_runs(paths)
    if runs.empty:
        raise ValueError(f"no finished runs under {paths}")
    say(f"report: {len(runs)} runs from {', '.join(map(str, paths)) if isinstance(paths, (list, tuple)) else paths}")
    runs = _label_and_setting(runs)
    runs = runs.sort_values(["dataset", "model", "setting", "label", "seed"]).reset_index(drop=True)
    metrics = load_metrics([Path(p) for p in runs.path])
    lines: List[str] = [f"# {title}", "", f"{len(runs)} runs; value: `{value}` (test metric at the best-validation epoch).", ""]
    settings = {s: i for i, s in enumerate(dict.fromkeys(runs.setting))}
    means_by_group = []
    groups = runs.groupby([*GROUP, "setting"], sort=True)
    for number, ((dataset, model, setting), group) in enumerate(groups, 1):
        name = f"{dataset}-{model}-{settings[setting]}"
        say(f"report: group {number}/{groups.ngroups}, {dataset} / {model} ({len(group)} runs): statistics and figures")
        differs = _setting_differences(setting, runs[(runs.dataset == dataset) & (runs.model == model)].setting.unique())
        lines += [f"## {dataset} / {model}" + (f" ({differs})" if differs else ""), ""]
        if value not in group or group[value].isna().all():
            lines += [f"No `{value}` in these runs.", ""]
            continue
        lines += _group_section(group, metrics, out_dir, name=name, task=f"{dataset}-{model}", differs=differs,
                                value=value, baseline=baseline, n_resamples=n_resamples, decided=decided)
        means_by_group.append(group.groupby("label", as_index=False)[value].mean().assign(task=name))
    if len(means_by_group) >= 2:
        import pandas as pd

        means = pd.concat(means_by_group, ignore_index=True).assign(seed=0)
        lines += ["## Across experiments", ""] + ranks_across_tasks(means, out_dir, method_col="label", task_col="task", value=value)
    report = out_dir / "report.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    say(f"report: written to {report}")
    return report


def _group_section(group, metrics, out_dir: Path, *, name, task, differs, value, baseline, n_resamples, decided) -> List[str]:
    """The report's lines for one (dataset, model, setting) group: summary, paired tests, figures."""
    from experiments.paper import experiment_title

    skip = decided_pairs(group, decided, baseline) if decided else {}
    summary, tests, _ = group_statistics(group, value=value, baseline=baseline, n_resamples=n_resamples, skip=skip)
    columns = ["label", "n", "mean", "std", "ci_low", "ci_high"] + (["binomial_se"] if "binomial_se" in summary else [])
    lines = ["Mean and 95% t interval over seeds (`binomial_se`: the test-set noise of one run's accuracy):", "",
             _markdown_table(summary[columns]), ""]
    if tests is not None:
        shown = tests[["label", "family", "n", "mean_diff", "ci_low", "ci_high", "p_ttest", "p_holm", "cohen_dz", "mde", "verdict"]]
        lines += [f"Paired differences vs `{baseline}` (paired t over seeds, 95% t interval; the methods are one "
                  f"family and the settings of one method another, Holm within each; `mde`: the difference detectable "
                  f"with 80% power at this n; verdict words need 5 paired seeds):", "", _markdown_table(shown), ""]
    if skip:
        lines += ["Not tested again here, on the same runs: " + "; ".join(
            f"`{label}` vs `{base}` (decided in {skip[(label, base)]})" for label, base in sorted(skip))
            + ": the notebook's estimate, interval and p-value are the answer (one comparison, one answer).", ""]
    heading = experiment_title(task) + (f" ({differs})" if differs else "")
    for path, alt in _group_figures(group, summary, metrics, value=value, title=heading, stem=out_dir / "figures" / name):
        lines += [f"![{alt}]({Path(path).relative_to(out_dir)})", ""]
    return lines


# ----------------------------------------------------------------------------- 05: the paper report, restated


def _verdict_tables(folder: Path):
    """The verdict tables a notebook stored (``results/verdicts*.parquet``, and ``equivalence.parquet``), by name."""
    import pandas as pd

    paths = sorted((folder / "results").glob("verdicts*.parquet")) + sorted((folder / "results").glob("equivalence.parquet"))
    return {path.stem: pd.read_parquet(path) for path in paths}


def _restated_rows(table):
    """Rows of a verdict table as they are shown in the report: the numbers the notebook stored, unchanged."""
    import numpy as np

    label_cols = [c for c in table.columns if c in ("experiment", "tag", "method", "cell", "label", "model", "metric", "quantity",
                                                     "placement", "train_method", "factor")]
    shown = table.copy()
    if "p_tost_holm" in shown and "is_best" in shown:  # equivalence (TOST) against the validation-chosen reference
        reference = shown[shown.is_best].set_index("experiment").label if "experiment" in shown else None
        shown["baseline"] = shown.experiment.map(reference) if reference is not None else shown.loc[shown.is_best, "label"].iloc[0]
        shown = shown[~shown.is_best]
        shown.insert(0, "comparison", (shown.experiment.astype(str) + " / " if "experiment" in shown else "")
                     + shown.label.astype(str) + " vs " + shown.baseline.astype(str))
        columns = ["comparison", "n", "diff", "ci_low", "ci_high", "p_tost", "p_tost_holm", "margin", "verdict"]
        return shown[[c for c in columns if c in shown]]
    shown.insert(0, "comparison", shown[label_cols].astype(str).agg(" / ".join, axis=1) + " vs " + shown["baseline"].astype(str))
    if "p_ttest" in shown:  # paired t verdicts
        columns = ["comparison", "value", "family", "family_size", "n", "mean_diff", "ci_low", "ci_high", "p_ttest", "p_holm",
                   "mde_dz", "mde", "verdict"]
    else:  # log-rank
        columns = ["comparison", "family", "family_size", "n", "n_baseline", "statistic", "pvalue", "p_holm", "mde_hazard_ratio",
                   "verdict"]
    return shown[[c for c in columns if c in shown]].replace({np.inf: np.nan})


def restate_verdicts(outputs) -> List[str]:
    """Markdown: every notebook's stored verdict tables, restated as stored (one comparison, one answer).

    Raises:
        FileNotFoundError, NotADirectoryError: ``outputs`` is not a folder.
        KeyError: a stored verdict table lacks ``baseline``.
        AttributeError: a stored TOST table lacks ``label``.
    """
    lines: List[str] = []
    for folder in sorted(p for p in Path(outputs).iterdir() if p.is_dir() and p.name[:2].isdigit()):
        tables = _verdict_tables(folder)
        if not tables:
            continue
        lines += [f"### {folder.name}", ""]
        for name, table in tables.items():
            if table.empty:
                continue
            lines += [f"`{name}` (families as declared in the notebook; Holm within each family):", "",
                      _markdown_table(_restated_rows(table)), ""]
    return lines


def aggregate_across_tasks(runs, out_dir, *, method_col: str = "tag", task_col: str = "experiment", baseline: str = "none",
                           value: str = "test_acc", focus: str = "ddc", seed: int = 0, n_resamples: int = 2000) -> List[str]:
    """Markdown and figures for methods compared across tasks (experiments), after Agarwal et al. (2021).

    Scores are normalised per task to ``(acc − mean acc of baseline) / (1 − mean acc of baseline)``, the share of
    the baseline's test error a method removes. IQM and mean with stratified bootstrap intervals over
    (task, seed), P(focus > other) for every other method with its interval (one summary figure per pair:
    the per-task paired differences and P), performance profiles. Every interval is drawn from
    ``np.random.default_rng(seed)``, so the report regenerates identically.

    Raises:
        ValueError: ``runs`` lacks ``value``, ``method_col``, ``task_col`` or ``seed``, no task has every method or
            no seed is shared (:func:`analysis.aggregates.scores_from_frame`), or the baseline's mean accuracy is 1
            in a task (:func:`analysis.aggregates.normalise`).
        OSError: a figure cannot be written.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    from analysis import aggregates, figures, stats

    figure_dir = Path(out_dir) / "figures"
    arrays, tasks, seeds = aggregates.scores_from_frame(runs, value=value, method_col=method_col, task_col=task_col)
    if baseline not in arrays or len(seeds) < 2:
        return ["Aggregates across tasks need the baseline in every task and at least 2 shared seeds.", ""]
    low = arrays[baseline].mean(axis=0)
    normalised = {m: aggregates.normalise(a, low, 1.0) for m, a in arrays.items()}
    gen = np.random.default_rng(seed)
    table = aggregates.aggregate_intervals(normalised, rng=gen, n_resamples=n_resamples)
    lines = [f"Across {len(tasks)} tasks ({', '.join(tasks)}) x {len(seeds)} seeds; score: share of `{baseline}`'s test error "
             f"removed, `(acc − acc_{baseline}) / (1 − acc_{baseline})` per task; 95% stratified bootstrap intervals "
             f"({n_resamples} resamples of seeds within tasks, the same seeds for every method).", "",
             _markdown_table(table[["method", "aggregate", "estimate", "ci_low", "ci_high"]]), ""]
    written = []
    ax = figures.aggregate_intervals(table)
    ax.set_title("IQM and mean of normalised test accuracy (95% stratified bootstrap)")
    written += figures.save_figure(ax, figure_dir / "aggregates", formats=("png",))
    plt.close(ax.figure)
    thresholds = np.linspace(min(a.min() for a in normalised.values()), max(a.max() for a in normalised.values()), 60)
    profile = aggregates.performance_profile(normalised, thresholds, rng=gen, n_resamples=n_resamples)
    ax = figures.performance_profiles(profile)
    ax.set_title("Performance profiles (95% stratified bootstrap bands)")
    written += figures.save_figure(ax, figure_dir / "performance_profiles", formats=("png",))
    plt.close(ax.figure)
    rows = []
    if focus in arrays:
        for other in [m for m in arrays if m != focus]:
            point, lo, hi = aggregates.probability_of_improvement_interval(arrays[focus], arrays[other], rng=gen,
                                                                           n_resamples=n_resamples)
            rows.append({"x": focus, "y": other, "estimate": point, "ci_low": lo, "ci_high": hi})
            per_task = []
            for t, task in enumerate(tasks):
                d = arrays[focus][:, t] - arrays[other][:, t]
                lo_t, hi_t = stats.mean_interval(d)
                per_task.append({"task": task, "mean_diff": d.mean(), "ci_low": lo_t, "ci_high": hi_t})
            per_task = pd.DataFrame(per_task)
            ax = figures.paired_differences_by_task(
                per_task, xlabel=f"{figures.axis_label(value)}: {figures.display_name(focus)} − "
                                 f"{figures.display_name(other)} (paired by seed, 95% t CI, n = {len(seeds)} seeds)")
            ax.set_title(f"P({figures.display_name(focus)} > {figures.display_name(other)}) = {point:.2f} [{lo:.2f}, {hi:.2f}]")
            written += figures.save_figure(ax, figure_dir / f"pair-{focus}-vs-{other}", formats=("png",))
            plt.close(ax.figure)
    if rows:
        poi = pd.DataFrame(rows)
        lines += ["Probability of improvement, P(a run of X beats a run of Y on a random task), with 95% stratified bootstrap "
                  "intervals:", "", _markdown_table(poi), ""]
        ax = figures.probability_of_improvement(poi)
        ax.set_title("Probability of improvement (95% stratified bootstrap)")
        written += figures.save_figure(ax, figure_dir / "probability_of_improvement", formats=("png",))
        plt.close(ax.figure)
    lines += [f"![{Path(p).stem}]({Path(p).relative_to(out_dir)})" for p in written] + [""]
    return lines


def ranks_across_tasks(runs, out_dir, *, method_col: str = "tag", task_col: str = "experiment", value: str = "test_acc") -> List[str]:
    """Markdown and one critical-difference figure: methods ranked within each task (block), as Demšar (2006) meant.

    Raises:
        KeyError: ``runs`` lacks ``task_col``, ``method_col`` or ``value``.
        OSError: the figure cannot be written.
    """
    import matplotlib.pyplot as plt
    from analysis import figures, stats

    means = runs.groupby([task_col, method_col], as_index=False)[value].mean()
    complete = means.groupby(method_col)[task_col].nunique() == means[task_col].nunique()
    means = means[means[method_col].isin(complete[complete].index)]
    if means[task_col].nunique() < 2 or means[method_col].nunique() < 3:
        return ["Ranks across tasks need at least 2 tasks and 3 methods in every one.", ""]
    friedman = stats.friedman_test(means, value=value, method_col=method_col, block_col=task_col).iloc[0]
    ranks, cliques, cd = stats.critical_difference(means, value=value, method_col=method_col, block_col=task_col)
    ax = figures.critical_difference_diagram(ranks, cliques, cd, method_col=method_col)
    ax.set_title(f"Average ranks over {int(friedman.n)} tasks (Nemenyi CD = {cd:.2f})")
    path = figures.save_figure(ax, Path(out_dir) / "figures" / "critical_difference", formats=("png",))[0]
    plt.close(ax.figure)
    return [f"Each task (dataset x model) is a block; a method's score in it is its mean {value} over seeds. Friedman "
            f"chi2 = {friedman.statistic:.3g}, p = {friedman.pvalue:.3g}; Iman-Davenport F = {friedman.iman_davenport_F:.3g}, "
            f"p = {friedman.iman_davenport_p:.3g} (k = {int(friedman.k)}, n = {int(friedman.n)}).", "",
            _markdown_table(ranks), "", f"![critical difference]({Path(path).relative_to(out_dir)})", ""]


def build_paper_report(outputs, out_dir, *, title: str = "ddc paper report", baseline: str = "none", seed: int = 0,
                       n_resamples: int = 2000, log=None) -> Path:
    """``out_dir/report.md`` for the paper notebooks: their verdicts restated as stored, then 02's methods across
    tasks (ranks and a CD diagram, aggregates). Nothing is recomputed that a notebook already decided.

    Raises:
        FileNotFoundError: ``outputs`` is not a folder.
        KeyError: a stored verdict table lacks ``baseline`` (:func:`restate_verdicts`).
        ValueError: 02's scores cannot be aggregated (:func:`aggregate_across_tasks`).
        OSError: ``out_dir``, the report or a figure cannot be written.
    """
    import pandas as pd

    say = log or (lambda _: None)
    outputs, out_dir = Path(outputs), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: List[str] = [f"# {title}", "",
                        "## Verdicts, restated from the notebooks", "",
                        "Each notebook declares its families of comparisons (primary: what the experiment exists to "
                        "decide; secondary: the rest); Holm runs within a family, never across notebooks. Intervals "
                        "are 95% t intervals over paired seeds, `mde` the effect the test detects with 80% power at "
                        "its n and family size; verdict words need 5 paired seeds.", ""]
    say("report: restating the notebooks' verdicts")
    lines += restate_verdicts(outputs)
    baselines = outputs / "02_baselines" / "results" / "runs.parquet"
    if baselines.exists():
        runs = pd.read_parquet(baselines)
        runs = runs.assign(experiment=runs.sweep.str.removeprefix("02-"))
        say("report: methods across tasks (02_baselines)")
        lines += ["## 02_baselines across tasks: ranks", ""] + ranks_across_tasks(runs, out_dir)
        lines += ["## 02_baselines across tasks: aggregates (Agarwal et al. 2021)", ""]
        lines += aggregate_across_tasks(runs, out_dir, baseline=baseline, seed=seed, n_resamples=n_resamples)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    say(f"report: written to {report}")
    return report
