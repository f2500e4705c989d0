"""MediAD and its baselines, built from one config by one factory.

Every neural variant is a subclass of :class:`MultimodalNet` (shared encoders and
objective), each readable on its own: :class:`LateFusionNet` (with :class:`MetadataNormNet`
and :class:`AdversarialNet`), :class:`CrossAttentionNet` and :class:`MediADNet`. The
``tabular`` baseline is scikit-learn gradient boosting. Kinds:

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

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
    "VARIANTS",
    "AdversarialNet",
    "CrossAttentionNet",
    "LateFusionNet",
    "MediADNet",
    "MetadataNormNet",
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
ARCHITECTURE = 11
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
    unimodal_weight: float = Field(
        0.5, ge=0.0, description="Weight of the per-modality auxiliary heads of multimodal "
        "variants: the pooled MRI and the pooled record each predict the diagnosis on their "
        "own (training only). Without them the record, which learns first, leaves the MRI "
        "encoder almost no gradient: concat at confounding 0 stayed at chance for 17 epochs "
        "(the MRI-only model learned by epoch 11).")
    shift_average: int = Field(
        1, ge=0, le=2, description="Predictions (calibration, test metrics, `predict`, the "
        "app) average the class probabilities over the registered MRI shifted by up to this "
        "many voxels along each axis, (2n+1)^3 positions; 0: off. Registration leaves about "
        "a voxel of jitter, and a CNN's answer can turn on it: the demo model's MRI-only "
        "probabilities moved by 0.25 on average between two scans of one brain, 0.07 with "
        "n = 1 (benchmarks/bench_pose.py). Checkpoint selection reads the plain forward.")
    sites: tuple[str, ...] = Field(
        (), description="The training sites, set by the trainer from the manifest's site "
        "column: the back door sums over them and the site adversary tells them apart. "
        "Never an input: prediction needs no site.")
    site_adversarial: float | None = Field(
        None, ge=0.0, description="Weight of the site-adversarial term on the features the "
        "classifier reads (gradient reversal); default 0.5 for mediad, 0 otherwise.")

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

    @property
    def site_adversarial_weight(self) -> float:
        """0 without at least two training sites to tell apart."""
        if len(self.sites) < 2:
            return 0.0
        default = 0.5 if self.kind == "mediad" else 0.0
        return default if self.site_adversarial is None else self.site_adversarial


@dataclass
class ModelOutput:
    """``log_probs`` is the prediction (P(Y|do(X)) for MediAD); ``log_probs_mediator`` the
    auxiliary mediator head ``P(Y | m)`` that training keeps consistent with it (the
    prediction itself for the other variants). It is not "the same model without the
    intervention" and is never shown to users as such (docs/design.md)."""

    log_probs: torch.Tensor
    log_probs_mediator: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # what the losses need
    fused: torch.Tensor | None = None  # features for the front-door dictionary
    readout: torch.Tensor | None = None  # what the label is read from (site-probe audits)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor, weight: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight = weight  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.weight * grad, None  # type: ignore[attr-defined]


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``Σ w_i v_i / Σ w_i`` (the plain mean without weights), as ``F.nll_loss(weight=)``."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp(min=1e-12)


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
    """What every neural variant shares: the encoders, which turn a batch into image tokens
    and record tokens (summary sections and, optionally, one token per record field), and
    the training objective. Subclasses fuse the tokens and classify, one variant each."""

    def __init__(self, config: ModelConfig,
                 image_size: tuple[int, int, int] = (64, 64, 64)) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.use_image, self.use_text = config.inputs
        self.image = ImageEncoder(config.image, d, image_size) if self.use_image else None
        if self.image is not None:
            # Images are in one atlas-like space, so *where* a feature is matters (the
            # hippocampus is always in the same place): learned token positions for the
            # attention paths, and a position-aware pooling for the concat paths.
            try:
                with torch.no_grad():
                    n_tokens = self.image(torch.zeros(1, 1, *image_size)).shape[1]
            except (ValueError, RuntimeError):
                raise ValueError(f"image shape {tuple(image_size)} is too small for the "
                                 f"{config.image.name} encoder, which halves the grid four or "
                                 "more times; use at least 32 voxels per axis") from None
            self.image_pos = nn.Parameter(torch.zeros(1, n_tokens, d))
            self.image_pool = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout),
                                            nn.Linear(n_tokens * d, d), nn.LayerNorm(d))
        self.text = nn.Sequential(nn.Linear(TEXT_DIM, d), nn.LayerNorm(d)) if (
            self.use_text) else None
        self.tabular = TabularEncoder(len(config.tabular_fields), d) if (
            config.use_tabular) else None
        self.modality = nn.Parameter(torch.zeros(3, d))
        # per-modality auxiliary heads (gradient blending's unimodal terms), multimodal only
        multimodal = self.use_image and (self.use_text or config.use_tabular)
        self.unimodal = nn.ModuleDict({
            "image": nn.Linear(d, self.n_classes),
            "record": nn.Linear(d, self.n_classes)}) if (
            multimodal and config.unimodal_weight > 0) else None
        self.front_door: FrontDoorAdjustment | None = None  # only MediAD has a dictionary
        self.site_adversary: nn.Module | None = None  # see add_site_adversary
        self.site_scale = 1.0  # the trainer's warm-up factor on the adversary's weight

    def add_site_adversary(self, width: int) -> None:
        """A site classifier on the ``width`` features the label is read from, trained
        through gradient reversal: those features learn to hide the site (training only).

        The adversary guesses the site *within each diagnosis* (one set of site logits per
        class, read at the sample's label): the features are pushed towards site ⟂
        features | diagnosis. Where the site predicts the diagnosis, an unconditional
        adversary would also strip the diagnosis from the features."""
        if self.config.site_adversarial_weight > 0:
            d = self.config.d_model
            self.site_adversary = nn.Sequential(
                nn.Linear(width, d), nn.ReLU(),
                nn.Linear(d, self.n_classes * len(self.config.sites)))

    def training_site(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each sample's training-site index; -1 where unknown (always at prediction)."""
        site = batch.get("site")
        if site is None:
            return torch.full_like(batch["label"], -1)
        return torch.where((site >= 0) & (site < len(self.config.sites)), site, -1)

    def site_term(self, features: torch.Tensor, batch: dict[str, torch.Tensor],
                  aux: dict[str, torch.Tensor]) -> None:
        """Record the adversary's site logits for :meth:`losses` (training only)."""
        if self.site_adversary is not None and self.training:
            reversed_ = _GradReverse.apply(features, self.config.site_adversarial_weight
                                           * self.site_scale)
            aux["site_logits"] = self.site_adversary(reversed_)
            aux["site"] = self.training_site(batch)

    @property
    def n_classes(self) -> int:
        return len(self.config.classes)

    @property
    def reads(self) -> tuple[bool, bool, bool]:
        """Which of (MRI, summary, record fields) the model reads."""
        return self.use_image, self.use_text, self.tabular is not None

    def unimodal_terms(self, image: torch.Tensor, image_present: torch.Tensor,
                       record: torch.Tensor, record_present: torch.Tensor,
                       aux: dict[str, torch.Tensor]) -> None:
        """Record each modality's own logits for :meth:`losses` (training only)."""
        if self.unimodal is not None and self.training:
            aux["unimodal_image"] = self.unimodal["image"](image)
            aux["unimodal_image_present"] = image_present > 0
            aux["unimodal_record"] = self.unimodal["record"](record)
            aux["unimodal_record_present"] = record_present > 0

    def image_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, N, D), mask (B, N))``; one masked zero token without an image path."""
        b, d = batch["tab_mask"].shape[0], self.config.d_model
        if self.image is None:
            device = batch["tab_mask"].device
            return torch.zeros(b, 1, d, device=device), torch.zeros(b, 1, device=device)
        encoded = batch.get("image_encoded")  # shared across views by predict_views
        v = (self.image(batch["image"]) if encoded is None else encoded) + self.image_pos \
            + self.modality[0]
        return v, batch["has_image"].float().unsqueeze(1).expand(-1, v.shape[1])

    def record_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor,
                                                                     torch.Tensor]:
        """Summary-section tokens then record-field tokens, with their mask."""
        b, d = batch["tab_mask"].shape[0], self.config.d_model
        device = batch["tab_mask"].device
        parts, masks = [], []
        if self.text is not None:
            parts.append(self.text(batch["text"]) + self.modality[1])
            masks.append(batch["has_text"].float().unsqueeze(1).expand(
                -1, batch["text"].shape[1]))
        if self.tabular is not None:
            parts.append(self.tabular(batch["tab_values"], batch["tab_mask"])
                         + self.modality[2])
            # the encoder keeps "not recorded" tokens (their mask embedding means
            # something); a record hidden as a whole is masked out entirely
            present = (batch["tab_mask"].sum(1, keepdim=True) > 0).float()
            masks.append(present.expand(-1, batch["tab_mask"].shape[1]))
        if not parts:
            return torch.zeros(b, 1, d, device=device), torch.zeros(b, 1, device=device)
        return torch.cat(parts, 1), torch.cat(masks, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        raise NotImplementedError

    def predict(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """The answer users get: in evaluation mode, the class probabilities averaged over
        the image shifted by up to ``config.shift_average`` voxels per axis (marginalising
        the registration's residual jitter); the read-out is the unshifted one's."""
        return self.predict_views([batch])[0]

    def predict_views(self, views: Sequence[dict[str, torch.Tensor]], average: bool = True
                      ) -> list[ModelOutput]:
        """:meth:`predict` for views of one batch that differ only in what they hide (the
        input patterns of calibration), with the image encoder run once per shift for all.

        Args:
            views: batches holding the very same ``image`` tensor.
            average: ``False`` for the plain, unshifted forward pass.

        Returns:
            One output per view, as :meth:`predict` (or ``forward``) gives it.

        Raises:
            ValueError: when the views do not share their image.
        """
        if any(v["image"] is not views[0]["image"] for v in views):
            raise ValueError("predict_views needs views of one batch (the same image tensor)")
        imaged = [i for i, v in enumerate(views) if bool(v["has_image"].any())]
        outs: list[ModelOutput | None] = [None if i in imaged else self(v)
                                          for i, v in enumerate(views)]
        if self.image is None or not imaged:
            return [self(v) if o is None else o for v, o in zip(views, outs, strict=True)]
        radius = self.config.shift_average if average and not self.training else 0
        offsets = [o for o in itertools.product(range(-radius, radius + 1), repeat=3)
                   if any(o)]
        image = views[0]["image"]
        totals: dict[int, torch.Tensor] = {}
        for o in [(0, 0, 0), *offsets]:
            shifted = torch.roll(image, o, dims=(2, 3, 4)) if any(o) else image
            encoded = self.image(shifted)
            for i in imaged:
                out = self({**views[i], "image": shifted, "image_encoded": encoded})
                if outs[i] is None:
                    outs[i] = out
                totals[i] = totals.get(i, 0) + out.log_probs.float().exp()
        if offsets:
            for i in imaged:
                first = outs[i]
                assert first is not None
                mean = (totals[i] / (len(offsets) + 1)).clamp_min(1e-12)
                outs[i] = replace(first, log_probs=mean.log().to(first.log_probs.dtype))
        return [o for o in outs if o is not None]

    def losses(self, out: ModelOutput, y: torch.Tensor,
               weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The training objective's terms (weighted, ready to sum).

        Args:
            out: the forward pass.
            y: labels.
            weight: per-sample weights (class and site balance), or ``None``.
        """
        terms = {"prediction": weighted_mean(F.nll_loss(out.log_probs, y, reduction="none"),
                                             weight)}
        if "site_logits" in out.aux:
            known = out.aux["site"] >= 0
            if known.any():
                # the site logits of each sample's own diagnosis (see add_site_adversary)
                logits = out.aux["site_logits"].view(len(y), self.n_classes, -1)
                logits = logits[torch.arange(len(y), device=y.device), y]
                terms["site_adversarial"] = weighted_mean(F.cross_entropy(
                    logits[known], out.aux["site"][known], reduction="none"),
                    None if weight is None else weight[known])
        for name in ("image", "record"):
            present = out.aux.get(f"unimodal_{name}_present")
            if present is not None:  # a term (0 without the input) even then: under DDP
                w = present.float() * (1.0 if weight is None else weight)  # every head
                terms[f"unimodal_{name}"] = self.config.unimodal_weight * weighted_mean(
                    F.cross_entropy(out.aux[f"unimodal_{name}"], y, reduction="none"), w)
        return terms

    def loss(self, out: ModelOutput, y: torch.Tensor, weight: torch.Tensor | None = None
             ) -> torch.Tensor:
        """The training objective: the sum of :meth:`losses`."""
        return torch.stack(list(self.losses(out, y, weight).values())).sum()

    def set_training_priors(self, sites: np.ndarray) -> None:
        """Statistics of the training set a variant needs (the back door's site prior)."""


class LateFusionNet(MultimodalNet):
    """``image_only``, ``text_only`` and ``concat``: pooled image ‖ pooled record tokens ->
    classifier. Subclasses may adjust the pooled features first."""

    def __init__(self, config: ModelConfig,
                 image_size: tuple[int, int, int] = (64, 64, 64)) -> None:
        super().__init__(config, image_size)
        d = config.d_model
        self.width = d * max(1, int(self.use_image) + int(self.use_text or config.use_tabular))
        self.hidden = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(self.width, d),
                                    nn.GELU())
        self.out = nn.Linear(d, self.n_classes)
        self.add_site_adversary(self.width)

    def pooled(self, batch: dict[str, torch.Tensor],
               aux: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        streams = []
        if self.use_image:
            v, v_mask = self.image_tokens(batch)
            streams.append(self.image_pool(v) * v_mask[:, :1])
        if self.use_text or self.tabular is not None:
            t, t_mask = self.record_tokens(batch)
            streams.append(masked_mean(t, t_mask))
        if aux is not None and len(streams) == 2:
            self.unimodal_terms(streams[0], v_mask[:, 0], streams[1], t_mask.amax(1), aux)
        return torch.cat(streams, 1)

    def adjust(self, features: torch.Tensor, batch: dict[str, torch.Tensor],
               aux: dict[str, torch.Tensor]) -> torch.Tensor:
        """Deconfounding baselines change the features here; plain late fusion does not."""
        return features

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        aux: dict[str, torch.Tensor] = {}
        pooled = self.pooled(batch, aux)
        f = self.adjust(pooled, batch, aux)
        self.site_term(f, batch, aux)
        log_probs = F.log_softmax(self.out(self.hidden(f)), -1)
        return ModelOutput(log_probs, log_probs, aux, pooled.detach(), f.detach())


class MetadataNormNet(LateFusionNet):
    """``metadata_norm``: concat with the confounders regressed out of the features."""

    def __init__(self, config: ModelConfig,
                 image_size: tuple[int, int, int] = (64, 64, 64)) -> None:
        super().__init__(config, image_size)
        self.mdn = MetadataNorm(self.width, N_CONFOUNDERS)

    def adjust(self, features: torch.Tensor, batch: dict[str, torch.Tensor],
               aux: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mdn(features, batch["confounders"])


class AdversarialNet(LateFusionNet):
    """``cf_adversarial``: concat whose features are trained to hide age from an adversary
    (gradient reversal)."""

    def __init__(self, config: ModelConfig,
                 image_size: tuple[int, int, int] = (64, 64, 64)) -> None:
        super().__init__(config, image_size)
        d = config.d_model
        self.adversary = nn.Sequential(nn.Linear(self.width, d), nn.ReLU(), nn.Linear(d, 1))

    def adjust(self, features: torch.Tensor, batch: dict[str, torch.Tensor],
               aux: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.training:
            reversed_ = _GradReverse.apply(features, self.config.adversarial_weight)
            aux["age_hat"] = self.adversary(reversed_)[:, 0]
            aux["age"] = batch["confounders"][:, 0]
        return features

    def losses(self, out: ModelOutput, y: torch.Tensor,
               weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms = super().losses(out, y, weight)
        if "age_hat" in out.aux:
            terms["adversarial"] = F.mse_loss(out.aux["age_hat"], out.aux["age"])
        return terms


class CrossAttentionNet(MultimodalNet):
    """``xattn``: image tokens (plus one whole-image token) ⇄ record tokens by
    bidirectional cross-attention, pooled -> classifier; no intervention."""

    def __init__(self, config: ModelConfig,
                 image_size: tuple[int, int, int] = (64, 64, 64)) -> None:
        super().__init__(config, image_size)
        d = config.d_model
        self.fusion = CrossModalFusion(d, config.heads, config.dropout)
        self.hidden = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(self.head_width, d),
                                    nn.GELU())
        self.out = nn.Linear(d, self.n_classes)

    @property
    def head_width(self) -> int:
        return self.config.d_model

    def fused(self, batch: dict[str, torch.Tensor], aux: dict[str, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(fused tokens, their mask, number of image tokens)``."""
        v, v_mask = self.image_tokens(batch)
        if self.image is not None:  # plus one position-aware whole-image token
            v = torch.cat([self.image_pool(v).unsqueeze(1), v], 1)
            v_mask = torch.cat([v_mask[:, :1], v_mask], 1)
        t, t_mask = self.record_tokens(batch)
        if aux is not None:
            self.unimodal_terms(v[:, 0], v_mask[:, 0], masked_mean(t, t_mask), t_mask.amax(1),
                                aux)
        z, z_mask = self.fusion(v, v_mask, t, t_mask)
        return z, z_mask, v.shape[1]

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        aux: dict[str, torch.Tensor] = {}
        z, z_mask, _ = self.fused(batch, aux)
        pooled = masked_mean(z, z_mask)
        log_probs = F.log_softmax(self.out(self.hidden(pooled)), -1)
        return ModelOutput(log_probs, log_probs, aux, pooled.detach(), pooled.detach())


class MediADNet(CrossAttentionNet):
    """``mediad``: the cross-modal fusion, then the causal head.

    mediator ``m`` (in-sample attention) -> front door: ``x̂`` = cross-sample attention to
    the prototype dictionary (built from site-centred features) -> hidden ``h`` of
    ``[m ; x̂]`` -> back door: ``Σ_s P(Y|h, s) P(s)`` over the training sites. A site
    adversary on ``m`` makes the mediator hide the site. The mediator path ``P(Y|m)`` and
    per-modality heads are trained for consistency (``log_probs_mediator``).
    """

    def __init__(self, config: ModelConfig,
                 image_size: tuple[int, int, int] = (64, 64, 64)) -> None:
        super().__init__(config, image_size)
        d = config.d_model
        self.mediator = Mediator(d, config.heads)
        self.front_door = FrontDoorAdjustment(d, config.n_prototypes) if (
            config.front_door) else None
        if config.back_door:
            self.back_door: BackDoorAdjustment | None = BackDoorAdjustment(
                d, self.n_classes, max(1, len(config.sites)))
            self.out = None  # type: ignore[assignment]
        else:
            self.back_door = None
        self.head_obs = nn.Linear(d, self.n_classes)
        self.head_image = nn.Linear(d, self.n_classes)
        self.head_text = nn.Linear(d, self.n_classes)
        self.add_site_adversary(d)

    @property
    def head_width(self) -> int:
        return 2 * self.config.d_model if self.config.front_door else self.config.d_model

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        aux: dict[str, torch.Tensor] = {}
        z, z_mask, n_v = self.fused(batch, aux)
        pooled = masked_mean(z, z_mask)
        # start the mediator from the whole-image token and the mean record token: the
        # local tokens refine it through attention instead of diluting it
        start = torch.cat([z[:, :1], masked_mean(z[:, n_v:], z_mask[:, n_v:]).unsqueeze(1)],
                          1)
        start_mask = torch.stack([z_mask[:, 0], (z_mask[:, n_v:].sum(1) > 0).float()], 1)
        if self.image is None:
            start_mask[:, 0] = 0
        m = self.mediator(z, z_mask, masked_mean(start, start_mask))
        h = self.hidden(torch.cat([m, self.front_door(m)], 1) if self.front_door is not None
                        else m)
        self.site_term(m, batch, aux)
        if self.back_door is not None:
            site = self.training_site(batch)
            log_probs, aux["conditional_logits"] = self.back_door(h, site)
            aux["conditional_site"] = site
        else:
            log_probs = F.log_softmax(self.out(h), -1)  # type: ignore[misc]
        log_obs = F.log_softmax(self.head_obs(m), -1)
        target = log_probs.detach().exp()
        consistency = F.kl_div(log_obs, target, reduction="batchmean")
        d = self.config.d_model
        for head, toks, mask in ((self.head_image, z[:, :n_v], z_mask[:, :n_v]),
                                 (self.head_text, z[:, n_v:], z_mask[:, n_v:])):
            present = mask.sum(1) > 0
            if present.any():
                lp = F.log_softmax(head(masked_mean(toks, mask)[present][:, :d]), -1)
                consistency = consistency + 0.5 * F.kl_div(lp, target[present],
                                                           reduction="batchmean")
        aux["consistency"] = consistency
        return ModelOutput(log_probs, log_obs, aux, pooled.detach(), m.detach())

    def losses(self, out: ModelOutput, y: torch.Tensor,
               weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms = super().losses(out, y, weight)
        known = out.aux.get("conditional_site", torch.empty(0)) >= 0
        if "conditional_logits" in out.aux and known.any():
            # fit P(Y | X, s) on the site each sample was observed at
            terms["conditional"] = weighted_mean(F.cross_entropy(
                out.aux["conditional_logits"][known], y[known], reduction="none"),
                None if weight is None else weight[known])
        w = self.config.consistency_weight
        terms["mediator"] = w * weighted_mean(F.nll_loss(out.log_probs_mediator, y,
                                                         reduction="none"), weight)
        terms["consistency"] = w * out.aux["consistency"]
        return terms

    def set_training_priors(self, sites: np.ndarray) -> None:
        if self.back_door is not None:
            self.back_door.set_prior(sites)


#: The factory's table: one class per neural variant.
VARIANTS: dict[str, type[MultimodalNet]] = {
    "mediad": MediADNet, "xattn": CrossAttentionNet, "concat": LateFusionNet,
    "image_only": LateFusionNet, "text_only": LateFusionNet,
    "metadata_norm": MetadataNormNet, "cf_adversarial": AdversarialNet,
}


class TabularBaseline:
    """Gradient boosting on the record's numeric fields; missing values stay NaN.

    What its checkpoint holds, and why: the training matrix of numeric record fields (age,
    education, APOE4, scores, vascular and CSF values; no ids, no free text, no site, rows
    in shuffled order) and the labels, refitted deterministically on load. Loading a fitted
    scikit-learn estimator means unpickling code, which MediAD never does. The matrix is
    the training data itself, so whoever holds this baseline's checkpoint can tell whether
    a known record was in it: share it only as you would share the training records. It is
    an ablation baseline; the MediAD checkpoints hold weights and salted subject hashes.
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
        order = np.random.default_rng(0).permutation(len(self.y))  # no manifest order
        return {"x": torch.from_numpy(self.x[order]), "y": torch.from_numpy(self.y[order])}

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
    return VARIANTS[config.kind](config, image_size)


