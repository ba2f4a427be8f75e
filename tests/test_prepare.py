"""`coldrec prepare`: exact labels on hand-built logs, a property test against a plain-Python
reference, split invariants on a synthetic world, partition pruning and bad input."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldrec.errors import UsageError
from coldrec.prepare import (
    ROLE_ORPHAN,
    ROLE_SAMPLE,
    PrepareConfig,
    click_events,
    exposure_events,
    label_events,
    parse_window,
    run_prepare,
)

T0 = dt.datetime(2026, 1, 1, 10, 0)
WINDOW = dt.timedelta(minutes=30)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def exposures_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.Int64, "ts": pl.Datetime("us")}, orient="row")


def clicks_frame(rows: list[tuple], weight: bool = True) -> pl.DataFrame:
    schema = {"user_id": pl.String, "item_id": pl.Int64, "ts": pl.Datetime("us")}
    if weight:
        schema["weight"] = pl.Float32
    return pl.DataFrame(rows, schema=schema, orient="row")


def labelled(exposures: pl.DataFrame, clicks: pl.DataFrame, window: dt.timedelta = WINDOW) -> pl.DataFrame:
    return label_events(exposure_events(exposures.lazy()), click_events(clicks.lazy()), window).collect(engine="in-memory")


def samples_of(frame: pl.DataFrame) -> list[tuple]:
    """(user, item, minutes after T0, label, weight) of the exposure samples, sorted."""
    rows = frame.filter(pl.col("role") == ROLE_SAMPLE).sort("user_id", "item_id", "ts")
    return [
        (row["user_id"], row["item_id"], (row["ts"] - T0) / dt.timedelta(minutes=1), row["label"], row["weight"])
        for row in rows.iter_rows(named=True)
    ]


def orphans_of(frame: pl.DataFrame) -> list[tuple]:
    rows = frame.filter(pl.col("role") == ROLE_ORPHAN).sort("user_id", "item_id", "ts")
    return [(row["user_id"], row["item_id"], (row["ts"] - T0) / dt.timedelta(minutes=1)) for row in rows.iter_rows(named=True)]


# --------------------------------------------------------------------------- exact labels


def test_window_edges_are_inclusive_at_ts_and_ts_plus_window():
    exposures = exposures_frame([("a", 1, at(0)), ("b", 1, at(0)), ("c", 1, at(0)), ("d", 1, at(0))])
    one_us = dt.timedelta(microseconds=1)
    clicks = clicks_frame(
        [
            ("a", 1, at(0), 1.0),  # at the exposure itself
            ("b", 1, at(30), 1.0),  # exactly the window later
            ("c", 1, at(30) + one_us, 1.0),  # just past the window: orphan
            ("d", 1, at(0) - one_us, 1.0),  # just before the exposure: orphan
        ]
    )
    frame = labelled(exposures, clicks)
    assert samples_of(frame) == [("a", 1, 0, 1, 1.0), ("b", 1, 0, 1, 1.0), ("c", 1, 0, 0, 1.0), ("d", 1, 0, 0, 1.0)]
    assert [(user, item) for user, item, _ in orphans_of(frame)] == [("c", 1), ("d", 1)]


def test_repeats_in_the_window_collapse_into_the_earliest():
    # Shown at 10:00 and 10:10, clicked at 10:12: one positive sample at 10:00.
    exposures = exposures_frame([("a", 1, at(0)), ("a", 1, at(10)), ("b", 2, at(5)), ("b", 2, at(5))])
    clicks = clicks_frame([("a", 1, at(12), 1.0)])
    frame = labelled(exposures, clicks)
    assert samples_of(frame) == [("a", 1, 0, 1, 1.0), ("b", 2, 5, 0, 1.0)]
    assert frame.filter(pl.col("role") == ROLE_SAMPLE).sort("user_id")["exposures"].to_list() == [2, 2]


def test_collapse_is_greedy_from_the_first_exposure_not_a_chain_of_gaps():
    # 10:00 opens a sample; 10:10 and 10:25 are within 30m of it; 10:40 is not (though only
    # 15m after 10:25), so it opens the next one. A pair shown every 10 minutes for 3 hours
    # gives a sample every 40 minutes.
    exposures = exposures_frame(
        [("a", 1, at(m)) for m in (0, 10, 25, 40)] + [("b", 1, at(m)) for m in range(0, 181, 10)]
    )
    frame = labelled(exposures, clicks_frame([]))
    times = defaultdict(list)
    for user, _, minutes, _, _ in samples_of(frame):
        times[user].append(minutes)
    assert times == {"a": [0, 40], "b": [0, 40, 80, 120, 160]}


def test_a_click_labels_only_the_latest_exposure_before_it():
    # Samples at 10:00 and 10:31 (apart by more than the window); a click at 10:35 is in
    # both windows but labels only the latest exposure.
    exposures = exposures_frame([("a", 1, at(0)), ("a", 1, at(31))])
    frame = labelled(exposures, clicks_frame([("a", 1, at(35), 1.0)]))
    assert samples_of(frame) == [("a", 1, 0, 0, 1.0), ("a", 1, 31, 1, 1.0)]
    assert frame["clicks"].sum() == 1


def test_a_collapsed_repeat_extends_the_sample_window():
    # Shown at 10:00 and 10:20 (one sample), clicked at 10:45: within 30m of the repeat.
    exposures = exposures_frame([("a", 1, at(0)), ("a", 1, at(20))])
    frame = labelled(exposures, clicks_frame([("a", 1, at(45), 1.0)]))
    assert samples_of(frame) == [("a", 1, 0, 1, 1.0)]
    assert orphans_of(frame) == []


def test_weight_is_the_largest_click_weight_and_one_for_negatives():
    exposures = exposures_frame([("a", 1, at(0)), ("a", 2, at(0))])
    clicks = clicks_frame([("a", 1, at(1), 1.0), ("a", 1, at(2), 3.0)])
    frame = labelled(exposures, clicks)
    assert samples_of(frame) == [("a", 1, 0, 1, 3.0), ("a", 2, 0, 0, 1.0)]
    assert frame.schema["weight"] == pl.Float32 and frame.schema["label"] == pl.Int8


def test_clicks_without_weight_weigh_one():
    exposures = exposures_frame([("a", 1, at(0))])
    frame = labelled(exposures, clicks_frame([("a", 1, at(1))], weight=False))
    assert samples_of(frame) == [("a", 1, 0, 1, 1.0)]


def write_logs(root: Path, exposures: pl.DataFrame, clicks: pl.DataFrame) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    exposures.write_parquet(root / "exposures.parquet")
    clicks.write_parquet(root / "clicks.parquet")
    return root / "exposures.parquet", root / "clicks.parquet"


def read_all(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in sorted(out.glob("*.parquet"))]).sort("ts", "user_id", "item_id")


@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_orphan_clicks_dropped_or_kept_as_positives(tmp_path, mode):
    exposures = exposures_frame([("a", 1, at(m)) for m in range(0, 600, 60)])
    clicks = clicks_frame([("a", 1, at(1), 1.0), ("z", 9, at(100), 3.0), ("a", 1, at(45), 1.0)])
    paths = write_logs(tmp_path / "logs", exposures, clicks)
    result = run_prepare(*paths, tmp_path / "out", PrepareConfig(orphan_clicks=mode, min_click_match=0.0))  # 1 of 3 match
    assert (result.counts.clicks_matched, result.counts.orphan_clicks) == (1, 2)
    rows = read_all(tmp_path / "out")
    orphans = rows.filter(pl.col("user_id") == "z").vstack(rows.filter(pl.col("ts") == at(45)))
    if mode == "drop":
        assert rows.height == 10 and orphans.height == 0 and result.orphan_clicks_kept == 0
    else:
        assert rows.height == 12 and result.orphan_clicks_kept == 2
        assert orphans.select("label", "weight").rows() == [(1, 3.0), (1, 1.0)]


# --------------------------------------------------------------------------- reference property


def reference_labels(exposures: list[tuple], clicks: list[tuple], window: int) -> tuple[list[tuple], list[tuple]]:
    """The label rules in plain Python: (samples, orphans), times in seconds."""
    times: dict[tuple, set[int]] = defaultdict(set)
    for user, item, ts in exposures:
        times[(user, item)].add(ts)
    anchor_of: dict[tuple, int] = {}
    samples: dict[tuple, dict] = {}
    for pair, seen in times.items():
        anchor = None
        for ts in sorted(seen):
            if anchor is None or ts - anchor > window:
                anchor = ts
                samples[(pair, anchor)] = {"label": 0, "weight": None, "exposures": 0, "clicks": 0}
            anchor_of[(pair, ts)] = anchor
    for user, item, ts in exposures:
        samples[((user, item), anchor_of[((user, item), ts)])]["exposures"] += 1
    orphans = []
    for user, item, ts, weight in clicks:
        before = [e for e in times.get((user, item), ()) if e <= ts <= e + window]
        if not before:
            orphans.append((user, item, ts, weight))
            continue
        sample = samples[((user, item), anchor_of[((user, item), max(before))])]
        sample["label"] = 1
        sample["clicks"] += 1
        sample["weight"] = weight if sample["weight"] is None else max(sample["weight"], weight)
    rows = [
        (pair[0], pair[1], anchor, s["label"], s["weight"] or 1.0, s["exposures"], s["clicks"])
        for (pair, anchor), s in samples.items()
    ]
    return sorted(rows), sorted(orphans)


event = st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.integers(0, 2), st.integers(0, 120).map(lambda minute: 60 * minute))
click_weight = st.sampled_from([1.0, 2.0, 3.0])


@st.composite
def logs(draw) -> tuple[list, list, int]:
    """Random small logs on a minute grid; many clicks sit at or next to a window edge of
    some exposure, so edges, repeats and overlapping windows are common."""
    window = draw(st.sampled_from([60, 600, 1800]))
    exposures = draw(st.lists(event, max_size=30))
    clicks = draw(st.lists(st.tuples(*event.wrapped_strategy.element_strategies, click_weight), max_size=8))
    if exposures:
        offsets = st.sampled_from([-60, 0, 60, window - 60, window, window + 60])
        near = draw(st.lists(st.tuples(st.integers(0, len(exposures) - 1), offsets, click_weight), max_size=8))
        clicks += [(exposures[i][0], exposures[i][1], exposures[i][2] + offset, w) for i, offset, w in near]
    return exposures, clicks, window


@settings(max_examples=60, deadline=None)
@given(logs())
def test_labels_equal_the_plain_python_reference(logs):
    exposures, clicks, window = logs
    # Integer epoch seconds on a coarse grid, so equal times, window edges and repeats are common.
    exposure_df = pl.DataFrame(exposures, schema={"user_id": pl.String, "item_id": pl.Int64, "ts": pl.Int64}, orient="row")
    click_df = pl.DataFrame(
        clicks, schema={"user_id": pl.String, "item_id": pl.Int64, "ts": pl.Int64, "weight": pl.Float64}, orient="row"
    )
    plan = label_events(exposure_events(exposure_df.lazy()), click_events(click_df.lazy()), dt.timedelta(seconds=window))
    want_samples, want_orphans = reference_labels(exposures, clicks, window)
    for engine in ("in-memory", "streaming"):  # run_prepare uses in-memory; the plan must not care
        frame = plan.collect(engine=engine).with_columns(pl.col("ts").dt.epoch("s"))
        got_samples = frame.filter(pl.col("role") == ROLE_SAMPLE).select(
            "user_id", "item_id", "ts", "label", "weight", "exposures", "clicks"
        )
        got_orphans = frame.filter(pl.col("role") == ROLE_ORPHAN).select("user_id", "item_id", "ts", "weight")
        assert sorted(got_samples.rows()) == want_samples
        assert sorted(got_orphans.rows()) == want_orphans


# --------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def prepared(small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "prep"
    config = PrepareConfig(valid_fraction=0.2, holdout_items=0.1, holdout_users=0.1, seed=5)
    result = run_prepare(small_world / "exposures", small_world / "clicks", out, config)
    splits = {path.stem: pl.read_parquet(path) for path in out.glob("*.parquet")}
    return result, splits, json.loads((out / "manifest.json").read_text())


def test_split_files_schema_and_order(prepared):
    _, splits, _ = prepared
    assert set(splits) == {"train", "valid", "test_warm", "test_cold_user", "test_cold_item", "test_cold_both"}
    for frame in splits.values():
        assert frame.schema == pl.Schema(
            {"user_id": pl.String, "item_id": pl.Int64, "ts": pl.Datetime("us"), "label": pl.Int8, "weight": pl.Float32}
        )
        assert frame["ts"].is_sorted()
        assert frame.height > 0


def test_held_out_ids_never_reach_train_or_valid(prepared):
    result, splits, manifest = prepared
    held_users = set(manifest["extra"]["held_out_user_ids"])
    held_items = set(manifest["extra"]["held_out_item_ids"])
    all_users = set(pl.concat([f["user_id"] for f in splits.values()]))
    all_items = set(pl.concat([f["item_id"] for f in splits.values()]))
    assert len(held_users) == round(0.1 * len(all_users)) and len(held_items) == round(0.1 * len(all_items))
    for name in ("train", "valid", "test_warm"):
        assert not held_users & set(splits[name]["user_id"])
        assert not held_items & set(splits[name]["item_id"])
    assert set(splits["test_cold_user"]["user_id"]) <= held_users
    assert not set(splits["test_cold_user"]["item_id"]) & held_items
    assert set(splits["test_cold_item"]["item_id"]) <= held_items
    assert not set(splits["test_cold_item"]["user_id"]) & held_users
    assert set(splits["test_cold_both"]["user_id"]) <= held_users
    assert set(splits["test_cold_both"]["item_id"]) <= held_items
    assert sum(f.height for f in splits.values()) == result.samples


def test_valid_and_warm_test_follow_train_in_time(prepared):
    result, splits, manifest = prepared
    train, valid, warm = splits["train"], splits["valid"], splits["test_warm"]
    assert train["ts"].max() < result.time_cut <= valid["ts"].min()
    assert valid["ts"].max() < result.warm_cut <= warm["ts"].min()
    everything = pl.concat(splits.values())
    first, last = everything["ts"].min(), everything["ts"].max()
    assert abs((result.time_cut - first) / (last - first) - 0.8) < 1e-6
    assert manifest["extra"]["time_cut"] == result.time_cut.isoformat()


def test_counts_in_manifest_add_up(prepared):
    result, splits, manifest = prepared
    extra = manifest["extra"]
    assert extra["exposures_read"] - extra["duplicates_collapsed"] == result.samples  # orphans dropped
    assert extra["clicks_matched"] + extra["orphan_clicks"] == extra["clicks_read"]
    assert sum(int(f["label"].sum()) for f in splits.values()) <= extra["clicks_matched"]
    for name, frame in splits.items():
        assert manifest["row_counts"][name] == frame.height
        assert extra[f"{name}_positives"] == frame["label"].sum()


def test_same_seed_same_files_other_seed_other_holdout(small_world, tmp_path):
    def run(seed: int, name: str) -> tuple[list, pl.DataFrame]:
        out = tmp_path / name
        run_prepare(small_world / "exposures", small_world / "clicks", out, PrepareConfig(holdout_items=0.2, seed=seed))
        held = json.loads((out / "manifest.json").read_text())["extra"]["held_out_item_ids"]
        return held, pl.read_parquet(out / "train.parquet")

    held_1, train_1 = run(1, "a")
    held_1_again, train_1_again = run(1, "b")
    assert held_1 == held_1_again
    assert train_1.equals(train_1_again)  # same rows in the same order, ties included
    assert held_1 != run(2, "c")[0]


def test_without_holdouts_only_train_and_valid(small_world, tmp_path):
    run_prepare(small_world / "exposures", small_world / "clicks", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "train.parquet", "valid.parquet"]


# --------------------------------------------------------------------------- time range


def write_day_partitions(root: Path, frame: pl.DataFrame) -> None:
    for (day,), part in frame.group_by(pl.col("ts").dt.date(), maintain_order=True):
        directory = root / f"day={day.isoformat()}"
        directory.mkdir(parents=True)
        part.write_parquet(directory / "part-0.parquet")


def test_start_end_prune_partitions_and_read_clicks_one_day_further(tmp_path):
    days = [dt.datetime(2026, 1, d) for d in range(1, 6)]
    exposures = exposures_frame([("a", 1, day + dt.timedelta(hours=h)) for day in days for h in (1, 12, 23.9)])
    clicks = clicks_frame(
        [
            ("a", 1, dt.datetime(2026, 1, 2, 1, 5), 1.0),
            # 00:10 on Jan 4 follows the 23:54 exposure of Jan 3, the last day read.
            ("a", 1, dt.datetime(2026, 1, 4, 0, 10), 3.0),
            ("b", 1, dt.datetime(2026, 1, 4, 0, 20), 1.0),  # after --end, unmatched: counted, not kept
            ("a", 1, dt.datetime(2026, 1, 4, 6, 0), 1.0),  # beyond --end + window: not read
        ]
    )
    write_day_partitions(tmp_path / "exposures", exposures)
    write_day_partitions(tmp_path / "clicks", clicks)
    # Out-of-range partitions are corrupt: a run that opened them would fail.
    for log_name, day in (("exposures", "01"), ("exposures", "04"), ("clicks", "01"), ("clicks", "05")):
        directory = tmp_path / log_name / f"day=2026-01-{day}"
        directory.mkdir(exist_ok=True)
        (directory / "part-0.parquet").write_bytes(b"not parquet at all")
    config = PrepareConfig(start=dt.date(2026, 1, 2), end=dt.date(2026, 1, 3))
    result = run_prepare(tmp_path / "exposures", tmp_path / "clicks", tmp_path / "out", config)
    rows = read_all(tmp_path / "out")
    assert rows["ts"].dt.date().unique().sort().to_list() == [dt.date(2026, 1, 2), dt.date(2026, 1, 3)]
    assert rows.filter(pl.col("label") == 1).select("ts", "weight").rows() == [
        (dt.datetime(2026, 1, 2, 1), 1.0),
        (dt.datetime(2026, 1, 3, 23, 54), 3.0),
    ]
    assert (result.counts.exposures_read, result.counts.clicks_matched) == (6, 2)
    assert (result.counts.orphan_clicks, result.counts.clicks_after_end) == (0, 1)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def logs(tmp_path) -> tuple[Path, Path]:
    exposures = exposures_frame([("a", 1, at(m)) for m in range(0, 600, 60)] + [("b", 2, at(300))])
    clicks = clicks_frame([("a", 1, at(1), 1.0), ("b", 2, at(310), 1.0)])
    return write_logs(tmp_path / "logs", exposures, clicks)


def run_bad(run_cli, exposures: Path, clicks: Path, out: Path, *options: str) -> str:
    code, stdout, stderr = run_cli("prepare", "--exposures", exposures, "--clicks", clicks, "--out", out, *options)
    assert code == 2, stderr
    assert not out.exists()
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1, stderr
    return stderr


def rewrite(path: Path, change) -> Path:
    changed = path.with_name("changed-" + path.name)
    change(pl.read_parquet(path)).write_parquet(changed)
    return changed


def test_cli_happy_path(run_cli, logs, tmp_path):
    code, _, stderr = run_cli("--log-format", "json", "prepare", "--exposures", logs[0], "--clicks", logs[1], "--out", tmp_path / "out")
    assert code == 0, stderr
    record = json.loads(stderr.strip().splitlines()[-1])
    assert record["event"] == "prepare" and record["exposures_read"] == 11 and record["clicks_matched"] == 2
    assert record["train_positives"] + record["valid_positives"] == 2


def test_missing_column(run_cli, logs, tmp_path):
    stderr = run_bad(run_cli, rewrite(logs[0], lambda f: f.drop("ts")), logs[1], tmp_path / "out")
    assert "missing column 'ts'" in stderr and "changed-exposures.parquet" in stderr


def test_mistyped_column(run_cli, logs, tmp_path):
    stderr = run_bad(run_cli, logs[0], rewrite(logs[1], lambda f: f.with_columns(pl.col("item_id").cast(pl.Float64))), tmp_path / "out")
    assert "column 'item_id' should be integer or string, found Float64" in stderr and "clicks" in stderr


def test_null_ids(run_cli, logs, tmp_path):
    with_null = rewrite(logs[0], lambda f: f.with_columns(pl.when(pl.col("item_id") == 2).then(None).otherwise(pl.col("user_id")).alias("user_id")))
    stderr = run_bad(run_cli, with_null, logs[1], tmp_path / "out")
    assert "'user_id' has 1 null" in stderr


def test_ids_of_different_types(run_cli, logs, tmp_path):
    numeric = rewrite(logs[1], lambda f: f.with_columns(pl.col("user_id").str.len_chars().alias("user_id")))
    stderr = run_bad(run_cli, logs[0], numeric, tmp_path / "out")
    assert "'user_id'" in stderr and "same id type" in stderr


def test_timestamps_in_milliseconds(run_cli, logs, tmp_path):
    as_ms = rewrite(logs[0], lambda f: f.with_columns(pl.col("ts").dt.epoch("ms")))
    stderr = run_bad(run_cli, as_ms, logs[1], tmp_path / "out")
    assert "milliseconds" in stderr and "--ts-unit ms" in stderr
    clicks_ms = rewrite(logs[1], lambda f: f.with_columns(pl.col("ts").dt.epoch("ms")))
    code, _, stderr = run_cli("prepare", "--exposures", as_ms, "--clicks", clicks_ms, "--out", tmp_path / "ok", "--ts-unit", "ms")
    assert code == 0, stderr
    assert read_all(tmp_path / "ok")["label"].sum() == 2


def test_clicks_that_match_no_exposure_fail_and_write_nothing(run_cli, logs, tmp_path):
    hashed = rewrite(logs[1], lambda f: f.with_columns(pl.col("user_id").hash().cast(pl.String)))  # a pipeline hashing ids
    stderr = run_bad(run_cli, logs[0], hashed, tmp_path / "out")
    assert "only 0 of 2 clicks (0.0%) matched one of the 11 exposures" in stderr
    assert str(logs[0]) in stderr and str(hashed) in stderr and "hashing" in stderr and "--min-click-match" in stderr
    # Accepting any match rate still refuses a train split without a positive.
    stderr = run_bad(run_cli, logs[0], hashed, tmp_path / "out", "--min-click-match", "0")
    assert "the train split has no positive samples" in stderr


def test_min_click_match_is_the_threshold(run_cli, logs, tmp_path):
    half = rewrite(logs[1], lambda f: f.with_columns(pl.when(pl.col("user_id") == "b").then(pl.lit("B")).otherwise(pl.col("user_id")).alias("user_id")))
    stderr = run_bad(run_cli, logs[0], half, tmp_path / "out", "--min-click-match", "0.6")
    assert "only 1 of 2 clicks (50.0%)" in stderr
    code, _, stderr = run_cli("prepare", "--exposures", logs[0], "--clicks", half, "--out", tmp_path / "ok")
    assert code == 0, stderr
    assert json.loads((tmp_path / "ok" / "manifest.json").read_text())["parameters"]["min_click_match"] == 0.5
    stderr = run_bad(run_cli, logs[0], half, tmp_path / "out", "--min-click-match", "1.5")
    assert "--min-click-match must lie in [0, 1]" in stderr


def test_empty_time_range(run_cli, logs, tmp_path):
    stderr = run_bad(run_cli, *logs, tmp_path / "out", "--start", "2030-01-01", "--end", "2030-01-02")
    assert "no exposures between 2030-01-01 and 2030-01-02" in stderr


def test_empty_partition_range(run_cli, tmp_path):
    write_day_partitions(tmp_path / "exposures", exposures_frame([("a", 1, at(0)), ("a", 1, at(2000))]))
    write_day_partitions(tmp_path / "clicks", clicks_frame([("a", 1, at(1), 1.0)]))
    stderr = run_bad(run_cli, tmp_path / "exposures", tmp_path / "clicks", tmp_path / "out", "--start", "2030-01-01")
    assert "no partition folder" in stderr and "--start/--end" in stderr


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1"])
def test_valid_fraction_out_of_range(run_cli, logs, tmp_path, value):
    stderr = run_bad(run_cli, *logs, tmp_path / "out", "--valid-fraction", value)
    assert "--valid-fraction must lie strictly between 0 and 1" in stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--attribution-window", "soon"), "cannot parse 'soon'"),
        (("--attribution-window", "0m"), "not positive"),
        (("--start", "2026-01-05", "--end", "2026-01-01"), "is after --end"),
        (("--start", "yesterday"), "not a date"),
        (("--holdout-items", "1"), "--holdout-items must lie in [0, 1)"),
    ],
)
def test_bad_options(run_cli, logs, tmp_path, options, message):
    assert message in run_bad(run_cli, *logs, tmp_path / "out", *options)


def test_parse_window():
    assert parse_window("45s") == dt.timedelta(seconds=45)
    assert parse_window("30m") == dt.timedelta(minutes=30)
    assert parse_window("2h") == dt.timedelta(hours=2)
    assert parse_window("1d") == dt.timedelta(days=1)
    assert parse_window("1h30m") == dt.timedelta(minutes=90)
    for bad in ("", "30", "m", "30 minutes", "-5m", "1x"):
        with pytest.raises(UsageError):
            parse_window(bad)


def test_single_instant_cannot_be_split(run_cli, tmp_path):
    paths = write_logs(tmp_path / "logs", exposures_frame([("a", 1, at(0)), ("b", 1, at(0))]), clicks_frame([("a", 1, at(1), 1.0)]))
    stderr = run_bad(run_cli, *paths, tmp_path / "out")
    assert "same time" in stderr


def test_integer_ids_of_another_width_keep_the_exposures_type(tmp_path):
    exposures = exposures_frame([("a", 1, at(0)), ("a", 1, at(90)), ("a", 1, at(200))]).with_columns(pl.col("item_id").cast(pl.Int32))
    paths = write_logs(tmp_path / "logs", exposures, clicks_frame([("a", 1, at(5), 1.0), ("a", 1, at(95), 1.0)]))
    run_prepare(*paths, tmp_path / "out")
    rows = read_all(tmp_path / "out")
    assert rows.schema["item_id"] == pl.Int32
    assert rows.select("ts", "label").rows() == [(at(0), 1), (at(90), 1), (at(200), 0)]
