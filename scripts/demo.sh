#!/usr/bin/env bash
# `make demo`: the whole pipeline on sample_data/ into a fresh output directory.
# Every stage is the real command a user would run; the last one prints the metrics.
set -euo pipefail
OUT="${1:-demo_out}"
DATA="sample_data"
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "prepare: label exposures by clicks, split train/valid, hold out 10% of users and items as cold"
coldrec prepare --exposures "$DATA/exposures" --clicks "$DATA/clicks" --out "$OUT/prep" \
    --holdout-items 0.1 --holdout-users 0.1 --seed 1
ls "$OUT/prep" >&2

step "stats: point-in-time preference statistics"
coldrec stats --samples "$OUT/prep" --users "$DATA/users.parquet" --items "$DATA/items.parquet" --out "$OUT/stats"

step "train: the DropoutNet two-tower model"
coldrec train --samples "$OUT/prep" --stats "$OUT/stats" --users "$DATA/users.parquet" \
    --items "$DATA/items.parquet" --out "$OUT/model" --seed 1
ls "$OUT/model" >&2

step "embed: every item and user (unknown ids fall back to content alone)"
coldrec embed --model "$OUT/model" --items "$DATA/items.parquet" --stats "$OUT/stats" --out "$OUT/items.parquet"
coldrec embed --model "$OUT/model" --users "$DATA/users.parquet" --stats "$OUT/stats" --out "$OUT/users.parquet"
step "embed --cold: content only, as a brand-new user gets it"
coldrec embed --model "$OUT/model" --users "$DATA/users.parquet" --cold --out "$OUT/users_cold.parquet"

step "index: Annoy over the item embeddings"
coldrec index --embeddings "$OUT/items.parquet" --out "$OUT/index"

step "recall: top 100 items per user, items clicked in the logs excluded"
coldrec recall --index "$OUT/index" --queries "$OUT/users.parquet" --k 100 --exclude "$OUT/prep" \
    --out "$OUT/recs.parquet"
first_user=$(python -c "import polars as pl; print(pl.read_parquet('$OUT/recs.parquet')['user_id'][0])")
step "recall --user-id $first_user --k 5 --out -: one user, straight to stdout"
coldrec recall --index "$OUT/index" --queries "$OUT/users.parquet" --user-id "$first_user" --k 5 --out -

for scenario in warm cold_user cold_item; do
    step "evaluate: $scenario"
    coldrec evaluate --recs "$OUT/recs.parquet" --truth "$OUT/prep/test_$scenario.parquet" \
        --train "$OUT/prep" --k 20,100
done
printf '\nAll outputs are in %s/\n' "$OUT" >&2
