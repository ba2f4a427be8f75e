"""coldrec evaluate: metrics against hand-computed values, buckets, outputs, bad input."""

from __future__ import annotations

import datetime as dt
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldrec.cli import main
from coldrec.errors import ColdrecError, DuplicateIds, UsageError
from coldrec.evaluate import item_popularity_buckets, parse_ks, run_evaluate, user_activity_buckets

T0 = dt.datetime(2024, 1, 1)


def log2(x: float) -> float:
    return math.log(x, 2)


def write_recs(path: Path, lists: dict[int, list[int]], *, scores: dict[int, list[float]] | None = None) -> Path:
    """lists: user -> items in rank order (rank 1 first)."""
    rows = []
    for user, items in lists.items():
        for position, item in enumerate(items, start=1):
            score = scores[user][position - 1] if scores else 1.0 / position
            rows.append({"user_id": user, "rank": position, "item_id": item, "score": score})
    frame = pl.DataFrame(
        rows, schema={"user_id": pl.Int64, "rank": pl.Int32, "item_id": pl.Int64, "score": pl.Float32}
    )
    frame.write_parquet(path)
    return path


def write_samples(path: Path, rows: list[tuple[int, int, int]]) -> Path:
    """rows: (user, item, label)."""
    pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": [T0 + dt.timedelta(minutes=i) for i in range(len(rows))],
            "label": pl.Series([r[2] for r in rows], dtype=pl.Int8),
            "weight": [1.0] * len(rows),
        }
    ).write_parquet(path)
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


# --------------------------------------------------------------------------- hand-computed


def test_metrics_match_hand_computed_values(tmp_path: Path) -> None:
    recs = write_recs(tmp_path / "recs.parquet", {1: [10, 11, 12], 2: [10, 13], 3: [14]})
    # user 1: positives {11, 12} (12 twice: one positive); user 2: {99} never recommended;
    # user 4: a positive but no recs; user 5: only a negative (not evaluated); user 3: recs only.
    truth = write_samples(
        tmp_path / "truth.parquet",
        [(1, 11, 1), (1, 12, 1), (1, 12, 1), (2, 99, 1), (4, 10, 1), (5, 10, 0), (1, 13, 0)],
    )
    result = run_evaluate(recs, truth, ks=[1, 2, 5])
    o = result.overall
    assert result.users_evaluated == 3
    assert result.users_without_recs == 1
    assert result.rec_users_without_positives == 1  # user 3
    assert result.positives == 4
    # user 1 hits at positions 2 and 3; users 2 and 4 score 0.
    assert o["recall@1"] == 0
    assert o["recall@2"] == pytest.approx(0.5 / 3)
    assert o["recall@5"] == pytest.approx(1 / 3)  # k larger than every list
    ideal2 = 1 + 1 / log2(3)
    assert o["ndcg@2"] == pytest.approx((1 / log2(3)) / ideal2 / 3)
    assert o["ndcg@5"] == pytest.approx((1 / log2(3) + 1 / log2(4)) / ideal2 / 3)
    assert o["hit_rate@1"] == 0
    assert o["hit_rate@2"] == pytest.approx(1 / 3)
    assert o["mrr"] == pytest.approx(0.5 / 3)
    # catalogue = truth items {10, 11, 12, 13, 99}; item 14 is not in it.
    assert result.catalogue_items == 5
    assert o["coverage@1"] == pytest.approx(1 / 5)  # {10}
    assert o["coverage@2"] == pytest.approx(3 / 5)  # {10, 11, 13}
    assert o["coverage@5"] == pytest.approx(4 / 5)
    assert o["cold_share@5"] is None  # needs --train


