"""Reading Parquet inputs, atomic outputs, manifests and output locks.

Every stage reads with `scan_parquet` and writes through `atomic_file` / `atomic_dir`, so a
failed or killed run never leaves a partial file under its final name and never damages the
previous output. `output_lock` keeps two overlapping cron runs from interleaving.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from coldrec import __version__
from coldrec.errors import EmptyInput, InputNotFound, NotParquet, OutputLocked, UsageError

PARQUET_MAGIC = b"PAR1"
MANIFEST_NAME = "manifest.json"


# --------------------------------------------------------------------------- reading


PartitionFilter = Callable[[dict[str, str]], bool]


def hive_partition_values(file: Path, root: Path) -> dict[str, str]:
    """The `key=value` folder names between `root` and `file` (hive partitioning)."""
    return dict(part.split("=", 1) for part in file.relative_to(root).parts[:-1] if "=" in part)


def parquet_files(path: str | Path, partitions: PartitionFilter | None = None) -> list[Path]:
    """The Parquet files behind `path` (a file, or a directory searched recursively).

    `partitions`, given a file's hive values ({"day": "2026-01-03"}), says whether to keep
    it; files it rejects are never opened, so a date range reads only its own partitions.
    Raises InputNotFound, EmptyInput or NotParquet with the offending path.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound("no such file or directory", path=path, hint="check the path")
    if not os.access(path, os.R_OK):
        raise InputNotFound("permission denied", path=path, hint="make it readable (chmod +r)")
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*.parquet") if p.is_file() and not _is_hidden(p.relative_to(path))
        )
        if not files:
            raise EmptyInput(
                "directory holds no .parquet files",
                path=path,
                hint="point at a Parquet file or a directory of them (hive partitions welcome)",
            )
        if partitions is not None:
            files = [f for f in files if partitions(hive_partition_values(f, path))]
            if not files:
                raise EmptyInput(
                    "no partition folder lies in the requested range",
                    path=path,
                    hint="check --start/--end against the day=YYYY-MM-DD folders",
                )
    else:
        files = [path]
    for file in files:
        _check_parquet_file(file)
    return files


def _is_hidden(relative: Path) -> bool:
    # Temporary outputs of a run in progress start with '.'; never read them as data.
    return any(part.startswith((".", "_")) for part in relative.parts)


def _check_parquet_file(file: Path) -> None:
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            head = handle.read(4)
            if size >= 12:
                handle.seek(-4, os.SEEK_END)
            tail = handle.read(4)
    except PermissionError:
        raise InputNotFound("permission denied", path=file, hint="make it readable (chmod +r)") from None
    except OSError as error:
        raise InputNotFound(f"cannot read ({error.strerror})", path=file, hint="check the file") from None
    if size == 0:
        raise NotParquet("file is empty (0 bytes)", path=file, hint="regenerate the file or remove it")
    if head != PARQUET_MAGIC:
        raise NotParquet(
            "not a Parquet file (wrong magic bytes; CSV or JSON named .parquet?)",
            path=file,
            hint="convert it to Parquet, e.g. polars.read_csv(...).write_parquet(...)",
        )
    if size < 12 or tail != PARQUET_MAGIC:
        raise NotParquet(
            "truncated Parquet file (no footer)",
            path=file,
            hint="the writer was interrupted; regenerate the file",
        )


def scan_parquet(path: str | Path, partitions: PartitionFilter | None = None) -> pl.LazyFrame:
    """A lazy scan of a Parquet file or directory (hive partitions become columns).

    `partitions` skips hive partitions without opening them (see `parquet_files`).
    """
    path = Path(path)
    files = parquet_files(path, partitions)
    try:
        if path.is_dir():
            frame = pl.scan_parquet(
                [str(f) for f in files], hive_partitioning=True, hive_schema=None
            )
        else:
            frame = pl.scan_parquet(str(path))
        frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise NotParquet(
            f"cannot read Parquet ({_first_line(error)})", path=path, hint="regenerate the file"
        ) from None
    return frame


