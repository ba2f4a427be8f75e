"""Public datasets converted to coldrec's log format, so a newcomer can try real data.

`run_movielens(path, out)` reads MovieLens-100K in either layout it is distributed in:
- RecBole (`ml-100k.inter`, `ml-100k.user`, `ml-100k.item`): tab-separated with typed
  headers (`user_id:token`, ...); genres are the space-separated `class:token_seq`.
- GroupLens (`u.data` tab-separated user/item/rating/ts; `u.user` pipe-separated
  id|age|gender|occupation|zip; `u.item` pipe-separated latin-1 with 19 genre flags).

and writes (both layouts give the same tables):
- exposures/part-0.parquet: user_id Int64, item_id Int64, ts Datetime('us') — every rating
  is an exposure at its timestamp.
- clicks/part-0.parquet: the same columns plus weight Float32 1.0 — ratings >= the click
  threshold (4) are clicks at the same instant as their exposure.
- users.parquet, the columns as GroupLens has them: user_id, age Int64, gender, occupation,
  zip_code String (five-digit US ZIP or a Canadian postal code).
- items.parquet: item_id, title String (GroupLens titles lose their trailing " (YYYY)" to
  match RecBole's), release_date Date (GroupLens' date; RecBole has only the year: 1 January
  of it; null when unknown), genres List(String).
- With `engineered=True` (`--engineered`), the tables coldrec's benchmarks used before roles
  were inferred from the data: users get age Float64, age_group String (MovieLens-1M
  groups), zip_prefix (the zip code's first character, upper-cased) instead of zip_code;
  items genres, release_year Float64, release_decade String ("1990s") and title.
- manifest.json.

Parsing is vectorised polars over the lines of each file; a malformed line is reported by
file and line number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from coldrec import log
from coldrec.errors import BadValues, DuplicateIds, EmptyInput, InputNotFound, MissingColumn, UsageError
from coldrec.io import Manifest, atomic_dir, input_fingerprints, output_lock, write_parquet_atomic
from coldrec.result import StageResult

GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# MovieLens-1M's age groups: (upper bound exclusive, label).
AGE_GROUPS = ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55"))
AGE_GROUP_OLDEST = "56+"

_TITLE_YEAR = r"\s*\((\d{4})(/[IVX]+)?\)\s*$"  # "Toy Story (1995)", "Hamlet (1996/I)"


@dataclass
class MovielensFiles:
    layout: str  # "recbole" | "grouplens"
    ratings: Path
    users: Path
    items: Path


@dataclass
class DatasetResult(StageResult):
    dataset: str
    layout: str
    out: str
    users: int
    items: int
    exposures: int
    clicks: int
    first_day: str
    last_day: str

    def summary(self) -> str:
        return (
            f"{self.dataset} ({self.layout} files): {self.users:,} users, {self.items:,} items, "
            f"{self.exposures:,} exposures, {self.clicks:,} clicks, {self.first_day} .. {self.last_day} -> {self.out}"
        )


# --------------------------------------------------------------------------- detection


def detect_movielens(path: str | Path) -> MovielensFiles:
    """Which layout `path` holds, and its three files; InputNotFound if neither or incomplete."""
    path = Path(path)
    if not path.exists():
        raise InputNotFound("no such directory", path=path, hint="check the path")
    if not path.is_dir():
        raise InputNotFound(
            "expected a directory",
            path=path,
            hint="pass the folder holding ml-100k.inter/.user/.item (RecBole) or u.data/u.user/u.item (GroupLens)",
        )
    inter = sorted(path.glob("*.inter"))
    if (path / "u.data").exists():
        files = MovielensFiles("grouplens", path / "u.data", path / "u.user", path / "u.item")
    elif len(inter) == 1:
        stem = inter[0].name[: -len(".inter")]
        files = MovielensFiles("recbole", inter[0], path / f"{stem}.user", path / f"{stem}.item")
    elif len(inter) > 1:
        raise UsageError(
            f"several .inter files ({', '.join(p.name for p in inter)})",
            path=path,
            hint="keep one dataset per folder",
        )
    else:
        raise InputNotFound(
            "no MovieLens files (neither u.data nor *.inter)",
            path=path,
            hint="pass the folder holding ml-100k.inter/.user/.item (RecBole) or u.data/u.user/u.item (GroupLens)",
        )
    for file in (files.users, files.items):
        if not file.exists():
            raise InputNotFound(
                f"missing {file.name} next to {files.ratings.name}",
                path=path,
                hint=f"copy {file.name} from the same MovieLens download",
            )
    return files


# --------------------------------------------------------------------------- parsing helpers


def _read_lines(path: Path, encoding: str) -> pl.Series:
    """The file's non-empty lines with their 1-based line numbers (Series 'line', int 'lineno')."""
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        raise BadValues(
            f"not {encoding} text (byte {error.start})", path=path, hint="use the file from the original download"
        ) from None
    except OSError as error:
        raise InputNotFound(f"cannot read ({error.strerror})", path=path, hint="check the file") from None
    return pl.Series("line", text.splitlines(), dtype=pl.String)


