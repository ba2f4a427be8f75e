"""Synthetic exposure/click logs with planted structure.

The world: K latent topics. Every categorical value, interest and tag has a topic vector, so
an item's topic = its content's topics + a latent part content cannot explain, and a user's
taste likewise. The true affinity of (user, item) is `taste · topic`; a click is drawn with
probability `sigmoid(alpha * affinity + beta)`. Exposures come from a "current recommender"
that samples candidates by popularity and shows the one it guesses best (noisily), so
exposures are skewed towards popular items and partly relevant, like real logs. New users
and items arrive every day, so cold start is real. Everything is vectorised with numpy.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from coldrec import io, log
from coldrec.errors import UsageError
from coldrec.result import StageResult

LATENT_DIM = 8
CONTENT_VECTOR_DIM = 8
CANDIDATES_PER_EXPOSURE = 8
ATTRIBUTION_MINUTES = 30

CATEGORIES = [
    "books", "music", "movies", "games", "sports", "garden",
    "kitchen", "fashion", "beauty", "toys", "travel", "tech",
]
TAGS = [f"tag{n:02d}" for n in range(30)]
INTERESTS = [f"likes_{c}" for c in CATEGORIES]
AGE_GROUPS = ["18-24", "25-34", "35-44", "45-54", "55+"]
AGE_RANGES = [(18, 24), (25, 34), (35, 44), (45, 54), (55, 80)]
COUNTRIES = ["de", "fr", "es", "it", "nl", "pl"]


@dataclass(frozen=True)
class SynthConfig:
    users: int = 2000
    items: int = 1000
    days: int = 30
    exposures_per_day: int = 6700
    new_users_per_day: int | None = None
    new_items_per_day: int | None = None
    start: str = "2026-01-01"
    seed: int = 0
    latent_strength: float = 0.6  # weight of the part of taste/topic content cannot explain
    interactions: bool = False  # taste/topic from crosses of attributes, not sums of them
    click_rate: float | None = None  # share of exposures clicked (None: the logit's own, ~17%)
    duplicate_rate: float = 0.02  # exposures repeated a few minutes later
    late_click_rate: float = 0.03  # clicks arriving after the attribution window
    orphan_click_rate: float = 0.005  # clicks with no exposure at all
    purchase_rate: float = 0.1  # clicks with weight 3

    def validate(self) -> None:
        for name in ("users", "items", "days", "exposures_per_day"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("new_users_per_day", "new_items_per_day"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.latent_strength < 0:
            raise UsageError(f"--latent-strength must be >= 0, got {self.latent_strength}")
        if self.click_rate is not None and not 0.001 <= self.click_rate <= 0.5:
            raise UsageError(f"--click-rate must be between 0.001 and 0.5, got {self.click_rate}")
        try:
            dt.date.fromisoformat(self.start)
        except ValueError:
            raise UsageError(f"--start must be a date YYYY-MM-DD, got {self.start!r}") from None

    @property
    def users_per_day(self) -> int:
        return self.new_users_per_day if self.new_users_per_day is not None else max(1, self.users // 50)

    @property
    def items_per_day(self) -> int:
        return self.new_items_per_day if self.new_items_per_day is not None else max(1, self.items // 100)


@dataclass
class SynthResult(StageResult):
    out: Path
    users: int
    items: int
    exposures: int
    clicks: int
    days: int
    seconds: float

    def summary(self) -> str:
        return (
            f"synth: {self.exposures:,} exposures, {self.clicks:,} clicks, {self.users:,} users, "
            f"{self.items:,} items over {self.days} days -> {self.out} ({self.seconds:.1f}s)"
        )


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    user_ids: np.ndarray  # (n_users,) str
    user_first_day: np.ndarray  # (n_users,) int day index
    user_taste: np.ndarray  # (n_users, K)
    user_activity: np.ndarray  # (n_users,) relative activity
    item_ids: np.ndarray  # (n_items,) int64
    item_first_day: np.ndarray  # (n_items,) int
    item_topic: np.ndarray  # (n_items, K)
    item_popularity: np.ndarray  # (n_items,)
    users: pl.DataFrame
    items: pl.DataFrame
    alpha: float
    beta: float


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-9)


def _pick_several(rng: np.random.Generator, n: int, choices: int, low: int, high: int) -> np.ndarray:
    """A (n, choices) boolean mask with `low..high` distinct True entries per row."""
    counts = rng.integers(low, high + 1, size=n)
    keys = rng.random((n, choices))
    # The row's `count` smallest random keys are a uniform random subset of that size.
    threshold = np.take_along_axis(np.sort(keys, axis=1), (counts - 1)[:, None], axis=1)
    return keys <= threshold


def _mask_to_lists(mask: np.ndarray, names: list[str]) -> pa.Array:
    """Each row's True columns as a list of names (an Arrow list array, no Python loop)."""
    rows, cols = np.nonzero(mask)  # row-major, so each row's entries are contiguous
    offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
    values = pa.array(names, type=pa.string()).take(pa.array(cols, type=pa.int32()))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _mean_of_selected(mask: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    return (mask @ vectors) / mask.sum(axis=1, keepdims=True)


def _user_id(index: np.ndarray | pl.Expr) -> pl.Expr:
    expr = index if isinstance(index, pl.Expr) else pl.lit(pl.Series(index))
    return pl.format("u{}", expr.cast(pl.String).str.zfill(7))


def _item_id(index: np.ndarray) -> np.ndarray:
    return (np.asarray(index, dtype=np.int64) + 1) * 10 + 3  # not 0..n-1 on purpose


@dataclass
class _Topics:
    """The topic vector of every categorical value (rows follow the value lists above)."""

    category: np.ndarray  # (len(CATEGORIES), K)
    tag: np.ndarray  # (len(TAGS), K)
    age: np.ndarray  # (len(AGE_GROUPS), K)
    country: np.ndarray  # (len(COUNTRIES), K)
    interest: np.ndarray  # (len(INTERESTS), K)


@dataclass
class _ItemDraws:
    category: np.ndarray  # (n_items,) index into CATEGORIES
    tags: np.ndarray  # (n_items, len(TAGS)) mask
    content_topic: np.ndarray  # (n_items, K) what content explains
    latent: np.ndarray  # (n_items, K) unit, what content cannot explain
    content_vector: np.ndarray  # (n_items, CONTENT_VECTOR_DIM)
    price: np.ndarray  # (n_items,)
    popularity: np.ndarray  # (n_items,)


@dataclass
class _UserDraws:
    age_group: np.ndarray  # (n_users,) index into AGE_GROUPS
    country: np.ndarray  # (n_users,) index into COUNTRIES
    interests: np.ndarray  # (n_users, len(INTERESTS)) mask
    content_taste: np.ndarray  # (n_users, K) what content explains
    latent: np.ndarray  # (n_users, K) unit, what content cannot explain
    activity: np.ndarray  # (n_users,) relative activity
    age: np.ndarray  # (n_users,) float, NaN when unknown


def _draw_topics(rng: np.random.Generator) -> _Topics:
    k = LATENT_DIM
    category_topic = rng.normal(size=(len(CATEGORIES), k))
    tag_topic = 0.5 * rng.normal(size=(len(TAGS), k))
    age_topic = 0.7 * rng.normal(size=(len(AGE_GROUPS), k))
    country_topic = 0.3 * rng.normal(size=(len(COUNTRIES), k))
    # An interest in a category points at that category's topic.
    interest_topic = category_topic + 0.3 * rng.normal(size=category_topic.shape)
    return _Topics(category_topic, tag_topic, age_topic, country_topic, interest_topic)


def _draw_items(rng: np.random.Generator, n_items: int, topics: _Topics) -> _ItemDraws:
    """Items: category + tags -> content topic, plus a latent part."""
    k = LATENT_DIM
    category = rng.integers(0, len(CATEGORIES), size=n_items)
    tags = _pick_several(rng, n_items, len(TAGS), 1, 3)  # (n_items, tags) mask
    content_topic = topics.category[category] + _mean_of_selected(tags, topics.tag)  # (n_items, K)
    latent = _unit(rng.normal(size=(n_items, k)))  # what content cannot explain
    projection = rng.normal(size=(k, CONTENT_VECTOR_DIM)) / np.sqrt(k)
    content_vector = (_unit(content_topic) @ projection + 0.3 * rng.normal(size=(n_items, CONTENT_VECTOR_DIM)))
    price = np.round(np.exp(rng.normal(3.0, 0.8, size=n_items) + 0.3 * content_topic[:, 0]), 2)
    popularity = np.exp(rng.normal(0.0, 1.2, size=n_items))  # heavy-tailed
    return _ItemDraws(category, tags, content_topic, latent, content_vector, price, popularity)


def _draw_users(rng: np.random.Generator, n_users: int, topics: _Topics) -> _UserDraws:
    """Users: age group, country, interests -> content taste, plus a latent part."""
    age_group = rng.integers(0, len(AGE_GROUPS), size=n_users)
    country = rng.integers(0, len(COUNTRIES), size=n_users)
    interests = _pick_several(rng, n_users, len(INTERESTS), 1, 3)
    content_taste = _mean_of_selected(interests, topics.interest) + topics.age[age_group] + topics.country[country]
    latent = _unit(rng.normal(size=(n_users, LATENT_DIM)))
    activity = np.exp(rng.normal(0.0, 0.8, size=n_users))
    low = np.array([AGE_RANGES[g][0] for g in age_group])
    high = np.array([AGE_RANGES[g][1] for g in age_group])
    age = rng.integers(low, high + 1).astype(np.float64)
    age[rng.random(n_users) < 0.02] = np.nan
    return _UserDraws(age_group, country, interests, content_taste, latent, activity, age)


def _first_days(initial: int, total: int, per_day: int) -> np.ndarray:
    """(total,) arrival day: the first `initial` on day 0, then `per_day` more each day."""
    return np.concatenate([np.zeros(initial, dtype=np.int64), 1 + np.arange(total - initial) // per_day])


def _click_scale(
    rng: np.random.Generator,
    config: SynthConfig,
    user_taste: np.ndarray,
    user_activity: np.ndarray,
    item_topic: np.ndarray,
    item_popularity: np.ndarray,
) -> tuple[float, float]:
    """(alpha, beta) of the click logit, from random pairs (and shown pairs for --click-rate)."""
    # Scale affinity so the logit spans a useful range; base CTR around 5-10% of random pairs.
    sample_users = rng.integers(0, len(user_taste), 20000)
    sample_items = rng.integers(0, len(item_topic), 20000)
    raw = np.einsum("nk,nk->n", user_taste[sample_users], item_topic[sample_items])
    alpha = float(1.6 / raw.std())
    beta = float(-3.0 - alpha * raw.mean())
    if config.click_rate is not None:
        shown = _shown_affinity(np.random.default_rng([config.seed, 2]), user_taste, user_activity, item_topic, item_popularity)
        beta = _beta_for_rate(alpha * shown, config.click_rate)
    return alpha, beta


def _users_frame(user_ids: np.ndarray, drawn: _UserDraws) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": user_ids,
            "age_group": np.array(AGE_GROUPS)[drawn.age_group],
            "country": np.array(COUNTRIES)[drawn.country],
            "interests": _mask_to_lists(drawn.interests, INTERESTS),
            "age": drawn.age,
        },
        schema={"user_id": pl.String, "age_group": pl.String, "country": pl.String,
                "interests": pl.List(pl.String), "age": pl.Float64},
    ).with_columns(pl.col("age").fill_nan(None))


def _items_frame(item_ids: np.ndarray, drawn: _ItemDraws) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": item_ids,
            "category": np.array(CATEGORIES)[drawn.category],
            "tags": _mask_to_lists(drawn.tags, TAGS),
            "price": drawn.price,
            "content_vector": drawn.content_vector.astype(np.float32),
        },
        schema={"item_id": pl.Int64, "category": pl.String, "tags": pl.List(pl.String),
                "price": pl.Float64, "content_vector": pl.Array(pl.Float32, CONTENT_VECTOR_DIM)},
    )


