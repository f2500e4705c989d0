"""The command line as a user meets it: exit codes and messages, never a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mediad.cli import app
from mediad.data.records import has_no_scores, load_manifest
from mediad.engine.predictor import Predictor
from mediad.experiments import demo

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_simulate_validate_split(tmp_path: Path) -> None:
    code, output = run("simulate", tmp_path / "c", "--n-subjects", 6, "--spacing", 8,
                       "--seed", 1)
    assert code == 0 and "6 subjects" in output and "NMI" in output
    code, output = run("validate", tmp_path / "c")
    assert code == 0 and "OK" in output and "6 MRI(s) checked: 0 error(s)" in output
    code, output = run("split", tmp_path / "c" / "manifest.csv", "--out", tmp_path / "s.json")
    assert code == 0 and json.loads((tmp_path / "s.json").read_text())["train"]


def test_user_mistakes_exit_2_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("keep me")
    code, output = run("simulate", tmp_path / "c", "--n-subjects", 3)
    assert code == 2 and "already exists and is not empty" in output
    assert (tmp_path / "c" / "x").read_text() == "keep me"  # nothing lost
    code, output = run("simulate", tmp_path / "d", "--shape", "64,64")
    assert code == 2 and "expected three sizes" in output
    code, output = run("simulate", tmp_path / "d", "--shift", "sideways")
    assert code == 2 and "shift" in output and "sideways" in output
    code, output = run("simulate", tmp_path / "d", "--confounding", "2")
    assert code == 2 and not (tmp_path / "d").exists()
    code, output = run("split", tmp_path / "missing.csv")
    assert code == 2 and "file not found" in output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        ("subject_id,notes\nS1,caf\xe9\n".encode("latin-1"), "not utf-8 text"),
        (b"subject_id,age,age\nS1,70,71\n", "appear more than once: 'age'"),
        (b"subject_id,age,mmse\nS1,-3,45\nS1,70,20\n",
         "age=-3.0: out of range; expected 18 to 110"),
    ],
)
def test_validate_reports_bad_tables(tmp_path: Path, content: bytes, expected: str) -> None:
    p = tmp_path / "records.csv"
    p.write_bytes(content)
    code, output = run("validate", p)
    assert code == 1 and expected in output and "FAILED" in output


def test_validate_lists_all_problems(tmp_path: Path) -> None:
    p = tmp_path / "records.csv"
    p.write_text("subject_id,age,mmse,EXTRA\nS1,-3,45,x\nS1,70,20,y\n")
    code, output = run("validate", p)
    assert code == 1
    assert "age=-3.0" in output and "mmse=45.0" in output and "duplicate" in output
    assert "3 error(s)" in output and "EXTRA" in output


def test_schemas_are_up_to_date() -> None:
    root = Path(__file__).resolve().parents[1]
    code, output = run("schemas", "--check", "--out", root / "data_schemas")
    assert code == 0, output


def test_schema_drift_is_detected(tmp_path: Path) -> None:
    code, _ = run("schemas", "--out", tmp_path)
    assert code == 0
    target = tmp_path / "clinical_record.schema.json"
    target.write_text(target.read_text().replace('"maximum": 30', '"maximum": 31'))
    code, output = run("schemas", "--check", "--out", tmp_path)
    assert code == 2 and "clinical_record.schema.json" in output


def _tiny_recipe(source: Path, out: Path) -> Path:
    """A demo recipe at 32^3, d_model 16, one epoch (every ``*epochs`` field set to 1)."""
    text = re.sub(r"shape: \[\d+, \d+, \d+\]", "shape: [32, 32, 32]", source.read_text())
    text = re.sub(r"epochs: \d+", "epochs: 1", text).replace("d_model: 64", "d_model: 16")
    assert "epochs: 1\n" in text and "shape: [32, 32, 32]" in text
    out.write_text(text)
    return out


def test_demo_builds_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"n_subjects": 16, "spacing": 8.0}
    monkeypatch.setattr(demo, "DEMO_COHORT", demo.DEMO_COHORT.model_copy(update=small))
    monkeypatch.setattr(demo, "DEMO_CALIBRATION",
                        demo.DEMO_CALIBRATION.model_copy(update=small | {"n_subjects": 12}))
    monkeypatch.setattr(demo, "DEMO_CONFIG", _tiny_recipe(demo.DEMO_CONFIG,
                                                          tmp_path / "demo.yaml"))
    code, output = run("demo", "--data-dir", tmp_path / "data")
    assert code == 0 and "Built the demo cohort" in output and "research use only" in output
    assert "trained" in output and "test balanced accuracy" in output
    # then its temperatures are refitted on a cohort of new subjects (12 here: too few, so
    # each is kept and said to be)
    data = tmp_path / "data"
    report = json.loads((data / "demo-model" / demo.CALIBRATION_REPORT).read_text())
    assert {p: r["new_temperature"] for p, r in report["patterns"].items()} == {
        "mri+record": None, "mri": None, "record": None, "mri+record (no scores)": None,
        "record (no scores)": None}
    assert "refitted on new subjects" in output and "-> kept (n=12)" in output
    cal_ids = {r.subject_id for r in load_manifest(
        data / demo.DEMO_CALIBRATION_FOLDER / "manifest.csv").rows}
    demo_ids = {r.subject_id for r in load_manifest(data / "demo-cohort" / "manifest.csv").rows}
    assert len(cal_ids) == 12 and not cal_ids & demo_ids
    assert "label-blind" not in output and not (tmp_path / "data" / demo.LABEL_BLIND_FOLDER
                                                ).exists()
    code, output = run("demo", "--data-dir", tmp_path / "data", "--label-blind")
    assert code == 0 and "Reusing the demo cohort" in output and "Valid: 16 subjects" in output
    assert "reusing" in output and "MMSE and CDR-SB left out" in output
    blind = Predictor(tmp_path / "data" / demo.LABEL_BLIND_FOLDER / "best.pt").inputs()
    assert blind["label-defining scores"] == "none (label-blind)"
    assert "mmse" not in blind["summary fields"] and "cdr_sb" not in blind["record fields"]
    full = Predictor(tmp_path / "data" / "demo-model" / "best.pt").inputs()
    assert full["label-defining scores"] == "mmse, cdr_sb" and full["MRI"] == "yes"


def test_demo_reference_builds_the_augmented_model_beside_the_demo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--reference`` trains the reference recipe (scanner augmentation, selection on
    every input pattern) on its own cohort, in its own folder, and leaves the demo as is."""
    small = {"n_subjects": 16, "spacing": 8.0}
    monkeypatch.setattr(demo, "DEMO_COHORT", demo.DEMO_COHORT.model_copy(update=small))
    monkeypatch.setattr(demo, "REFERENCE_COHORT",
                        demo.REFERENCE_COHORT.model_copy(update=small))
    monkeypatch.setattr(demo, "REFERENCE_CALIBRATION",
                        demo.REFERENCE_CALIBRATION.model_copy(update=small))
    monkeypatch.setattr(demo, "DEMO_CALIBRATION", demo.DEMO_CALIBRATION.model_copy(update=small))
    monkeypatch.setattr(demo, "DEMO_CONFIG", _tiny_recipe(demo.DEMO_CONFIG,
                                                          tmp_path / "demo.yaml"))
    monkeypatch.setattr(demo, "REFERENCE_CONFIG", _tiny_recipe(demo.REFERENCE_CONFIG,
                                                               tmp_path / "reference.yaml"))
    code, output = run("demo", "--data-dir", tmp_path / "data", "--reference")
    assert code == 0 and "Reference model" in output, output
    data = tmp_path / "data"
    ids = {r.subject_id for r in load_manifest(data / "reference-cohort" / "manifest.csv").rows}
    demo_ids = {r.subject_id for r in load_manifest(data / "demo-cohort" / "manifest.csv").rows}
    assert len(ids) == 16 and not ids & demo_ids  # new subjects, not the demo's
    ref = Predictor(data / demo.REFERENCE_FOLDER / "best.pt")
    assert ref.config.data.augment and ref.config.optim.selection_inputs == "each_pattern"
    assert Path(ref.config.data.manifest).parent.name == "reference-cohort"
    epoch = json.loads((data / demo.REFERENCE_FOLDER / "metrics.jsonl").read_text())
    assert set(epoch["val_patterns"]) == {"mri+record", "mri", "record"}
    own = Predictor(data / "demo-model" / "best.pt").config
    assert Path(own.data.manifest).parent.name == "demo-cohort" and own.optim.epochs == 1
    # then recalibrated on a cohort of its own (16 subjects here: too few, so every
    # temperature is kept, and the checkpoint says it still comes from the validation split)
    report = json.loads((data / demo.REFERENCE_FOLDER / demo.CALIBRATION_REPORT).read_text())
    cal_rows = load_manifest(data / demo.REFERENCE_CALIBRATION_FOLDER / "manifest.csv").rows
    n_mri = sum(bool(r.mri_path) for r in cal_rows)
    # a record without any score is fitted only under the patterns without scores
    scored = [r for r in cal_rows if not has_no_scores(r)]
    assert {p: r["n"] for p, r in report["patterns"].items()} == {
        "mri+record": sum(bool(r.mri_path) for r in scored), "mri": n_mri,
        "record": len(scored), "mri+record (no scores)": n_mri, "record (no scores)": 16}
    assert all("fewer than" in r["note"] for r in report["patterns"].values())
    assert "refitted on new subjects" in output and "-> kept (n=16)" in output
    assert ref.calibration.fitted_on == "validation split"
    assert not {r.subject_id for r in cal_rows} & (ids | demo_ids)
    code, output = run("demo", "--data-dir", data, "--reference")
    assert code == 0 and output.count("reusing") == 2  # both models, nothing retrained


