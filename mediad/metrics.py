"""Classification metrics and the subject-level bootstrap, shared by training, evaluation and
the ablation (one implementation, so every number in the product is computed the same way).

Point estimates come from scikit-learn. Confidence intervals come from a percentile
bootstrap that resamples *subjects*, not rows: a subject's visits are not independent, so
they enter or leave a resample together. Comparisons between two models use a *paired*
bootstrap (the same resampled subjects for both). ``scipy.stats.bootstrap`` resamples
observations and cannot keep a subject's visits together, so this is the documented
equivalent: the same percentile interval, over clusters.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "balanced_accuracy",
    "bootstrap_metrics",
    "bootstrap_statistic",
    "classification_metrics",
    "classification_report",
    "ece_noise_floor",
    "expected_calibration_error",
    "paired_bootstrap",
    "percentile_ci",
    "site_balanced_accuracy",
    "subject_resamples",
]


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Balanced accuracy, NaN when fewer than two classes are present (a useless resample)."""
    from sklearn.metrics import balanced_accuracy_score

    if len(np.unique(y)) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y, pred))


def site_balanced_accuracy(y: np.ndarray, pred: np.ndarray, sites: np.ndarray) -> float:
    """Balanced accuracy as if every class came from every site in the same proportion.

    Each class's recall is averaged over the sites that have it, weighted by the sites'
    overall frequency P(s), instead of by P(s | class). A site shortcut earns recall only
    where a class is common, so it scores no better here than a guess; a model that reads
    the disease scores the same at every site. Unknown sites (-1) form one group. This is
    the score checkpoint selection uses, so the epoch that leans on the site most is not
    the one kept.
    """
    y, pred, sites = np.asarray(y), np.asarray(pred), np.asarray(sites)
    if len(np.unique(y)) < 2:
        return float("nan")
    groups, counts = np.unique(sites, return_counts=True)
    p_site = dict(zip(groups.tolist(), (counts / counts.sum()).tolist(), strict=True))
    recalls = []
    for c in np.unique(y):
        num = den = 0.0
        for g in np.unique(sites[y == c]):
            rows = (y == c) & (sites == g)
            num += p_site[g] * float((pred[rows] == c).mean())
            den += p_site[g]
        recalls.append(num / den)
    return float(np.mean(recalls))


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """ECE on the top-class confidence (scikit-learn has no ECE; its bins are the usual)."""
    conf, pred = proba.max(1), proba.argmax(1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return float(ece)


def ece_noise_floor(proba: np.ndarray, bins: int = 15, draws: int = 200, seed: int = 0
                    ) -> float:
    """The ECE that a perfectly calibrated model with these probabilities would read on
    this many subjects: the mean ECE over labels drawn from the probabilities themselves
    (consistency resampling, Bröcker & Smith 2007).

    Binned ECE is biased upwards on small samples: with 120 subjects and 15 bins, a model
    whose probabilities are exactly right reads about 0.09. An ECE is only evidence of
    miscalibration where it stands clear of this floor.

    Args:
        proba: ``(n, classes)`` probabilities, rows summing to 1.
        bins: as in :func:`expected_calibration_error`.
        draws: label draws averaged.
        seed: seeds an owned RNG.
    """
    proba = np.asarray(proba, dtype=float)
    if not len(proba):
        return float("nan")
    rng = np.random.default_rng(seed)
    cum = np.cumsum(proba / proba.sum(1, keepdims=True), axis=1)
    out = []
    for _ in range(draws):
        u = rng.random(len(proba))[:, None]
        y = np.minimum((u > cum).sum(1), proba.shape[1] - 1)
        out.append(expected_calibration_error(y, proba, bins))
    return float(np.mean(out))


def classification_metrics(y: np.ndarray, log_probs: np.ndarray, classes: Sequence[str]
                           ) -> dict[str, Any]:
    """The few figures a training run logs per epoch (unlabelled rows, ``y < 0``, skipped)."""
    from sklearn.metrics import accuracy_score, log_loss

    keep = y >= 0
    y, log_probs = y[keep], log_probs[keep]
    if len(y) == 0:
        return {"n": 0}
    pred = log_probs.argmax(1)
    return {
        "n": len(y),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "accuracy": float(accuracy_score(y, pred)),
        "log_loss": float(log_loss(y, np.exp(log_probs), labels=list(range(len(classes))))),
    }


def classification_report(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]
                          ) -> dict[str, float]:
    """Point estimates (scikit-learn metrics) for one sample of subjects."""
    from sklearn.metrics import (
        accuracy_score,
        brier_score_loss,
        f1_score,
        matthews_corrcoef,
        multilabel_confusion_matrix,
        roc_auc_score,
    )

    labels = list(range(len(classes)))
    pred = proba.argmax(1)
    out = {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "macro_f1": f1_score(y, pred, labels=labels, average="macro", zero_division=0),
        "mcc": matthews_corrcoef(y, pred),
        "brier": brier_score_loss(y, proba if len(labels) > 2 else proba[:, 1], labels=labels),
        "ece": expected_calibration_error(y, proba),
    }
    present = np.unique(y)
    if len(present) == len(labels):
        out["auc_macro_ovr"] = (roc_auc_score(y, proba[:, 1]) if len(labels) == 2 else
                                roc_auc_score(y, proba, multi_class="ovr", labels=labels))
    for k, name in enumerate(classes):
        tn, fp, fn, tp = multilabel_confusion_matrix(y, pred, labels=labels)[k].ravel()
        for metric, num, den in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp),
                                 ("ppv", tp, tp + fp), ("npv", tn, tn + fn)):
            out[f"{metric}_{name}"] = num / den if den else float("nan")
        if 0 < (y == k).sum() < len(y):
            out[f"auc_{name}"] = roc_auc_score(y == k, proba[:, k])
    return {k: float(v) for k, v in out.items()}