def _split_fields(lines: pl.Series, separator: str, names: list[str], path: Path, first_lineno: int) -> pl.DataFrame:
    """Split each line on `separator` into `names` (all String); reject a wrong field count."""
    frame = pl.DataFrame({"line": lines}).with_row_index("lineno", offset=first_lineno)
    frame = frame.filter(pl.col("line").str.strip_chars().str.len_chars() > 0)
    if frame.height == 0:
        raise EmptyInput("file has no data lines", path=path, hint="use the file from the original download")
    frame = frame.with_columns(pl.col("line").str.strip_chars_end("\r").str.split(separator).alias("fields"))
    bad = frame.filter(pl.col("fields").list.len() != len(names))
    if bad.height:
        first = bad.row(0, named=True)
        raise BadValues(
            f"line {first['lineno']}: expected {len(names)} fields separated by {separator!r}, "
            f"found {len(first['fields'])} ({bad.height} malformed line(s))",
            path=path,
            hint="use the file from the original download, or fix that line",
        )
    return frame.select(
        "lineno", *[pl.col("fields").list.get(i).str.strip_chars().alias(name) for i, name in enumerate(names)]
    )


def _parse_numbers(frame: pl.DataFrame, columns: dict[str, pl.DataType], path: Path, *, nullable: tuple[str, ...] = ()) -> pl.DataFrame:
    """Cast String columns to numbers; an unparsable (or empty, unless nullable) value is an error."""
    casts = []
    for name, dtype in columns.items():
        text = pl.col(name)
        value = pl.when(text == "").then(None).otherwise(text)
        if dtype.is_integer():
            # RecBole writes numbers as floats ("881250949.0" is possible): parse as float first.
            parsed = value.cast(pl.Float64, strict=False)
            parsed = pl.when(parsed == parsed.round(0)).then(parsed).otherwise(None).cast(dtype, strict=False)
        else:
            parsed = value.cast(dtype, strict=False)
        casts.append(parsed.alias(f"__{name}"))
    parsed_frame = frame.with_columns(casts)
    for name in columns:
        allowed_empty = name in nullable
        failed = pl.col(f"__{name}").is_null() & ~((pl.col(name) == "") & allowed_empty)
        bad = parsed_frame.filter(failed)
        if bad.height:
            first = bad.row(0, named=True)
            raise BadValues(
                f"line {first['lineno']}: cannot read {name} {first[name]!r} as a number "
                f"({bad.height} bad line(s))",
                path=path,
                column=name,
                hint="use the file from the original download, or fix that line",
            )
    return parsed_frame.drop(list(columns)).rename({f"__{name}": name for name in columns})


def _recbole_table(path: Path, wanted: dict[str, str]) -> pl.DataFrame:
    """A RecBole atomic file: typed header `name:type`; returns the wanted columns as String.

    wanted maps RecBole field name -> output name.
    """
    lines = _read_lines(path, "utf-8")
    if lines.len() == 0:
        raise EmptyInput("file is empty", path=path, hint="use the file from the original download")
    header = [field.split(":", 1)[0].strip() for field in lines[0].rstrip("\r").split("\t")]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise MissingColumn(
            "missing field(s) " + ", ".join(f"'{name}'" for name in missing) + f" in the header (found {', '.join(header)})",
            path=path,
            hint="use the RecBole atomic files of MovieLens (typed header like user_id:token)",
        )
    frame = _split_fields(lines.slice(1), "\t", header, path, first_lineno=2)
    return frame.select("lineno", *[pl.col(name).alias(out) for name, out in wanted.items()])


# --------------------------------------------------------------------------- tables


