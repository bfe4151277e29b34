"""The ``ddc`` command line (click): train, data, runs, and the higher-level jobs.

Every :class:`ddc.train.TrainConfig` field is an option of ``ddc train``;
a YAML/JSON file and a named recipe can supply them too (precedence:
recipe < file < options). Click rejects an unknown option and suggests the
closest one.

A user's mistake (a bad value, file, path or query) ends a command with one
line naming the field, file or path, exit code 2, and nothing written
(:class:`ddc.clierrors.UserError`). A full disk exits with 1 and names the path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import click

from ._optional import missing_extra, require, require_extra
from .clierrors import UserError, store_error
from .configfile import ConfigFileError, load_mapping, parse_pairs
from .recipes import DEFAULT_PROFILE, PROFILES
from .sweep.executors import BACKENDS as SWEEP_BACKENDS
from .train import TrainConfig


def _profile_option(help_text: str):
    """``--profile``: one default (:data:`ddc.recipes.DEFAULT_PROFILE`) in every command."""
    return click.option("--profile", type=click.Choice(PROFILES), default=DEFAULT_PROFILE, show_default=True, help=help_text)


_ROOT_HELP = "Run store [default: $DDC_RUNS, else outputs/<profile>/runs, the store `make paper` writes]."


def _progress_line(message: str) -> None:
    """What a long command is doing, on stderr (stdout keeps the results)."""
    click.echo(message, err=True)


def _store_to_read(root: Optional[str], profile: str, how: str = "--root PATH") -> Path:
    """The run store a reading command uses: ``root``, else the default; one-line error when absent.

    ``how``: how this command is given a store (its option or argument), named in the error.
    """
    from . import store

    if root is not None:
        path = Path(root)
        if not path.is_dir():
            raise UserError(f"no run store at {path} (given as the run store); pass the folder your runs were written to")
        return path
    path = store.default_root(profile)
    if not path.is_dir():
        origin = (f"${store.RUNS_ENV}" if os.environ.get(store.RUNS_ENV)
                  else f"the default for --profile {profile}, under {Path.cwd()}; {store.RUNS_ENV} is not set")
        raise UserError(
            f"no run store at {path} ({origin}); pass {how} or set {store.RUNS_ENV}=PATH, "
            f"or create it with `make paper` (`ddc notebooks run --profile {profile}`)"
        )
    return path


def _key_values(pairs, option: str) -> Dict[str, Any]:
    """``KEY=VALUE`` pairs; values are YAML (numbers such as ``3e-1`` are numbers)."""
    try:
        return parse_pairs(pairs, option)
    except ConfigFileError as error:
        raise UserError(error) from None


def load_config_file(path: str) -> Dict[str, Any]:
    """The mapping of config fields in the YAML/JSON file ``path`` (``--config``).

    Raises:
        UserError: the file is empty, unreadable, not YAML or not a mapping; the message names it.
    """
    try:
        return load_mapping(path, "--config file")
    except ConfigFileError as error:
        raise UserError(str(error)) from None


_FIELD_TYPES = {"int": int, "float": float, "str": str, "Optional[int]": int, "Optional[str]": str}


def _field_options(command):
    """Decorate ``command`` with one option per TrainConfig field (except the structured ones)."""
    for config_field in reversed(dataclasses.fields(TrainConfig)):
        name = config_field.name
        flag = "--" + name.replace("_", "-")
        if name in ("method_options", "layers", "classes"):
            continue
        if config_field.type == "bool":
            command = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=f"[{config_field.default}]")(command)
        else:
            command = click.option(flag, name, type=_FIELD_TYPES[config_field.type], default=None,
                                   help=f"[default: {config_field.default}]")(command)
    return command


class _MainGroup(click.Group):
    """The ``ddc`` group: a command that needs an optional dependency which is
    not installed ends with one line naming the extra to install (exit code 2)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as error:
            raise _one_line(error) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # a subcommand's own usage error (bad option, missing argument)
            raise _one_line(error) from None
        except ModuleNotFoundError as error:
            hint = missing_extra(error)
            if hint is None:
                raise
            raise UserError(hint) from None


def _one_line(error: click.UsageError) -> UserError:
    """click's usage error (usage block, hint, message) as one ``Error:`` line that names the help to read."""
    where = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
    return UserError(error.format_message() + where)


