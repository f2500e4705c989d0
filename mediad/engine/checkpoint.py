"""Checkpoints: tensors, numbers, strings, lists and dicts only, so ``weights_only=True`` loads
them and no pickled code ever runs. Training subjects are kept as salted hashes, never ids:
a checkpoint must not answer "was this person in the training data?" for someone who
only has a name list.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mediad.errors import LeakageError, MediADError
from mediad.io import atomic_path
from mediad.networks.models import ARCHITECTURE

__all__ = [
    "CHECKPOINT_FORMAT",
    "hash_subjects",
    "load_checkpoint",
    "new_salt",
    "overlapping_subjects",
    "refuse_training_subjects",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "mediad-checkpoint/2"


def new_salt() -> str:
    return secrets.token_hex(16)


def hash_subjects(subjects: Iterable[str], salt: str) -> list[str]:
    """Salted SHA-256 of each subject id, sorted (the order of ids tells nothing either)."""
    return sorted({hashlib.sha256(f"{salt}:{s}".encode()).hexdigest() for s in subjects})


def overlapping_subjects(checkpoint: dict[str, Any], subjects: Iterable[str]) -> list[str]:
    """Which of ``subjects`` the checkpoint was trained on (the caller holds their ids)."""
    salt = checkpoint.get("subject_salt", "")
    known = set(checkpoint.get("train_subject_hashes", []))
    return sorted({s for s in subjects if hash_subjects([s], salt)[0] in known})


def refuse_training_subjects(checkpoint: dict[str, Any], subjects: Iterable[str],
                             what: str, advice: str, force: bool = False) -> int:
    """How many of ``subjects`` the checkpoint was trained on; any at all is refused
    unless ``force``. The message says how many, never which: it must not confirm who was
    in the training data.

    Args:
        checkpoint: a loaded checkpoint.
        subjects: the cohort's subject ids.
        what: the cohort as the message names it, e.g. "subjects of manifest.csv".
        advice: the rest of the message (why it matters, what to do instead).
        force: count them, but do not refuse.

    Raises:
        LeakageError: some subjects were in the training data, and not ``force``.
    """
    ids = set(subjects)
    seen = overlapping_subjects(checkpoint, ids)
    if seen and not force:
        raise LeakageError(f"{len(seen)} of the {len(ids)} {what} were in the model's "
                           f"training data{advice}")
    return len(seen)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """Load a MediAD checkpoint safely (``weights_only=True``: no pickled code runs).

    Raises:
        MediADError: missing file, not a MediAD checkpoint, or made for another task.
    """
    p = Path(path)
    if not p.is_file():
        raise MediADError(f"{p}: checkpoint not found")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        raise MediADError(f"{p}: not a MediAD checkpoint ({str(exc).splitlines()[0][:120]})"
                          ) from None
    fmt = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
    if not str(fmt).startswith("mediad-checkpoint/"):
        raise MediADError(f"{p}: not a MediAD checkpoint (format {fmt})")
    if fmt != CHECKPOINT_FORMAT or ck.get("architecture") != ARCHITECTURE:
        raise MediADError(f"{p}: made by an older MediAD (checkpoint {fmt}, model "
                          f"architecture {ck.get('architecture', 1)}; this version reads "
                          f"{CHECKPOINT_FORMAT}, architecture {ARCHITECTURE}); retrain it "
                          "with `mediad train`")
    imaging = ck["config"].get("data", {}).setdefault("imaging", {})
    imaging.setdefault("preprocess", None)  # trained before preprocessing existed: raw input
    if imaging["preprocess"] is not None:  # registered on raw intensities: as trained
        imaging["preprocess"].setdefault("registration_highpass_mm", 0.0)
        # resampled linearly, without smoothing: as trained
        imaging["preprocess"].setdefault("interpolation", "linear")
        imaging["preprocess"].setdefault("resample_smoothing", 0.0)
    # calibrated before shift averaging existed: predict as it was calibrated
    ck["config"]["model"].setdefault("shift_average", 0)
    have = ck["config"]["model"]["task"]
    if task is not None and have != task:
        raise MediADError(f"{p}: checkpoint is for task {have!r}, not {task!r}")
    return ck
