"""Missing inputs and calibration: the demo model per input pattern against single-input
baselines trained on the same split, and how far temperature scaling on the demo's
validation split can be from the best temperature for new subjects.

For each test set (the demo cohort's test split; new subjects drawn as the demo cohort
was; the shifted demo cohort, site and age links reversed) it reports balanced accuracy and
ECE of the demo model's calibrated probabilities with the MRI and record, the MRI only and
the record only (and of the label-blind demo model, without MMSE and CDR-SB), next to an
``image_only`` model and the ``tabular`` baseline (gradient boosting on the record's fields)
trained with the demo recipe on the demo model's own split.

The calibration table asks, per input pattern of the demo model on the fresh cohort: the ECE
before calibration, with the checkpoint's temperature, and with the best temperature for
these subjects (the least temperature scaling can reach); then, for validation splits of
several sizes drawn from the fresh cohort, the temperature each fits and the ECE it gives on
the remaining subjects. That separates a temperature that is wrong because its validation
split is small from a model that no temperature calibrates.

Run: ``python benchmarks/bench_missing_inputs.py [--out docs/results/missing-inputs.md]``
(builds the demo cohort, model and baselines in the data folder when absent).
``--reference`` scores the reference model (``mediad demo --reference``) instead, against
baselines trained with the reference recipe on its split (no label-blind model). Figures come
from one run on one machine; test splits are small, so read the intervals.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mediad.data.records import ManifestRow, load_manifest
from mediad.data.simulate import simulate_cohort
from mediad.data.splits import Splits
from mediad.engine.calibration import Calibration, fit_temperature, fit_temperature_and_bias
from mediad.engine.predictor import Predictor
from mediad.engine.trainer import train
from mediad.experiments.demo import (
    DEMO_COHORT,
    demo_config,
    ensure_demo_cohort,
    ensure_demo_model,
)
from mediad.io import atomic_write_text
from mediad.metrics import (
    balanced_accuracy,
    bootstrap_statistic,
    ece_noise_floor,
    expected_calibration_error,
    paired_bootstrap,
)
from mediad.paths import data_dir

#: New subjects drawn exactly as the demo cohort: a test set big enough for ECE (at 120
#: subjects, exact probabilities read ECE ~0.09; at 400, ~0.05: see ``ece_noise_floor``).
FRESH = DEMO_COHORT.model_copy(update={"n_subjects": 400, "seed": 2028,
                                        "subject_offset": 9000})
PATTERNS = {"mri+record": (True, True), "mri": (True, False), "record": (False, True)}
#: Validation split sizes for the resampled temperature fits (the demo's is 22 subjects).
VAL_SIZES = (22, 50, 100)
ECE_TARGET = 0.05


def baseline(kind: str, root: Path, splits: Path, reference: bool = False) -> Path:
    """A single-input model trained like the demo (or reference) model, on its split
    (reused when it was made by the same recipe)."""
    folder = root / ("bench-baselines-reference" if reference else "bench-baselines") / kind
    cohort, _ = ensure_demo_cohort(root, reference=reference)
    config = demo_config(cohort, root / "cache", reference=reference)
    config = config.model_copy(update={
        "data": config.data.model_copy(update={"splits": splits}),
        "model": config.model.model_copy(update={"kind": kind,
                                                 "use_tabular": kind != "image_only"}),
    })
    recipe = config.to_yaml()
    stamp = folder / "recipe.yaml"
    if (folder / "metrics.json").is_file() and stamp.is_file() and stamp.read_text() == recipe:
        return folder / "best.pt"
    if folder.exists():
        shutil.rmtree(folder)
    train(config, folder, show_progress=False)
    stamp.write_text(recipe)
    return folder / "best.pt"


def score(predictor: Predictor, rows: list[ManifestRow], mri: bool, record: bool
          ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and calibrated probabilities of the rows that have the inputs asked for."""
    keep = [r for r in rows if r.diagnosis in predictor.classes and (r.mri_path or not mri)]
    preds = predictor.predict_many([(r.mri_path if mri else None, r if record else None)
                                    for r in keep])
    y = np.array([predictor.classes.index(r.diagnosis) for r in keep])
    proba = np.array([[p.probabilities[c] for c in predictor.classes] for p in preds])
    return y, proba


