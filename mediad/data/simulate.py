"""The synthetic confounded cohort: a structural causal model drawn on a real brain template.

Real ADNI/NACC data cannot ship, so tests, demos and ablations use subjects drawn from the
SCM of docs/design.md on the MNI152 2009 template that nilearn ships (no download):

* site S is recruited through **selection bias**: P(S | D) ∝ exp(confounding · γ[S, D])
  (a memory clinic recruits mostly AD, a community site mostly CN);
* D ← age, APOE4 (ordinal logit); ``shift`` removes or reverses the S–D and age–D links;
* image ← D: hippocampal (medial-temporal) atrophy, CN < MCI < AD — the causal signal;
* image ← age: global atrophy (cortical thinning, ventricle enlargement);
* image ← V (vascular burden, latent): T1-hypointense white-matter lesions;
* image ← S: contrast (gamma), blur, noise, bias field, intensity scale and the on-disk
  orientation/dtype — the unobserved confounder, chosen to survive intensity normalisation;
  some sites write the whole head (skull, scalp, face), others a brain-extracted image;
* native space: each head has its own size, tilt and position in the field of view, as a
  raw T1 off the scanner, so every cohort exercises brain extraction and registration;
* scores (MMSE, CDR-SB, ADAS13, FAQ) ← D (strongly), V, education, noise.

Each subject's causes are saved in ``ground_truth.csv``; ``dataset_card.md`` says what was
drawn and how well the causes (and the site alone) predict the diagnosis.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import ndimage

from mediad.data.records import COGNITIVE_SCORES, DIAGNOSES, ClinicalRecord, to_adnimerge_row
from mediad.errors import MediADError
from mediad.workers import one_thread, process_pool

__all__ = [
    "HIPPOCAMPUS_CENTERS_MM",
    "SCANNER_PARTS",
    "SIMULATOR_VERSION",
    "SITES",
    "UNSEEN_SITES",
    "SimulationConfig",
    "SiteProfile",
    "draw_population",
    "head_pose",
    "load_site_profiles",
    "output_grid",
    "render_subject",
    "simulate_cohort",
    "store_subject",
]

Shift = Literal["none", "removed", "reversed"]
#: Bumped when the mechanisms change, so cached cohorts (the demo's) are rebuilt.
SIMULATOR_VERSION = 5
#: The one site code of every simulated id, so ids carry nothing about the site.
SIMULATED_SITE_CODE = "900"

# MNI coordinates (mm) of the left/right hippocampal bodies and their ellipsoid radii.
HIPPOCAMPUS_CENTERS_MM = ((-26.0, -22.0, -14.0), (28.0, -22.0, -14.0))
HIPPOCAMPUS_RADII_MM = (10.0, 20.0, 11.0)  # hippocampus + amygdala + entorhinal
VENTRICLES_CENTER_MM = (0.0, -8.0, 14.0)
VENTRICLES_RADII_MM = (24.0, 34.0, 16.0)


class SiteProfile(BaseModel):
    """One site's recruitment bias and scanner; ``selection[d]`` is the selection log-odds.

    A YAML file of these (``mediad simulate --sites FILE``) defines other scanners, e.g. one
    that none of the training sites has.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=32)
    description: str = ""
    selection: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="Log-odds of recruiting a CN / MCI / AD subject.")
    gamma: float = Field(1.0, gt=0.1, lt=5.0, description="Contrast: power law on [0, 1].")
    blur_mm: float = Field(0.0, ge=0.0, le=8.0, description="Gaussian blur sigma, mm.")
    noise: float = Field(0.02, ge=0.0, le=0.5, description="Rician noise std (fraction).")
    bias: float = Field(0.2, ge=0.0, le=1.0, description="Bias-field coefficient range.")
    scale: float = Field(1000.0, gt=0.0, le=1e6, description="Intensity scale on disk.")
    orientation: str = Field("RAS", pattern=r"^(?:[RL][AP][SI]|[RL][SI][AP]|[AP][RL][SI]|"
                             r"[AP][SI][RL]|[SI][RL][AP]|[SI][AP][RL])$",
                             description="Axis codes of the stored array.")
    dtype: Literal["float32", "float64", "int16", "uint16", "uint8", "int32"] = "float32"
    whole_head: float = Field(0.0, ge=0.0, le=1.0, description="Share of scans written as "
                              "the whole head (skull, scalp, face); the others are the "
                              "site's own brain extraction.")


def _site(name: str, description: str, selection: tuple[float, float, float], gamma: float,
          blur_mm: float, noise: float, bias: float, scale: float, orientation: str,
          dtype: str, whole_head: float = 0.0) -> SiteProfile:
    return SiteProfile(name=name, description=description, selection=selection, gamma=gamma,
                       blur_mm=blur_mm, noise=noise, bias=bias, scale=scale,
                       orientation=orientation, dtype=dtype, whole_head=whole_head)


SITES: tuple[SiteProfile, ...] = (
    _site("SITE-A", "memory clinic, 3T", (-2.0, 0.5, 2.0), 0.70, 0.0, 0.015, 0.15,
          1000.0, "RAS", "float32"),
    _site("SITE-B", "community study, 1.5T", (2.0, 0.0, -2.0), 1.40, 2.0, 0.04, 0.30,
          3000.0, "LPS", "int16"),
    _site("SITE-C", "general hospital, 1.5T", (0.0, 0.5, 0.0), 1.00, 1.2, 0.03, 0.20,
          255.0, "PIR", "uint8", whole_head=0.15),
)
#: A scanner none of the default sites has (the ablation's "unseen scanner" cohort): a
#: different vendor's 3T sequence, darker grey matter, sharper, a stronger bias field.
UNSEEN_SITES: tuple[SiteProfile, ...] = (
    _site("SITE-X", "new vendor, 3T (unseen)", (0.0, 0.0, 0.0), 0.50, 0.5, 0.025, 0.40,
          4095.0, "LAS", "int16", whole_head=0.0),
)