def _ratings(files: MovielensFiles) -> pl.DataFrame:
    """user_id, item_id, rating Float64, ts Datetime('us')."""
    if files.layout == "recbole":
        raw = _recbole_table(
            files.ratings, {"user_id": "user_id", "item_id": "item_id", "rating": "rating", "timestamp": "ts"}
        )
    else:
        raw = _split_fields(_read_lines(files.ratings, "latin-1"), "\t", ["user_id", "item_id", "rating", "ts"], files.ratings, 1)
    parsed = _parse_numbers(
        raw, {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64, "ts": pl.Int64}, files.ratings
    )
    return parsed.select(
        "lineno",
        "user_id",
        "item_id",
        "rating",
        pl.from_epoch("ts", time_unit="s").cast(pl.Datetime("us")).alias("ts"),
    )


def age_group(age: pl.Expr) -> pl.Expr:
    """MovieLens-1M's age groups (<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+); null stays null."""
    expr = pl.when(age.is_null()).then(pl.lit(None, pl.String))
    for upper, label in AGE_GROUPS:
        expr = expr.when(age < upper).then(pl.lit(label))
    return expr.otherwise(pl.lit(AGE_GROUP_OLDEST))


def _users(files: MovielensFiles, engineered: bool) -> pl.DataFrame:
    columns = ["user_id", "age", "gender", "occupation", "zip"]
    if files.layout == "recbole":
        raw = _recbole_table(
            files.users,
            {"user_id": "user_id", "age": "age", "gender": "gender", "occupation": "occupation", "zip_code": "zip"},
        )
    else:
        raw = _split_fields(_read_lines(files.users, "latin-1"), "|", columns, files.users, 1)
    parsed = _parse_numbers(raw, {"user_id": pl.Int64, "age": pl.Float64}, files.users, nullable=("age",))
    text = [pl.when(pl.col(name) == "").then(None).otherwise(pl.col(name)).alias(name) for name in ("gender", "occupation", "zip")]
    parsed = parsed.with_columns(text)
    if not engineered:
        return parsed.select("lineno", "user_id", pl.col("age").cast(pl.Int64), "gender", "occupation", pl.col("zip").alias("zip_code"))
    return parsed.select(
        "lineno",
        "user_id",
        "age",
        age_group(pl.col("age")).alias("age_group"),
        "gender",
        "occupation",
        pl.col("zip").str.slice(0, 1).str.to_uppercase().alias("zip_prefix"),
    )


