"""Answers that mean what they say (issue 12): calibration per input pattern and flags."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.special import log_softmax, softmax

from mediad.data.records import COGNITIVE_SCORES, load_manifest
from mediad.engine.calibration import (
    Calibration,
    fit_calibration,
    fit_class_bias,
    fit_feature_distribution,
    fit_temperature,
    fit_temperature_and_bias,
    input_pattern,
)
from mediad.engine.predictor import Predictor
from mediad.errors import MediADError
from mediad.metrics import expected_calibration_error


def _overconfident(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), and the log-probabilities of softmax(scale * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.0, (n, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])
    return log_softmax(scale * z, axis=1), y


def test_temperature_undoes_overconfidence() -> None:
    lp, y = _overconfident(3000, 3.0, 0)
    t = fit_temperature(lp, y)
    assert 2.6 < t < 3.4
    before = expected_calibration_error(y, np.exp(lp))
    after = expected_calibration_error(y, softmax(lp / t, axis=1))
    assert before > 0.1 and after < 0.03
    assert fit_temperature(lp[:3], y[:3]) == 1.0  # too few to fit: left alone


def test_an_under_confident_model_is_sharpened_and_a_perfect_split_is_bounded() -> None:
    """Shift-averaged MRI-only answers are far less sure than right (T ~0.25 measured)."""
    from mediad.engine.calibration import MIN_TEMPERATURE

    lp, y = _overconfident(4000, 0.25, 3)
    t = fit_temperature(lp, y)
    assert 0.2 < t < 0.3
    assert expected_calibration_error(y, softmax(lp / t, axis=1)) < 0.03
    perfect = log_softmax(np.eye(3)[y[:30]] * 2.0, axis=1)  # every answer right
    t_perfect = fit_temperature(perfect, y[:30])
    assert t_perfect == pytest.approx(MIN_TEMPERATURE, rel=1e-3)
    # such a temperature, and one where the input carries nothing, are said to be at a bound
    rng = np.random.default_rng(4)
    t_noise = fit_temperature(log_softmax(rng.normal(0, 1, (3000, 3)), axis=1),
                              rng.integers(0, 3, 3000))
    cal = Calibration(temperature={"mri+record": t, "mri": t_perfect, "record": t_noise})
    assert cal.at_bound() == ["mri", "record"]


def test_each_input_pattern_gets_its_own_temperature() -> None:
    sure, y1 = _overconfident(2000, 3.0, 1)
    shy, y2 = _overconfident(2000, 0.5, 2)
    cal = fit_calibration({"mri+record": {"y": y1, "log_probs": sure},
                           "mri": {"y": y2, "log_probs": shy}})
    assert cal.temperature["mri+record"] > 2 and cal.temperature["mri"] < 0.7
    assert cal.ece_after["mri+record"] < cal.ece_before["mri+record"]
    out = cal.calibrate(np.stack([sure[0], shy[0]]), ["mri+record", "mri"])
    np.testing.assert_allclose(np.exp(out).sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0], log_softmax(sure[0] / cal.temperature["mri+record"]))
    assert input_pattern(True, True) == "mri+record" and input_pattern(False, True) == "record"


def test_an_answer_that_leans_to_one_class_gets_a_bias_only_where_it_helps() -> None:
    """A temperature cannot move probability between classes; a class bias can (the demo
    model's MRI-only answers gave CN 0.57 on average where 0.47 were CN). It is fitted only
    on a cohort large enough, and kept only where it lowers the held-out log loss."""
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.0, (800, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])
    leaning = log_softmax(0.4 * z + np.array([0.9, -0.9, 0.0]), axis=1)
    t, bias = fit_class_bias(leaning, y)
    assert bias is not None and bias[0] == 0.0 and bias[1] - bias[2] > 0.5
    cal = Calibration(temperature={"mri": t}, bias={"mri": bias})
    fixed = np.exp(cal.calibrate(leaning, ["mri"] * len(y)))
    plain = softmax(leaning / fit_temperature(leaning, y), axis=1)
    frequency = np.bincount(y, minlength=3) / len(y)
    assert np.abs(fixed.mean(0) - frequency).max() < 0.02 < np.abs(plain.mean(0)
                                                                   - frequency).max()
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, plain)
    # a network's float32 output fits the same temperature as float64 (a finite-difference
    # step in float32 left the temperature where it started)
    t32, _ = fit_temperature_and_bias(leaning.astype(np.float32), y)
    assert t32 == pytest.approx(t, rel=1e-3) and abs(t - fit_temperature(leaning, y)) > 0.05
    # no lean: at most the sampling's own small one; too few subjects: no bias at all
    _, none = fit_class_bias(log_softmax(0.4 * z, axis=1), y)
    assert none is None or max(abs(b) for b in none) < 0.25
    assert fit_class_bias(leaning[:60], y[:60])[1] is None
    # a pattern without a bias is scaled by its temperature alone
    both = Calibration(temperature={"mri": t, "record": 2.0}, bias={"mri": bias})
    np.testing.assert_allclose(both.calibrate(leaning[:1], ["record"])[0],
                               log_softmax(leaning[0] / 2.0))


def test_feature_distance_flags_what_lies_far_away() -> None:
    rng = np.random.default_rng(0)
    train, val, new = (rng.normal(0, 1, (n, 8)) for n in (200, 60, 400))
    dist = fit_feature_distribution(train, val)
    assert (dist.distance(new) > dist.threshold).mean() <= 0.05  # typical: unflagged
    assert (dist.distance(new + 6.0) > dist.threshold).all()  # far: flagged
    cal = Calibration(features={"mri": dist})
    (near, far) = cal.out_of_distribution(np.stack([new[0], new[0] + 6]), ["mri", "mri"])
    assert near is not None and far is not None and far[0] > far[1] >= near[0]


# ---------------------------------------------------------------------------------------
# On a trained model


@pytest.fixture(scope="module")
def predictor(tiny_run: Path) -> Predictor:
    return Predictor(tiny_run / "best.pt")


def test_training_stores_calibration_and_predictions_use_it(predictor: Predictor,
                                                           tiny_cohort: Path) -> None:
    cal = predictor.calibration
    patterns = {"mri+record", "mri", "record", "mri+record (no scores)", "record (no scores)"}
    assert cal is not None and set(cal.temperature) == patterns
    assert set(cal.features) == patterns
    row = load_manifest(tiny_cohort / "manifest.csv").rows[0]
    both, mri, rec = (predictor.predict(m, r) for m, r in ((row.mri_path, row),
                                                            (row.mri_path, None), (None, row)))
    assert (both.input_pattern, mri.input_pattern, rec.input_pattern) == (
        "mri+record", "mri", "record")
    # a record without any score is answered, and calibrated, as a pattern of its own; one
    # score is enough for the scored pattern
    unscored = row.model_copy(update=dict.fromkeys(COGNITIVE_SCORES))
    assert predictor.predict(row.mri_path, unscored).input_pattern == "mri+record (no scores)"
    assert predictor.predict(None, unscored).input_pattern == "record (no scores)"
    one = unscored.model_copy(update={"faq": 3.0})
    assert predictor.predict(None, one).input_pattern == "record"
    raw = predictor.run_network([(None, unscored)])["log_p"]
    np.testing.assert_allclose(
        list(predictor.predict(None, unscored).probabilities.values()),
        np.exp(cal.calibrate(raw, ["record (no scores)"]))[0], atol=1e-5)
    # its temperature was fitted on the same subjects' records with their scores hidden,
    # which the network reads as it reads a record that never had them
    hidden = predictor.run_network([(None, row)], patterns=["record (no scores)"])
    np.testing.assert_allclose(hidden["log_p_by_pattern"]["record (no scores)"], raw,
                               atol=1e-5)
    assert both.calibrated and both.uncertainty
    for p in (both, mri, rec):
        assert abs(sum(p.probabilities.values()) - 1) < 1e-4
    # the calibrated answer is the network's, divided by the pattern's temperature
    raw = predictor.run_network([(row.mri_path, None)])["log_p"]
    np.testing.assert_allclose(list(mri.probabilities.values()),
                               np.exp(cal.calibrate(raw, ["mri"]))[0], atol=1e-5)


def _write_like(reference: Path, data: np.ndarray, path: Path) -> Path:
    img = nib.load(reference)
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine), str(path))
    return path


def _flag_or_refusal(predictor: Predictor, path: Path) -> str:
    """The reasons a prediction is flagged, or the refusal's message; '' when neither."""
    try:
        pred = predictor.predict(path, None)
    except MediADError as exc:
        return f"refused: {exc}"
    return " | ".join(pred.flags)


def test_patterns_in_one_pass_answer_as_each_pattern_asked_alone(predictor: Predictor,
                                                                 tiny_cohort: Path) -> None:
    """Recalibration scores the MRI-and-record and MRI-only patterns in one pass, each MRI
    encoded once: that must be what a user asking with the MRI alone gets."""
    from mediad.data.records import load_manifest

    rows = [r for r in load_manifest(tiny_cohort / "manifest.csv").rows if r.mri_path][:4]
    both = predictor.run_network([(r.mri_path, r) for r in rows],
                                 patterns=("mri+record", "mri", "record"))
    alone = {"mri+record": [(r.mri_path, r) for r in rows],
             "mri": [(r.mri_path, None) for r in rows], "record": [(None, r) for r in rows]}
    for pattern, items in alone.items():
        np.testing.assert_allclose(both["log_p_by_pattern"][pattern],
                                   predictor.run_network(items)["log_p"], atol=1e-6)
    np.testing.assert_array_equal(both["log_p"], both["log_p_by_pattern"]["mri+record"])


def test_noise_inverted_and_non_brain_volumes_are_flagged(predictor: Predictor,
                                                          tiny_cohort: Path,
                                                          tmp_path: Path) -> None:
    row = load_manifest(tiny_cohort / "manifest.csv").rows[0]
    source = Path(row.mri_path)
    data = np.asarray(nib.as_closest_canonical(nib.load(source)).dataobj, dtype=np.float32)
    ref = tmp_path / "canonical.nii.gz"
    nib.save(nib.as_closest_canonical(nib.load(source)), str(ref))
    inside = data > data.max() * 0.02
    inverted = np.where(inside, data.max() - data, 0)
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.random(data.shape), 1.5).astype(np.float32) * 1000
    zz, yy, xx = np.indices(data.shape)
    c = np.array(data.shape) / 2
    ball = (((np.stack([zz, yy, xx], -1) - c) / (c * 0.6)) ** 2).sum(-1) < 1
    non_brain = np.where(ball, 800.0 + 50 * rng.random(data.shape), 0.0)  # a uniform blob
    found = {name: _flag_or_refusal(predictor, _write_like(ref, vol, tmp_path / f"{name}.nii"))
             for name, vol in (("inverted", inverted), ("noise", noise),
                               ("non_brain", non_brain))}
    print(found)
    for name, reasons in found.items():
        assert reasons, f"{name} volume was neither flagged nor refused"
    assert "not a T1" in found["inverted"] or "far from the training" in found["inverted"]


