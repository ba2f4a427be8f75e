"""`coldrec serve` latency and throughput: a new user's /recommend from content, under load.

    .venv/bin/python bench/serve.py                     # 10k exact and Annoy, 100k auto (exact); 1, 8, 32 clients
    .venv/bin/python bench/serve.py --rows 10000:exact,1000000:annoy --workers 2   # 1M: a long index build

A model is trained on a small synthetic world (`coldrec synth` + `prepare` + `train`); for
each index size, item vectors are drawn at random on the model's sphere (latency does not
depend on what the items are) and indexed with `coldrec index`. The server runs as `coldrec serve --search auto|exact|annoy
--workers W` on localhost; the load generator is this process: C threads,
each with a keep-alive connection, posting a new user's attributes in a loop for S seconds.
Latency is the client's wall time per request (p50 / p99); requests/s the total over S.
Then, on a 500-item index (so k = 1000 lists every item): an item posted to /items is in the
very next /recommend; and `current` is re-pointed at a second run under 8 clients,
counting the errors during the switch.
Writes bench/out/serve.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coldrec.embed import model_fingerprint, write_embeddings  # noqa: E402
from coldrec.model import load_model  # noqa: E402
from coldrec.pipeline import point_current  # noqa: E402

OUT = ROOT / "bench" / "out"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def coldrec(*args) -> None:
    subprocess.run([sys.executable, "-m", "coldrec", "--quiet", *map(str, args)], check=True, env=ENV)


def train_model(work: Path) -> tuple[Path, pl.DataFrame]:
    coldrec("synth", "--out", work / "logs", "--users", 2000, "--items", 1000, "--days", 10, "--exposures-per-day", 5000, "--seed", 0)
    coldrec("prepare", "--exposures", work / "logs/exposures", "--clicks", work / "logs/clicks", "--out", work / "prep", "--seed", 0)
    coldrec("train", "--samples", work / "prep", "--users", work / "logs/users.parquet", "--items", work / "logs/items.parquet", "--out", work / "model")
    return work / "model", pl.read_parquet(work / "logs/users.parquet")


def build_run(root: Path, name: str, model: Path, items: int, seed: int) -> Path:
    """ROOT/name/{train -> the model, index of `items` random item vectors}."""
    run = root / name
    run.mkdir(parents=True)
    (run / "train").symlink_to(model)
    loaded = load_model(model)
    vectors = np.random.default_rng(seed).standard_normal((items, loaded.dim)).astype(np.float32)
    ids = pl.Series("item_id", np.arange(1, items + 1, dtype=np.int64) + 10_000_000)
    write_embeddings(run / "items.parquet", ids, vectors, np.zeros(items, dtype=bool), model_fingerprint=model_fingerprint(loaded))
    coldrec("index", "--embeddings", run / "items.parquet", "--out", run / "index")
    return run


class Server:
    def __init__(self, root: Path, users: Path, search: str = "auto", workers: int = 1) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        args = ["serve", "--model", root / "current/train", "--index", root / "current/index", "--users", users, "--port", self.port, "--reload-every", "0.5", "--search", search, "--workers", workers]
        self.process = subprocess.Popen([sys.executable, "-m", "coldrec", *map(str, args)], env=ENV)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def call(self, method: str, path: str, body: dict | None = None, connection: http.client.HTTPConnection | None = None) -> tuple[int, dict]:
        own = connection is None
        connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers={"content-type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            if own:
                connection.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def load(server: Server, bodies: list[dict], clients: int, seconds: float) -> dict[str, float]:
    """`clients` threads posting /recommend for `seconds`: latency p50 / p99 (ms), requests/s, errors."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = threading.Event()

    def client(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        i = slot
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status, _ = server.call("POST", "/recommend", bodies[i % len(bodies)], connection)
            except OSError:
                status = 0
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            latencies[slot].append(time.perf_counter() - started)
            errors[slot] += status != 200
            i += clients
        connection.close()

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = np.array([x for slot in latencies for x in slot]) * 1000
    return {"p50_ms": float(np.percentile(every, 50)), "p99_ms": float(np.percentile(every, 99)),
            "rps": len(every) / elapsed, "requests": len(every), "errors": sum(errors)}


def user_bodies(users: pl.DataFrame, n: int = 200) -> list[dict]:
    rows = users.drop("user_id").head(n).to_dicts()
    return [{"user": row, "k": 20} for row in rows]


def new_item_check(server: Server, users: pl.DataFrame, item: dict) -> bool:
    """An item posted to /items is in the next /recommend (k lists the whole index)."""
    status, _ = server.call("POST", "/items", {"items": [{**item, "item_id": 1}]})
    total = server.call("GET", "/version")[1]["items"]
    _, found = server.call("POST", "/recommend", {"user": user_bodies(users, 1)[0]["user"], "k": total})
    return status == 200 and 1 in [row["item_id"] for row in found["items"]]


def reload_check(server: Server, root: Path, other: Path, bodies: list[dict]) -> dict[str, float]:
    before = server.call("GET", "/version")[1]["model"]
    result: dict[str, float] = {}

    def switch() -> None:
        time.sleep(1.0)
        point_current(root, other)

    thread = threading.Thread(target=switch)
    thread.start()
    result = load(server, bodies, 8, 5.0)
    thread.join()
    result["switched"] = float(server.call("GET", "/version")[1]["index"] != before)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000:exact,10000:annoy,100000:auto", help="ITEMS:SEARCH pairs (search: auto, exact, annoy)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    plan = [(int(items), search) for items, search in (row.split(":") for row in args.rows.split(","))]
    clients = [int(x) for x in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="coldrec-serve-bench-"))
    model, users = train_model(work)
    users_path = work / "logs/users.parquet"
    bodies = user_bodies(users)
    rows = []
    for items, search in plan:
        label = f"{items:,} {search}"
        root = work / f"root-{items}"
        if not (root / "current").exists():
            point_current(root, build_run(root, "a", model, items, seed=1))
        server = Server(root, users_path, search, args.workers)
        try:
            for c in clients:
                figures = load(server, bodies, c, args.seconds)
                rows.append((label, c, figures))
                print(f"{label}, {c} clients: p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, {figures['rps']:.0f} req/s, {figures['errors']} errors", flush=True)
        finally:
            server.stop()
    root = work / "root-small"
    point_current(root, build_run(root, "a", model, 500, seed=1))
    server = Server(root, users_path)
    try:
        item = pl.read_parquet(work / "logs/items.parquet").drop("item_id").row(0, named=True)
        recallable = new_item_check(server, users, {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for k, v in item.items()})
        switch = reload_check(server, root, build_run(root, "b", model, 500, seed=2), bodies)
    finally:
        server.stop()
    lines = [f"`coldrec serve` on localhost, {time.strftime('%Y-%m-%d')}, {args.workers} worker(s), {os.cpu_count()} cores shared with the load generator "
             f"(this process, one thread per client), {args.seconds:.0f} s per row; a new user's /recommend from content, k = 20.", "",
             "| index | clients | p50 ms | p99 ms | requests/s | errors |", "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {c} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['rps']:.0f} | {f['errors']} |" for label, c, f in rows]
    lines += ["", f"500-item index: an item posted to /items is in the next /recommend: {recallable}; "
              f"current re-pointed to another run under 8 clients: switched {bool(switch['switched'])}, {switch['requests']} requests, "
              f"{switch['errors']} errors, p99 {switch['p99_ms']:.1f} ms."]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
