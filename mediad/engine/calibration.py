"""Calibration and out-of-distribution statistics, fitted on held-out data after training.

A probability means what it says only if, of the subjects given 0.8, about 8 in 10 are
right. Networks trained to a low loss are over-confident, and differently so for each
input pattern (an MRI-only answer is not as sure as one with the record). So each pattern
gets its own temperature, fitted on the validation split after training (Guo et al.
2017), and stored in the checkpoint. Recalibration on a large enough cohort may, on
request, also give a pattern a class bias (bias-corrected temperature scaling, Alexandari
et al. 2020): an MRI-only answer can lean towards one class as a whole, which no
temperature mends. The same pass fits, per pattern, the training distribution of the
features the label is read from (mean and Ledoit-Wolf precision), so that a prediction
far from everything the model was trained on says so (Mahalanobis distance, threshold at
a validation percentile).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

__all__ = [
    "MAX_TEMPERATURE",
    "MIN_BIAS_SUBJECTS",
    "MIN_FIT_SUBJECTS",
    "MIN_TEMPERATURE",
    "PATTERNS",
    "UNSCORED",
    "Calibration",
    "FeatureDistribution",
    "InputPattern",
    "fit_calibration",
    "fit_class_bias",
    "fit_feature_distribution",
    "fit_temperature",
    "fit_temperature_and_bias",
    "input_pattern",
    "model_patterns",
    "restrict_inputs",
]

InputPattern = Literal["mri+record", "mri", "record", "mri+record (no scores)",
                       "record (no scores)"]
PATTERNS: tuple[InputPattern, ...] = ("mri+record", "mri", "record")
#: A record without any cognitive score is a pattern of its own: such answers are less sure
#: than those from a scored record (the demo model with score dropout, on 300 new
#: subjects: balanced accuracy 0.77 against 0.98 with the MRI), and one temperature for
#: both left them over-confident (ECE 0.077, and 0.145 from the record alone).
UNSCORED: dict[str, InputPattern] = {"mri+record": "mri+record (no scores)",
                                     "record": "record (no scores)"}
#: A prediction is flagged as out of distribution beyond ``OOD_MARGIN`` times the
#: ``OOD_PERCENTILE``th percentile of the validation subjects' Mahalanobis distances: with
#: the few dozen validation subjects of a small cohort the percentile is about their
#: maximum, and the margin keeps typical new subjects (>= 95 %) unflagged, while noise,
#: inverted contrast or a non-brain lie many times farther.
OOD_PERCENTILE = 99.0
OOD_MARGIN = 1.5


def input_pattern(has_mri: bool, has_record: bool, scored: bool = True) -> InputPattern:
    """Which of the calibrated patterns a prediction belongs to (``scored``: the record
    holds at least one cognitive score)."""
    pattern: InputPattern = ("mri+record" if has_mri and has_record
                             else "mri" if has_mri else "record")
    return pattern if scored or not has_record else UNSCORED[pattern]


def model_patterns(has_image: bool, has_record: bool, scores: bool = False
                   ) -> tuple[InputPattern, ...]:
    """The input patterns a model that reads these inputs can be asked with; ``scores``:
    its record includes cognitive scores, so records without them are patterns too."""
    base: tuple[InputPattern, ...] = (PATTERNS if has_image and has_record
                                      else ("mri",) if has_image else ("record",))
    return base + tuple(UNSCORED[p] for p in base if p in UNSCORED and scores and has_record)


def restrict_inputs(batch: dict[str, torch.Tensor], pattern: InputPattern
                    ) -> dict[str, torch.Tensor]:
    """The batch with the inputs outside ``pattern`` hidden (as modality dropout hides
    them), so that a pattern's statistics come from the same network on the same subjects;
    a pattern without scores reads each record as it reads without them (``text_unscored``
    and ``tab_scores``, from ``build_samples(unscored=True)``)."""
    out = dict(batch)
    if pattern == "mri":
        out["has_text"] = torch.zeros_like(batch["has_text"])
        out["tab_mask"] = torch.zeros_like(batch["tab_mask"])
    elif pattern in ("record", "record (no scores)"):
        out["has_image"] = torch.zeros_like(batch["has_image"])
    if pattern in UNSCORED.values():
        out["text"] = batch["text_unscored"]
        out["tab_mask"] = batch["tab_mask"] * (1 - batch["tab_scores"])
    return out


#: No sharpening beyond this: a small validation split without a single error drives the
#: fitted temperature to 0 (every answer certain), which says more about 22 subjects than
#: about the model (the demo fitted 0.05 before there was a bound). It was 0.5 until the
#: demo's MRI-only answers, averaged over 27 shifted copies and trained with modality
#: dropout, turned out that much less sure than they are right: 400 new subjects call for
#: T = 0.26, and at 0.5 their ECE was 0.130; with this bound the validation fit (0.23)
#: reads 0.054 (floor 0.047).
MIN_TEMPERATURE = 0.1
#: No softening beyond this: at 20 every answer is about uniform (the input carries nothing).
MAX_TEMPERATURE = 20.0
#: A temperature fitted on fewer labelled subjects than this is a rough one: 22 subjects
#: fitted the demo model's both-input temperature anywhere from 0.18 to 0.78 (10th-90th
#: percentile over resampled splits of 400 new subjects), 100 from 0.41 to 0.64.
MIN_FIT_SUBJECTS = 50


def fit_temperature(log_probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the NLL of ``softmax(log_probs / T)`` (bounded search
    over log T in [MIN_TEMPERATURE, MAX_TEMPERATURE]; 1.0 when there are too few labelled
    samples)."""
    from scipy.optimize import minimize_scalar

    keep = y >= 0
    log_probs, y = log_probs[keep], y[keep]
    if len(y) < 5 or len(np.unique(y)) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        return _nll(log_probs, y, np.exp(log_t), 0.0)

    best = minimize_scalar(nll, bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)),
                           method="bounded")
    return float(np.exp(best.x))


