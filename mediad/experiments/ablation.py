"""Confounder ablation: does the causal head resist the site shortcut, on every shift axis?

For each confounding strength a synthetic cohort is drawn (train/val/test split). Every
model variant x seed is trained on it and scored on five test sets:

* ``in_distribution``: the cohort's own held-out test split;
* ``site_reversed``: new subjects whose site-diagnosis link is reversed, age as in training;
* ``age_reversed``: the age-diagnosis link reversed, sites as in training;
* ``unseen_scanner``: a scanner none of the training sites has (``UNSEEN_SITES``);
* ``combined``: site and age links both reversed.

The shifted test sets are drawn once at ``shift_confounding`` and shared by every cell, so
that the model trained unconfounded (confounding 0) is the *ceiling* of each variant on the
same subjects. The verdict rests on shifted balanced accuracy, with a paired bootstrap by
subject against concat, and on the recovered share
``(BA_variant - BA_concat) / (BA_ceiling - BA_concat)`` (not on the drop, which favours weak
models). A linear probe on each model's read-out features measures how much site they
still carry.

The cohorts are drawn on the template grid (no pose): this study is about the site, and
skipping preprocessing keeps the grid affordable. Cognitive scores
are left out of every input by default (they are caused by the diagnosis and unchanged by
the shift, so they would hide what the image pathway learned).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mediad import RESEARCH_NOTICE
from mediad.errors import InputError
from mediad.io import atomic_path, atomic_write_text
from mediad.metrics import (
    balanced_accuracy,
    bootstrap_statistic,
    percentile_ci,
    subject_resamples,
)

__all__ = ["QUICK", "TEST_SETS", "VARIANTS", "AblationConfig", "paired_difference",
           "probe_balanced_accuracy", "recovered_share", "run_ablation", "share_interval",
           "site_probe", "verdicts"]

#: Training without any site handling: the shortcut is there for the taking.
PLAIN: dict[str, dict[str, Any]] = {
    "model": {"site_adversarial": 0.0}, "data": {"augment": False},
    "optim": {"site_balance": False, "selection": "balanced"}}
#: MediAD's site handling (training only): a diagnosis-conditional site adversary on the
#: features the label is read from, scanner augmentation, site-balanced selection. Not
#: site-balanced sample weights: they stall learning (variant mediad_site_weights).
SITE_HANDLING: dict[str, dict[str, Any]] = {
    "model": {"site_adversarial": 0.5}, "data": {"augment": True},
    "optim": {"site_balance": False, "selection": "site_balanced"}}


def _variant(base: dict[str, dict[str, Any]], **model: Any) -> dict[str, dict[str, Any]]:
    return {"model": {**base["model"], **model}, "data": dict(base["data"]),
            "optim": dict(base["optim"])}


#: Variant name -> overrides of the training config's model / data / optim parts.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "concat": _variant(PLAIN, kind="concat"),
    "mediad": _variant(SITE_HANDLING, kind="mediad"),
    "mediad_no_frontdoor": _variant(SITE_HANDLING, kind="mediad", front_door=False),
    "mediad_no_backdoor": _variant(SITE_HANDLING, kind="mediad", back_door=False),
    "mediad_no_site_term": _variant(SITE_HANDLING, kind="mediad", site_adversarial=0.0),
    "mediad_site_weights": {**_variant(SITE_HANDLING, kind="mediad"),
                            "optim": {**SITE_HANDLING["optim"], "site_balance": True}},
    "mediad_warmup": {**_variant(SITE_HANDLING, kind="mediad"),
                      "optim": {**SITE_HANDLING["optim"], "site_adversarial_warmup": 10}},
    "augment_only": {**_variant(PLAIN, kind="concat"), "data": {"augment": True}},
    "concat_site": _variant(SITE_HANDLING, kind="concat"),
    "mediad_head_only": _variant(PLAIN, kind="mediad"),
    "mediad_no_text": _variant(SITE_HANDLING, kind="mediad", use_text=False),
    "mediad_no_mri": _variant(SITE_HANDLING, kind="mediad", use_image=False),
    "mediad_llm_summaries": {**_variant(SITE_HANDLING, kind="mediad"),
                             "data": {"augment": True, "summary": {"backend": "local"}}},
    "metadata_norm": _variant(PLAIN, kind="metadata_norm"),
    "cf_adversarial": _variant(PLAIN, kind="cf_adversarial"),
}
#: What each variant isolates, for the report.
DESCRIPTIONS = {
    "concat": "late fusion, no site handling (the reference)",
    "mediad": "causal head + site handling (diagnosis-conditional adversary, scanner "
              "augmentation, site-balanced selection)",
    "mediad_no_frontdoor": "mediad without the front-door dictionary",
    "mediad_no_backdoor": "mediad without the site back door",
    "mediad_no_site_term": "mediad without the site adversary",
    "mediad_site_weights": "mediad + site-balanced sample weights",
    "mediad_warmup": "mediad with the site adversary ramped up over 10 epochs (DANN)",
    "augment_only": "concat + scanner augmentation only",
    "concat_site": "concat with mediad's site handling",
    "mediad_head_only": "the causal head without any site handling",
    "mediad_no_text": "mediad, MRI only",
    "mediad_no_mri": "mediad, record only",
    "mediad_llm_summaries": "mediad with the local LLM's summaries",
    "metadata_norm": "concat + metadata normalisation (age, sex, vascular)",
    "cf_adversarial": "concat + age-adversarial features",
}
SCORES = ["mmse", "cdr_sb", "adas13", "faq"]
#: The five test sets; every one but the first is shared by all cells.
TEST_SETS = ("in_distribution", "site_reversed", "age_reversed", "unseen_scanner", "combined")
SHIFTED = TEST_SETS[1:]


class AblationConfig(BaseModel):
    """The grid and the shared training recipe."""

    model_config = ConfigDict(extra="forbid")

    variants: list[str] = Field(default_factory=lambda: [
        "concat", "mediad", "mediad_no_site_term", "concat_site", "augment_only",
        "mediad_no_frontdoor", "mediad_no_backdoor"])
    confounding: list[float] = Field(default_factory=lambda: [0.0, 0.8])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    n_train: int = Field(200, ge=30, description="Subjects drawn for train/val/test.")
    n_shifted: int = Field(120, ge=10, description="Subjects of each shifted test set.")
    shift_confounding: float = Field(0.8, ge=0.0, le=1.0, description="Strength of the "
                                     "reversed links in the shifted test sets.")
    spacing: float = 3.0
    shape: tuple[int, int, int] = (48, 48, 48)
    epochs: int = Field(30, ge=1)
    patience: int = Field(8, ge=1)
    min_epochs: int = Field(15, ge=1, description="No early stop before: the image path "
                            "starts to learn only after a few epochs (epoch 4-8 with the "
                            "warm-up, 10-11 without, measured), and stopping on that plateau "
                            "leaves a model at chance.")
    batch_size: int = 8
    lr: float = 1e-3
    warmup_epochs: float = Field(3.0, ge=0.0, description="Linear learning-rate warm-up.")
    exclude_fields: list[str] = Field(default_factory=lambda: list(SCORES))
    n_bootstrap: int = Field(500, ge=0)
    workers: int = Field(2, ge=1, le=64, description="Processes drawing the cohorts.")

    def model_post_init(self, _: Any) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> AblationConfig:
        p = Path(path)
        try:
            return cls.model_validate(yaml.safe_load(p.read_text(encoding="utf-8")) or {})
        except FileNotFoundError:
            raise InputError(f"{p}: ablation config not found") from None
        except (yaml.YAMLError, ValidationError, ValueError) as exc:
            raise InputError(f"{p}: invalid ablation config: {exc}") from None


#: Under 20 minutes on 2 CPU cores: the comparison the study exists for, one seed.
QUICK = AblationConfig(variants=["concat", "mediad"], confounding=[0.0, 0.8], seeds=[0],
                       n_train=160, n_shifted=60, n_bootstrap=300, epochs=24, min_epochs=12)

COLUMNS = ["variant", "confounding", "seed", "test_set", "n", "bacc", "bacc_low",
           "bacc_high", "site_probe", "best_epoch", "train_seconds"]


def _simulation(cfg: AblationConfig, name: str, conf: float) -> Any:
    from mediad.data.simulate import UNSEEN_SITES, SimulationConfig

    base = SimulationConfig(confounding=conf, spacing=cfg.spacing, n_subjects=cfg.n_train,
                            seed=round(conf * 1000) + 11, native_space=False,
                            workers=cfg.workers)
    if name == "train":
        return base
    shifted = {"site_reversed": {"site_shift": "reversed", "age_shift": "none"},
               "age_reversed": {"site_shift": "none", "age_shift": "reversed"},
               "unseen_scanner": {"sites": UNSEEN_SITES},
               "combined": {"shift": "reversed"}}[name]
    return base.model_copy(update={
        "confounding": cfg.shift_confounding, "n_subjects": cfg.n_shifted,
        "seed": 7000 + SHIFTED.index(name), "subject_offset": 50_000 * (1 + SHIFTED.index(name)),
        **shifted})


def _cohort(cfg: AblationConfig, root: Path, name: str, conf: float = 0.0) -> Path:
    from mediad.data.simulate import simulate_cohort

    folder = root / "cohorts" / (f"c{conf:g}-train" if name == "train" else f"test-{name}")
    sim = _simulation(cfg, name, conf)
    wanted = sim.model_dump(mode="json", exclude={"workers"})
    recorded = folder / "simulation.yaml"
    if not (recorded.is_file() and yaml.safe_load(recorded.read_text(encoding="utf-8"))
            == wanted):  # drawn by another config (n, spacing...): draw it again
        simulate_cohort(sim, folder, overwrite=True)
    return folder


def _train_config(cfg: AblationConfig, variant: str, seed: int, manifest: Path,
                  cache: Path) -> Any:
    from mediad.engine.config import TrainConfig
    from mediad.networks.encoders import TABULAR_FIELDS

    parts = VARIANTS[variant]
    data = dict(parts["data"])
    summary = {"backend": "template", "exclude": cfg.exclude_fields, **data.pop("summary", {})}
    return TrainConfig.model_validate({
        "data": {"manifest": str(manifest), "cache_dir": str(cache),
                 "imaging": {"spacing": [cfg.spacing] * 3, "shape": list(cfg.shape),
                             "preprocess": None},  # the template grid: nothing to register
                 "split": {"seed": 0}, "summary": summary, **data},
        # no registration, so no registration jitter to average over (and the grid's
        # cells stay comparable with those made before shift averaging existed)
        "model": {"tabular_fields": [f for f in TABULAR_FIELDS if f not in cfg.exclude_fields],
                  "shift_average": 0, **parts["model"]},
        "optim": {"epochs": cfg.epochs, "patience": cfg.patience, "min_epochs": cfg.min_epochs,
                  "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup_epochs": cfg.warmup_epochs,
                  "seed": seed,
                  # the grid's recipe from before the log-loss tie-break and score dropout:
                  # cells stay comparable (its test sets hold complete records)
                  "tie_break": "first", "score_dropout": 0.0, **parts["optim"]},
    })


def _rows_of(manifest: Path, classes: list[str], subjects: set[str] | None) -> list[Any]:
    from mediad.data.records import load_manifest

    return [r for r in load_manifest(manifest).rows
            if r.diagnosis in classes and (subjects is None or r.subject_id in subjects)]


#: Prepared test and training MRIs, shared by every cell of a grid run in this process: all
#: cells read the same cohorts through the same ingest (one imaging config per grid), and
#: loading them again for each cell cost more than training it (about 0.3 s a volume,
#: 1,140 loads a cell). Keyed by path and modification time (a redrawn cohort is reloaded).
_PREPARED: dict[tuple[str, int, str], Any] = {}


def _prepared(predictor: Any, path: str | None) -> Any:
    if not path:
        return None
    key = (path, Path(path).stat().st_mtime_ns, predictor.config.data.imaging.model_dump_json())
    if key not in _PREPARED:
        _PREPARED[key] = predictor.load_image(path)
    return _PREPARED[key]


def _score(run: Path, manifest: Path, subjects: set[str] | None, name: str,
           ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions of a run's best model on (part of) a cohort, cached."""
    cached = run / f"scores-{name}.npz"
    if cached.is_file():
        data = np.load(cached)
        return data["y"], data["pred"]
    from mediad.engine.predictor import Predictor

    predictor = Predictor(run / "best.pt")
    rows = _rows_of(manifest, predictor.classes, subjects)
    preds = []
    for start in range(0, len(rows), 16):
        chunk = rows[start:start + 16]
        preds += [p.predicted for p in predictor.predict_many(
            [(_prepared(predictor, r.mri_path), r) for r in chunk])]
    y = np.array([predictor.classes.index(r.diagnosis) for r in rows])
    pred = np.array([predictor.classes.index(p) for p in preds])
    with atomic_path(cached) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, y=y, pred=pred)
    return y, pred


