"""Recalibration on a labelled held-out cohort (``mediad calibrate``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax

from mediad.data.records import COGNITIVE_SCORES, has_no_scores, load_manifest
from mediad.engine.calibration import fit_temperature
from mediad.engine.predictor import Predictor
from mediad.engine.recalibrate import MIN_SUBJECTS, recalibrate
from mediad.errors import LeakageError, MediADError


def _nll(log_p: np.ndarray, y: np.ndarray, t: float) -> float:
    return float(-log_softmax(log_p / t, axis=1)[np.arange(len(y)), y].mean())


def test_temperatures_are_refitted_on_the_cohort_and_the_rest_is_kept(
        tiny_run: Path, in_distribution_cohort: Path, tmp_path: Path) -> None:
    source = tiny_run / "best.pt"
    before_bytes = source.read_bytes()
    out = tmp_path / "recalibrated" / "best.pt"
    result = recalibrate(source, in_distribution_cohort / "manifest.csv", out,
                         min_subjects=10)
    assert source.read_bytes() == before_bytes  # the trained checkpoint is left alone
    old, new = Predictor(source), Predictor(out)
    assert set(result.patterns) == {"mri+record", "mri", "record", "mri+record (no scores)",
                                    "record (no scores)"}
    # checked independently: the record-only temperature is the NLL fit of the network's
    # own record-only answers on the labelled subjects
    rows = [r for r in load_manifest(in_distribution_cohort / "manifest.csv").rows
            if r.diagnosis in old.classes]
    y = np.array([old.classes.index(r.diagnosis) for r in rows])
    log_p = old.run_network([(None, r) for r in rows])["log_p"]
    expected = fit_temperature(log_p, y)
    assert new.calibration.temperature["record"] == pytest.approx(expected, rel=1e-3)
    # and the one without scores, of the same records with their scores hidden
    hidden = [r.model_copy(update=dict.fromkeys(COGNITIVE_SCORES)) for r in rows]
    expected = fit_temperature(old.run_network([(None, r) for r in hidden])["log_p"], y)
    assert new.calibration.temperature["record (no scores)"] == pytest.approx(expected,
                                                                              rel=1e-3)
    refit = result.patterns["record"]
    assert refit.n == len(rows) and refit.new_temperature is not None
    # 20 subjects are still few: answers keep saying their probability is rough
    assert new.calibration.n_fitted["record"] == len(rows)
    assert new.calibration.roughly_fitted()["record"] == len(rows)
    assert _nll(log_p, y, refit.new_temperature) <= _nll(log_p, y, refit.old_temperature)
    # only the temperatures change: network, features and thresholds stay as trained
    assert new.calibration.features == old.calibration.features
    for name, value in old.model.state_dict().items():
        assert np.array_equal(value.cpu().numpy(), new.model.state_dict()[name].cpu().numpy())
    assert "recalibration cohort" in new.calibration.fitted_on
    assert old.calibration.fitted_on == "validation split"
    # the new temperatures are what predictions use
    p = new.predict(None, rows[0])
    lp = new.calibration.calibrate(new.run_network([(None, rows[0])])["log_p"], ["record"])
    np.testing.assert_allclose(list(p.probabilities.values()), np.exp(lp[0]), atol=1e-5)
    # a second refit on the same cohort starts from the same network: same temperatures
    again = recalibrate(out, in_distribution_cohort / "manifest.csv", out, min_subjects=10)
    assert {p: r.new_temperature for p, r in again.patterns.items()} == {
        p: r.new_temperature for p, r in result.patterns.items()}


def test_records_without_scores_are_fitted_only_under_their_own_patterns(
        tiny_run: Path, in_distribution_cohort: Path, tmp_path: Path) -> None:
    """A record that holds no score is answered under the patterns without scores, so it
    joins their fit and stays out of the scored patterns' fit."""
    cohort = tmp_path / "cohort"
    shutil.copytree(in_distribution_cohort, cohort)
    table = pd.read_csv(cohort / "manifest.csv")
    table.loc[:4, [f for f in COGNITIVE_SCORES if f in table]] = np.nan
    table.to_csv(cohort / "manifest.csv", index=False)
    result = recalibrate(tiny_run / "best.pt", cohort / "manifest.csv", tmp_path / "out.pt",
                         min_subjects=10)
    n = len(table)
    assert {p: r.n for p, r in result.patterns.items()} == {
        "mri+record": n - 5, "mri": n, "record": n - 5, "mri+record (no scores)": n,
        "record (no scores)": n}
    old = Predictor(tiny_run / "best.pt")
    rows = load_manifest(cohort / "manifest.csv").rows
    scored = [r for r in rows if not has_no_scores(r)]
    assert len(scored) == n - 5
    y = np.array([old.classes.index(r.diagnosis) for r in scored])
    expected = fit_temperature(old.run_network([(None, r) for r in scored])["log_p"], y)
    assert Predictor(tmp_path / "out.pt").calibration.temperature["record"] == pytest.approx(
        expected, rel=1e-3)