def test_recall_denominator_is_all_positives_and_ndcg_ideal_is_capped_at_k(tmp_path: Path) -> None:
    recs = write_recs(tmp_path / "recs.parquet", {1: [1, 2, 3, 4]})
    truth = write_samples(tmp_path / "truth.parquet", [(1, i, 1) for i in (1, 2, 7, 8, 9)])
    o = run_evaluate(recs, truth, ks=[2, 10]).overall
    assert o["recall@2"] == pytest.approx(2 / 5)  # |positives|, not min(K, |positives|)
    assert o["ndcg@2"] == pytest.approx(1.0)  # both top slots are hits: ideal at K = 2
    assert o["recall@10"] == pytest.approx(2 / 5)
    assert o["ndcg@10"] == pytest.approx((1 + 1 / log2(3)) / sum(1 / log2(i + 1) for i in range(1, 6)))
    assert o["mrr"] == 1.0


def test_docs_metrics_example(tmp_path: Path) -> None:
    recs = write_recs(tmp_path / "recs.parquet", {1: [1, 2, 3, 4]})  # a, b, c, d
    truth = write_samples(tmp_path / "truth.parquet", [(1, 2, 1), (1, 3, 1), (1, 26, 1)])  # b, c, z
    o = run_evaluate(recs, truth, ks=[1, 2, 10]).overall
    assert (o["recall@2"], o["recall@10"], o["hit_rate@1"], o["mrr"]) == pytest.approx((1 / 3, 2 / 3, 0, 1 / 2))
    assert o["ndcg@2"] == pytest.approx(0.38685, abs=1e-5)
    assert o["ndcg@10"] == pytest.approx(0.53072, abs=1e-5)


def test_truth_without_positives_warns_and_reports_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = write_recs(tmp_path / "recs.parquet", {1: [1, 2]})
    truth = write_samples(tmp_path / "truth.parquet", [(1, 2, 0)])
    code, out, err = run_cli(["evaluate", "--recs", str(recs), "--truth", str(truth), "--report", str(tmp_path / "r.html")], capsys)
    assert code == 0
    assert "no positives" in err
    assert "| Recall | – | – |" in out
    assert "no data" in (tmp_path / "r.html").read_text()


def test_ties_in_score_are_decided_by_rank(tmp_path: Path) -> None:
    truth = write_samples(tmp_path / "truth.parquet", [(1, 20, 1)])
    tied = write_recs(tmp_path / "a.parquet", {1: [10, 20]}, scores={1: [0.5, 0.5]})
    swapped = write_recs(tmp_path / "b.parquet", {1: [20, 10]}, scores={1: [0.5, 0.5]})
    # A score contradicting the rank is ignored as well.
    contrary = write_recs(tmp_path / "c.parquet", {1: [10, 20]}, scores={1: [0.1, 0.9]})
    assert run_evaluate(tied, truth, ks=[1]).overall["mrr"] == 0.5
    assert run_evaluate(swapped, truth, ks=[1]).overall["mrr"] == 1.0
    assert run_evaluate(contrary, truth, ks=[1]).overall["recall@1"] == 0.0