def probe_balanced_accuracy(features: np.ndarray, sites: np.ndarray, seed: int = 0) -> float:
    """How well a linear probe (standardised logistic regression) reads the site from the
    features: cross-validated balanced accuracy (up to 5 stratified folds; NaN when a site
    has fewer than 2 subjects)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(5, np.unique(sites, return_counts=True)[1].min()))
    if folds < 2:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    pred = cross_val_predict(probe, features, sites,
                             cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return balanced_accuracy(sites, pred)


def site_probe(run: Path, manifest: Path, seed: int = 0) -> float:
    """Cross-validated balanced accuracy of a linear probe that reads the site from the
    model's read-out features (the mediator for MediAD) on its whole training cohort;
    chance is 1 / number of sites. Cached in the run folder."""
    cached = run / "site-probe.json"
    if cached.is_file():
        return float(json.loads(cached.read_text(encoding="utf-8"))["balanced_accuracy"])
    from mediad.engine.predictor import Predictor

    predictor = Predictor(run / "best.pt")
    rows = _rows_of(manifest, predictor.classes, None)
    feats = np.concatenate([predictor.readout([(_prepared(predictor, r.mri_path), r)
                                               for r in rows[i:i + 16]])
                            for i in range(0, len(rows), 16)])
    sites = np.array([r.site for r in rows])
    score = probe_balanced_accuracy(feats, sites, seed)
    atomic_write_text(cached, json.dumps({"balanced_accuracy": score, "n": len(rows),
                                          "chance": 1 / len(set(sites))}))
    return score


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    return [r for r in rows if "test_set" in r]  # a table of the older layout is redone


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def run_ablation(cfg: AblationConfig, out_dir: str | Path,
                 log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the grid; writes ablation.csv, ablation.md and ablation.png.

    Finished cells are skipped, an interrupted training run resumes, and the CSV is
    rewritten atomically after every cell, so a grid stopped at any point resumes from its
    finished parts.
    """
    from mediad.engine.trainer import train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "ablation.csv"
    rows = _read_rows(table)
    if rows and (out / "ablation.yaml").is_file():
        _check_same_recipe(cfg, out / "ablation.yaml")
    atomic_write_text(out / "ablation.yaml", yaml.safe_dump(cfg.model_dump(mode="json")))
    done = {(r["variant"], float(r["confounding"]), int(r["seed"])) for r in rows}
    # every variant once first, then the main comparison (concat, mediad) over the other
    # seeds, then the rest; confounded first: a grid stopped early still answers the
    # question the study exists for
    first = cfg.seeds[0]
    cells = sorted(((c, v, s) for s in cfg.seeds for c in cfg.confounding
                    for v in cfg.variants),
                   key=lambda cell: (cell[2] != first, cell[1] not in ("concat", "mediad"),
                                     cfg.seeds.index(cell[2]), -cell[0],
                                     cfg.variants.index(cell[1])))
    for i, (conf, variant, seed) in enumerate(cells, 1):
        if (variant, conf, seed) in done:
            continue
        log(f"[{i}/{len(cells)}] {variant}, confounding {conf:g}, seed {seed}")
        cohort = _cohort(cfg, out, "train", conf)
        tests = {name: _cohort(cfg, out, name) for name in SHIFTED}
        run = out / "runs" / f"{variant}-c{conf:g}-s{seed}"
        config = _train_config(cfg, variant, seed, cohort / "manifest.csv", out / "cache")
        started = time.perf_counter()
        if not (run / "metrics.json").is_file():
            train(config, run, resume=(run / "last.pt").is_file(), show_progress=False)
        seconds = time.perf_counter() - started
        split = json.loads((run / "splits.json").read_text(encoding="utf-8"))
        best = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["best_epoch"]
        probe = (site_probe(run, cohort / "manifest.csv", seed)
                 if VARIANTS[variant]["model"]["kind"] != "tabular" else float("nan"))
        scores = {"in_distribution": _score(run, cohort / "manifest.csv", set(split["test"]),
                                            "in_distribution")}
        scores |= {name: _score(run, folder / "manifest.csv", None, name)
                   for name, folder in tests.items()}
        for name, (y, p) in scores.items():
            ci = bootstrap_statistic(lambda i, y=y, p=p: balanced_accuracy(y[i], p[i]),
                                     len(y), n_boot=cfg.n_bootstrap, seed=seed)
            rows.append({"variant": variant, "confounding": conf, "seed": seed,
                         "test_set": name, "n": len(y), "bacc": round(ci["value"], 4),
                         "bacc_low": round(ci["ci_low"], 4),
                         "bacc_high": round(ci["ci_high"], 4),
                         "site_probe": round(probe, 4), "best_epoch": best,
                         "train_seconds": round(seconds, 1)})
        _write_rows(table, rows)
        log("    " + ", ".join(f"{k} {r['bacc']:.3f}" for k, r in zip(
            TEST_SETS, rows[-len(TEST_SETS):], strict=True)) + f"; site probe {probe:.2f}")
    write_summary(out, cfg)
    return out


