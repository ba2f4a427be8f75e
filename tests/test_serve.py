"""`coldrec serve`: the real server on a free localhost port, talked to over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from coldrec.embed import run_embed  # noqa: E402
from coldrec.index import run_index  # noqa: E402
from coldrec.pipeline import point_current  # noqa: E402
from coldrec.train import run_train  # noqa: E402

FAST = {"training.epochs": 2, "training.batch_size": 256, "model.hidden": [32], "model.dim": 16}


def _run(root: Path, world: Path, name: str, seed: int) -> Path:
    """A pipeline-like run directory: train/ and index/ built from that model."""
    run = root / name
    run_train(world, world / "synth/users.parquet", world / "synth/items.parquet", run / "train", overrides={**FAST, "training.seed": seed})
    run_embed(model=run / "train", items=world / "synth/items.parquet", out=run / "items_emb.parquet")
    run_index(out=run / "index", embeddings=run / "items_emb.parquet", trees=4)
    return run


@pytest.fixture(scope="module")
def runs(tiny_labelled, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    for name, seed in (("run-a", 1), ("run-b", 2)):
        _run(root, tiny_labelled, name, seed)
    point_current(root, root / "run-a")
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, root: Path, users: Path) -> None:
        self.port = _free_port()
        args = [sys.executable, "-m", "coldrec", "serve", "--model", root / "current/train", "--index", root / "current/index",
                "--users", users, "--port", self.port, "--reload-every", "0.2"]
        self.process = subprocess.Popen([str(a) for a in args], stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read()
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the server did not start")

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def server(runs, tiny_labelled):
    point_current(runs, runs / "run-a")
    started = Server(runs, tiny_labelled / "synth/users.parquet")
    yield started
    started.stop()


def _user_row(world: Path) -> dict:
    row = pl.read_parquet(world / "synth/users.parquet").row(0, named=True)
    return {k: v for k, v in row.items() if k != "user_id"}


def test_known_and_new_users_get_recommendations(server, tiny_labelled):
    user_id = pl.read_parquet(tiny_labelled / "train.parquet")["user_id"][0]
    known = server.client.post("/recommend", json={"user_id": user_id, "k": 5}).json()
    assert len(known["items"]) == 5 and known["cold"] is False
    scores = [item["score"] for item in known["items"]]
    assert scores == sorted(scores, reverse=True)
    first = known["items"][0]["item_id"]
    again = server.client.post("/recommend", json={"user_id": user_id, "k": 5, "exclude": [first]}).json()
    assert first not in [item["item_id"] for item in again["items"]]
    new = server.client.post("/recommend", json={"user": _user_row(tiny_labelled), "k": 3}).json()
    assert len(new["items"]) == 3 and new["cold"] is True
    version = server.client.get("/version").json()
    assert version["model"] == known["model"] and version["index"] == known["index"] and version["known_users"] > 0


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"user": {"no_such_column": 1}}, 422, "unknown column 'no_such_column'"),
    ({"user": {"age": "old"}}, 422, "column 'age'"),
    ({"user_id": "nobody-like-this", "k": 3}, 404, "unknown user_id"),
    ({"user": {}, "k": 0}, 422, "k:"),
    ({"user": {}, "k": 100000}, 422, "k:"),
    ({"k": 3}, 422, "either 'user_id'"),
    ({"user": {}, "surprise": 1}, 422, "surprise"),
])
def test_bad_requests_are_4xx_naming_the_field(server, body, status, fragment):
    response = server.client.post("/recommend", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_a_body_over_the_limit_is_refused(server):
    response = server.client.post("/recommend", content=b"{" + b" " * (2 << 20) + b"}", headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_new_item_is_recallable_at_once_and_kept_across_a_restart(server, runs, tiny_labelled):
    items = pl.read_parquet(tiny_labelled / "synth/items.parquet")
    row = {k: v for k, v in items.row(0, named=True).items() if k != "item_id"}
    new_id = int(items["item_id"].max()) + 1000
    added = server.client.post("/items", json={"items": [{"item_id": new_id, **row}]})
    assert added.status_code == 200, added.text
    total = server.client.get("/version").json()["items"]
    found = server.client.post("/recommend", json={"user": _user_row(tiny_labelled), "k": total}).json()["items"]
    assert new_id in [item["item_id"] for item in found]  # the very next request
    assert (runs / "run-a/index/delta").is_dir()  # persisted as `coldrec index --add` would
    server.stop()
    restarted = Server(runs, tiny_labelled / "synth/users.parquet")
    try:
        found = restarted.client.post("/recommend", json={"user": _user_row(tiny_labelled), "k": total}).json()["items"]
        assert new_id in [item["item_id"] for item in found]
        refused = restarted.client.post("/items", json={"items": [{"item_id": new_id + 1, "no_such_column": "x"}]})
        assert refused.status_code == 422 and "no_such_column" in refused.json()["error"]
    finally:
        restarted.stop()


def test_reload_under_load_drops_nothing_and_never_mixes_pairs(server, runs, tiny_labelled):
    before = server.client.get("/version").json()
    answers, errors, stop = [], [], threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
            while not stop.is_set():
                response = client.post("/recommend", json={"user": _user_row(tiny_labelled), "k": 5})
                if response.status_code != 200:
                    errors.append(response.text)
                else:
                    answers.append((response.json()["model"], response.json()["index"]))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    point_current(runs, runs / "run-b")
    deadline = time.monotonic() + 30
    while server.client.get("/version").json()["model"] == before["model"] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    after = server.client.get("/version").json()
    assert after["model"] != before["model"] and after["index"] != before["index"]
    assert not errors
    assert set(answers) <= {(before["model"], before["index"]), (after["model"], after["index"])}
    assert (after["model"], after["index"]) in set(answers)


def test_a_mismatched_pair_is_refused_once_and_the_old_one_kept(runs, tmp_path, capsys):
    from coldrec.serving import Served

    model, index = tmp_path / "model", tmp_path / "index"
    model.symlink_to(runs / "run-a/train")
    index.symlink_to(runs / "run-a/index")
    served = Served(model, index)
    first = served.pair
    index.unlink()
    index.symlink_to(runs / "run-b/index")  # the index of another model
    assert not served.refresh() and not served.refresh()
    assert served.pair is first
    assert capsys.readouterr().err.count("serve: kept model") == 1  # said once, not every check
    model.unlink()
    model.symlink_to(runs / "run-b/train")
    assert served.refresh() and served.pair.fingerprint != first.fingerprint
