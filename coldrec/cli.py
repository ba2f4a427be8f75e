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
from coldrec.errors import EXIT_BAD_INPUT, EXIT_UNEXPECTED, ColdrecError, UsageError
from coldrec.options import EmbedOptions, IndexOptions, PrepareOptions, RecallOptions, StatsOptions, TuneOptions

app = typer.Typer(
    name="coldrec",
    help="Cold-start recommendation: an end-to-end DropoutNet two-tower model over Parquet logs.",
    no_args_is_help=True,
    add_completion=True,  # coldrec --install-completion (typer's own)
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
    latent_strength: Annotated[float, typer.Option(help="Weight of the taste/topic part content cannot explain: 0 = content explains all, 1.5 = content-poor.")] = 0.6,
    interactions: Annotated[bool, typer.Option("--interactions", help="Taste and topic from crosses of attributes (age group x country, category x price tier, ...), not sums of per-column effects.")] = False,
    click_rate: Annotated[Optional[float], typer.Option(help="Share of exposures clicked, e.g. 0.02 (default: about 0.17 from the world's own logit).")] = None,
    seed: Seed = 0,
) -> None:
    """Generate synthetic exposure/click logs with planted structure.

    Writes exposures/ (hive-partitioned by day), clicks/, users.parquet, items.parquet and
    truth/ (the generating parameters) into --out.

    Example: coldrec synth --out data/ --users 2000 --items 1000 --days 30
    Example: coldrec synth --out data/ --interactions --click-rate 0.02 --latent-strength 1.5
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
        latent_strength=latent_strength,
        interactions=interactions,
        click_rate=click_rate,
    )
    _report("synth", run_synth(config, out))


datasets_app = typer.Typer(
    help="Convert public datasets to coldrec's log format.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("movielens")
def datasets_movielens(
    path: Annotated[Path, typer.Argument(help="Folder with ml-100k.inter/.user/.item (RecBole) or u.data/u.user/u.item (GroupLens).")],
    out: OutDir,
    click_threshold: Annotated[float, typer.Option("--click-threshold", help="Ratings at or above this are clicks.")] = 4.0,
    engineered: Annotated[bool, typer.Option("--engineered", help="Derived content columns (age group, zip prefix, release year and decade) instead of the columns as distributed.")] = False,
) -> None:
    """Convert MovieLens-100K (RecBole or GroupLens files) to coldrec's log format.

    Every rating becomes an exposure at its timestamp, ratings >= --click-threshold also a
    click at the same time; users.parquet and items.parquet carry the content as GroupLens
    has it (age, gender, occupation, zip code; title, release date, genres), or with
    --engineered derived columns. The layout is detected.

    Example: coldrec datasets movielens /tmp/rb/recbole/dataset_example/ml-100k --out data/ml100k
    """
    from coldrec.datasets import run_movielens

    _report("datasets movielens", run_movielens(path, out, click_threshold=click_threshold, engineered=engineered))

# --------------------------------------------------------------------------- prepare


class OrphanClicks(str, Enum):
    drop = "drop"
    keep = "keep"


class TsUnit(str, Enum):
    s = "s"
    ms = "ms"


@app.command()
def prepare(
    clicks: InputPath,
    out: OutDir,
    attribution_window: Annotated[
        str, typer.Option(help="A click within this long after an exposure labels it: 45s, 30m, 2h, 1d.")
    ] = PrepareOptions.attribution_window,
    orphan_clicks: Annotated[
        OrphanClicks, typer.Option(help="Clicks with no exposure in their window: drop them, or keep them as positives.")
    ] = OrphanClicks(PrepareOptions.orphan_clicks),
    ts_unit: Annotated[TsUnit, typer.Option(help="Unit of integer ts columns (epoch seconds or milliseconds).")] = TsUnit(PrepareOptions.ts_unit),
    start: Annotated[Optional[str], typer.Option(help="First day to read, YYYY-MM-DD (inclusive).")] = None,
    end: Annotated[Optional[str], typer.Option(help="Last day to read, YYYY-MM-DD (inclusive).")] = None,
    valid_fraction: Annotated[float, typer.Option(help="The last fraction of the time range that is validation, in (0, 1).")] = PrepareOptions.valid_fraction,
    holdout_items: Annotated[float, typer.Option(help="Fraction of items held out for test_cold_item, in [0, 1).")] = PrepareOptions.holdout_items,
    holdout_users: Annotated[float, typer.Option(help="Fraction of users held out for test_cold_user, in [0, 1).")] = PrepareOptions.holdout_users,
    seed: Seed = PrepareOptions.seed,
    min_click_match: Annotated[
        float, typer.Option(help="Fail (exit 2, nothing written) when fewer than this share of the clicks match an exposure: the logs do not line up. 0 accepts any rate.")
    ] = PrepareOptions.min_click_match,
    exposures: Annotated[
        Optional[Path],
        typer.Option(help="Parquet file or directory of the exposure log. Leave out for a click-only log: every click becomes a positive sample (coldrec train then trains the in-batch softmax alone)."),
    ] = None,
) -> None:
    """Label exposures with clicks and split them into train/valid (+ cold test sets).

    An exposure is positive when a click on the same (user, item) follows it within the
    attribution window; repeats of a pair within the window collapse into the earliest. The
    last --valid-fraction of the time range is validation; --holdout-users/--holdout-items
    move every row of the held-out ids to test_cold_* and add test_warm. See docs/data.md.

    Example: coldrec prepare --exposures data/exposures --clicks data/clicks --out prep/ --holdout-items 0.1

    Example (a click log without exposures): coldrec prepare --clicks data/clicks --out prep/
    """
    from coldrec.prepare import PrepareConfig, run_prepare

    config = PrepareConfig.from_options(
        attribution_window=attribution_window,
        start=start,
        end=end,
        orphan_clicks=orphan_clicks.value,
        ts_unit=ts_unit.value,
        valid_fraction=valid_fraction,
        holdout_items=holdout_items,
        holdout_users=holdout_users,
        seed=seed,
        min_click_match=min_click_match,
    )
    _report("prepare", run_prepare(exposures, clicks, out, config))

@app.command()
def stats(
    samples: Annotated[Path, typer.Option(help="Output directory of `coldrec prepare` (train.parquet, valid.parquet, ...).")],
    users: InputPath,
    items: InputPath,
    out: OutDir,
    windows: Annotated[str, typer.Option(help="Comma-separated window lengths in days.")] = StatsOptions.windows,
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
    ] = StatsOptions.max_category_values,
    prior_strength: Annotated[
        float, typer.Option(help="Smoothed CTR = (clicks + a*global_ctr) / (exposures + a); this is a.")
    ] = StatsOptions.prior_strength,
) -> None:
    """Compute point-in-time user and item preference statistics from labelled samples.

    History is train + valid (never the test_* files). The row for (entity, day d) uses
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