#: What may change between runs of one grid folder: which cells, not how each is made.
GRID_ONLY = ("variants", "confounding", "seeds", "n_bootstrap", "workers")


def _check_same_recipe(cfg: AblationConfig, stored: Path) -> None:
    """Finished cells are reused, so they must have been made by the same recipe."""
    before = yaml.safe_load(stored.read_text(encoding="utf-8")) or {}
    now = cfg.model_dump(mode="json")
    changed = [k for k in now if k not in GRID_ONLY and before.get(k) != now[k]]
    if changed:
        raise InputError(
            f"{stored.parent} holds cells made with another recipe ("
            + ", ".join(f"{k}: {before.get(k)} -> {now[k]}" for k in changed)
            + "); finished cells would be mixed with new ones. Use another --out folder.")


def recovered_share(variant: float, concat: float, ceiling: float) -> float:
    """``(BA_variant - BA_concat) / (BA_ceiling - BA_concat)``: the share of the shortcut's
    cost a variant wins back (1 = all of it; NaN when concat already reaches the ceiling)."""
    gap = ceiling - concat
    return float("nan") if gap <= 0.02 else (variant - concat) / gap


def _scores_of(out: Path, variant: str, conf: float, seeds: list[int], test_set: str
               ) -> list[dict[str, np.ndarray]]:
    found = []
    for seed in seeds:
        path = out / "runs" / f"{variant}-c{conf:g}-s{seed}" / f"scores-{test_set}.npz"
        if path.is_file():
            found.append(dict(np.load(path)))
    return found