@click.group(cls=_MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ddc")
def main():
    """Dynamic DropConnect toolkit: train, record, sweep, analyse, run the paper notebooks.
    \f

    Raises:
        UserError: a usage error (one line, exit 2), or a command that needs an optional
            dependency which is not installed (the line names the extra). Subcommands' own errors pass through.
    """


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML/JSON file of config fields.")
@click.option("--recipe", "recipe_name", default=None, help="Named recipe (see `ddc recipes`).")
@_profile_option("Recipe profile (with --recipe), and the default run store's.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Method option, e.g. --opt p_base=0.3 (repeatable).")
@click.option("--layers", default=None, help="Comma-separated layer names or glob patterns (default: the model's paper layer).")
@click.option("--classes", default=None, help="Comma-separated class ids to keep, relabelled 0..k-1 (default: all).")
@click.option("--root", default=None, type=click.Path(file_okay=False), help=_ROOT_HELP)
@click.option("--dry-run", is_flag=True, help="Print the resolved config and run id, train nothing.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="When another process is writing this run: wait for it, or exit.")
@_field_options
def train(config_file, recipe_name, profile, opts, layers, classes, root, dry_run, wait, **fields):
    """Train one run and write it into the run store.
    \f

    Raises:
        UserError: a bad recipe, file, option or value, a busy path (exit 2; nothing written).
        click.ClickException: another process writes the run and --no-wait was given.
    """
    from . import recipes, store
    from .train import RunSetupError, run

    values: Dict[str, Any] = {}
    try:
        if recipe_name:
            values.update(recipes.recipe(recipe_name, profile))
    except ValueError as error:
        raise UserError(f"--recipe: {error}") from None
    if config_file:
        values.update(load_config_file(config_file))
    values.update({name: value for name, value in fields.items() if value is not None})
    if opts:
        options = values.get("method_options") or {}
        if not isinstance(options, dict):
            raise UserError(f"method_options={options!r} must be a mapping of option names to values")
        values["method_options"] = {**options, **_key_values(opts, "--opt")}
    if layers is not None:  # an empty --layers '' is a mistake, named by the config's check
        values["layers"] = [layer.strip() for layer in layers.split(",") if layer.strip()]
    if classes:
        try:
            values["classes"] = [int(label) for label in classes.split(",") if label.strip()]
        except ValueError:
            raise UserError(f"--classes {classes!r} must be comma-separated integers") from None
    try:
        config = TrainConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise UserError(error) from None
    if dry_run:
        click.echo(f"run {config.run_id()}")
        click.echo(json.dumps(config.to_dict(), indent=2))
        return
    try:
        path = run(config, root if root is not None else store.default_root(profile), wait=wait,
                   log=lambda message: click.echo(message, err=True))
    except (RunSetupError, store.RunPathOccupied) as error:
        raise UserError(error) from None
    except store.RunBusy as error:
        raise click.ClickException(f"{error}; run again to wait for it (--wait)") from None
    except OSError as error:
        raise store_error(error) from None
    summary = json.loads((path / "summary.json").read_text())
    click.echo(json.dumps({key: summary[key] for key in sorted(summary)}, indent=2))
    click.echo(f"run {config.run_id()} written to {path}")


@main.command("recipes")
@_profile_option("Profile to show the recipes at.")
def recipes_cmd(profile):
    """List the named recipes and their fields at a profile.
    \f

    Raises:
        Nothing of its own (click checks ``--profile``).
    """
    from . import recipes

    for name in recipes.RECIPES:
        click.echo(f"{name}: {json.dumps(recipes.recipe(name, profile))}")


# ----------------------------------------------------------------------------- data


@main.group()
def data():
    """Datasets: what is available, and explicit downloads.
    \f

    Raises:
        Nothing (a group).
    """


@data.command("list")
@click.option("--root", default=None, help="Extra place to look first.")
def data_list(root):
    """Show each dataset, whether it is available, and how to get it.
    \f

    Raises:
        Nothing of its own (:func:`ddc.data.describe` reports problems as rows).
    """
    from . import data as data_module

    for row in data_module.describe(root):
        if row["problem"] and row["path"]:
            status = f"broken at {row['path']}: {row['problem']}; get it again with: {row['how_to_get']}"
        elif row["problem"]:
            status = f"unavailable: {row['problem']}"
        elif not row["available"]:
            status = f"missing: {row['how_to_get']}"
        else:
            status = f"available at {row['path']}" if row["path"] else "available (generated, no files)"
        click.echo(f"{row['name']:<15} {status}")


@data.command("fetch")
@click.argument("name")
@click.option("--root", default=None, help="Where to put it (default: $DDC_DATA or ./data).")
def data_fetch(name, root):
    """Download NAME from the standard mirrors and verify its MD5 checksums.
    \f

    Raises:
        UserError: NAME is not a dataset with files (exit 2).
        click.ClickException: every mirror failed.
    """
    from . import data as data_module

    try:
        path = data_module.fetch(name, root)
    except ValueError as error:
        raise UserError(error) from None
    except OSError as error:
        raise click.ClickException(" ".join(str(error).split())) from None
    click.echo(f"{name} ready at {path}")


# ----------------------------------------------------------------------------- runs


@main.group()
def runs():
    """Inspect the run store.
    \f

    Raises:
        Nothing (a group).
    """


DEFAULT_COLUMNS = "run_id,dataset,model,method,seed,epochs,best_epoch,test_acc"


def _good_runs(root: Path):
    """The readable runs under ``root``; the unreadable ones are named on stderr, one line each."""
    from . import store

    good, bad = store.scan(root)
    for path, why in bad.items():
        click.echo(f"skipped {path}: {why}", err=True)
    return good


@runs.command("ls")
@click.argument("root", default=None, required=False, type=click.Path())
@click.option("--columns", default=None, help=f"Comma-separated columns [default: {DEFAULT_COLUMNS}].")
@_profile_option("Whose default run store to list.")
def runs_ls(root, columns, profile):
    """One line per finished run under ROOT (default: $DDC_RUNS, else outputs/<profile>/runs).

    Run folders that cannot be read are named on stderr and left out.
    \f

    Raises:
        UserError: no run store there, or an unknown column (exit 2).
    """
    from . import store

    root = _store_to_read(root, profile, how="the store's folder as an argument (`ddc runs ls PATH`)")
    frame = store.load_runs(_good_runs(root))
    wanted = [column.strip() for column in (columns or DEFAULT_COLUMNS).split(",") if column.strip()]
    unknown = [column for column in wanted if column not in frame.columns]
    if columns and unknown:
        raise UserError(f"--columns: no column {', '.join(map(repr, unknown))}; columns: {', '.join(frame.columns)}")
    if frame.empty:
        click.echo(f"no finished runs under {root}")
        return
    click.echo(frame[[column for column in wanted if column in frame.columns]].to_string(index=False))


@runs.command("show")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
def runs_show(run):
    """Config, summary and per-epoch metrics of one run directory.
    \f

    Raises:
        UserError: RUN is not a readable run (exit 2).
    """
    from . import store

    path = Path(run)
    why = store.check_run(path)
    if why is not None:
        raise UserError(f"{path} is not a readable run: {why}")
    click.echo("config:\n" + json.dumps(store.read_json(path / "config.json"), indent=2))
    click.echo("summary:\n" + json.dumps(store.read_json(path / "summary.json"), indent=2))
    metrics = store.load_metrics(path)
    if not metrics.empty:
        table = metrics.pivot_table(index="epoch", columns=["split", "metric"], values="value")
        click.echo(table.to_string())


@runs.command("sql")
@click.argument("query")
@click.option("--root", default=None, type=click.Path(), help=_ROOT_HELP)
@_profile_option("Whose default run store to query.")
def runs_sql(query, root, profile):
    """Run SQL over tables runs, metrics, records (DuckDB); unreadable runs are named on stderr and left out.
    \f

    Raises:
        UserError: no run store there, or an SQL error (exit 2).
    """
    duckdb = require("duckdb", "ddc runs sql")

    from . import store

    good = _good_runs(_store_to_read(root, profile))
    try:
        frame = store.sql(query, good)
    except duckdb.Error as error:
        raise UserError(f"SQL error in {query!r}: {str(error).splitlines()[0]}") from None
    click.echo(frame.to_string(index=False))


# ----------------------------------------------------------------------------- sweeps


@main.command("sweep")
@click.argument("spec_path", metavar="SPEC", type=click.Path(exists=True, dir_okay=False))
@click.option("--root", default=None, type=click.Path(file_okay=False), help="Run store root [default: $DDC_RUNS, else outputs/<the spec's profile>/runs].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Parallel runs [default: all cores / the cluster's workers].")
@click.option("--backend", type=click.Choice(SWEEP_BACKENDS), default=None, help="Where runs execute [default: dask with --address, else local].")
@click.option("--address", default=None, help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (implies --backend dask).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch threads of a worker outside training; each run trains with its config's num_threads (default 1).")
@click.option("--dry-run", is_flag=True, help="List the run ids and whether each is done, failed, partial or pending; run nothing.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar of the sweep.")
def sweep(spec_path, root, workers, backend, address, threads, dry_run, progress):
    """Run the grid of runs described by the YAML sweep SPEC into the run store.

    Finished runs are skipped, interrupted ones resume, failing ones are
    recorded under ROOT/.failed and the sweep goes on. Run it again after an
    interruption to complete the grid. Exits with status 1 if any run failed.
    \f

    Raises:
        UserError: a bad spec or option (exit 2; nothing written).
        click.ClickException: the run store cannot be written (exit 1, the path named).
    """
    from .sweep import load_spec, run_sweep, sweep_root

    backend = backend or ("dask" if address else "local")
    try:
        spec = load_spec(spec_path)
        if address and backend != "dask":
            raise ValueError("--address needs --backend dask")
    except ValueError as error:
        raise UserError(error) from None
    root = str(sweep_root(root, spec))
    if dry_run:
        _list_sweep(spec, root)
        return
    from .train import RunSetupError

    try:
        result = run_sweep(spec, root, workers=workers, backend=backend, address=address, progress=progress, threads=threads)
    except RunSetupError as error:  # what `ddc train` refuses: the same line, exit 2, nothing written
        raise UserError(error) from None
    except OSError as error:  # the store cannot be written: named, one line
        raise store_error(error) from None
    _report_sweep(result, root)


def _list_sweep(spec, root: str) -> None:
    """``--dry-run``: each run's status and variant, then the counts."""
    from .sweep import sweep_status

    status = sweep_status(spec, root) if Path(root).exists() else {run_id: "pending" for run_id in spec.run_ids()}
    variants = {run.run_id: run.variant for run in spec.runs()}
    for run_id, state in status.items():
        label = f"  [{variants[run_id]}]" if variants[run_id] else ""
        click.echo(f"{state:<8} {run_id}{label}")
    counts = {name: list(status.values()).count(name) for name in ("done", "failed", "partial", "pending")}
    click.echo(f"sweep {spec.name}: {len(status)} runs, " + ", ".join(f"{count} {name}" for name, count in counts.items()) + f" (root {root})")


def _report_sweep(result, root: str) -> None:
    """What a sweep did; exit status 1 when a run failed."""
    from .sweep import FAILED
    from .sweep.runner import first_line

    click.echo(
        f"sweep {result.spec.name}: {len(result.run_ids)} runs, {len(result.skipped)} already done, "
        f"{len(result.completed)} completed, {len(result.failed)} failed in {result.seconds:.1f}s (root {root})"
    )
    for run_id, why in result.retried.items():
        state = "failed again" if run_id in result.failed else "then completed"
        click.echo(f"  retried {run_id}: {why}; {state}")
    if result.failed:
        for run_id, error in result.failed.items():
            click.echo(f"  failed {run_id}: {first_line(error)}", err=True)
        click.echo(f"tracebacks in {Path(root) / FAILED}; run the sweep again to retry them", err=True)
        sys.exit(1)



@main.command()
@click.argument("runs_paths", nargs=-1, type=click.Path())
@click.option("--out", "out_folder", default=None, type=click.Path(file_okay=False), help="Output folder [default: outputs/<profile>/report].")
@click.option("--value", default="test_acc", show_default=True, help="Summary column to compare.")
@click.option("--baseline", default="none", show_default=True, help="Label the other methods are compared with.")
@_profile_option("Whose default run store to report on.")
@click.option("--html", "as_html", is_flag=True, help="Also one self-contained HTML page: conclusions, every figure, tables, configuration, versions.")
@click.option("--outputs", default=None, type=click.Path(file_okay=False), help="With --html: notebook outputs to include [default: the folder holding the run store, when it holds notebook outputs].")
@click.option("-q", "--quiet", is_flag=True, help="Do not say what is being done.")
def report(runs_paths, out_folder, value, baseline, profile, as_html, outputs, quiet):
    """Report from stored runs (tables with CIs, Holm-corrected tests, figures); trains nothing.

    RUNS_PATHS: run stores or run folders [default: $DDC_RUNS, else outputs/<profile>/runs].
    Writes report.md and figures/ (and report.html with --html) into --out.
    \f

    Raises:
        UserError: no run store there, or nothing to report (exit 2).
        click.UsageError: --outputs is not a folder (exit 2).
        UserError: the analysis extra is not installed (exit 2).
    """
    require_extra("analysis", "ddc report")
    from experiments.report import build_report
    from experiments.report_html import build_html_report, outputs_of

    from . import store

    how = "the store's folder as an argument (`ddc report PATH`)"
    paths = [str(_store_to_read(path, profile, how)) for path in runs_paths] or [str(_store_to_read(None, profile, how))]
    out_folder = Path(out_folder) if out_folder is not None else Path(store.OUTPUTS) / profile / "report"
    log = None if quiet else _progress_line
    if outputs is not None and not Path(outputs).is_dir():
        raise click.UsageError(f"--outputs {outputs} is not a folder; pass the folder `ddc notebooks run` wrote for one profile, e.g. outputs/{profile}")
    try:
        if as_html:
            found = Path(outputs) if outputs is not None else (outputs_of(paths[0]) if len(paths) == 1 else None)
            path = build_html_report(paths, out_folder, outputs=found, value=value, baseline=baseline, log=log)
        else:
            path = build_report(paths, out_folder, value=value, baseline=baseline, log=log)
    except ValueError as error:
        raise UserError(error) from None
    click.echo(f"report written to {path}")


# ----------------------------------------------------------------------------- notebooks


@main.group()
def notebooks():
    """The paper notebooks, executed headlessly with Papermill.
    \f

    Raises:
        Nothing (a group).
    """


@notebooks.command("run")
@_profile_option("Profile of every notebook.")
@click.option("--suite", type=click.Choice(["paper", "openq", "all"]), default=None, help="paper: 01-05 (the main job); openq: 06-09 then 05; all. Default: all, or --only.")
@click.option("--only", multiple=True, help="Notebook name or prefix, e.g. 02 or baselines (repeatable).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Notebook parameter override (repeatable).")
@click.option("--output", default="outputs", show_default=True, type=click.Path(file_okay=False), help="Where executed notebooks and results go (the run store is <output>/<profile>/runs unless $DDC_RUNS is set).")
@click.option("-q", "--quiet", is_flag=True, help="No progress in the terminal (errors and the final line only).")
def notebooks_run(profile, suite, only, params, output, quiet):
    """Execute the notebooks in order; fail fast on an unknown parameter.

    Progress goes to stderr: each notebook as it starts and ends, and a status
    line with runs done of total, elapsed time and an estimate.
    \f

    Raises:
        UserError: an unknown notebook or parameter, or --suite with --only (exit 2).
        click.ClickException: a notebook failed (its name and the error).
        UserError: the notebooks extra is not installed (exit 2).
    """
    require_extra("notebooks", "ddc notebooks run")
    from .notebooks import SUITES, NotebookFailed, run_notebooks

    if suite and only:
        raise UserError("give --suite or --only, not both")
    only = SUITES[suite] if suite else (only or SUITES["all"])
    parameters = _key_values(params, "--param")
    try:
        executed = run_notebooks(profile, only=only, parameters=parameters, output_root=Path(output), quiet=quiet)
    except ValueError as error:
        raise UserError(error) from None
    except NotebookFailed as error:
        raise click.ClickException(str(error)) from None
    total = sum(notebook.seconds for notebook in executed)
    click.echo(f"{len(executed)} notebook(s) in {total:.0f} s; index: {Path(output) / profile / 'INDEX.md'}")


@notebooks.command("list")
def notebooks_list():
    """Each notebook and its parameters with defaults.
    \f

    Raises:
        FileNotFoundError: the project's ``notebooks/`` folder holds no notebooks.
        UserError: papermill is not installed (``MissingExtra``, turned into one line by the ``ddc`` group; exit 2).
    """
    from .notebooks import declared_parameters, discover

    for notebook in discover():
        declared = declared_parameters(notebook)
        click.echo(notebook.stem)
        for name, info in declared.items():
            click.echo(f"    {name} = {info['default']}")


@main.command()
@click.option("--output", default="outputs", show_default=True, type=click.Path(file_okay=False), help="The folder `ddc notebooks run --output` wrote.")
@_profile_option("Whose outputs to redraw.")
@click.option("-q", "--quiet", is_flag=True, help="Do not say what is being done.")
def figures(output, profile, quiet):
    """Regenerate every figure from stored results, without training.
    \f

    Raises:
        UserError: no notebook outputs there, or the analysis extra is not installed (exit 2).
    """
    require_extra("analysis", "ddc figures")
    from experiments import paper

    from .notebooks import write_index

    base = Path(output) / profile
    if not base.is_dir():
        raise UserError(f"no notebook outputs at {base} (--output {output}, --profile {profile}); run `make paper` "
                               f"(`ddc notebooks run --profile {profile}`) first, or pass the --output folder it wrote")
    done = paper.regenerate_figures(base, log=(lambda _: None) if quiet else _progress_line)
    write_index(base)
    click.echo(f"{len(done)} figure file(s) written under {base}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
