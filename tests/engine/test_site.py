"""Site handling (issue 11): the site is used in training only, and only where it matters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mediad.data.records import load_manifest
from mediad.engine.predictor import Predictor
from mediad.engine.samples import balance_weights
from mediad.metrics import balanced_accuracy, site_balanced_accuracy


def _confounded(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three sites, three classes; site s recruits mostly class s."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    sites = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 3, n))
    return labels, sites


def _weighted_joint(labels: np.ndarray, sites: np.ndarray, w: np.ndarray) -> np.ndarray:
    joint = np.zeros((3, 3))
    np.add.at(joint, (sites, labels), w)
    return joint / joint.sum()


def test_balance_weights_make_the_site_independent_of_the_diagnosis() -> None:
    labels, sites = _confounded()
    raw = _weighted_joint(labels, sites, np.ones(len(labels)))
    assert np.abs(raw - np.outer(raw.sum(1), raw.sum(0))).max() > 0.1  # confounded
    w = balance_weights(labels, sites, 3)
    joint = _weighted_joint(labels, sites, w)
    # the weighted table is P(s) x uniform(d): the shortcut no longer pays
    np.testing.assert_allclose(joint, np.outer(joint.sum(1), np.full(3, 1 / 3)), atol=0.02)
    assert w.mean() == np.float32(1.0) or abs(w.mean() - 1) < 1e-5


def test_balance_weights_change_nothing_on_a_site_balanced_cohort() -> None:
    """Every site with the same class mix: the site weights equal the class weights."""
    labels = np.tile(np.repeat([0, 1, 1, 2, 2, 2], 1), 30)
    sites = np.repeat([0, 1, 2], 60)
    np.testing.assert_allclose(balance_weights(labels, sites, 3),
                               balance_weights(labels, sites, 3, by_site=False), rtol=1e-5)
    # and unknown sites fall back to the class weights
    np.testing.assert_allclose(balance_weights(labels, np.full(180, -1), 3),
                               balance_weights(labels, sites, 3, by_site=False), rtol=1e-5)


def test_site_balanced_accuracy_does_not_reward_the_shortcut() -> None:
    labels, sites = _confounded(900, 1)
    shortcut = sites.copy()  # "predict the class the site recruits most"
    assert balanced_accuracy(labels, shortcut) > 0.75
    assert site_balanced_accuracy(labels, shortcut, sites) < 0.45  # about chance
    honest = np.where(np.random.default_rng(2).random(len(labels)) < 0.8, labels,
                      (labels + 1) % 3)
    assert abs(site_balanced_accuracy(labels, honest, sites)
               - balanced_accuracy(labels, honest)) < 0.05


def test_trained_back_door_reads_the_site_but_prediction_needs_none(tiny_run: Path,
                                                                    tiny_cohort: Path) -> None:
    """Trained on a confounded cohort that records sites: P(Y | X, s) differs between the
    sites for the same subject, while P(Y | do(X)) is the same with or without a site."""
    predictor = Predictor(tiny_run / "best.pt")
    model = predictor.model
    assert predictor.config.model.sites == ("SITE-A", "SITE-B", "SITE-C")
    assert model.back_door is not None and model.back_door.prior.shape == (3,)
    rows = load_manifest(tiny_cohort / "manifest.csv").rows[:4]
    items = [(r.mri_path, r) for r in rows]
    run = predictor.run_network(items)
    batch = {k: torch.as_tensor(np.stack([np.asarray(s[k]) for s in run["samples"]]))
             for k in run["samples"][0] if k != "image"}
    batch["image"] = torch.stack([predictor.load_image(r.mri_path).tensor for r in rows])
    batch["has_image"] = torch.ones(len(rows))
    with torch.inference_mode():
        outs = [model({**batch, "site": torch.full((len(rows),), s)}) for s in (-1, 0, 1, 2)]
    for out in outs[1:]:
        torch.testing.assert_close(out.log_probs, outs[0].log_probs)
    conditional = torch.stack([o.aux["conditional_logits"] for o in outs[1:]])
    assert (conditional - conditional.mean(0)).abs().max() > 1e-3
    # what predict() returns is that same site-free answer (averaged over image shifts)
    with torch.inference_mode():
        averaged = model.predict({**batch, "site": torch.full((len(rows),), -1)})
    np.testing.assert_allclose(run["log_p"], averaged.log_probs.numpy(), atol=1e-5)
