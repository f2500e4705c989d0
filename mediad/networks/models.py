"""MediAD and its baselines, built from one config by one factory.

Every neural variant is a :class:`MultimodalNet` with switches (which inputs, how they are
fused, whether the causal head or a deconfounding baseline is on); the ``tabular`` baseline
is scikit-learn gradient boosting. Presets:

========================  ===================================================================
``mediad``                cross-modal fusion + mediator + front-door + back-door adjustment
``image_only``            MRI encoder -> classifier
``text_only``             summary embeddings -> classifier
``tabular``               HistGradientBoosting on the record's numeric fields (NaN = missing)
``concat``                late fusion: pooled image ‖ pooled text -> classifier
``xattn``                 the same cross-modal fusion, no intervention
``metadata_norm``         concat + metadata normalisation (Lu et al. 2021)
``cf_adversarial``        concat + confounder-adversarial training (Zhao et al. 2020)
========================  ===================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from mediad.networks.causal import (
    BackDoorAdjustment,
    CrossModalFusion,
    FrontDoorAdjustment,
    Mediator,
    masked_mean,
)
from mediad.networks.encoders import (
    TABULAR_FIELDS,
    ImageEncoder,
    ImageEncoderConfig,
    TabularEncoder,
)

__all__ = [
    "ARCHITECTURE",
    "KINDS",
    "TASKS",
    "ModelConfig",
    "ModelOutput",
    "MultimodalNet",
    "TabularBaseline",
    "build_model",
]

Kind = Literal["mediad", "image_only", "text_only", "tabular", "concat", "xattn",
               "metadata_norm", "cf_adversarial"]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
TASKS: dict[str, tuple[str, ...]] = {"cn_mci_ad": ("CN", "MCI", "AD"), "cn_ad": ("CN", "AD")}
TEXT_DIM = 384
#: Bumped whenever a change makes older checkpoints unloadable; checkpoints record it.
ARCHITECTURE = 7
N_CONFOUNDERS = 3  # age (z), sex, vascular risk: what metadata_norm / cf_adversarial see


class ModelConfig(BaseModel):
    """A model variant. ``kind`` sets the defaults; the switches allow ablations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = "mediad"
    task: Literal["cn_mci_ad", "cn_ad"] = "cn_mci_ad"
    image: ImageEncoderConfig = Field(default_factory=ImageEncoderConfig)
    use_image: bool | None = Field(None, description="Default: per kind.")
    use_text: bool | None = Field(None, description="Default: per kind.")
    use_tabular: bool = Field(False, description="Add one token per numeric record field.")
    tabular_fields: tuple[str, ...] = TABULAR_FIELDS
    d_model: int = Field(64, ge=8, le=1024)
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    front_door: bool = True
    back_door: bool = True
    n_prototypes: int = Field(16, ge=2, le=1024)
    consistency_weight: float = Field(0.5, ge=0.0)
    adversarial_weight: float = Field(1.0, ge=0.0)

    @property
    def classes(self) -> tuple[str, ...]:
        return TASKS[self.task]

    @property
    def inputs(self) -> tuple[bool, bool]:
        """(uses image, uses text), after the kind's defaults."""
        image_default = self.kind not in ("text_only", "tabular")
        text_default = self.kind not in ("image_only", "tabular")
        return (image_default if self.use_image is None else self.use_image,
                text_default if self.use_text is None else self.use_text)


@dataclass
class ModelOutput:
    """``log_probs`` is the prediction (P(Y|do(X)) for MediAD); ``log_probs_off`` the same
    model with the intervention switched off (the mediator path, P(Y|X))."""

    log_probs: torch.Tensor
    log_probs_off: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    fused: torch.Tensor | None = None  # features for the front-door dictionary


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor, weight: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight = weight  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.weight * grad, None  # type: ignore[attr-defined]