class Objective(str, Enum):
    twotower = "twotower"
    dropoutnet = "dropoutnet"


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def train(
    samples: Annotated[Path, typer.Option("--samples", help="Directory written by `coldrec prepare` (train.parquet, valid.parquet).")],
    users: Annotated[Path, typer.Option("--users", help="Users content table (Parquet, one row per user_id).")],
    items: Annotated[Path, typer.Option("--items", help="Items content table (Parquet, one row per item_id).")],
    out: OutDir,
    stats: Annotated[Optional[Path], typer.Option("--stats", help="Directory written by `coldrec stats` (optional).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config (defaults < config < flags).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Training epochs [training.epochs].")] = None,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Wall-time budget: start no epoch that would end past it; the best epoch so far is kept [training.max_minutes].")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Global batch size [training.batch_size].")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate [training.lr].")] = None,
    user_dropout: Annotated[Optional[float], typer.Option("--user-dropout", help="P(zero a user's preference block) [model.user_dropout_rate].")] = None,
    item_dropout: Annotated[Optional[float], typer.Option("--item-dropout", help="P(zero an item's preference block) [model.item_dropout_rate].")] = None,
    dim: Annotated[Optional[int], typer.Option("--dim", help="Embedding size [model.dim].")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed; the same seed gives the same weights [training.seed].")] = None,
    device: Annotated[Optional[DeviceChoice], typer.Option("--device", help="auto uses a GPU when present [training.device].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last epoch checkpoint.")] = False,
    init_from: Annotated[Optional[Path], typer.Option("--init-from", help="Warm-start from a model directory (known ids keep their rows).")] = None,
    objective: Annotated[Optional[Objective], typer.Option("--objective", help="twotower (losses of [loss]) or dropoutnet (MSE to pretrained U·Vᵀ).")] = None,
    user_vectors: Annotated[Optional[Path], typer.Option("--user-vectors", help="Pretrained user vectors (user_id, vector) for --objective dropoutnet.")] = None,
    item_vectors: Annotated[Optional[Path], typer.Option("--item-vectors", help="Pretrained item vectors (item_id, vector) for --objective dropoutnet.")] = None,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch; 0 = OMP_NUM_THREADS if set, else 1 (best on a shared machine).")] = 0,
) -> None:
    """Train the DropoutNet two-tower model and write a model directory.

    Fits the feature spec on train.parquet, trains with input dropout and the losses of
    [loss], early-stops on validation Recall@K, and writes weights.safetensors, spec.json,
    config.toml, metrics.json, train_log.jsonl and manifest.json into --out. Under
    `torchrun --nproc_per_node N -m coldrec train ...` it trains with DDP.

    Example: coldrec train --samples prep/ --stats stats/ --users users.parquet --items items.parquet --out model/
    """
    from coldrec.train import run_train

    overrides = {
        "training.epochs": epochs,
        "training.max_minutes": max_minutes,
        "training.batch_size": batch_size,
        "training.lr": lr,
        "training.seed": seed,
        "training.device": device.value if device else None,
        "training.objective": objective.value if objective else None,
        "model.user_dropout_rate": user_dropout,
        "model.item_dropout_rate": item_dropout,
        "model.dim": dim,
    }
    result = run_train(
        samples,
        users,
        items,
        out,
        stats=stats,
        config=config,
        overrides=overrides,
        resume=resume,
        init_from=init_from,
        user_vectors=user_vectors,
        item_vectors=item_vectors,
        threads=threads,
    )
    _report("train", result)

