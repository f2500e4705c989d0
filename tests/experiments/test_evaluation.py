"""Cohort evaluation: metrics by hand, reproducible CIs, resume, no labels, leakage, shards."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mediad.data.records import load_manifest
from mediad.engine.predictor import Predictor
from mediad.errors import LeakageError, MediADError
from mediad.experiments.evaluation import evaluate, predict_stream
from mediad.metrics import (
    bootstrap_metrics,
    classification_report,
    ece_noise_floor,
    expected_calibration_error,
)

CLASSES = ("CN", "MCI", "AD")


def onehot(pred: list[int], confidence: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), 3), (1 - confidence) / 2)
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_metrics_match_a_hand_checked_case() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = onehot([0, 1, 1, 1, 2, 0])
    m = classification_report(y, proba, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # CN: tp 1, fn 1, fp 1 (subject 6), tn 3
    assert m["sensitivity_CN"] == pytest.approx(0.5)
    assert m["specificity_CN"] == pytest.approx(3 / 4)
    assert m["ppv_CN"] == pytest.approx(1 / 2)
    assert m["npv_CN"] == pytest.approx(3 / 4)
    assert m["sensitivity_MCI"] == 1.0 and m["ppv_MCI"] == pytest.approx(2 / 3)
    # Brier (mean over subjects of the summed squared error): right ones 0.06, wrong 1.46
    assert m["brier"] == pytest.approx((4 * 0.06 + 2 * 1.46) / 6)


def test_ece_by_hand() -> None:
    y = np.array([0, 1, 2, 0])
    assert expected_calibration_error(y, onehot([0, 1, 2, 0], 0.8)) == pytest.approx(0.2)
    assert expected_calibration_error(y, onehot([1, 1, 2, 2], 0.5)) == pytest.approx(0.0)


def test_ece_noise_floor_is_what_exact_probabilities_read() -> None:
    """The floor is the ECE of a model whose probabilities are right: it vanishes for
    certain ones, matches labels drawn from the probabilities, and shrinks with n."""
    rng = np.random.default_rng(0)
    assert ece_noise_floor(onehot([0, 1, 2, 0], 1.0)) == pytest.approx(0.0)
    proba = rng.dirichlet(np.ones(3) * 0.7, 120)
    drawn = [expected_calibration_error(np.array([rng.choice(3, p=p) for p in proba]), proba)
             for _ in range(200)]
    floor = ece_noise_floor(proba, seed=1)
    assert floor == pytest.approx(np.mean(drawn), abs=0.01)
    assert floor > 0.05  # at 120 subjects, well above the 0.05 an issue asked for
    assert ece_noise_floor(rng.dirichlet(np.ones(3) * 0.7, 1200)) < floor / 2
    # a model that is wrong at confidence 0.9 reads far above its floor
    labels = np.array([rng.choice(3, p=p) for p in proba])
    sharp = np.eye(3)[proba.argmax(1)] * 0.85 + 0.05
    assert expected_calibration_error(labels, sharp) > ece_noise_floor(sharp) + 0.1


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    a = bootstrap_metrics(y, proba, CLASSES, n_boot=100, seed=1)
    b = bootstrap_metrics(y, proba, CLASSES, n_boot=100, seed=1)
    c = bootstrap_metrics(y, proba, CLASSES, n_boot=100, seed=2)
    assert a == b and a["balanced_accuracy"] != c["balanced_accuracy"]
    ba = a["balanced_accuracy"]
    assert ba["ci_low"] <= ba["value"] <= ba["ci_high"]


def test_full_evaluation_outputs(tiny_run: Path, held_out_cohort: Path, tmp_path: Path) -> None:
    result = evaluate(tiny_run / "best.pt", held_out_cohort / "manifest.csv", tmp_path,
                      n_bootstrap=50)
    for name in ("predictions.csv", "metrics.json", "report.md", "report.html",
                 "confusion_matrix.png", "roc_curves.png", "reliability.png",
                 "subgroups.png"):
        assert (tmp_path / name).is_file(), name
    frame = pd.read_csv(tmp_path / "predictions.csv")
    assert len(frame) == 16 and frame.subject_id.is_unique
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["subgroups"]) >= {"sex", "age band", "APOE4 alleles", "site"}
    assert "site_label_nmi" in metrics["cohort"]
    report = (tmp_path / "report.md").read_text()
    assert "Research use only" in report and "Label-defining inputs were used" in report
    assert not any(s in report for s in frame.subject_id)  # no identifiers in the report
    assert result.metrics is not None
    # calibration and flags, per row and counted in the report
    assert (frame.calibrated == 1).all() and set(frame.flagged) <= {0, 1}
    assert f"Flagged (quality or out of distribution): {int(frame.flagged.sum())}" in report
    assert "calibrated per input pattern" in report


def test_a_folder_is_reused_only_for_the_same_checkpoint_and_manifest(
        tiny_run: Path, held_out_cohort: Path, tmp_path: Path) -> None:
    """checkpoint A -> folder; A again: reused; checkpoint B, or an edited manifest, into
    the same folder: refused by name, A's predictions untouched; a folder without a stamp
    (an earlier version): refused; a new folder: B runs."""
    from mediad.engine.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "out"
    manifest = tmp_path / "m.csv"
    frame = pd.read_csv(held_out_cohort / "manifest.csv", dtype=str, keep_default_na=False)
    frame["mri_path"] = [str(held_out_cohort / p) for p in frame.mri_path]
    frame.to_csv(manifest, index=False)
    evaluate(tiny_run / "best.pt", manifest, out, n_bootstrap=10)
    first = (out / "predictions.csv").read_bytes()
    evaluate(tiny_run / "best.pt", manifest, out, n_bootstrap=10)  # the same: reused
    assert (out / "predictions.csv").read_bytes() == first
    other = load_checkpoint(tiny_run / "best.pt")
    other["model_state"] = {k: v * 1.01 if v.is_floating_point() else v
                            for k, v in other["model_state"].items()}
    save_checkpoint(tmp_path / "other.pt", other)
    with pytest.raises(MediADError, match=r"another checkpoint.*predictions\.csv"):
        evaluate(tmp_path / "other.pt", manifest, out, n_bootstrap=10)
    frame.iloc[:8].to_csv(manifest, index=False)
    with pytest.raises(MediADError, match="another manifest"):
        evaluate(tiny_run / "best.pt", manifest, out, n_bootstrap=10)
    assert (out / "predictions.csv").read_bytes() == first
    (out / "predictions.stamp.json").unlink()
    with pytest.raises(MediADError, match="without a record"):
        evaluate(tiny_run / "best.pt", manifest, out, n_bootstrap=10)
    evaluate(tmp_path / "other.pt", manifest, tmp_path / "new", n_bootstrap=10)
    assert len(pd.read_csv(tmp_path / "new" / "predictions.csv")) == 8


def test_flagged_rows_are_counted_with_their_reasons(tiny_run: Path, held_out_cohort: Path,
                                                     tmp_path: Path) -> None:
    """An inverted-contrast MRI in a cohort: its row is flagged and the report says why."""
    frame = pd.read_csv(held_out_cohort / "manifest.csv", dtype=str)
    frame["mri_path"] = [str(held_out_cohort / p) for p in frame.mri_path]
    img = nib.as_closest_canonical(nib.load(frame.mri_path[0]))
    data = np.asarray(img.dataobj, dtype=np.float32)
    bad = tmp_path / "inverted.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > 0.02 * data.max(), data.max() - data, 0),
                             img.affine), str(bad))
    frame.loc[0, "mri_path"] = str(bad)
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    evaluate(tiny_run / "best.pt", tmp_path / "manifest.csv", tmp_path / "out", n_bootstrap=10)
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert rows["flagged"][0] == 1 and "not a T1" in rows["flags"][0]
    assert "carry a quality or out-of-distribution flag" in (
        tmp_path / "out" / "report.md").read_text()


class _Fake:
    """Stands in for a Predictor in the streaming tests: counts what it is asked."""

    classes: ClassVar[list[str]] = list(CLASSES)

    def __init__(self, real: Predictor, crash_after: int | None = None) -> None:
        self.real, self.crash_after, self.calls = real, crash_after, 0

    def predict_many(self, items: list) -> list:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.real.predict_many(items)


def test_resume_after_a_crash_mid_write(tiny_run: Path, held_out_cohort: Path,
                                        tmp_path: Path) -> None:
    rows = load_manifest(held_out_cohort / "manifest.csv").rows
    real = Predictor(tiny_run / "best.pt")
    out = tmp_path / "predictions.csv.partial"
    with pytest.raises(KeyboardInterrupt):
        predict_stream(_Fake(real, crash_after=2), rows, out, batch_size=4)
    with open(out, "a") as fh:
        fh.write(rows[8].subject_id + ",bl,CN,C")  # torn line of a crash mid-write
    fake = _Fake(real)
    assert predict_stream(fake, rows, out, batch_size=4) == 8
    assert fake.calls == 2  # only the missing subjects were predicted
    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [r["subject_id"] for r in got] == [r.subject_id for r in rows]
    assert all(r["p_CN"] for r in got)


def test_without_labels_only_predicts(tiny_run: Path, held_out_cohort: Path,
                                      tmp_path: Path) -> None:
    frame = pd.read_csv(held_out_cohort / "manifest.csv", dtype=str)
    frame["diagnosis"] = ""
    frame["mri_path"] = [str(held_out_cohort / p) for p in frame.mri_path]
    frame.to_csv(tmp_path / "unlabelled.csv", index=False)
    result = evaluate(tiny_run / "best.pt", tmp_path / "unlabelled.csv", tmp_path / "out",
                      n_bootstrap=10)
    assert result.metrics is None and not (tmp_path / "out" / "metrics.json").exists()
    assert len(pd.read_csv(tmp_path / "out" / "predictions.csv")) == 16
    assert "predictions only" in (tmp_path / "out" / "report.md").read_text()


def test_leakage_is_refused_unless_forced(tiny_run: Path, tiny_cohort: Path,
                                          tmp_path: Path) -> None:
    with pytest.raises(LeakageError, match="were in the model's training data"):
        evaluate(tiny_run / "best.pt", tiny_cohort / "manifest.csv", tmp_path / "a")
    assert not (tmp_path / "a" / "predictions.csv").exists()
    result = evaluate(tiny_run / "best.pt", tiny_cohort / "manifest.csv", tmp_path / "b",
                      force=True, n_bootstrap=10)
    assert any("were in the training data (--force)" in w for w in result.warnings)


def test_an_unusable_mri_does_not_stop_the_cohort(tiny_run: Path, held_out_cohort: Path,
                                                  tmp_path: Path) -> None:
    frame = pd.read_csv(held_out_cohort / "manifest.csv", dtype=str, keep_default_na=False)
    frame["mri_path"] = [str(held_out_cohort / p) for p in frame.mri_path]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8bnot really")
    frame.loc[3, "mri_path"] = str(broken)
    frame.to_csv(tmp_path / "m.csv", index=False)
    result = evaluate(tiny_run / "best.pt", tmp_path / "m.csv", tmp_path / "out",
                      n_bootstrap=10)
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert "gzip data is truncated or corrupt" in pred.error[3]
    assert (pred.error == "").sum() == 15
    assert any("could not be predicted" in w for w in result.warnings)


@pytest.mark.slow
def test_two_rank_sharded_evaluation_equals_single(tiny_run: Path, held_out_cohort: Path,
                                                   tmp_path: Path) -> None:
    evaluate(tiny_run / "best.pt", held_out_cohort / "manifest.csv", tmp_path / "one",
             n_bootstrap=50)
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mediad",
                    "evaluate", "--checkpoint", str(tiny_run / "best.pt"), "--manifest",
                    str(held_out_cohort / "manifest.csv"), "--out", str(tmp_path / "two"),
                    "--bootstrap", "50", "--batch-size", "3"],
                   check=True, capture_output=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    one = pd.read_csv(tmp_path / "one" / "predictions.csv")
    two = pd.read_csv(tmp_path / "two" / "predictions.csv")
    # batching changes float summation order: probabilities agree to 1e-5, and the distance,
    # written to 3 decimals, to one unit in its last place (3.8765 may round either way)
    pd.testing.assert_series_equal(one.pop("ood_distance"), two.pop("ood_distance"),
                                   check_exact=False, atol=1.001e-3)
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-5)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())["metrics"]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())["metrics"]
    assert m1.keys() == m2.keys()
    for key in m1:
        # the probabilities agree to 1e-5, so do the metrics
        assert m1[key] == pytest.approx(m2[key], nan_ok=True, abs=1e-5), key
    assert not list((tmp_path / "two").glob("*.partial"))