def load_site_profiles(path: str | Path) -> tuple[SiteProfile, ...]:
    """Scanner profiles from YAML: a list of :class:`SiteProfile` fields, or ``{sites: [...]}``.

    Raises:
        MediADError: missing file, bad YAML, or a profile with an unknown or invalid field
            (named with its position and site).
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MediADError(f"{p}: site profile file not found") from None
    except yaml.YAMLError as exc:
        raise MediADError(f"{p}: not valid YAML ({exc})") from None
    items = raw.get("sites") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise MediADError(f"{p}: expected a list of site profiles (or 'sites: [...]'), got "
                          f"{type(items).__name__}")
    profiles = []
    for i, item in enumerate(items, 1):
        try:
            profiles.append(SiteProfile.model_validate(item))
        except ValidationError as exc:
            name = item.get("name", "?") if isinstance(item, dict) else "?"
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors())
            raise MediADError(f"{p}: site profile {i} ({name}): {problems}") from None
    names = [s.name for s in profiles]
    if len(set(names)) != len(names):
        raise MediADError(f"{p}: site names must be unique, got {names}")
    return tuple(profiles)
#: Head pose in native space: rotation sd (degrees) and limit, log head scale mean and sd
#: with its limits (MNI152 brains are larger than most native ones), shift sd and limit (mm).
POSE_ROTATION_DEG = (4.0, 10.0)
POSE_SCALE = (0.95, 0.04, 0.87, 1.05)
POSE_SHIFT_MM = (5.0, 12.0)


class SimulationConfig(BaseModel):
    """Knobs of the synthetic cohort; the same config and seed give identical files."""

    model_config = ConfigDict(extra="forbid")

    n_subjects: int = Field(200, ge=3, le=100_000)
    confounding: float = Field(0.8, ge=0.0, le=1.0, description="Site-diagnosis selection bias.")
    shift: Shift = Field("none", description="none, or S-D and age-D links removed/reversed "
                         "(both axes; site_shift / age_shift set one each).")
    site_shift: Shift | None = Field(None, description="The site-diagnosis link alone "
                                     "(default: as shift).")
    age_shift: Shift | None = Field(None, description="The age-diagnosis link alone "
                                    "(default: as shift).")
    sites: tuple[SiteProfile, ...] | None = Field(
        None, description="Scanner profiles (default: SITE-A/B/C); see load_site_profiles.")
    seed: int = Field(0, ge=0)
    spacing: float = Field(3.0, ge=1.0, le=8.0, description="Isotropic output voxel size, mm.")
    shape: tuple[int, int, int] | None = Field(
        None, description="Pad/crop the output grid to this shape (default: brain + margin)."
    )
    missing_rate: float = Field(0.05, ge=0.0, le=0.5, description="Share of optional fields "
                                "left unrecorded.")
    missing_mri_rate: float = Field(0.0, ge=0.0, le=0.5, description="Share of subjects with "
                                    "a record and no MRI.")
    partial_record_rate: float = Field(0.0, ge=0.0, le=0.5, description="Share of subjects "
                                       "whose record holds demographics and risk factors only "
                                       "(no cognitive score), as at a first visit.")
    site_storage: bool = Field(True, description="Write each site's files in its own "
                               "orientation and dtype (exercises ingest).")
    native_space: bool = Field(True, description="Raw T1s as a scanner writes them: each head "
                               "its own size, tilt and position, whole heads from the sites "
                               "that write them. Off: every brain on the template grid, as "
                               "after registration.")
    workers: int = Field(1, ge=1, le=64, description="Processes rendering volumes.")
    subject_offset: int = Field(0, ge=0, le=10**7, description="First subject number minus "
                                "one; keeps ids of cohorts that will be compared disjoint.")


    @property
    def site_profiles(self) -> tuple[SiteProfile, ...]:
        return self.sites or SITES

    @property
    def site_link(self) -> Shift:
        return self.site_shift or self.shift

    @property
    def age_link(self) -> Shift:
        return self.age_shift or self.shift


# ---------------------------------------------------------------------------------------
# Population (everything but the image)

_SIGN = {"none": 1.0, "removed": 0.0, "reversed": -1.0}
AGE_COEFFICIENT = 0.8  # diagnosis log-odds per 7 years of age


def _selection_logits(cfg: SimulationConfig) -> np.ndarray:
    sel = np.array([s.selection for s in cfg.site_profiles])  # (site, diagnosis)
    return _SIGN[cfg.site_link] * cfg.confounding * sel


def draw_population(cfg: SimulationConfig) -> pd.DataFrame:
    """Draw records, labels and image factors (no images) for ``cfg.n_subjects`` subjects.

    Returns:
        One row per subject: ground-truth causes, image factors and record fields.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    n = cfg.n_subjects
    age = np.clip(rng.normal(73.0, 7.0, n), 55.0, 95.0).round(1)
    sex = np.where(rng.random(n) < 0.5, "female", "male")
    education = np.clip(rng.normal(15.5, 2.8, n), 6, 22).round()
    apoe4 = rng.choice(3, n, p=[0.60, 0.32, 0.08])
    hypertension = rng.random(n) < 1 / (1 + np.exp(-(-0.3 + 0.06 * (age - 73))))
    diabetes = rng.random(n) < 0.18
    smoking = rng.random(n) < 0.35
    bmi = np.clip(rng.normal(27.0, 4.0, n), 16, 50).round(1)
    vascular = np.clip(0.4 + 0.03 * (age - 73) + 0.7 * hypertension + 0.5 * diabetes
                       + 0.2 * smoking + rng.normal(0, 0.35, n), 0, None)

    # D <- age, APOE4 (ordinal logit). The shifted cohorts remove / reverse the age link.
    age_coef = _SIGN[cfg.age_link] * AGE_COEFFICIENT
    severity = age_coef * (age - 73) / 7 + 0.9 * apoe4 + rng.logistic(0, 1, n)
    dx = np.digitize(severity, [0.2, 1.7])  # 0 CN, 1 MCI, 2 AD

    # S <- D through selection bias: P(S | D) ∝ exp(logit[S, D]).
    logits = _selection_logits(cfg)[:, dx].T  # (n, site)
    p_site = np.exp(logits - logits.max(axis=1, keepdims=True))
    p_site /= p_site.sum(axis=1, keepdims=True)
    site = (p_site.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)

    # Image factors: the causal signal (hippocampus) and the confounded ones.
    hippo = np.clip(np.array([0.0, 0.13, 0.26])[dx] + 0.004 * (age - 73)
                    + rng.normal(0, 0.05, n), 0.0, 0.5)
    global_atrophy = np.clip(0.012 * (age - 55) + rng.normal(0, 0.03, n), 0.0, 0.6)
    n_lesions = rng.poisson(2.5 * vascular)

    # Scores <- D (strongly), V, education.
    def score(base: tuple[float, ...], sd: tuple[float, ...], v: float, edu: float) -> np.ndarray:
        b, s = np.array(base)[dx], np.array(sd)[dx]
        return b + v * vascular + edu * (education - 15.5) + rng.normal(0, 1, n) * s

    mmse = np.clip(score((29.0, 27.0, 22.5), (1.0, 1.8, 3.0), -0.6, 0.25).round(), 0, 30)
    cdr_sb = np.clip((score((0.1, 1.6, 4.8), (0.3, 0.9, 1.8), 0.3, 0.0) * 2).round() / 2, 0, 18)
    adas13 = np.clip((score((9.0, 17.0, 30.0), (4.0, 5.5, 7.0), 1.5, -0.3) * 3).round() / 3,
                     0, 85).round(2)
    faq = np.clip(score((0.3, 3.5, 13.0), (1.0, 3.0, 6.0), 0.8, 0.0).round(), 0, 30)

    frame = pd.DataFrame({
        # ADNI-shaped ids whose first part is NOT the site (in ADNI it is): neither an id
        # nor a file name may tell a model which scanner a subject came from
        "subject_id": [f"{SIMULATED_SITE_CODE}_S_{cfg.subject_offset + i + 1:04d}"
                       for i in range(n)],
        "visit": "bl", "site": [cfg.site_profiles[s].name for s in site], "site_index": site,
        "diagnosis": np.array(DIAGNOSES)[dx], "age": age, "sex": sex,
        "education_years": education, "apoe4": apoe4, "hypertension": hypertension,
        "diabetes": diabetes, "smoking": smoking, "bmi": bmi, "mmse": mmse, "cdr_sb": cdr_sb,
        "adas13": adas13, "faq": faq, "vascular_burden": vascular.round(3),
        "hippocampal_atrophy": hippo.round(4), "global_atrophy": global_atrophy.round(4),
        "n_lesions": n_lesions,
    })
    # Missing data is normal: optional fields go unrecorded at random (never the label);
    # the ground truth keeps the true values.
    for col in ("apoe4", "diabetes", "smoking"):
        frame[f"true_{col}"] = frame[col]
    for col in ("education_years", "apoe4", "adas13", "faq", "bmi", "smoking", "diabetes"):
        frame[col] = frame[col].astype(object).where(rng.random(n) >= cfg.missing_rate, None)
    # whole inputs missing (own stream: cohorts drawn without them stay as they were)
    gaps = np.random.default_rng(np.random.SeedSequence([cfg.seed, 4]))
    partial = gaps.random(n) < cfg.partial_record_rate
    for col in COGNITIVE_SCORES:  # a partial record lacks every score
        if col in frame:
            frame[col] = frame[col].astype(object).where(~partial, None)
    frame["has_mri"] = gaps.random(n) >= cfg.missing_mri_rate
    pose = np.random.default_rng(np.random.SeedSequence([cfg.seed, 3]))
    rot_sd, rot_max = POSE_ROTATION_DEG
    shift_sd, shift_max = POSE_SHIFT_MM
    scale_mean, scale_sd, scale_lo, scale_hi = POSE_SCALE
    rotation = np.clip(pose.normal(0, rot_sd, (n, 3)), -rot_max, rot_max)
    shift = np.clip(pose.normal(0, shift_sd, (n, 3)), -shift_max, shift_max)
    head_scale = np.clip(scale_mean * np.exp(pose.normal(0, scale_sd, n)), scale_lo, scale_hi)
    if not cfg.native_space:
        rotation, shift, head_scale = rotation * 0, shift * 0, head_scale * 0 + 1
    for i, axis in enumerate("xyz"):
        frame[f"rotation_{axis}_deg"] = rotation[:, i].round(2)
        frame[f"shift_{axis}_mm"] = shift[:, i].round(2)
    frame["head_scale"] = head_scale.round(4)
    share = np.array([cfg.site_profiles[s].whole_head for s in site])
    frame["whole_head"] = (pose.random(n) < share) & cfg.native_space
    notes = np.array([None, "Lives independently.", "Attended with a family member.",
                      "Reports poor sleep.", "Hearing aid in use."], dtype=object)
    frame["notes"] = notes[rng.choice(len(notes), n, p=[0.6, 0.1, 0.1, 0.1, 0.1])]
    return frame


