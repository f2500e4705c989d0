"""Dataset-level transforms: an optional MRI (a missing modality is normal) and the scanner
augmentation (an intervention on site -> image)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from monai.transforms import Compose, MapTransform

__all__ = ["MaybeImaged", "scanner_augmentation"]


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


def scanner_augmentation(key: str = "image") -> Compose:
    """Interventional augmentation: randomise the scanner (S -> image) during training.

    Contrast, blur, bias field and noise are the mechanisms a site changes; drawing them at
    random cuts their link to the label (an intervention on S), for any model variant.
    """
    from monai.transforms import (
        RandAdjustContrastd,
        RandBiasFieldd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        ScaleIntensityd,
    )

    return Compose([
        RandAdjustContrastd(key, prob=0.8, gamma=(0.6, 1.6)),
        RandGaussianSmoothd(key, prob=0.5, sigma_x=(0.0, 1.0), sigma_y=(0.0, 1.0),
                            sigma_z=(0.0, 1.0)),
        RandBiasFieldd(key, prob=0.5, coeff_range=(0.0, 0.3)),
        RandGaussianNoised(key, prob=0.5, std=0.04),
        ScaleIntensityd(key, minv=0.0, maxv=1.0),
    ])
