"""The bundled demo: what the README's first command builds and shows."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from mediad.data.simulate import SIMULATOR_VERSION, SimulationConfig, simulate_cohort
from mediad.engine import TrainConfig, load_checkpoint, train
from mediad.errors import MediADError
from mediad.paths import data_dir

__all__ = [
    "DEMO_COHORT",
    "DEMO_CONFIG",
    "DEMO_SHIFTED",
    "demo_cohort_ready",
    "ensure_demo_cohort",
    "ensure_demo_model",
]

#: The demo model's training config (``data.manifest`` is relative to the data folder).
DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "demo.yaml"

#: The demo cohort: confounded like a real multi-site study (site predicts diagnosis).
DEMO_COHORT = SimulationConfig(n_subjects=150, confounding=0.8, shift="none", seed=2026,
                               spacing=3.0, workers=2)


#: A held-out cohort for the Cohort page: new subjects, site and age links reversed.
DEMO_SHIFTED = DEMO_COHORT.model_copy(update={"n_subjects": 60, "shift": "reversed",
                                               "seed": 2027, "subject_offset": 5000})


def _same_cohort(folder: Path, cfg: SimulationConfig) -> bool:
    try:
        card = json.loads((folder / "dataset_card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = cfg.model_dump(mode="json", exclude={"workers"})
    return (card.get("config") == want and card.get("simulator_version") == SIMULATOR_VERSION
            and (folder / "manifest.csv").is_file())


def demo_cohort_ready(root: Path | None = None, shifted: bool = False) -> bool:
    """Whether the demo cohort (or its held-out twin) is built and current."""
    cfg = DEMO_SHIFTED if shifted else DEMO_COHORT
    return _same_cohort((root or data_dir()) / ("demo-shifted" if shifted else "demo-cohort"),
                        cfg)


def ensure_demo_cohort(root: Path | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       shifted: bool = False) -> tuple[Path, bool]:
    """Build the demo cohort (or its shifted, held-out twin) unless it is already there.

    Returns:
        ``(folder, built)``; ``built`` is false when an existing cohort was reused.
    """
    cfg = DEMO_SHIFTED if shifted else DEMO_COHORT
    folder = (root or data_dir()) / ("demo-shifted" if shifted else "demo-cohort")
    if _same_cohort(folder, cfg):
        return folder, False
    simulate_cohort(cfg, folder, overwrite=True, progress=progress)
    return folder, True


def ensure_demo_model(root: Path | None = None, show_progress: bool = True
                      ) -> tuple[Path, bool]:
    """Train the demo model on the demo cohort unless a finished one is there.

    Returns:
        ``(best checkpoint, built)``.
    """
    root = root or data_dir()
    folder = root / "demo-model"
    best = folder / "best.pt"
    cohort, _ = ensure_demo_cohort(root)
    source = hashlib.sha256((cohort / "dataset_card.json").read_bytes()).hexdigest()
    if best.is_file() and (folder / "metrics.json").is_file():
        try:
            load_checkpoint(best)
            stamp = json.loads((folder / "source.json").read_text(encoding="utf-8"))
            if stamp.get("cohort") == source:
                return best, False
        except (MediADError, OSError, ValueError):
            pass
        shutil.rmtree(folder)  # an older version, or another cohort: rebuild
    config = TrainConfig.from_yaml(DEMO_CONFIG)
    config = config.model_copy(update={"data": config.data.model_copy(update={
        "manifest": cohort / "manifest.csv", "cache_dir": root / "cache"})})
    if folder.exists():  # an interrupted earlier build: resume it
        train(config, folder, resume=(folder / "last.pt").is_file(),
              show_progress=show_progress)
    else:
        train(config, folder, show_progress=show_progress)
    (folder / "source.json").write_text(json.dumps({"cohort": source}), encoding="utf-8")
    return best, True