# ---------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class _Template:
    t1: np.ndarray  # the brain
    head: np.ndarray  # everything around it: skull, scalp, face, neck
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    center: np.ndarray  # of the brain's bounding box, mm


@lru_cache(maxsize=1)
def _template() -> _Template:
    from nilearn import datasets  # ships the MNI152 2009 templates inside the package

    def arr(img: Any) -> np.ndarray:
        return np.asarray(img.dataobj, dtype=np.float32)

    t1 = datasets.load_mni152_template(resolution=2)
    mask = arr(datasets.load_mni152_brain_mask(resolution=2)) > 0
    affine = np.asarray(t1.affine, dtype=np.float64)
    idx = np.argwhere(mask)
    center = ((idx.min(0) + idx.max(0)) / 2) @ affine[:3, :3].T + affine[:3, 3]
    return _Template(arr(t1) * mask, _synthetic_head(mask, float(affine[0, 0])),
                     arr(datasets.load_mni152_gm_template(resolution=2)),
                     arr(datasets.load_mni152_wm_template(resolution=2)), mask, affine, center)


#: Layers around the brain, as (outer distance from the brain in mm, T1 intensity): CSF,
#: skull (inner table, marrow-filled diploë, outer table), then scalp (fat and muscle).
HEAD_LAYERS = ((3.0, 0.12), (5.0, 0.04), (9.0, 0.55), (11.0, 0.04), (17.0, 0.75))


