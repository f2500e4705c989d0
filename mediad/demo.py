"""The bundled demo: what the README's first command builds and shows."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from mediad.simulate import SimulationConfig, simulate_cohort

__all__ = ["DEMO_COHORT", "data_dir", "ensure_demo_cohort"]

#: The demo cohort: confounded like a real multi-site study (site predicts diagnosis).
DEMO_COHORT = SimulationConfig(n_subjects=200, confounding=0.8, shift="none", seed=2026,
                               spacing=3.0, workers=1)


def data_dir() -> Path:
    """Where MediAD keeps generated data: ``$MEDIAD_DATA_DIR`` or ``./mediad-data``."""
    return Path(os.environ.get("MEDIAD_DATA_DIR", "mediad-data")).resolve()


def _same_cohort(folder: Path, cfg: SimulationConfig) -> bool:
    try:
        card = json.loads((folder / "dataset_card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = cfg.model_dump(mode="json", exclude={"workers"})
    return card.get("config") == want and (folder / "manifest.csv").is_file()


def ensure_demo_cohort(root: Path | None = None,
                       progress: Callable[[int, int], None] | None = None) -> tuple[Path, bool]:
    """Build the demo cohort unless an identical one is already there.

    Returns:
        ``(folder, built)``; ``built`` is false when an existing cohort was reused.
    """
    folder = (root or data_dir()) / "demo-cohort"
    if _same_cohort(folder, DEMO_COHORT):
        return folder, False
    simulate_cohort(DEMO_COHORT, folder, overwrite=True, progress=progress)
    return folder, True
