"""Subject-level splits and the leakage check.

Splits are made by subject, never by visit (visits of one subject never straddle splits),
stratified by the subject's diagnosis at its first visit, and saved to a JSON file so that
training and evaluation use the same ones. Allocation is done per stratum with an owned RNG
(rather than scikit-learn's splitters) so fractions are exact and strata of one or two
subjects still work.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mediad.data.records import ClinicalRecord
from mediad.errors import InputError, LeakageError
from mediad.io import atomic_write_text

__all__ = [
    "SplitConfig",
    "Splits",
    "check_leakage",
    "make_splits",
]


class SplitConfig(BaseModel):
    """Fractions of subjects held out for validation and test."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave subjects for training")
        return self


class Splits(BaseModel):
    """Subject ids per split, with how they were made."""

    model_config = ConfigDict(extra="forbid")

    config: SplitConfig
    source_sha256: str = Field("", description="Fingerprint of the subjects and labels split.")
    train: list[str]
    val: list[str]
    test: list[str]

    def split_of(self, subject_id: str) -> str | None:
        return next((name for name in ("train", "val", "test")
                     if subject_id in getattr(self, name)), None)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename)."""
        return atomic_write_text(path, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        p = Path(path)
        try:
            splits = cls.model_validate_json(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{p}: splits file not found") from None
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"{p}: not a MediAD splits file ({first})") from None
        check_leakage(splits.train, splits.test, "test")
        check_leakage(splits.train, splits.val, "validation")
        check_leakage(splits.val, splits.test, "test", seen_in="validation")
        return splits


def _subject_labels(rows: Iterable[ClinicalRecord]) -> dict[str, str]:
    """Each subject's stratum: its diagnosis at the first visit (``bl`` first)."""
    first: dict[str, tuple[tuple[int, str], str]] = {}
    for r in rows:
        order = (0 if r.visit.lower() in {"bl", "sc"} else 1, r.visit)
        label = r.diagnosis or "unlabelled"
        if r.subject_id not in first or order < first[r.subject_id][0]:
            first[r.subject_id] = (order, label)
    return {s: v[1] for s, v in first.items()}


def make_splits(rows: Sequence[ClinicalRecord], config: SplitConfig | None = None) -> Splits:
    """Split subjects into train / val / test, stratified by diagnosis.

    Args:
        rows: records or manifest rows (several visits per subject allowed).
        config: fractions and seed.

    Returns:
        Disjoint subject lists; each stratum contributes ``round(fraction * size)`` subjects
        to val and test.
    """
    cfg = config or SplitConfig()
    labels = _subject_labels(rows)
    if not labels:
        raise InputError("nothing to split: the table has no rows")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7]))
    strata: dict[str, list[str]] = defaultdict(list)
    for subject, label in sorted(labels.items()):
        strata[label].append(subject)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in sorted(strata):
        members = list(rng.permutation(strata[label]))
        # every stratum keeps at least one training subject
        n_test = min(round(cfg.test_fraction * len(members)), len(members) - 1)
        n_val = min(round(cfg.val_fraction * len(members)), len(members) - 1 - n_test)
        out["test"] += members[:n_test]
        out["val"] += members[n_test:n_test + n_val]
        out["train"] += members[n_test + n_val:]
    digest = hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()
    return Splits(config=cfg, source_sha256=digest,
                  **{k: sorted(str(s) for s in v) for k, v in out.items()})


def check_leakage(train: Iterable[str], held_out: Iterable[str], held_out_name: str = "test",
                  seen_in: str = "training") -> None:
    """Refuse held-out subjects that were seen in training.

    Raises:
        LeakageError: naming the overlapping subjects.
    """
    overlap = sorted(set(train) & set(held_out))
    if overlap:
        shown = ", ".join(overlap[:10]) + (f" and {len(overlap) - 10} more" if len(overlap) > 10
                                           else "")
        raise LeakageError(
            f"{len(overlap)} {held_out_name} subject(s) were seen in {seen_in}: {shown}. "
            "Splits must be by subject; remove them from one side or make new splits."
        )
