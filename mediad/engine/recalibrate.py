"""Refit a trained model's temperatures on a labelled held-out cohort.

The temperatures fitted after training come from the validation split, which is small
(22 subjects in the demo, 90 in the reference) and drawn from the training cohort. A
temperature fitted on 90 subjects can land far from the one a new cohort needs (the
reference's record-only answers: 1.75 on its validation split, 1.21 on 400 new subjects),
and a new scanner or population changes it again. Recalibrating on a few hundred held-out
subjects of the population the model will be used on (a site's own labelled scans, say)
fixes both without retraining: the network, its training feature distribution and the
out-of-distribution thresholds stay as trained; only the temperatures change. On request
(``class_bias``), where a pattern has at least ``MIN_BIAS_SUBJECTS`` labelled subjects
and it lowers the cross-validated log loss, a class bias joins its temperature: answers
that lean towards one class as a whole on this population (the demo model's MRI-only
answers gave CN 0.57 on average to 400 subjects of whom 0.47 were CN), which no
temperature mends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from mediad.data.records import ManifestRow, has_no_scores, load_manifest
from mediad.engine.calibration import (
    MIN_BIAS_SUBJECTS,
    MIN_FIT_SUBJECTS,
    UNSCORED,
    Calibration,
    fit_class_bias,
    fit_temperature,
    model_patterns,
)
from mediad.engine.checkpoint import refuse_training_subjects, save_checkpoint
from mediad.engine.predictor import Predictor
from mediad.errors import MediADError
from mediad.io import file_sha256

__all__ = ["MIN_SUBJECTS", "PatternRefit", "Recalibration", "recalibrate"]

#: Fewer labelled subjects per input pattern than this, and the pattern keeps the
#: temperature it had: so few fit one no better than the validation split did.
MIN_SUBJECTS = MIN_FIT_SUBJECTS


class PatternRefit(BaseModel):
    """One input pattern's refit: its subjects, both temperatures, and the ECE on the
    recalibration cohort with each (``new_temperature`` is ``None`` when kept)."""

    n: int
    old_temperature: float
    new_temperature: float | None
    old_bias: list[float] | None = None
    new_bias: list[float] | None = Field(None, description="The class bias fitted beside "
                                         "the new temperature, if it lowered the "
                                         "cross-validated log loss.")
    ece_uncalibrated: float | None
    ece_old: float | None
    ece_new: float | None
    note: str = ""


class Recalibration(BaseModel):
    """What :func:`recalibrate` did (no subject identifiers)."""

    checkpoint: str
    out: str
    manifest_sha256: str
    patterns: dict[str, PatternRefit]
    skipped_mri: int = 0


def recalibrate(checkpoint: str | Path, manifest: str | Path, out: str | Path, *,
                workers: int = 1, mni_inputs: bool = False, batch_size: int = 16,
                force: bool = False, min_subjects: int = MIN_SUBJECTS,
                class_bias: bool = False,
                progress: Callable[[int, int], None] | None = None) -> Recalibration:
    """Refit each input pattern's temperature on a labelled cohort and write the
    checkpoint with them to ``out`` (atomically; ``out`` may be ``checkpoint`` itself).

    Each pattern is scored as a user asks it: MRI and record, the MRI alone (subjects with
    an MRI), the record alone (every subject). The ECE before and after is measured on the
    same subjects; it is the fit's own data, so it shows what the refit changed, not how
    well it will hold on others.

    Args:
        checkpoint: a ``best.pt`` written by ``mediad train``.
        manifest: a cohort manifest with diagnoses, none of whose subjects the model was
            trained on.
        out: where to write the recalibrated checkpoint.
        workers: processes preprocessing raw T1s (cached, as for ``evaluate``).
        mni_inputs: the MRIs are already brain-extracted and in MNI152 space.
        batch_size: subjects per forward pass.
        force: recalibrate even on subjects the model was trained on (over-confident fit).
        min_subjects: a pattern with fewer labelled subjects keeps its temperature.
        class_bias: also try a class bias beside each temperature (patterns with at least
            ``MIN_BIAS_SUBJECTS`` labelled subjects; kept where it lowers the 5-fold
            cross-validated log loss): for a population whose class mix the model's
            answers miss as a whole. It is that population's correction: off by default.
        progress: called with (done, total) forward passes.

    Returns:
        Per pattern: subjects, temperatures and ECE before and after.

    Raises:
        MediADError: a checkpoint without calibration (the tabular baseline), a manifest
            without enough labelled subjects (named), or unusable files.
        LeakageError: subjects of the cohort were in the training data (unless ``force``).
    """
    if Path(out).is_dir():  # refused before minutes of scoring, not after
        raise MediADError(f"--out {out} is a folder; give the checkpoint file to write, "
                          f"e.g. {Path(out) / 'best.pt'}")
    predictor = Predictor(checkpoint, mni_inputs=mni_inputs)
    if predictor.calibration is None:
        raise MediADError(f"{checkpoint}: this {predictor.config.model.kind} checkpoint has no "
                          "calibration to refit (only MediAD and the single-modality "
                          "networks are calibrated)")
    table = load_manifest(manifest)
    rows = [r for r in table.rows if r.diagnosis in predictor.classes]
    if not rows:
        raise MediADError(f"{manifest}: no subject has a diagnosis among "
                          f"{', '.join(predictor.classes)}; recalibration needs labels")
    refuse_training_subjects(
        predictor.ck, (r.subject_id for r in rows),
        f"labelled subjects of {Path(manifest).name}", ": their answers are over-confident, "
        "and a temperature fitted on them would be too. Use held-out subjects, or pass "
        "--force.", force)
    patterns = model_patterns(predictor.use_image,
                              predictor.use_text or predictor.config.model.use_tabular,
                              predictor.reads_scores)
    predictor.prepare([r.mri_path for r in rows if r.mri_path], workers)
    scored, skipped = _score(predictor, rows, patterns, batch_size, progress)
    old = predictor.calibration
    new = old.model_copy(deep=True)
    refits = {}
    for pattern in patterns:
        y, log_p = scored[pattern]
        refits[pattern] = _refit(pattern, y, log_p, old, new, min_subjects, class_bias)
    refitted = [p for p, r in refits.items() if r.new_temperature is not None]
    if refitted:
        new.fitted_on = (f"{len(rows)} labelled subjects of a recalibration cohort (manifest "
                         f"sha256 {file_sha256(table.path)[:12]})")
        if len(refitted) < len(refits):
            new.fitted_on += (f" for {', '.join(refitted)}; the other patterns: "
                              f"{old.fitted_on}")
    ck = dict(predictor.ck)
    ck["calibration"] = new.model_dump(mode="json")
    save_checkpoint(Path(out), ck)
    return Recalibration(checkpoint=str(checkpoint), out=str(out),
                         manifest_sha256=file_sha256(table.path), patterns=refits,
                         skipped_mri=skipped)


def _score(predictor: Predictor, rows: list[ManifestRow], patterns: tuple[str, ...],
           batch_size: int, progress: Callable[[int, int], None] | None
           ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """Labels and uncalibrated log-probabilities per pattern; the MRI patterns come from one
    pass that encodes each MRI once for both. An MRI that cannot be read or preprocessed
    drops that subject from the MRI patterns (counted), as evaluation reports it rather
    than stopping."""
    imaged = tuple(p for p in patterns if p.startswith("mri"))
    unimaged = tuple(p for p in patterns if not p.startswith("mri"))
    passes: list[tuple[tuple[str, ...], list[tuple[Any, ManifestRow, int]]]] = []
    if imaged:
        passes.append((imaged, [(r.mri_path, r, predictor.classes.index(r.diagnosis))
                                for r in rows if r.mri_path]))
    if unimaged:
        passes.append((unimaged, [(None, r, predictor.classes.index(r.diagnosis))
                                  for r in rows]))
    total = sum(-(-len(items) // batch_size) for _, items in passes)
    done, unusable = 0, 0
    parts: dict[str, tuple[list[int], list[np.ndarray]]] = {p: ([], []) for p in patterns}

    # where records without scores have patterns of their own, a scored pattern is fitted
    # on the records that hold a score: the others are never answered under it
    separate = any(p in UNSCORED.values() for p in patterns)

    def run(chunk: list[tuple[Any, ManifestRow, int]], names: tuple[str, ...]) -> None:
        out = predictor.run_network([(m, r) for m, r, _ in chunk], patterns=names)
        for name in names:
            keep = [i for i, (_, r, _) in enumerate(chunk)
                    if not (separate and name in UNSCORED and has_no_scores(r))]
            parts[name][0].extend(chunk[i][2] for i in keep)
            parts[name][1].append(out["log_p_by_pattern"][name][keep])

    for names, items in passes:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            done += 1
            if progress:
                progress(done, total)
            try:
                run(chunk, names)
            except MediADError:  # find the unusable MRI(s), keep the rest
                for item in chunk:
                    try:
                        run([item], names)
                    except MediADError:
                        unusable += 1
    return {p: (np.array(ys, dtype=int), np.concatenate(log_ps) if log_ps
                else np.zeros((0, len(predictor.classes))))
            for p, (ys, log_ps) in parts.items()}, unusable


def _refit(pattern: str, y: np.ndarray, log_p: np.ndarray, old: Calibration,
           new: Calibration, min_subjects: int, class_bias: bool = False) -> PatternRefit:
    """Fit one pattern's temperature (and, on enough subjects, a class bias where it
    helps) into ``new``, or keep the old ones, saying why."""
    from scipy.special import softmax

    from mediad.metrics import expected_calibration_error

    t_old, b_old = old.temperature.get(pattern, 1.0), old.bias.get(pattern)

    def ece(t: float, bias: list[float] | None = None) -> float | None:
        z = log_p / t + (0.0 if bias is None else np.asarray(bias))
        return round(expected_calibration_error(y, softmax(z, axis=1)), 4) if len(y) else None

    note, t_new, b_new = "", None, None
    if len(y) < min_subjects:
        note = (f"kept: {len(y)} labelled subjects with these inputs, fewer than "
                f"{min_subjects}")
    elif len(np.unique(y)) < 2:
        note = "kept: every subject with these inputs has the same diagnosis"
    else:
        t, b_new = fit_class_bias(log_p, y) if class_bias else (fit_temperature(log_p, y),
                                                                 None)
        if class_bias and b_new is None:  # asked for: say why there is none
            note = (f"no class bias: {len(y)} labelled subjects, fewer than "
                    f"{MIN_BIAS_SUBJECTS}" if len(y) < MIN_BIAS_SUBJECTS else
                    "no class bias: it did not lower the cross-validated log loss, or a "
                    "diagnosis has fewer than 5 subjects")
        t_new = round(t, 4)
        new.temperature[pattern] = t_new
        new.bias.pop(pattern, None)  # an old bias belongs to the old temperature
        if b_new is not None:
            new.bias[pattern] = b_new
        new.n_fitted[pattern] = len(y)
        new.ece_before[pattern] = ece(1.0) or 0.0
        new.ece_after[pattern] = ece(t_new, b_new) or 0.0
    return PatternRefit(n=len(y), old_temperature=t_old, new_temperature=t_new,
                        old_bias=b_old, new_bias=b_new, ece_uncalibrated=ece(1.0),
                        ece_old=ece(t_old, b_old),
                        ece_new=None if t_new is None else ece(t_new, b_new), note=note)

