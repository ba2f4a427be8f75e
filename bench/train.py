"""Training throughput vs. the compute roofline of the same towers, and peak memory.

    .venv/bin/python bench/train.py [--samples 10000000] [--rounds 20] [--block 10] [--threads 1] [--compare-plain]

1. Builds a synthetic world (coldrec.synth), fits and encodes it with the real code, then
   tiles the encoded per-sample index tensors to --samples rows (the memory of a 10M-sample
   encoded dataset is real; only the ids repeat).
2. "training": the training step exactly as `run_train` does it at default settings
   (index_select gathers, both towers with input dropout, RetrievalLoss with the default
   [loss] section, backward, gradient clipping, fused AdamW).
3. "roofline": the dense compute of the same towers on random tensors: each tower's MLP
   and linear content (and profile) skips, fed random (batch, content) and (batch, preference) inputs that
   need gradients (as the looked-up embeddings do), a dot-product loss, backward, AdamW.
   What training adds on top is data handling, feature lookups and the losses.
   "mlp-only" is the stricter, older yardstick: the MLPs alone, inputs frozen.
4. The three are timed in interleaved blocks of --block steps (--rounds times), so the noise
   of a shared machine hits all of them alike; rates use the total time of each.
Prints samples/s of each (and the training's positives/s: a fifth of the tiled samples are
clicks, the batch composition of the default training.negative_rate 4), the ratios (target
>= 0.70), a per-phase breakdown of the training step (ms) and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coldrec.config import TrainConfig  # noqa: E402
from coldrec.features import EncodedSamples, encode_dataset, fit_spec  # noqa: E402
from coldrec.losses import RetrievalLoss  # noqa: E402
from coldrec.model import build_model  # noqa: E402
from coldrec.synth import SynthConfig, run_synth  # noqa: E402
from coldrec.profiles import fill_click_profiles, leave_one_out  # noqa: E402
from coldrec.batches import EpochSampler  # noqa: E402
from coldrec.train import Dist, TrainStep, clip_gradients, make_optimizer, set_threads  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(samples: int, config: TrainConfig, workdir: Path):
    run_synth(SynthConfig(users=20000, items=5000, days=5, exposures_per_day=20000, seed=0), workdir / "synth")
    exposures = pl.scan_parquet(str(workdir / "synth/exposures/**/*.parquet")).select("user_id", "item_id", "ts").collect()
    exposures = exposures.with_columns((pl.int_range(pl.len()) % 5 == 0).cast(pl.Int8).alias("label"))
    users = pl.read_parquet(workdir / "synth/users.parquet")
    items = pl.read_parquet(workdir / "synth/items.parquet")
    spec = fit_spec(exposures, users, items, config.features)
    data = encode_dataset(spec, {"train": exposures}, users, items)
    base = data.splits["train"]
    repeats = -(-samples // len(base))
    # Tile to the requested size: per-sample tensors are what grows with the data.
    tiled = EncodedSamples(*(getattr(base, f).repeat(repeats)[:samples].contiguous() for f in base.__dataclass_fields__))
    data.splits["train"] = tiled
    return spec, data


class Training:
    """The training step of run_train (single process), one batch per call."""

    PHASES = ("gather", "forward+loss", "backward", "clip", "optimizer")

    def __init__(self, spec, data, config: TrainConfig, plain: bool = False) -> None:
        torch.manual_seed(0)
        self.config = config
        self.plain = plain  # the step before the fused optimiser: for-loop AdamW and clipping
        self.model = build_model(spec, config.model)
        self.profiles = fill_click_profiles(self.model, data, spec)  # empty unless model.*_profile
        self.step_module = TrainStep(self.model, RetrievalLoss(config.loss), "twotower", Dist())
        self.parameters = [p for p in self.step_module.parameters() if p.requires_grad]
        if plain:
            self.optimizer = torch.optim.AdamW(self.parameters, lr=config.training.lr, weight_decay=config.training.weight_decay, foreach=False)
        else:
            self.optimizer = make_optimizer(self.parameters, config.training.lr, config.training.weight_decay)
        self.data = data
        self.samples = data.splits["train"]
        self.log_q = EpochSampler(self.samples.label, 1e12).item_log_q(self.samples.item_row, len(data.items))  # every row, as tiled
        self.generator = torch.Generator().manual_seed(0)
        self.permutation = torch.randperm(len(self.samples), generator=self.generator)
        self.batch = config.training.batch_size
        self.position = 0
        self.phase_seconds = dict.fromkeys(self.PHASES, 0.0)
        self.timed_steps = 0

    def __call__(self, timed: bool = False) -> None:
        clock = [time.perf_counter()]
        if self.position + self.batch > len(self.samples):
            self.position = 0
        rows = self.permutation[self.position : self.position + self.batch]  # (batch,)
        self.position += self.batch
        samples, data = self.samples, self.data
        item_row, user_row = samples.item_row.index_select(0, rows), samples.user_row.index_select(0, rows)
        user_inputs = data.inputs("user", user_row, samples.user_stats_row.index_select(0, rows))
        item_inputs = data.inputs("item", item_row, samples.item_stats_row.index_select(0, rows))
        label, weight = samples.label.index_select(0, rows), samples.weight.index_select(0, rows)
        if self.profiles:
            leave_one_out(self.profiles, user_inputs, item_inputs, user_row, item_row, label)
        log_q = self.log_q.index_select(0, item_row)
        clock.append(time.perf_counter())
        total, _ = self.step_module(user_inputs, item_inputs, label, weight, item_row, log_q, self.generator)
        clock.append(time.perf_counter())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        clock.append(time.perf_counter())
        if self.plain:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.training.grad_clip, foreach=False)
        else:
            clip_gradients(self.parameters, self.config.training.grad_clip)
        clock.append(time.perf_counter())
        self.optimizer.step()
        clock.append(time.perf_counter())
        if timed:
            self.timed_steps += 1
            for name, start, stop in zip(self.PHASES, clock, clock[1:]):
                self.phase_seconds[name] += stop - start


class Roofline:
    """Dense tower compute on random inputs; `mlp_only` = MLPs alone with frozen inputs."""

    def __init__(self, spec, config: TrainConfig, mlp_only: bool) -> None:
        torch.manual_seed(0)
        model = build_model(spec, config.model)
        self.towers = [model.user, model.item]
        self.mlp_only = mlp_only
        batch = config.training.batch_size
        grad = not mlp_only
        self.inputs = [
            (torch.randn(batch, t.content_width, requires_grad=grad), torch.randn(batch, t.preference_width, requires_grad=grad))  # (batch, width) each
            for t in self.towers
        ]
        skips = [s for t in self.towers for s in (t.content_skip, t.profile_skip) if s is not None]
        modules = [t.mlp for t in self.towers] + ([] if mlp_only else skips)
        self.parameters = [p for m in modules for p in m.parameters()]
        self.optimizer = make_optimizer(self.parameters, config.training.lr, config.training.weight_decay)

    def tower(self, tower, content, preference):
        out = tower.mlp(torch.cat([content, preference], dim=1))  # (batch, dim)
        if not self.mlp_only and tower.content_skip is not None:
            out = out + tower.content_skip(content)
        if not self.mlp_only and tower.profile_skip is not None:
            out = out + tower.profile_skip(preference[:, -tower.profile_width :])
        return F.normalize(out, dim=1)

    def __call__(self, timed: bool = False) -> None:
        for content, preference in self.inputs:
            content.grad = preference.grad = None
        user, item = (self.tower(t, *x) for t, x in zip(self.towers, self.inputs))
        total = (user * item).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()


def measure(runners: dict, rounds: int, block: int, batch: int) -> dict[str, float]:
    """samples/s of each runner over interleaved blocks (after 5 warm-up steps each)."""
    for run in runners.values():
        for _ in range(5):
            run()
    seconds = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            for _ in range(block):
                run(timed=True)
            seconds[name] += time.perf_counter() - started
    return {name: rounds * block * batch / seconds[name] for name in runners}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--block", type=int, default=10, help="steps per runner per round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = coldrec train's default)")
    parser.add_argument("--compare-plain", action="store_true", help="also time the step with for-loop AdamW (before the fused optimiser)")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    config = TrainConfig().validate()
    with tempfile.TemporaryDirectory() as tmp:
        spec, data = build(args.samples, config, Path(tmp))
    encoded_rss = peak_rss_mib()
    batch = config.training.batch_size
    training = Training(spec, data, config)
    runners = {"training": training, "roofline": Roofline(spec, config, mlp_only=False), "mlp-only": Roofline(spec, config, mlp_only=True)}
    if args.compare_plain:
        runners["plain"] = Training(spec, data, config, plain=True)
    rates = measure(runners, args.rounds, args.block, batch)
    print(f"samples={args.samples:,} batch={batch} threads={threads} steps={args.rounds * args.block} per runner")
    losses = ", ".join(f"{name} x{getattr(config.loss, name + '_weight')}" for name in ("pointwise", "pairwise", "softmax") if getattr(config.loss, name + "_weight") > 0)
    print(f"training  {rates['training']:12,.0f} samples/s  (default settings; losses: {losses}, softmax={config.loss.softmax})")
    share = float(training.samples.label.float().mean())
    print(f"          {rates['training'] * share:12,.0f} positives/s ({share:.0%} of the samples are clicks)")
    print(f"roofline  {rates['roofline']:12,.0f} samples/s  (dense tower compute: MLP + content and profile skips, input grads)")
    print(f"mlp-only  {rates['mlp-only']:12,.0f} samples/s  (MLPs alone, frozen inputs)")
    print(f"ratio     {rates['training'] / rates['roofline']:12.2f}  vs roofline (target >= 0.70)")
    print(f"ratio     {rates['training'] / rates['mlp-only']:12.2f}  vs mlp-only")
    if "plain" in rates:
        print(f"plain     {rates['plain']:12,.0f} samples/s  (for-loop AdamW: ratios {rates['plain'] / rates['roofline']:.2f} / {rates['plain'] / rates['mlp-only']:.2f})")
    steps = max(training.timed_steps, 1)
    print("training step, ms: " + ", ".join(f"{name} {seconds / steps * 1000:.2f}" for name, seconds in training.phase_seconds.items()))
    print(f"peak RSS  {peak_rss_mib():12,.0f} MiB  (after encoding: {encoded_rss:,.0f} MiB)")


if __name__ == "__main__":
    main()
