"""Where MediAD keeps what it generates (demo cohorts, models, caches)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]


def data_dir() -> Path:
    """``$MEDIAD_DATA_DIR`` or ``./mediad-data``, resolved."""
    return Path(os.environ.get("MEDIAD_DATA_DIR", "mediad-data")).resolve()
