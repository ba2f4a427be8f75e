"""Generate the bad-input corpus: one folder per case, plus cases.json describing each run.

    python tests/bad_inputs/make_corpus.py --out /tmp/corpus          # builds its own base
    python tests/bad_inputs/make_corpus.py --out /tmp/corpus --base B # reuse a built base

The corpus is generated, never committed: every bad file is derived from a small valid
world (synthetic logs and the outputs of one tiny `coldrec pipeline` run, the "base") by one
deliberate defect. Each case says which command to run (with `{base}`, `{case}` and `{out}`
placeholders), which kind of output it would write (`dir`, `file` or none), and what the
one-line error must contain: the bad file's path and a phrase naming the problem.
tests/test_bad_inputs.py runs every case and checks exit 2, one stderr line, no traceback,
nothing written and the earlier output unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

BASE_CONFIG = """
[inputs]
exposures = "data/exposures"
clicks = "data/clicks"
users = "data/users.parquet"
items = "data/items.parquet"
[output]
root = "root"
[train]
threads = 1
[train.model]
dim = 8
hidden = [16]
[train.training]
epochs = 1
batch_size = 256
[index]
trees = 3
[recall]
k = 5
"""


@dataclass
class Case:
    name: str
    args: list[str]  # the coldrec command line, with {base} {case} {out} placeholders
    output: str | None  # "dir", "file" or None: what `{out}` is
    file: str  # the path the error line must name (placeholders allowed)
    problem: str  # a phrase of the error line naming the problem (case-insensitive)


def build_base(base: Path) -> Path:
    """A tiny valid world and one finished pipeline run over it (a few seconds)."""
    from coldrec.pipeline import run_pipeline
    from coldrec.synth import SynthConfig, run_synth

    base.mkdir(parents=True, exist_ok=True)
    run_synth(SynthConfig(users=120, items=60, days=5, exposures_per_day=500, seed=11), base / "data")
    (base / "coldrec.toml").write_text(BASE_CONFIG)
    run_pipeline(base / "coldrec.toml", echo=lambda line: None)
    return base


# --------------------------------------------------------------------------- helpers


def _frame(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path, hive_partitioning=False) if path.is_file() else pl.read_parquet(
        sorted(str(p) for p in path.rglob("*.parquet")), hive_partitioning=False
    )


def make_corpus(base: Path, out: Path) -> list[Case]:
    """Write every case's bad files under `out/<case>/` and return the cases."""
    base, out = Path(base), Path(out)
    run = (base / "root" / "current").resolve()
    exposures = _frame(base / "data" / "exposures")
    clicks = _frame(base / "data" / "clicks")
    users = pl.read_parquet(base / "data" / "users.parquet")
    items = pl.read_parquet(base / "data" / "items.parquet")
    item_emb = pl.read_parquet(run / "embed" / "items.parquet")
    user_emb = pl.read_parquet(run / "embed" / "users.parquet")
    cases: list[Case] = []

    def folder(name: str) -> Path:
        path = out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write(name: str, filename: str, frame: pl.DataFrame) -> str:
        frame.write_parquet(folder(name) / filename)
        return "{case}/" + filename

    def raw(name: str, filename: str, data: bytes) -> str:
        (folder(name) / filename).write_bytes(data)
        return "{case}/" + filename

    # ---- prepare: the logs
    def prepare(name: str, problem: str, exposures_file: str | None = None, clicks_file: str | None = None, extra=()):
        bad = exposures_file or clicks_file
        cases.append(
            Case(
                name,
                ["prepare", "--exposures", exposures_file or "{base}/data/exposures", "--clicks", clicks_file or "{base}/data/clicks", "--out", "{out}", *extra],
                "dir",
                bad,
                problem,
            )
        )

    prepare("prepare_exposures_missing_ts", "ts", write("prepare_exposures_missing_ts", "exposures.parquet", exposures.drop("ts")))
    prepare("prepare_exposures_missing_user_id", "user_id", write("prepare_exposures_missing_user_id", "exposures.parquet", exposures.drop("user_id")))
    prepare(
        "prepare_exposures_ts_as_string",
        "ts",
        write("prepare_exposures_ts_as_string", "exposures.parquet", exposures.with_columns(pl.col("ts").cast(pl.String))),
    )
    prepare(
        "prepare_exposures_item_id_float",
        "item_id",
        write("prepare_exposures_item_id_float", "exposures.parquet", exposures.with_columns(pl.col("item_id").cast(pl.Float64))),
    )
    prepare(
        "prepare_exposures_null_user_id",
        "null",
        write(
            "prepare_exposures_null_user_id",
            "exposures.parquet",
            exposures.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("user_id")).alias("user_id")),
        ),
    )
    prepare("prepare_exposures_empty_file", "empty", raw("prepare_exposures_empty_file", "exposures.parquet", b""))
    prepare("prepare_exposures_zero_rows", "no rows", write("prepare_exposures_zero_rows", "exposures.parquet", exposures.head(0)))
    good = (base / "data" / "exposures").rglob("*.parquet").__next__().read_bytes()
    prepare("prepare_exposures_truncated", "truncated", raw("prepare_exposures_truncated", "exposures.parquet", good[: len(good) // 2]))
    prepare(
        "prepare_exposures_csv_named_parquet",
        "not a parquet",
        raw("prepare_exposures_csv_named_parquet", "exposures.parquet", exposures.head(20).write_csv().encode()),
    )
    epoch_ms = exposures.with_columns(pl.col("ts").dt.epoch("ms").alias("ts"))
    prepare("prepare_exposures_ts_in_ms", "ms", write("prepare_exposures_ts_in_ms", "exposures.parquet", epoch_ms))
    future = exposures.with_columns(pl.col("ts") + pl.duration(days=365 * 30))
    prepare("prepare_exposures_ts_in_future", "future", write("prepare_exposures_ts_in_future", "exposures.parquet", future))
    prepare("prepare_clicks_missing_item_id", "item_id", clicks_file=write("prepare_clicks_missing_item_id", "clicks.parquet", clicks.drop("item_id")))
    prepare(
        "prepare_clicks_user_id_int",
        "user_id",
        clicks_file=write(
            "prepare_clicks_user_id_int",
            "clicks.parquet",
            clicks.with_columns(pl.col("user_id").str.slice(1).cast(pl.Int64)),
        ),
    )
    prepare(
        "prepare_clicks_weight_nan",
        "weight",
        clicks_file=write("prepare_clicks_weight_nan", "clicks.parquet", clicks.with_columns(pl.lit(float("nan")).cast(pl.Float32).alias("weight"))),
    )

    # ---- stats: the content tables
    def stats(name: str, problem: str, users_file: str | None = None, items_file: str | None = None):
        cases.append(
            Case(
                name,
                ["stats", "--samples", str(run / "prepare"), "--users", users_file or "{base}/data/users.parquet", "--items", items_file or "{base}/data/items.parquet", "--out", "{out}"],
                "dir",
                users_file or items_file,
                problem,
            )
        )

    stats("stats_users_duplicate_ids", "duplicate", write("stats_users_duplicate_ids", "users.parquet", pl.concat([users, users.head(3)])))
    stats(
        "stats_users_null_id",
        "null",
        write("stats_users_null_id", "users.parquet", users.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("user_id")).alias("user_id"))),
    )
    stats("stats_items_missing_item_id", "item_id", items_file=write("stats_items_missing_item_id", "items.parquet", items.drop("item_id")))
    stats("stats_items_duplicate_ids", "duplicate", items_file=write("stats_items_duplicate_ids", "items.parquet", pl.concat([items.tail(2), items])))
    stats("stats_items_empty_file", "empty", items_file=raw("stats_items_empty_file", "items.parquet", b""))

    # ---- train: content features, config
    def train(name: str, problem: str, users_file: str | None = None, items_file: str | None = None, extra=(), file: str | None = None):
        cases.append(
            Case(
                name,
                [
                    "train", "--samples", str(run / "prepare"), "--stats", str(run / "stats"),
                    "--users", users_file or "{base}/data/users.parquet", "--items", items_file or "{base}/data/items.parquet",
                    "--out", "{out}", "--epochs", "1", "--dim", "8", "--batch-size", "256", *extra,
                ],
                "dir",
                file or users_file or items_file,
                problem,
            )
        )

    train(
        "train_items_price_inf",
        "price",
        items_file=write("train_items_price_inf", "items.parquet", items.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(float("inf")).otherwise(pl.col("price")).alias("price"))),
    )
    train(
        "train_users_age_nan",
        "age",
        users_file=write("train_users_age_nan", "users.parquet", users.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(float("nan")).otherwise(pl.col("age")).alias("age"))),
    )
    train(
        "train_items_id_as_string",
        "item_id",
        items_file=write("train_items_id_as_string", "items.parquet", items.with_columns(pl.col("item_id").cast(pl.String))),
    )
    train("train_items_duplicate_ids", "duplicate", items_file=write("train_items_duplicate_ids", "items.parquet", pl.concat([items, items.head(1)])))
    config = folder("train_config_unknown_key") / "train.toml"
    config.write_text("[model]\ndimm = 8\n")
    train("train_config_unknown_key", "did you mean 'model.dim'", extra=("--config", "{case}/train.toml"), file="{case}/train.toml")

    # ---- embed: model directories and tables
    def embed(name: str, problem: str, model: str | None = None, items_file: str | None = None, file: str | None = None):
        cases.append(
            Case(
                name,
                ["embed", "--model", model or str(run / "train"), "--items", items_file or "{base}/data/items.parquet", "--out", "{out}"],
                "file",
                file or model or items_file,
                problem,
            )
        )

    def model_copy(name: str) -> Path:
        target = folder(name) / "model"
        shutil.copytree(run / "train", target)
        return target

    target = model_copy("embed_model_format_version")
    spec = json.loads((target / "spec.json").read_text())
    spec["format_version"] = 99
    (target / "spec.json").write_text(json.dumps(spec))
    embed("embed_model_format_version", "version", model="{case}/model")
    target = model_copy("embed_model_corrupt_weights")
    weights = (target / "weights.safetensors").read_bytes()
    (target / "weights.safetensors").write_bytes(weights[: len(weights) // 3])
    embed("embed_model_corrupt_weights", "weights", model="{case}/model")
    target = model_copy("embed_model_missing_weights")
    (target / "weights.safetensors").unlink()
    embed("embed_model_missing_weights", "weights", model="{case}/model")
    wrong_length = items.with_columns(pl.col("content_vector").arr.head(5).list.to_array(5))
    embed("embed_items_vector_wrong_length", "content_vector", items_file=write("embed_items_vector_wrong_length", "items.parquet", wrong_length))
    embed("embed_items_missing_content_column", "category", items_file=write("embed_items_missing_content_column", "items.parquet", items.drop("category")))
    embed("embed_items_duplicate_ids", "duplicate", items_file=write("embed_items_duplicate_ids", "items.parquet", pl.concat([items, items.head(2)])))
    embed("embed_items_zero_rows", "no rows", items_file=write("embed_items_zero_rows", "items.parquet", items.head(0)))

    # ---- index: embeddings files (an extra column that matters: `embedding` of the wrong type)
    def index(name: str, problem: str, embeddings_file: str):
        cases.append(Case(name, ["index", "--embeddings", embeddings_file, "--out", "{out}", "--trees", "3"], "dir", embeddings_file, problem))

    index(
        "index_embedding_wrong_type",
        "embedding",
        write("index_embedding_wrong_type", "items.parquet", item_emb.with_columns(pl.col("embedding").arr.first().cast(pl.Float64).alias("embedding"))),
    )
    ragged = item_emb.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.col("embedding").arr.head(3)).otherwise(pl.col("embedding").arr.to_list()).alias("embedding")
    )
    index("index_embedding_ragged", "embedding", write("index_embedding_ragged", "items.parquet", ragged))
    nan_vector = item_emb.with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(pl.col("embedding").arr.eval(pl.element() * float("nan"))).otherwise(pl.col("embedding")).alias("embedding")
    )
    index("index_embedding_nan", "NaN", write("index_embedding_nan", "items.parquet", nan_vector))
    index(
        "index_embedding_null_id",
        "null",
        write("index_embedding_null_id", "items.parquet", item_emb.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("item_id")).alias("item_id"))),
    )
    index("index_embedding_duplicate_id", "duplicate", write("index_embedding_duplicate_id", "items.parquet", pl.concat([item_emb, item_emb.head(1)])))

    # ---- recall: queries against an index
    def recall(name: str, problem: str, queries: str, extra=(), file: str | None = None):
        cases.append(
            Case(name, ["recall", "--index", str(run / "index"), "--queries", queries, "--out", "{out}", "--k", "5", *extra], "file", file or queries, problem)
        )

    from coldrec.embed import embeddings_table

    other = embeddings_table(
        user_emb["user_id"], user_emb["embedding"].to_numpy(), user_emb["cold"].to_numpy(), model_fingerprint="another-model"
    )
    import pyarrow.parquet as pq

    pq.write_table(other, folder("recall_index_from_another_model") / "users.parquet")
    recall("recall_index_from_another_model", "model", "{case}/users.parquet", extra=("--strict",))
    head = user_emb["embedding"].arr.head(5).list.to_array(5).to_numpy()
    head = head / np.linalg.norm(head, axis=1, keepdims=True)  # unit length: only the dim is wrong
    short = user_emb.with_columns(pl.Series("embedding", head.astype(np.float32), dtype=pl.Array(pl.Float32, 5)))
    recall("recall_queries_wrong_dim", "dim", write("recall_queries_wrong_dim", "users.parquet", short))
    recall("recall_queries_missing_user_id", "user_id", write("recall_queries_missing_user_id", "users.parquet", user_emb.drop("user_id")))
    bad_exclude = write("recall_exclude_missing_label", "seen.parquet", pl.read_parquet(run / "prepare" / "train.parquet").drop("label"))
    recall("recall_exclude_missing_label", "label", str(run / "embed" / "users.parquet"), extra=("--exclude", bad_exclude), file=bad_exclude)
    missing_ids = folder("recall_index_missing_ids") / "index"
    shutil.copytree(run / "index", missing_ids)
    (missing_ids / "ids.parquet").unlink()
    cases.append(
        Case(
            "recall_index_missing_ids",
            ["recall", "--index", "{case}/index", "--queries", str(run / "embed" / "users.parquet"), "--out", "{out}"],
            "file",
            "{case}/index",
            "ids",
        )
    )

    # ---- evaluate
    recs = pl.read_parquet(run / "recall" / "recs.parquet")
    cases.append(
        Case(
            "evaluate_recs_missing_rank",
            ["evaluate", "--recs", write("evaluate_recs_missing_rank", "recs.parquet", recs.drop("rank")), "--truth", str(run / "prepare" / "valid.parquet"), "--out", "{out}"],
            "file",
            "{case}/recs.parquet",
            "rank",
        )
    )
    truth = pl.read_parquet(run / "prepare" / "valid.parquet").with_columns(pl.lit(2, pl.Int8).alias("label"))
    cases.append(
        Case(
            "evaluate_truth_label_out_of_range",
            ["evaluate", "--recs", str(run / "recall" / "recs.parquet"), "--truth", write("evaluate_truth_label_out_of_range", "truth.parquet", truth), "--out", "{out}"],
            "file",
            "{case}/truth.parquet",
            "label",
        )
    )

    # ---- pipeline config
    config = folder("pipeline_config_unknown_key") / "coldrec.toml"
    text = (base / "coldrec.toml").read_text().replace('"data/', f'"{base}/data/').replace('root = "root"', 'root = "out"')
    config.write_text(text.replace("[recall]\nk = 5", "[recall]\nk = 5\nexclude_sen = true"))
    cases.append(Case("pipeline_config_unknown_key", ["pipeline", "--config", "{case}/coldrec.toml"], None, "{case}/coldrec.toml", "did you mean 'recall.exclude_seen'"))

    (out / "cases.json").write_text(json.dumps([asdict(case) for case in cases], indent=1))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="corpus directory to create")
    parser.add_argument("--base", type=Path, help="an existing base (built by build_base); default: build one in OUT/base")
    args = parser.parse_args()
    base = args.base or build_base(args.out / "base")
    cases = make_corpus(base, args.out / "cases")
    print(f"{len(cases)} cases -> {args.out / 'cases'}")


if __name__ == "__main__":
    main()