def test_a_class_bias_when_asked_for_and_predictions_use_it(
        tiny_run: Path, tmp_path: Path) -> None:
    """120 records without MRIs: the record-only pattern has enough subjects for a class
    bias; asked for, whatever the cross-validation decides is what the checkpoint holds
    and what predictions use."""
    from mediad.data.simulate import SimulationConfig, simulate_cohort
    from mediad.engine.calibration import MIN_BIAS_SUBJECTS, fit_class_bias

    cohort = simulate_cohort(SimulationConfig(n_subjects=120, seed=6, spacing=6.0,
                                              missing_mri_rate=0.5, subject_offset=8000),
                             tmp_path / "records")
    table = pd.read_csv(cohort / "manifest.csv", dtype=str)
    table["mri_path"] = ""  # records only: no MRI to render or preprocess
    table.to_csv(cohort / "manifest.csv", index=False)
    out = tmp_path / "recalibrated" / "best.pt"
    plain = recalibrate(tiny_run / "best.pt", cohort / "manifest.csv", out)
    assert plain.patterns["record"].new_bias is None  # off unless asked for
    assert not Predictor(out).calibration.bias
    result = recalibrate(tiny_run / "best.pt", cohort / "manifest.csv", out, class_bias=True)
    old, new = Predictor(tiny_run / "best.pt"), Predictor(out)
    rows = [r for r in load_manifest(cohort / "manifest.csv").rows
            if r.diagnosis in old.classes]
    assert len(rows) >= MIN_BIAS_SUBJECTS and result.patterns["record"].n == len(rows)
    y = np.array([old.classes.index(r.diagnosis) for r in rows])
    log_p = old.run_network([(None, r) for r in rows])["log_p"]
    t, bias = fit_class_bias(log_p, y)
    assert new.calibration.temperature["record"] == pytest.approx(t, rel=1e-3)
    assert result.patterns["record"].new_bias == bias == new.calibration.bias.get("record")
    assert (bias is None) == result.patterns["record"].note.startswith("no class bias")
    p = new.predict(None, rows[0])
    expected = log_softmax(log_p[:1] / t + np.asarray(bias or [0.0] * 3), axis=1)[0]
    np.testing.assert_allclose(list(p.probabilities.values()), np.exp(expected), atol=1e-4)


def test_too_few_subjects_keep_their_temperature(tiny_run: Path, in_distribution_cohort: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "best.pt"
    result = recalibrate(tiny_run / "best.pt", in_distribution_cohort / "manifest.csv", out)
    old = Predictor(tiny_run / "best.pt").calibration
    assert all(r.n < MIN_SUBJECTS for r in result.patterns.values())
    for pattern, r in result.patterns.items():
        assert r.new_temperature is None and "fewer than" in r.note
        assert Predictor(out).calibration.temperature[pattern] == old.temperature[pattern]


def test_training_subjects_and_unlabelled_cohorts_are_refused(
        tiny_run: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "best.pt"
    with pytest.raises(LeakageError, match="were in the model's training data"):
        recalibrate(tiny_run / "best.pt", tiny_cohort / "manifest.csv", out)
    unlabelled = tmp_path / "unlabelled.csv"
    frame = pd.read_csv(tiny_cohort / "manifest.csv", dtype=str, keep_default_na=False)
    frame["diagnosis"] = ""
    frame["mri_path"] = [str(tiny_cohort / p) if p else "" for p in frame["mri_path"]]
    frame.to_csv(unlabelled, index=False)
    with pytest.raises(MediADError, match="recalibration needs labels"):
        recalibrate(tiny_run / "best.pt", unlabelled, out)
    assert not out.exists()  # nothing written for a refused run


def test_an_unusable_mri_is_counted_and_its_subject_kept_for_the_record(
        tiny_run: Path, in_distribution_cohort: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(in_distribution_cohort / "manifest.csv", dtype=str,
                        keep_default_na=False)
    frame["mri_path"] = [str(in_distribution_cohort / p) if p else "" for p in frame["mri_path"]]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a NIfTI file at all")
    first = frame.index[frame["mri_path"] != ""][0]
    frame.loc[first, "mri_path"] = str(broken)
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    n_mri = int((frame["mri_path"] != "").sum())
    result = recalibrate(tiny_run / "best.pt", tmp_path / "manifest.csv", tmp_path / "best.pt",
                         batch_size=1)
    assert result.skipped_mri == 1
    assert result.patterns["mri+record"].n == result.patterns["mri"].n == n_mri - 1
    assert result.patterns["record"].n == len(frame)
