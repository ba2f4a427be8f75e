"""Training checkpoints: everything `coldrec train --resume` needs, written after every epoch.

The current weights, the best weights so far, the optimiser's state and the run's history,
in a hidden directory beside the output (`.NAME.checkpoint`), written atomically. With the
per-epoch seeds of the training loop, resuming ends with exactly the weights of an
uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from coldrec import io
from coldrec.errors import UsageError
from coldrec.model import model_state

CHECKPOINT_STATE = "state.safetensors"
CHECKPOINT_META = "state.json"


def checkpoint_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.checkpoint"


def save_checkpoint(directory: Path, model: nn.Module, loss: nn.Module | None, optimizer: torch.optim.Optimizer, best_state: dict[str, Tensor] | None, meta: dict) -> None:
    """Write the current weights, `best_state` (model_state's keys), the optimiser and `meta`."""
    from safetensors.torch import save_file

    tensors = {f"current.{k}": v for k, v in model_state(model, loss).items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt_state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, entry in opt_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    meta = {**meta, "optimizer_groups": opt_state["param_groups"], "optimizer_scalars": scalars, "has_best": best_state is not None}
    with io.atomic_dir(directory, replace_foreign=True) as temp:
        save_file(tensors, str(temp / CHECKPOINT_STATE))
        (temp / CHECKPOINT_META).write_text(json.dumps(meta, default=float))


def load_checkpoint(directory: Path, model: nn.Module, loss: nn.Module | None, optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, Tensor] | None]:
    """Load the current weights and the optimiser in place; -> (meta, the best state or None)."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((directory / CHECKPOINT_META).read_text())
        tensors = load_file(str(directory / CHECKPOINT_STATE))
    except Exception as error:  # noqa: BLE001
        raise UsageError(f"cannot read the checkpoint ({error})", path=directory, hint="remove it and rerun without --resume") from None
    current = {k[len("current.") :]: v for k, v in tensors.items() if k.startswith("current.")}
    load_state_into(model, loss, current)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("optimizer_scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")} if meta.get("has_best") else None
    return meta, best


def load_state_into(model: nn.Module, loss: nn.Module | None, state: dict[str, Tensor]) -> None:
    """Load a model_state dict (model.* and loss.* keys) in place."""
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    if loss is not None:
        loss.load_state_dict({k[len("loss.") :]: v for k, v in state.items() if k.startswith("loss.")})