def test_rank_gaps_close_and_row_order_does_not_matter(tmp_path: Path) -> None:
    truth = write_samples(tmp_path / "truth.parquet", [(1, 30, 1), (2, 40, 1)])
    gaps = pl.DataFrame(
        {"user_id": [2, 1, 1, 2, 1], "rank": [9, 7, 1, 4, 3], "item_id": [40, 30, 10, 41, 20], "score": [0.0] * 5}
    )
    gaps.write_parquet(tmp_path / "recs.parquet")
    result = run_evaluate(tmp_path / "recs.parquet", truth, ks=[2, 3])
    # user 1: ranks 1, 3, 7 -> positions 1, 2, 3 (item 30 third); user 2: 41 then 40.
    assert result.overall["recall@2"] == pytest.approx(0.5)
    assert result.overall["recall@3"] == pytest.approx(1.0)
    assert result.overall["mrr"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_string_ids_and_boolean_labels(tmp_path: Path) -> None:
    pl.DataFrame({"user_id": ["u1", "u1"], "rank": [1, 2], "item_id": ["a", "b"], "score": [1.0, 0.5]}).write_parquet(
        tmp_path / "recs.parquet"
    )
    pl.DataFrame({"user_id": ["u1", "u1"], "item_id": ["b", "a"], "label": [True, False]}).write_parquet(
        tmp_path / "truth.parquet"
    )
    result = run_evaluate(tmp_path / "recs.parquet", tmp_path / "truth.parquet", ks="1,2")
    assert result.overall["recall@2"] == 1.0
    assert result.overall["recall@1"] == 0.0


def test_empty_recs_score_zero(tmp_path: Path) -> None:
    pl.DataFrame(schema={"user_id": pl.Int64, "rank": pl.Int32, "item_id": pl.Int64, "score": pl.Float32}).write_parquet(
        tmp_path / "recs.parquet"
    )
    truth = write_samples(tmp_path / "truth.parquet", [(1, 1, 1)])
    result = run_evaluate(tmp_path / "recs.parquet", truth, ks=[5])
    assert result.users_evaluated == 1 and result.users_without_recs == 1
    assert result.overall["recall@5"] == 0.0 and result.overall["mrr"] == 0.0


# --------------------------------------------------------------------------- oracle


def reference_metrics(lists: dict[int, list[int]], positives: dict[int, set[int]], k: int) -> dict[str, float]:
    """Plain-Python metrics straight from the definitions (the test oracle)."""
    totals = {"recall": 0.0, "ndcg": 0.0, "hit_rate": 0.0, "mrr": 0.0}
    for user, relevant in positives.items():
        items = lists.get(user, [])
        hits = [p for p, item in enumerate(items, start=1) if item in relevant]
        top = [p for p in hits if p <= k]
        totals["recall"] += len(top) / len(relevant)
        dcg = sum(1 / log2(p + 1) for p in top)
        totals["ndcg"] += dcg / sum(1 / log2(i + 1) for i in range(1, min(k, len(relevant)) + 1))
        totals["hit_rate"] += 1.0 if top else 0.0
        totals["mrr"] += 1 / hits[0] if hits else 0.0
    return {name: value / len(positives) for name, value in totals.items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lists=st.dictionaries(st.integers(0, 6), st.lists(st.integers(0, 12), max_size=8, unique=True), max_size=6),
    positive_pairs=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 12)), min_size=1, max_size=25),
    k=st.integers(1, 10),
)
def test_matches_plain_python_reference(tmp_path: Path, lists: dict[int, list[int]], positive_pairs: list[tuple[int, int]], k: int) -> None:
    recs = write_recs(tmp_path / "recs.parquet", lists)
    truth = write_samples(tmp_path / "truth.parquet", [(u, i, 1) for u, i in positive_pairs])
    positives: dict[int, set[int]] = {}
    for user, item in positive_pairs:
        positives.setdefault(user, set()).add(item)
    expected = reference_metrics(lists, positives, k)
    overall = run_evaluate(recs, truth, ks=[k]).overall
    for name in ("recall", "ndcg", "hit_rate"):
        assert overall[f"{name}@{k}"] == pytest.approx(expected[name], abs=1e-12)
    assert overall["mrr"] == pytest.approx(expected["mrr"], abs=1e-12)


# --------------------------------------------------------------------------- buckets


def test_item_popularity_buckets_split_positive_mass_in_thirds() -> None:
    # train positives per item: 1 -> 6, 2 -> 3, 3 -> 3, 4 -> 2, 5 -> 1, 6 -> 0 (exposed only).
    counts = {1: 6, 2: 3, 3: 3, 4: 2, 5: 1}
    rows = [(u, item, 1) for item, n in counts.items() for u in range(n)] + [(0, 6, 0)]
    train = pl.LazyFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "label": pl.Int8}, orient="row")
    buckets = dict(item_popularity_buckets(train).select("item_id", "bucket").iter_rows())
    # total 15: item 1 has 0 above it (head); items 2 and 3 tie with 6/15 = 0.4 above (mid,
    # together); item 4 has 12/15 above (tail); 5 and 6 tail.
    assert buckets == {1: "head", 2: "mid", 3: "mid", 4: "tail", 5: "tail", 6: "tail"}


