"""Every page through Streamlit's AppTest, including the bad-upload paths."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.hostile import header_bomb

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


@contextmanager
def second_model(app_env: Path, temperature: dict[str, float] | None = None
                 ) -> Iterator[str]:
    """A second model in the sidebar, ``second-model`` (the demo model's weights, or its
    checkpoint with other temperatures), removed afterwards; yields its sidebar label."""
    from mediad.engine.checkpoint import load_checkpoint, save_checkpoint

    folder = app_env / "second-model"
    folder.mkdir()
    ck = load_checkpoint(app_env / "demo-model" / "best.pt")
    if temperature is not None:
        ck["calibration"]["temperature"] = temperature
    save_checkpoint(folder / "best.pt", ck)
    try:
        yield "second-model"
    finally:
        shutil.rmtree(folder)


def choose_model(at: AppTest, label: str) -> None:
    models = at.sidebar.selectbox[0]
    models.set_value(models.options.index(label)).run()


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


def uploader(at: AppTest, prefix: str) -> Any:
    return next(u for u in at.file_uploader if u.label.startswith(prefix))


def mri_bytes(app_env: Path) -> bytes:
    row = (app_env / "demo-shifted" / "manifest.csv").read_text().splitlines()[1].split(",")
    return (app_env / "demo-shifted" / row[2]).read_bytes()


def predicted(at: AppTest) -> dict[str, Any]:
    return json.loads(next(c.value for c in at.code if c.value.startswith("{")))


def uploads_on_disk() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mediad-upload-*"))


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Any:
    """Every page test: the app leaves no upload folder in the temporary directory."""
    before = uploads_on_disk()
    yield
    assert uploads_on_disk() <= before


def test_patient_bad_uploads_keep_the_app_working(app_env: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    at = page("patient")
    mri = uploader(at, "T1 MRI")
    mri.set_value(("notes.tar.gz", b"hello", "application/gzip")).run()
    assert "'notes.tar.gz' is not a .nii.gz or .nii file" in texts(at)
    uploader(at, "T1 MRI").set_value(("scan.nii.gz", b"\x1f\x8b" + b"x" * 100,
                                      "application/gzip")).run()
    assert "This MRI cannot be used: the gzip data is truncated or corrupt" in texts(at)
    flat = nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4))
    uploader(at, "T1 MRI").set_value(("flat.nii.gz", gzip.compress(flat.to_bytes()),
                                      "application/gzip")).run()
    assert "is a 2D image" in texts(at)
    bomb = header_bomb(tmp_path / "bomb.nii").read_bytes()
    uploader(at, "T1 MRI").set_value(("bomb.nii", bomb, "application/octet-stream")).run()
    assert "declares 4000x4000x4000 voxels" in texts(at) and not at.exception
    uploader(at, "Record file (JSON").set_value(
        ("r.json", b'{"subject_id": "S1", "mmse": 45, "age": -3}', "application/json")).run()
    shown = texts(at)
    assert "mmse=45.0: out of range; expected 0 to 30" in shown
    assert "age=-3.0: out of range; expected 18 to 110" in shown
    assert "r.json" in shown and "mediad-upload-" not in shown and tempfile.gettempdir() \
        not in shown  # the user's file name, never an internal path
    monkeypatch.setenv("MEDIAD_MAX_UPLOAD_MB", "0.0001")
    uploader(at, "T1 MRI").set_value(("big.nii.gz", b"\x1f\x8b" + b"0" * 500,
                                      "application/gzip")).run()
    assert "the limit is 0.0001 MB" in texts(at)
    assert not at.exception
    # after all that, a good subject still predicts
    button(at, "Load a demo subject").click().run()
    button(at, "Predict").click().run()
    assert "Probabilities" in texts(at) and not at.exception


def test_refused_mri_after_a_good_one_is_not_used(app_env: Path) -> None:
    """good MRI -> bad MRI -> Predict: the good one is gone, the page says so."""
    at = page("patient")
    uploader(at, "T1 MRI").set_value(("scan.nii.gz", mri_bytes(app_env),
                                      "application/gzip")).run()
    assert "MRI loaded: scan.nii.gz." in texts(at)
    uploader(at, "Record file (JSON").set_value(
        ("r.json", json.dumps({"age": 75, "sex": "female"}).encode(), "application/json")).run()
    button(at, "Predict").click().run()
    assert predicted(at)["inputs_used"]["mri"] is True
    uploader(at, "T1 MRI").set_value(("broken.nii.gz", b"\x1f\x8b" + b"x" * 100,
                                      "application/gzip")).run()
    shown = texts(at)
    assert "MRI loaded" not in shown and "This MRI cannot be used" in shown
    assert "Probabilities" not in shown  # the old answer went with the old MRI
    button(at, "Predict").click().run()
    assert predicted(at)["inputs_used"]["mri"] is False  # record only, as the page shows


def test_removed_mri_is_not_used(app_env: Path) -> None:
    """good MRI -> remove (×) -> Predict: nothing to predict from."""
    at = page("patient")
    uploader(at, "T1 MRI").set_value(("scan.nii.gz", mri_bytes(app_env),
                                      "application/gzip")).run()
    assert not button(at, "Predict").disabled
    uploader(at, "T1 MRI").set_value(None).run()
    assert "MRI loaded" not in texts(at)
    assert button(at, "Predict").disabled


def test_refused_or_removed_record_is_not_used(app_env: Path) -> None:
    """good record -> bad record -> Predict, and good record -> remove -> Predict."""
    at = page("patient")
    good = json.dumps({"age": 75, "sex": "female", "mmse": 22}).encode()
    uploader(at, "Record file (JSON").set_value(("good.json", good, "application/json")).run()
    assert "Record accepted." in texts(at) and not button(at, "Predict").disabled
    uploader(at, "Record file (JSON").set_value(
        ("bad.json", b'{"age": 300}', "application/json")).run()
    shown = texts(at)
    assert "age=300.0: out of range" in shown and "Record accepted." not in shown
    assert button(at, "Predict").disabled  # no MRI, and the refused record is not used
    uploader(at, "Record file (JSON").set_value(("good.json", good, "application/json")).run()
    assert not button(at, "Predict").disabled
    uploader(at, "Record file (JSON").set_value(None).run()
    assert button(at, "Predict").disabled and "Record accepted." not in texts(at)


def test_multi_row_export_offers_a_picker(app_env: Path) -> None:
    at = page("patient")
    csv = (b"RID,PTID,VISCODE,AGE,PTGENDER,MMSE\n1,011_S_0001,bl,70,Female,29\n"
           b"2,011_S_0002,bl,88,Male,12\n")
    uploader(at, "Record file (CSV").set_value(("adnimerge.csv", csv, "text/csv")).run()
    pick = next(s for s in at.selectbox if s.label.startswith("This file holds 2 records"))
    pick.set_value(1).run()
    button(at, "Predict").click().run()
    assert "MMSE 12" in predicted(at)["summary"] and not at.exception


def test_latin1_record_needs_an_encoding_choice(app_env: Path) -> None:
    at = page("patient")
    csv = "age,sex,notes\n70,F,caf\xe9 au lait daily\n".encode("latin-1")
    uploader(at, "Record file (CSV").set_value(("latin.csv", csv, "text/csv")).run()
    assert "is not utf-8 text" in texts(at)
    next(s for s in at.selectbox if s.key == "enc_csv").set_value("latin-1").run()
    assert "Record accepted." in texts(at) and not at.exception


def test_patient_form_validates(app_env: Path) -> None:
    at = page("patient")
    at.number_input[0].set_value(70.0)
    next(b for b in at.button if b.label == "Use this record").click().run()
    assert "Record accepted." in texts(at)
    button(at, "Predict").click().run()
    assert "Probabilities" in texts(at) and not at.exception
    # an age and nothing else: answered and calibrated as a record without scores, and said
    assert predicted(at)["input_pattern"] == "record (no scores)"
    assert "holds none of the cognitive scores" in texts(at)


def test_cohort_page_evaluates(app_env: Path) -> None:
    at = page("cohort")
    box = next(s for s in at.selectbox if s.label.startswith("Manifest"))
    assert "demo-shifted/manifest.csv" in box.options
    box.set_value(app_env / "demo-shifted" / "manifest.csv").run()
    button(at, "Run evaluation").click().run()
    assert not at.exception, at.exception
    assert any("balanced accuracy" in m.label for m in at.metric)
    assert {d.label for d in at.get("download_button")} >= {"predictions.csv", "report.html"}


def test_cohort_results_say_which_model_made_them(app_env: Path) -> None:
    """evaluate with one model -> choose another in the sidebar -> the results shown are
    said to be the first model's, not passed off as the chosen one's."""
    with second_model(app_env) as other:
        at = page("cohort")
        box = next(s for s in at.selectbox if s.label.startswith("Manifest"))
        box.set_value(app_env / "demo-shifted" / "manifest.csv").run()
        button(at, "Run evaluation").click().run()
        assert "Results of demo-model" in texts(at)
        assert not any("not from" in w.value for w in at.warning)
        choose_model(at, other)
        assert any(f"come from demo-model, not from {other}" in w.value for w in at.warning)
        choose_model(at, "demo-model")
        assert not any("not from" in w.value for w in at.warning)


def test_another_model_prepares_the_mri_again_and_drops_the_answer(app_env: Path) -> None:
    """MRI + predict with one model -> choose another in the sidebar -> the answer is gone
    (it was the first model's) and the MRI is prepared for the new one -> predict again."""
    with second_model(app_env) as other:
        at = page("patient")
        uploader(at, "T1 MRI").set_value(("scan.nii.gz", mri_bytes(app_env),
                                          "application/gzip")).run()
        button(at, "Predict").click().run()
        assert "Probabilities" in texts(at)
        prepared = at.session_state["prepared"]
        choose_model(at, other)
        assert not at.exception, at.exception
        shown = texts(at)
        assert "Probabilities" not in shown and "MRI loaded: scan.nii.gz." in shown
        assert at.session_state["prepared"] is not prepared  # prepared again, for this one
        button(at, "Predict").click().run()
        assert "Probabilities" in texts(at)


def test_cohort_page_refuses_bad_upload(app_env: Path) -> None:
    at = page("cohort")
    at.file_uploader[0].set_value(("cohort.csv", b"foo,bar\n1,2\n", "text/csv")).run()
    assert "a manifest needs an 'mri_path' column" in texts(at) and not at.exception
    assert button(at, "Run evaluation").disabled


def _manifest(app_env: Path, paths: list[str]) -> bytes:
    lines = (app_env / "demo-shifted" / "manifest.csv").read_text().splitlines()
    head = lines[0].split(",")
    col = head.index("mri_path")
    out = [lines[0]]
    for line, path in zip(lines[1:], paths, strict=False):
        cells = line.split(",")
        cells[col] = path
        out.append(",".join(cells))
    return ("\n".join(out) + "\n").encode()


def test_cohort_upload_paths_are_relative_to_the_data_folder(app_env: Path) -> None:
    rows = (app_env / "demo-shifted" / "manifest.csv").read_text().splitlines()[1:6]
    relative = [f"demo-shifted/{r.split(',')[2]}" for r in rows]
    at = page("cohort")
    at.file_uploader[0].set_value(("mine.csv", _manifest(app_env, relative), "text/csv")).run()
    assert "cannot be evaluated" not in texts(at)
    before = set((app_env / "evaluations").glob("*")) if (app_env / "evaluations").is_dir() \
        else set()
    button(at, "Run evaluation").click().run()
    assert not at.exception, at.exception
    assert {d.label for d in at.get("download_button")} >= {"predictions.csv", "report.html"}
    created = set((app_env / "evaluations").glob("*")) - before
    assert len(created) == 1
    report = (created.pop() / "report.md").read_text()
    assert "mine.csv" in report and "mediad-upload-" not in report
    assert not list(app_env.glob("*.csv")) and not (app_env / ".uploads").exists()


def test_cohort_upload_refuses_paths_outside_the_data_folder(app_env: Path, tmp_path: Path
                                                            ) -> None:
    rows = (app_env / "demo-shifted" / "manifest.csv").read_text().splitlines()[1:4]
    real = app_env / "demo-shifted" / rows[0].split(",")[2]
    paths = [str(real), "../../etc/passwd.nii", f"demo-shifted/{rows[2].split(',')[2]}"]
    at = page("cohort")
    at.file_uploader[0].set_value(("evil.csv", _manifest(app_env, paths), "text/csv")).run()
    shown = texts(at)
    assert "absolute paths are not allowed here" in shown
    assert "the path leaves the data folder" in shown and "2 problem(s)" in shown
    assert button(at, "Run evaluation").disabled


def test_refused_cohort_run_leaves_no_folder(app_env: Path) -> None:
    """The training cohort's own subjects: refused (how many, not which), nothing written."""
    at = page("cohort")
    box = next(s for s in at.selectbox if s.label.startswith("Manifest"))
    train_manifest = app_env / "train-cohort" / "manifest.csv"
    box.set_value(train_manifest).run()
    before = sorted((app_env / "evaluations").glob("*")) if (app_env / "evaluations"
                                                            ).is_dir() else []
    button(at, "Run evaluation").click().run()
    shown = texts(at)
    assert "Refused:" in shown and "were in the model's training data" in shown
    ids = {line.split(",")[0] for line in train_manifest.read_text().splitlines()[1:]}
    assert not any(i in shown for i in ids)  # no membership oracle
    after = sorted((app_env / "evaluations").glob("*")) if (app_env / "evaluations"
                                                           ).is_dir() else []
    assert after == before


def test_ablations_page(app_env: Path) -> None:
    """Every run found is offered (the data folder's, and the results committed under the
    working directory); the one chosen is the one shown."""
    at = page("ablations")
    at.selectbox[0].set_value(app_env / "ablation-run").run()
    assert "site reversed: not different from concat" in texts(at)
    assert not at.exception


def test_model_card(app_env: Path) -> None:
    at = page("model_card")
    shown = texts(at)
    assert "Research use only" in shown and "Intended use and limits" in shown
    assert "Not a medical device" in shown and "kind: mediad" in shown
    # which inputs the model reads, the label-defining scores named
    inputs = at.table[1].value
    assert inputs.loc["MRI", "used"] == "yes"
    assert "mmse" in inputs.loc["label-defining scores", "used"]
    assert any("label-blind" in b.label for b in at.button)
    # trained without scanner augmentation: the card says what its MRI path may read
    assert any("without scanner augmentation" in w.value for w in at.warning)
    assert any("without pose augmentation" in i.value for i in at.info)
    # calibration per input pattern, as a table of its own
    assert "Calibration per input pattern" in shown
    table = next(d.value for d in at.dataframe if "temperature" in d.value.columns)
    assert set(table.index) == {"MRI and record", "MRI only", "record only",
                                "MRI and record without scores", "record without scores only"}
    # fitted on the demo's few validation subjects: the card says the temperatures are rough
    assert (table["fitted on (subjects)"] < 50).all()
    assert any("are rough" in w.value for w in at.warning)


def test_model_card_warns_of_a_temperature_at_its_bound(app_env: Path) -> None:
    """A checkpoint whose MRI-only temperature sits at the search's bound (the demo's did):
    the card says the split could not pin it down; the unbounded ones get no warning. The
    model is rewritten in place between the two (retrained into its folder), and the
    page must read the new file, not the cached old one."""
    from mediad.engine.calibration import MIN_TEMPERATURE
    from mediad.engine.checkpoint import load_checkpoint, save_checkpoint

    with second_model(app_env, {"mri+record": 0.7, "mri": 0.5, "record": 0.8}) as other:
        at = page("model_card")
        choose_model(at, other)
        assert not any("at a bound" in w.value for w in at.warning)
        # retrained into the same folder while the app runs: the page reads the new file
        path = app_env / other / "best.pt"
        ck = load_checkpoint(path)
        ck["calibration"]["temperature"]["mri"] = MIN_TEMPERATURE
        save_checkpoint(path, ck)
        at.run()
        bound = [w.value for w in at.warning if "at a bound" in w.value]
        assert len(bound) == 1 and "MRI only temperature" in bound[0]


def test_model_card_of_a_recalibrated_model(app_env: Path) -> None:
    """demo model (its test split's ECE shown) -> a copy recalibrated on another cohort: the
    card says where its temperatures come from and drops the training run's test ECE,
    which belonged to the temperatures it replaced."""
    at = page("model_card")
    table = next(d.value for d in at.dataframe if "temperature" in d.value.columns)
    assert "test ECE after" in table.columns
    with second_model(app_env, {"mri+record": 0.7, "mri": 0.5, "record": 0.8}) as other:
        from mediad.engine.checkpoint import load_checkpoint, save_checkpoint

        path = app_env / other / "best.pt"
        ck = load_checkpoint(path)
        ck["calibration"]["fitted_on"] = "200 labelled subjects of a recalibration cohort"
        ck["calibration"]["n_fitted"] = {"mri+record": 190, "mri": 190, "record": 200}
        ck["calibration"]["bias"] = {"mri": [0.0, 1.5, -0.25]}  # --class-bias
        save_checkpoint(path, ck)
        at.run()  # the sidebar lists the models found at each run
        choose_model(at, other)
        table = next(d.value for d in at.dataframe if "temperature" in d.value.columns)
        assert "test ECE after" not in table.columns
        assert table.loc["MRI only", "temperature"] == 0.5
        assert "fitted on 200 labelled subjects of a recalibration cohort" in texts(at)
        assert list(table["fitted on (subjects)"]) == [190, 190, 200]
        assert list(table["class bias"]) == ["none", "+0.00 / +1.50 / -0.25", "none"]
        assert "population's correction" in texts(at)
        assert not any("are rough" in w.value for w in at.warning)


def test_raw_mri_shows_its_preprocessing_and_the_mni_switch_skips_it(app_env: Path) -> None:
    """raw MRI -> preprocessing view with QC -> tick 'already in MNI space' -> the view goes,
    the same MRI is still in use -> Predict uses it -> untick -> preprocessed again."""
    at = page("patient")
    uploader(at, "T1 MRI").set_value(("scan.nii.gz", mri_bytes(app_env),
                                      "application/gzip")).run()
    shown = texts(at)
    assert "Preprocessing" in shown and "MRI loaded: scan.nii.gz." in shown
    assert any(m.label == "Overlap with template" for m in at.metric)
    assert "registration" in shown  # the steps that ran
    assert "smoothed on purpose" in shown  # the softer registered brain is explained
    switch = next(c for c in at.checkbox if c.label.startswith("Already brain-extracted"))
    switch.check().run()
    shown = texts(at)
    assert "MRI loaded: scan.nii.gz." in shown and "Overlap with template" not in [
        m.label for m in at.metric]
    button(at, "Predict").click().run()
    assert predicted(at)["inputs_used"]["mri"] is True and predicted(at)["image_qc"] is None
    next(c for c in at.checkbox if c.label.startswith("Already brain-extracted")).uncheck().run()
    assert any(m.label == "Overlap with template" for m in at.metric) and not at.exception
