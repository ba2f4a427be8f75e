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

step "inspect: how train will read every content column, and why"
coldrec inspect --users "$DATA/users.parquet" --items "$DATA/items.parquet" --samples "$OUT/prep"

step "stats: point-in-time preference statistics"
coldrec stats --samples "$OUT/prep" --users "$DATA/users.parquet" --items "$DATA/items.parquet" --out "$OUT/stats"

step "train: the DropoutNet two-tower model"
coldrec train --samples "$OUT/prep" --stats "$OUT/stats" --users "$DATA/users.parquet" \
    --items "$DATA/items.parquet" --out "$OUT/model" --seed 1
ls "$OUT/model" >&2

step "tune: 4 trials of the training configuration, scored on the validation split"
coldrec tune --samples "$OUT/prep" --users "$DATA/users.parquet" --items "$DATA/items.parquet" \
    --out "$OUT/tune" --trials 4 --seed 1
head -n 2 "$OUT/tune/best.toml" >&2

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

step "embed --cold + index: the held-out (never seen) items, content only, as a 'new arrivals' shelf"
python - "$OUT" "$DATA" <<'PY'
import json, sys
import polars as pl
out, data = sys.argv[1], sys.argv[2]
held_out = json.load(open(f"{out}/prep/manifest.json"))["extra"]["held_out_item_ids"]
items = pl.read_parquet(f"{data}/items.parquet")
items.filter(pl.col("item_id").is_in(held_out)).write_parquet(f"{out}/new_items.parquet")
PY
coldrec embed --model "$OUT/model" --items "$OUT/new_items.parquet" --cold --out "$OUT/new_items_emb.parquet"
coldrec index --embeddings "$OUT/new_items_emb.parquet" --out "$OUT/index_new"
coldrec recall --index "$OUT/index_new" --queries "$OUT/users.parquet" --k 100 --out "$OUT/recs_new.parquet"

step "evaluate: warm users and items (test_warm), with popularity and activity buckets"
coldrec evaluate --recs "$OUT/recs.parquet" --truth "$OUT/prep/test_warm.parquet" --train "$OUT/prep" \
    --k 20,100 --out "$OUT/metrics_warm.json" --report "$OUT/report_warm.html"
coldrec --quiet evaluate --recs "$OUT/recs.parquet" --truth "$OUT/prep/test_cold_user.parquet" \
    --k 20,100 --out "$OUT/metrics_cold_user.json" >/dev/null
coldrec --quiet evaluate --recs "$OUT/recs_new.parquet" --truth "$OUT/prep/test_cold_item.parquet" \
    --k 20,100 --out "$OUT/metrics_cold_item.json" >/dev/null

step "serve: a user who signed up a second ago, answered over HTTP (coldrec serve)"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
coldrec serve --model "$OUT/model" --index "$OUT/index" --users "$DATA/users.parquet" --port "$port" --reload-every 0 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
python - "$port" <<'PY'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(600):
    try:
        urllib.request.urlopen(url + "/healthz")
        break
    except OSError:
        time.sleep(0.1)
body = {"user": {"age_group": "25-34", "country": "de", "interests": ["likes_music"]}, "k": 5}
request = urllib.request.Request(url + "/recommend", json.dumps(body).encode(), {"content-type": "application/json"})
print("POST /recommend", json.dumps(body), "->", [item["item_id"] for item in json.load(urllib.request.urlopen(request))["items"]])
PY
kill "$server"

step "summary: one model for warm users, brand-new users and brand-new items"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [
    ("warm (all items)", "warm"),
    ("cold users (all items)", "cold_user"),
    ("cold items (among new items)", "cold_item"),
]
print("| scenario | users | Recall@20 | NDCG@20 | Recall@100 |")
print("|---|---|---|---|---|")
for label, name in rows:
    metrics = json.load(open(f"{out}/metrics_{name}.json"))
    overall = metrics["overall"]
    print(f"| {label} | {metrics['users']['evaluated']:,} | {overall['recall@20']:.4f} | {overall['ndcg@20']:.4f} | {overall['recall@100']:.4f} |")
PY
printf '\nAll outputs are in %s/ (HTML report: %s/report_warm.html)\n' "$OUT" "$OUT" >&2
