"""Crash safety: kill -9 every stage at random moments and check nothing is ever damaged.

    .venv/bin/python bench/crash.py [--trials 3] [--seed 0] [--keep DIR]

For each stage (prepare, stats, train, embed, index, recall, and the whole pipeline) it
1. runs the command once uninterrupted over an existing output (the reference: how long it
   takes, what a finished output looks like);
2. --trials times: restores the previous output, starts the command as a subprocess, sends
   SIGKILL after a seeded random delay in [0, 1.2 x the reference time], and checks that
   - the output under its final name is either the previous one, byte for byte, or a
     complete new one (the same file names as the reference, readable) — never partial;
   - nothing else appeared beside it except hidden temporaries (`.NAME.tmp-*`) and locks;
   - rerunning the same command exits 0 and leaves a complete output.
3. train --resume: kills a 3-epoch training at a random moment, resumes it with --resume
   and checks the final weights equal an uninterrupted run's exactly.
Prints one line per trial and a summary; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = """
[inputs]
exposures = "data/exposures"
clicks = "data/clicks"
users = "data/users.parquet"
items = "data/items.parquet"
[output]
root = "root"
[train]
threads = 1
[train.model]
dim = 16
hidden = [32]
[train.training]
epochs = 2
batch_size = 256
[index]
trees = 10
[recall]
k = 20
"""


def snapshot(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `path` (or of the file itself)."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    state = {}
    for entry in sorted(path.rglob("*")):
        if entry.is_file() and not entry.name.endswith(".lock"):
            state[str(entry.relative_to(path))] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return state


def visible(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith(".")}


def restore(source: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    for leftover in target.parent.glob(f".{target.name}.*"):  # temporaries of the last kill
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif not leftover.name.endswith(".lock"):
            leftover.unlink()
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)


def complete(path: Path, reference: Path) -> bool:
    """A finished output: the reference's file names, and every Parquet file readable."""
    import polars as pl

    if path.is_file() != reference.is_file() or not path.exists():
        return False
    names = set(snapshot(path)) if path.is_dir() else {path.name}
    wanted = set(snapshot(reference)) if reference.is_dir() else {path.name}
    if names != wanted:
        return False
    try:
        for parquet in [path] if path.is_file() else path.rglob("*.parquet"):
            pl.read_parquet(parquet)
    except Exception:  # noqa: BLE001 - unreadable means partial
        return False
    return True


def code_stamp() -> float:
    """The newest modification time of the package's sources."""
    return max(path.stat().st_mtime for path in (ROOT / "coldrec").rglob("*.py"))


def coldrec(*args: object) -> list[str]:
    return [sys.executable, "-m", "coldrec", *map(str, args)]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=ENV)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def build_world(work: Path) -> Path:
    from coldrec.pipeline import run_pipeline
    from coldrec.synth import SynthConfig, run_synth

    run_synth(SynthConfig(users=600, items=300, days=8, exposures_per_day=3000, seed=7), work / "data")
    (work / "coldrec.toml").write_text(CONFIG)
    run_pipeline(work / "coldrec.toml", echo=lambda line: None)
    return (work / "root" / "current").resolve()


def stage_commands(work: Path, base: Path) -> dict[str, tuple[list[str], Path]]:
    """stage -> (command, output path); each writes over a copy of the base run's output."""
    data, out = work / "data", work / "crash"
    out.mkdir(exist_ok=True)
    return {
        "prepare": (coldrec("prepare", "--exposures", data / "exposures", "--clicks", data / "clicks", "--out", out / "prepare", "--seed", 1), out / "prepare"),
        "stats": (coldrec("stats", "--samples", base / "prepare", "--users", data / "users.parquet", "--items", data / "items.parquet", "--out", out / "stats", "--windows", "1,3"), out / "stats"),
        "train": (
            coldrec("train", "--samples", base / "prepare", "--stats", base / "stats", "--users", data / "users.parquet", "--items", data / "items.parquet",
                    "--out", out / "train", "--epochs", 2, "--dim", 16, "--batch-size", 256, "--seed", 1, "--threads", 1),
            out / "train",
        ),
        "embed": (coldrec("embed", "--model", base / "train", "--items", data / "items.parquet", "--stats", base / "stats", "--out", out / "embed.parquet", "--threads", 1), out / "embed.parquet"),
        "index": (coldrec("index", "--embeddings", base / "embed" / "items.parquet", "--out", out / "index", "--trees", 30), out / "index"),
        "recall": (coldrec("recall", "--index", base / "index", "--queries", base / "embed" / "users.parquet", "--out", out / "recs.parquet", "--k", 50, "--annoy", "--threads", 1), out / "recs.parquet"),
    }


def previous_output(stage: str, base: Path) -> Path:
    return {
        "prepare": base / "prepare",
        "stats": base / "stats",
        "train": base / "train",
        "embed": base / "embed" / "items.parquet",
        "index": base / "index",
        "recall": base / "recall" / "recs.parquet",
    }[stage]


def kill_trial(command: list[str], output: Path, previous: Path, reference: Path, delay: float, cwd: Path) -> tuple[bool, str]:
    restore(previous, output)
    before = snapshot(output)
    neighbours = visible(output.parent)
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        process.send_signal(signal.SIGKILL)
    process.wait()
    state = "killed" if killed else "finished first"
    after = snapshot(output)
    if after == before:
        kept = "previous output intact"
    elif complete(output, reference):
        kept = "new output complete"
    else:
        return False, f"{state}: PARTIAL output under {output.name}"
    if visible(output.parent) != neighbours:
        return False, f"{state}: stray files {sorted(visible(output.parent) - neighbours)}"
    rerun = run(command, cwd)
    if rerun.returncode != 0 or not complete(output, reference):
        return False, f"{state}: rerun failed ({rerun.returncode}): {rerun.stderr.strip()[-200:]}"
    return True, f"{state}; {kept}; rerun ok"


