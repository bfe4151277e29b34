"""Paper notebooks: committed clean, parameterised, and executed at the smoke profile."""

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from click.testing import CliRunner

from ddc.cli import main
from ddc.notebooks import check_parameters, discover, run_notebooks
from experiments import paper

NOTEBOOKS = discover()
COMMON = {"profile", "run_dir"}
PAPER = ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs_and_with_one_parameters_cell(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
    source = tagged[0].source
    for name in COMMON:
        assert f"{name} =" in source
    assert "MPLBACKEND" not in "".join(c.source for c in nb.cells)  # papermill would lose the figures


def test_unknown_parameter_fails_fast_with_its_name(tmp_path):
    with pytest.raises(ValueError, match="'seedz'.*parameters of the selected notebooks"):
        run_notebooks("smoke", only=["01"], parameters={"seedz": [0]}, output_root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing ran
    with pytest.raises(ValueError, match="only: 'nope' matches no notebook"):
        run_notebooks("smoke", only=["nope"], output_root=tmp_path)
    assert check_parameters(NOTEBOOKS[:1], {"steps": 3})[NOTEBOOKS[0]] == {"steps": 3}


@pytest.fixture(scope="module")
def smoke_outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    # the open-question notebooks (06-09) are executed by their own test files
    executed = run_notebooks("smoke", only=PAPER, output_root=root, log=lambda *_: None)
    return root / "smoke", executed


def test_every_notebook_runs_at_smoke(smoke_outputs):
    base, executed = smoke_outputs
    expected = [p.stem + ("-zscore" if p.stem == "03_ablation" else "") for p in NOTEBOOKS if p.stem[:2] in PAPER]
    assert [e.notebook for e in executed] == expected
    for e in executed:
        nb = nbformat.read(str(e.output), as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        conclusions = json.loads((e.output.parent / "results" / "conclusions.json").read_text())
        assert conclusions["conclusion"]
    assert (base / "INDEX.md").exists()


def test_synthetic_regression_data(smoke_outputs):
    base, _ = smoke_outputs
    run_dir = base / "01_synthetic_regression"
    trajectories = pd.read_parquet(run_dir / "results" / "trajectories.parquet")
    assert set(trajectories.method) == set(paper.SYNTHETIC_METHODS)
    assert trajectories.groupby("method").seed.nunique().min() == 3
    assert (trajectories.query("step == 0").groupby("seed")[["w1", "w2"]].nunique() == 1).all().all()  # same start
    steps = int(trajectories.step.max())
    per_run = pd.read_parquet(run_dir / "results" / "per_run.parquet")
    # a run that never reached the target is censored at the budget, not given budget + 1 steps
    assert (per_run.steps_to_target <= steps).all()
    assert (per_run.loc[~per_run.reached, "steps_to_target"] == steps).all()
    logrank = pd.read_parquet(run_dir / "results" / "verdicts_time_to_target.parquet")
    assert set(logrank[logrank.family == "primary"].baseline) == {"dropconnect", "none"}
    assert (logrank.verdict == "exploratory").all()  # 3 seeds per method
    verdicts = pd.read_parquet(run_dir / "results" / "verdicts.parquet")
    assert {"n", "ci_low", "ci_high", "p_holm", "mde_dz", "verdict"} <= set(verdicts.columns)
    assert (verdicts.family == "secondary").all() and (verdicts.value == "mean_loss").all()
    conclusion = "\n".join(json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"])
    summary = pd.read_parquet(run_dir / "results" / "steps_to_target_summary.parquet").set_index("method")
    assert f"ddc {summary.loc['ddc', 'median']:.0f} [" in conclusion  # the sentence quotes the stored number
    assert "Regime:" in conclusion and "MDE d_z" in conclusion
    assert {p.name for p in (run_dir / "figures").glob("*.png")} == {
        "contours_trajectories.png",
        "loss_curves.png",
        "steps_to_target.png",
    }


def test_baselines_data(smoke_outputs):
    base, _ = smoke_outputs
    run_dir = base / "02_baselines"
    runs = pd.read_parquet(run_dir / "results" / "runs.parquet")
    assert set(runs.tag) == set(paper.BASELINE_METHODS)
    for _, group in runs.groupby("sweep"):
        # paired design: every method has every seed, and the same seed means the same split
        assert group.groupby("tag").seed.apply(sorted).map(tuple).nunique() == 1
    verdicts = pd.read_parquet(run_dir / "results" / "verdicts.parquet")
    n_experiments = runs.sweep.nunique()
    primary = verdicts[verdicts.family == "primary"]
    assert len(primary) == 2 * n_experiments and set(primary.baseline) == {"none", "dropconnect"}
    assert (primary.tag == "ddc").all() and (primary.family_size == 2 * n_experiments).all()
    assert set(verdicts[verdicts.family == "secondary"].tag) == set(paper.BASELINE_METHODS) - {"none", "ddc"}
    assert (verdicts.p_holm >= verdicts.p_ttest - 1e-12).all() and verdicts.mde_dz.notna().all()
    assert (verdicts.verdict == "exploratory").all()  # 2 seeds at smoke
    summary = pd.read_parquet(run_dir / "results" / "summary.parquet")
    for row in summary.itertuples():
        assert row.ci_low <= row.mean <= row.ci_high and row.binomial_se > 0
    regime = pd.read_parquet(run_dir / "results" / "regime.parquet")
    assert len(regime) == len(paper.BASELINE_METHODS) * n_experiments
    if n_experiments >= 2:  # Demšar: experiments are the blocks
        friedman = pd.read_parquet(run_dir / "results" / "friedman_across_experiments.parquet").iloc[0]
        assert friedman.n == n_experiments and friedman.k == len(paper.BASELINE_METHODS)
        assert (run_dir / "figures" / "critical_difference.png").exists()


def test_ablation_data(smoke_outputs):
    base, _ = smoke_outputs
    run_dir = base / "03_ablation-zscore"
    runs = pd.read_parquet(run_dir / "results" / "runs.parquet")
    assert set(runs.normalize) == {"zscore", "none"} and set(runs.scope) == {"layer", "row"}
    assert len(runs) == 4 * 2  # 2 x 2 grid x 2 seeds
    anova = pd.read_parquet(run_dir / "results" / "anova.parquet")
    assert {"normalize", "scope", "normalize:scope", "Residual"} <= set(anova.term)
    assert "seed" in set(anova.term)  # seeds pair the runs: a block
    shares = pd.read_parquet(run_dir / "results" / "variance_shares.parquet")
    assert shares.eta_sq.sum() == pytest.approx(1.0, abs=1e-6)  # balanced design
    assert (run_dir / "figures" / "heatmap.png").exists()
    # normalize=none at both scopes: z = |g|, sigmoid(-z) <= 0.5 never passes tau, so every edge gets p_base:
    # the two cells train the same runs, and the recorder shows DropConnect at p_base
    degenerate = pd.read_parquet(run_dir / "results" / "degenerate.parquet").set_index("cell")
    none_layer, none_row = "normalize=none, scope=layer", "normalize=none, scope=row"
    assert degenerate.loc[none_row, "identical_to"] == none_layer
    assert degenerate.loc[none_layer, "dropconnect_at_p_base"] and degenerate.loc[none_row, "dropconnect_at_p_base"]
    assert not degenerate.loc["normalize=zscore, scope=layer", "dropconnect_at_p_base"]
    verdicts = pd.read_parquet(run_dir / "results" / "verdicts.parquet")
    assert len(verdicts) == degenerate.merged_label.nunique() - 1  # distinct settings against the reference
    assert f"{none_layer} ≡ {none_row}" in set(verdicts.cell)
    assert (verdicts.baseline == "normalize=zscore, scope=layer").all() and (verdicts.verdict == "exploratory").all()
    regime = pd.read_parquet(run_dir / "results" / "regime.parquet")
    assert set(regime.cell) == set(degenerate.index)


def test_dynamics_data(smoke_outputs):
    base, _ = smoke_outputs
    run_dir = base / "04_dynamics"
    runs = pd.read_parquet(run_dir / "results" / "runs.parquet")
    assert set(runs.tag) == {"none", "dropout", "dropconnect", "standout", "ddc"}
    summary = pd.read_parquet(run_dir / "results" / "dynamics_summary.parquet")
    ddc_rate = summary.query("tag == 'ddc' and metric == 'realized_drop_rate'")["mean"].item()
    assert 0.3 < ddc_rate < 0.8
    assert len(list((run_dir / "figures").glob("*.png"))) >= 4
    # the overlap claim against its null: independent masks at the same realised rates
    overlap = pd.read_parquet(run_dir / "results" / "mask_overlap.parquet")
    assert {"ddc", "dropconnect"} <= set(overlap.tag)
    null = overlap[overlap.quantity == "independent masks"].set_index("tag").mask_jaccard
    assert 0.2 < null["ddc"] < 0.6
    # one seed at smoke: McNemar on the test images instead of intervals over seeds
    mcnemar = pd.read_parquet(run_dir / "results" / "mcnemar.parquet")
    assert set(mcnemar.method) == {"dropout", "dropconnect", "standout", "ddc"} and mcnemar.pvalue.between(0, 1).all()
    regime = pd.read_parquet(run_dir / "results" / "regime.parquet")
    assert set(regime.tag) == set(runs.tag)
    conclusion = "\n".join(json.loads((run_dir / "results" / "conclusions.json").read_text())["conclusion"])
    assert f"would overlap {null['ddc']:.3f}" in conclusion and "McNemar" in conclusion
    # sources of variance, one at a time: each group is the base run plus runs that moved that source's seed alone
    variance_runs = pd.read_parquet(run_dir / "results" / "variance_runs.parquet")
    for source in ("data", "init", "order", "mask"):
        group = variance_runs[variance_runs.source == source]
        assert len(group) == 2 and group.seed.nunique() == 1
        assert group[f"{source}_seed"].fillna(group.seed.iloc[0]).nunique() == 2
        for other in {"data", "init", "order", "mask"} - {source}:
            assert group[f"{other}_seed"].isna().all() or group[f"{other}_seed"].fillna(0).eq(0).all()
    everything = variance_runs[variance_runs.source == "all"]
    assert everything.seed.nunique() == 2
    variance = pd.read_parquet(run_dir / "results" / "variance_sources.parquet").set_index("source")
    assert set(variance.index) == {"data", "init", "order", "mask", "all"} and variance.loc["all", "share"] == pytest.approx(1.0)
    assert "Sources of variance" in conclusion


def test_report_collects_everything(smoke_outputs):
    base, _ = smoke_outputs
    summary = (base / "05_report" / "summary.md").read_text()
    for notebook in ("01_synthetic_regression", "04_dynamics"):
        assert f"## {notebook}" in summary
    report = (base / "05_report" / "report.md").read_text()
    assert "## Verdicts, restated from the notebooks" in report and "### 02_baselines" in report
    # one comparison, one answer: the report shows the numbers the notebook stored
    verdicts = pd.read_parquet(base / "02_baselines" / "results" / "verdicts.parquet")
    for row in verdicts.itertuples():
        line = next(l for l in report.splitlines() if l.startswith(f"| {row.experiment} / {row.tag} vs {row.baseline} |"))
        for number in (row.mean_diff, row.ci_low, row.ci_high, row.p_ttest, row.p_holm):
            assert f"{number:.4g}" in line
    if pd.read_parquet(base / "02_baselines" / "results" / "runs.parquet").sweep.nunique() >= 2:
        assert "## 02_baselines across tasks: ranks" in report and "P(a run of X beats a run of Y" in report
    # the page to share: every figure of 01-04 and of the report embedded, every notebook's conclusions
    page = (base / "05_report" / "report.html").read_text(encoding="utf-8")
    figures = [p for p in base.glob("0[1-5]_*/figures/*.png")]
    assert page.count('src="data:image/png;base64,') == len(figures)
    for notebook in ("01_synthetic_regression", "02_baselines", "03_ablation-zscore", "04_dynamics"):
        assert f'id="conclusions-{notebook.replace("_", "-")}"' in page


def test_figures_regenerate_without_training(smoke_outputs, tmp_path):
    base, _ = smoke_outputs
    copy = tmp_path / "smoke"
    shutil.copytree(base, copy)
    before = {p.relative_to(copy) for p in copy.glob("*/figures/*.png")}
    for figures in copy.glob("*/figures"):
        shutil.rmtree(figures)
    (copy / "05_report" / "report.html").unlink()
    runs_before = sorted(p.name for p in (copy / "runs").iterdir())
    written = paper.regenerate_figures(copy, log=lambda *_: None)
    assert written and all(Path(p).stat().st_size > 0 for p in written)
    # every figure, 05's included, and the HTML page are back; nothing was trained
    assert {p.relative_to(copy) for p in copy.glob("*/figures/*.png")} == before
    assert any(p.parts[0] == "05_report" for p in before) and (copy / "05_report" / "report.html").exists()
    assert sorted(p.name for p in (copy / "runs").iterdir()) == runs_before
    # the index keeps its timing table when `ddc figures` rewrites it
    result = CliRunner().invoke(main, ["figures", "--output", str(tmp_path), "--profile", "smoke", "-q"])
    assert result.exit_code == 0, result.output
    index = (copy / "INDEX.md").read_text()
    assert "| notebook | time | finished |" in index and "| 02_baselines |" in index and "05_report/report.html" in index


def test_every_figure_reads(smoke_outputs, tmp_path):
    """Tick labels apart and inside the figure, legends off the data: every figure of 01-05 at smoke."""
    from notebook_checks import unreadable_figures

    base, _ = smoke_outputs
    copy = tmp_path / "smoke"
    shutil.copytree(base, copy)
    functions = paper.figure_functions()
    problems = {}
    for folder in sorted(p for p in copy.iterdir() if p.is_dir() and p.name[:2] in PAPER):
        found = unreadable_figures(folder, functions[folder.name.split("-")[0]])
        problems.update({f"{folder.name}/{name}": p for name, p in found.items()})
    assert problems == {}


def test_executed_notebooks_are_clean(smoke_outputs):
    """No warnings (stderr) and no stray values (execute_result) in the executed notebooks: every output is meant."""
    from notebook_checks import stray_outputs

    _, executed = smoke_outputs
    assert {e.notebook: stray_outputs(e.output) for e in executed if stray_outputs(e.output)} == {}