#: A class bias is fitted beside the temperature only on this many labelled subjects or
#: more (a recalibration cohort, not a validation split of a few dozen), and kept only
#: where it lowers the cross-validated log loss.
MIN_BIAS_SUBJECTS = 100


def _nll(log_probs: np.ndarray, y: np.ndarray, t: float, bias: np.ndarray | float) -> float:
    from scipy.special import log_softmax

    lp = log_softmax(log_probs / t + bias, axis=1)
    return float(-lp[np.arange(len(y)), y].mean())


def fit_temperature_and_bias(log_probs: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Temperature and class bias (the first class's fixed at 0) minimising the NLL."""
    from scipy.optimize import minimize

    # float64: a float32 network output hides the finite-difference step in the temperature
    log_probs = np.asarray(log_probs, dtype=np.float64)
    k = log_probs.shape[1]

    def nll(v: np.ndarray) -> float:
        return _nll(log_probs, y, float(np.exp(v[0])), np.r_[0.0, v[1:]])

    start = np.r_[np.log(fit_temperature(log_probs, y)), np.zeros(k - 1)]
    bounds = [(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE))] + [(-5.0, 5.0)] * (k - 1)
    v = minimize(nll, start, method="L-BFGS-B", bounds=bounds).x
    return float(np.exp(v[0])), np.r_[0.0, v[1:]]


def fit_class_bias(log_probs: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0
                   ) -> tuple[float, list[float] | None]:
    """The temperature alone, or with a class bias added to the scaled logits, whichever
    has the lower log loss on held-out folds of these subjects.

    Args:
        log_probs: uncalibrated log-probabilities, one row per labelled subject.
        y: class indices.
        folds: stratified folds of the comparison.
        seed: of the folds.

    Returns:
        ``(temperature, bias)``, ``bias`` ``None`` when the temperature alone does as well
        (or there are fewer than ``MIN_BIAS_SUBJECTS`` subjects, or a class is missing).
    """
    from sklearn.model_selection import StratifiedKFold

    t = fit_temperature(log_probs, y)
    counts = np.bincount(y, minlength=log_probs.shape[1])
    if len(y) < MIN_BIAS_SUBJECTS or counts.min() < folds:
        return t, None
    plain = biased = 0.0
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(
            log_probs, y):
        plain += _nll(log_probs[held], y[held], fit_temperature(log_probs[fit], y[fit]),
                      np.zeros(log_probs.shape[1])) * len(held)
        biased += _nll(log_probs[held], y[held],
                       *fit_temperature_and_bias(log_probs[fit], y[fit])) * len(held)
    if biased >= plain:
        return t, None
    t, bias = fit_temperature_and_bias(log_probs, y)
    return t, [round(float(b), 4) for b in bias]


class FeatureDistribution(BaseModel):
    """Where the training features lie, for one input pattern."""

    mean: list[float]
    precision: list[list[float]]
    threshold: float = Field(description=f"{OOD_MARGIN:g} x the validation {OOD_PERCENTILE:g}th "
                             "percentile of the Mahalanobis distance.")

    def distance(self, features: np.ndarray) -> np.ndarray:
        diff = np.atleast_2d(features) - np.asarray(self.mean)
        return np.sqrt(np.einsum("ij,jk,ik->i", diff, np.asarray(self.precision), diff)
                       .clip(min=0))


def fit_feature_distribution(train: np.ndarray, val: np.ndarray) -> FeatureDistribution:
    """Ledoit-Wolf shrinkage (stable with fewer samples than dimensions); the threshold
    is the validation percentile (the training distances are optimistic)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(train)
    dist = FeatureDistribution(mean=lw.location_.tolist(), precision=lw.precision_.tolist(),
                               threshold=0.0)
    reference = val if len(val) >= 5 else train
    threshold = OOD_MARGIN * float(np.percentile(dist.distance(reference), OOD_PERCENTILE))
    return dist.model_copy(update={"threshold": threshold})


class Calibration(BaseModel):
    """Per input pattern: the temperature, the validation ECE before and after, and the
    training feature distribution. Stored in the checkpoint as plain data."""

    temperature: dict[str, float] = Field(default_factory=dict)
    bias: dict[str, list[float]] = Field(default_factory=dict, description="Per pattern, "
                                         "a class bias added after the temperature "
                                         "(`mediad calibrate --class-bias` only).")
    ece_before: dict[str, float] = Field(default_factory=dict)
    ece_after: dict[str, float] = Field(default_factory=dict)
    n_validation: int = 0
    n_fitted: dict[str, int] = Field(default_factory=dict, description="Labelled subjects "
                                     "each pattern's temperature was fitted on (checkpoints "
                                     "without it: ``n_validation``).")
    fitted_on: str = Field("validation split", description="Where the temperatures were "
                           "fitted: the validation split after training, or a "
                           "recalibration cohort (``mediad calibrate``).")
    features: dict[str, FeatureDistribution] = Field(default_factory=dict)

    def at_bound(self) -> list[str]:
        """The patterns whose temperature sits at a bound of the search: the validation
        split could not pin it down (no errors to learn from, or no signal at all), so
        their probabilities deserve less trust than the others'."""
        return [p for p, t in self.temperature.items()
                if min(abs(np.log(t / MIN_TEMPERATURE)), abs(np.log(t / MAX_TEMPERATURE)))
                < 0.01]

    def roughly_fitted(self) -> dict[str, int]:
        """The patterns whose temperature was fitted on fewer than ``MIN_FIT_SUBJECTS``
        subjects, with how many: their probabilities are rough estimates."""
        return {p: n for p in self.temperature
                if (n := self.n_fitted.get(p, self.n_validation)) < MIN_FIT_SUBJECTS}

    def calibrate(self, log_probs: np.ndarray, patterns: Sequence[str]) -> np.ndarray:
        """Log-probabilities divided by each row's pattern temperature, plus its class bias
        if it has one, renormalised."""
        from scipy.special import log_softmax

        log_probs = np.asarray(log_probs)
        t = np.array([self.temperature.get(p, 1.0) for p in patterns])[:, None]
        bias = np.array([self.bias.get(p, [0.0] * log_probs.shape[1]) for p in patterns])
        return log_softmax(log_probs / t + bias, axis=1)

    def out_of_distribution(self, features: np.ndarray | None, patterns: Sequence[str]
                            ) -> list[tuple[float, float] | None]:
        """``(distance, threshold)`` per row (``None`` without a fitted distribution)."""
        if features is None:
            return [None] * len(patterns)
        out: list[tuple[float, float] | None] = []
        scored = {v: k for k, v in UNSCORED.items()}
        for f, p in zip(features, patterns, strict=True):
            # a pattern refitted after training has no distribution of its own: its scored
            # pattern's is the nearest there is
            dist = self.features.get(p) or self.features.get(scored.get(p, p))
            out.append(None if dist is None else (float(dist.distance(f)[0]), dist.threshold))
        return out


def fit_calibration(per_pattern: dict[str, dict[str, Any]]) -> Calibration:
    """From each pattern's validation ``y`` / ``log_probs`` and ``train_features`` /
    ``val_features``: temperatures, ECE before and after, feature distributions."""
    from scipy.special import softmax

    from mediad.metrics import expected_calibration_error

    cal = Calibration()
    for pattern, d in per_pattern.items():
        y, lp = d["y"], d["log_probs"]
        keep = y >= 0
        t = fit_temperature(lp, y)
        cal.temperature[pattern] = round(t, 4)
        if keep.sum():
            cal.n_validation = cal.n_fitted[pattern] = int(keep.sum())
            cal.ece_before[pattern] = round(expected_calibration_error(
                y[keep], softmax(lp[keep], axis=1)), 4)
            cal.ece_after[pattern] = round(expected_calibration_error(
                y[keep], softmax(lp[keep] / t, axis=1)), 4)
        if d.get("train_features") is not None and len(d["train_features"]) > 2:
            cal.features[pattern] = fit_feature_distribution(d["train_features"],
                                                             d["val_features"])
    return cal