def pipeline_trial(work: Path, delay: float) -> tuple[bool, str]:
    """Kill a whole pipeline run (forced from prepare): current must stay whole; rerun works."""
    root = work / "root"
    current_before = os.readlink(root / "current")
    target_before = snapshot((root / "current").resolve())
    process = subprocess.Popen(coldrec("pipeline", "--config", work / "coldrec.toml", "--from", "prepare"), cwd=work,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        process.send_signal(signal.SIGKILL)
    process.wait()
    current = os.readlink(root / "current")
    if current == current_before:
        if snapshot((root / "current").resolve()) != target_before:
            return False, "current's run changed"
        kept = "current unchanged"
    else:
        run_dir = (root / "current").resolve()
        if not all((run_dir / stage / "manifest.json").exists() for stage in ("prepare", "stats", "train", "embed", "index", "recall")):
            return False, "current points at an incomplete run"
        kept = "current moved to a complete run"
    rerun = run(coldrec("pipeline", "--config", work / "coldrec.toml"), work)
    if rerun.returncode != 0:
        return False, f"rerun failed: {rerun.stderr.strip()[-200:]}"
    return True, f"{'killed' if killed else 'finished first'}; {kept}; rerun ok"


def resume_trial(work: Path, base: Path, delay: float, reference_weights: dict) -> tuple[bool, str]:
    import torch
    from safetensors.torch import load_file

    data, out = work / "data", work / "resume" / "model"
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir()
    command = coldrec("train", "--samples", base / "prepare", "--stats", base / "stats", "--users", data / "users.parquet",
                      "--items", data / "items.parquet", "--out", out, "--epochs", 3, "--dim", 16, "--batch-size", 256,
                      "--seed", 3, "--threads", 1)
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = run(command + ["--resume"], work)
    if resumed.returncode != 0:
        return False, f"resume failed: {resumed.stderr.strip()[-200:]}"
    weights = load_file(str(out / "weights.safetensors"))
    same = weights.keys() == reference_weights.keys() and all(torch.equal(weights[k], reference_weights[k]) for k in weights)
    return same, f"{'killed' if killed else 'finished first'}; resumed weights {'equal' if same else 'DIFFER from'} the uninterrupted run"


def main() -> None:
    parser = argparse.ArgumentParser(description="kill -9 each stage at random moments")
    parser.add_argument("--trials", type=int, default=3, help="kills per stage (7 stages + train --resume)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    parser.add_argument("--parts", default="stages,pipeline,resume", help="comma-separated subset of stages,pipeline,resume")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="coldrec-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"building the world and a first pipeline run in {work} ...", flush=True)
    base = build_world(work)
    commands = stage_commands(work, base)
    failures = trials = 0
    references = work / "reference"
    references.mkdir(exist_ok=True)
    parts = set(args.parts.split(","))
    for stage, (command, output) in commands.items():
        if "stages" not in parts:
            break
        restore(previous_output(stage, base), output)
        t0 = time.perf_counter()
        result = run(command, work)
        duration = time.perf_counter() - t0
        if result.returncode != 0:
            print(f"{stage}: reference run failed: {result.stderr.strip()[-300:]}")
            sys.exit(1)
        reference = references / output.name
        restore(output, reference)
        for trial in range(args.trials):
            delay = rng.uniform(0.0, 1.2 * duration)
            ok, message = kill_trial(command, output, previous_output(stage, base), reference, delay, work)
            trials += 1
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {stage:8s} trial {trial + 1}: kill at {delay:5.2f}s of {duration:5.2f}s: {message}", flush=True)
    t0 = time.perf_counter()
    rerun = run(coldrec("pipeline", "--config", work / "coldrec.toml", "--from", "prepare"), work)
    duration = time.perf_counter() - t0
    assert rerun.returncode == 0, rerun.stderr
    for trial in range(args.trials if "pipeline" in parts else 0):
        delay = rng.uniform(0.0, 1.2 * duration)
        ok, message = pipeline_trial(work, delay)
        trials += 1
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} pipeline trial {trial + 1}: kill at {delay:5.2f}s of {duration:5.2f}s: {message}", flush=True)
    from safetensors.torch import load_file

    def reference_run() -> tuple[dict, float, float]:
        stamp = code_stamp()
        t0 = time.perf_counter()
        full = run(coldrec("train", "--samples", base / "prepare", "--stats", base / "stats", "--users", work / "data" / "users.parquet",
                           "--items", work / "data" / "items.parquet", "--out", work / "resume-reference", "--epochs", 3, "--dim", 16,
                           "--batch-size", 256, "--seed", 3, "--threads", 1), work)
        assert full.returncode == 0, full.stderr
        return load_file(str(work / "resume-reference" / "weights.safetensors")), time.perf_counter() - t0, stamp

    if "resume" in parts:
        reference_weights, duration, stamp = reference_run()
    for trial in range(args.trials if "resume" in parts else 0):
        if code_stamp() != stamp:  # someone edited coldrec meanwhile: compare like with like
            reference_weights, duration, stamp = reference_run()
        delay = rng.uniform(0.3 * duration, 1.0 * duration)  # after the first checkpoints, mostly
        ok, message = resume_trial(work, base, delay, reference_weights)
        trials += 1
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} train --resume trial {trial + 1}: kill at {delay:5.2f}s of {duration:5.2f}s: {message}", flush=True)
    print(f"{trials} trials, {failures} failure(s), {time.perf_counter() - started:.0f}s")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