def build_world(config: SynthConfig) -> World:
    # Every draw of `rng` happens in a fixed order (topics, items, users, click scale):
    # reordering any of them changes every world generated from a seed.
    rng = np.random.default_rng(config.seed)
    n_users = config.users + config.users_per_day * (config.days - 1)
    n_items = config.items + config.items_per_day * (config.days - 1)
    topics = _draw_topics(rng)
    drawn_items = _draw_items(rng, n_items, topics)
    drawn_users = _draw_users(rng, n_users, topics)
    user_ids = pl.select(_user_id(np.arange(n_users))).to_series().to_numpy()
    item_ids = _item_id(np.arange(n_items))

    content_taste, content_topic = drawn_users.content_taste, drawn_items.content_topic
    if config.interactions:
        content_taste, content_topic = _crossed_content(
            np.random.default_rng([config.seed, 1]),
            drawn_users.age_group, drawn_users.country, drawn_users.interests,
            drawn_items.category, drawn_items.tags, drawn_items.price,
        )
    user_taste = _unit(content_taste) + config.latent_strength * drawn_users.latent
    item_topic = _unit(content_topic) + config.latent_strength * drawn_items.latent
    alpha, beta = _click_scale(rng, config, user_taste, drawn_users.activity, item_topic, drawn_items.popularity)
    return World(
        user_ids=user_ids,
        user_first_day=_first_days(config.users, n_users, config.users_per_day),
        user_taste=user_taste.astype(np.float32),
        user_activity=drawn_users.activity,
        item_ids=item_ids,
        item_first_day=_first_days(config.items, n_items, config.items_per_day),
        item_topic=item_topic.astype(np.float32),
        item_popularity=drawn_items.popularity,
        users=_users_frame(user_ids, drawn_users),
        items=_items_frame(item_ids, drawn_items),
        alpha=alpha,
        beta=beta,
    )


