"""Dataset-level transforms: the optional MRI, the scanner and the pose augmentation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mediad.data.imaging import ImagingConfig
from mediad.data.transforms import (
    MaybeImaged,
    ScalePercentiles,
    pose_augmentation,
    scanner_augmentation,
)
from mediad.engine.samples import make_dataset


def _brain(shape: int = 32) -> torch.Tensor:
    """A smooth blob inside a zero background, on the [0, 1] scale the ingest produces."""
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, shape)] * 3, indexing="ij"))
    r = grid.pow(2).sum(0).sqrt()
    return torch.where(r < 0.7, 0.4 + 0.6 * torch.cos(3 * r).abs(), 0.0)[None]


def test_scanner_augmentation_keeps_the_ingest_scale_and_the_background() -> None:
    x = {"image": _brain()}
    aug = scanner_augmentation()
    aug.set_random_state(0)
    for _ in range(4):
        out = aug(x)["image"]
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert bool((out[x["image"] == 0] == 0).all())  # no noise outside the brain


def test_pose_augmentation_moves_the_brain_a_little_and_reproducibly() -> None:
    brain = _brain()
    aug = pose_augmentation("image", brain.shape[1:])
    aug.set_random_state(0)
    first = [aug({"image": brain})["image"] for _ in range(3)]
    aug.set_random_state(0)
    again = [aug({"image": brain})["image"] for _ in range(3)]
    for out, same in zip(first, again, strict=True):
        assert type(out) is torch.Tensor and out.shape == brain.shape  # no MONAI metadata
        assert torch.equal(out, same)  # seeded through the transform's own RNG
        moved = float((out - brain).abs().mean()) / float(brain.mean())
        assert 0.01 < moved < 0.5  # moved, but by a voxel or so, not a different image
        assert abs(float(out.sum()) / float(brain.sum()) - 1) < 0.15  # scale within ±3 %
    assert not torch.equal(first[0], first[1])  # every draw is a new pose


def test_pose_augmentation_redraws_every_epoch(
        brain: tuple[np.ndarray, np.ndarray], write_nifti: Callable[..., Path]) -> None:
    """The pose is drawn after the cache, so a cached dataset still gives a new pose for
    every read (a pose cached with the volume would be one more fixed position)."""
    vol, aff = brain
    samples = [{"image": str(write_nifti(vol, affine=aff)), "label": 0}]
    imaging = ImagingConfig(spacing=(4.0, 4.0, 4.0), shape=(32, 32, 32), preprocess=None)
    data = make_dataset(samples, imaging, augment=False, augment_pose=True)
    data.transform.set_random_state(0)
    a, b = data[0]["image"], data[0]["image"]
    plain = make_dataset(samples, imaging, augment=False)[0]["image"]
    assert a.shape == b.shape == plain.shape == (1, 32, 32, 32)
    assert not torch.equal(a, b) and not torch.equal(a, plain)


def test_a_missing_mri_is_a_blank_flagged_volume() -> None:
    def fail(_: dict) -> dict:
        raise AssertionError("the pipeline must not run without an MRI")

    out = MaybeImaged(fail, (8, 8, 8))({"image": "", "label": 1})
    assert out["image"].shape == (1, 8, 8, 8) and float(out["image"].abs().sum()) == 0.0
    assert float(out["has_image"]) == 0.0 and out["label"] == 1


def test_subjects_with_and_without_an_mri_share_a_batch(
        brain: tuple[np.ndarray, np.ndarray], write_nifti: Callable[..., Path]) -> None:
    """Inputs already in MNI space (no preprocessing) are cropped to the foreground; the
    crop must add nothing to a sample that a sample without an MRI lacks, or a cohort with
    missing MRIs cannot be batched (it failed so, on the demo cohort's MNI-space copy)."""
    vol, aff = brain
    samples = [{"image": str(write_nifti(vol, affine=aff)), "label": 0},
               {"image": "", "label": 1}]
    imaging = ImagingConfig(spacing=(4.0, 4.0, 4.0), shape=(32, 32, 32), preprocess=None)
    batch = next(iter(DataLoader(make_dataset(samples, imaging, augment=False, cache=False),
                                 batch_size=2)))
    assert batch["image"].shape == (2, 1, 32, 32, 32)
    assert batch["has_image"].tolist() == [1.0, 0.0]
    assert float(batch["image"][0].amax()) == 1.0 and float(batch["image"][1].abs().sum()) == 0


def test_percentile_scaling_matches_monai() -> None:
    """The numpy percentiles give MONAI's scaling (it sorts with torch.quantile, 20 times
    slower), on a brain-like volume with a zero background."""
    from monai.transforms import ScaleIntensityRangePercentiles

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.gamma(2.0, 300.0, (1, 32, 32, 32)).astype(np.float32))
    x[:, :6] = 0.0
    ours = ScalePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(x)
    theirs = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(x)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)
    assert float(ours.min()) == 0.0 and float(ours.max()) == 1.0


def test_percentile_scaling_of_a_blank_volume_is_silent() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ScalePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(torch.zeros(1, 8, 8, 8))
    assert float(out.abs().max()) == 0.0