def _synthetic_head(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Skull and scalp around a brain mask, as concentric T1 layers (nilearn's MNI152 T1 is
    brain-extracted, and no permissive PyPI package ships a whole-head template)."""
    distance = ndimage.distance_transform_edt(~mask) * spacing
    head = np.zeros(mask.shape, np.float32)
    inner = 0.0
    for outer, value in HEAD_LAYERS:
        head[(distance > inner) & (distance <= outer)] = value
        inner = outer
    return ndimage.gaussian_filter(head, 0.6) * ~mask


@lru_cache(maxsize=1)
def _deep_white_matter_mm() -> np.ndarray:
    """Template-space centres (mm) of the deep white-matter voxels lesions may sit in."""
    tpl = _template()
    return np.argwhere(tpl.wm > 0.9) @ tpl.affine[:3, :3].T + tpl.affine[:3, 3]


def output_grid(spacing: float, shape: tuple[int, int, int] | None = None,
                field_of_view: Literal["brain", "native", "head"] = "brain") -> tuple[
        tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the output grid.

    ``brain``: the template's brain plus a 12 mm margin; ``native``: room for a brain that
    moved (pose); ``head``: the whole head. ``shape`` fixes the grid's size around the brain.
    """
    tpl = _template()
    idx = np.argwhere(tpl.mask if field_of_view != "head" else (tpl.t1 + tpl.head) > 0)
    corners = np.c_[np.r_[[idx.min(0), idx.max(0)]], np.ones(2)] @ tpl.affine.T
    margin = {"brain": 12.0, "native": 28.0, "head": 16.0}[field_of_view]
    lo, hi = corners[0, :3] - margin, corners[1, :3] + margin
    size = np.ceil((hi - lo) / spacing).astype(int) + 1
    if shape is not None:
        lo = tpl.center - (np.array(shape) - 1) * spacing / 2
        size = np.array(shape)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    return tuple(int(s) for s in size), affine  # type: ignore[return-value]


def _bump(points: np.ndarray, center: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    """Smooth weight, 1 at ``center`` and 0 beyond 1.5 ellipsoid radii."""
    rho = np.linalg.norm((points - np.array(center)) / np.array(radii), axis=-1)
    return np.clip(1.0 - (rho / 1.5) ** 2, 0.0, None) ** 2


def _in_box(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Indices of the points (N x 3) strictly inside the box ``(lo, hi)``: the only ones a
    local effect can change (computing effects on the whole grid took most of a subject's
    time). One axis at a time, each on the survivors of the last."""
    x = points[:, 0]
    idx = np.flatnonzero((x > lo[0]) & (x < hi[0]))
    for axis in (1, 2):
        x = points[idx, axis]
        idx = idx[(x > lo[axis]) & (x < hi[axis])]
    return idx


def _near(points: np.ndarray, center: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Indices of the points within ``half_width`` of ``center`` along every axis."""
    return _in_box(points, center - half_width, center + half_width)


@lru_cache(maxsize=4)
def _scanner_points(spacing: float, shape: tuple[int, int, int] | None,
                    fov: Literal["brain", "native", "head"]
                    ) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """The output grid (:func:`output_grid`) and its voxel centres in scanner mm, built once
    per grid (read-only: every subject of a cohort shares them)."""
    grid_shape, affine = output_grid(spacing, shape, fov)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in grid_shape], indexing="ij"), -1)
    scanner = ijk.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
    scanner.flags.writeable = False
    affine.flags.writeable = False
    return grid_shape, affine, scanner


#: The template volumes the renderer looks up.
_TemplateVolume = Literal["t1", "gm", "head", "mask"]


@lru_cache(maxsize=4)
def _volume(name: _TemplateVolume) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A template volume (float32), and the bounds, in template voxels, beyond which its
    linear interpolation is exactly zero: its non-zero voxels' box, two voxels wider."""
    vol = np.asarray(getattr(_template(), name), dtype=np.float32)
    where = np.argwhere(vol != 0)
    return vol, (where.min(0) - 2.0, where.max(0) + 2.0)


