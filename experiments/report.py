"""A markdown report from stored runs only: tables with intervals and corrected tests, and figures.

``build_report(paths, out_dir)`` never trains. Runs are grouped by
(dataset, model); within a group, methods (the run's ``tag`` when set, else
its ``method``) are compared with the baseline, paired by seed. The same runs
give the same report byte for byte: every resampling uses a fixed seed and
rows are sorted.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

GROUP = ("dataset", "model")
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


def group_statistics(runs, *, value: str, baseline: str, seed: int = 0, n_resamples: int = 9999):
    """Summary (mean and bootstrap CI per label) and paired tests vs ``baseline`` for one group."""
    import numpy as np
    from analysis import stats

    summary = stats.summarize(runs, value=value, by="label", rng=np.random.default_rng(seed), n_resamples=n_resamples)
    tests = None
    labels = set(runs.label)
    if baseline in labels and len(labels) > 1 and runs.seed.nunique() >= 2:
        tests = stats.paired_comparison(
            runs,
            value=value,
            method_col="label",
            baseline=baseline,
            rng=np.random.default_rng(seed + 1),
            n_resamples=n_resamples,
            on_unpaired="drop",
        )
    friedman = None
    if len(labels) >= 3 and runs.seed.nunique() >= 2:
        friedman = stats.friedman_test(runs, value=value, method_col="label", block_col="seed", on_incomplete="drop")
    return summary, tests, friedman


def build_report(
    paths,
    out_dir,
    *,
    value: str = "test_acc",
    baseline: str = "none",
    title: str = "ddc report",
    n_resamples: int = 9999,
    log=None,
) -> Path:
    """Write ``out_dir/report.md`` (and its figures) from the finished runs under ``paths``.

    ``log`` (e.g. ``print``) is told what is being done, one line per group.
    """
    say = log or (lambda _: None)
    import matplotlib.pyplot as plt
    from analysis import figures

    from ddc.store import load_metrics, load_runs

    out_dir = Path(out_dir)
    figure_dir = out_dir / "figures"
    runs = load_runs(paths)
    if runs.empty:
        raise ValueError(f"no finished runs under {paths}")
    say(f"report: {len(runs)} runs from {', '.join(map(str, paths)) if isinstance(paths, (list, tuple)) else paths}")
    runs = _label_and_setting(runs)
    runs = runs.sort_values(["dataset", "model", "setting", "label", "seed"]).reset_index(drop=True)
    metrics = load_metrics([Path(p) for p in runs.path])
    lines: List[str] = [f"# {title}", "", f"{len(runs)} runs; value: `{value}` (test metric at the best-validation epoch).", ""]
    settings = {s: i for i, s in enumerate(dict.fromkeys(runs.setting))}
    groups = runs.groupby([*GROUP, "setting"], sort=True)
    for number, ((dataset, model, setting), group) in enumerate(groups, 1):
        name = f"{dataset}-{model}-{settings[setting]}"
        say(f"report: group {number}/{groups.ngroups}, {dataset} / {model} ({len(group)} runs): statistics and figures")
        differs = _setting_differences(setting, runs[(runs.dataset == dataset) & (runs.model == model)].setting.unique())
        lines += [f"## {dataset} / {model}" + (f" ({differs})" if differs else ""), ""]
        if value not in group or group[value].isna().all():
            lines += [f"No `{value}` in these runs.", ""]
            continue
        summary, tests, friedman = group_statistics(group, value=value, baseline=baseline, n_resamples=n_resamples)
        lines += ["Mean and 95% bootstrap CI over seeds:", "", _markdown_table(summary[["label", "n", "mean", "std", "ci_low", "ci_high"]]), ""]
        if tests is not None:
            shown = tests[["label", "n", "mean_diff", "ci_low", "ci_high", "p_wilcoxon_adj", "p_ttest_adj", "cohen_dz"]]
            lines += [f"Paired differences vs `{baseline}` (Holm-adjusted p-values):", "", _markdown_table(shown), ""]
        if friedman is not None:
            row = friedman.iloc[0]
            lines += [f"Friedman test across labels: chi2 = {row.statistic:.3f}, p = {row.pvalue:.3g} (k = {row.k}, n = {row.n}).", ""]
        ax = figures.method_comparison(group, value=value, method_col="label", rng=0)
        ax.set_title(name)
        for path in figures.save_figure(ax, figure_dir / f"{name}-{value}", formats=("png",)):
            lines += [f"![{name}]({Path(path).relative_to(out_dir)})", ""]
        plt.close(ax.figure)
        group_metrics = metrics[metrics.run_id.isin(group.run_id)]
        if not group_metrics.empty and "acc" in set(group_metrics.metric):
            ax = figures.learning_curves(group_metrics, group[["run_id", "label"]], metric="acc", split="val", hue="label")
            ax.set_title(f"{name}: validation accuracy")
            for path in figures.save_figure(ax, figure_dir / f"{name}-val-acc", formats=("png",)):
                lines += [f"![{name} learning curves]({Path(path).relative_to(out_dir)})", ""]
            plt.close(ax.figure)
    report = out_dir / "report.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    say(f"report: written to {report}")
    return report