@app.command()
def tune(
    samples: Annotated[Path, typer.Option("--samples", help="Directory written by `coldrec prepare` (train.parquet, valid.parquet).")],
    users: Annotated[Path, typer.Option("--users", help="Users content table (Parquet, one row per user_id).")],
    items: Annotated[Path, typer.Option("--items", help="Items content table (Parquet, one row per item_id).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Tune directory: study.db (resumable), best.toml, trials.csv, report.html.")],
    stats: Annotated[Optional[Path], typer.Option("--stats", help="Directory written by `coldrec stats` (optional).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Base TOML config: every key the search does not draw.")] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", help="Trials in the study, resumed ones included [default: 20, or as many as --budget allows].")] = TuneOptions.trials,
    budget: Annotated[Optional[str], typer.Option("--budget", help="Wall time for the search, e.g. 30m, 2h, 90s; no trial runs past it.")] = TuneOptions.budget,
    objective: Annotated[Optional[str], typer.Option("--objective", help="Scenarios averaged: warm,cold_user,cold_item [default: warm + the sides prepare held out].")] = TuneOptions.objective,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler (the trials train with training.seed).")] = TuneOptions.seed,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch; 0 = OMP_NUM_THREADS if set, else 1.")] = TuneOptions.threads,
) -> None:
    """Search the training configuration on the validation split (Optuna TPE, pruning).

    Each trial trains the model with a drawn learning rate, weight decay, negative rate,
    sizes, dropout rates and loss settings, and is scored by the mean validation Recall@K of
    the objective's scenarios (cold ones through the content-only views). The study is kept
    in OUT/study.db: rerunning the command resumes it. Writes OUT/best.toml for `coldrec
    train --config`, trials.csv and report.html. See docs/model.md, "Tuning on your own data".

    Example: coldrec tune --samples prep/ --users users.parquet --items items.parquet --out tune/ --budget 30m
    """
    from coldrec.tune import run_tune

    result = run_tune(samples, users, items, out, stats=stats, config=config, trials=trials, budget=budget, objective=objective, seed=seed, threads=threads)
    _report("tune", result)


