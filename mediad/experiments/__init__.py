"""Experiments on cohorts: evaluation with reports, the confounder ablation, the bundled demo.

Public names load on first use (PEP 562), so ``import mediad.experiments`` stays cheap
for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "AblationConfig": "ablation",
    "DEMO_COHORT": "demo",
    "DEMO_CONFIG": "demo",
    "DEMO_SHIFTED": "demo",
    "EvalResult": "evaluation",
    "QUICK": "ablation",
    "VARIANTS": "ablation",
    "ensure_demo_cohort": "demo",
    "ensure_demo_model": "demo",
    "evaluate": "evaluation",
    "run_ablation": "ablation",
    "verdicts": "ablation",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