def paired_difference(candidate: list[dict[str, np.ndarray]],
                      reference: list[dict[str, np.ndarray]], n_boot: int,
                      seed: int = 0) -> dict[str, float]:
    """Seed-averaged balanced accuracy, candidate minus reference, on the same subjects,
    with a paired bootstrap CI by subject (every draw scores all seeds of both models on
    the same resampled subjects)."""
    draws = _draws(len(candidate[0]["y"]), n_boot, seed)
    diff = _ba_draws(candidate, draws) - _ba_draws(reference, draws)
    lo, hi = percentile_ci(diff[1:])
    return {"value": float(diff[0]), "ci_low": lo, "ci_high": hi}


def share_interval(candidate: list[dict[str, np.ndarray]],
                   reference: list[dict[str, np.ndarray]],
                   ceiling: list[dict[str, np.ndarray]], n_boot: int,
                   seed: int = 0) -> dict[str, float]:
    """The recovered share (seeds averaged) with a percentile 95 % CI over subject
    resamples: all three models are scored on the same resampled subjects in every draw.

    Returns:
        ``value``, ``ci_low`` and ``ci_high`` (NaN when not measurable), and ``defined``:
        the fraction of draws whose ceiling is above concat. Below 0.975, one end of the
        interval is unbounded (the share's denominator reaches zero), and the bounds are NaN.
    """
    y = candidate[0]["y"]
    if any(len(s["y"]) != len(y) or (s["y"] != y).any() for s in (*reference, *ceiling)):
        raise ValueError("the recovered share needs the three models scored on the same "
                         "subjects")
    draws = _draws(len(y), n_boot, seed)
    a, b, c = (_ba_draws(s, draws) for s in (candidate, reference, ceiling))
    shares = np.array([recovered_share(*v) for v in zip(a, b, c, strict=True)])
    rest = shares[1:]
    defined = float(np.isfinite(rest).mean()) if len(rest) else float("nan")
    lo, hi = percentile_ci(rest) if defined >= 0.975 else (float("nan"), float("nan"))
    return {"value": float(shares[0]), "ci_low": lo, "ci_high": hi, "defined": defined}


