"""From records and MRI paths to the sample dictionaries every model variant reads."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mediad.data.imaging import ImagingConfig, build_transforms
from mediad.data.preprocess import QCRecord, preprocess_paths
from mediad.data.records import COGNITIVE_SCORES, ClinicalRecord, ManifestRow, has_no_scores
from mediad.data.transforms import MaybeImaged, pose_augmentation, scanner_augmentation
from mediad.engine.config import TrainConfig
from mediad.errors import InputError, Issue
from mediad.networks.encoders import TextEmbedder, tabular_features
from mediad.networks.models import ModelConfig
from mediad.summarize import Summarizer

__all__ = [
    "balance_weights",
    "batch_to",
    "build_samples",
    "confounder_vector",
    "data_fingerprint",
    "drop_modalities",
    "drop_scores",
    "make_dataset",
    "make_summarizer",
    "prepare_images",
    "reads_scores",
]


def data_fingerprint(rows: Sequence[ManifestRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(r.model_dump_json(exclude={"mri_path"}).encode())
        if r.mri_path and Path(r.mri_path).is_file():
            h.update(str(Path(r.mri_path).stat().st_size).encode())
    return h.hexdigest()[:16]


def confounder_vector(record: ClinicalRecord | None) -> np.ndarray:
    """Age (z, fixed scale), sex, vascular risk: what metadata_norm / cf_adversarial see."""
    if record is None:
        return np.zeros(3, np.float32)
    age = 0.0 if record.age is None else (record.age - 73.0) / 7.0
    sex = 0.5 if record.sex is None else float(record.sex == "female")
    return np.array([age, sex, float(bool(record.hypertension or record.diabetes))],
                    np.float32)


def reads_scores(model: ModelConfig, summary_fields: Sequence[str]) -> bool:
    """Whether a model reads any cognitive score, in its record fields or its summary.

    Such a model (unless it is the tabular baseline) hides the scores in training
    (``optim.score_dropout``) and has input patterns of its own for records without them.

    Args:
        model: the model's config.
        summary_fields: the fields its summary writes (empty without a summary).
    """
    reads = set(summary_fields)
    if model.use_tabular or model.kind == "tabular":
        reads |= set(model.tabular_fields)
    return bool(reads & set(COGNITIVE_SCORES))


def _unscored(record: ClinicalRecord | None) -> ClinicalRecord | None:
    """The record without its cognitive scores (``None`` when it has none to hide)."""
    if record is None or has_no_scores(record):
        return None
    return record.model_copy(update=dict.fromkeys(COGNITIVE_SCORES))


def build_samples(rows: Sequence[ClinicalRecord | None], mri_paths: Sequence[str | None],
                  classes: Sequence[str], summarizer: Summarizer | None,
                  embedder: TextEmbedder | None, tabular_fields: Sequence[str],
                  sites: Sequence[str] = (), unscored: bool = False) -> list[dict[str, Any]]:
    """One dictionary per subject-visit: everything the dataset needs but the image.

    ``site`` is the record's index in ``sites`` (the training sites), -1 when unknown or at
    prediction time: only training reads it (back door, site adversary, balance).
    ``unscored`` also gives each sample ``text_unscored``, its summary as it reads without
    the cognitive scores, ``tab_scores``, where the scores sit among the record fields, and
    ``scored``, 0 for a record that holds none (its answers belong to the patterns without
    scores): for :func:`drop_scores` and for calibrating answers from records without scores (one
    more summary per scored record, an LLM call with an LLM backend; only the sections
    that differ are embedded, each distinct one once).
    """
    def sections(record: ClinicalRecord | None) -> list[str]:
        if record is None or summarizer is None or embedder is None:
            return []
        return list(summarizer.summarize(record).sections.values())

    texts = [sections(r) for r in rows]
    others = [sections(_unscored(r)) if unscored else [] for r in rows]
    n_sections = max((len(t) for t in texts), default=5) or 5
    distinct = list(dict.fromkeys(s for t in (*texts, *others) for s in t))
    vectors = (dict(zip(distinct, embedder.embed(distinct), strict=True))
               if embedder is not None and distinct else {})

    def embedded(sentences: list[str]) -> np.ndarray:
        text = np.zeros((n_sections, 384), np.float32)
        for j, sentence in enumerate(sentences):
            text[j] = vectors[sentence]
        return text

    scores = np.array([f in COGNITIVE_SCORES for f in tabular_fields], np.float32)
    samples = []
    for i, (r, path) in enumerate(zip(rows, mri_paths, strict=True)):
        values, mask = tabular_features(r, tuple(tabular_fields))
        label = classes.index(r.diagnosis) if (r is not None and r.diagnosis in classes) else -1
        sample = {
            "image": path or "", "text": embedded(texts[i]),
            "has_text": np.float32(1.0 if texts[i] else 0.0),
            "tab_values": values, "tab_mask": mask,
            "site": sites.index(r.site) if (r is not None and r.site in sites) else -1,
            "confounders": confounder_vector(r), "label": label, "index": i,
        }
        if unscored:
            sample["text_unscored"] = embedded(others[i]) if others[i] else sample["text"]
            sample["tab_scores"] = scores
            sample["scored"] = np.float32(r is None or not has_no_scores(r))
        samples.append(sample)
    return samples


def prepare_images(rows: Sequence[ManifestRow], imaging: ImagingConfig, cache: Path,
                   workers: int = 2, progress: Callable[[int, int], None] | None = None
                   ) -> dict[str, QCRecord]:
    """Preprocess every MRI of ``rows`` up front, in worker processes (the datasets then read
    the cache), and refuse the run if any MRI is unusable, naming each subject.

    Returns:
        The QC record of each MRI path (empty when the config does not preprocess).

    Raises:
        InputError: no brain found, or registration failed, for some subject(s).
    """
    if imaging.preprocess is None:
        return {}
    paths = [r.mri_path for r in rows if r.mri_path]
    results = preprocess_paths(paths, imaging.preprocess, cache / "preprocessed", workers,
                               progress)
    issues = [Issue("error", got, subject=r.subject_id, field="mri_path",
                    value=Path(r.mri_path).name)
              for r in rows if r.mri_path and isinstance(got := results[r.mri_path], str)]
    InputError.raise_if_errors(issues, summary=f"{len(issues)} MRI(s) could not be "
                               "preprocessed; fix or remove them from the manifest")
    return {p: r.qc for p, r in results.items() if not isinstance(r, str)}


def make_dataset(samples: list[dict[str, Any]], imaging: ImagingConfig, augment: bool,
                 cache: bool = True, cache_dir: Path | None = None,
                 augment_pose: bool = False) -> Any:
    """A MONAI dataset over ``samples``; preprocessed volumes are read from ``cache_dir``.
    ``augment`` randomises the scanner, ``augment_pose`` the brain's pose (both after the
    cache, so every epoch draws anew)."""
    from monai.data import CacheDataset, Dataset
    from monai.transforms import Compose

    steps: list[Any] = [MaybeImaged(build_transforms(imaging, cache_dir=cache_dir),
                                    imaging.shape)]
    if augment_pose:
        steps.append(pose_augmentation("image", imaging.shape))
    if augment:
        steps.append(scanner_augmentation("image", imaging.lower_percentile,
                                          imaging.upper_percentile))
    transform = Compose(steps)
    if cache:
        # threads: reading and resampling release the GIL (100 demo MRIs: 12.4 s in one
        # thread, 4.6 s in four, one run on 2 busy cores)
        return CacheDataset(samples, transform, progress=False,
                            num_workers=min(4, os.cpu_count() or 1))
    return Dataset(samples, transform)


def balance_weights(labels: np.ndarray, sites: np.ndarray, n_classes: int,
                    classes: bool = True, by_site: bool = True,
                    max_weight: float = 10.0) -> np.ndarray:
    """Per-sample loss weights that make the training set look site-balanced.

    The target distribution is ``P*(s, d) = P(s) P*(d)``: the site independent of the
    diagnosis (``P*(d)`` uniform with ``classes``, else the observed ``P(d)``), so a site
    shortcut no longer pays. Each sample weighs ``P*(s, d) / P(s, d)`` (one pseudo-count
    per cell, clipped at ``max_weight`` times the mean), normalised to mean 1; unknown sites
    (-1) are weighted by diagnosis only. This is the back door's reweighting form: it needs
    the site in training only.

    Args:
        labels: class index per sample (``>= 0``).
        sites: site index per sample, -1 unknown.
        n_classes: number of classes.
        classes: balance the classes too (class weighting).
        by_site: balance the sites (off: class weights only, or all ones).

    Returns:
        Float32 weights, one per sample.
    """
    labels, sites = np.asarray(labels), np.asarray(sites)
    n = len(labels)
    p_d = np.bincount(labels, minlength=n_classes) / max(1, n)
    target_d = np.full(n_classes, 1.0 / n_classes) if classes else p_d
    w = target_d[labels] / np.clip(p_d[labels], 1e-12, None)
    known = sites >= 0
    if by_site and known.sum() > 0 and len(np.unique(sites[known])) > 1:
        s, y = sites[known], labels[known]
        n_sites = int(s.max()) + 1
        joint = np.zeros((n_sites, n_classes))
        np.add.at(joint, (s, y), 1.0)
        # one pseudo-count per cell, spread as under independence: no empty cell (no
        # infinite weight), and nothing changes where the sites are already balanced
        joint += joint.size * np.outer(joint.sum(1), joint.sum(0)) / joint.sum() ** 2
        joint /= joint.sum()
        p_s = joint.sum(1)
        w[known] = p_s[s] * target_d[y] / joint[s, y]
    w = np.minimum(w, max_weight * w.mean())
    return (w / w.mean()).astype(np.float32)


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def make_summarizer(config: TrainConfig, cache: Path) -> Summarizer:
    """The run's summariser, caching under ``cache/summaries`` unless told otherwise."""
    summary = config.data.summary
    if summary.cache_dir is None:
        summary = summary.model_copy(update={"cache_dir": cache / "summaries"})
    return Summarizer(summary)


