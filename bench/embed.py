"""Benchmark: `coldrec embed` throughput (entities/s) at the default model size.

Builds a model with the default ModelConfig over synthetic users/items tables shaped like
`coldrec synth`'s (users: 2 categorical, 1 multi-hot, 1 numeric column; items: 1
categorical, 1 multi-hot, 1 numeric, one 8-float vector), then times `run_embed` end to end
(read Parquet, encode, forward, write Parquet) for warm and --cold runs. The weights are
untrained: the speed of a forward pass does not depend on their values.

    .venv/bin/python bench/embed.py                 # 200k users and 200k items
    .venv/bin/python bench/embed.py --rows 1000000 --threads 2 --batch-size 8192
    .venv/bin/python bench/embed.py --compare-plain # also models with the exact profile match, without
                                                    # the imputed profile, without the served terms
                                                    # (match, prior, imputed profile) and without
                                                    # click profiles, timed in the same run
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tables(rows: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    interests = [f"i{j}" for j in range(40)]
    users = pl.DataFrame(
        {
            "user_id": [f"u{i:08d}" for i in range(rows)],
            "age_group": rng.choice(["18-24", "25-34", "35-44", "45-54", "55+"], rows).tolist(),
            "country": rng.choice([f"c{j}" for j in range(30)], rows).tolist(),
            "interests": [list(rng.choice(interests, int(n), replace=False)) for n in rng.integers(1, 6, rows)],
            "age": rng.uniform(18, 80, rows),
        }
    )
    tags = [f"t{j}" for j in range(100)]
    items = pl.DataFrame(
        {
            "item_id": np.arange(rows, dtype=np.int64),
            "category": rng.choice([f"k{j}" for j in range(50)], rows).tolist(),
            "tags": [list(rng.choice(tags, int(n), replace=False)) for n in rng.integers(1, 8, rows)],
            "price": rng.lognormal(3, 1, rows),
            "content_vector": pl.Series(rng.standard_normal((rows, 8)).astype(np.float32)),
        }
    )
    return users, items


def make_model(directory: Path, users: pl.DataFrame, items: pl.DataFrame, overrides: dict | None = None) -> None:
    import torch

    from coldrec.config import TrainConfig
    from coldrec.features import fit_spec
    from coldrec.model import build_model, model_state, write_model_files

    rng = np.random.default_rng(0)
    samples = 200_000
    train = pl.DataFrame(
        {
            "user_id": users["user_id"].gather(rng.integers(0, len(users), samples)),
            "item_id": items["item_id"].gather(rng.integers(0, len(items), samples)),
            "ts": [dt.datetime(2026, 1, 1)] * samples,
            "label": rng.integers(0, 2, samples),
        }
    )
    config = TrainConfig.from_dict(overrides or {}) if overrides else TrainConfig()
    spec = fit_spec(train, users, items, config.features)
    torch.manual_seed(0)
    model = build_model(spec, config.model)
    directory.mkdir(parents=True, exist_ok=True)
    write_model_files(directory, spec=spec, config=config, state=model_state(model, None), normalize=True, metrics={}, train_log=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: coldrec.embed.EMBED_BATCH_ROWS")
    parser.add_argument("--compare-plain", action="store_true", help="also time models with the exact profile match, without the imputed profile, without the served terms and without click profiles")
    parser.add_argument("--repeat", type=int, default=3, help="time every run this many times, interleaved, and keep the fastest (a shared machine is noisy)")
    args = parser.parse_args()

    import torch

    from coldrec.config import ModelConfig
    from coldrec.embed import EMBED_BATCH_ROWS, run_embed

    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="coldrec-bench-embed-") as tmp:
        root = Path(tmp)
        users, items = tables(args.rows, seed=1)
        users.write_parquet(root / "users.parquet")
        items.write_parquet(root / "items.parquet")
        models = {"defaults": None}
        if args.compare_plain:
            models["exact match"] = {"model": {"profile_match_rank": 0}}
            models["no imputed profile"] = {"model": {"profile_impute": 0.0}}
            models["no served terms"] = {"model": {"profile_match": 0.0, "popularity_prior": 0.0}}
            models["plain"] = {"model": {"user_profile": False, "item_profile": False, "profile_match": 0.0, "popularity_prior": 0.0}}
        for name, overrides in models.items():
            make_model(root / name, users, items, overrides)
        best: dict[tuple, tuple[float, int]] = {}
        for attempt in range(args.repeat):
            for side in ("users", "items"):
                for cold, name in itertools.product((False, True), models):
                    started = time.perf_counter()
                    result = run_embed(
                        model=root / name, out=root / f"{side}_emb.parquet", cold=cold, batch_size=args.batch_size or EMBED_BATCH_ROWS,
                        **{side: root / f"{side}.parquet"},
                    )
                    seconds = time.perf_counter() - started
                    print(json.dumps({"attempt": attempt, "model": name, "side": side, "cold": cold, "seconds": round(seconds, 2)}), flush=True)
                    key = (side, cold, name)
                    best[key] = min(best.get(key, (seconds, result.rows)), (seconds, result.rows))
        for (side, cold, name), (seconds, rows) in best.items():
            results.append({"model": name, "side": side, "cold": cold, "rows": rows, "seconds": round(seconds, 2), "entities_per_s": round(rows / seconds)})
    config = ModelConfig()
    print()
    print(f"model: dim {config.dim}, hidden {config.hidden}, embedding_dim {config.embedding_dim}; torch threads {args.threads}; fastest of {args.repeat}")
    print("| model | side | --cold | rows | seconds | entities/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['side']} | {r['cold']} | {r['rows']:,} | {r['seconds']} | {r['entities_per_s']:,} |")


if __name__ == "__main__":
    main()
