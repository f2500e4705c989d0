"""Saliency maps for one prediction, with ``monai.visualize`` (GradCAM or occlusion).

The map is computed on the preprocessed volume (RAS, the network's grid), so it overlays the
slices the app shows. It explains the *interventional* prediction for the predicted class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from mediad.data.records import ClinicalRecord
from mediad.engine.predictor import Predictor, PreparedMRI
from mediad.engine.samples import build_samples
from mediad.errors import MediADError
from mediad.networks.models import MultimodalNet

__all__ = ["OCCLUSION_MASK", "saliency"]


class _ImageToLogits(nn.Module):
    """The model as a function of the image alone (the record held fixed)."""

    def __init__(self, model: MultimodalNet, context: dict[str, torch.Tensor],
                 on_forward: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.model = model
        self.context = context
        self.on_forward = on_forward

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        if self.on_forward is not None:
            self.on_forward(n)
        batch = {k: v.expand(n, *v.shape[1:]) for k, v in self.context.items()}
        batch["image"] = image
        batch["has_image"] = torch.ones(n, device=image.device)
        return self.model(batch).log_probs


#: Occlusion defaults: a 16-voxel cube moved in steps of 8: 343 forward passes on a 64³
#: grid (about 15 s on 2 cores), 125 on the demo's 48³. An 8-voxel cube in steps of 4 took
#: 276 s on 64³.
OCCLUSION_MASK = 16
OCCLUSION_OVERLAP = 0.5


def _occlusion_passes(shape: Sequence[int], mask: int, overlap: float) -> int:
    step = max(1, round(mask * (1 - overlap)))
    return int(np.prod([len(range(0, max(s - mask, 0) + 1, step)) + (1 if (s - mask) % step
                        else 0) for s in shape]))


def saliency(predictor: Predictor, mri: str | Path | PreparedMRI,
             record: ClinicalRecord | None = None,
             method: Literal["gradcam", "occlusion"] = "gradcam",
             progress: Callable[[int, int], None] | None = None,
             mask_size: int = OCCLUSION_MASK) -> tuple[np.ndarray, np.ndarray, str]:
    """Return ``(volume, saliency in [0, 1], explained class)`` on the network's grid.

    Args:
        predictor: a loaded model that uses MRIs.
        mri: the NIfTI file (or the MRI the predictor prepared from it).
        record: the record held fixed while the image varies (optional).
        method: ``gradcam`` (one backward pass) or ``occlusion`` (one pass per position).
        progress: called with (occluded volumes scored, total) as occlusion runs.
        mask_size: side of the occluding cube, in voxels of the network grid.

    Raises:
        MediADError: the model does not use MRIs.
    """
    from monai.visualize import GradCAM, OcclusionSensitivity

    model = predictor.model
    if not isinstance(model, MultimodalNet) or model.image is None:
        raise MediADError("this model does not use MRIs: there is nothing to highlight")
    image = predictor.load_image(mri).tensor[None].to(predictor.device)
    sample = build_samples([record], [None], predictor.classes, predictor.summarizer,
                           predictor.embedder, predictor.config.model.tabular_fields)[0]
    context = {k: torch.as_tensor(np.asarray(v))[None].to(predictor.device)
               for k, v in sample.items() if k not in ("image",)}
    wrapper = _ImageToLogits(model, context).eval()
    with torch.no_grad():
        target = int(wrapper(image).argmax(1))
    if method == "gradcam":
        layer = f"model.image.body.{len(model.image.body) - 1}"
        cam = GradCAM(nn_module=wrapper, target_layers=layer)
        with torch.enable_grad():
            heat = cam(x=image, class_idx=target)[0, 0]
    else:
        total = _occlusion_passes(image.shape[2:], mask_size, OCCLUSION_OVERLAP)
        done = [0]

        def tick(n: int) -> None:
            done[0] = min(total, done[0] + n)
            if progress is not None:
                progress(done[0], total)

        wrapper.on_forward = tick
        occ = OcclusionSensitivity(nn_module=wrapper, mask_size=mask_size, n_batch=8,
                                   overlap=OCCLUSION_OVERLAP, verbose=False)
        with torch.no_grad():
            occ_map, _ = occ(image)
        if progress is not None:
            progress(total, total)
        heat = -occ_map[0, target]  # a drop in the class score when occluded = important
    heat = heat.detach().float().cpu().numpy()
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-8)
    return image[0, 0].cpu().numpy(), heat, predictor.classes[target]
