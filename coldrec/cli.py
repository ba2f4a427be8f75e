"""The `coldrec` command line: a thin shell over the library.

Each command parses its options, calls one `run_<stage>` function and renders its result.
No polars or torch logic lives here; heavy modules are imported inside the commands so
`coldrec --help` stays fast. Named ColdrecErrors become one line on stderr and exit 2 (75
for a locked output); anything else is exit 1.
"""

from __future__ import annotations

import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from coldrec import __version__, log
from coldrec.errors import EXIT_BAD_INPUT, EXIT_UNEXPECTED, ColdrecError

app = typer.Typer(
    name="coldrec",
    help="Cold-start recommendation: an end-to-end DropoutNet two-tower model over Parquet logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class LogFormat(str, Enum):
    text = "text"
    json = "json"


# --------------------------------------------------------------------------- shared options
# Defined once, reused by every command (typer's Annotated aliases).

OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output directory (written atomically).")]
OutFile = Annotated[Path, typer.Option("--out", "-o", help="Output file (written atomically).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
InputPath = Annotated[Path, typer.Option(help="Parquet file or directory of Parquet files.")]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"coldrec {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = False,
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", help="stderr format: text for people, json (one object per line) for cron.")
    ] = LogFormat.text,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug lines.")] = False,
) -> None:
    """Cold-start recommendation: an end-to-end DropoutNet two-tower model over Parquet logs."""
    log.configure(log_format=log_format.value, quiet=quiet, debug=debug)


def _report(name: str, result: Any) -> None:
    """Render a stage's result: one summary line (text) or one JSON object (json)."""
    log.event(name, result.summary(), **result.fields())


# --------------------------------------------------------------------------- synth


@app.command()
def synth(
    out: OutDir,
    users: Annotated[int, typer.Option(help="Users at the start (more arrive every day).")] = 2000,
    items: Annotated[int, typer.Option(help="Items at the start (more arrive every day).")] = 1000,
    days: Annotated[int, typer.Option(help="Days of logs.")] = 30,
    exposures_per_day: Annotated[int, typer.Option(help="Exposures per day.")] = 6700,
    new_users_per_day: Annotated[Optional[int], typer.Option(help="Users arriving per day (default: 2% of --users).")] = None,
    new_items_per_day: Annotated[Optional[int], typer.Option(help="Items arriving per day (default: 1% of --items).")] = None,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")] = "2026-01-01",
    seed: Seed = 0,
) -> None:
    """Generate synthetic exposure/click logs with planted structure.

    Writes exposures/ (hive-partitioned by day), clicks/, users.parquet, items.parquet and
    truth/ (the generating parameters) into --out.

    Example: coldrec synth --out data/ --users 2000 --items 1000 --days 30
    """
    from coldrec.synth import SynthConfig, run_synth

    config = SynthConfig(
        users=users,
        items=items,
        days=days,
        exposures_per_day=exposures_per_day,
        new_users_per_day=new_users_per_day,
        new_items_per_day=new_items_per_day,
        start=start,
        seed=seed,
    )
    _report("synth", run_synth(config, out))


# @command:datasets (replaced by the datasets command)

# @command:prepare (replaced by the prepare command)

@app.command()
def stats(
    samples: Annotated[Path, typer.Option(help="Output directory of `coldrec prepare` (train.parquet, valid.parquet, ...).")],
    users: InputPath,
    items: InputPath,
    out: OutDir,
    windows: Annotated[str, typer.Option(help="Comma-separated window lengths in days.")] = "1,7,30",
    user_category_columns: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated String columns of --users for an item's audience mix (default: all; '' for none)."),
    ] = None,
    item_category_columns: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated String columns of --items for a user's category mix (default: all; '' for none)."),
    ] = None,
    max_category_values: Annotated[
        int, typer.Option(help="Most frequent values per category column that get a share column; the rest are __other__.")
    ] = 20,
    prior_strength: Annotated[
        float, typer.Option(help="Smoothed CTR = (clicks + a*global_ctr) / (exposures + a); this is a.")
    ] = 10.0,
) -> None:
    """Compute point-in-time user and item preference statistics from labelled samples.

    History is train + valid + test_warm (never test_cold_*). The row for (entity, day d) uses
    only samples before day d; an entity's first active day has no row. Writes
    user_stats.parquet, item_stats.parquet, user_stats_latest.parquet,
    item_stats_latest.parquet and manifest.json into --out.

    Example: coldrec stats --samples prep/ --users data/users.parquet --items data/items.parquet --out stats/
    """
    from coldrec.stats import run_stats

    result = run_stats(
        samples,
        users,
        items,
        out,
        windows=windows,
        user_category_columns=user_category_columns,
        item_category_columns=item_category_columns,
        prior_strength=prior_strength,
        max_category_values=max_category_values,
    )
    _report("stats", result)

# @command:train (replaced by the train command)

# @command:embed (replaced by the embed command)

# @command:index (replaced by the index command)

# @command:recall (replaced by the recall command)

# @command:evaluate (replaced by the evaluate command)


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and map errors to exit codes."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="coldrec", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exit_:
        code = exit_.exit_code
    except typer.TyperException as error:  # usage errors: bad or missing options
        if hasattr(error, "show"):
            error.show(file=sys.stderr)
        else:
            log.error(str(error))
        code = EXIT_BAD_INPUT
    except typer.Abort:
        log.error("aborted")
        code = 130
    except KeyboardInterrupt:
        log.error("interrupted")
        code = 130
    except ColdrecError as error:
        if log.settings.debug:
            traceback.print_exc(file=sys.stderr)
        log.error(str(error))
        code = error.exit_code
    except BrokenPipeError:
        # `coldrec recall --out - | head` closed the pipe: not an error.
        code = 0
    except Exception as error:  # noqa: BLE001 - the last line of defence
        if log.settings.debug:
            traceback.print_exc(file=sys.stderr)
        log.error(f"unexpected {type(error).__name__}: {error} (rerun with --debug for the traceback)")
        code = EXIT_UNEXPECTED
    sys.exit(code)
