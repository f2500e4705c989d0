"""Running models: configs, samples, checkpoints, DDP helpers, training, prediction, saliency.

Public names load on first use (PEP 562), so ``import mediad.engine`` stays cheap
for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CHECKPOINT_FORMAT": "checkpoint",
    "DataConfig": "config",
    "DistInfo": "ddp",
    "OptimConfig": "config",
    "Prediction": "predictor",
    "Predictor": "predictor",
    "TrainConfig": "config",
    "TrainResult": "trainer",
    "batch_to": "samples",
    "build_samples": "samples",
    "cache_root": "config",
    "confounder_vector": "samples",
    "data_fingerprint": "samples",
    "distributed": "ddp",
    "gather": "ddp",
    "hash_subjects": "checkpoint",
    "load_checkpoint": "checkpoint",
    "make_dataset": "samples",
    "make_summarizer": "samples",
    "new_salt": "checkpoint",
    "overlapping_subjects": "checkpoint",
    "predict_loader": "trainer",
    "saliency": "explain",
    "save_checkpoint": "checkpoint",
    "train": "trainer",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