def test_user_activity_buckets_use_train_positive_terciles() -> None:
    counts = {1: 1, 2: 1, 3: 2, 4: 3, 5: 5, 6: 9}
    rows = [(user, i, 1) for user, n in counts.items() for i in range(n)] + [(7, 0, 0)]
    train = pl.LazyFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "label": pl.Int8}, orient="row")
    frame, edges = user_activity_buckets(train)
    assert edges is not None and (edges.light_max, edges.medium_max, edges.max) == (1, 3, 9)
    assert dict(frame.select("user_id", "bucket").iter_rows()) == {
        1: "light", 2: "light", 3: "medium", 4: "medium", 5: "heavy", 6: "heavy"
    }  # user 7 has no train positive: "new" at evaluation time


def test_breakdowns_with_train(tmp_path: Path) -> None:
    # train positives: item 1 x4 (head), item 2 x2 (mid), item 3 x1 + item 4 x0 (tail).
    train_rows = [(10, 1, 1), (11, 1, 1), (12, 1, 1), (13, 1, 1), (10, 2, 1), (11, 2, 1), (12, 3, 1), (13, 4, 0)]
    prep = tmp_path / "prep"
    prep.mkdir()
    write_samples(prep / "train.parquet", train_rows)
    # user 10 (2 train positives): positives 1 (head, hit @1) and 3 (tail, hit @3);
    # user 13 (1 train positive): positive 9 (new item, hit @2); user 20 (new user): positive 2 (mid, missed).
    truth = write_samples(tmp_path / "truth.parquet", [(10, 1, 1), (10, 3, 1), (13, 9, 1), (20, 2, 1)])
    recs = write_recs(tmp_path / "recs.parquet", {10: [1, 4, 3], 13: [1, 9, 2], 20: [1, 3, 4]})
    result = run_evaluate(recs, truth, ks=[2, 3], train=prep)  # a prepare directory
    assert result.train_path == str(prep / "train.parquet")
    items = {row["bucket"]: row for row in result.item_buckets or []}
    assert items["head"]["recall@2"] == 1.0 and items["head"]["train_items"] == 1
    assert items["head"]["train_positive_share"] == pytest.approx(4 / 7)
    assert items["mid"]["recall@3"] == 0.0 and items["mid"]["positives"] == 1
    assert items["tail"]["recall@2"] == 0.0 and items["tail"]["recall@3"] == 1.0
    assert items["tail"]["train_items"] == 2
    assert items["new"]["recall@2"] == 1.0 and items["new"]["train_items"] == 0
    # 9 top-3 slots: item 1 x3 (head), 2 x1 (mid), 3 x2 + 4 x2 (tail), 9 x1 (new)
    assert items["head"]["rec_share@3"] == pytest.approx(3 / 9)
    assert items["tail"]["rec_share@3"] == pytest.approx(4 / 9)
    assert items["new"]["rec_share@3"] == pytest.approx(1 / 9)
    assert result.overall["cold_share@3"] == pytest.approx(1 / 9)
    assert result.overall["cold_share@2"] == pytest.approx(1 / 6)
    # catalogue: train {1, 2, 3, 4} + truth {9}: all five recommended somewhere in the top 3
    assert result.overall["coverage@3"] == 1.0
    assert result.overall["coverage@2"] == pytest.approx(4 / 5)  # {1, 4, 9, 3}: 2 only at 3
    users = {row["bucket"]: row for row in result.user_buckets or []}
    # train positives per user: 10, 11, 12 -> 2, 13 -> 1: the 1/3 and 2/3 quantiles are both 2,
    # so users 10 and 13 are light, nobody is medium or heavy.
    assert result.activity_edges == {"light_max": 2, "medium_max": 2, "max": 2}
    assert users["new"]["users"] == 1 and users["new"]["recall@3"] == 0.0
    assert users["light"]["users"] == 2 and users["light"]["mrr"] == pytest.approx((1 + 0.5) / 2)
    assert users["light"]["train_positives"] == "1–2"
    assert users["light"]["ndcg@3"] == pytest.approx(((1 + 1 / log2(4)) / (1 + 1 / log2(3)) + 1 / log2(3)) / 2)
    assert users["medium"]["users"] == 0 and users["medium"]["recall@3"] is None
    assert users["heavy"]["users"] == 0 and users["heavy"]["train_positives"] == "—"


