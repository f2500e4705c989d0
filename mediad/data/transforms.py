"""Dataset-level transforms: an optional MRI (a missing modality is normal) and the scanner
augmentation (an intervention on site -> image)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    ScaleIntensityRangePercentilesd,
)
from monai.utils import convert_to_tensor

__all__ = ["MaybeImaged", "ScalePercentiles", "ScalePercentilesd", "pose_augmentation",
           "scanner_augmentation"]


class ScalePercentiles(ScaleIntensityRangePercentiles):
    """MONAI's percentile scaling, with the percentiles taken by numpy.

    For a tensor under a million voxels MONAI takes ``torch.quantile``, which sorts: 15 ms
    of a 48³ scanner augmentation's 18 ms per sample (numpy's selection: 0.7 ms, the same
    linear interpolation), i.e. most of a training epoch's time with augmentation on.
    """

    def _normalize(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        if self.relative:
            return super()._normalize(img)
        values = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img
        a_min, a_max = (float(v) for v in np.percentile(values, [self.lower, self.upper]))
        if a_max == a_min:  # a blank volume (a subject without an MRI): MONAI's answer,
            # without the warning it would print for every such sample of every epoch
            return convert_to_tensor(img - a_min + (self.b_min or 0.0), track_meta=False)
        scaled = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=self.b_min,
                                     b_max=self.b_max, clip=self.clip, dtype=self.dtype)(img)
        return convert_to_tensor(scaled, track_meta=False)


class ScalePercentilesd(ScaleIntensityRangePercentilesd):
    """Dictionary version of :class:`ScalePercentiles`."""

    def __init__(self, keys: KeysCollection, lower: float, upper: float,
                 b_min: float | None, b_max: float | None, clip: bool = False) -> None:
        super().__init__(keys, lower, upper, b_min, b_max, clip)
        self.scaler = ScalePercentiles(lower, upper, b_min, b_max, clip)


class MaybeImaged(MapTransform):
    """Run the ingest pipeline when a row has an MRI; otherwise a blank volume, flagged.

    A missing modality is normal: the model sees ``has_image = 0`` and masks the tokens.
    """

    def __init__(self, pipeline: Callable[[dict], dict], shape: Sequence[int],
                 key: str = "image") -> None:
        super().__init__([key])
        self.pipeline = pipeline
        self.shape = tuple(shape)
        self.key = key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if d.get(self.key):
            d = self.pipeline(d)
            d["has_image"] = torch.tensor(1.0)
        else:
            d[self.key] = torch.zeros((1, *self.shape))
            d["has_image"] = torch.tensor(0.0)
        return d


def scanner_augmentation(key: str = "image", lower_percentile: float = 0.5,
                         upper_percentile: float = 99.5) -> Compose:
    """Interventional augmentation: randomise the scanner (S -> image) during training.

    Contrast, resolution and blur, bias field and noise are the mechanisms a site changes;
    drawing them at random, over ranges wider than the training sites span, cuts their link
    to the label (an intervention on S) and covers scanners none of the sites has. The
    result is normalised exactly as evaluation normalises (the ingest's robust percentile
    scaling with its percentiles), so a model never sees a normalisation only training has.

    Args:
        key: the image key.
        lower_percentile: the ingest's lower percentile (``ImagingConfig``).
        upper_percentile: the ingest's upper percentile.
    """
    from monai.transforms import (
        RandAdjustContrastd,
        RandBiasFieldd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandSimulateLowResolutiond,
    )

    return Compose([
        _MarkBackground(key),
        RandAdjustContrastd(key, prob=0.9, gamma=(0.45, 2.2)),
        RandSimulateLowResolutiond(key, prob=0.3, zoom_range=(0.5, 0.9)),
        RandGaussianSmoothd(key, prob=0.5, sigma_x=(0.0, 1.0), sigma_y=(0.0, 1.0),
                            sigma_z=(0.0, 1.0)),
        RandBiasFieldd(key, prob=0.6, coeff_range=(0.0, 0.45)),
        RandGaussianNoised(key, prob=0.6, std=0.05),
        _MarkBackground(key, restore=True),
        ScalePercentilesd(key, lower=lower_percentile, upper=upper_percentile, b_min=0.0,
                          b_max=1.0, clip=True),
    ])


def pose_augmentation(key: str = "image", shape: Sequence[int] | None = None,
                      degrees: float = 3.0, shift: float = 1.0, scale: float = 0.03
                      ) -> Compose:
    """Jitter a registered brain's pose by about what registration leaves behind.

    Registration puts every training brain on the same voxels, so a network trained on
    them alone keys on exact positions: rolled by one 3 mm voxel, 96 brains' MRI-only
    answers from the reference recipe without this jitter (one forward pass, calibrated)
    moved by 0.15 on average and up to 0.99; with it, by 0.05. Registration leaves less
    than a voxel, but enough that its residual moved answers more than the target allows
    (README, "Pose").

    Args:
        key: the image key.
        shape: the images' shape, when all share it: the sampling grid is then built once
            (5.8 ms a 48³ sample instead of 7.8; the same output).
        degrees: the largest rotation about each axis.
        shift: the largest shift along each axis, in voxels.
        scale: the largest relative change of size along each axis.
    """
    from monai.transforms import RandAffined, ToTensord

    return Compose([RandAffined(key, prob=1.0, rotate_range=[np.deg2rad(degrees)] * 3,
                                translate_range=[shift] * 3, scale_range=[scale] * 3,
                                mode="bilinear", padding_mode="zeros",
                                spatial_size=shape, cache_grid=shape is not None),
                    ToTensord(key, track_meta=False)])


class _MarkBackground:
    """Remember where the image is exactly 0 (outside the registered brain), then zero it
    again after noise and blur: evaluation never sees noise outside the brain."""

    def __init__(self, key: str, restore: bool = False) -> None:
        self.key, self.restore = key, restore

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        tag = f"{self.key}_background"
        if self.restore:
            d[self.key] = d[self.key] * ~d.pop(tag)
        else:
            d[tag] = d[self.key] <= 0
        return d
