"""coldrec stats: point-in-time preference statistics.

Exact values on a tiny hand-built history, a plain-Python reference on random histories
(hypothesis), the no-leakage invariant, bad input through the CLI.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldrec import cli
from coldrec import stats as S
from coldrec.cli import main

DAY1 = dt.date(2026, 1, 1)
SAMPLE_SCHEMA = {"user_id": pl.String, "item_id": pl.Int64, "ts": pl.Datetime("us"), "label": pl.Int8}


def day(n: int) -> dt.date:
    return DAY1 + dt.timedelta(days=n - 1)


def at(n: int, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day(n), dt.time(hour))


def samples_frame(rows: list[tuple], schema: dict | None = None) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=schema or SAMPLE_SCHEMA, orient="row")
    return frame.with_columns(pl.lit(1.0, pl.Float32).alias("weight"))


# The hand-built world: (user, item, ts, label).
HAND_ROWS = [
    ("u1", 1, at(1), 1),
    ("u1", 2, at(1, 8), 0),
    ("u2", 1, at(2), 1),
    ("u1", 1, at(3), 0),
    ("u1", 2, at(3, 23), 1),
    ("u2", 1, at(9), 0),
    ("u1", 3, at(10, 0), 1),
]
USERS = pl.DataFrame({"user_id": ["u1", "u2"], "country": ["DE", "FR"], "age": [30.0, 40.0]})
ITEMS = pl.DataFrame({"item_id": [1, 2, 3], "category": ["Books", "Music", "Books"], "price": [1.0, 2.0, 3.0]})


def write_world(
    root: Path,
    rows: list[tuple] = HAND_ROWS,
    users: pl.DataFrame = USERS,
    items: pl.DataFrame = ITEMS,
    extra: dict[str, pl.DataFrame] | None = None,
) -> dict[str, Path]:
    samples = root / "prep"
    samples.mkdir(parents=True, exist_ok=True)
    samples_frame(rows).write_parquet(samples / "train.parquet")
    for name, frame in (extra or {}).items():
        frame.write_parquet(samples / name)
    users.write_parquet(root / "users.parquet")
    items.write_parquet(root / "items.parquet")
    return {"samples": samples, "users": root / "users.parquet", "items": root / "items.parquet", "out": root / "stats"}


def run_world(paths: dict[str, Path], **options) -> tuple[S.StatsResult, dict[str, pl.DataFrame]]:
    result = S.run_stats(paths["samples"], paths["users"], paths["items"], paths["out"], **options)
    frames = {p.stem: pl.read_parquet(p) for p in paths["out"].glob("*.parquet")}
    return result, frames


def row(frame: pl.DataFrame, id_column: str, entity: object, key: str = "day", when: dt.date | None = None) -> dict:
    selected = frame.filter(pl.col(id_column) == entity)
    if when is not None:
        selected = selected.filter(pl.col(key) == when)
    assert selected.height == 1, selected
    return selected.row(0, named=True)


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- exact values


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> tuple[S.StatsResult, dict[str, pl.DataFrame], Path]:
    root = tmp_path_factory.mktemp("hand")
    result, frames = run_world(write_world(root), windows=(1, 7), prior_strength=10.0)
    return result, frames, root / "stats"


def test_first_active_day_has_no_row_and_rows_follow_active_days(hand):
    _, frames, _ = hand
    users = frames["user_stats"]
    assert sorted(zip(users["user_id"], users["day"])) == [("u1", day(3)), ("u1", day(10)), ("u2", day(9))]
    items = frames["item_stats"]
    assert sorted(zip(items["item_id"], items["day"])) == [(1, day(2)), (1, day(3)), (1, day(9)), (2, day(3))]
    assert users.schema["day"] == pl.Date and users.schema["user_id"] == pl.String
    assert items.schema["item_id"] == pl.Int64
    for frame in frames.values():
        stat_names = [c for c in frame.columns if c not in ("user_id", "item_id", "day", "as_of")]
        assert all(frame.schema[c] == pl.Float32 for c in stat_names)
        assert sum(frame.select(pl.col(stat_names).null_count()).row(0)) == 0


def test_user_windows_smoothing_and_category_mix(hand):
    _, frames, _ = hand
    users = frames["user_stats"]
    first = row(users, "user_id", "u1", when=day(3))
    # Before day 3: u1 had 2 samples (1 click); globally 3 samples, 2 clicks -> prior 2/3.
    assert first["exposures_1d"] == 0 and first["clicks_1d"] == 0  # day 2 is empty for u1
    assert first["ctr_1d"] == approx(2 / 3)  # no exposures: the prior
    assert (first["exposures_7d"], first["clicks_7d"]) == (2, 1)
    assert first["ctr_7d"] == approx((1 + 10 * 2 / 3) / (2 + 10))
    assert (first["exposures_all"], first["clicks_all"]) == (2, 1)
    assert first["distinct_items"] == 2
    assert (first["days_since_first"], first["days_since_last"]) == (2, 2)
    assert first["clickshare_category=Books"] == 1.0 and first["clickshare_category=Music"] == 0.0
    later = row(users, "user_id", "u1", when=day(10))
    # The 7-day window of day 10 is days 3..9: the day-1 samples dropped out; prior = 3/6.
    assert (later["exposures_7d"], later["clicks_7d"]) == (2, 1)
    assert (later["exposures_all"], later["clicks_all"]) == (4, 2)
    assert later["ctr_all"] == approx((2 + 10 * 0.5) / (4 + 10))
    assert (later["days_since_first"], later["days_since_last"]) == (9, 7)
    assert later["clickshare_category=Books"] == approx(0.5)
    assert later["clickshare_category=Music"] == approx(0.5)
    # The day-3 click at 23:00 is before 00:00 of day 4, so day 10 sees it; the day-10 click
    # at 00:00 sharp is not seen by day 10.
    u2 = row(users, "user_id", "u2", when=day(9))
    assert (u2["exposures_7d"], u2["clicks_7d"], u2["exposures_1d"]) == (1, 1, 0)
    assert u2["ctr_7d"] == approx((1 + 10 * 0.6) / (1 + 10))


def test_item_stats_distinct_users_age_and_audience(hand):
    _, frames, _ = hand
    items = frames["item_stats"]
    item1 = row(items, "item_id", 1, when=day(3))
    assert (item1["exposures_all"], item1["clicks_all"], item1["distinct_users"]) == (2, 2, 2)
    assert item1["age_days"] == 2 and item1["days_since_last"] == 1
    assert item1["clickshare_country=DE"] == approx(0.5) and item1["clickshare_country=FR"] == approx(0.5)
    item1_late = row(items, "item_id", 1, when=day(9))
    assert (item1_late["exposures_7d"], item1_late["clicks_7d"]) == (2, 1)  # days 2..8
    assert item1_late["distinct_users"] == 2  # u1 twice counts once
    never_clicked = row(items, "item_id", 2, when=day(3))
    assert never_clicked["clicks_all"] == 0
    assert never_clicked["clickshare_country=DE"] == 0.0 and never_clicked["clickshare_country=__other__"] == 0.0


def test_latest_tables_are_as_of_the_day_after_the_last_sample(hand):
    result, frames, out = hand
    assert result.as_of == day(11)
    latest = frames["user_stats_latest"]
    assert latest.height == 2 and "as_of" in latest.columns and set(latest["as_of"]) == {day(11)}
    assert latest.columns[2:] == frames["user_stats"].columns[2:]
    u1 = row(latest, "user_id", "u1")
    assert (u1["exposures_1d"], u1["clicks_1d"], u1["exposures_all"], u1["clicks_all"]) == (1, 1, 5, 3)
    assert u1["ctr_1d"] == approx((1 + 10 * 4 / 7) / (1 + 10))
    assert (u1["distinct_items"], u1["days_since_first"], u1["days_since_last"]) == (3, 10, 1)
    assert u1["clickshare_category=Books"] == approx(2 / 3)
    assert frames["item_stats_latest"].height == 3  # item 3 is only seen on its first day
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["ctr_prior"] == approx(4 / 7)
    assert manifest["extra"]["as_of"] == "2026-01-11"
    assert manifest["extra"]["prior_strength"] == 10.0
    for table, key in (("user_stats", "user_columns"), ("item_stats", "item_columns")):
        documented = manifest["extra"][key]
        assert list(documented) == frames[table].columns[2:]
        assert all(isinstance(text, str) and text for text in documented.values())
    assert manifest["row_counts"]["user_stats.parquet"] == 3


# --------------------------------------------------------------------------- reference


def reference_stats(
    rows: list[tuple],
    windows: tuple[int, ...],
    strength: float,
    user_country: dict,
    item_category: dict,
    countries: tuple[str, ...],
    categories: tuple[str, ...],
) -> dict[tuple[str, object, dt.date, bool], dict]:
    """Plain Python, one filter per (entity, day): what the stats mean."""
    records = [(u, i, ts.date(), label) for u, i, ts, label in rows]
    as_of = max(r[2] for r in records) + dt.timedelta(days=1)

    def prior(when: dt.date) -> float:
        before = [r for r in records if r[2] < when]
        return sum(r[3] for r in before) / len(before) if before else 0.0

    def bucket(value, values):
        return value if value in values else S.OTHER_VALUE

    expected = {}
    for side, position, other in (("user", 0, 1), ("item", 1, 0)):
        for entity in {r[position] for r in records}:
            own = [r for r in records if r[position] == entity]
            active = sorted({r[2] for r in own})
            for when, serving in [(d, False) for d in active[1:]] + [(as_of, True)]:
                before = [r for r in own if r[2] < when]
                p = prior(when)
                stats = {}
                for window in windows:
                    inside = [r for r in before if r[2] >= when - dt.timedelta(days=window)]
                    clicks = sum(r[3] for r in inside)
                    stats[f"exposures_{window}d"] = len(inside)
                    stats[f"clicks_{window}d"] = clicks
                    stats[f"ctr_{window}d"] = (clicks + strength * p) / (len(inside) + strength)
                clicks = sum(r[3] for r in before)
                stats["exposures_all"] = len(before)
                stats["clicks_all"] = clicks
                stats["ctr_all"] = (clicks + strength * p) / (len(before) + strength)
                distinct = len({r[other] for r in before})
                age = (when - active[0]).days
                if side == "user":
                    stats.update(distinct_items=distinct, days_since_first=age)
                    column, lookup, values = "category", item_category, categories
                else:
                    stats.update(distinct_users=distinct, age_days=age)
                    column, lookup, values = "country", user_country, countries
                stats["days_since_last"] = (when - max(r[2] for r in before)).days
                mix = Counter(bucket(lookup.get(r[other]), values) for r in before if r[3])
                for value in (*values, S.OTHER_VALUE):
                    stats[f"clickshare_{column}={value}"] = mix[value] / clicks if clicks else 0.0
                expected[(side, entity, when, serving)] = stats
    return expected


def compute(rows, windows=(1, 3), strength=5.0, countries=("DE",), categories=("Books", "Music"), partitions=1):
    users = pl.LazyFrame({"user_id": ["u0", "u1", "u2"], "country": ["DE", "FR", None]})
    items = pl.LazyFrame({"item_id": [0, 1, 2, 3], "category": ["Books", "Music", "Toys", "Books"]})
    history = S.normalise_samples(samples_frame(rows).lazy())
    return S.compute_stats(
        history,
        users,
        items,
        windows=windows,
        user_specs=[S.CategorySpec("category", categories)],
        item_specs=[S.CategorySpec("country", countries)],
        prior_strength=strength,
        partitions=partitions,
    )


def as_records(tables: S.StatsTables) -> dict[tuple, dict]:
    records = {}
    for side, frame, serving in (
        ("user", tables.user_stats, False),
        ("item", tables.item_stats, False),
        ("user", tables.user_latest, True),
        ("item", tables.item_latest, True),
    ):
        key_columns = frame.columns[:2]
        for values in frame.iter_rows(named=True):
            entity, when = (values.pop(name) for name in key_columns)
            records[(side, entity, when, serving)] = values
    return records


sample_rows = st.lists(
    st.tuples(
        st.sampled_from(["u0", "u1", "u2", "u3"]),  # u3 has no content row
        st.integers(0, 4),  # item 4 has no content row
        st.builds(
            lambda d, s: dt.datetime.combine(day(1), dt.time()) + dt.timedelta(days=d, seconds=s),
            st.integers(0, 12),
            st.sampled_from([0, 1, 3600 * 12, 86399]),
        ),
        st.integers(0, 1),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=sample_rows, partitions=st.sampled_from([1, 3]))
def test_matches_plain_python_reference(rows, partitions):
    tables = compute(rows, partitions=partitions)
    got = as_records(tables)
    expected = reference_stats(
        rows,
        (1, 3),
        5.0,
        {"u0": "DE", "u1": "FR", "u2": None},
        {0: "Books", 1: "Music", 2: "Toys", 3: "Books"},
        ("DE",),
        ("Books", "Music"),
    )
    assert set(got) == set(expected)
    for key, stats in expected.items():
        assert got[key] == {name: approx(value) for name, value in stats.items()}, key


def mutate_from(rows, cut: dt.date, choices: list[int]) -> list[tuple]:
    """Change samples on days >= cut: delete, flip the label, move later, or add one."""
    changed = []
    for (user, item, ts, label), choice in zip(rows, choices + [0] * len(rows)):
        if ts.date() < cut:
            changed.append((user, item, ts, label))
        elif choice == 1:
            continue
        elif choice == 2:
            changed.append((user, item, ts, 1 - label))
        elif choice == 3:
            changed.append((user, item, ts + dt.timedelta(days=2), label))
        elif choice == 4:
            changed.append((user, item, ts, label))
            changed.append(("u1", 4, ts, 1))
        else:
            changed.append((user, item, ts, label))
    return changed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=sample_rows, cut_offset=st.integers(0, 13), choices=st.lists(st.integers(0, 4), max_size=30))
def test_changes_on_day_d_or_later_never_change_rows_up_to_d(rows, cut_offset, choices):
    cut = day(1) + dt.timedelta(days=cut_offset)
    changed = mutate_from(rows, cut, choices)
    if not changed:
        return
    assert_unchanged_up_to(compute(rows), compute(changed), cut)


def assert_unchanged_up_to(before: S.StatsTables, after: S.StatsTables, cut: dt.date) -> None:
    for old, new, id_column in (
        (before.user_stats, after.user_stats, "user_id"),
        (before.item_stats, after.item_stats, "item_id"),
    ):
        # Days before the cut: the same rows with the same values.
        old_early = old.filter(pl.col("day") < cut).sort(id_column, "day")
        new_early = new.filter(pl.col("day") < cut).sort(id_column, "day")
        assert old_early.equals(new_early)
        # The cut day itself: rows may come or go with that day's samples, values never change.
        both = old.filter(pl.col("day") == cut).join(
            new.filter(pl.col("day") == cut), on=[id_column, "day"], how="inner", suffix="_new"
        )
        for column in old.columns[2:]:
            assert (both[column] == both[f"{column}_new"]).all(), column


def test_randomized_invariant_on_a_larger_history():
    # A denser history than hypothesis explores: every cut day, deletions and label flips.
    import random

    rng = random.Random(7)
    rows = [
        (f"u{rng.randrange(6)}", rng.randrange(8), dt.datetime(2026, 1, 1) + dt.timedelta(minutes=rng.randrange(20 * 1440)), rng.randrange(2))
        for _ in range(300)
    ]
    base = compute(rows, windows=(1, 2, 7))
    for cut_offset in range(0, 21, 2):
        cut = day(1) + dt.timedelta(days=cut_offset)
        changed = mutate_from(rows, cut, [rng.choice([1, 2, 3]) for _ in rows])
        assert_unchanged_up_to(base, compute(changed, windows=(1, 2, 7)), cut)


# --------------------------------------------------------------------------- inputs and options


def test_history_is_train_and_valid_never_test(tmp_path):
    extra = {
        "valid.parquet": samples_frame([("u1", 1, at(12), 1)]),
        "test_warm.parquet": samples_frame([("u1", 2, at(14), 0), ("u1", 2, at(15), 1)]),
        "test_cold_item.parquet": samples_frame([("u1", 77, at(13), 1), ("u1", 77, at(15), 1)]),
        "test_cold_user.parquet": samples_frame([("cold", 1, at(13), 1), ("cold", 1, at(15), 1)]),
    }
    result, frames = run_world(write_world(tmp_path, extra=extra))
    users = frames["user_stats"]
    assert set(users["day"].filter(users["user_id"] == "u1")) == {day(3), day(10), day(12)}
    assert "cold" not in frames["user_stats_latest"]["user_id"].to_list()
    assert 77 not in frames["item_stats_latest"]["item_id"].to_list()
    latest = row(frames["user_stats_latest"], "user_id", "u1")
    assert latest["exposures_all"] == 6  # 5 train + 1 valid; no test_warm or cold rows
    assert result.samples_read == 8 and result.as_of == day(13)
    manifest = json.loads((tmp_path / "stats" / "manifest.json").read_text())
    assert manifest["extra"]["history_files"] == ["train.parquet", "valid.parquet"]


def test_default_category_columns_are_string_columns_capped_by_frequency(tmp_path):
    categories = [f"c{k:02d}" for k in range(25)]
    items = pl.DataFrame(
        {
            "item_id": list(range(60)),
            # c00 is the most frequent, then c01...; 25 values in all.
            "category": ["c00"] * 20 + ["c01"] * 10 + categories[2:] + ["c03"] * 7,
            "brand": ["acme"] * 60,
            "tags": [["x"]] * 60,
            "price": [1.0] * 60,
        }
    )
    rows = [("u1", i, at(1 + i % 3), 1) for i in range(60)]
    paths = write_world(tmp_path, rows=rows, items=items)
    _, frames = run_world(paths, max_category_values=3)
    shares = [c for c in frames["user_stats"].columns if c.startswith("clickshare_")]
    assert shares == [
        "clickshare_category=c00",
        "clickshare_category=c01",
        "clickshare_category=c03",
        "clickshare_category=__other__",
        "clickshare_brand=acme",
        "clickshare_brand=__other__",
    ]
    latest = frames["user_stats_latest"].row(0, named=True)
    assert latest["clickshare_category=c00"] == approx(20 / 60)
    assert latest["clickshare_category=__other__"] == approx((60 - 20 - 10 - 8) / 60)
    assert sum(latest[c] for c in shares[:4]) == approx(1.0)
    # The item side uses the users table: only 'country' is a String column there.
    assert [c for c in frames["item_stats"].columns if c.startswith("clickshare_")] == [
        "clickshare_country=DE",
        "clickshare_country=FR",
        "clickshare_country=__other__",
    ]


def test_explicit_and_disabled_category_columns(tmp_path):
    paths = write_world(tmp_path)
    _, frames = run_world(paths, user_category_columns="", item_category_columns=["category"])
    assert not [c for c in frames["item_stats"].columns if c.startswith("clickshare_")]
    assert "clickshare_category=Books" in frames["user_stats"].columns


def test_unknown_ids_count_as_other_and_integer_widths_may_differ(tmp_path):
    rows = [("u1", 1, at(1), 1), ("u1", 9, at(1), 1), ("u1", 1, at(2), 0)]
    items = ITEMS.with_columns(pl.col("item_id").cast(pl.Int32))
    _, frames = run_world(write_world(tmp_path, rows=rows, items=items))
    u1 = row(frames["user_stats"], "user_id", "u1", when=day(2))
    assert u1["clickshare_category=Books"] == approx(0.5)
    assert u1["clickshare_category=__other__"] == approx(0.5)  # item 9 is not in items.parquet
    manifest = json.loads((tmp_path / "stats" / "manifest.json").read_text())
    assert manifest["row_counts"]["items_not_in_content"] == 1


def test_day_boundaries_are_utc_for_zoned_timestamps(tmp_path):
    # 00:30 in Berlin on Jan 2 is 23:30 UTC on Jan 1: the same UTC day as the first sample.
    zoned = pl.Datetime("us", "Europe/Berlin")
    frame = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u1"],
            "item_id": [1, 2, 3],
            "ts": [dt.datetime(2026, 1, 1, 10), dt.datetime(2026, 1, 2, 0, 30), dt.datetime(2026, 1, 2, 12)],
            "label": pl.Series([1, 1, 0], dtype=pl.Int8),
        }
    ).with_columns(pl.col("ts").dt.replace_time_zone("Europe/Berlin").cast(zoned))
    paths = write_world(tmp_path)
    frame.write_parquet(paths["samples"] / "train.parquet")
    _, frames = run_world(paths)
    u1 = row(frames["user_stats"], "user_id", "u1", when=day(2))
    assert (u1["exposures_1d"], u1["clicks_1d"]) == (2, 2)


def test_parse_windows():
    assert S.parse_windows("30,1, 7") == (1, 7, 30)
    assert S.parse_windows([7]) == (7,)
    for bad in ("0", "a,b", "", "7,7", "-1", "1,,7", "1.5"):
        with pytest.raises(S.UsageError):
            S.parse_windows(bad)


def test_cli_defaults_match_the_library():
    parameters = inspect.signature(cli.stats).parameters
    assert parameters["windows"].default == ",".join(map(str, S.DEFAULT_WINDOWS))
    assert parameters["prior_strength"].default == S.DEFAULT_PRIOR_STRENGTH
    assert parameters["max_category_values"].default == S.DEFAULT_MAX_CATEGORY_VALUES


def test_stat_columns_are_documented():
    docs = Path(__file__).resolve().parents[1] / "docs"
    data_md = (docs / "data.md").read_text()
    assert "## Preference statistics (stats output)" in data_md
    for name in S.stat_columns(S.USER_SIDE, (7,), []) | S.stat_columns(S.ITEM_SIDE, (7,), []):
        assert f"`{name.replace('7d', '<w>d')}`" in data_md, name
    assert "## coldrec stats" in (docs / "cli.md").read_text()


# --------------------------------------------------------------------------- CLI


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def cli_args(paths: dict[str, Path], *extra: str) -> list[str]:
    return [
        "stats",
        "--samples",
        str(paths["samples"]),
        "--users",
        str(paths["users"]),
        "--items",
        str(paths["items"]),
        "--out",
        str(paths["out"]),
        *extra,
    ]


def test_cli_end_to_end_json_log(tmp_path, capsys):
    paths = write_world(tmp_path)
    code, err = run_cli(["--log-format", "json", *cli_args(paths, "--windows", "2,5")], capsys)
    assert code == 0, err
    record = json.loads(err.strip().splitlines()[-1])
    assert record["event"] == "stats" and record["user_rows"] == 3 and record["item_rows"] == 4
    columns = pl.read_parquet_schema(paths["out"] / "user_stats.parquet")
    assert "exposures_2d" in columns and "ctr_5d" in columns and "exposures_7d" not in columns


def _drop_column(root: Path, paths: dict[str, Path]) -> None:
    samples_frame(HAND_ROWS).drop("label").write_parquet(paths["samples"] / "train.parquet")


def _string_ts(root: Path, paths: dict[str, Path]) -> None:
    samples_frame(HAND_ROWS).with_columns(pl.col("ts").cast(pl.String)).write_parquet(paths["samples"] / "train.parquet")


def _null_user(root: Path, paths: dict[str, Path]) -> None:
    samples_frame(HAND_ROWS).with_columns(
        pl.when(pl.col("item_id") == 3).then(None).otherwise(pl.col("user_id")).alias("user_id")
    ).write_parquet(paths["samples"] / "train.parquet")


def _bad_label(root: Path, paths: dict[str, Path]) -> None:
    samples_frame(HAND_ROWS).with_columns(pl.lit(2, pl.Int8).alias("label")).write_parquet(
        paths["samples"] / "train.parquet"
    )


def _no_train(root: Path, paths: dict[str, Path]) -> None:
    (paths["samples"] / "train.parquet").rename(paths["samples"] / "valid.parquet")


def _string_item_ids(root: Path, paths: dict[str, Path]) -> None:
    ITEMS.with_columns(pl.col("item_id").cast(pl.String)).write_parquet(paths["items"])


def _valid_int_users(root: Path, paths: dict[str, Path]) -> None:
    samples_frame([(1, 1, at(5), 1)], {**SAMPLE_SCHEMA, "user_id": pl.Int64}).write_parquet(
        paths["samples"] / "valid.parquet"
    )


def _duplicate_users(root: Path, paths: dict[str, Path]) -> None:
    pl.concat([USERS, USERS]).write_parquet(paths["users"])


def _not_parquet(root: Path, paths: dict[str, Path]) -> None:
    (paths["samples"] / "train.parquet").write_text("user_id,item_id\nu1,1\n")


@pytest.mark.parametrize(
    ("breaker", "extra", "expected"),
    [
        (_drop_column, [], "missing column 'label'"),
        (_string_ts, [], "column 'ts' should be Datetime"),
        (_null_user, [], "column 'user_id' has 1 null"),
        (_bad_label, [], "other than 0/1"),
        (_no_train, [], "no train.parquet"),
        (_string_item_ids, [], "column 'item_id' is Int64 here but String"),
        (_valid_int_users, [], "column 'user_id' is Int64 here but String"),
        (_duplicate_users, [], "duplicate id"),
        (_not_parquet, [], "not a Parquet file"),
        (None, ["--windows", "0"], "out of range"),
        (None, ["--windows", "a,b"], "'a' is not a whole number"),
        (None, ["--windows", "7,7"], "repeats a window"),
        (None, ["--item-category-columns", "genre"], "no category column 'genre'"),
        (None, ["--item-category-columns", "price"], "must be String"),
        (None, ["--user-category-columns", "age"], "must be String"),
        (None, ["--prior-strength", "0"], "prior strength"),
        (None, ["--max-category-values", "0"], "max category values"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, breaker, extra, expected):
    paths = write_world(tmp_path)
    if breaker is not None:
        breaker(tmp_path, paths)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run_cli(cli_args(paths, *extra), capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no lock, no temp


def test_missing_samples_dir_and_out_equal_to_samples(tmp_path, capsys):
    paths = write_world(tmp_path)
    code, err = run_cli(cli_args({**paths, "samples": tmp_path / "nope"}), capsys)
    assert code == 2 and "no such directory" in err
    code, err = run_cli(cli_args({**paths, "out": paths["samples"]}), capsys)
    assert code == 2 and "--out is the --samples directory" in err
    assert (paths["samples"] / "train.parquet").exists()


def test_partitioned_writing_gives_the_same_rows(tmp_path):
    rows = [(f"u{k % 7}", k % 5, at(1 + k % 9, k % 24), k % 3 == 0) for k in range(120)]
    rows = [(u, i, ts, int(label)) for u, i, ts, label in rows]
    whole = run_world(write_world(tmp_path / "whole", rows=rows))[1]
    result, parts = run_world(write_world(tmp_path / "parts", rows=rows), rows_per_partition=4)
    manifest = json.loads((tmp_path / "parts" / "stats" / "manifest.json").read_text())
    assert manifest["extra"]["partitions"]["user_id"] > 1
    assert not (tmp_path / "parts" / "stats" / "_scratch").exists()
    for name, key in (("user_stats", ["user_id", "day"]), ("item_stats_latest", ["item_id"])):
        assert parts[name].sort(key).equals(whole[name].sort(key))


def test_rerun_replaces_previous_output_atomically(tmp_path):
    paths = write_world(tmp_path)
    run_world(paths, windows=(1,))
    _, frames = run_world(paths, windows=(2,))
    assert "exposures_2d" in frames["user_stats"].columns and "exposures_1d" not in frames["user_stats"].columns
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".stats.tmp")]