# --------------------------------------------------------------------------- outputs


@pytest.fixture()
def small_case(tmp_path: Path) -> dict[str, Path]:
    write_samples(tmp_path / "train.parquet", [(1, 1, 1), (2, 1, 1), (2, 2, 1), (3, 3, 0)])
    write_samples(tmp_path / "truth.parquet", [(1, 2, 1), (2, 3, 1), (3, 5, 1)])
    write_recs(tmp_path / "recs.parquet", {1: [1, 2, 3], 2: [3, 5, 4], 3: [4, 5, 1]})
    return {name: tmp_path / f"{name}.parquet" for name in ("train", "truth", "recs")}


def test_cli_markdown_table_on_stdout(small_case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        ["evaluate", "--recs", str(small_case["recs"]), "--truth", str(small_case["truth"]), "--k", "1,3", "--train", str(small_case["train"])],
        capsys,
    )
    assert code == 0, err
    assert "| Recall | 0.3333 | 1.0000 |" in out
    assert "### By item popularity in train" in out and "### By user activity in train" in out
    assert "MRR: 0.6667" in out  # (1/2 + 1 + 1/2) / 3
    assert "recall@1 0.3333" in err  # the summary line goes to stderr


def test_cli_json_and_out_file(small_case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "metrics" / "m.json"
    code, out, err = run_cli(
        ["evaluate", "--recs", str(small_case["recs"]), "--truth", str(small_case["truth"]), "--json", "--k", "3", "--out", str(out_file)],
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    assert data == json.loads(out_file.read_text())
    assert data["ks"] == [3]
    assert data["overall"]["recall@3"] == 1.0
    assert data["item_buckets"] is None and data["overall"]["cold_share@3"] is None
    assert data["recall_curve"]["k"] == [1, 2, 3]
    assert data["recall_curve"]["recall"][-1] == pytest.approx(1.0)
    assert [p.name for p in out_file.parent.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []


def test_html_report_is_self_contained(small_case: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    run_evaluate(small_case["recs"], small_case["truth"], ks=[1, 3], train=small_case["train"], report=report)
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text and "<link" not in text and "@import" not in text
    svgs = [chunk.split("</svg>")[0] + "</svg>" for chunk in text.split("<svg")[1:]]
    assert len(svgs) == 3  # recall curve, item buckets, user buckets
    for svg in svgs:
        ET.fromstring("<svg" + svg)  # well-formed XML
    assert "Recall by item bucket" in text and "<table>" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.html.tmp")]


def test_failed_run_leaves_previous_report(small_case: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text("old")
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"user_id": [1]}).write_parquet(bad)
    with pytest.raises(ColdrecError):
        run_evaluate(bad, small_case["truth"], report=report)
    assert report.read_text() == "old"


# --------------------------------------------------------------------------- bad input


def test_parse_ks() -> None:
    assert parse_ks("100, 20,20") == (20, 100)
    for bad in ("0", "-5", "a", "", "20,,100", "1.5"):
        with pytest.raises(UsageError):
            parse_ks(bad)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("k_zero", "--k"),
        ("k_text", "--k"),
        ("missing_column", "missing column 'rank'"),
        ("duplicate_rank", "(user_id, rank)"),
        ("duplicate_positive", "recommended twice"),
        ("rank_zero", "below 1"),
        ("label_values", "label must be 0 or 1"),
        ("id_types", "column 'user_id' is"),
        ("truth_is_prep_dir", "prepare"),
        ("missing_file", "no such file"),
        ("train_dir_without_train", "no train.parquet"),
    ],
)
def test_bad_input_exits_2_with_one_line(case: str, fragment: str, small_case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs, truth = str(small_case["recs"]), str(small_case["truth"])
    extra: list[str] = []
    k = "20"
    bad = tmp_path / "bad.parquet"
    if case == "k_zero":
        k = "0,20"
    elif case == "k_text":
        k = "twenty"
    elif case == "missing_column":
        pl.DataFrame({"user_id": [1], "item_id": [2], "score": [0.1]}).write_parquet(bad)
        recs = str(bad)
    elif case == "duplicate_rank":
        pl.DataFrame({"user_id": [1, 1, 2], "rank": [1, 1, 1], "item_id": [2, 3, 4], "score": [0.1] * 3}).write_parquet(bad)
        recs = str(bad)
    elif case == "duplicate_positive":
        pl.DataFrame({"user_id": [1, 1], "rank": [1, 2], "item_id": [2, 2], "score": [0.1] * 2}).write_parquet(bad)
        recs = str(bad)
    elif case == "rank_zero":
        pl.DataFrame({"user_id": [1, 1], "rank": [0, 1], "item_id": [2, 3], "score": [0.1] * 2}).write_parquet(bad)
        recs = str(bad)
    elif case == "label_values":
        write_samples(bad, [(1, 2, 2)])
        truth = str(bad)
    elif case == "id_types":
        pl.DataFrame({"user_id": ["1"], "rank": [1], "item_id": [2], "score": [0.1]}).write_parquet(bad)
        recs = str(bad)
    elif case == "truth_is_prep_dir":
        prep = tmp_path / "prep"
        prep.mkdir()
        write_samples(prep / "train.parquet", [(1, 2, 1)])
        truth = str(prep)
    elif case == "missing_file":
        truth = str(tmp_path / "nope.parquet")
    elif case == "train_dir_without_train":
        (tmp_path / "empty").mkdir()
        extra = ["--train", str(tmp_path / "empty")]
    code, out, err = run_cli(["evaluate", "--recs", recs, "--truth", truth, "--k", k, *extra], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err


def test_duplicate_rank_in_unsorted_file_is_found(tmp_path: Path) -> None:
    pl.DataFrame({"user_id": [1, 2, 1], "rank": [1, 1, 1], "item_id": [2, 3, 4], "score": [0.1] * 3}).write_parquet(
        tmp_path / "recs.parquet"
    )
    truth = write_samples(tmp_path / "truth.parquet", [(1, 2, 1)])
    with pytest.raises(DuplicateIds):
        run_evaluate(tmp_path / "recs.parquet", truth)


def test_lists_shorter_than_k_are_said_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = write_recs(tmp_path / "recs.parquet", {1: [10, 11, 12], 2: [10, 13]})
    truth = write_samples(tmp_path / "truth.parquet", [(1, 12, 1), (2, 14, 1)])
    code, _, err = run_cli(["evaluate", "--recs", str(recs), "--truth", str(truth), "--k", "2,3,20,100"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "longest recommendation list has 3 items, fewer than K = 20, 100" in warnings[0]
    code, _, err = run_cli(["evaluate", "--recs", str(recs), "--truth", str(truth), "--k", "3"], capsys)
    assert "warning:" not in err


def test_recall_curve_labels_stay_inside_the_plot() -> None:
    from coldrec.charts import svg_line_chart

    svg = ET.fromstring(svg_line_chart("Recall@k", list(range(1, 101)), [k / 100 for k in range(1, 101)], [10, 100]))
    width = float(svg.get("width"))
    labels = {t.text: t for t in svg.iter("{http://www.w3.org/2000/svg}text") if t.text in ("0.100", "1.000")}
    assert labels["1.000"].get("text-anchor") == "end" and float(labels["1.000"].get("x")) < width - 20  # ends left of the last dot
    assert labels["0.100"].get("text-anchor") == "start"