def _items(files: MovielensFiles, engineered: bool) -> pl.DataFrame:
    if files.layout == "recbole":
        raw = _recbole_table(
            files.items, {"item_id": "item_id", "movie_title": "title", "release_year": "year_text", "class": "genres"}
        )
        parsed = _parse_numbers(raw, {"item_id": pl.Int64}, files.items).with_columns(pl.lit(None, pl.String).alias("release_date"))
        genres = pl.col("genres").str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
    else:
        names = ["item_id", "title", "release_date", "video_release_date", "url", *[f"g{i}" for i in range(len(GROUPLENS_GENRES))]]
        raw = _split_fields(_read_lines(files.items, "latin-1"), "|", names, files.items, 1)
        flags = {f"g{i}": pl.Int8 for i in range(len(GROUPLENS_GENRES))}
        raw = raw.with_columns(pl.col("release_date").str.slice(-4).alias("year_text"))
        parsed = _parse_numbers(raw, {"item_id": pl.Int64, **flags}, files.items)
        genres = pl.concat_list(
            [pl.when(pl.col(f"g{i}") == 1).then(pl.lit(name)) for i, name in enumerate(GROUPLENS_GENRES)]
        ).list.drop_nulls()
    # The year field when it is a year ("unknown" and RecBole's "V" are not), else the
    # "(YYYY)" ending the title, else null.
    release_year = pl.coalesce(
        pl.col("year_text").str.extract(r"^(\d{4})$"),
        pl.col("title").str.extract(_TITLE_YEAR, 1),
    ).cast(pl.Float64)
    title = pl.col("title").str.replace(_TITLE_YEAR, "").alias("title")
    if not engineered:
        day = pl.col("release_date").str.strptime(pl.Date, "%d-%b-%Y", strict=False)
        january = pl.date(release_year.cast(pl.Int32), 1, 1)
        return parsed.select("lineno", "item_id", title, pl.coalesce(day, january).alias("release_date"), genres.cast(pl.List(pl.String)).alias("genres"))
    return parsed.select(
        "lineno",
        "item_id",
        genres.cast(pl.List(pl.String)).alias("genres"),
        release_year.alias("release_year"),
        ((release_year // 10 * 10).cast(pl.Int64).cast(pl.String) + "s").alias("release_decade"),
        title,
    )


def _check_unique(frame: pl.DataFrame, column: str, path: Path) -> None:
    duplicated = frame.filter(pl.col(column).is_duplicated())
    if duplicated.height:
        first = duplicated.row(0, named=True)
        raise DuplicateIds(
            f"line {first['lineno']}: {column} {first[column]} appears more than once "
            f"({duplicated[column].n_unique()} duplicated id(s))",
            path=path,
            column=column,
            hint="keep one line per id",
        )


def convert_movielens(files: MovielensFiles, click_threshold: float = 4.0, engineered: bool = False) -> dict[str, pl.DataFrame]:
    """The four output tables of `run_movielens`, in memory."""
    ratings = _ratings(files)
    users = _users(files, engineered)
    items = _items(files, engineered)
    _check_unique(users, "user_id", files.users)
    _check_unique(items, "item_id", files.items)
    unknown_users = ratings.join(users, on="user_id", how="anti")
    unknown_items = ratings.join(items, on="item_id", how="anti")
    for unknown, kind, file in ((unknown_users, "user_id", files.users), (unknown_items, "item_id", files.items)):
        if unknown.height:
            log.warning(
                f"{files.ratings}: {unknown[kind].n_unique()} {kind}(s) rated but missing from {file.name} "
                f"(e.g. line {unknown['lineno'][0]}); they will be cold in content"
            )
    exposures = ratings.sort("ts", "user_id", "item_id").select("user_id", "item_id", "ts")
    clicks = (
        ratings.filter(pl.col("rating") >= click_threshold)
        .sort("ts", "user_id", "item_id")
        .select("user_id", "item_id", "ts", pl.lit(1.0, pl.Float32).alias("weight"))
    )
    return {
        "exposures": exposures,
        "clicks": clicks,
        "users": users.drop("lineno").sort("user_id"),
        "items": items.drop("lineno").sort("item_id"),
    }


def run_movielens(path: str | Path, out: str | Path, *, click_threshold: float = 4.0, engineered: bool = False) -> DatasetResult:
    """Convert a MovieLens-100K folder (RecBole or GroupLens layout) into `out` (atomically):
    the columns as distributed, or with `engineered` the derived ones (see the module doc)."""
    started = time.monotonic()
    if not (click_threshold == click_threshold) or click_threshold < 0:  # NaN or negative
        raise UsageError(f"--click-threshold must be a rating >= 0, got {click_threshold}", hint="e.g. --click-threshold 4")
    files = detect_movielens(path)
    tables = convert_movielens(files, click_threshold, engineered)
    exposures = tables["exposures"]
    if tables["clicks"].height == 0:
        log.warning(f"no rating reaches --click-threshold {click_threshold}: clicks/ is empty")
    out = Path(out)
    with output_lock(out, "coldrec datasets movielens"), atomic_dir(out) as temp:
        write_parquet_atomic(exposures, temp / "exposures" / "part-0.parquet")
        write_parquet_atomic(tables["clicks"], temp / "clicks" / "part-0.parquet")
        write_parquet_atomic(tables["users"], temp / "users.parquet")
        write_parquet_atomic(tables["items"], temp / "items.parquet")
        Manifest(
            command="coldrec datasets movielens",
            parameters={"path": str(path), "layout": files.layout, "click_threshold": click_threshold, "engineered": engineered},
            inputs=input_fingerprints(ratings=files.ratings, users=files.users, items=files.items),
            row_counts={name: frame.height for name, frame in tables.items()},
            wall_time_s=round(time.monotonic() - started, 3),
        ).write(temp)
    first, last = exposures["ts"].min(), exposures["ts"].max()
    return DatasetResult(
        dataset="movielens",
        layout=files.layout,
        out=str(out),
        users=tables["users"].height,
        items=tables["items"].height,
        exposures=exposures.height,
        clicks=tables["clicks"].height,
        first_day=first.date().isoformat(),  # type: ignore[union-attr]
        last_day=last.date().isoformat(),  # type: ignore[union-attr]
    )
