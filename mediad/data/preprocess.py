"""From a raw T1 as a scanner writes it to a brain in template space, with pip alone.

Whole head, any pose, any size -> brain extraction (deepbet, whose weights ship in its
wheel) -> affine registration of the brain to the MNI152 2009 brain that nilearn ships
(SimpleITK) -> optional N4 bias-field correction -> a NIfTI on the template grid, which the
usual ingest (:mod:`mediad.data.imaging`) then scales and sizes. Nothing is downloaded.

Every run writes a QC record: which steps ran, the brain volume and whether it is
plausible, and the similarity to the template after registration; a failed registration
is a flag with a reason, never silent. Results are cached by file content and settings,
so a batch run resumes and a second run is free.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import Callable, Hashable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from pydantic import BaseModel, ConfigDict, Field

from mediad.data.nifti import check_nifti_file
from mediad.errors import ImageError
from mediad.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "PREPROCESS_VERSION",
    "Preprocess",
    "PreprocessConfig",
    "PreprocessResult",
    "Preprocessd",
    "QCRecord",
    "extract_brain",
    "preprocess_file",
    "preprocess_manifest",
    "register_to_template",
]

#: Bumped whenever a change alters outputs, so cached results are recomputed.
PREPROCESS_VERSION = 1
#: Plausible intracranial volumes, mL: adults measure 1100-1900 natively; MNI152 space is
#: about 1.2 times larger, so template-sized heads reach about 2300.
BRAIN_VOLUME_ML = (800.0, 2600.0)
MIN_SIMILARITY = 0.75


class PreprocessConfig(BaseModel):
    """Which steps run and on which grids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skull_strip: bool = Field(True, description="Brain extraction (harmless on brains that "
                              "are already extracted).")
    registration: bool = Field(True, description="Affine registration to the MNI152 brain; off "
                           "for inputs already in MNI space.")
    n4: bool = Field(False, description="N4 bias-field correction (slower).")
    output_spacing: float = Field(2.0, ge=1.0, le=4.0, description="Grid of the written "
                                  "template-space volume, mm.")
    registration_spacing: float = Field(4.0, ge=1.0, le=8.0, description="Grid the "
                                        "registration metric is computed on, mm.")
    iterations: int = Field(100, ge=10, le=2000, description="Optimiser steps per level.")
    sampling: float = Field(0.25, gt=0.0, le=1.0, description="Share of template voxels the "
                            "registration metric samples.")
    seed: int = Field(0, ge=0)


class QCRecord(BaseModel):
    """What happened to one input and whether its figures are plausible."""

    source: str
    steps: list[str]
    brain_volume_ml: float | None = None
    similarity: float | None = Field(None, description="Normalised cross-correlation with "
                                     "the template brain, inside its mask.")
    flags: list[str] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.flags


class PreprocessResult(BaseModel):
    image: str
    qc: QCRecord
    cached: bool = False


# ---------------------------------------------------------------------------------------
# Template and conversions


@lru_cache(maxsize=4)
def _template(spacing: float) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The MNI152 2009 brain (template × its brain mask) on a ``spacing`` mm grid."""
    from nilearn import datasets, image

    head = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    if spacing != 1.0:
        target = np.diag([spacing, spacing, spacing, 1.0])
        target[:3, 3] = head.affine[:3, 3]
        head = image.resample_img(head, target_affine=target, interpolation="continuous",
                                  force_resample=True, copy_header=True)
        mask = image.resample_img(mask, target_affine=target, target_shape=head.shape,
                                  interpolation="nearest", force_resample=True,
                                  copy_header=True)
    m = np.asarray(mask.dataobj) > 0.5
    brain = np.asarray(head.dataobj, dtype=np.float32) * m
    return nib.Nifti1Image(brain, head.affine), m


def _to_sitk(img: nib.Nifti1Image) -> Any:
    """nibabel (RAS world) -> SimpleITK (LPS world), same voxels."""
    import SimpleITK as sitk

    canonical = nib.as_closest_canonical(img)
    data = np.asarray(canonical.dataobj, dtype=np.float32)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    zooms = np.array(canonical.header.get_zooms()[:3], dtype=float)
    flip = np.diag([-1.0, -1.0, 1.0])
    out.SetSpacing(zooms.tolist())
    out.SetOrigin((flip @ canonical.affine[:3, 3]).tolist())
    out.SetDirection((flip @ canonical.affine[:3, :3] / zooms).flatten().tolist())
    return out


def _from_sitk(image: Any) -> np.ndarray:
    """SimpleITK voxels -> a nibabel-ordered (x, y, z) array on the same grid."""
    import SimpleITK as sitk

    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Steps


@lru_cache(maxsize=1)
def _deepbet() -> Any:
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def extract_brain(img: nib.Nifti1Image) -> tuple[nib.Nifti1Image, np.ndarray, float]:
    """Brain extraction with deepbet: ``(brain image, mask, brain volume in mL)``.

    Raises:
        ImageError: no brain-like foreground was found.
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    img = nib.Nifti1Image(data, img.affine)
    try:
        brain, mask, tiv = _deepbet().run(img)
    except (AssertionError, ValueError) as exc:
        raise ImageError(img.get_filename() or "image", f"brain extraction found no brain "
                         f"({exc})") from None
    return brain, np.asarray(mask.dataobj) > 0, float(tiv)


