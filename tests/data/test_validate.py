from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mediad.data.validate import validate_path


def test_cohort_folder_passes(tiny_cohort: Path) -> None:
    report = validate_path(tiny_cohort)
    assert report.ok, [str(i) for i in report.errors]
    assert report.kind == "cohort" and report.n_rows == 24 and report.n_images == 24


@pytest.fixture
def broken_cohort(tiny_cohort: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the tiny cohort with one of every kind of bad input, keyed by subject."""
    folder = shutil.copytree(tiny_cohort, tmp_path / "broken")
    with open(folder / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    s = [r["subject_id"] for r in rows]
    expected: dict[str, str] = {}

    def image(i: int) -> Path:
        return folder / rows[i]["mri_path"]

    rows[0]["mmse"], expected[s[0]] = "45", "out of range; expected 0 to 30"
    rows[1]["age"], expected[s[1]] = "-3", "out of range; expected 18 to 110"
    rows[2]["mri_path"], expected[s[2]] = "images/absent.nii.gz", "MRI file not found"
    data = image(3).read_bytes()
    image(3).write_bytes(data[: len(data) // 3])
    expected[s[3]] = "gzip data is truncated"
    image(4).write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    expected[s[4]] = "gzip data is truncated or corrupt"
    nib.save(nib.Nifti1Image(np.ones((16, 16), np.float32), np.eye(4)), image(5))
    expected[s[5]] = "is a 2D image"
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8, 2).astype(np.float32), np.eye(4)), image(6))
    expected[s[6]] = "has 2 volumes"
    nan = np.random.rand(8, 8, 8).astype(np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), image(7))
    expected[s[7]] = "NaN or infinite"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), image(8))
    expected[s[8]] = "is constant"
    rows[9]["sex"], expected[s[9]] = "unknown", "unknown code; expected one of"
    rows.append(dict(rows[10]))
    expected[s[10]] = "duplicate subject-visit row"
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder, expected


def test_every_problem_is_listed_at_once(broken_cohort: tuple[Path, dict[str, str]]) -> None:
    folder, expected = broken_cohort
    report = validate_path(folder / "manifest.csv")
    assert not report.ok
    found = {i.subject: i.message for i in report.errors}
    assert found.keys() == expected.keys()
    for subject, text in expected.items():
        assert text in found[subject], (subject, found[subject])
    assert all(i.file and i.line for i in report.errors)  # every error is located
    lines = [i.line for i in report.issues if i.line]
    assert lines == sorted(lines)


def test_header_only_mode_skips_voxels(broken_cohort: tuple[Path, dict[str, str]]) -> None:
    folder, _ = broken_cohort
    quick = {i.subject for i in validate_path(folder / "manifest.csv",
                                              check_voxels=False).errors}
    full = {i.subject for i in validate_path(folder / "manifest.csv").errors}
    assert quick < full  # NaN / constant volumes need the voxels


def test_single_nifti_and_records(tiny_cohort: Path) -> None:
    image = next((tiny_cohort / "images").iterdir())
    assert validate_path(image).ok
    report = validate_path(tiny_cohort / "records.csv")
    assert report.ok and report.kind == "records" and report.vocabulary == "adnimerge"
    assert any("PTGENDER 'Female' -> sex 'female'" in t for t in report.translations)