def _draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Row 0: every subject once (the point estimate); then ``n_boot`` subject resamples."""
    return np.stack([np.arange(n), *subject_resamples(list(range(n)), n_boot, seed)])


def _ba_draws(scores: list[dict[str, np.ndarray]], draws: np.ndarray) -> np.ndarray:
    """Seed-averaged balanced accuracy on each resample (a row of subject indices), as
    :func:`mediad.metrics.balanced_accuracy` computes it, vectorised over the resamples
    (sklearn, one call per draw, made the summary take minutes)."""
    per_seed = []
    for s in scores:
        y = s["y"][draws]
        right = s["pred"][draws] == y
        classes = np.unique(s["y"])
        hits = np.stack([(right & (y == k)).sum(1) for k in classes], 1)
        counts = np.stack([(y == k).sum(1) for k in classes], 1)
        with np.errstate(invalid="ignore"):
            recall = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
            ba = np.nanmean(recall, 1)
        ba[(counts > 0).sum(1) < 2] = np.nan
        per_seed.append(ba)
    return np.mean(per_seed, 0)


def _share_text(share: dict[str, float], whose: str) -> str:
    if share["value"] != share["value"]:
        return f"not measurable against {whose} ceiling (it is not above concat)"
    return f"recovers {_share_cell(share)} against {whose} ceiling"


def _share_cell(share: dict[str, float] | None) -> str:
    """``72 % (95 % CI 43 to 98 %)``; for a table cell and the target's sentences."""
    if share is None:
        return "–"
    if share["value"] != share["value"]:
        return "not measurable (ceiling not above concat)"
    ci = (f"95 % CI {100 * share['ci_low']:.0f} to {100 * share['ci_high']:.0f} %"
          if share["ci_low"] == share["ci_low"] else
          f"CI unbounded: in {100 * (1 - share['defined']):.0f} % of resamples the ceiling "
          "is not above concat")
    return f"{100 * share['value']:.0f} % ({ci})"