def test_version() -> None:
    code, output = run("--version")
    assert code == 0 and output.startswith("mediad ")


def test_summarize_batch_resumes_and_prints(tmp_path: Path, tiny_cohort: Path) -> None:
    out = tmp_path / "s.jsonl"
    args = ("summarize", tiny_cohort / "manifest.csv", "--out", out, "--backend", "template",
            "--cache-dir", tmp_path / "cache")
    code, output = run(*args)
    assert code == 0 and "24 summaries (0 from an earlier run, 24 now, 0 from the cache)" in output
    out.unlink()
    code, output = run(*args)
    assert code == 0 and "24 from the cache" in output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and all("Demographics:" in r["summary"] for r in rows)
    record = tmp_path / "r.json"
    record.write_text('{"subject_id": "X", "age": 70, "sex": "male", "mmse": 45}')
    code, output = run("summarize", record, "--backend", "template")
    assert code == 2 and "mmse=45.0: out of range" in output
    record.write_text('{"subject_id": "X", "age": 70, "sex": "male"}')
    code, output = run("summarize", record, "--backend", "template", "--exclude", "mmse")
    assert code == 0 and "Age 70 years; male;" in output and "MMSE" not in output


def test_hostile_mris_exit_cleanly(tmp_path: Path, tiny_run: Path) -> None:
    from tests.hostile import gzip_bomb, header_bomb

    bomb = header_bomb(tmp_path / "bomb.nii")
    zbomb = gzip_bomb(tmp_path / "zbomb.nii.gz", extra_bytes=64 << 20)
    for path, expected in ((bomb, "declares 4000x4000x4000 voxels"),
                           (zbomb, "gzip stream holds more than")):
        code, output = run("validate", path)
        assert code == 1 and expected in output and "FAILED" in output
        code, output = run("predict", "--checkpoint", tiny_run / "best.pt", "--mri", path)
        assert code == 2 and expected in output
        assert "error: error" not in output and output.count("error:") == 1


