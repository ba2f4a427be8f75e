"""Training throughput vs. the compute roofline of the same towers, and peak memory.

    .venv/bin/python bench/train.py [--samples 10000000] [--batches 200] [--threads 2]

1. Builds a synthetic world (coldrec.synth), fits and encodes it with the real code, then
   tiles the encoded per-sample index tensors to --samples rows (the memory of a 10M-sample
   encoded dataset is real; only the ids repeat).
2. Times --batches training steps at default settings exactly as `run_train` does them
   (index_select gathers, both towers, RetrievalLoss, backward, clipping, AdamW).
3. Times the bare forward+backward+AdamW of MLPs of the same shapes on random dense inputs
   (no lookups, no loss beyond a dot product): the compute roofline of this model.
Prints samples/s of both, their ratio (target >= 0.70) and the peak RSS.
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
from coldrec.train import Dist, TrainStep, _item_log_q  # noqa: E402


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


def time_training(spec, data, config: TrainConfig, batches: int) -> float:
    torch.manual_seed(0)
    model = build_model(spec, config.model)
    loss = RetrievalLoss(config.loss.to_loss_config())
    step_module = TrainStep(model, loss, "twotower", Dist())
    parameters = [p for p in step_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.training.lr)
    samples = data.splits["train"]
    log_q = _item_log_q(samples.item_row[:1_000_000], len(data.items))
    generator = torch.Generator().manual_seed(0)
    permutation = torch.randperm(len(samples), generator=generator)
    batch = config.training.batch_size
    started = None
    for step in range(batches + 5):
        if step == 5:
            started = time.perf_counter()  # skip warm-up steps
        rows = permutation[step * batch : (step + 1) * batch]
        item_row = samples.item_row.index_select(0, rows)
        total, _ = step_module(
            data.inputs("user", samples.user_row.index_select(0, rows), samples.user_stats_row.index_select(0, rows)),
            data.inputs("item", item_row, samples.item_stats_row.index_select(0, rows)),
            samples.label.index_select(0, rows),
            samples.weight.index_select(0, rows),
            item_row,
            log_q.index_select(0, item_row),
            generator,
        )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.training.grad_clip)
        optimizer.step()
    return batches * batch / (time.perf_counter() - started)


def time_roofline(spec, config: TrainConfig, batches: int) -> float:
    torch.manual_seed(0)
    model = build_model(spec, config.model)
    mlps = [model.user.mlp, model.item.mlp]
    widths = [model.user.content_width + model.user.preference_width, model.item.content_width + model.item.preference_width]
    parameters = [p for mlp in mlps for p in mlp.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.training.lr)
    batch = config.training.batch_size
    inputs = [torch.randn(batch, w) for w in widths]  # (batch, in_width) per tower
    started = None
    for step in range(batches + 5):
        if step == 5:
            started = time.perf_counter()
        user = F.normalize(mlps[0](inputs[0]), dim=1)  # (batch, dim)
        item = F.normalize(mlps[1](inputs[1]), dim=1)  # (batch, dim)
        total = (user * item).sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return batches * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig().validate()
    with tempfile.TemporaryDirectory() as tmp:
        spec, data = build(args.samples, config, Path(tmp))
    encoded_rss = peak_rss_mib()
    train_rate = time_training(spec, data, config, args.batches)
    roof_rate = time_roofline(spec, config, args.batches)
    print(f"samples={args.samples:,} batch={config.training.batch_size} threads={args.threads}")
    print(f"training  {train_rate:12,.0f} samples/s  (default settings: pointwise + in-batch softmax with log-Q)")
    print(f"roofline  {roof_rate:12,.0f} samples/s  (bare forward+backward+AdamW of the same tower MLPs)")
    print(f"ratio     {train_rate / roof_rate:12.2f}  (target >= 0.70)")
    print(f"peak RSS  {peak_rss_mib():12,.0f} MiB  (after encoding: {encoded_rss:,.0f} MiB)")


if __name__ == "__main__":
    main()
