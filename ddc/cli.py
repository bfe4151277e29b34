"""The ``ddc`` command line (click): train, data, runs, and the higher-level jobs.

Every :class:`ddc.train.TrainConfig` field is an option of ``ddc train``;
a YAML/JSON file and a named recipe can supply them too (precedence:
recipe < file < options). Click rejects an unknown option and suggests the
closest one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import click

from .train import TrainConfig

DEFAULT_ROOT = "runs"


def _parse_value(text: str):
    """``KEY=VALUE`` values are YAML scalars: numbers, booleans, null, strings, lists."""
    import yaml

    return yaml.safe_load(text)


def _key_values(pairs, option: str) -> Dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def load_config_file(path: str) -> Dict[str, Any]:
    import yaml

    text = Path(path).read_text()
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise click.BadParameter(f"{path} must hold a mapping of config fields", param_hint="--config")
    return values


_FIELD_TYPES = {"int": int, "float": float, "str": str, "Optional[int]": int, "Optional[str]": str}


def _field_options(command):
    """Decorate ``command`` with one option per TrainConfig field (except the structured ones)."""
    for f in reversed(dataclasses.fields(TrainConfig)):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("method_options", "layers", "classes"):
            continue
        if f.type == "bool":
            command = click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=f"[{f.default}]")(command)
        else:
            command = click.option(flag, f.name, type=_FIELD_TYPES[f.type], default=None, help=f"[default: {f.default}]")(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ddc")
def main():
    """Dynamic DropConnect toolkit: train, record, sweep, analyse, run the paper notebooks."""


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML/JSON file of config fields.")
@click.option("--recipe", "recipe_name", default=None, help="Named recipe (see `ddc recipes`).")
@click.option("--profile", type=click.Choice(["smoke", "quick", "full"]), default="full", show_default=True, help="Recipe profile.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Method option, e.g. --opt p_base=0.3 (repeatable).")
@click.option("--layers", default=None, help="Comma-separated layer names or glob patterns (default: the model's paper layer).")
@click.option("--classes", default=None, help="Comma-separated class ids to keep, relabelled 0..k-1 (default: all).")
@click.option("--root", default=DEFAULT_ROOT, show_default=True, type=click.Path(file_okay=False), help="Run store root.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and run id, train nothing.")
@_field_options
def train(config_file, recipe_name, profile, opts, layers, classes, root, dry_run, **fields):
    """Train one run and write it into the run store."""
    from . import recipes
    from .train import run

    values: Dict[str, Any] = {}
    if recipe_name:
        values.update(recipes.recipe(recipe_name, profile))
    if config_file:
        values.update(load_config_file(config_file))
    values.update({k: v for k, v in fields.items() if v is not None})
    if opts:
        values["method_options"] = {**values.get("method_options", {}), **_key_values(opts, "--opt")}
    if layers:
        values["layers"] = [x.strip() for x in layers.split(",") if x.strip()]
    if classes:
        try:
            values["classes"] = [int(x) for x in classes.split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"{classes!r} must be comma-separated integers", param_hint="--classes") from None
    try:
        config = TrainConfig.from_dict(values)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"run {config.run_id()}")
    if dry_run:
        click.echo(json.dumps(config.to_dict(), indent=2))
        return
    path = run(config, root)
    summary = json.loads((path / "summary.json").read_text())
    click.echo(json.dumps({k: summary[k] for k in sorted(summary)}, indent=2))
    click.echo(f"written to {path}")


@main.command("recipes")
@click.option("--profile", type=click.Choice(["smoke", "quick", "full"]), default="full", show_default=True)
def recipes_cmd(profile):
    """List the named recipes and their fields at a profile."""
    from . import recipes

    for name in recipes.RECIPES:
        click.echo(f"{name}: {json.dumps(recipes.recipe(name, profile))}")


# ----------------------------------------------------------------------------- data


@main.group()
def data():
    """Datasets: what is available, and explicit downloads."""


@data.command("list")
@click.option("--root", default=None, help="Extra place to look first.")
def data_list(root):
    """Show each dataset, whether it is available, and how to get it."""
    from . import data as data_module

    for row in data_module.describe(root):
        if not row["available"]:
            status = f"missing: {row['how_to_get']}"
        else:
            status = f"available at {row['path']}" if row["path"] else "available (generated, no files)"
        click.echo(f"{row['name']:<15} {status}")


@data.command("fetch")
@click.argument("name")
@click.option("--root", default=None, help="Where to put it (default: $DDC_DATA or ./data).")
def data_fetch(name, root):
    """Download NAME from the standard mirrors and verify its MD5 checksums."""
    from . import data as data_module

    try:
        path = data_module.fetch(name, root)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"{name} ready at {path}")


# ----------------------------------------------------------------------------- runs


@main.group()
def runs():
    """Inspect the run store."""


@runs.command("ls")
@click.argument("root", default=DEFAULT_ROOT, type=click.Path())
@click.option("--columns", default="run_id,dataset,model,method,seed,epochs,best_epoch,test_acc", show_default=True)
def runs_ls(root, columns):
    """One line per finished run under ROOT."""
    from . import store

    frame = store.load_runs(root)
    if frame.empty:
        click.echo(f"no finished runs under {root}")
        return
    wanted = [c for c in columns.split(",") if c in frame.columns]
    click.echo(frame[wanted].to_string(index=False))


@runs.command("show")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
def runs_show(run):
    """Config, summary and per-epoch metrics of one run directory."""
    from . import store

    path = Path(run)
    click.echo("config:\n" + json.dumps(store.read_json(path / "config.json"), indent=2))
    click.echo("summary:\n" + json.dumps(store.read_json(path / "summary.json"), indent=2))
    metrics = store.load_metrics(path)
    if not metrics.empty:
        table = metrics.pivot_table(index="epoch", columns=["split", "metric"], values="value")
        click.echo(table.to_string())


@runs.command("sql")
@click.argument("query")
@click.option("--root", default=DEFAULT_ROOT, show_default=True, type=click.Path())
def runs_sql(query, root):
    """Run SQL over tables runs, metrics, records (DuckDB)."""
    from . import store

    click.echo(store.sql(query, root).to_string(index=False))


def _register_sweep():
    from .sweep import sweep_command

    main.add_command(sweep_command, "sweep")


_register_sweep()


@main.command()
@click.argument("runs_paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", default="report", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--value", default="test_acc", show_default=True, help="Summary column to compare.")
@click.option("--baseline", default="none", show_default=True, help="Label the other methods are compared with.")
def report(runs_paths, out, value, baseline):
    """Markdown report (tables with CIs, Holm-corrected tests, figures) from stored runs; trains nothing."""
    from experiments.report import build_report

    try:
        path = build_report(list(runs_paths), out, value=value, baseline=baseline)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"report written to {path}")


# ----------------------------------------------------------------------------- notebooks


@main.group()
def notebooks():
    """The paper notebooks, executed headlessly with Papermill."""


@notebooks.command("run")
@click.option("--profile", type=click.Choice(["smoke", "quick", "full"]), default="quick", show_default=True)
@click.option("--suite", type=click.Choice(["paper", "openq", "all"]), default=None, help="paper: 01-05 (the main job); openq: 06-09 then 05; all. Default: all, or --only.")
@click.option("--only", multiple=True, help="Notebook name or prefix, e.g. 02 or baselines (repeatable).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Notebook parameter override (repeatable).")
@click.option("--output", default="outputs", show_default=True, type=click.Path(file_okay=False), help="Where executed notebooks and results go.")
def notebooks_run(profile, suite, only, params, output):
    """Execute the notebooks in order; fail fast on an unknown parameter."""
    from .notebooks import SUITES, NotebookFailed, run_notebooks

    if suite and only:
        raise click.UsageError("give --suite or --only, not both")
    only = SUITES[suite] if suite else (only or SUITES["all"])
    try:
        executed = run_notebooks(profile, only=only, parameters=_key_values(params, "--param"), output_root=Path(output))
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except NotebookFailed as error:
        raise click.ClickException(str(error)) from None
    total = sum(e.seconds for e in executed)
    click.echo(f"{len(executed)} notebook(s) in {total:.0f} s; index: {Path(output) / profile / 'INDEX.md'}")


@notebooks.command("list")
def notebooks_list():
    """Each notebook and its parameters with defaults."""
    from .notebooks import declared_parameters, discover

    for notebook in discover():
        declared = declared_parameters(notebook)
        click.echo(notebook.stem)
        for name, info in declared.items():
            click.echo(f"    {name} = {info['default']}")


@main.command()
@click.option("--output", default="outputs", show_default=True, type=click.Path(exists=True, file_okay=False))
@click.option("--profile", type=click.Choice(["smoke", "quick", "full"]), default="quick", show_default=True)
def figures(output, profile):
    """Regenerate every figure from stored results, without training."""
    from experiments import paper
    from .notebooks import write_index

    base = Path(output) / profile
    done = paper.regenerate_figures(base, log=click.echo)
    write_index(base, [])
    click.echo(f"{len(done)} figure file(s) written under {base}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