ANONYMOUS = {"age": 72, "sex": "F", "mmse": 26, "cdr_sb": 1.5, "apoe4": 1}


@pytest.mark.parametrize("fmt", ["json", "csv", "adnimerge csv"])
def test_one_record_without_an_id(tmp_path: Path, tiny_run: Path, fmt: str) -> None:
    """A single patient's record needs no study id, in any command that takes one record."""
    if fmt == "json":
        path = tmp_path / "patient.json"
        path.write_text(json.dumps(ANONYMOUS))
    elif fmt == "csv":
        path = tmp_path / "patient.csv"
        path.write_text("age,sex,mmse,cdr_sb,apoe4\n72,F,26,1.5,1\n")
    else:
        path = tmp_path / "patient.csv"
        path.write_text("AGE,PTGENDER,MMSE,CDRSB,APOE4\n72,Female,26,1.5,1\n")
    code, output = run("validate", path)
    assert code == 0 and "OK" in output, output
    code, output = run("summarize", path, "--backend", "template", "--no-cache")
    assert code == 0 and "72" in output and "26" in output
    code, output = run("predict", "--checkpoint", tiny_run / "best.pt", "--record", path)
    assert code == 0, output
    result = json.loads(output[output.index("{"):])
    assert result["inputs_used"]["record"] and "mmse" in result["inputs_used"]["summary_fields"]
    assert "patient" not in (result["summary"] or "")


