"""Shared fixtures: a small synthetic world generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must not fight over the two cores with torch's own thread pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """A small synthetic world (about 600 users, 300 items, 10 days)."""
    from coldrec.synth import SynthConfig, run_synth

    out = tmp_path_factory.mktemp("world") / "synth"
    run_synth(SynthConfig(users=600, items=300, days=10, exposures_per_day=3000, seed=3), out)
    return out


@pytest.fixture(scope="session")
def tiny_labelled(tmp_path_factory) -> Path:
    """A tiny synthetic world (`synth/`) and its exposures labelled every third row, split at
    the last day into `train.parquet` and `valid.parquet` (training tests that need no prepare)."""
    import polars as pl

    from coldrec.synth import SynthConfig, run_synth

    root = tmp_path_factory.mktemp("tiny_labelled")
    run_synth(SynthConfig(users=60, items=30, days=4, exposures_per_day=300, seed=5), root / "synth")
    exposures = pl.scan_parquet(str(root / "synth/exposures/**/*.parquet")).select("user_id", "item_id", "ts").collect()
    samples = exposures.with_columns(
        (pl.int_range(pl.len()) % 3 == 0).cast(pl.Int8).alias("label"), pl.lit(1.0, dtype=pl.Float32).alias("weight")
    ).sort("ts")
    cut = samples["ts"].max().date()
    samples.filter(pl.col("ts").dt.date() < cut).write_parquet(root / "train.parquet")
    samples.filter(pl.col("ts").dt.date() >= cut).write_parquet(root / "valid.parquet")
    return root


@pytest.fixture
def run_cli(capsys):
    """Run `coldrec ARGS` in-process; returns (exit code, stdout, stderr)."""
    from coldrec import log
    from coldrec.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            log.configure()
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