def _sample(name: _TemplateVolume, coords: np.ndarray,
            inside: np.ndarray) -> np.ndarray:
    """Linear interpolation of a template volume at template-voxel ``coords`` (N x 3),
    computed only at the ``inside`` indices (see :func:`_within`); zero elsewhere."""
    vol = _volume(name)[0]
    out = np.zeros(len(coords), vol.dtype)
    out[inside] = ndimage.map_coordinates(vol, coords[inside].T, order=1, mode="constant",
                                          cval=0.0)
    return out


def _within(coords: np.ndarray, name: _TemplateVolume) -> np.ndarray:
    """Indices of the template-voxel ``coords`` where a template volume can be non-zero."""
    return _in_box(coords, *_volume(name)[1])


def head_pose(truth: dict[str, Any]) -> np.ndarray:
    """The 4x4 map from template mm to scanner mm: scale and rotation about the brain's
    centre, then the shift (identity when the truth has no pose)."""
    from scipy.spatial.transform import Rotation

    angles = [float(truth.get(f"rotation_{a}_deg", 0.0)) for a in "xyz"]
    shift = [float(truth.get(f"shift_{a}_mm", 0.0)) for a in "xyz"]
    scale = float(truth.get("head_scale", 1.0))
    c = _template().center
    linear = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() * scale
    pose = np.eye(4)
    pose[:3, :3] = linear
    pose[:3, 3] = c - linear @ c + np.array(shift)
    return pose


ScannerPart = Literal["contrast", "blur", "bias", "noise", "noise_pattern"]
#: The draws each part of a scan is made of (``render_subject(redraw=...)``).
SCANNER_PARTS: dict[str, tuple[str, ...]] = {
    "contrast": ("contrast",), "blur": ("blur",), "bias": ("bias", "bias_seed"),
    "noise": ("noise", "noise_seed"), "noise_pattern": ("noise_seed",)}


def _scanner_draws(rng: np.random.Generator) -> dict[str, Any]:
    """One scan's jitter of the site's contrast, blur, bias and noise, and the seeds of its
    bias field and noise, in the order the simulator has always drawn them."""
    jitter = np.exp(rng.normal(0.0, 0.06, 4))
    bias_seed = int(rng.integers(2**31))
    return {"contrast": jitter[0], "blur": jitter[1], "bias": jitter[2], "noise": jitter[3],
            "bias_seed": bias_seed, "noise_seed": int(rng.integers(2**31))}


