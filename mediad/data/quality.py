"""Image quality: is what reaches the network a T1-weighted brain at all?

After registration every input shares the MNI152 grid, so the template's tissue maps, sent
through the very same ingest, say where white matter, grey matter and CSF should be on the
network's input. In a T1, white matter is brighter than grey matter, which is brighter than
CSF. An inverted (T2-like) contrast, a volume of noise or something that is not a brain
breaks that order, whatever the registration figures say.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from pydantic import BaseModel

__all__ = ["MIN_CONTRAST", "TissueContrast", "t1_contrast", "tissue_maps"]

#: The smallest step (on the ingest's [0, 1] scale) between white matter and grey matter
#: and between grey matter and CSF that counts as T1 contrast. Simulated sites measure
#: 0.13-0.30 and 0.15-0.35; an inverted brain is negative.
MIN_CONTRAST = 0.03


class TissueContrast(BaseModel):
    """Mean input intensity in each tissue, and whether their order is a T1's."""

    white_matter: float
    grey_matter: float
    csf: float

    @property
    def flag(self) -> str | None:
        wm, gm, csf = self.white_matter, self.grey_matter, self.csf
        if wm - gm >= MIN_CONTRAST and gm - csf >= MIN_CONTRAST:
            return None
        return (f"the intensities are not a T1's (white matter {wm:.2f}, grey matter "
                f"{gm:.2f}, CSF {csf:.2f}; a T1 has white > grey > CSF): another sequence, "
                "inverted contrast, or not a brain")


@lru_cache(maxsize=4)
def tissue_maps(spacing: tuple[float, float, float], shape: tuple[int, int, int],
                output_spacing: float) -> dict[str, torch.Tensor]:
    """Boolean white-matter, grey-matter and CSF masks on the network's input grid.

    Args:
        spacing: the ingest's voxel size (``ImagingConfig.spacing``).
        shape: the network's input shape.
        output_spacing: the grid preprocessing writes registered brains on.
    """
    from nilearn import datasets

    from mediad.data.imaging import ImagingConfig, build_transforms
    from mediad.data.preprocess import template_brain

    template, mask = template_brain(output_spacing)
    resolution = 1 if output_spacing < 2 else 2

    def on_grid(img: nib.Nifti1Image) -> np.ndarray:
        from nilearn.image import resample_to_img

        return np.asarray(resample_to_img(img, template, interpolation="continuous",
                                          force_resample=True, copy_header=True).dataobj)

    wm = on_grid(datasets.load_mni152_wm_template(resolution=resolution))
    gm = on_grid(datasets.load_mni152_gm_template(resolution=resolution))
    brain = mask.astype(bool)
    maps = {"white_matter": brain & (wm > 0.9),
            "grey_matter": brain & (gm > 0.6) & (wm < 0.2),
            "csf": brain & (gm < 0.15) & (wm < 0.15)}
    config = ImagingConfig(spacing=spacing, shape=shape)
    pipeline = build_transforms(config, check_file=False, run_preprocess=False)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in maps.items():
            path = Path(tmp) / f"{name}.nii"
            # a 0/1 mask through the same ingest: the result is above 0.5 where the tissue is
            nib.save(nib.Nifti1Image(m.astype(np.float32), template.affine), str(path))
            out[name] = pipeline({"image": str(path)})["image"][0] > 0.5
    return out


def t1_contrast(image: torch.Tensor, maps: dict[str, torch.Tensor]) -> TissueContrast:
    """Mean intensity of a network input ``(1, *shape)`` in each tissue."""
    x = image[0] if image.ndim == 4 else image
    means = {k: float(x[m].mean()) if bool(m.any()) else float("nan") for k, m in maps.items()}
    return TissueContrast(**means)
