"""Raw T1s in: brain extraction and registration to MNI152 on a real whole-head image.

The whole head is the MNI152 2009 T1 that nilearn ships (skull, scalp, face and neck),
moved the way a scanner would write it: tilted, scaled, shifted, on another grid.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mediad.data.preprocess import PreprocessConfig, _template, preprocess_file
from mediad.errors import ImageError

pytestmark = pytest.mark.slow


def moved_head(path: Path, degrees: float = 10.0, scale: float = 1.05,
               shift: tuple[float, float, float] = (8.0, -5.0, 6.0)) -> Path:
    from nilearn import datasets

    head = datasets.load_mni152_template(resolution=2)
    a = np.deg2rad(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) * scale
    affine = head.affine.copy()
    affine[:3, :3] = rot @ affine[:3, :3]
    affine[:3, 3] = rot @ affine[:3, 3] + np.array(shift)
    data = np.asarray(head.dataobj, dtype=np.float32) * 1000
    nib.save(nib.Nifti1Image(data.astype(np.int16), affine), str(path))
    return path


@pytest.fixture(scope="module")
def whole_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return moved_head(tmp_path_factory.mktemp("raw") / "head.nii.gz")


def test_whole_head_is_extracted_and_registered(whole_head: Path, tmp_path: Path) -> None:
    result = preprocess_file(whole_head, PreprocessConfig(), tmp_path)
    qc = result.qc
    assert qc.steps == ["brain_extraction", "registration"] and qc.ok, qc
    assert 800 < (qc.brain_volume_ml or 0) < 2600  # brain-like, not the whole head
    assert (qc.similarity or 0) > 0.9
    out = nib.load(result.image)
    template, mask = _template(PreprocessConfig().output_spacing)
    assert out.shape == template.shape
    np.testing.assert_allclose(out.affine, template.affine)
    brain = np.asarray(out.dataobj) > 0.05 * float(np.asarray(out.dataobj).max())
    dice = 2 * (brain & mask).sum() / (brain.sum() + mask.sum())
    assert dice > 0.9, f"registered brain overlaps the template mask with Dice {dice:.2f}"


def test_results_are_cached_by_content_and_settings(whole_head: Path, tmp_path: Path) -> None:
    first = preprocess_file(whole_head, PreprocessConfig(), tmp_path)
    t = time.perf_counter()
    again = preprocess_file(whole_head, PreprocessConfig(), tmp_path)
    assert again.cached and again.image == first.image and time.perf_counter() - t < 2
    other = preprocess_file(whole_head, PreprocessConfig(registration=False), tmp_path)
    assert not other.cached and other.qc.steps == ["brain_extraction"]


def test_not_a_brain_is_flagged_or_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((64, 64, 64), dtype=np.float32) * 100,
                             np.diag([3.0, 3.0, 3.0, 1.0])), str(noise))
    try:
        result = preprocess_file(noise, PreprocessConfig(), tmp_path)
    except ImageError as exc:
        assert "no brain" in str(exc)
    else:
        assert result.qc.flags, result.qc  # never silent


def test_manifest_run_writes_qc_and_a_new_manifest(whole_head: Path, tmp_path: Path) -> None:
    from mediad.data.preprocess import preprocess_manifest
    from tests.hostile import header_bomb

    bomb = header_bomb(tmp_path / "bomb.nii")
    manifest = tmp_path / "in.csv"
    manifest.write_text("subject_id,visit,mri_path,age\n"
                        f"S1,bl,{whole_head},70\nS2,bl,{bomb},71\n")
    calls: list[tuple[int, int]] = []
    out = preprocess_manifest(manifest, tmp_path / "out", progress=lambda d, t: calls.append(
        (d, t)))
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["mri_path"].startswith("cache/") and rows[1]["mri_path"] == ""
    qc = list(csv.DictReader((tmp_path / "out" / "qc.csv").open()))
    assert qc[0]["steps"] == "brain_extraction+registration" and qc[0]["error"] == ""
    assert "declares 4000x4000x4000" in qc[1]["error"]
    assert calls[-1] == (2, 2)