def drop_scores(batch: dict[str, torch.Tensor], p: float, generator: torch.Generator
                ) -> dict[str, torch.Tensor]:
    """Hide the cognitive scores of each training record with chance ``p``: its summary
    becomes the one written without them (``text_unscored``) and their fields are masked
    (``tab_scores``).

    Records in a study almost always hold the scores; records brought to the model often do
    not. A model that never saw a record without them read such a record as if the missing
    scores meant something.

    Args:
        batch: a collated batch from ``build_samples(unscored=True)``.
        p: chance of hiding a sample's scores.
        generator: the owned RNG (seeded per run).

    Returns:
        A new batch dictionary; the input tensors are not modified.
    """
    if p <= 0 or "text_unscored" not in batch:
        return batch
    drop = (torch.rand(len(batch["label"]), generator=generator) < p).to(batch["text"].device)
    out = dict(batch)
    out["text"] = torch.where(drop[:, None, None], batch["text_unscored"], batch["text"])
    out["tab_mask"] = batch["tab_mask"] * (1 - drop[:, None].to(batch["tab_mask"].dtype)
                                           * batch["tab_scores"])
    return out


def drop_modalities(batch: dict[str, torch.Tensor], p: float, generator: torch.Generator,
                    uses: tuple[bool, bool, bool] = (True, True, True)
                    ) -> dict[str, torch.Tensor]:
    """Hide each present input of each sample with chance ``p``, keeping at least one the
    model reads.

    A model trained only on complete samples learns to lean on the easiest input (the
    record, when it holds the scores) and gives one answer for every MRI on its own.
    Hiding inputs at random during training makes partial-input predictions real ones.

    Args:
        batch: a collated batch (``has_image``, ``has_text``, ``tab_mask``).
        p: chance of hiding each input.
        generator: the owned RNG (seeded per run, so training stays reproducible).
        uses: which of (MRI, summary, record fields) the model reads. An input it ignores
            never counts as the one kept: an MRI-only model would otherwise see 30 % of
            its samples with no input at all (which delayed its learning by epochs).

    Returns:
        A new batch dictionary; the input tensors are not modified.
    """
    if p <= 0:
        return batch
    present = torch.stack([batch["has_image"].float(), batch["has_text"].float(),
                           (batch["tab_mask"].sum(1) > 0).float()], 1).cpu()
    present = present * torch.tensor(uses, dtype=present.dtype)
    drop = (torch.rand(present.shape, generator=generator) < p) & (present > 0)
    keep = present * (~drop)
    none_left = keep.sum(1) == 0
    if none_left.any():  # restore one present input of such samples, chosen at random
        scores = torch.rand(present.shape, generator=generator) * present
        pick = scores.argmax(1)
        keep[none_left, pick[none_left]] = present[none_left, pick[none_left]]
    keep = (keep + (1 - torch.tensor(uses, dtype=keep.dtype))).clamp(max=1)  # ignored: as is
    keep = keep.to(batch["has_image"].device)
    out = dict(batch)
    out["has_image"] = batch["has_image"] * keep[:, 0].to(batch["has_image"].dtype)
    out["has_text"] = batch["has_text"] * keep[:, 1].to(batch["has_text"].dtype)
    out["tab_mask"] = batch["tab_mask"] * keep[:, 2:3].to(batch["tab_mask"].dtype)
    return out