def render_subject(truth: dict[str, Any], spacing: float = 3.0,
                   shape: tuple[int, int, int] | None = None, seed: int = 0,
                   site_effects: bool = True, site: SiteProfile | None = None,
                   scan_seed: int | None = None,
                   redraw: tuple[ScannerPart, int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Render one T1 volume (RAS, float32, intensities ~[0, 1]) from a subject's causes.

    Args:
        truth: ``hippocampal_atrophy``, ``global_atrophy``, ``n_lesions`` and ``site_index``;
            optionally the pose (``rotation_*_deg``, ``shift_*_mm``, ``head_scale``) and
            ``whole_head``.
        spacing: isotropic voxel size, mm.
        shape: output grid shape (default: the brain, or the whole head, with room for the
            pose when the truth has one).
        seed: seed of this subject's own RNG (lesion placement, then the scanner's
            jitter, bias field and noise).
        site_effects: apply the site's scanner (contrast, blur, bias, noise); off, the
            image carries only the anatomical causes.
        site: the scanner (default: ``SITES[truth["site_index"]]``).
        scan_seed: seed of the scanner's draws alone: the same brain (its lesions from
            ``seed``) scanned again. Default: they continue ``seed``'s stream.
        redraw: ``(part, seed)``: draw one part of the scan (``"contrast"``, ``"blur"``,
            ``"bias"``, ``"noise"`` or ``"noise_pattern"``, the noise at the same level)
            from its own seed and keep the others; which part of a second scan moves an
            answer (``benchmarks/bench_rescan_parts.py``).

    Returns:
        ``(volume, affine)`` with the volume in RAS orientation.

    Raises:
        ValueError: ``redraw`` names no part of a scan.
    """
    from monai.transforms import AdjustContrast, GaussianSmooth, RandBiasField, RandRicianNoise

    tpl = _template()
    rng = np.random.default_rng(seed)
    pose = head_pose(truth)
    whole_head = bool(truth.get("whole_head", False))
    native = "head_scale" in truth  # a native-space subject, even in the template's pose
    fov = "head" if whole_head else ("native" if native else "brain")
    grid_shape, affine, scanner = _scanner_points(
        spacing, None if shape is None else tuple(shape), fov)
    affine = affine.copy()
    # the head sits in the scanner with its own pose: look each voxel up in template space
    inverse = np.linalg.inv(pose)
    world = scanner @ inverse[:3, :3].T + inverse[:3, 3]

    # Anatomy as a deformation: hippocampi shrink towards their centres (sampling from
    # farther out), ventricles enlarge with global atrophy (sampling from closer in). Each
    # bump is zero beyond 1.5 radii: only the points in a box of 1.6 radii are computed
    # (the same numbers as on the whole grid, where the rest add exactly zero).
    h, g = float(truth["hippocampal_atrophy"]), float(truth["global_atrophy"])
    src = world.copy()
    roi = np.zeros(len(world))
    for center in HIPPOCAMPUS_CENTERS_MM:
        near = _near(world, np.array(center), 1.6 * np.array(HIPPOCAMPUS_RADII_MM))
        w = _bump(world[near], center, HIPPOCAMPUS_RADII_MM)
        src[near] += (world[near] - np.array(center)) * (h * w)[:, None]
        roi[near] = np.maximum(roi[near], w)
    near = _near(world, np.array(VENTRICLES_CENTER_MM), 1.6 * np.array(VENTRICLES_RADII_MM))
    wv = _bump(world[near], VENTRICLES_CENTER_MM, VENTRICLES_RADII_MM)
    src[near] -= (world[near] - np.array(VENTRICLES_CENTER_MM)) * (0.35 * g * wv)[:, None]
    to_voxel = np.linalg.inv(tpl.affine[:3, :3]).T
    src_voxel = (src - tpl.affine[:3, 3]) @ to_voxel
    world_voxel = (world - tpl.affine[:3, 3]) @ to_voxel

    # the brain: only where the template's brain can reach (exactly zero elsewhere)
    brain = _within(src_voxel, "t1")
    t1, gm = _sample("t1", src_voxel, brain), _sample("gm", src_voxel, brain)
    # Tissue loss becomes CSF (dark on T1): medial-temporal grey matter with h, cortex with g.
    t1 = t1 * (1.0 - np.clip(gm * (2.5 * h * roi + 0.45 * g), 0.0, 0.9))

    # White-matter lesions (T1-hypointense foci) from the vascular burden. They belong to
    # the brain: placed in template space, so a second scan of it, moved or not, shows
    # them where the first did. A lesion's factor is exactly 1 (in float64) beyond 8.6
    # radii and t1 is zero outside the brain: only the brain's points within 9 radii
    # are computed.
    deep_wm = _deep_white_matter_mm()
    src_brain = src[brain]
    for _ in range(int(truth["n_lesions"])):
        c = deep_wm[rng.integers(len(deep_wm))]
        r = rng.uniform(2.0, 4.5)
        near = _near(src_brain, c, np.full(3, 9.0 * r))
        d2 = ((src_brain[near] - c) ** 2).sum(-1)
        t1[brain[near]] *= 1.0 - 0.5 * np.exp(-d2 / (2 * r * r))
    t1 = t1.reshape(grid_shape)

    top = max(float(t1.max()), 1e-6)
    t1 = np.clip(t1 / top, 0.0, 1.0).astype(np.float32)
    if whole_head:  # skull, scalp and face around the brain, on the brain's intensity scale
        head = _sample("head", world_voxel, _within(world_voxel, "head"))
        t1 = t1 + np.clip(head.reshape(grid_shape) / top, 0.0, 1.2).astype(np.float32)
    if not site_effects:
        return t1, affine
    site = site or SITES[int(truth["site_index"])]
    if scan_seed is not None:  # the same brain, scanned again
        rng = np.random.default_rng(scan_seed)
    draws = _scanner_draws(rng)
    if redraw is not None:
        part, part_seed = redraw
        if part not in SCANNER_PARTS:
            raise ValueError(f"redraw: unknown part {part!r}; one of {', '.join(SCANNER_PARTS)}")
        other = _scanner_draws(np.random.default_rng(part_seed))
        draws.update({key: other[key] for key in SCANNER_PARTS[part]})
    img = t1[None]
    img = AdjustContrast(gamma=site.gamma * draws["contrast"])(img)
    if site.blur_mm > 0:
        img = GaussianSmooth(sigma=site.blur_mm * draws["blur"] / spacing)(img)
    bias = RandBiasField(degree=3, coeff_range=(0.0, site.bias * draws["bias"]), prob=1.0)
    bias.set_random_state(seed=draws["bias_seed"])
    img = bias(img)
    noise = RandRicianNoise(prob=1.0, std=site.noise * draws["noise"], sample_std=False)
    noise.set_random_state(seed=draws["noise_seed"])
    img = np.asarray(noise(img)[0], dtype=np.float32)
    if not whole_head:  # the site's own brain extraction: zero outside the brain
        inside = _sample("mask", world_voxel, _within(world_voxel, "mask"))
        img = img * (inside.reshape(grid_shape) > 0.5)
    return img, affine


def store_subject(volume: np.ndarray, affine: np.ndarray, site: SiteProfile, path: Path,
           site_storage: bool) -> None:
    """Write as the site's scanner would: its scale, dtype and array orientation."""
    data = volume * site.scale
    if site_storage and site.orientation != "RAS":
        ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                               nib.orientations.axcodes2ornt(site.orientation))
        data = nib.orientations.apply_orientation(data, ornt)
        affine = affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    dtype = np.dtype(site.dtype if site_storage else "float32")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    img = nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"MediAD synthetic T1 (research use only)"
    nib.save(img, str(path))


def _render_task(args: tuple[dict[str, Any], int, str, float, Any, bool, SiteProfile]) -> str:
    import torch

    # the profile travels with the task: spawned workers see no module state of the parent
    truth, seed, path, spacing, shape, site_storage, site = args
    # One torch thread: multi-threaded reductions round differently, and the same seed
    # must give byte-identical files whatever the number of workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vol, aff = render_subject(truth, spacing, shape, seed, site=site)
    finally:
        torch.set_num_threads(threads)
    store_subject(vol, aff, site, Path(path), site_storage)
    return path


def _init_worker() -> None:
    """One thread per worker (:func:`mediad.workers.one_thread`), template ready."""
    one_thread()
    _template()


# ---------------------------------------------------------------------------------------
# The cohort on disk


def _nmi(a: Any, b: Any) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(a, b))


def _cv_balanced_accuracy(x: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(5, np.bincount(pd.factorize(y)[0]).min()))
    if folds < 2 or len(set(y)) < 2:
        return None  # too few subjects per class to cross-validate
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pred = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True,
                                                              random_state=seed))
    return float(balanced_accuracy_score(y, pred))