def _n4(img: nib.Nifti1Image, mask: np.ndarray | None) -> nib.Nifti1Image:
    import SimpleITK as sitk

    moving = _to_sitk(img)
    shrink = sitk.Shrink(moving, [2, 2, 2])
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([20, 20])
    if mask is not None:
        m = _to_sitk(nib.Nifti1Image(mask.astype(np.float32), img.affine))
        corrector.Execute(shrink, sitk.Cast(sitk.Shrink(m, [2, 2, 2]) > 0.5, sitk.sitkUInt8))
    else:
        corrector.Execute(shrink)
    log_field = corrector.GetLogBiasFieldAsImage(moving)
    corrected = moving / sitk.Exp(log_field)
    canonical = nib.as_closest_canonical(img)
    return nib.Nifti1Image(_from_sitk(corrected), canonical.affine)


def _coarse(image: Any, spacing: float) -> Any:
    """Smooth (against aliasing) and resample an image onto an isotropic ``spacing`` grid."""
    import SimpleITK as sitk

    old_spacing = np.array(image.GetSpacing())
    if (old_spacing >= spacing).all():
        return image
    size = np.ceil(np.array(image.GetSize()) * old_spacing / spacing).astype(int)
    smooth = sitk.SmoothingRecursiveGaussian(image, spacing / 2.0)
    return sitk.Resample(smooth, [int(x) for x in size], sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), [spacing] * 3, image.GetDirection(), 0.0,
                         sitk.sitkFloat32)


