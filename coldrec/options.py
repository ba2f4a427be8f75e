"""Each stage's options and their defaults, in one place.

`coldrec <stage> --flag` (cli.py), a `[stage]` table of a `coldrec pipeline` config
(pipeline.py, validated with `config.build_section`: unknown keys and wrong types are
refused with the key named) and the stage's library defaults all read them from here, so a
default is written once. The model's own options are `coldrec.config.TrainConfig`.

This module imports nothing heavy: the command line reads it to draw `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PrepareOptions:
    attribution_window: str = "30m"  # a click within this long after an exposure labels it
    orphan_clicks: str = "drop"  # drop | keep: clicks with no exposure in their window
    ts_unit: str = "s"  # s | ms: unit of integer ts columns
    start: str | None = None  # first day read, YYYY-MM-DD
    end: str | None = None  # last day read, YYYY-MM-DD
    valid_fraction: float = 0.1  # the last fraction of the time range is validation
    holdout_items: float = 0.0  # items held out for test_cold_item
    holdout_users: float = 0.0  # users held out for test_cold_user
    seed: int = 0
    min_click_match: float = 0.5  # below this share of clicks matching an exposure, prepare fails


@dataclass
class StatsOptions:
    windows: str = "1,7,30"  # window lengths in days
    user_category_columns: str | None = None  # String columns of the users for an item's audience mix (None: all)
    item_category_columns: str | None = None  # String columns of the items for a user's category mix (None: all)
    max_category_values: int = 20  # most frequent values per category column with a share column
    prior_strength: float = 10.0  # a of the smoothed CTR (clicks + a * global) / (exposures + a)


@dataclass
class TrainOptions:
    init_from: str = ""  # pipeline: "previous" warm-starts from the last run's model
    threads: int = 0  # torch CPU threads; 0 = automatic (coldrec.train.default_threads)


@dataclass
class TuneOptions:
    trials: int | None = None  # trials in the study, resumed ones included (None: 20, or unbounded with a budget)
    budget: str | None = None  # wall time for the whole search: "30m", "2h", "90s" (None: no limit)
    objective: str | None = None  # warm,cold_user,cold_item (None: the scenarios the split holds)
    seed: int = 0  # the sampler's seed (the trials' training seed is training.seed)
    threads: int = 0  # torch CPU threads; 0 = automatic (coldrec.train.default_threads)


@dataclass
class EmbedOptions:
    batch_size: int = 1024  # rows per forward pass
    threads: int | None = None  # torch CPU threads (None: torch's choice)


@dataclass
class IndexOptions:
    trees: int = 100  # Annoy trees; recall@100 >= 0.95 at 100k items (docs/benchmarks.md)


@dataclass
class RecallOptions:
    k: int = 100  # items per user
    exclude_seen: bool = True  # pipeline: skip the items a user clicked in the samples
    exact: bool | None = None  # brute force (True), Annoy (False), or by catalogue size (None)
    search_k: int | None = None  # Annoy nodes per query (None: 4 x trees x fetched)
    threads: int | None = None  # search threads (None: every core)
    fresh_quota: float = 0.0  # share of each user's k reserved for fresh items
    fresh_days: int = 7  # an item is fresh this many days from its first-seen day


@dataclass
class InputsOptions:
    exposures: str | None = None
    clicks: str | None = None
    users: str | None = None
    items: str | None = None


@dataclass
class OutputOptions:
    root: str | None = None


STAGE_OPTIONS = {
    "inputs": InputsOptions,
    "output": OutputOptions,
    "prepare": PrepareOptions,
    "stats": StatsOptions,
    "train": TrainOptions,
    "embed": EmbedOptions,
    "index": IndexOptions,
    "recall": RecallOptions,
}
