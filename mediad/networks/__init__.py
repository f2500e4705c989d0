"""The networks: image / text / tabular encoders, the causal head, MediAD and the baselines.

Public names load on first use (PEP 562), so ``import mediad.networks`` stays cheap
for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ARCHITECTURE": "models",
    "BackDoorAdjustment": "causal",
    "CrossModalFusion": "causal",
    "FrontDoorAdjustment": "causal",
    "ImageEncoder": "encoders",
    "ImageEncoderConfig": "encoders",
    "KINDS": "models",
    "Mediator": "causal",
    "ModelConfig": "models",
    "ModelOutput": "models",
    "MultimodalNet": "models",
    "N_STRATA": "causal",
    "TABULAR_FIELDS": "encoders",
    "TASKS": "models",
    "TabularBaseline": "models",
    "TabularEncoder": "encoders",
    "TextEmbedder": "encoders",
    "build_model": "models",
    "confounder_stratum": "causal",
    "masked_attention": "causal",
    "masked_mean": "causal",
    "tabular_features": "encoders",
    "text_model_folder": "encoders",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
