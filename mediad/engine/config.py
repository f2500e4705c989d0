"""Training configuration: one pydantic model per part (data, model, optimisation), YAML in/out."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mediad.data.imaging import ImagingConfig
from mediad.data.splits import SplitConfig
from mediad.errors import InputError
from mediad.networks.models import ModelConfig
from mediad.paths import data_dir
from mediad.summarize import SummaryConfig

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "cache_root"]


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: Path
    splits: Path | None = Field(None, description="Existing splits JSON; made when absent.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    imaging: ImagingConfig = Field(default_factory=ImagingConfig)
    summary: SummaryConfig = Field(default_factory=lambda: SummaryConfig(backend="template"))
    text_model: str = "all-minilm-l6-v2"
    augment: bool = Field(False, description="Randomise scanner effects (interventional "
                          "augmentation).")
    augment_pose: bool = Field(False, description="Also jitter each registered training "
                               "brain's pose by about registration's residual (rotations up "
                               "to 3°, shifts up to a voxel, scale ±3 %).")
    cache_dir: Path | None = Field(None, description="Summaries, embeddings and "
                                   "preprocessed MRIs cache.")
    workers: int = Field(2, ge=1, le=64, description="Processes preprocessing raw MRIs.")


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW). At 2e-3 and above "
                      "the MRI encoder stayed at chance for 20 epochs on the 48³ cohorts.")
    warmup_epochs: float = Field(
        3.0, ge=0.0, le=100.0, description="Linear warm-up of the learning rate, per step, "
        "before the cosine decay. On 140 subjects at lr 1e-3 the MRI path started to learn "
        "at epoch 4-6 with 3 warm-up epochs, against 10-11 without (benchmarks/"
        "bench_image_start.py); 0: no warm-up.")
    weight_decay: float = Field(1e-2, ge=0)
    patience: int = Field(6, ge=1, description="Epochs without validation improvement.")
    min_epochs: int = Field(12, ge=1, description="No early stop before this epoch: the MRI "
                            "path starts to learn only after 4-11 epochs (measured with the "
                            "warm-up on 100-140 subjects).")
    class_weighting: bool = True
    site_balance: bool = Field(
        False, description="Weight training samples to the site-balanced distribution "
        "P(site) P(diagnosis), where the manifest records sites (training only). Off by "
        "default: at confounding 0.8 these weights (even tempered to their square root) "
        "kept MediAD at chance for 280 steps, while the diagnosis-conditional site "
        "adversary alone learned (0.83 held-out balanced accuracy); see the README.")
    site_adversarial_warmup: int = Field(
        0, ge=0, le=1000, description="Epochs over which the site adversary's weight ramps "
        "up from 0 (the DANN schedule 2/(1+exp(-10p))-1); 0: full weight from the start.")
    selection: Literal["site_balanced", "balanced", "last"] = Field(
        "site_balanced", description="Checkpoint selection score on validation: balanced "
        "accuracy with every site weighted alike per class (does not reward a site "
        "shortcut), or plain balanced accuracy; or 'last', the final epoch of the schedule "
        "(where its cosine decay ends), for recipes whose validation split cannot tell "
        "their late epochs apart (no early stop then).")
    validate_every: int = Field(
        1, ge=1, le=1000, description="Validate every this many epochs, and at the last "
        "one. Only with selection 'last', where validation only reports (0.12 s an epoch "
        "of the demo's two minutes); the trained network is the same either way.")
    tie_break: Literal["log_loss", "first"] = Field(
        "log_loss", description="Between epochs with the same selection score (frequent: "
        "on 22-30 validation subjects it moves in steps of a few points), keep the one "
        "with the lower validation log-loss, or the first. The demo's epochs 12 and 15 tied "
        "at 0.933; epoch 12 was so under-confident that its temperature hit the bound.")
    selection_inputs: Literal["all", "each_pattern"] = Field(
        "all", description="What the selection score is read from: the answer from every "
        "input ('all'), or the mean over the input patterns the model answers, MRI and "
        "record, MRI only and record only ('each_pattern', each logged per epoch), so "
        "that a kept checkpoint's single-input answers count too. With scanner "
        "augmentation on 576 MRIs the full-input score peaked at epoch 13 of 40, when the "
        "MRI alone read 0.558 balanced accuracy on 383 new subjects (0.871 at epoch 40).")
    modality_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="Chance that each input (MRI, summary, record "
        "fields) is hidden from a training sample, so that MRI-only and record-only "
        "predictions rest on what is there (at least one input is always kept).")
    score_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="Chance that a training record's cognitive scores "
        "(MMSE, CDR-SB, ADAS-Cog-13, FAQ) are all hidden, in its summary and its fields: a "
        "record without them is common outside a study visit, and a model that had seen "
        "almost none answered such records with the MRI at near chance (balanced accuracy "
        "0.38 on 300 new subjects, 0.77 from the MRI alone) and with confidence 0.79.")
    precision: Literal["bf16", "fp32"] = Field(
        "bf16", description="On a CUDA GPU, run forward passes under bf16 autocast (weights "
        "and optimiser stay fp32) or in plain fp32; ignored on the CPU. "
        "benchmarks/bench_gpu.py measures both.")
    average_from: int = Field(
        0, ge=0, le=1000, description="Keep the mean of the weights over the epochs from "
        "this one to the last (stochastic weight averaging, torch's ``AveragedModel``) "
        "instead of the last epoch's; 0: off. Needs selection 'last'.")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _validation_only_reports(self) -> OptimConfig:
        if self.average_from and (self.selection != "last" or self.average_from > self.epochs):
            raise ValueError(f"optim.average_from: {self.average_from} needs selection 'last' "
                             f"(got {self.selection!r}) and at most {self.epochs} (epochs): "
                             "the averaged weights are the final epoch's checkpoint")
        if self.validate_every > 1 and self.selection != "last":
            raise ValueError(f"optim.validate_every: {self.validate_every} needs selection "
                             f"'last' (got {self.selection!r}): checkpoint selection and "
                             "early stopping read every epoch's validation")
        return self


class TrainConfig(BaseModel):
    """Everything a run needs; saved beside every run as ``config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a config; relative paths are relative to the YAML file.

        Raises:
            InputError: missing file, bad YAML, unknown keys or invalid values (all named).
        """
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise InputError(f"{p}: config file not found") from None
        except yaml.YAMLError as exc:
            raise InputError(f"{p}: not valid YAML ({exc})") from None
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors())
            raise InputError(f"{p}: invalid config: {problems}") from None
        data = config.data
        resolve = {k: (p.parent / v) for k, v in (("manifest", data.manifest),
                                                  ("splits", data.splits)) if v is not None
                   and not Path(v).is_absolute()}
        return config.model_copy(update={"data": data.model_copy(update=resolve)})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def cache_root(config: TrainConfig) -> Path:
    """Where summaries and embeddings are cached: the config's, or the data folder's."""
    return config.data.cache_dir or (data_dir() / "cache")
