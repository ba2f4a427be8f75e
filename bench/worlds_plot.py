"""Plot for bench/worlds.py; runs in the bench-only peer venv (matplotlib, never coldrec).

    PEER_PYTHON bench/worlds_plot.py bench/out/worlds.json bench/out/worlds.png

Left: coldrec / LightFM hybrid Recall@20 per world and scenario (1 = level). Right: the
ratio of their training wall times (log scale; below 1 = coldrec is faster).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SCENARIOS = {"warm": "warm", "cold_user": "cold users", "cold_item": "cold items"}


def main(inp: str, out: str) -> None:
    means = json.load(open(inp))["means"]
    worlds = list(means)
    x = np.arange(len(worlds))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 1.3]})
    width = 0.26
    for offset, (key, label) in enumerate(SCENARIOS.items()):
        ratios = [means[w]["coldrec"][f"{key} recall@20"] / means[w]["LightFM hybrid"][f"{key} recall@20"] for w in worlds]
        left.bar(x + (offset - 1) * width, ratios, width, label=label)
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_xticks(x, worlds, rotation=20, ha="right")
    left.set_ylabel("Recall@20, coldrec / LightFM hybrid")
    left.legend(frameon=False, ncols=3, loc="upper left")
    left.set_ylim(0, max(1.6, left.get_ylim()[1]))
    times = [means[w]["coldrec"]["train_s"] / means[w]["LightFM hybrid"]["train_s"] for w in worlds]
    right.bar(x, times, 0.6, color="grey")
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_yscale("log")
    right.set_xticks(x, worlds, rotation=20, ha="right")
    right.set_ylabel("train wall time, coldrec / LightFM")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
