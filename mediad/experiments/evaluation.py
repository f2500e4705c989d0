"""Cohort evaluation: streamed predictions, metrics with bootstrap CIs, subgroups, plots and
a report that says what the numbers can and cannot mean.

``mediad evaluate --checkpoint CK --manifest M --out DIR`` predicts the cohort in batches
(memory flat in cohort size), appending each batch to ``predictions.csv.partial`` (flushed
and fsynced) and renaming it when done; a rerun resumes without losing or repeating a
subject. Under ``torchrun`` every rank predicts its shard and rank 0 merges in manifest
order, so the outputs equal a single-process run.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mediad import RESEARCH_NOTICE
from mediad.data.records import DIAGNOSES, LABEL_DEFINING_FIELDS, ManifestRow, load_manifest
from mediad.engine.checkpoint import refuse_training_subjects
from mediad.engine.predictor import Predictor
from mediad.errors import ImageError, MediADError
from mediad.io import atomic_path, atomic_write_text, complete_lines, file_sha256
from mediad.metrics import (
    balanced_accuracy,
    bootstrap_metrics,
    bootstrap_statistic,
    ece_noise_floor,
)

__all__ = ["EvalResult", "evaluate"]

NMI_WARNING = 0.1


@dataclass
class EvalResult:
    out_dir: Path
    n: int
    metrics: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Streaming predictions


def _columns(classes: Sequence[str]) -> list[str]:
    return ["subject_id", "visit", "label", "predicted",
            *[f"p_{c}" for c in classes], "calibrated", "flagged", "flags",
            "ood_distance", "inputs", "label_defining_fields_used",
            "summary_source", "summary_backend", "summary_model", "error",
            "site", "sex", "age", "apoe4"]


def _read_done(partial: Path) -> set[tuple[str, str]]:
    """Keys already written (a torn last line from a crash mid-write is cut off)."""
    rows = csv.DictReader(io.StringIO(complete_lines(partial)))
    return {(r["subject_id"], r["visit"]) for r in rows}


def _row(row: ManifestRow, pred: Any, classes: Sequence[str], error: str = "") -> list[Any]:
    def fmt(v: Any) -> Any:
        return "" if v is None else v

    if pred is None:
        probs: list[Any] = [""] * len(classes)
        return [row.subject_id, row.visit, fmt(row.diagnosis), "", *probs, "", "", "", "", "",
                "", "", "", "", error, fmt(row.site), fmt(row.sex), fmt(row.age),
                fmt(row.apoe4)]
    used = "+".join(k for k in ("mri", "record") if pred.inputs_used[k])
    prov = pred.summary_provenance or {}
    return [row.subject_id, row.visit, fmt(row.diagnosis), pred.predicted,
            *[pred.probabilities[c] for c in classes], int(pred.calibrated),
            int(bool(pred.flags)), " | ".join(pred.flags), fmt(pred.ood_distance), used,
            "|".join(pred.inputs_used["label_defining_fields_used"]),
            prov.get("source", ""), prov.get("backend", ""), prov.get("model_id", ""), "",
            fmt(row.site), fmt(row.sex), fmt(row.age), fmt(row.apoe4)]


def predict_stream(predictor: Predictor, rows: Sequence[ManifestRow], out_csv: Path,
                   batch_size: int = 16, progress: Callable[[int, int], None] | None = None
                   ) -> int:
    """Append predictions for ``rows`` to ``out_csv`` (resumable); return how many are new.

    An unusable MRI does not stop the cohort: that subject's row records the error.
    """
    classes = predictor.classes
    done = _read_done(out_csv)
    todo = [r for r in rows if (r.subject_id, r.visit) not in done]
    new_file = not out_csv.exists() or out_csv.stat().st_size == 0
    written = 0
    with open(out_csv, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(_columns(classes))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            items = [(r.mri_path, r) for r in chunk]
            try:
                preds: list[Any] = predictor.predict_many(items)
                errors = [""] * len(chunk)
            except ImageError:  # find the bad one(s); the rest still get predictions
                preds, errors = [], []
                for item in items:
                    try:
                        preds.append(predictor.predict_many([item])[0])
                        errors.append("")
                    except ImageError as exc:
                        preds.append(None)
                        errors.append(exc.reason)
            for r, p, e in zip(chunk, preds, errors, strict=True):
                writer.writerow(_row(r, p, classes, e))
            fh.flush()
            os.fsync(fh.fileno())
            written += len(chunk)
            if progress:
                progress(len(done) + written, len(rows))
    return written


# ---------------------------------------------------------------------------------------
# The run


def evaluate(checkpoint: str | Path, manifest: str | Path, out_dir: str | Path, *,
             force: bool = False, batch_size: int = 16, n_bootstrap: int = 1000,
             seed: int = 0, progress: Callable[[int, int], None] | None = None,
             base_dir: str | Path | None = None, confine: bool = False,
             manifest_name: str | None = None, workers: int = 2,
             mni_inputs: bool = False) -> EvalResult:
    """Evaluate a checkpoint on a cohort manifest (labels optional).

    ``base_dir`` and ``confine`` are passed to :func:`~mediad.data.records.load_manifest`
    (relative MRI paths, and whether paths may leave that folder); ``manifest_name`` is how
    the report names the manifest (default: its path). Nothing is written before the inputs
    have been accepted, so a refused run leaves no folder. Raw T1s are preprocessed as the
    model was trained (``workers`` processes), unless ``mni_inputs`` says they already
    are in MNI152 space.

    Raises:
        LeakageError: subjects of the cohort were in the model's training data (unless
            ``force``, which runs anyway and says so in the report).
        MediADError: bad checkpoint or manifest (named).
    """
    from mediad.engine.ddp import distributed

    out = Path(out_dir)
    predictor = Predictor(checkpoint, mni_inputs=mni_inputs)
    table = load_manifest(manifest, base_dir=base_dir, confine=confine)
    rows = table.rows
    warnings: list[str] = []
    seen = refuse_training_subjects(
        predictor.ck, (r.subject_id for r in rows), f"subjects of {Path(manifest).name}",
        ". Evaluate on held-out subjects, or pass --force (the report will say so).", force)
    if seen:
        warnings.append(f"{seen} subject(s) of this cohort were in the training data "
                        "(--force): their predictions are optimistic.")
    out.mkdir(parents=True, exist_ok=True)
    _check_stamp(out, _stamp(predictor, Path(manifest), mni_inputs))
    final = out / "predictions.csv"
    if not final.exists():  # raw T1s to MNI152 in worker processes first (cached)
        predictor.prepare([r.mri_path for r in rows if r.mri_path], workers, progress)
    with distributed() as d:
        if final.exists():  # a finished run: only metrics and report are recomputed
            pass
        elif d.world == 1:
            partial = out / "predictions.csv.partial"
            predict_stream(predictor, rows, partial, batch_size, progress)
            os.replace(partial, final)
        else:
            shard = out / f"predictions.rank{d.rank}.csv.partial"
            predict_stream(predictor, rows[d.rank::d.world], shard, batch_size,
                           progress if d.main else None)
            import torch.distributed as dist

            dist.barrier()
            if d.main:
                _merge(out, rows, d.world, final)
            dist.barrier()
        if not d.main:
            return EvalResult(out, len(rows), None, warnings)
    frame = pd.read_csv(final, dtype={"subject_id": str, "visit": str}, keep_default_na=False)
    return _report(predictor, frame, manifest_name or table.path, out, warnings, n_bootstrap,
                   seed)


#: Beside the predictions: what they were made from. A finished run is reused and a partial
#: one resumed only when all of it matches, so that a second checkpoint or an edited
#: manifest evaluated into the same folder never reports the first one's predictions.
STAMP = "predictions.stamp.json"
_STAMP_FIELDS = {"checkpoint_sha256": "another checkpoint",
                 "manifest_sha256": "another manifest (or this one, edited since)",
                 "mni_inputs": "the other preprocessing setting (--mni-inputs)",
                 "columns": "another MediAD version (other columns)"}


def _stamp(predictor: Predictor, manifest: Path, mni_inputs: bool) -> dict[str, Any]:
    return {"checkpoint_sha256": file_sha256(predictor.path),
            "manifest_sha256": file_sha256(manifest), "mni_inputs": mni_inputs,
            "columns": _columns(predictor.classes)}


def _check_stamp(out: Path, stamp: dict[str, Any]) -> None:
    """Record what a new run is made from, or refuse predictions made from something else
    (nothing is deleted: the user chooses).

    Raises:
        MediADError: ``out`` holds predictions of another checkpoint, manifest, setting or
            version, or predictions without a stamp (named, with what to do).
    """
    held = sorted(p.name for p in (out / "predictions.csv", *out.glob("predictions*.partial"))
                  if p.is_file())
    path = out / STAMP
    if not held:
        atomic_write_text(path, json.dumps(stamp, indent=2))
        return
    fix = (f"choose another --out, or delete {', '.join(held)} in {out} to predict again")
    if not path.is_file():
        raise MediADError(f"{out} holds predictions without a record of the checkpoint and "
                          f"manifest that made them (an earlier MediAD wrote them): {fix}")
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    differs = [what for key, what in _STAMP_FIELDS.items() if old.get(key) != stamp[key]]
    if differs:
        raise MediADError(f"{out} holds predictions made from {'; '.join(differs)} than this "
                          f"run: {fix}")


def _merge(out: Path, rows: Sequence[ManifestRow], world: int, final: Path) -> None:
    shards = [pd.read_csv(out / f"predictions.rank{r}.csv.partial", dtype=str,
                          keep_default_na=False) for r in range(world)]
    merged = pd.concat(shards).drop_duplicates(["subject_id", "visit"])
    order = {(r.subject_id, r.visit): i for i, r in enumerate(rows)}
    merged = merged.iloc[np.argsort([order[(s, v)] for s, v in zip(
        merged.subject_id, merged.visit, strict=True)], kind="stable")]
    with atomic_path(final) as tmp:
        merged.to_csv(tmp, index=False)
    for r in range(world):
        (out / f"predictions.rank{r}.csv.partial").unlink()


def _age_band(age: Any) -> str:
    try:
        a = float(age)
    except (TypeError, ValueError):
        return "unknown"
    return "<70" if a < 70 else ("70-79" if a < 80 else ">=80")


def _subgroups(frame: pd.DataFrame, y: np.ndarray, proba: np.ndarray, classes: Sequence[str],
               n_boot: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    keys = {"sex": frame["sex"].replace("", "unknown"),
            "age band": frame["age"].map(_age_band),
            "APOE4 alleles": frame["apoe4"].replace("", "unknown").astype(str)}
    if (frame["site"] != "").any():
        keys["site"] = frame["site"].replace("", "unknown")
    subjects = frame["subject_id"].to_numpy()
    out: dict[str, list[dict[str, Any]]] = {}
    for name, groups in keys.items():
        table = []
        for value in sorted(groups.unique()):
            sel = (groups == value).to_numpy()
            yy, pp = y[sel], proba[sel].argmax(1)
            ba = bootstrap_statistic(lambda i, yy=yy, pp=pp: balanced_accuracy(yy[i], pp[i]),
                                     int(sel.sum()), subjects[sel], n_boot, seed)
            table.append({
                "group": str(value), "n": int(sel.sum()),
                "labels": dict(Counter(classes[i] for i in yy)),
                "balanced_accuracy": ba["value"], "ci_low": ba["ci_low"],
                "ci_high": ba["ci_high"], "accuracy": float((yy == pp).mean()),
            })
        out[name] = table
    return out


def _report(predictor: Predictor, frame: pd.DataFrame, manifest: str, out: Path,
            warnings: list[str], n_boot: int, seed: int) -> EvalResult:
    from sklearn.metrics import normalized_mutual_info_score

    classes = predictor.classes
    ok = frame[frame["error"] == ""]
    failed = len(frame) - len(ok)
    if failed:
        warnings.append(f"{failed} subject(s) could not be predicted (unusable MRI); see the "
                        "error column of predictions.csv.")
    labelled = ok[ok["label"].isin(classes)]
    used_fields = sorted({f for v in ok["label_defining_fields_used"] for f in str(v).split("|")
                          if f})
    if used_fields:
        warnings.append(f"Label-defining inputs were used ({', '.join(used_fields)}): ADNI "
                        "defines the diagnosis partly from them, so accuracy is inflated "
                        "relative to a label-blind model.")
    flagged = ok[ok["flagged"].astype(str) == "1"]
    if len(flagged):
        reasons = Counter(r.split(" (")[0].split(":")[0] for v in flagged["flags"]
                          for r in str(v).split(" | ") if r)
        warnings.append(f"{len(flagged)} of {len(ok)} prediction(s) carry a quality or "
                        "out-of-distribution flag (flags column of predictions.csv): "
                        + "; ".join(f"{k} ({n})" for k, n in reasons.most_common(4)) + ".")
    info = {
        "n_rows": len(frame), "n_subjects": int(frame["subject_id"].nunique()),
        "n_flagged": len(flagged),
        "calibrated": bool(len(ok)) and bool((ok["calibrated"].astype(str) == "1").all()),
        "n_labelled": len(labelled), "n_failed": failed,
        "labels": dict(Counter(labelled["label"])),
        "inputs": dict(Counter(ok["inputs"])),
        "summary_sources": dict(Counter(s for s in ok["summary_source"] if s)),
    }
    metrics: dict[str, Any] | None = None
    plots: dict[str, str] = {}
    subgroups: dict[str, Any] = {}
    if len(labelled) >= 2 and labelled["label"].nunique() >= 2:
        y = labelled["label"].map(classes.index).to_numpy()
        proba = labelled[[f"p_{c}" for c in classes]].astype(float).to_numpy()
        subjects = labelled["subject_id"].to_numpy()  # a subject's visits resample together
        metrics = bootstrap_metrics(y, proba, classes, n_boot, seed, groups=subjects)
        info["ece_floor"] = ece_noise_floor(proba, seed=seed)
        subgroups = _subgroups(labelled, y, proba, classes, max(100, n_boot // 5), seed)
        sites = labelled["site"]
        if (sites != "").all() and sites.nunique() > 1:
            nmi = float(normalized_mutual_info_score(sites, labelled["label"]))
            info["site_label_nmi"] = nmi
            if nmi > NMI_WARNING:
                warnings.append(f"Site and diagnosis are associated in this cohort (NMI "
                                f"{nmi:.2f} > {NMI_WARNING}): a model can score well here by "
                                "recognising the scanner. Check a cohort where they are not.")
        plots = _plots(y, proba, classes, subgroups, out)
        payload = {"metrics": metrics,
                   "subgroups": subgroups, "cohort": info, "warnings": warnings,
                   "model": predictor.model_info(), "n_bootstrap": n_boot, "seed": seed}
        atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2))
    else:
        warnings.append("No labels (or a single class): predictions only, no metrics.")
    _write_reports(predictor, manifest, out, info, metrics, subgroups, plots, warnings)
    return EvalResult(out, len(frame), metrics, warnings)


def _plots(y: np.ndarray, proba: np.ndarray, classes: Sequence[str],
           subgroups: dict[str, Any], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    files = {}

    def save(fig: Any, name: str) -> None:
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        files[name] = name

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ConfusionMatrixDisplay.from_predictions(y, proba.argmax(1), labels=range(len(classes)),
                                            display_labels=classes, ax=ax, colorbar=False)
    ax.set_title("Confusion matrix")
    save(fig, "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for k, name in enumerate(classes):
        if 0 < (y == k).sum() < len(y):
            RocCurveDisplay.from_predictions(y == k, proba[:, k], name=f"{name} vs rest", ax=ax)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_title("ROC curves (one vs rest)")
    save(fig, "roc_curves.png")

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for k, name in enumerate(classes):
        if 0 < (y == k).sum() < len(y):
            frac, mean = calibration_curve(y == k, proba[:, k], n_bins=8, strategy="quantile")
            ax.plot(mean, frac, "o-", label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed frequency",
           title="Reliability diagram")
    ax.legend()
    save(fig, "reliability.png")

    rows = [(f"{k}: {g['group']} (n={g['n']})", g) for k, table in subgroups.items()
            for g in table if np.isfinite(g["balanced_accuracy"])]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2))
    for i, (_, g) in enumerate(rows):
        lo = g["balanced_accuracy"] - g["ci_low"] if np.isfinite(g["ci_low"]) else 0
        hi = g["ci_high"] - g["balanced_accuracy"] if np.isfinite(g["ci_high"]) else 0
        ax.errorbar(g["balanced_accuracy"], i, xerr=[[max(lo, 0)], [max(hi, 0)]], fmt="o",
                    color="C0", capsize=3)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.axvline(1 / len(classes), ls=":", color="grey")
    ax.set(xlabel="balanced accuracy (95 % CI)", xlim=(0, 1), title="Subgroups")
    ax.invert_yaxis()
    save(fig, "subgroups.png")
    return files


def _fmt(m: dict[str, float]) -> str:
    if not np.isfinite(m["value"]):
        return "n/a"
    ci = (f" ({m['ci_low']:.3f}–{m['ci_high']:.3f})" if np.isfinite(m["ci_low"]) else "")
    return f"{m['value']:.3f}{ci}"




def _write_reports(predictor: Predictor, manifest: str, out: Path, info: dict[str, Any],
                   metrics: dict[str, Any] | None, subgroups: dict[str, Any],
                   plots: dict[str, str], warnings: list[str]) -> None:
    import jinja2

    loader = jinja2.FileSystemLoader(Path(__file__).parents[1] / "templates")
    env = jinja2.Environment(loader=loader, autoescape=False,
                             undefined=jinja2.ChainableUndefined)
    context = {"notice": RESEARCH_NOTICE, "model": predictor.model_info(), "manifest": manifest,
               "info": info, "metrics": metrics, "subgroups": subgroups, "plots": plots,
               "warnings": warnings, "fmt": _fmt, "label_defining": LABEL_DEFINING_FIELDS,
               "classes": DIAGNOSES}
    atomic_write_text(out / "report.md", env.get_template("report.md.j2").render(**context))
    images = {n: base64.b64encode((out / n).read_bytes()).decode() for n in plots}
    html = jinja2.Environment(loader=loader, autoescape=True,
                              undefined=jinja2.ChainableUndefined)
    atomic_write_text(out / "report.html",
                      html.get_template("report.html.j2").render(**context, images=images))
