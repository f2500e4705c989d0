"""One subject in, a prediction out: probabilities with and without the intervention, the
summary and its provenance, and exactly which inputs were used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from mediad.encoders import TextEmbedder
from mediad.errors import MediADError
from mediad.imaging import build_transforms, load_volume
from mediad.models import MultimodalNet, TabularBaseline, build_model
from mediad.records import LABEL_DEFINING_FIELDS, ClinicalRecord
from mediad.summarize import Summarizer
from mediad.train import TrainConfig, _cache_root, _summarizer, build_samples, load_checkpoint

__all__ = ["RESEARCH_NOTICE", "Prediction", "Predictor"]

RESEARCH_NOTICE = "Research use only: not a medical device, not for clinical decisions."


class Prediction(BaseModel):
    """What ``mediad predict`` returns (no identifier beyond what the caller passed)."""

    classes: list[str]
    probabilities: dict[str, float]
    predicted: str
    probabilities_intervention_off: dict[str, float]
    predicted_intervention_off: str
    inputs_used: dict[str, Any]
    summary: str | None
    summary_provenance: dict[str, Any] | None
    model: dict[str, Any]
    notice: str = RESEARCH_NOTICE


class Predictor:
    """A trained model ready to predict; load once, call many times.

    Args:
        checkpoint: a ``best.pt`` written by ``mediad train``.
        task: refuse a checkpoint made for another task.
        device: ``cpu``/``cuda`` (default: CUDA when available).

    Raises:
        MediADError: the checkpoint is missing, foreign or for another task.
    """

    def __init__(self, checkpoint: str | Path, task: str | None = None,
                 device: str | None = None) -> None:
        self.path = Path(checkpoint)
        self.ck = load_checkpoint(self.path, task)
        self.config = TrainConfig.model_validate(self.ck["config"])
        self.classes = list(self.ck["classes"])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        mc = self.config.model
        self.model = build_model(mc, self.config.data.imaging.shape)
        self.model.load_state_dict(self.ck["model_state"])
        if isinstance(self.model, MultimodalNet):
            self.model.to(self.device).eval()
        self.use_image, self.use_text = mc.inputs
        self.summarizer: Summarizer | None = None
        self.embedder: TextEmbedder | None = None
        if self.use_text:
            root = _cache_root(self.config)
            self.summarizer = _summarizer(self.config, root)
            if self.summarizer.template.version != self.ck["template_version"]:
                raise MediADError(
                    f"{self.path}: trained with summary template {self.ck['template_version']}"
                    f", but llm_templates/ holds {self.summarizer.template.version}; use the "
                    "template the model was trained with")
            self.embedder = TextEmbedder(self.ck["text_model_id"], root / "embeddings")
        self.transforms = build_transforms(self.config.data.imaging)

    def predict(self, mri: str | Path | None = None,
                record: ClinicalRecord | None = None) -> Prediction:
        """Predict one subject from an MRI, a record, or both.

        Raises:
            MediADError: nothing to predict from, or an unusable MRI (named).
        """
        if mri is None and record is None:
            raise MediADError("nothing to predict from: give an MRI, a record, or both")
        mc = self.config.model
        use_mri = mri is not None and self.use_image
        use_record = record is not None
        if isinstance(self.model, TabularBaseline) and record is None:
            raise MediADError("the tabular baseline needs a clinical record")
        if not (use_mri or use_record):
            raise MediADError(f"this {mc.kind} model does not use MRIs; give a record")
        sample = build_samples([record], [None], self.classes,
                               self.summarizer if self.use_text else None, self.embedder,
                               mc.tabular_fields)[0]
        summary = self.summarizer.summarize(record) if (self.summarizer and record) else None
        if isinstance(self.model, TabularBaseline):
            x = np.where(sample["tab_mask"] > 0, sample["tab_values"], np.nan)[None]
            log_p = self.model.predict_log_proba(x)[0]
            log_off = log_p
        else:
            image = (load_volume(mri, transforms=self.transforms) if use_mri
                     else torch.zeros((1, *self.config.data.imaging.shape)))
            batch = {k: torch.as_tensor(np.asarray(v))[None] for k, v in sample.items()
                     if k != "image"}
            batch["image"] = image[None]
            batch["has_image"] = torch.tensor([1.0 if use_mri else 0.0])
            with torch.inference_mode():
                out = self.model({k: v.to(self.device) for k, v in batch.items()})
            log_p = out.log_probs[0].float().cpu().numpy()
            log_off = out.log_probs_off[0].float().cpu().numpy()
        probs, off = np.exp(log_p), np.exp(log_off)
        fields = summary.provenance.fields_included if summary else []
        tab_used = [f for f, m in zip(mc.tabular_fields, sample["tab_mask"], strict=True)
                    if m > 0] if (mc.use_tabular or mc.kind == "tabular") else []
        return Prediction(
            classes=self.classes,
            probabilities={c: round(float(p), 6) for c, p in zip(self.classes, probs,
                                                                 strict=True)},
            predicted=self.classes[int(probs.argmax())],
            probabilities_intervention_off={c: round(float(p), 6) for c, p in zip(
                self.classes, off, strict=True)},
            predicted_intervention_off=self.classes[int(off.argmax())],
            inputs_used={
                "mri": use_mri, "record": use_record,
                "mri_ignored": mri is not None and not self.use_image,
                "summary_fields": fields, "tabular_fields": tab_used,
                "label_defining_fields_used": sorted(
                    {f for f in (*fields, *tab_used) if f in LABEL_DEFINING_FIELDS}),
            },
            summary=summary.text if summary else None,
            summary_provenance=summary.provenance.model_dump(mode="json") if summary else None,
            model={"kind": mc.kind, "task": mc.task, "checkpoint": str(self.path),
                   "epoch": self.ck.get("epoch"), "template_version":
                   self.ck.get("template_version"), "text_model": self.ck.get("text_model_id"),
                   "data_fingerprint": self.ck.get("data_fingerprint")},
        )
