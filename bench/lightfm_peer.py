"""LightFM worker for bench/movielens.py; runs inside the bench-only peer venv.

    PEER_PYTHON bench/lightfm_peer.py IN.npz OUT.npz

IN.npz holds the training positives (rows, cols over n_users x n_items) and, optionally,
user/item feature matrices as COO triplets (u_rows, u_cols, u_vals, u_shape; i_...), plus
the hyper-parameters (components, epochs, lr, seed, threads; optionally user_alpha,
item_alpha). OUT.npz gets the user and item representations (bias, embedding) over every
user / item row, so the caller scores u·v + item_bias itself; with content-only feature
matrices (uc_..., ic_...: the same columns without the identity ones) also the content-only
representations (user_emb_c, item_emb_c, item_bias_c), the views a cold user / item gets. Only numpy, scipy and lightfm are needed here (never coldrec).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM


def _matrix(data, prefix: str):
    if f"{prefix}_rows" not in data:
        return None
    shape = tuple(int(v) for v in data[f"{prefix}_shape"])
    return sp.csr_matrix((data[f"{prefix}_vals"].astype(np.float32), (data[f"{prefix}_rows"], data[f"{prefix}_cols"])), shape=shape)


def main(inp: str, out: str) -> None:
    data = np.load(inp)
    n_users, n_items = (int(v) for v in data["shape"])
    interactions = sp.coo_matrix(
        (np.ones(len(data["rows"]), dtype=np.float32), (data["rows"], data["cols"])), shape=(n_users, n_items)
    )
    user_features = _matrix(data, "u")
    item_features = _matrix(data, "i")
    model = LightFM(
        no_components=int(data["components"]),
        loss="warp",
        learning_rate=float(data["lr"]),
        random_state=int(data["seed"]),
        user_alpha=float(data["user_alpha"]) if "user_alpha" in data else 0.0,
        item_alpha=float(data["item_alpha"]) if "item_alpha" in data else 0.0,
    )
    started = time.perf_counter()
    model.fit(interactions, user_features=user_features, item_features=item_features, epochs=int(data["epochs"]), num_threads=int(data["threads"]))
    seconds = time.perf_counter() - started
    user_bias, user_emb = model.get_user_representations(user_features)
    item_bias, item_emb = model.get_item_representations(item_features)
    views = {}
    if "uc_rows" in data:
        views["user_bias_c"], views["user_emb_c"] = model.get_user_representations(_matrix(data, "uc"))
        views["item_bias_c"], views["item_emb_c"] = model.get_item_representations(_matrix(data, "ic"))
    np.savez(out, user_bias=user_bias, user_emb=user_emb, item_bias=item_bias, item_emb=item_emb, seconds=seconds, **views)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