def verdicts(out: Path, cfg: AblationConfig, reference: str = "concat") -> list[str]:
    """A Markdown table, per variant at the highest confounding and per shift axis: shifted
    balanced accuracy against ``reference`` (paired bootstrap over subjects, seeds
    averaged), and the share of the shortcut's cost recovered against the variant's own
    ceiling and the reference's (subject-bootstrap CIs). Empty without cells to compare."""
    conf, low = max(cfg.confounding), min(cfg.confounding)
    rows = []
    for variant in [v for v in cfg.variants if v != reference]:
        n = len(_scores_of(out, variant, conf, cfg.seeds, "site_reversed"))
        for test_set in SHIFTED:
            cand = _scores_of(out, variant, conf, cfg.seeds, test_set)
            ref = _scores_of(out, reference, conf, cfg.seeds, test_set)
            if not cand or not ref:
                continue
            diff = paired_difference(cand, ref, cfg.n_bootstrap)
            word = ("above" if diff["ci_low"] > 0 else "**below**" if diff["ci_high"] < 0
                    else "not different")
            shares = []
            for owner in (variant, reference):
                ceiling = _scores_of(out, owner, low, cfg.seeds, test_set) if low < conf else []
                shares.append(share_interval(cand, ref, ceiling, cfg.n_bootstrap)
                              if ceiling else None)
            rows.append(f"| {variant} | {n} | {test_set.replace('_', ' ')} | {word}: "
                        f"{100 * diff['value']:+.1f} ({100 * diff['ci_low']:+.1f} to "
                        f"{100 * diff['ci_high']:+.1f}) | {_share_cell(shares[0])} | "
                        f"{_share_cell(shares[1])} |")
    if not rows:
        return []
    return [f"| variant at confounding {conf:g} | seeds | test set | against {reference}, "
            "points (95 % CI) | recovered share, own ceiling | recovered share, "
            f"{reference}'s ceiling |", "|---|---|---|---|---|---|", *rows]


