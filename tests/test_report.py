"""ddc report: built from stored runs only, identical when rebuilt, with the expected statistics."""

import hashlib
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddc import train
from ddc.cli import main
from experiments.report import build_report
from ddc.train import TrainConfig


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for method in ("none", "dropconnect", "ddc"):
        for seed in (0, 1, 2):
            config = TrainConfig.from_dict(
                dict(
                    dataset="mnist1d",
                    model="mlp",
                    method=method,
                    seed=seed,
                    epochs=2,
                    lr=0.05,
                    train_subset=200,
                    val_subset=100,
                    test_subset=100,
                    warmup_epochs=0,
                    progress=False,
                )
            )
            train.run(config, root)
    return root


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_contents(runs_root, tmp_path):
    report = build_report(runs_root, tmp_path / "r", n_resamples=499)
    text = report.read_text()
    assert "## mnist1d / mlp" in text and "9 runs" in text
    assert "Paired differences vs `none` (paired t over seeds, 95% t interval; the methods are one family" in text
    assert "| ddc | methods | 3 |" in text
    assert "Friedman" not in text  # one experiment: ranks across experiments need several (seeds are not Demšar's blocks)
    for label in ("none", "dropconnect", "ddc"):
        assert f"| {label} | 3 |" in text
    assert "| exploratory |" in text  # 3 seeds: no verdict words
    assert (tmp_path / "r" / "figures").is_dir() and any((tmp_path / "r" / "figures").glob("*.png"))


def test_report_regenerates_identically(runs_root, tmp_path):
    first = build_report(runs_root, tmp_path / "a", n_resamples=499).parent
    second = build_report(runs_root, tmp_path / "b", n_resamples=499).parent
    assert _digest(first) == _digest(second)