def subject_resamples(groups: Sequence[Any] | np.ndarray, n_boot: int, seed: int
                      ) -> list[np.ndarray]:
    """Row indices of ``n_boot`` bootstrap resamples that draw whole subjects.

    Args:
        groups: the subject of each row (rows of one subject stay together).
        n_boot: number of resamples.
        seed: seeds an owned RNG, so the same call gives the same resamples.

    Returns:
        One index array per resample, with every row of each drawn subject.
    """
    _, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if len(
        inverse) else []
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(members), len(members))
        out.append(np.concatenate([members[g] for g in drawn]) if len(drawn) else drawn)
    return out


def percentile_ci(values: Sequence[float]) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the finite values (NaN when there are none)."""
    arr = np.array([v for v in values if np.isfinite(v)])
    if not len(arr):
        return float("nan"), float("nan")
    lo, hi = np.percentile(arr, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], n_rows: int,
                        groups: Sequence[Any] | None = None, n_boot: int = 1000,
                        seed: int = 0) -> dict[str, float]:
    """A statistic of the rows with a percentile 95 % CI over subject resamples.

    Args:
        statistic: maps row indices to a number (NaN for a resample it cannot score).
        n_rows: number of rows.
        groups: each row's subject (default: every row its own subject).
        n_boot: resamples; 0 gives the point estimate with NaN bounds.
        seed: RNG seed.
    """
    groups = list(range(n_rows)) if groups is None else groups
    point = statistic(np.arange(n_rows))
    lo, hi = percentile_ci([statistic(i) for i in subject_resamples(groups, n_boot, seed)])
    return {"value": float(point), "ci_low": lo, "ci_high": hi}


def paired_bootstrap(statistic_a: Callable[[np.ndarray], float],
                     statistic_b: Callable[[np.ndarray], float], n_rows: int,
                     groups: Sequence[Any] | None = None, n_boot: int = 1000,
                     seed: int = 0) -> dict[str, float]:
    """``a - b`` on the same subjects, with a paired percentile 95 % CI.

    Both statistics see the same resampled subjects in every draw, so what the subjects
    share (how hard they are) cancels out of the difference.
    """
    return bootstrap_statistic(lambda i: statistic_a(i) - statistic_b(i), n_rows, groups,
                               n_boot, seed)


def bootstrap_metrics(y: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                      n_boot: int = 1000, seed: int = 0,
                      groups: Sequence[Any] | None = None) -> dict[str, dict[str, float]]:
    """Each metric of :func:`classification_report` with a subject-level 95 % CI."""
    point = classification_report(y, proba, classes)
    groups = list(range(len(y))) if groups is None else groups
    draws: dict[str, list[float]] = {k: [] for k in point}
    with warnings.catch_warnings():  # resamples missing a class warn; their NaNs are dropped
        warnings.simplefilter("ignore")
        for idx in subject_resamples(groups, n_boot, seed):
            if len(np.unique(y[idx])) < 2:
                continue
            for k, v in classification_report(y[idx], proba[idx], classes).items():
                if k in draws:
                    draws[k].append(v)
    out = {}
    for k, v in point.items():
        lo, hi = percentile_ci(draws[k])
        out[k] = {"value": v, "ci_low": lo, "ci_high": hi}
    return out