def _fitted_on(predictor: Predictor) -> str:
    cal = predictor.calibration
    if cal is None:
        return "nothing (uncalibrated)"
    if cal.fitted_on == "validation split":
        return f"its {cal.n_validation} validation subjects"
    return cal.fitted_on


def _scaled(log_p: np.ndarray, t: float, bias: Sequence[float] | None = None) -> np.ndarray:
    """Probabilities at temperature ``t`` (plus a class bias), as ``Calibration.calibrate``
    computes them."""
    from scipy.special import softmax

    return softmax(log_p / t + (0.0 if bias is None else np.asarray(bias)), axis=1)


def _named(t: float, bias: Sequence[float] | None) -> str:
    return f"T = {t:.2f}" + ("" if bias is None else ", class bias "
                             + " / ".join(f"{b:+.2f}" for b in bias))


def calibration_rows(pattern: str, y: np.ndarray, raw: np.ndarray, fitted: Calibration | None,
                     draws: int = 200, seed: int = 0) -> list[str]:
    """Markdown rows: ECE before, with the checkpoint's calibration and with the best
    temperature (alone, and with a class bias), and with temperatures fitted on resampled
    validation splits (ECE read on the other subjects)."""
    log_p = np.log(np.clip(raw, 1e-12, 1.0))
    best_tb, best_b = fit_temperature_and_bias(log_p, y)
    rows = [f"| {pattern} | all {len(y)} | T = 1 | {expected_calibration_error(y, raw):.3f} "
            f"| {ece_noise_floor(raw):.3f} | |"]
    ckpt = ((fitted.temperature.get(pattern, 1.0), fitted.bias.get(pattern)) if fitted
            else (1.0, None))
    for name, (t, b) in (("checkpoint's", ckpt),
                         ("best for these subjects", (fit_temperature(log_p, y), None)),
                         ("best with a class bias", (best_tb, best_b.tolist()))):
        proba = _scaled(log_p, t, b)
        rows.append(f"| {pattern} | all {len(y)} | {name}: {_named(t, b)} | "
                    f"{expected_calibration_error(y, proba):.3f} | "
                    f"{ece_noise_floor(proba):.3f} | |")
    rng = np.random.default_rng(seed)
    for n in VAL_SIZES:
        temps, eces, floors = [], [], []
        for _ in range(draws):
            val = np.zeros(len(y), dtype=bool)
            val[rng.choice(len(y), n, replace=False)] = True
            t = fit_temperature(log_p[val], y[val])
            proba = _scaled(log_p[~val], t)
            temps.append(t)
            eces.append(expected_calibration_error(y[~val], proba))
            floors.append(ece_noise_floor(proba, draws=20))
        q = np.quantile(temps, [0.1, 0.5, 0.9])
        rows.append(f"| {pattern} | other {len(y) - n} | fitted on {n} resampled "
                    f"(T {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}) | {np.median(eces):.3f} | "
                    f"{np.median(floors):.3f} | {np.mean(np.array(eces) <= ECE_TARGET):.0%} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the table (Markdown)")
    parser.add_argument("--reference", action="store_true",
                        help="score the reference model (mediad demo --reference), against "
                        "baselines trained with its recipe on its split")
    args = parser.parse_args()
    root, ref = data_dir(), args.reference
    main_name = "reference model (MediAD)" if ref else "demo model (MediAD)"
    cohort, _ = ensure_demo_cohort(root, reference=ref)
    shifted, _ = ensure_demo_cohort(root, shifted=True)
    best, _ = ensure_demo_model(root, show_progress=False, reference=ref)
    splits_file = best.parent / "splits.json"
    splits = Splits.load(splits_file)
    started = time.perf_counter()
    models = {main_name: Predictor(best)}
    if not ref:
        blind, _ = ensure_demo_model(root, show_progress=False, label_blind=True)
        models["label-blind demo model (MediAD)"] = Predictor(blind)
    models |= {"image_only baseline": Predictor(baseline("image_only", root, splits_file, ref)),
               "tabular baseline": Predictor(baseline("tabular", root, splits_file, ref))}
    print(f"baselines ready in {time.perf_counter() - started:.0f} s")
    fresh = root / f"bench-in-distribution-{FRESH.n_subjects}"
    if not (fresh / "manifest.csv").is_file():
        simulate_cohort(FRESH, fresh, overwrite=True)
    test_sets = {
        f"in distribution ({'reference' if ref else 'demo'} test split)": [
            r for r in load_manifest(cohort / "manifest.csv").rows
            if splits.split_of(r.subject_id) == "test"],
        f"fresh in-distribution cohort ({FRESH.n_subjects} new subjects)": load_manifest(
            fresh / "manifest.csv").rows,
        "shifted demo cohort": load_manifest(shifted / "manifest.csv").rows,
    }
    asked = {main_name: ("mri+record", "mri", "record"),
             "label-blind demo model (MediAD)": ("mri+record", "mri", "record"),
             "image_only baseline": ("mri",), "tabular baseline": ("record",)}
    lines = ["| test set | model | inputs | n | balanced accuracy (95 % CI) | ECE | "
             "ECE floor |", "|---|---|---|---|---|---|---|"]
    diffs = ["| test set | MediAD against | inputs | difference, points (95 % CI) |",
             "|---|---|---|---|"]
    calibration = ["| inputs | scored on | temperature (10th / 50th / 90th percentile) | "
                   "ECE (median) | ECE floor | ECE ≤ 0.05 |", "|---|---|---|---|---|---|"]
    demo = models[main_name]
    for set_name, rows in test_sets.items():
        got = {}
        for model_name, predictor in models.items():
            for pattern in asked[model_name]:
                if predictor is demo and set_name.startswith("fresh"):
                    fitted, demo.calibration = demo.calibration, None
                    y, raw = score(demo, rows, *PATTERNS[pattern])
                    demo.calibration = fitted
                    calibration += calibration_rows(pattern, y, raw, fitted)
                    print(*calibration[-6:], sep="\n", flush=True)
                    log_p = np.log(np.clip(raw, 1e-12, 1.0))
                    proba = (np.exp(fitted.calibrate(log_p, [pattern] * len(y))) if fitted
                             else raw)
                else:
                    y, proba = score(predictor, rows, *PATTERNS[pattern])
                got[model_name, pattern] = y, proba
                ba = bootstrap_statistic(lambda i, y=y, p=proba: balanced_accuracy(
                    y[i], p[i].argmax(1)), len(y), n_boot=1000)
                lines.append(f"| {set_name} | {model_name} | {pattern} | {len(y)} | "
                             f"{ba['value']:.3f} ({ba['ci_low']:.3f}–{ba['ci_high']:.3f}) | "
                             f"{expected_calibration_error(y, proba):.3f} | "
                             f"{ece_noise_floor(proba):.3f} |")
                print(lines[-1], flush=True)
        for other, pattern in (("image_only baseline", "mri"), ("tabular baseline", "record")):
            (y, a), (y2, b) = got[main_name, pattern], got[other, pattern]
            assert (y == y2).all()  # the same subjects, in the same order
            d = paired_bootstrap(lambda i, y=y, a=a: balanced_accuracy(y[i], a[i].argmax(1)),
                                 lambda i, y=y, b=b: balanced_accuracy(y[i], b[i].argmax(1)),
                                 len(y), n_boot=1000)
            diffs.append(f"| {set_name} | {other} | {pattern} | {100 * d['value']:+.1f} "
                         f"({100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f}) |")
            print(diffs[-1], flush=True)
    lines += ["", "ECE floor: the ECE that exactly right probabilities would read on the same "
              "subjects (`mediad.metrics.ece_noise_floor`); an ECE near it is no evidence of "
              "miscalibration.", "", *diffs, "", f"Calibration of the {main_name} on the "
              f"fresh cohort: the checkpoint's temperature was fitted on {_fitted_on(demo)}; "
              "'best' is fitted on the scored subjects themselves; the resampled "
              "rows draw 200 validation splits from the fresh cohort, fit a temperature on "
              "each and read the ECE on the rest (median, and how often it is ≤ 0.05).", "",
              *calibration]
    table = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
