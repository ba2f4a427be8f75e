"""coldrec datasets movielens: both layouts on tiny hand-written files, exact values, bad input."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from coldrec.cli import main
from coldrec.errors import BadValues
from coldrec.datasets import GROUPLENS_GENRES, detect_movielens, run_movielens

RATINGS = [  # user, item, rating, epoch seconds
    (1, 10, 5, 881250949),
    (1, 20, 3, 881250950),
    (2, 10, 4, 881250000),
    (2, 30, 1, 891717742),
    (3, 20, 4, 891717000),
]
USERS = [(1, 24, "M", "technician", "85711"), (2, 17, "F", "student", "t8h1n"), (3, 56, "M", "retired", "02139")]
ITEMS = [  # id, title, year, genres
    (10, "Toy Story", "1995", ["Animation", "Children's", "Comedy"]),
    (20, "Misérables, Les", "1995", ["Drama", "Musical"]),
    (30, "unknown", "", ["unknown"]),
]


def write_recbole(folder: Path, *, item_year_for_30: str = "unknown") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    (folder / "ml-100k.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += ["\t".join(str(v) for v in row) for row in USERS]
    (folder / "ml-100k.user").write_text("\n".join(users) + "\n", encoding="utf-8")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for item, title, year, genres in ITEMS:
        items.append(f"{item}\t{title}\t{year or item_year_for_30}\t{' '.join(genres)}")
    (folder / "ml-100k.item").write_text("\n".join(items) + "\n", encoding="utf-8")
    return folder


def write_grouplens(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (folder / "u.user").write_text("".join("|".join(str(v) for v in row) + "\n" for row in USERS))
    lines = []
    for item, title, year, genres in ITEMS:
        flags = "|".join("1" if name in genres else "0" for name in GROUPLENS_GENRES)
        full_title = f"{title} ({year})" if year else title
        date = f"01-Jan-{year}" if year else ""
        lines.append(f"{item}|{full_title}|{date}||http://us.imdb.com/M/title-exact?x|{flags}\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return folder


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def ts(seconds: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("layout", ["recbole", "grouplens"])
def test_conversion_exact_values(layout: str, tmp_path: Path) -> None:
    source = write_recbole(tmp_path / "src") if layout == "recbole" else write_grouplens(tmp_path / "src")
    out = tmp_path / "out"
    result = run_movielens(source, out, engineered=True)
    assert result.layout == layout
    assert (result.users, result.items, result.exposures, result.clicks) == (3, 3, 5, 3)

    exposures = pl.read_parquet(out / "exposures")
    assert exposures.schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64, "ts": pl.Datetime("us")})
    assert exposures.rows() == [
        (2, 10, ts(881250000)),
        (1, 10, ts(881250949)),
        (1, 20, ts(881250950)),
        (3, 20, ts(891717000)),
        (2, 30, ts(891717742)),
    ]
    clicks = pl.read_parquet(out / "clicks")
    assert clicks.schema["weight"] == pl.Float32
    assert clicks.select("user_id", "item_id", "ts").rows() == [
        (2, 10, ts(881250000)),
        (1, 10, ts(881250949)),
        (3, 20, ts(891717000)),
    ]
    assert clicks["weight"].to_list() == [1.0, 1.0, 1.0]

    users = pl.read_parquet(out / "users.parquet")
    assert users.schema == pl.Schema(
        {"user_id": pl.Int64, "age": pl.Float64, "age_group": pl.String, "gender": pl.String, "occupation": pl.String, "zip_prefix": pl.String}
    )
    assert users.rows() == [
        (1, 24.0, "18-24", "M", "technician", "8"),
        (2, 17.0, "<18", "F", "student", "T"),
        (3, 56.0, "56+", "M", "retired", "0"),
    ]
    items = pl.read_parquet(out / "items.parquet")
    assert items.schema == pl.Schema(
        {"item_id": pl.Int64, "genres": pl.List(pl.String), "release_year": pl.Float64, "release_decade": pl.String, "title": pl.String}
    )
    assert items.rows() == [
        (10, ["Animation", "Children's", "Comedy"], 1995.0, "1990s", "Toy Story"),
        (20, ["Drama", "Musical"], 1995.0, "1990s", "Misérables, Les"),
        (30, ["unknown"], None, None, "unknown"),
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "coldrec datasets movielens"
    assert manifest["parameters"]["layout"] == layout
    assert manifest["row_counts"] == {"exposures": 5, "clicks": 3, "users": 3, "items": 3}


@pytest.mark.parametrize("layout", ["recbole", "grouplens"])
def test_default_conversion_keeps_the_columns_as_distributed(layout: str, tmp_path: Path) -> None:
    source = write_recbole(tmp_path / "src") if layout == "recbole" else write_grouplens(tmp_path / "src")
    run_movielens(source, tmp_path / "out")
    users = pl.read_parquet(tmp_path / "out" / "users.parquet")
    assert users.schema == pl.Schema({"user_id": pl.Int64, "age": pl.Int64, "gender": pl.String, "occupation": pl.String, "zip_code": pl.String})
    assert users["zip_code"].to_list() == ["85711", "t8h1n", "02139"]  # as given
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.schema == pl.Schema({"item_id": pl.Int64, "title": pl.String, "release_date": pl.Date, "genres": pl.List(pl.String)})
    assert items.select("title", "release_date").rows() == [("Toy Story", dt.date(1995, 1, 1)), ("Misérables, Les", dt.date(1995, 1, 1)), ("unknown", None)]


@pytest.mark.parametrize("engineered", [False, True])
def test_both_layouts_give_identical_tables(tmp_path: Path, engineered: bool) -> None:
    run_movielens(write_recbole(tmp_path / "rb"), tmp_path / "a", engineered=engineered)
    run_movielens(write_grouplens(tmp_path / "gl"), tmp_path / "b", engineered=engineered)
    for name in ("exposures", "clicks", "users.parquet", "items.parquet"):
        assert_frame_equal(pl.read_parquet(tmp_path / "a" / name), pl.read_parquet(tmp_path / "b" / name))


def test_recbole_quirks_unknown_year_and_year_in_title(tmp_path: Path) -> None:
    source = write_recbole(tmp_path / "src", item_year_for_30="unkonwn")  # RecBole's own spelling
    inter = source / "ml-100k.item"
    # RecBole's item 1412 has release_year 'V' and the year left in its title.
    inter.write_text(inter.read_text() + "40\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation\n")
    run_movielens(source, tmp_path / "out", engineered=True)
    items = {row[0]: row for row in pl.read_parquet(tmp_path / "out" / "items.parquet").rows()}
    assert items[30][2] is None and items[30][3] is None
    assert items[40][2] == 1995.0 and items[40][3] == "1990s" and items[40][4] == "Land Before Time III: The Time of the Great Giving"


def test_click_threshold_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_grouplens(tmp_path / "src")
    code, out, err = run_cli(["datasets", "movielens", str(source), "--out", str(tmp_path / "out"), "--click-threshold", "5"], capsys)
    assert code == 0, err
    assert out == ""
    assert "3 users, 3 items, 5 exposures, 1 clicks" in err
    assert pl.read_parquet(tmp_path / "out" / "clicks").select("user_id", "item_id").rows() == [(1, 10)]


def test_detects_layout_and_reconverts_atomically(tmp_path: Path) -> None:
    assert detect_movielens(write_recbole(tmp_path / "rb")).layout == "recbole"
    assert detect_movielens(write_grouplens(tmp_path / "gl")).layout == "grouplens"
    out = tmp_path / "out"
    run_movielens(tmp_path / "gl", out)
    (tmp_path / "gl" / "u.data").write_text("1\t10\t5\n")  # malformed: the old output must survive
    with pytest.raises(BadValues):
        run_movielens(tmp_path / "gl", out)
    assert pl.read_parquet(out / "exposures").height == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")) == []


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("no_such_dir", "no such directory"),
        ("empty_dir", "no MovieLens files"),
        ("missing_item_file", "missing u.item"),
        ("missing_user_file_recbole", "missing ml-100k.user"),
        ("short_line", "line 2: expected 4 fields"),
        ("bad_rating", "line 3: cannot read rating 'five'"),
        ("bad_user_id", "line 2: cannot read user_id"),
        ("missing_header_field", "missing field(s) 'timestamp'"),
        ("duplicate_user", "user_id 1 appears more than once"),
        ("item_flags", "expected 24 fields"),
        ("not_a_directory", "expected a directory"),
    ],
)
def test_bad_input_exits_2(case: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "src"
    if case == "no_such_dir":
        pass
    elif case == "empty_dir":
        source.mkdir()
    elif case == "missing_item_file":
        write_grouplens(source)
        (source / "u.item").unlink()
    elif case == "missing_user_file_recbole":
        write_recbole(source)
        (source / "ml-100k.user").unlink()
    elif case == "short_line":
        write_grouplens(source)
        lines = (source / "u.data").read_text().splitlines()
        lines[1] = "1\t20\t3"
        (source / "u.data").write_text("\n".join(lines) + "\n")
    elif case == "bad_rating":
        write_recbole(source)
        lines = (source / "ml-100k.inter").read_text().splitlines()
        lines[2] = "1\t20\tfive\t881250950"
        (source / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    elif case == "bad_user_id":
        write_grouplens(source)
        (source / "u.user").write_text("1|24|M|technician|85711\nx|17|F|student|1\n")
    elif case == "missing_header_field":
        write_recbole(source)
        lines = (source / "ml-100k.inter").read_text().splitlines()
        lines[0] = "user_id:token\titem_id:token\trating:float\twhen:float"
        (source / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    elif case == "duplicate_user":
        write_grouplens(source)
        (source / "u.user").write_text("1|24|M|technician|85711\n1|25|M|technician|85711\n")
    elif case == "item_flags":
        write_grouplens(source)
        (source / "u.item").write_text("10|Toy Story (1995)|01-Jan-1995||http://x|0|1\n")
    elif case == "not_a_directory":
        source.write_text("x")
    code, out, err = run_cli(["datasets", "movielens", str(source), "--out", str(tmp_path / "out")], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "out").exists()