def register_to_template(brain: nib.Nifti1Image, config: PreprocessConfig | None = None
                         ) -> tuple[nib.Nifti1Image, float]:
    """Affine registration of a brain to the MNI152 brain (mutual information, two levels).

    Returns:
        ``(the brain resampled on the template grid, similarity to the template)``.
    """
    import SimpleITK as sitk

    c = config or PreprocessConfig()
    template, template_mask = _template(c.output_spacing)
    reference = _to_sitk(template)
    # the metric is computed on a coarse grid (both images smoothed and shrunk to it); only
    # the final resampling uses the full-resolution brain
    fixed = _coarse(_to_sitk(_template(c.registration_spacing)[0]), c.registration_spacing)
    full = _to_sitk(brain)
    moving = _coarse(full, c.registration_spacing)
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(c.sampling, c.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=c.iterations,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0 * c.registration_spacing, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    transform = reg.Execute(fixed, moving)
    warped = sitk.Resample(full, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    data = _from_sitk(warped)
    a, b = data[template_mask], np.asarray(template.dataobj)[template_mask]
    similarity = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else 0.0
    return nib.Nifti1Image(data, template.affine), similarity


# ---------------------------------------------------------------------------------------
# One file, cached


def _cache_key(path: Path, config: PreprocessConfig) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    h.update(config.model_dump_json().encode())
    h.update(f"v{PREPROCESS_VERSION}".encode())
    return h.hexdigest()[:24]


def preprocess_file(path: str | Path, config: PreprocessConfig | None = None,
                    cache_dir: str | Path | None = None) -> PreprocessResult:
    """Preprocess one T1 (or reuse the cached result for the same bytes and settings).

    Args:
        path: a NIfTI file (checked as hostile first, see :mod:`mediad.data.nifti`).
        config: the steps and grids.
        cache_dir: where results live (``<key>.nii.gz`` and ``<key>.json``); default: a
            ``preprocessed`` folder in the data folder's cache.

    Returns:
        The template-space image's path and its QC record.

    Raises:
        ImageError: the file is unusable, or no brain was found.
    """
    from mediad.paths import data_dir

    c = config or PreprocessConfig()
    source = Path(path)
    check_nifti_file(source)
    cache = Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "preprocessed"
    key = _cache_key(source, c)
    out_image, out_qc = cache / f"{key}.nii.gz", cache / f"{key}.json"
    if out_image.is_file() and out_qc.is_file():
        qc = QCRecord.model_validate_json(out_qc.read_text(encoding="utf-8"))
        return PreprocessResult(image=str(out_image), qc=qc, cached=True)
    img = nib.load(str(source))
    if len(img.shape) > 3:
        img = nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine)
    qc = QCRecord(source=source.name, steps=[])
    mask = None
    if c.skull_strip:
        t = time.perf_counter()
        img, mask, volume = extract_brain(img)
        qc.seconds["brain_extraction"] = round(time.perf_counter() - t, 2)
        qc.steps.append("brain_extraction")
        qc.brain_volume_ml = round(volume, 1)
        lo, hi = BRAIN_VOLUME_ML
        if not lo <= volume <= hi:
            qc.flags.append(f"brain volume {volume:.0f} mL is outside {lo:.0f}-{hi:.0f} mL: "
                            "extraction failed, or this is not an adult head")
    if c.n4:
        t = time.perf_counter()
        img = _n4(img, mask)
        qc.seconds["n4"] = round(time.perf_counter() - t, 2)
        qc.steps.append("n4")
    if c.registration:
        t = time.perf_counter()
        img, similarity = register_to_template(img, c)
        qc.seconds["registration"] = round(time.perf_counter() - t, 2)
        qc.steps.append("registration")
        qc.similarity = round(similarity, 4)
        if similarity < MIN_SIMILARITY:
            qc.flags.append(f"similarity to the template after registration is "
                            f"{similarity:.2f} (below {MIN_SIMILARITY}): registration "
                            "failed or this is not a T1 brain")
    result = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    atomic_write_bytes(out_image, gzip.compress(result.to_bytes(), compresslevel=4))
    atomic_write_text(out_qc, qc.model_dump_json(indent=2))
    return PreprocessResult(image=str(out_image), qc=qc)


class Preprocess(Transform):
    """Array version: a raw T1 path in, the cached template-space path out (the QC record
    is kept in :attr:`last_qc`)."""

    def __init__(self, config: PreprocessConfig | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.config = config or PreprocessConfig()
        self.cache_dir = cache_dir
        self.last_qc: QCRecord | None = None

    def __call__(self, path: Any) -> str:
        result = preprocess_file(path, self.config, self.cache_dir)
        self.last_qc = result.qc
        return result.image


class Preprocessd(MapTransform):
    """Dictionary version, placed before the loader; the QC record goes to ``<key>_qc``."""

    def __init__(self, keys: KeysCollection, config: PreprocessConfig | None = None,
                 cache_dir: str | Path | None = None, allow_missing_keys: bool = False
                 ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.config = config or PreprocessConfig()
        self.cache_dir = cache_dir

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            result = preprocess_file(d[key], self.config, self.cache_dir)
            d[key] = result.image
            d[f"{key}_qc"] = json.loads(result.qc.model_dump_json())
        return d


def _preprocess_task(args: tuple[str, str, str]) -> str:
    path, config_json, cache_dir = args
    import torch

    torch.set_num_threads(1)
    result = preprocess_file(path, PreprocessConfig.model_validate_json(config_json), cache_dir)
    return result.model_dump_json()


def preprocess_manifest(manifest: str | Path, out_dir: str | Path,
                        config: PreprocessConfig | None = None, workers: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> Path:
    """Preprocess every MRI of a manifest; write ``manifest.csv`` (MRI paths pointing at the
    template-space volumes), ``qc.csv`` and the volumes under ``out_dir/cache``.

    Resumable: results are cached by content, so a rerun redoes only what is missing. An
    unusable MRI is recorded in ``qc.csv`` (``error``) and its row keeps no MRI.

    Returns:
        The new manifest.
    """
    import csv
    import io
    from concurrent.futures import ProcessPoolExecutor

    from mediad.data.records import load_manifest

    c = config or PreprocessConfig()
    out = Path(out_dir)
    cache = out / "cache"
    table = load_manifest(manifest)
    todo = [r for r in table.rows if r.mri_path]
    results: dict[str, PreprocessResult | str] = {}

    def record(path: str, value: PreprocessResult | str) -> None:
        results[path] = value
        if progress:
            progress(len(results), len(todo))

    if workers > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {r.mri_path: pool.submit(_preprocess_task, (r.mri_path,
                                                                  c.model_dump_json(),
                                                                  str(cache)))
                       for r in todo}
            for path, future in futures.items():
                try:
                    record(path, PreprocessResult.model_validate_json(future.result()))
                except ImageError as exc:
                    record(path, exc.reason)
    else:
        for r in todo:
            try:
                record(r.mri_path, preprocess_file(r.mri_path, c, cache))  # type: ignore[arg-type]
            except ImageError as exc:
                record(r.mri_path, exc.reason)  # type: ignore[index]
    rows, qc_rows = [], []
    for r in table.rows:
        got = results.get(r.mri_path) if r.mri_path else None
        image = got.image if isinstance(got, PreprocessResult) else None
        rows.append({**r.model_dump(mode="json"),
                     "mri_path": str(Path(image).relative_to(out)) if image else ""})
        if r.mri_path:
            qc = got.qc if isinstance(got, PreprocessResult) else None
            qc_rows.append({"subject_id": r.subject_id, "visit": r.visit,
                            "steps": "+".join(qc.steps) if qc else "",
                            "brain_volume_ml": qc.brain_volume_ml if qc else "",
                            "similarity": qc.similarity if qc else "",
                            "flags": " | ".join(qc.flags) if qc else "",
                            "error": got if isinstance(got, str) else ""})
    for name, data in (("manifest.csv", rows), ("qc.csv", qc_rows)):
        buf = io.StringIO()
        if data:
            writer = csv.DictWriter(buf, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
        atomic_write_text(out / name, buf.getvalue())
    return out / "manifest.csv"
