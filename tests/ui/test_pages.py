"""Every page through Streamlit's AppTest, including the bad-upload paths."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

UI = Path(__file__).resolve().parents[2] / "ui"
TIMEOUT = 120


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(UI / f"{name}.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def button(at: AppTest, label: str) -> object:
    return next(b for b in at.button if b.label == label)


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success",
                                  "code", "subheader", "title") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_app_entry_runs(app_env: Path) -> None:
    at = AppTest.from_file(str(UI / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and "Research use only" in texts(at)


def test_patient_demo_subject_predicts(app_env: Path) -> None:
    at = page("patient")
    assert "Research use only" in texts(at)
    button(at, "Load a demo subject").click().run()
    button(at, "Predict").click().run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "Probabilities" in shown and "Clinical summary" in shown
    assert "Demographics:" in shown and "Inputs used" in shown
    subject = json.loads(next(c.value for c in at.code if c.value.startswith("{")))
    assert set(subject["probabilities"]) == {"CN", "MCI", "AD"}
    # no identifier in what the page shows
    ids = (app_env / "demo-shifted" / "manifest.csv").read_text().splitlines()[1].split(",")[0]
    assert ids not in shown


def test_patient_bad_uploads_keep_the_app_working(app_env: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    at = page("patient")
    uploaders = {u.label: u for u in at.file_uploader}
    mri = uploaders["T1 MRI (NIfTI .nii or .nii.gz)"]
    mri.set_value(("notes.tar.gz", b"hello", "application/gzip")).run()
    assert "'notes.tar.gz' is not a .nii.gz or .nii file" in texts(at)
    at.file_uploader[0].set_value(("scan.nii.gz", b"\x1f\x8b" + b"x" * 100,
                                   "application/gzip")).run()
    assert "This MRI cannot be used: the gzip data is truncated or corrupt" in texts(at)
    flat = nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4))
    at.file_uploader[0].set_value(("flat.nii.gz", gzip.compress(flat.to_bytes()),
                                   "application/gzip")).run()
    assert "is a 2D image" in texts(at)
    json_up = next(u for u in at.file_uploader if u.label == "One record (JSON)")
    json_up.set_value(("r.json", b'{"subject_id": "S1", "mmse": 45, "age": -3}',
                       "application/json")).run()
    shown = texts(at)
    assert "mmse=45.0: out of range; expected 0 to 30" in shown
    assert "age=-3.0: out of range; expected 18 to 110" in shown
    monkeypatch.setenv("MEDIAD_MAX_UPLOAD_MB", "0.0001")
    at.file_uploader[0].set_value(("big.nii.gz", b"\x1f\x8b" + b"0" * 500,
                                   "application/gzip")).run()
    assert "the limit is 0.0001 MB" in texts(at)
    assert not at.exception
    # after all that, a good subject still predicts
    button(at, "Load a demo subject").click().run()
    button(at, "Predict").click().run()
    assert "Probabilities" in texts(at) and not at.exception


def test_patient_form_validates(app_env: Path) -> None:
    at = page("patient")
    at.number_input[0].set_value(70.0)
    next(b for b in at.button if b.label == "Use this record").click().run()
    assert "Record accepted." in texts(at)
    button(at, "Predict").click().run()
    assert "Probabilities" in texts(at) and not at.exception


def test_cohort_page_evaluates(app_env: Path) -> None:
    at = page("cohort")
    box = next(s for s in at.selectbox if s.label.startswith("Manifest"))
    assert "demo-shifted/manifest.csv" in box.options
    box.set_value(app_env / "demo-shifted" / "manifest.csv").run()
    button(at, "Run evaluation").click().run()
    assert not at.exception, at.exception
    assert any("balanced accuracy" in m.label for m in at.metric)
    assert {d.label for d in at.get("download_button")} >= {"predictions.csv", "report.html"}


def test_cohort_page_refuses_bad_upload(app_env: Path) -> None:
    at = page("cohort")
    at.file_uploader[0].set_value(("cohort.csv", b"foo,bar\n1,2\n", "text/csv")).run()
    button(at, "Run evaluation").click().run()
    assert "a manifest needs an 'mri_path' column" in texts(at) and not at.exception


def test_ablations_page(app_env: Path) -> None:
    at = page("ablations")
    assert "no clear difference between mediad and concat" in texts(at)
    assert not at.exception


def test_model_card(app_env: Path) -> None:
    at = page("model_card")
    shown = texts(at)
    assert "Research use only" in shown and "Intended use and limits" in shown
    assert "Not a medical device" in shown and "kind: mediad" in shown