def _target(out: Path, cfg: AblationConfig) -> str:
    """Issue 11's target for mediad, met or not, in numbers. A share counts as reached
    when it is ≥ 80 % against every ceiling that is measurable (MediAD's own, which a
    short recipe can leave under-trained, and concat's), and at least one is."""
    conf, low = max(cfg.confounding), min(cfg.confounding)
    if "mediad" not in cfg.variants or "concat" not in cfg.variants or low == conf:
        return ""
    reached, below, said = {}, [], []
    for test_set in SHIFTED:
        cand, ref = (_scores_of(out, v, conf, cfg.seeds, test_set) for v in ("mediad", "concat"))
        ceilings = [_scores_of(out, v, low, cfg.seeds, test_set) for v in ("mediad", "concat")]
        if not (cand and ref and all(ceilings)):
            return ""
        shares = [share_interval(cand, ref, c, cfg.n_bootstrap) for c in ceilings]
        values = [s["value"] for s in shares if s["value"] == s["value"]]
        reached[test_set] = bool(values) and min(values) >= 0.8
        said.append(f"{test_set.replace('_', ' ')}: " + "; ".join(
            _share_text(s, w) for s, w in zip(shares, ("its own", "concat's"), strict=True)))
        if paired_difference(cand, ref, cfg.n_bootstrap)["ci_high"] < 0:
            below.append(test_set.replace("_", " "))
    met = reached["site_reversed"] and reached["unseen_scanner"] and not below
    return (f"Target (mediad recovers ≥ 80 % on the site axis and the unseen scanner, "
            f"against every ceiling that is measurable, and is below concat on no axis): "
            f"**{'met' if met else 'not met'}**."
            + (f" Below concat on {', '.join(below)}." if below else "")
            + "\n\n" + "\n".join(f"- {t}" for t in said))