PRICE_TIERS = 3


def _crossed_content(
    rng: np.random.Generator,
    age_group: np.ndarray,
    country: np.ndarray,
    interests: np.ndarray,
    category: np.ndarray,
    tags: np.ndarray,
    price: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Content taste and topic that depend on crosses of attributes within a side.

    A user's taste comes from their (age group x country) cell and from each interest as
    seen by their age group; an item's topic from its (category x price tier) cell and
    from each tag within its category. Every cell has its own random topic vector, so no
    single column, and no sum of per-column effects, carries the signal: only a model
    that combines features can recover it. Returns ((n_users, K), (n_items, K)).
    """
    k = LATENT_DIM
    cell_user = rng.normal(size=(len(AGE_GROUPS), len(COUNTRIES), k))
    cell_interest = rng.normal(size=(len(AGE_GROUPS), len(INTERESTS), k))
    cell_item = rng.normal(size=(len(CATEGORIES), PRICE_TIERS, k))
    cell_tag = 0.5 * rng.normal(size=(len(CATEGORIES), len(TAGS), k))
    tier = np.searchsorted(np.quantile(price, [1 / 3, 2 / 3]), price)  # price terciles
    interest_part = np.einsum("ui,uik->uk", interests, cell_interest[age_group]) / interests.sum(1, keepdims=True)
    tag_part = np.einsum("nt,ntk->nk", tags, cell_tag[category]) / tags.sum(1, keepdims=True)
    return cell_user[age_group, country] + interest_part, cell_item[category, tier] + tag_part


def _shown_affinity(
    rng: np.random.Generator, taste: np.ndarray, activity: np.ndarray, topic: np.ndarray, popularity: np.ndarray, n: int = 20000
) -> np.ndarray:
    """The affinity of exposures drawn as simulate_day draws them (without launch boosts)."""
    user = _weighted_choice(rng, activity, n)
    candidates = _weighted_choice(rng, popularity, (n, CANDIDATES_PER_EXPOSURE))
    return _show(rng, taste[user], topic, candidates)[1]


def _show(rng: np.random.Generator, taste: np.ndarray, topic: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logging recommender guesses each candidate's affinity with heavy noise and shows
    its best guess: (picked column (n,), true affinity of the shown item (n,))."""
    affinity = np.einsum("nk,nck->nc", taste, topic[candidates])  # (n, C)
    guess = affinity + rng.normal(0.0, 2.0 * affinity.std() + 1e-9, size=affinity.shape)
    pick = guess.argmax(axis=1)
    return pick, affinity[np.arange(len(pick)), pick]


def _beta_for_rate(logits: np.ndarray, rate: float) -> float:
    """The offset beta with mean(sigmoid(logits + beta)) == rate (bisection; monotone in beta)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        middle = (low + high) / 2
        if click_probability(logits, 1.0, middle).mean() < rate:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def click_probability(affinity: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(alpha * affinity + beta)))


def _weighted_choice(rng: np.random.Generator, weights: np.ndarray, size: int | tuple) -> np.ndarray:
    cumulative = np.cumsum(weights)
    total = int(np.prod(size))
    # Sorted queries make searchsorted cache-friendly; a permutation restores independence.
    draws = np.sort(rng.random(total)) * cumulative[-1]
    picks = np.minimum(np.searchsorted(cumulative, draws, side="right"), len(weights) - 1)
    return picks[rng.permutation(total)].reshape(size)


def simulate_day(world: World, config: SynthConfig, day: int, rng: np.random.Generator) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One day's exposures and clicks (clicks may fall on the next day)."""
    n = config.exposures_per_day
    live_users = np.flatnonzero(world.user_first_day <= day)
    live_items = np.flatnonzero(world.item_first_day <= day)
    # New items get a launch boost so they are shown at all (as a real launch would be).
    item_age = day - world.item_first_day[live_items]
    item_weight = world.item_popularity[live_items] * np.where(item_age < 3, 3.0, 1.0)
    user = live_users[_weighted_choice(rng, world.user_activity[live_users], n)]  # (n,)
    candidates = live_items[_weighted_choice(rng, item_weight, (n, CANDIDATES_PER_EXPOSURE))]  # (n, C)
    pick, shown_affinity = _show(rng, world.user_taste[user], world.item_topic, candidates)
    item = candidates[np.arange(n), pick]

    day_start = np.datetime64(config.start) + np.timedelta64(day, "D")
    seconds = np.sort(rng.integers(0, 86_400 - 3600, size=n))
    ts = day_start + seconds.astype("timedelta64[s]")

    clicked = rng.random(n) < click_probability(shown_affinity, world.alpha, world.beta)
    delay = np.minimum(rng.exponential(180.0, size=n), ATTRIBUTION_MINUTES * 60 - 1).astype(np.int64)
    late = rng.random(n) < config.late_click_rate
    delay = np.where(late, rng.integers(ATTRIBUTION_MINUTES * 60 + 60, 7200, size=n), delay)

    duplicate = rng.random(n) < config.duplicate_rate
    dup_ts = ts[duplicate] + rng.integers(60, 600, size=int(duplicate.sum())).astype("timedelta64[s]")
    exposures = _log_frame(
        np.concatenate([user, user[duplicate]]),
        np.concatenate([item, item[duplicate]]),
        np.concatenate([ts, dup_ts]),
    )

    click_user = user[clicked]
    click_item = item[clicked]
    click_ts = ts[clicked] + delay[clicked].astype("timedelta64[s]")
    orphans = rng.binomial(n, config.orphan_click_rate)
    orphan_user = live_users[rng.integers(0, len(live_users), orphans)]
    orphan_item = live_items[rng.integers(0, len(live_items), orphans)]
    orphan_ts = day_start + rng.integers(0, 86_400, size=orphans).astype("timedelta64[s]")
    total_clicks = len(click_user) + orphans
    weight = np.where(rng.random(total_clicks) < config.purchase_rate, 3.0, 1.0).astype(np.float32)
    clicks = _log_frame(
        np.concatenate([click_user, orphan_user]),
        np.concatenate([click_item, orphan_item]),
        np.concatenate([click_ts, orphan_ts]),
        weight=weight,
    )
    return exposures, clicks


def _log_frame(user: np.ndarray, item: np.ndarray, ts: np.ndarray, weight: np.ndarray | None = None) -> pl.DataFrame:
    """A log table from user/item indices: ids are formatted by polars, not Python."""
    columns = {"user_index": user, "item_id": _item_id(item), "ts": ts.astype("datetime64[us]")}
    if weight is not None:
        columns["weight"] = weight
    return (
        pl.DataFrame(columns)
        .with_columns(_user_id(pl.col("user_index")).alias("user_id"))
        .select("user_id", "item_id", "ts", *(["weight"] if weight is not None else []))
        .sort("ts")
    )


def _write_partitions(frame: pl.DataFrame, root: Path) -> None:
    frame = frame.with_columns(pl.col("ts").dt.date().alias("__day"))
    for (day,), part in frame.group_by("__day", maintain_order=True):
        directory = root / f"day={day.isoformat()}"
        directory.mkdir(parents=True, exist_ok=True)
        part.drop("__day").write_parquet(directory / "part-0.parquet")


def run_synth(config: SynthConfig, out: str | Path) -> SynthResult:
    """Generate the world and its logs into `out` (atomically)."""
    config.validate()
    out = Path(out)
    started = time.perf_counter()
    world = build_world(config)
    rng = np.random.default_rng(config.seed + 1)
    n_exposures = n_clicks = 0
    with io.output_lock(out, "coldrec synth"), io.atomic_dir(out) as temp:
        all_clicks: list[pl.DataFrame] = []
        with log.progress("synth", total=config.days) as bar:
            for day in range(config.days):
                exposures, clicks = simulate_day(world, config, day, rng)
                _write_partitions(exposures, temp / "exposures")
                all_clicks.append(clicks)
                n_exposures += exposures.height
                bar.advance()
        # Clicks are partitioned by their own day, so a click just after midnight lands in
        # the next day's partition (as a real click log would).
        clicks = pl.concat(all_clicks)
        n_clicks = clicks.height
        _write_partitions(clicks, temp / "clicks")
        world.users.write_parquet(temp / "users.parquet")
        world.items.write_parquet(temp / "items.parquet")
        _write_truth(world, config, temp / "truth")
        io.Manifest(
            command="synth",
            parameters=asdict(config),
            row_counts={
                "exposures": n_exposures,
                "clicks": n_clicks,
                "users": world.users.height,
                "items": world.items.height,
            },
            wall_time_s=round(time.perf_counter() - started, 3),
        ).write(temp)
    return SynthResult(
        out=out,
        users=world.users.height,
        items=world.items.height,
        exposures=n_exposures,
        clicks=n_clicks,
        days=config.days,
        seconds=time.perf_counter() - started,
    )


def _write_truth(world: World, config: SynthConfig, directory: Path) -> None:
    directory.mkdir(parents=True)
    start = dt.date.fromisoformat(config.start)
    first_user_day = [start + dt.timedelta(days=int(d)) for d in world.user_first_day]
    first_item_day = [start + dt.timedelta(days=int(d)) for d in world.item_first_day]
    pl.DataFrame(
        {"user_id": world.user_ids, "first_day": first_user_day, "taste": world.user_taste},
        schema={"user_id": pl.String, "first_day": pl.Date, "taste": pl.Array(pl.Float32, LATENT_DIM)},
    ).write_parquet(directory / "users.parquet")
    pl.DataFrame(
        {
            "item_id": world.item_ids,
            "first_day": first_item_day,
            "topic": world.item_topic,
            "popularity": world.item_popularity,
        },
        schema={"item_id": pl.Int64, "first_day": pl.Date, "topic": pl.Array(pl.Float32, LATENT_DIM),
                "popularity": pl.Float64},
    ).write_parquet(directory / "items.parquet")
    params = {
        "config": asdict(config),
        "latent_dim": LATENT_DIM,
        "alpha": world.alpha,
        "beta": world.beta,
        "click_probability": "sigmoid(alpha * dot(taste_u, topic_i) + beta)",
        "attribution_minutes": ATTRIBUTION_MINUTES,
    }
    (directory / "params.json").write_text(json.dumps(params, indent=2) + "\n")


# --------------------------------------------------------------------------- truth access


def load_truth(truth_dir: str | Path) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    truth_dir = Path(truth_dir)
    users = pl.read_parquet(truth_dir / "users.parquet")
    items = pl.read_parquet(truth_dir / "items.parquet")
    params = json.loads((truth_dir / "params.json").read_text())
    return users, items, params


def true_affinity(truth_dir: str | Path, user_ids, item_ids) -> np.ndarray:
    """The planted affinity matrix: (len(user_ids), len(item_ids)) of taste_u · topic_i."""
    users, items, _ = load_truth(truth_dir)
    taste = _lookup(users, "user_id", "taste", user_ids)
    topic = _lookup(items, "item_id", "topic", item_ids)
    return taste @ topic.T


def top_k_overlap(truth: np.ndarray, scores: np.ndarray, k: int) -> float:
    """How much of a planted world a model recovers: the mean over rows of the share of the
    row's true top k (by `truth`, e.g. `true_affinity`) that its top k by `scores` holds.
    Rows rank columns (users ranking items); pass `.T` of both to rank the other way."""
    true_top = np.argsort(-truth, axis=1)[:, :k]  # (rows, k)
    model_top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(true_top, model_top)]))


def _lookup(table: pl.DataFrame, id_column: str, vector_column: str, ids) -> np.ndarray:
    wanted = pl.DataFrame({id_column: pl.Series(list(ids), dtype=table.schema[id_column])})
    joined = wanted.join(table, on=id_column, how="left", maintain_order="left")
    if joined[vector_column].null_count():
        missing = joined.filter(pl.col(vector_column).is_null())[id_column].head(3).to_list()
        raise KeyError(f"unknown {id_column}(s) in truth: {missing}")
    return joined[vector_column].to_numpy().astype(np.float32)
