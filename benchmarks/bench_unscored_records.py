"""Records without cognitive scores: how a model answers new subjects whose record holds
none of MMSE, CDR-SB, ADAS-Cog-13 and FAQ (a referral letter, the app's form filled in by
hand), beside the same subjects with their full record, with the MRI alone and with the
record alone.

Draws new subjects as the demo cohort was (every record complete, every subject with an
MRI; ``unscored-bench-cohort/`` in the data folder, once), then scores each subject under
five inputs: the MRI and the full record; the MRI and the record with the four scores
removed; the MRI alone; the record without scores alone; the full record alone. Prints,
per input, the calibrated pattern the answers fell in, balanced accuracy, accuracy, mean
top probability and ECE (with the ECE that exactly right probabilities would read on the
same subjects).

Run: ``python benchmarks/bench_unscored_records.py [--model best.pt] [--subjects 300]``
(default: the demo model, built when absent).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from mediad.data.records import COGNITIVE_SCORES, ClinicalRecord, load_manifest
    from mediad.data.simulate import simulate_cohort
    from mediad.engine.predictor import Predictor
    from mediad.experiments.demo import DEMO_COHORT, ensure_demo_model
    from mediad.metrics import balanced_accuracy, ece_noise_floor, expected_calibration_error
    from mediad.paths import data_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None,
                        help="a best.pt (default: the demo model, built when absent)")
    parser.add_argument("--subjects", type=int, default=300)
    args = parser.parse_args()
    best = args.model or ensure_demo_model()[0]
    folder = data_dir() / "unscored-bench-cohort"
    cohort = DEMO_COHORT.model_copy(update={
        "n_subjects": args.subjects, "seed": 2040, "subject_offset": 30000,
        "partial_record_rate": 0.0, "missing_mri_rate": 0.0})
    if not (folder / "manifest.csv").is_file():
        simulate_cohort(cohort, folder, overwrite=True)
    rows = load_manifest(folder / "manifest.csv").rows
    predictor = Predictor(best)
    predictor.prepare([r.mri_path for r in rows if r.mri_path], workers=2)
    y = np.array([predictor.classes.index(r.diagnosis) for r in rows])
    full = [ClinicalRecord(**r.model_dump(exclude={"mri_path"})) for r in rows]
    unscored = [r.model_copy(update=dict.fromkeys(COGNITIVE_SCORES)) for r in full]
    inputs = {
        "MRI and full record": [(r.mri_path, f) for r, f in zip(rows, full, strict=True)],
        "MRI and record without scores": [(r.mri_path, u)
                                          for r, u in zip(rows, unscored, strict=True)],
        "MRI alone": [(r.mri_path, None) for r in rows],
        "record without scores alone": [(None, u) for u in unscored],
        "full record alone": [(None, f) for f in full],
    }
    print(f"{best}; {len(rows)} new subjects drawn as the demo cohort")
    print("| inputs | calibrated as | balanced accuracy | accuracy | mean top p | ECE (floor) |")
    print("|---|---|---|---|---|---|")
    for name, items in inputs.items():
        answers = [p for i in range(0, len(items), 32)
                   for p in predictor.predict_many(items[i:i + 32])]
        proba = np.array([[a.probabilities[c] for c in predictor.classes] for a in answers])
        patterns = sorted({a.input_pattern for a in answers})
        print(f"| {name} | {', '.join(patterns)} | "
              f"{balanced_accuracy(y, proba.argmax(1)):.3f} | "
              f"{(proba.argmax(1) == y).mean():.3f} | {proba.max(1).mean():.3f} | "
              f"{expected_calibration_error(y, proba):.3f} ({ece_noise_floor(proba):.3f}) |",
              flush=True)


if __name__ == "__main__":
    main()