def test_cohort_tables_still_need_ids(tmp_path: Path) -> None:
    path = tmp_path / "two.csv"
    path.write_text("age,sex\n72,F\n80,M\n")
    code, output = run("validate", path)
    assert code == 1 and "cannot tell which vocabulary" in output


def test_predict_picks_a_row_of_a_multi_row_export(tmp_path: Path, tiny_run: Path) -> None:
    path = tmp_path / "adnimerge.csv"
    path.write_text("RID,PTID,VISCODE,AGE,PTGENDER,MMSE\n"
                    "1,011_S_0001,bl,70,Female,29\n1,011_S_0001,m12,71,Female,27\n"
                    "2,011_S_0002,bl,80,Male,20\n")
    ck = tiny_run / "best.pt"
    code, output = run("predict", "--checkpoint", ck, "--record", path)
    assert code == 2 and "3 records match" in output and "011_S_0002/bl" in output
    code, output = run("predict", "--checkpoint", ck, "--record", path, "--subject",
                       "011_S_0001")
    assert code == 2 and "2 records match 011_S_0001" in output
    code, output = run("predict", "--checkpoint", ck, "--record", path, "--subject",
                       "011_S_0001", "--visit", "m12")
    assert code == 0 and json.loads(output[output.index("{"):])["inputs_used"]["record"]
    code, output = run("predict", "--checkpoint", ck, "--record", path, "--subject", "X")
    assert code == 2 and "no record for X" in output


def test_calibrate_prints_each_pattern_and_refuses_training_subjects(
        tmp_path: Path, tiny_run: Path, tiny_cohort: Path, in_distribution_cohort: Path) -> None:
    out = tmp_path / "recalibrated" / "best.pt"
    code, output = run("calibrate", "--checkpoint", tiny_run / "best.pt", "--manifest",
                       in_distribution_cohort / "manifest.csv", "--out", out, "--workers", 1)
    assert code == 0 and out.is_file() and f"wrote {out}" in output
    rows = [re.match(r"^(.+?)\s+\d+\s+\d", line) for line in output.splitlines()]
    lines = {m.group(1): m.string for m in rows if m}
    assert set(lines) == {"mri+record", "mri", "record", "mri+record (no scores)",
                          "record (no scores)"}
    assert all("kept" in line and "fewer than 50" in line for line in lines.values())
    code, output = run("calibrate", "--checkpoint", tiny_run / "best.pt", "--manifest",
                       tiny_cohort / "manifest.csv", "--out", tmp_path / "other.pt")
    assert code == 2 and "in the model's training data" in output
    assert not (tmp_path / "other.pt").exists()
    code, output = run("calibrate", "--checkpoint", tiny_run / "best.pt", "--manifest",
                       in_distribution_cohort / "manifest.csv", "--out", tmp_path)
    assert code == 2 and "is a folder" in output
