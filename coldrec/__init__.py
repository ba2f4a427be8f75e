"""coldrec: cold-start recommendation with an end-to-end DropoutNet two-tower model.

Every command is a function (docs/api.md): `run_prepare`, `run_train`, `load_model`, ...
They are imported on first use, so `import coldrec` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run_synth": "coldrec.synth",
    "SynthConfig": "coldrec.synth",
    "run_prepare": "coldrec.prepare",
    "PrepareConfig": "coldrec.prepare",
    "run_stats": "coldrec.stats",
    "run_train": "coldrec.train",
    "TrainConfig": "coldrec.config",
    "load_config": "coldrec.config",
    "load_model": "coldrec.model",
    "LoadedModel": "coldrec.model",
    "run_embed": "coldrec.embed",
    "run_index": "coldrec.index",
    "run_recall": "coldrec.recall",
    "run_evaluate": "coldrec.evaluate",
    "run_pipeline": "coldrec.pipeline",
    "run_tune": "coldrec.tune",
    "run_movielens": "coldrec.datasets",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'coldrec' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