def read_parquet(path: str | Path) -> pl.DataFrame:
    """Eagerly read a Parquet file or directory, with the same checks as `scan_parquet`."""
    frame = scan_parquet(path)
    try:
        return frame.collect()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise NotParquet(
            f"cannot read Parquet ({_first_line(error)})", path=path, hint="regenerate the file"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --------------------------------------------------------------------------- atomic writes


def _temp_sibling(final: Path, kind: str) -> Path:
    # Same directory as the final name, so the rename never crosses a filesystem.
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{time.time_ns()}"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it over `final`.

    If the body raises, the temporary file is removed and `final` is untouched.
    """
    final = Path(final)
    check_output_file(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(final, "tmp")
    try:
        yield temp
        if temp.exists():
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temp, final)
        _fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def write_parquet_atomic(frame: pl.DataFrame, final: str | Path) -> Path:
    """Write a DataFrame to `final` atomically."""
    final = Path(final)
    with atomic_file(final) as temp:
        frame.write_parquet(temp)
    return final


def sink_parquet_atomic(frame: pl.LazyFrame, final: str | Path) -> Path:
    """Stream a LazyFrame to `final` atomically (the streaming engine, bounded memory)."""
    final = Path(final)
    with atomic_file(final) as temp:
        frame.sink_parquet(temp)
    return final


def write_json_atomic(data: Any, final: str | Path) -> Path:
    final = Path(final)
    with atomic_file(final) as temp:
        temp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return final


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def check_output_dir(final: str | Path, *, replace_foreign: bool = False) -> None:
    """Refuse an --out directory whose replacement would destroy something not ours.

    A directory output replaces the previous one wholesale, so it must be a coldrec output
    (it has a manifest.json), empty, or absent; never the working directory or one above it.
    """
    final = Path(final)
    resolved = final.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(
            "refusing to replace the current directory or one above it",
            path=final,
            hint="pass a new or existing coldrec output directory as --out",
        )
    if not final.exists():
        return
    if not final.is_dir():
        raise UsageError("output exists and is not a directory", path=final, hint="choose another --out")
    if replace_foreign or (final / MANIFEST_NAME).exists() or not any(final.iterdir()):
        return
    raise UsageError(
        "output directory exists, is not empty and is not a coldrec output (no manifest.json); "
        "refusing to replace it",
        path=final,
        hint="choose a new --out directory, or remove this one yourself",
    )


def check_output_file(final: str | Path) -> None:
    """Refuse a file output whose final name is an existing directory (before doing work)."""
    final = Path(final)
    if final.is_dir():
        raise UsageError("output is an existing directory, expected a file name", path=final,
                         hint="pass a file path such as out/recs.parquet")


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, replace_foreign: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success swap it into place.

    An existing `final` is exchanged atomically (renameat2 on Linux), so a reader sees the
    old directory or the new one, never a mixture, and is then removed. If the body raises,
    the temporary directory is removed and `final` is untouched. An existing directory that
    is not a coldrec output is refused (see `check_output_dir`) unless `replace_foreign`.
    """
    final = Path(final)
    check_output_dir(final, replace_foreign=replace_foreign)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(final, "tmp")
    temp.mkdir()
    try:
        yield temp
        if final.exists():
            if _exchange(temp, final):
                shutil.rmtree(temp, ignore_errors=True)  # temp now holds the old output
            else:
                old = _temp_sibling(final, "old")
                os.rename(final, old)
                os.rename(temp, final)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, final)
        _fsync_dir(final.parent)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


# --------------------------------------------------------------------------- fingerprints


def fingerprint(path: str | Path) -> str:
    """A cheap identity of a file or directory: sha256 over (relative path, size, mtime).

    Changes when any file is added, removed, resized or rewritten; reads no file contents.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        entries = sorted(p for p in path.rglob("*") if p.is_file())
        for entry in entries:
            stat = entry.stat()
            digest.update(f"{entry.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    elif path.exists():
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def content_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (for small files such as weights and ids)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- manifests


@dataclass
class Manifest:
    """What produced an output directory; written as `manifest.json` in every output."""

    command: str
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # name -> fingerprint
    row_counts: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    coldrec_version: str = __version__
    created_at: str = ""
    wall_time_s: float = 0.0

    def write(self, directory: str | Path) -> Path:
        if not self.created_at:
            self.created_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return write_json_atomic(asdict(self), Path(directory) / MANIFEST_NAME)


def input_fingerprints(**paths: str | Path | None) -> dict[str, str]:
    return {name: fingerprint(p) for name, p in paths.items() if p is not None}


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        raise InputNotFound(
            "no manifest.json: not a coldrec output directory",
            path=directory,
            hint="point at a directory written by coldrec",
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise NotParquet(f"corrupt manifest ({error.msg})", path=path, hint="rerun the stage") from None


# --------------------------------------------------------------------------- locks


def _lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def output_lock(output: str | Path, command: str = "coldrec") -> Iterator[None]:
    """Hold an exclusive lock on `output` for the duration of the block.

    The lock is an flock on a hidden file beside the output, so the kernel releases it when
    the process dies (kill -9 included). A second holder gets OutputLocked (exit 75) naming
    the first.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    lock_file = _lock_path(output)
    handle = open(lock_file, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputLocked(
                f"output is locked by {holder}",
                path=output,
                hint="wait for that run to finish, or remove the lock only if that process is gone",
            ) from None
        handle.seek(0)
        handle.truncate()
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({command}, since {started})")
        handle.flush()
        yield
    finally:
        handle.close()


def ensure_parent(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def is_stdout(path: str | Path | None) -> bool:
    return str(path) == "-"


def temp_dir(prefix: str = "coldrec-") -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)