class MetadataNorm(nn.Module):
    """Regress confounders out of features (Lu et al. 2021): ``f - C β``.

    ``β`` is the least-squares fit of features on confounders, estimated per training batch
    and tracked as a running average for evaluation.
    """

    def __init__(self, n_features: int, n_confounders: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("beta", torch.zeros(n_confounders + 1, n_features))

    def forward(self, f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        design = torch.cat([torch.ones_like(c[:, :1]), c], 1)
        if self.training and f.shape[0] > design.shape[1]:
            beta = torch.linalg.lstsq(design.float(), f.detach().float()).solution
            self.beta.mul_(1 - self.momentum).add_(self.momentum * beta)
            use = beta
        else:
            use = self.beta
        return f - design[:, 1:] @ use[1:]  # keep the intercept: remove only the confounders


class MultimodalNet(nn.Module):
    """Image / text / tabular tokens -> (fusion) -> (causal head or baseline) -> classes."""

    def __init__(self, config: ModelConfig,
                 image_size: tuple[int, int, int] = (64, 64, 64)) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.d_model
        self.use_image, self.use_text = config.inputs
        self.causal = c.kind == "mediad"
        self.fusion_kind = "xattn" if c.kind in ("mediad", "xattn") else "concat"
        n_classes = len(c.classes)
        self.image = ImageEncoder(c.image, d, image_size) if self.use_image else None
        if self.image is not None:
            # Images are in one atlas-like space, so *where* a feature is matters (the
            # hippocampus is always in the same place): learned token positions for the
            # attention paths, and a position-aware pooling for the concat paths.
            try:
                with torch.no_grad():
                    n_tokens = self.image(torch.zeros(1, 1, *image_size)).shape[1]
            except (ValueError, RuntimeError):
                raise ValueError(f"image shape {tuple(image_size)} is too small for the "
                                 f"{c.image.name} encoder, which halves the grid four or more "
                                 "times; use at least 32 voxels per axis") from None
            self.image_pos = nn.Parameter(torch.zeros(1, n_tokens, d))
            self.image_pool = nn.Sequential(nn.Flatten(), nn.Dropout(c.dropout),
                                            nn.Linear(n_tokens * d, d), nn.LayerNorm(d))
        self.text = nn.Sequential(nn.Linear(TEXT_DIM, d), nn.LayerNorm(d)) if (
            self.use_text) else None
        self.tabular = TabularEncoder(len(c.tabular_fields), d) if c.use_tabular else None
        self.modality = nn.Parameter(torch.zeros(3, d))
        n_streams = int(self.use_image) + int(self.use_text or c.use_tabular)
        if self.fusion_kind == "xattn":
            self.fusion = CrossModalFusion(d, c.heads, c.dropout)
            width = d
        else:
            width = d * max(1, n_streams)
        self.mediator = Mediator(d, c.heads) if self.causal else None
        self.front_door = FrontDoorAdjustment(d, c.n_prototypes) if (
            self.causal and c.front_door) else None
        head_in = 2 * d if self.front_door is not None else width
        self.hidden = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(head_in, d), nn.GELU())
        if self.causal and c.back_door:
            self.back_door: BackDoorAdjustment | None = BackDoorAdjustment(d, n_classes)
            self.out = None
        else:
            self.back_door = None
            self.out = nn.Linear(d, n_classes)
        if self.causal:  # mediator path P(Y|X) and per-modality heads for consistency
            self.head_obs = nn.Linear(d, n_classes)
            self.head_image = nn.Linear(d, n_classes)
            self.head_text = nn.Linear(d, n_classes)
        self.mdn = MetadataNorm(width, N_CONFOUNDERS) if c.kind == "metadata_norm" else None
        self.adversary = nn.Sequential(nn.Linear(width, d), nn.ReLU(), nn.Linear(d, 1)) if (
            c.kind == "cf_adversarial") else None

    # -- tokens -----------------------------------------------------------------------------

    def _tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor, torch.Tensor]:
        ref = batch["stratum"]
        b, d = ref.shape[0], self.config.d_model
        device = ref.device
        if self.image is not None:
            v = self.image(batch["image"]) + self.image_pos + self.modality[0]
            if self.fusion_kind == "xattn":  # plus one position-aware whole-image token
                v = torch.cat([self.image_pool(v).unsqueeze(1), v], 1)
            v_mask = batch["has_image"].float().unsqueeze(1).expand(-1, v.shape[1])
        else:
            v = torch.zeros(b, 1, d, device=device)
            v_mask = torch.zeros(b, 1, device=device)
        parts, masks = [], []
        if self.text is not None:
            parts.append(self.text(batch["text"]) + self.modality[1])
            masks.append(batch["has_text"].float().unsqueeze(1).expand(-1, batch["text"].shape[1]))
        if self.tabular is not None:
            parts.append(self.tabular(batch["tab_values"], batch["tab_mask"]) + self.modality[2])
            masks.append(torch.ones_like(batch["tab_mask"]))
        if parts:
            t, t_mask = torch.cat(parts, 1), torch.cat(masks, 1)
        else:
            t, t_mask = torch.zeros(b, 1, d, device=device), torch.zeros(b, 1, device=device)
        return v, v_mask, t, t_mask

    # -- forward ----------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        v, v_mask, t, t_mask = self._tokens(batch)
        if self.fusion_kind == "xattn":
            z, z_mask = self.fusion(v, v_mask, t, t_mask)
            pooled = masked_mean(z, z_mask)
        else:
            streams = []
            if self.use_image:
                streams.append(self.image_pool(v) * v_mask[:, :1])
            if self.use_text or self.tabular is not None:
                streams.append(masked_mean(t, t_mask))
            pooled = torch.cat(streams, 1) if streams else torch.zeros_like(v[:, 0])
        losses: dict[str, torch.Tensor] = {}
        if not self.causal:
            f = pooled
            if self.mdn is not None:
                f = self.mdn(f, batch["confounders"])
            if self.adversary is not None and self.training:
                rev = _GradReverse.apply(f, self.config.adversarial_weight)
                age_hat = self.adversary(rev)[:, 0]
                losses["adversarial"] = F.mse_loss(age_hat, batch["confounders"][:, 0])
            log_probs = F.log_softmax(self.out(self.hidden(f)), -1)  # type: ignore[misc]
            return ModelOutput(log_probs, log_probs, losses, pooled.detach())

        assert self.mediator is not None
        # start the mediator from the whole-image token and the mean record token: the
        # local tokens refine it through attention instead of diluting it
        n_v = v.shape[1]
        summary = torch.cat([z[:, :1], masked_mean(z[:, n_v:], z_mask[:, n_v:]).unsqueeze(1)],
                            1)
        summary_mask = torch.stack([z_mask[:, 0], (z_mask[:, n_v:].sum(1) > 0).float()], 1)
        if self.image is None:
            summary_mask[:, 0] = 0
        m = self.mediator(z, z_mask, masked_mean(summary, summary_mask))
        h_in = torch.cat([m, self.front_door(m)], 1) if self.front_door is not None else m
        h = self.hidden(h_in)
        if self.back_door is not None:
            log_probs, cond_logits = self.back_door(h, batch["stratum"])
            losses["conditional"] = cond_logits  # scored against the label by the trainer
        else:
            log_probs = F.log_softmax(self.out(h), -1)  # type: ignore[misc]
        log_obs = F.log_softmax(self.head_obs(m), -1)
        losses["observational"] = log_obs
        target = log_probs.detach().exp()
        cons = F.kl_div(log_obs, target, reduction="batchmean")
        d = self.config.d_model
        for head, toks, mask in ((self.head_image, z[:, : v.shape[1]], z_mask[:, : v.shape[1]]),
                                 (self.head_text, z[:, v.shape[1]:], z_mask[:, v.shape[1]:])):
            present = mask.sum(1) > 0
            if present.any():
                lp = F.log_softmax(head(masked_mean(toks, mask)[present][:, :d]), -1)
                cons = cons + 0.5 * F.kl_div(lp, target[present], reduction="batchmean")
        losses["consistency"] = cons
        return ModelOutput(log_probs, log_obs, losses, pooled.detach())

    def loss(self, out: ModelOutput, y: torch.Tensor, class_weight: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Cross-entropy on the prediction plus the variant's own terms."""
        total = F.nll_loss(out.log_probs, y, weight=class_weight)
        extra = out.losses
        if "conditional" in extra:  # fit P(Y | X, c) on the observed stratum
            total = total + F.cross_entropy(extra["conditional"], y, weight=class_weight)
        if "observational" in extra:
            total = total + self.config.consistency_weight * (
                F.nll_loss(extra["observational"], y, weight=class_weight)
                + extra["consistency"])
        if "adversarial" in extra:
            total = total + extra["adversarial"]
        return total

    def set_training_priors(self, strata: np.ndarray) -> None:
        if self.back_door is not None:
            self.back_door.set_prior(strata)


class TabularBaseline:
    """Gradient boosting on the record's numeric fields; missing values stay NaN.

    Checkpoints keep the (small) training matrix and refit on load: deterministic, and no
    pickled estimator is ever loaded.
    """

    def __init__(self, config: ModelConfig, seed: int = 0) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.config = config
        self.model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05,
                                                    early_stopping=False, random_state=seed,
                                                    class_weight="balanced")
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> TabularBaseline:
        self.x, self.y = x.astype(np.float32), y.astype(np.int64)
        self.model.fit(self.x, self.y)
        return self

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray:
        proba = np.zeros((len(x), len(self.config.classes)))
        proba[:, self.model.classes_] = self.model.predict_proba(x)
        return np.log(np.clip(proba, 1e-12, 1.0))

    def state_dict(self) -> dict[str, torch.Tensor]:
        assert self.x is not None and self.y is not None
        return {"x": torch.from_numpy(self.x), "y": torch.from_numpy(self.y)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.fit(state["x"].numpy(), state["y"].numpy())


def build_model(config: ModelConfig, image_size: tuple[int, int, int] = (64, 64, 64),
                seed: int = 0) -> MultimodalNet | TabularBaseline:
    """The one factory: every variant from its config."""
    if config.kind == "tabular":
        return TabularBaseline(config, seed)
    use_image, use_text = config.inputs
    if not (use_image or use_text or config.use_tabular):
        raise ValueError(f"model {config.kind!r} has no input: enable use_image, use_text or "
                         "use_tabular")
    return MultimodalNet(config, image_size)