@app.command()
def embed(
    model: Annotated[Path, typer.Option("--model", help="Model directory written by `coldrec train`.")],
    out: OutFile,
    users: Annotated[Optional[Path], typer.Option(help="Users table (user_id + the content columns the model was trained on).")] = None,
    items: Annotated[Optional[Path], typer.Option(help="Items table (item_id + the content columns the model was trained on).")] = None,
    stats: Annotated[Optional[Path], typer.Option(help="Stats directory: known ids use their latest statistics (*_stats_latest.parquet).")] = None,
    cold: Annotated[bool, typer.Option("--cold", help="Content only: zero every row's preference block (brand-new users or items).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass.")] = EmbedOptions.batch_size,
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (default: torch's choice; 1 is faster on a busy machine).")] = None,
) -> None:
    """Embed users or items with a trained model (content only with --cold).

    Writes one Parquet file: the id column under its input name, `embedding` (float32,
    L2-normalised) and `cold`; the model's fingerprint is stored in the file's metadata so
    index and recall can tell models apart. Unknown ids fall back to content automatically.

    Example: coldrec embed --model model/ --items items.parquet --stats stats/ --out item_emb.parquet
    """
    from coldrec.embed import run_embed

    _report("embed", run_embed(model=model, out=out, users=users, items=items, stats=stats, cold=cold, batch_size=batch_size, threads=threads))

@app.command()
def index(
    out: OutDir,
    embeddings: Annotated[Optional[Path], typer.Option(help="Item embeddings (from `coldrec embed --items`) to build from.")] = None,
    add: Annotated[Optional[Path], typer.Option("--add", help="New item embeddings to add to the delta of the existing index at --out.")] = None,
    trees: Annotated[int, typer.Option(help="Annoy trees: more = better recall, bigger index, slower build.")] = IndexOptions.trees,
    on_disk_build: Annotated[bool, typer.Option("--on-disk-build", help="Build the forest in the output file instead of RAM (huge catalogues).")] = False,
    fold_delta: Annotated[bool, typer.Option("--fold-delta/--discard-delta", help="On a rebuild, carry delta items missing from --embeddings into the new index.")] = True,
) -> None:
    """Build an Annoy item index (angular, memory-mapped), or add new items to its delta.

    The index directory (items.ann, vectors.npy, ids.parquet, manifest.json) is built
    beside --out and swapped in atomically, so a running recall sees the old or the new one.
    --add puts freshly embedded items in a small delta searched exactly next to the forest;
    a later full build folds the delta in.

    Example: coldrec index --embeddings item_emb.parquet --out index/
    """
    from coldrec.index import run_index

    _report(
        "index",
        run_index(out=out, embeddings=embeddings, add=add, trees=trees, on_disk_build=on_disk_build, fold_delta=fold_delta),
    )

class RecsFormat(str, Enum):
    parquet = "parquet"
    jsonl = "jsonl"
    csv = "csv"


@app.command()
def recall(
    index: Annotated[Path, typer.Option("--index", help="Index directory written by `coldrec index`.")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output file (written atomically), or - for stdout.")] = None,
    queries: Annotated[Optional[Path], typer.Option(help="User embeddings (from `coldrec embed --users`).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Model directory: embed --users on the fly instead of --queries.")] = None,
    users: Annotated[Optional[Path], typer.Option(help="Users table to embed with --model.")] = None,
    stats: Annotated[Optional[Path], typer.Option(help="Stats directory for --model (latest user statistics).")] = None,
    cold: Annotated[bool, typer.Option("--cold", help="With --model: content-only embeddings (brand-new users).")] = False,
    k: Annotated[int, typer.Option("--k", help="Items per user.")] = RecallOptions.k,
    exclude: Annotated[Optional[Path], typer.Option(help="Samples file or `prepare` directory: items a user clicked there (label 1) are not recalled.")] = None,
    search_k: Annotated[Optional[int], typer.Option("--search-k", help="Annoy nodes inspected per query (default: 4 x trees x fetched).")] = None,
    exact: Annotated[Optional[bool], typer.Option("--exact/--annoy", help="Force brute force or Annoy (default: exact below a catalogue size where it is faster).")] = None,
    shard: Annotated[Optional[str], typer.Option(help="i/n: only the i-th (0-based) of n disjoint user shards, by a stable hash of user_id.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Search threads (default: all CPU cores).")] = None,
    user_id: Annotated[Optional[str], typer.Option("--user-id", help="Answer this one user (to stdout unless --out is a file).")] = None,
    output_format: Annotated[Optional[RecsFormat], typer.Option("--format", help="parquet, jsonl or csv (default: by --out suffix; jsonl on stdout).")] = None,
    fresh_quota: Annotated[float, typer.Option("--fresh-quota", help="Share of each user's k reserved for fresh items (0..1).")] = RecallOptions.fresh_quota,
    fresh_days: Annotated[int, typer.Option("--fresh-days", help="An item is fresh for this many days from its first-seen day.")] = RecallOptions.fresh_days,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Today for --fresh-days, YYYY-MM-DD (default: today, UTC).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse (exit 2) when queries and index come from different models.")] = False,
) -> None:
    """Top-k items per user from an index, seen items excluded, optionally sharded.

    Writes user_id, rank (1 = best), item_id, score (cosine) as Parquet, or streams JSON
    lines / CSV with --out -. Searches the main index and its delta and merges them.

    Example: coldrec recall --index index/ --queries user_emb.parquet --exclude prep/ --k 100 --out recs.parquet
    """
    import datetime as dt

    from coldrec.errors import UsageError
    from coldrec.recall import run_recall

    try:
        as_of_date = dt.date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise UsageError(f"--as-of {as_of!r} is not a date", hint="pass YYYY-MM-DD") from None
    _report(
        "recall",
        run_recall(
            index=index,
            out=out,
            queries=queries,
            model=model,
            users=users,
            stats=stats,
            cold=cold,
            k=k,
            exclude=exclude,
            search_k=search_k,
            exact=exact,
            shard=shard,
            threads=threads,
            user_id=user_id,
            output_format=output_format.value if output_format else None,
            fresh_quota=fresh_quota,
            fresh_days=fresh_days,
            as_of=as_of_date,
            strict=strict,
        ),
    )

class SearchMode(str, Enum):
    auto = "auto"
    exact = "exact"
    annoy = "annoy"


@app.command()
def serve(
    model: Annotated[Path, typer.Option("--model", help="Model directory (e.g. a pipeline's ROOT/current/train: it follows the link).")],
    index: Annotated[Path, typer.Option("--index", help="Index directory built from that model's item embeddings (e.g. ROOT/current/index).")],
    users: Annotated[Optional[Path], typer.Option("--users", help="Users table: its users are served by user_id, embedded as `coldrec embed` would.")] = None,
    stats: Annotated[Optional[Path], typer.Option("--stats", help="Stats directory: the known users' latest statistics.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each loads the model and index).")] = 1,
    reload_every: Annotated[float, typer.Option("--reload-every", help="Seconds between checks for a moved model/index (0: never).")] = 1.0,
    search: Annotated[SearchMode, typer.Option(help="auto (exact below 1M items, else Annoy), exact or annoy.")] = SearchMode.auto,
) -> None:
    """Serve recommendations over HTTP: known users, brand-new users and new items at once.

    POST /recommend {"user_id": ID} or {"user": {attributes}} with "k" and "exclude";
    POST /items {"items": [{"item_id": ID, attributes}]} embeds new items into the index's
    delta (kept across restarts); GET /healthz, /version, /metrics (Prometheus). When the
    model or index directory moves (a pipeline's current link), the server switches between
    requests. Needs the serve extra: pip install 'coldrec[serve]'. See docs/operations.md.

    Example: coldrec serve --model pipe/current/train --index pipe/current/index --users data/users.parquet --port 8000
    """
    try:
        from coldrec.serve import run_serve
    except ImportError as error:
        raise UsageError(f"coldrec serve needs FastAPI and uvicorn ({error.name} is missing)", hint="pip install 'coldrec[serve]'") from None
    if workers < 1 or not 0 < port < 65536 or reload_every < 0:
        raise UsageError("--workers must be >= 1, --port in 1..65535 and --reload-every >= 0", hint="e.g. --workers 2 --port 8000")
    run_serve(model, index, users=users, stats=stats, host=host, port=port, workers=workers, reload_every=reload_every, search=search.value)


@app.command()
def inspect(
    users: InputPath,
    items: InputPath,
    samples: Annotated[Optional[Path], typer.Option("--samples", help="Directory written by `coldrec prepare`: adds how many train rows' ids have a content row.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config of the training run ([features] roles, vocab_min_count, numeric_buckets).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a Markdown table.")] = False,
) -> None:
    """Show how `coldrec train` will read every content column, and why.

    Per column of the users and items tables: the role (categorical, multi_hot, numeric,
    vector, text or ignore), the reason, distinct values, null share and the share of values
    with a vocabulary row; warnings where coldrec decided beyond the column's type (a nearly
    unique string is text or an identifier) and how to override it in [features.roles].
    See docs/data.md, "How columns are read".

    Example: coldrec inspect --users data/users.parquet --items data/items.parquet --samples prep/
    """
    from coldrec.inspection import run_inspect

    result = run_inspect(users, items, samples=samples, config=config)
    typer.echo(result.to_json() if json_output else result.to_markdown(), nl=False)
    _report("inspect", result)


@app.command()
def evaluate(
    recs: Annotated[Path, typer.Option("--recs", help="Recommendations (user_id, rank, item_id, score) from coldrec recall.")],
    truth: Annotated[Path, typer.Option("--truth", help="Held-out samples (user_id, item_id, label); positives are label 1.")],
    k: Annotated[str, typer.Option("--k", help="Cut-offs K, comma-separated.")] = "20,100",
    train: Annotated[
        Optional[Path],
        typer.Option("--train", help="Train samples file or coldrec prepare directory: adds popularity/activity buckets and cold share."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON instead of Markdown.")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", help="Also write a self-contained HTML report here.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the metrics as JSON to this file (atomically).")] = None,
) -> None:
    """Score recommendations against held-out positives: Recall, NDCG, HitRate, MRR, coverage.

    Prints a Markdown table on stdout (--json for JSON). With --train, adds breakdowns by item
    popularity (head/mid/tail/new) and user activity (new/light/medium/heavy) in train, and
    the share of recommended items that are cold. Definitions: docs/metrics.md.

    Example: coldrec evaluate --recs recs.parquet --truth prep/test_warm.parquet --train prep/ --k 20,100 --report report.html
    """
    from coldrec.evaluate import run_evaluate

    result = run_evaluate(recs, truth, ks=k, train=train, report=report, out=out)
    typer.echo(result.to_json() if json_output else result.to_markdown(), nl=False)
    _report("evaluate", result)


# --------------------------------------------------------------------------- pipeline


class Stage(str, Enum):
    prepare = "prepare"
    stats = "stats"
    train = "train"
    embed = "embed"
    index = "index"
    recall = "recall"


@app.command()
def pipeline(
    config: Annotated[Path, typer.Option("--config", help="Pipeline TOML: [inputs], [output] root, and one section per stage.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what each stage would do and why; write nothing.")] = False,
    from_stage: Annotated[Optional[Stage], typer.Option("--from", help="Rerun this stage and every later one, even if unchanged.")] = None,
    only: Annotated[Optional[Stage], typer.Option("--only", help="Run just this stage (earlier stages must be up to date).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another pipeline holds the output root, wait for it instead of exiting 75.")] = False,
) -> None:
    """Run prepare, stats, train, embed, index and recall from one config, for cron.

    Each run writes ROOT/runs/<UTC timestamp>/<stage>/; stages whose inputs and options are
    unchanged since a previous output are reused (hard links), and ROOT/current is pointed at
    the run atomically once every stage has finished. The root is locked: an overlapping run
    exits 75 (or waits with --wait). See docs/operations.md.

    Example: coldrec pipeline --config coldrec.toml --dry-run
    """
    from coldrec.pipeline import run_pipeline

    result = run_pipeline(
        config,
        dry_run=dry_run,
        from_stage=from_stage.value if from_stage else None,
        only=only.value if only else None,
        wait=wait,
        echo=typer.echo,
    )
    _report("pipeline", result)


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
        if hasattr(error, "show") and log.settings.format != "json":
            error.show(file=sys.stderr)
        else:
            message = error.format_message() if hasattr(error, "format_message") else str(error)
            log.error(" ".join(message.split()))
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