def write_summary(out: Path, cfg: AblationConfig) -> None:
    """ablation.md and ablation.png from ablation.csv (averaged over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(out / "ablation.csv")
    mean = frame.groupby(["variant", "confounding", "test_set"], sort=False).agg(
        bacc=("bacc", "mean"), sd=("bacc", "std"), seeds=("seed", "nunique"),
        site_probe=("site_probe", "mean")).reset_index()
    variants = [v for v in cfg.variants if v in set(frame.variant)]
    confs = sorted(set(frame.confounding))
    fig, axes = plt.subplots(1, len(confs), figsize=(5.5 * len(confs), 4.2), squeeze=False)
    width = 0.8 / max(1, len(variants))
    for ax, conf in zip(axes[0], confs, strict=True):
        for i, variant in enumerate(variants):
            g = mean[(mean.variant == variant) & (mean.confounding == conf)].set_index(
                "test_set").reindex(list(TEST_SETS))
            ax.bar(np.arange(len(TEST_SETS)) + i * width, g.bacc, width,
                   yerr=g.sd.fillna(0), capsize=2, label=variant, color=f"C{i}")
        ax.axhline(1 / 3, ls=":", color="grey")
        ax.set_xticks(np.arange(len(TEST_SETS)) + 0.4 - width / 2,
                      [t.replace("_", "\n") for t in TEST_SETS], fontsize=8)
        ax.set(ylim=(0, 1), ylabel="balanced accuracy (mean ± sd over seeds)",
               title=f"trained at confounding {conf:g}")
    # below the panels: inside one, the legend covered the bars of the shifted sets
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(4, len(variants)), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    with atomic_path(out / "ablation.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    header = "| variant | confounding | seeds | " + " | ".join(
        t.replace("_", " ") for t in TEST_SETS) + " | site probe |"
    lines = [header, "|" + "---|" * (len(TEST_SETS) + 4)]
    for variant in variants:
        for conf in confs:
            g = mean[(mean.variant == variant) & (mean.confounding == conf)].set_index(
                "test_set")
            if g.empty:
                continue
            cells = [(f"{g.bacc[t]:.3f}" + (f" ± {g.sd[t]:.3f}" if g.seeds[t] > 1 else ""))
                     if t in g.index else "–" for t in TEST_SETS]
            lines.append(f"| {variant} | {conf:g} | {int(g.seeds.max())} | "
                         + " | ".join(cells) + f" | {g.site_probe.mean():.2f} |")
    found = verdicts(out, cfg) or ["Not enough cells yet for a verdict."]
    target = _target(out, cfg)
    notes = []
    ind = mean[mean.test_set == "in_distribution"]
    unlearned = [f"{r.variant} at confounding {r.confounding:g} ({r.bacc:.2f})"
                 for r in ind.itertuples() if r.bacc < 1 / 3 + 0.1]
    if unlearned:  # a model at chance on its own test split says nothing about shortcuts
        notes = ["Did not learn (in-distribution balanced accuracy within 0.1 of chance), so "
                 "their shifted scores say nothing about the shortcut: "
                 f"{'; '.join(unlearned)}.", ""]
    described = [f"- `{v}`: {DESCRIPTIONS[v]}" for v in variants]
    text = "\n".join([
        "# MediAD confounder ablation", "", f"> **{RESEARCH_NOTICE}**", "",
        "Each variant is trained on a synthetic cohort at the given confounding strength "
        "(site–diagnosis selection bias) and scored on five test sets: its own held-out "
        "split (in distribution); new subjects with the site–diagnosis link reversed; with "
        "the age–diagnosis link reversed; from a scanner no training site has; and with both "
        f"links reversed (shifted sets drawn at strength {cfg.shift_confounding:g}, shared by "
        f"every cell). Inputs leave out {', '.join(cfg.exclude_fields) or 'nothing'}. "
        "Balanced accuracy, mean ± sd over seeds. The verdict compares shifted balanced "
        "accuracy with concat's on the same subjects (paired bootstrap, seeds averaged) and "
        "gives the recovered share (BA − BA_concat) / (BA_ceiling − BA_concat), the ceiling "
        "being the same variant trained at confounding 0, and also concat's (a short recipe "
        "can leave a variant's own ceiling under-trained, below what it reaches confounded); "
        "its 95 % CI resamples the subjects, all three models on the same ones in every "
        "draw, seeds averaged. The site probe is the "
        "cross-validated balanced accuracy of a linear classifier reading the site from the "
        "features the label is read from (chance 0.33).", "",
        "## Verdict", *([target, ""] if target else []), *notes, *found, "",
        "## Variants", *described, "", "## Results", *lines, "",
        "![ablation](ablation.png)", ""])
    atomic_write_text(out / "ablation.md", text)
