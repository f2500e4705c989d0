"""One subject in, a prediction out: calibrated probabilities, whether the answer can be
trusted (quality and out-of-distribution flags, with reasons), the summary and its
provenance, and exactly which inputs were used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel

from mediad import RESEARCH_NOTICE
from mediad.data.imaging import build_transforms, load_volume
from mediad.data.preprocess import PreprocessResult, preprocess_file, preprocess_paths
from mediad.data.quality import TissueContrast, t1_contrast, tissue_maps
from mediad.data.records import LABEL_DEFINING_FIELDS, ClinicalRecord, has_no_scores
from mediad.engine.calibration import (
    OOD_MARGIN,
    OOD_PERCENTILE,
    UNSCORED,
    Calibration,
    InputPattern,
    input_pattern,
    restrict_inputs,
)
from mediad.engine.checkpoint import load_checkpoint
from mediad.engine.config import TrainConfig, cache_root
from mediad.engine.samples import build_samples, make_summarizer, reads_scores
from mediad.errors import MediADError
from mediad.networks.encoders import TextEmbedder
from mediad.networks.models import MultimodalNet, TabularBaseline, build_model
from mediad.summarize import Summarizer

__all__ = ["CONFIDENT", "TEXTURE_CAVEAT", "UNSCORED_CAVEAT", "Prediction", "Predictor",
           "PreparedMRI", "probability_text", "uncertainty_statement"]


class PreparedMRI(NamedTuple):
    """An MRI on the network's grid, with how it got there (kept in memory by the app, so
    that an upload is preprocessed once and never stored)."""

    tensor: torch.Tensor
    qc: dict[str, Any] | None = None
    preprocessed: PreprocessResult | None = None


#: Said of an answer from a record without any cognitive score, by a model that reads the
#: scores but was trained without hiding them (``optim.score_dropout``, or a checkpoint
#: from before it existed): the demo model so trained answered such records, with the
#: MRI, at balanced accuracy 0.38 and confidence 0.79 (300 new subjects; README,
#: "Records without scores").
UNSCORED_CAVEAT = ("the record holds none of the cognitive scores (MMSE, CDR-SB, "
                   "ADAS-Cog-13, FAQ), and this model was trained on records that almost "
                   "always held them: it can read their absence as if it meant something, "
                   "so this answer may be no better than chance (a model trained with "
                   "`optim.score_dropout` is not)")

#: Below this calibrated top probability an answer is called uncertain.
CONFIDENT = 0.6

#: Said of every MRI-only answer of a model trained without scanner augmentation. The
#: demo recipe before it trained with augmentation was one: its MRI-only answers fell to
#: chance (0.327) when the site's link to the diagnosis was reversed (README, "Pose").
TEXTURE_CAVEAT = ("this model was trained without scanner augmentation: from an MRI alone "
                  "it can read the scanner (texture, noise, contrast) rather than the "
                  "anatomy, and its answer can change between two scans of one brain (the "
                  "reference model, `mediad demo --reference`, is trained with it)")


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def probability_text(p: float) -> str:
    """A probability as a person should read it: rounded down (never overstating how sure
    an answer is), never 1.00 or 0.00."""
    if p > 0.99:
        return "> 0.99"
    if p < 0.01:
        return "< 0.01"
    return f"{math.floor(round(p * 100, 6)) / 100:.2f}"  # 0.57 * 100 is 56.99999...


def uncertainty_statement(top: float, flags: list[str], calibrated: bool, pattern: str,
                          caveats: Sequence[str] = ()) -> str:
    """The sentence a person reads next to the answer: any flag first, then whether the top
    probability is high enough to lean on, written as :func:`probability_text` writes it
    (rounded to nearest, a top of 0.5997 once read "no class reaches 0.6 (top 0.60)"); an
    answer with caveats says so, so that the sentence alone never reads as unqualified."""
    if flags:
        return "Do not rely on this answer: " + "; ".join(flags) + "."
    if caveats:
        return (uncertainty_statement(top, flags, calibrated, pattern)[:-1]
                + f"; mind its {len(caveats)} caveat{'s' if len(caveats) > 1 else ''}.")
    if top < CONFIDENT:
        return (f"Uncertain: no class reaches {CONFIDENT} (top "
                f"{probability_text(min(top, CONFIDENT - 0.005))}); the inputs do not settle "
                "the question.")
    return (f"{'Calibrated' if calibrated else 'Uncalibrated'} probability "
            f"{probability_text(top)} for {pattern} inputs"
            + ("" if calibrated else " (this checkpoint has no calibration: probabilities "
               "may be over-confident)") + ".")


class Prediction(BaseModel):
    """What ``mediad predict`` returns (no identifier beyond what the caller passed).

    ``probabilities`` are calibrated for the input pattern (``calibrated``); ``flags`` give
    every reason not to rely on the answer (image quality, contrast, distance from the
    training data), ``caveats`` what to keep in mind even so (what the model can read from
    the inputs it was given), and ``uncertainty`` says in words how far it can be trusted.
    """

    classes: list[str]
    probabilities: dict[str, float]
    predicted: str
    calibrated: bool = False
    input_pattern: str = ""
    flags: list[str] = []
    caveats: list[str] = []
    out_of_distribution: bool = False
    ood_distance: float | None = None
    uncertainty: str = ""
    inputs_used: dict[str, Any]
    summary: str | None
    summary_provenance: dict[str, Any] | None
    image_qc: dict[str, Any] | None = None
    model: dict[str, Any]
    notice: str = RESEARCH_NOTICE


class Predictor:
    """A trained model ready to predict; load once, call many times.

    Args:
        checkpoint: a ``best.pt`` written by ``mediad train``.
        task: refuse a checkpoint made for another task.
        device: ``cpu``/``cuda`` (default: CUDA when available).
        mni_inputs: the MRIs are already brain-extracted and in MNI152 space: skip the
            preprocessing the model was trained with.

    Raises:
        MediADError: the checkpoint is missing, foreign or for another task.
    """

    def __init__(self, checkpoint: str | Path, task: str | None = None,
                 device: str | None = None, mni_inputs: bool = False) -> None:
        self.path = Path(checkpoint)
        self.ck = load_checkpoint(self.path, task)
        self.config = TrainConfig.model_validate(self.ck["config"])
        self.classes = list(self.ck["classes"])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        mc = self.config.model
        self.model = build_model(mc, self.config.data.imaging.shape)
        self.model.load_state_dict(self.ck["model_state"])
        # fitted after training (temperatures, training feature distribution); checkpoints
        # made before calibration existed predict uncalibrated, and say so
        self.calibration = (Calibration.model_validate(self.ck["calibration"])
                            if self.ck.get("calibration") else None)
        if isinstance(self.model, MultimodalNet):
            self.model.to(self.device).eval()
        self.use_image, self.use_text = mc.inputs
        self.summarizer: Summarizer | None = None
        self.embedder: TextEmbedder | None = None
        if self.use_text:
            root = cache_root(self.config)
            self.summarizer = make_summarizer(self.config, root)
            if self.summarizer.template.version != self.ck["template_version"]:
                raise MediADError(
                    f"{self.path}: trained with summary template {self.ck['template_version']}"
                    f", but llm_templates/ holds {self.summarizer.template.version}; use the "
                    "template the model was trained with")
            self.embedder = TextEmbedder(self.ck["text_model_id"], root / "embeddings")
        reads = reads_scores(mc, (self.ck.get("summary_fields") or []) if self.use_text else ())
        #: whether records without scores are a pattern of their own for this model
        self.reads_scores = reads and mc.kind != "tabular"
        # read from the stored config: one saved before the field existed trained without;
        # the tabular baseline never hides them, whatever its config says
        self.unscored_untrained = reads and (mc.kind == "tabular" or not (
            self.ck["config"].get("optim", {}).get("score_dropout", 0.0) > 0))
        imaging = self.config.data.imaging
        self.preprocess = None if mni_inputs else imaging.preprocess
        self.preprocess_cache = cache_root(self.config) / "preprocessed"
        # preprocessing runs first (for its QC record); load_volume checks each file, so the
        # pipeline need not check it again
        self.transforms = build_transforms(imaging, check_file=False, run_preprocess=False)

    def prepare(self, paths: list[str], workers: int = 1,
                progress: Callable[[int, int], None] | None = None) -> None:
        """Preprocess many MRIs in worker processes ahead of a batch run (fills the cache;
        unusable ones are left for :meth:`predict_many` to report)."""
        if self.preprocess is not None and self.use_image and paths:
            preprocess_paths(paths, self.preprocess, self.preprocess_cache, workers, progress)

    def load_image(self, mri: str | Path | PreparedMRI, cache_dir: str | Path | None = None
                   ) -> PreparedMRI:
        """The network's input for one MRI, preprocessed as the model was trained.

        Args:
            mri: a NIfTI file (or an already prepared MRI, returned as it is).
            cache_dir: where preprocessing results go (default: the model's cache).

        Raises:
            ImageError: the file is unusable, or no brain was found (named).
        """
        if isinstance(mri, PreparedMRI):
            return mri
        if self.preprocess is None:
            return PreparedMRI(load_volume(mri, transforms=self.transforms))
        result = preprocess_file(mri, self.preprocess, cache_dir or self.preprocess_cache)
        return PreparedMRI(load_volume(result.image, transforms=self.transforms),
                           result.qc.model_dump(mode="json"), result)

    def predict(self, mri: str | Path | PreparedMRI | None = None,
                record: ClinicalRecord | None = None) -> Prediction:
        """Predict one subject from an MRI, a record, or both.

        Raises:
            MediADError: nothing to predict from, or an unusable MRI (named).
        """
        return self.predict_many([(mri, record)])[0]

    def predict_many(self, items: list[tuple[str | Path | PreparedMRI | None,
                                             ClinicalRecord | None]]) -> list[Prediction]:
        """Predict a batch of (MRI, record) pairs in one forward pass.

        Raises:
            MediADError: an item with nothing to predict from, or an unusable MRI (named).
        """
        run = self.run_network(items)
        patterns = [self._pattern(use, record)
                    for use, (_, record) in zip(run["use_mri"], items, strict=True)]
        log_p = run["log_p"]
        ood: list[tuple[float, float] | None] = [None] * len(items)
        if self.calibration is not None:
            log_p = self.calibration.calibrate(log_p, patterns)
            ood = self.calibration.out_of_distribution(run["readout"], patterns)
        return [self._prediction(mri, record, use, summary, sample, lp, qc, pattern, far, ct)
                for (mri, record), use, summary, sample, lp, qc, pattern, far, ct in zip(
                    items, run["use_mri"], run["summaries"], run["samples"], log_p,
                    run["qc"], patterns, ood, run["contrast"], strict=True)]

    def _pattern(self, use_mri: bool, record: ClinicalRecord | None) -> InputPattern:
        """The calibrated pattern an answer belongs to: a record without any cognitive score
        is one of its own where the model reads scores and has a temperature for it
        (checkpoints from before it existed use the scored pattern's)."""
        scored = record is None or not has_no_scores(record)
        pattern = input_pattern(use_mri, record is not None, scored or not self.reads_scores)
        if self.calibration is not None and pattern not in self.calibration.temperature:
            return input_pattern(use_mri, record is not None)
        return pattern

    def readout(self, items: list[tuple[str | Path | PreparedMRI | None,
                                        ClinicalRecord | None]]) -> np.ndarray:
        """The features each item's label is read from (the mediator for MediAD), for
        audits such as a linear site probe; ``(N, D)``.

        Raises:
            MediADError: as :meth:`predict_many`, or for the tabular baseline.
        """
        if isinstance(self.model, TabularBaseline):
            raise MediADError("the tabular baseline has no learned features")
        return self.run_network(items)["readout"]

    def run_network(self, items: list[tuple[Any, ClinicalRecord | None]],
                    patterns: Sequence[InputPattern] = ()) -> dict[str, Any]:
        """The network's own output, before calibration and flags: per item whether the MRI
        was used, the summary, the sample, ``log_p`` (uncalibrated), the QC record, the
        read-out features and the T1 contrast (what :meth:`predict_many` builds on).

        Args:
            items: ``(MRI, record)`` pairs; either may be ``None``.
            patterns: also answer each item under these input patterns (the inputs outside
                one hidden, as calibration hides them), in ``log_p_by_pattern``; each MRI
                is encoded once for all of them (:meth:`MultimodalNet.predict_views`).

        Raises:
            MediADError: as :meth:`predict_many`.
        """
        mc = self.config.model
        tabular_model = isinstance(self.model, TabularBaseline)
        for mri, record in items:
            if mri is None and record is None:
                raise MediADError("nothing to predict from: give an MRI, a record, or both")
            if tabular_model and record is None:
                raise MediADError("the tabular baseline needs a clinical record")
            if record is None and not self.use_image:
                raise MediADError(f"this {mc.kind} model does not use MRIs; give a record")
        if patterns and tabular_model:
            raise MediADError("the tabular baseline has one input pattern: the record")
        records = [r for _, r in items]
        use_mri = [m is not None and self.use_image for m, _ in items]
        summaries = [self.summarizer.summarize(r) if (self.summarizer and r) else None
                     for r in records]
        samples = build_samples(records, [None] * len(items), self.classes,
                                self.summarizer if self.use_text else None, self.embedder,
                                mc.tabular_fields,
                                unscored=any(p in UNSCORED.values() for p in patterns))
        readout = None
        by_pattern: dict[str, np.ndarray] = {}
        if tabular_model:
            x = np.stack([np.where(s["tab_mask"] > 0, s["tab_values"], np.nan)
                          for s in samples])
            log_p = self.model.predict_log_proba(x)
            qcs = contrast = [None] * len(items)
        else:
            blank = torch.zeros((1, *self.config.data.imaging.shape))
            loaded = [self.load_image(m) if use else PreparedMRI(blank)
                      for (m, _), use in zip(items, use_mri, strict=True)]
            images = [p.tensor for p in loaded]
            qcs = [p.qc for p in loaded]
            batch = {k: torch.as_tensor(np.stack([np.asarray(s[k]) for s in samples]))
                     for k in samples[0] if k != "image"}
            batch["image"] = torch.stack(images)
            batch["has_image"] = torch.tensor([1.0 if u else 0.0 for u in use_mri])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            views = [batch] + [restrict_inputs(batch, p) for p in patterns]
            with torch.inference_mode():
                out, *hidden = self.model.predict_views(views)
            log_p = out.log_probs.float().cpu().numpy()
            by_pattern = {p: o.log_probs.float().cpu().numpy()
                          for p, o in zip(patterns, hidden, strict=True)}
            if out.readout is not None:
                readout = out.readout.float().cpu().numpy()
            contrast = [self.contrast(p.tensor) if (use and p.preprocessed is not None)
                        else None for p, use in zip(loaded, use_mri, strict=True)]
        return {"use_mri": use_mri, "summaries": summaries, "samples": samples,
                "log_p": log_p, "log_p_by_pattern": by_pattern, "qc": qcs,
                "readout": readout, "contrast": contrast}

    def contrast(self, image: torch.Tensor) -> TissueContrast | None:
        """White matter, grey matter and CSF intensity of a registered network input (only
        preprocessed inputs share the template's grid, where the tissue maps hold)."""
        pre = self.preprocess
        if pre is None or not pre.registration:
            return None
        imaging = self.config.data.imaging
        return t1_contrast(image, tissue_maps(tuple(imaging.spacing), tuple(imaging.shape),
                                              pre.output_spacing))

    def _prediction(self, mri: Any, record: ClinicalRecord | None, use_mri: bool,
                    summary: Any, sample: dict[str, Any], log_p: np.ndarray,
                    qc: dict[str, Any] | None, pattern: str,
                    ood: tuple[float, float] | None, contrast: Any) -> Prediction:
        mc = self.config.model
        probs = np.exp(log_p)
        # what the summary states a value for: "MMSE not recorded" is in the text, but no
        # answer rests on an MMSE that was never given
        included = summary.provenance.fields_included if summary and record else []
        fields = [f for f in included if not _blank(getattr(record, f, None))]
        tab_used = [f for f, m in zip(mc.tabular_fields, sample["tab_mask"], strict=True)
                    if m > 0] if (mc.use_tabular or mc.kind == "tabular") else []
        flags = list((qc or {}).get("flags", []))
        if contrast is not None and contrast.flag:
            flags.append(contrast.flag)
        far = ood is not None and ood[0] > ood[1]
        if far:
            flags.append(f"far from the training data (Mahalanobis distance {ood[0]:.1f} > "
                         f"{ood[1]:.1f}, {OOD_MARGIN:g} x the validation "
                         f"{OOD_PERCENTILE:g}th percentile, for {pattern} inputs)")
        caveats = [TEXTURE_CAVEAT] if pattern == "mri" and not self.config.data.augment else []
        if record is not None and self.unscored_untrained and has_no_scores(record):
            caveats.append(UNSCORED_CAVEAT)
        rough = self.calibration.roughly_fitted() if self.calibration is not None else {}
        if self.calibration is not None and pattern in self.calibration.at_bound():
            caveats.append(f"the temperature for {pattern} inputs sits at a bound of its "
                           "search: the subjects it was fitted on could not pin it down, so "
                           "this probability deserves less trust")
        elif pattern in rough:
            caveats.append(f"the temperature for {pattern} inputs was fitted on only "
                           f"{rough[pattern]} subjects, too few to pin it down: read this "
                           "probability as a rough estimate (`mediad calibrate` refits it on "
                           "a labelled cohort of your own)")
        uncertainty = uncertainty_statement(float(probs.max()), flags,
                                            self.calibration is not None, pattern, caveats)
        return Prediction(
            classes=self.classes,
            probabilities={c: round(float(p), 6) for c, p in zip(self.classes, probs,
                                                                 strict=True)},
            predicted=self.classes[int(probs.argmax())],
            calibrated=self.calibration is not None, input_pattern=pattern, flags=flags,
            caveats=caveats,
            out_of_distribution=bool(far or (contrast is not None and contrast.flag)),
            ood_distance=None if ood is None else round(ood[0], 3), uncertainty=uncertainty,
            inputs_used={
                "mri": use_mri, "record": record is not None,
                "mri_ignored": mri is not None and not self.use_image,
                "summary_fields": fields,
                "summary_fields_not_recorded": [f for f in included if f not in fields],
                "tabular_fields": tab_used,
                "label_defining_fields_used": sorted(
                    {f for f in (*fields, *tab_used) if f in LABEL_DEFINING_FIELDS}),
            },
            summary=summary.text if summary else None,
            summary_provenance=summary.provenance.model_dump(mode="json") if summary else None,
            image_qc=qc,
            model=self.model_info(),
        )

    def inputs(self) -> dict[str, str]:
        """What the model reads, for its card; label-defining scores are named, because a
        model that reads them (ADNI defines the diagnosis partly from them) scores high
        for that reason."""
        mc = self.config.model
        use_image, use_text = mc.inputs
        summary = list(self.ck.get("summary_fields") or []) if use_text else []
        record = list(mc.tabular_fields) if (mc.use_tabular or mc.kind == "tabular") else []
        scores = [f for f in LABEL_DEFINING_FIELDS if f in summary or f in record]
        return {"MRI": "yes" if use_image else "no",
                "summary fields": ", ".join(summary) or "none",
                "record fields": ", ".join(record) or "none",
                "label-defining scores": ", ".join(scores) or "none (label-blind)"}

    def model_info(self) -> dict[str, Any]:
        mc = self.config.model
        return {"kind": mc.kind, "task": mc.task, "checkpoint": str(self.path),
                "epoch": self.ck.get("epoch"), "template_version": self.ck.get(
                    "template_version"), "text_model": self.ck.get("text_model_id"),
                "data_fingerprint": self.ck.get("data_fingerprint")}