def cohort_statistics(frame: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """What the dataset card reports: counts, site–label NMI, oracle accuracies."""
    y = frame["diagnosis"].to_numpy()
    site = pd.get_dummies(frame["site"]).to_numpy(float)
    causes = frame[["hippocampal_atrophy"]].to_numpy(float)
    causes_all = np.c_[causes, frame[["age"]].to_numpy(float)]
    by_dx = frame.groupby("diagnosis")[["hippocampal_atrophy", "global_atrophy", "n_lesions",
                                        "age"]].mean().reindex(list(DIAGNOSES)).round(3)
    counts = pd.crosstab(frame["site"], frame["diagnosis"]).reindex(columns=list(DIAGNOSES),
                                                                    fill_value=0)
    return {
        "n_subjects": len(frame),
        "diagnosis_counts": frame["diagnosis"].value_counts().reindex(
            list(DIAGNOSES), fill_value=0).astype(int).to_dict(),
        "site_by_diagnosis": {s: {d: int(v) for d, v in row.items()}
                              for s, row in counts.iterrows()},
        "nmi_site_diagnosis": round(_nmi(frame["site"], y), 4),
        "means_by_diagnosis": {d: {k: (None if pd.isna(v) else float(v))
                                   for k, v in row.items()} for d, row in by_dx.iterrows()},
        "balanced_accuracy": {
            name: (None if acc is None else round(acc, 3)) for name, acc in (
                ("hippocampal atrophy only (oracle image signal)",
                 _cv_balanced_accuracy(causes, y, seed)),
                ("hippocampal atrophy + age", _cv_balanced_accuracy(causes_all, y, seed)),
                ("site only (the shortcut)", _cv_balanced_accuracy(site, y, seed)),
                ("chance", 1 / max(1, len(set(y)))))
        },
    }


def _card(cfg: SimulationConfig, stats: dict[str, Any], seconds: float) -> str:
    sites = "\n".join(
        f"| {s.name} | {s.description} | {', '.join(f'{v:+.1f}' for v in s.selection)} | "
        f"{s.gamma} | {s.blur_mm} | {s.noise} | {s.bias} | {s.orientation} {s.dtype} | "
        f"{s.whole_head:.0%} |"
        for s in cfg.site_profiles)
    counts = "\n".join(f"| {s} | " + " | ".join(str(row[d]) for d in DIAGNOSES) + " |"
                       for s, row in stats["site_by_diagnosis"].items())
    means = "\n".join(f"| {d} | " + " | ".join(f"{v:.3f}" if v is not None else "-"
                                               for v in row.values()) + " |"
                      for d, row in stats["means_by_diagnosis"].items())
    accs = "\n".join(f"| {k} | {'n/a (too few subjects)' if v is None else f'{v:.3f}'} |"
                     for k, v in stats["balanced_accuracy"].items())
    return f"""# MediAD synthetic cohort — dataset card

**Synthetic data for research and software testing only. Not patient data; not for
clinical use.**

Drawn by `mediad simulate` (MediAD's structural causal model, see docs/design.md) on the MNI152
2009c symmetric template shipped by nilearn. {stats['n_subjects']} subjects, one baseline
visit each; built in {seconds:.1f} s.

## Configuration
```yaml
{yaml.safe_dump(cfg.model_dump(mode='json', exclude={'workers'})).strip()}
```

## Mechanisms
- Diagnosis D from age and APOE4 (ordinal logit; age coefficient
  {_SIGN[cfg.age_link] * AGE_COEFFICIENT:+.1f} per 7 years (age link: {cfg.age_link}),
  APOE4 +0.9 per allele).
- Site S by selection bias, P(S | D) ∝ exp(confounding · γ[S, D]); the site link
  ({cfg.site_link}) multiplies γ by {_SIGN[cfg.site_link]:g}.
- Image ← D: hippocampal shrink (radial deformation) and medial-temporal grey-matter loss,
  factor ≈ 0 / 0.13 / 0.26 for CN / MCI / AD (+0.004 per year of age, sd 0.05).
- Image ← age: cortical grey-matter loss and ventricle enlargement, 0.012 per year over 55.
- Image ← vascular burden V (latent; hypertension, diabetes, smoking are recorded):
  Poisson(2.5·V) T1-hypointense white-matter lesions, placed in template space (anatomy:
  a second scan of the brain shows them in the same place).
- Image ← S (never given to a model): the scanner below. A site writes the share of scans
  under "whole head" with skull, scalp and face, the others brain-extracted (zero outside).
- Native space{'' if cfg.native_space else ' (off for this cohort)'}: each head is scaled
  ({POSE_SCALE[2]}-{POSE_SCALE[3]}), rotated (sd {POSE_ROTATION_DEG[0]}°, at most
  {POSE_ROTATION_DEG[1]}° per axis) and shifted (sd {POSE_SHIFT_MM[0]} mm, at most
  {POSE_SHIFT_MM[1]} mm) in the field of view; `ground_truth.csv` has each pose.
- Scores ← D (strongly), V and education (MMSE and CDR-SB are label-defining in ADNI).
- {cfg.missing_rate:.0%} of optional fields (education, APOE4, ADAS13, FAQ, BMI, smoking,
  diabetes) are left unrecorded at random; {cfg.partial_record_rate:.0%} of records have no
  cognitive score at all (MMSE, CDR-SB, ADAS13, FAQ), and {cfg.missing_mri_rate:.0%} of
  subjects have no MRI (`has_mri` in `ground_truth.csv`).

| site | kind | γ CN, MCI, AD | gamma | blur mm | noise | bias | stored as | whole head |
|---|---|---|---|---|---|---|---|---|
{sites}

## What was drawn
Site × diagnosis counts (site–diagnosis NMI = **{stats['nmi_site_diagnosis']:.3f}**):

| site | CN | MCI | AD |
|---|---|---|---|
{counts}

Mean ground-truth factors by diagnosis:

| diagnosis | hippocampal atrophy | global atrophy | lesions | age |
|---|---|---|---|---|
{means}

## Calibration: how well causes and shortcuts predict D
5-fold cross-validated balanced accuracy of a logistic regression on ground-truth variables
(an oracle that sees the causes directly, without an image):

| inputs | balanced accuracy |
|---|---|
{accs}

The image signal is real but imperfect (atrophy overlaps between neighbouring classes),
while at high `confounding` the site alone predicts D well — the shortcut the causal head
must not take. Evaluate on a `shift=reversed` cohort to see who took it.

## Files
- `images/*.nii.gz`: one T1 per subject in native space, stored in its site's orientation
  and dtype (`mediad preprocess` brings them to MNI space).
- `records.csv`: ADNIMERGE column names (plus HYPERTENSION, DIABETES, SMOKING, BMI, NOTES).
- `manifest.csv`: MediAD's own schema with `mri_path` (relative to this folder).
- `ground_truth.csv`: each subject's causes, image factors and site.
- `dataset_card.json`: the numbers above, machine-readable.
"""


def simulate_cohort(cfg: SimulationConfig, out_dir: str | Path, overwrite: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Draw a cohort and write it to ``out_dir`` (all or nothing).

    The cohort is built in a temporary sibling folder and renamed into place at the end,
    so an interrupted run never leaves a half-written cohort behind.

    Args:
        cfg: simulation knobs.
        out_dir: destination folder; must not exist unless ``overwrite``.
        overwrite: replace an existing folder (only once the new one is complete).
        progress: called with ``(done, total)`` after each volume.

    Returns:
        The cohort folder.

    Raises:
        MediADError: ``out_dir`` exists and ``overwrite`` is off.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MediADError(f"{out} already exists and is not empty; choose another folder or "
                          "pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frame = draw_population(cfg)
    seeds = np.random.SeedSequence([cfg.seed, 2]).generate_state(len(frame))
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (work / "images").mkdir()
        rel = [f"images/sub-{s}_ses-bl_T1w.nii.gz" if has else None
               for s, has in zip(frame["subject_id"], frame["has_mri"], strict=True)]
        tasks = [(row._asdict(), int(seed), str(work / r), cfg.spacing, cfg.shape,
                  cfg.site_storage, cfg.site_profiles[int(row.site_index)])
                 for row, seed, r in zip(frame.itertuples(index=False), seeds, rel, strict=True)
                 if r is not None]
        if cfg.workers > 1:
            with process_pool(cfg.workers, initializer=_init_worker) as pool:
                for i, _ in enumerate(pool.map(_render_task, tasks, chunksize=4)):
                    if progress:
                        progress(i + 1, len(tasks))
        else:
            for i, task in enumerate(tasks):
                _render_task(task)
                if progress:
                    progress(i + 1, len(tasks))
        frame["mri_path"] = rel
        _write_tables(frame, work, cfg.site_profiles)
        stats = cohort_statistics(frame, cfg.seed)
        seconds = time.perf_counter() - started
        data_cfg = cfg.model_dump(mode="json", exclude={"workers"})  # no effect on the data
        (work / "simulation.yaml").write_text(yaml.safe_dump(data_cfg))
        (work / "dataset_card.json").write_text(json.dumps(
            {"config": data_cfg, "simulator_version": SIMULATOR_VERSION, **stats}, indent=2))
        (work / "dataset_card.md").write_text(_card(cfg, stats, seconds), encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(work, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


_RECORD_COLUMNS = [f for f in ClinicalRecord.model_fields]


def _write_tables(frame: pd.DataFrame, folder: Path, sites: tuple[SiteProfile, ...]) -> None:
    records = [ClinicalRecord(**{k: _py(row.get(k)) for k in _RECORD_COLUMNS})
               for row in frame.to_dict("records")]
    adni = pd.DataFrame([to_adnimerge_row(r, int(r.subject_id.split("_S_")[1]))
                         for r in records])
    adni.to_csv(folder / "records.csv", index=False)
    manifest = pd.DataFrame([r.model_dump() for r in records])
    manifest.insert(2, "mri_path", frame["mri_path"].to_numpy())
    manifest.to_csv(folder / "manifest.csv", index=False)
    truth = frame[["subject_id", "site", "diagnosis", "age", "true_apoe4", "hypertension",
                   "true_diabetes", "true_smoking", "vascular_burden", "hippocampal_atrophy",
                   "global_atrophy", "n_lesions", "whole_head", "has_mri", "head_scale",
                   *(f"{k}_{a}_{u}" for k, u in (("rotation", "deg"), ("shift", "mm"))
                     for a in "xyz")]].copy()
    truth.columns = [c.removeprefix("true_") for c in truth.columns]
    for col in ("hypertension", "diabetes", "smoking", "whole_head", "has_mri"):
        truth[col] = truth[col].astype(int)
    site = {s.name: s for s in sites}
    for attr in ("gamma", "blur_mm", "noise", "bias", "orientation", "dtype"):
        truth[f"site_{attr}"] = [getattr(site[s], attr) for s in frame["site"]]
    truth.to_csv(folder / "ground_truth.csv", index=False)


def _py(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v