def test_report_cli_and_empty_root(runs_root, tmp_path):
    result = CliRunner().invoke(main, ["report", str(runs_root), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "no finished runs" in result.output


# ----------------------------------------------------------------------------- the HTML report

CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const bad = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const links = [...document.querySelectorAll("a[href]")].map(a => a.getAttribute("href"));
  const broken = links.filter(h => !(h.startsWith("#") && document.getElementById(decodeURIComponent(h.slice(1)))));
  const out = document.createElement("pre");
  out.id = "ddc-check";
  out.textContent = JSON.stringify({images: images.length, bad, links: links.length, broken});
  document.body.appendChild(out);
});
</script>"""


def _chromium():
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium: `apt-get install chromium` (.ci/run installs it when it can)")


def _open_in_chromium(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` (with a checking script added) in headless Chromium; what the page saw."""
    import html
    import json
    import re
    import subprocess

    checked = tmp_path / f"checked-{page.name}"
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    found = re.search(r'<pre id="ddc-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"chromium did not run the check (exit {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def notebook_outputs(tmp_path_factory):
    """A notebook output folder as `ddc notebooks run` leaves it: conclusions, settings, a table, a figure."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    outputs = tmp_path_factory.mktemp("outputs") / "smoke"
    folder = outputs / "01_example"
    (folder / "results").mkdir(parents=True)
    (folder / "figures").mkdir()
    (folder / "results" / "conclusions.json").write_text(json.dumps({"conclusion": ["DDC took `12` steps & **fewer** than <DropConnect>."]}))
    (folder / "results" / "settings.json").write_text(json.dumps({"seeds": [0, 1, 2], "steps": 20}))
    pd.DataFrame({"method": ["ddc", "none"], "mean": [0.5, 0.25]}).to_parquet(folder / "results" / "summary.parquet")
    pd.DataFrame({"step": range(500)}).to_parquet(folder / "results" / "trajectories.parquet")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(folder / "figures" / "loss_curves.png")
    plt.close(fig)
    return outputs


def test_html_report_is_self_contained(runs_root, notebook_outputs, tmp_path):
    from experiments.report_html import build_html_report

    page = build_html_report(runs_root, tmp_path / "h", outputs=notebook_outputs, n_resamples=499)
    text = page.read_text(encoding="utf-8")
    for heading in ("Conclusions", "Statistics from the run store", "Figures of the notebooks", "Tables of the notebooks",
                    "Configuration", "Versions"):
        assert f">{heading}</h2>" in text
    assert "DDC took <code>12</code> steps &amp; <strong>fewer</strong> than &lt;DropConnect&gt;." in text
    assert "summary (2 rows)" in text and "trajectories (500 rows)" in text  # small tables shown, large ones named
    assert ">torch</th>" in text and "&quot;steps&quot;: 20" in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) >= 3 and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing fetched
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', text))  # no link leaves the page
    assert (tmp_path / "h" / "report.md").exists()


def test_html_report_in_chromium_every_image_loads_and_no_link_is_broken(runs_root, notebook_outputs, tmp_path):
    from experiments.report_html import build_html_report

    page = build_html_report(runs_root, tmp_path / "h", outputs=notebook_outputs, n_resamples=499)
    seen = _open_in_chromium(page, tmp_path)
    assert seen["images"] == len(re.findall(r"<img ", page.read_text(encoding="utf-8"))) >= 3
    assert seen["bad"] == [] and seen["broken"] == [] and seen["links"] >= 6
    # the check itself sees a broken image and broken links
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><img alt="x" src="data:image/png;base64,AAAA">'
                      '<a href="#nowhere">a</a><a href="other.html">b</a><h2 id="here">h</h2><a href="#here">c</a></body></html>')
    seen = _open_in_chromium(broken, tmp_path)
    assert seen["bad"] == ["x"] and seen["broken"] == ["#nowhere", "other.html"]


def test_report_cli_html_finds_the_notebook_outputs_beside_the_store(notebook_outputs, runs_root, tmp_path):
    import shutil

    shutil.copytree(runs_root, notebook_outputs / "runs", dirs_exist_ok=True)
    result = CliRunner().invoke(main, ["report", str(notebook_outputs / "runs"), "--html", "--out", str(tmp_path / "c"), "-q"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "c" / "report.html").read_text(encoding="utf-8")
    assert "01_example" in text and "Figures of the notebooks" in text
    result = CliRunner().invoke(main, ["report", str(runs_root), "--html", "--out", str(tmp_path / "d"), "-q"])
    assert result.exit_code == 0 and "Figures of the notebooks" not in (tmp_path / "d" / "report.html").read_text(encoding="utf-8")


def test_a_comparison_a_notebook_decided_is_not_tested_again_in_the_store_section(runs_root, tmp_path):
    """02 decided ddc vs none on these runs: the HTML page's store statistics leave that pair out (one line says so)
    and test only the rest; the notebook's row is the one answer."""
    import pandas as pd
    from analysis import verdicts as V
    from ddc.store import load_runs
    from experiments.report import build_report, decided_comparisons
    from experiments.report_html import build_html_report

    runs = load_runs(runs_root)
    runs = runs.assign(tag=runs.method, experiment="mnist1d-mlp")[["run_id", "tag", "experiment", "seed", "test_acc"]]
    verdicts = V.paired_verdicts(runs, value="test_acc", pairs=[("ddc", "none")], method_col="tag", by="experiment",
                                 family={("ddc", "none"): "primary"})
    outputs = tmp_path / "outputs" / "smoke"
    results = outputs / "02_baselines" / "results"
    results.mkdir(parents=True)
    runs.to_parquet(results / "runs.parquet")
    verdicts.to_parquet(results / "verdicts.parquet")
    decided = decided_comparisons(outputs)
    assert len(decided) == 1 and decided[0]["notebook"] == "02_baselines"

    def store_tests(markdown: str):
        return [line for line in markdown.splitlines() if line.startswith("| ") and " vs " not in line and "methods" in line]

    alone = build_report(runs_root, tmp_path / "alone", n_resamples=499).read_text()  # no notebook: every pair tested
    assert sorted(line.split(" | ")[0].strip("| ") for line in store_tests(alone)) == ["ddc", "dropconnect"]
    assert "Not tested again" not in alone

    page = build_html_report(runs_root, tmp_path / "h", outputs=outputs, n_resamples=499)
    markdown = (tmp_path / "h" / "report.md").read_text()
    tested = store_tests(markdown)
    assert [line.split(" | ")[0].strip("| ") for line in tested] == ["dropconnect"], markdown  # ddc vs none: not again
    assert markdown.count("Not tested again here") == 1 and "`ddc` vs `none` (decided in 02_baselines)" in markdown
    # the rest is one family of its own: Holm over the one comparison left, so p_holm equals its p
    row = tested[0].split(" | ")
    header = [line for line in markdown.splitlines() if line.startswith("| label | family")][0].split(" | ")
    assert row[header.index("p_ttest")] == row[header.index("p_holm")]
    assert "decided in 02_baselines" in page.read_text(encoding="utf-8")