def test_typical_new_subjects_are_not_flagged(predictor: Predictor,
                                              in_distribution_cohort: Path) -> None:
    """At least 95 % of new subjects drawn like the training cohort carry no flag."""
    rows = load_manifest(in_distribution_cohort / "manifest.csv").rows
    preds = predictor.predict_many([(r.mri_path, r) for r in rows])
    flagged = [p.flags for p in preds if p.flags]
    print(f"{len(flagged)} of {len(rows)} flagged; distances "
          f"{sorted(round(p.ood_distance or 0, 1) for p in preds)}")
    assert len(flagged) <= 0.05 * len(rows), flagged


def test_the_uncertainty_sentence_never_contradicts_itself() -> None:
    """A top of 0.5997 read "no class reaches 0.6 (top 0.60)"; 0.999 must not read 1.00."""
    from mediad.engine.predictor import CONFIDENT, probability_text, uncertainty_statement

    low = uncertainty_statement(0.599718, [], True, "mri")
    assert low.startswith(f"Uncertain: no class reaches {CONFIDENT} (top 0.59)"), low
    assert "(top 0.57)" in uncertainty_statement(0.57, [], True, "mri")
    sure = uncertainty_statement(0.9996, [], True, "mri+record")
    assert "probability > 0.99 for mri+record inputs" in sure and "1.00" not in sure
    # the page's numbers are written the same way as the sentence
    assert [probability_text(p) for p in (0.5997, 0.57, 0.6, 0.995, 0.004)] == [
        "0.59", "0.57", "0.60", "> 0.99", "< 0.01"]
    assert "no calibration" in uncertainty_statement(0.8, [], False, "record")
    flagged = uncertainty_statement(0.95, ["far from the training data"], True, "mri")
    assert flagged == "Do not rely on this answer: far from the training data."
    # caveats are pointed to, whether the answer is sure or not; a flag still comes first
    assert uncertainty_statement(0.9, [], True, "mri", ["a", "b"]) == (
        "Calibrated probability 0.90 for mri inputs; mind its 2 caveats.")
    assert uncertainty_statement(0.5, [], True, "mri", ["a"]).endswith(
        "do not settle the question; mind its 1 caveat.")
    assert uncertainty_statement(0.9, ["x"], True, "mri", ["a"]).startswith("Do not rely")
