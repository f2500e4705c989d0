"""Saliency maps for one prediction, with ``monai.visualize`` (GradCAM or occlusion).

The map is computed on the preprocessed volume (RAS, the network's grid), so it overlays the
slices the app shows. It explains the *interventional* prediction for the predicted class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from mediad.data.imaging import load_volume
from mediad.data.records import ClinicalRecord
from mediad.engine.predictor import Predictor
from mediad.engine.samples import build_samples
from mediad.errors import MediADError
from mediad.networks.models import MultimodalNet

__all__ = ["saliency"]


class _ImageToLogits(nn.Module):
    """The model as a function of the image alone (the record held fixed)."""

    def __init__(self, model: MultimodalNet, context: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.context = context

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        batch = {k: v.expand(n, *v.shape[1:]) for k, v in self.context.items()}
        batch["image"] = image
        batch["has_image"] = torch.ones(n, device=image.device)
        return self.model(batch).log_probs


def saliency(predictor: Predictor, mri: str | Path, record: ClinicalRecord | None = None,
             method: Literal["gradcam", "occlusion"] = "gradcam") -> tuple[np.ndarray,
                                                                           np.ndarray, str]:
    """Return ``(volume, saliency in [0, 1], explained class)`` on the network's grid.

    Raises:
        MediADError: the model does not use MRIs.
    """
    from monai.visualize import GradCAM, OcclusionSensitivity

    model = predictor.model
    if not isinstance(model, MultimodalNet) or model.image is None:
        raise MediADError("this model does not use MRIs: there is nothing to highlight")
    image = load_volume(mri, transforms=predictor.transforms)[None].to(predictor.device)
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
        occ = OcclusionSensitivity(nn_module=wrapper, mask_size=8, n_batch=8, overlap=0.5)
        with torch.no_grad():
            occ_map, _ = occ(image)
        heat = -occ_map[0, target]  # a drop in the class score when occluded = important
    heat = heat.detach().float().cpu().numpy()
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-8)
    return image[0, 0].cpu().numpy(), heat, predictor.classes[target]
