"""Pose robustness of the demo model: the same simulated brain, moved in the field of view
(rotations up to 10° per axis, scale 0.9-1.1, shifts up to 10 mm), scored with the
preprocessing the model was trained with and, as a control, without registration.

Prints the mean, 90th percentile and maximum change in any class probability against
the unmoved brain (and, for the largest, whose answer it was),
for the MRI alone and for the MRI with its record: the brain moved in the scanner (the
scanner's noise and bias field now fall elsewhere on the brain: a second scan; its lesions
stay where they are), the very same scan moved (resampled under the pose: pose alone),
and, as a floor, the change between two scans of the unmoved brain (new noise, bias field
and scanner jitter; the same lesions):
registration meets every scan afresh, so its residual jitter shows there too. The
MRI-only answer is also scored uncalibrated: its temperature (below 1) multiplies the
logits, and every change in them with them. Needs the demo model (``mediad demo``).

Run: ``python benchmarks/bench_pose.py [--subjects 15] [--poses 4] [--model best.pt]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import pandas as pd
    from scipy import ndimage

    from mediad.data.records import ClinicalRecord, load_manifest
    from mediad.data.simulate import SITES, head_pose, render_subject, store_subject
    from mediad.engine.predictor import Predictor
    from mediad.experiments.demo import ensure_demo_cohort, ensure_demo_model
    from tests.engine.test_pose import random_pose

    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=15)
    parser.add_argument("--poses", type=int, default=4)
    parser.add_argument("--model", type=Path, default=None,
                        help="a best.pt (default: the demo model, built when absent)")
    args = parser.parse_args()
    cohort, _ = ensure_demo_cohort(shifted=True)
    best = args.model or ensure_demo_model()[0]
    truth = pd.read_csv(cohort / "ground_truth.csv").head(args.subjects)
    truth["site_index"] = truth["site"].map({s.name: i for i, s in enumerate(SITES)})
    rows = {r.subject_id: r for r in load_manifest(cohort / "manifest.csv").rows}
    predictors = {"registered (default)": Predictor(best),
                  "not registered (control)": Predictor(best, mni_inputs=True)}
    rng, scan_rng = np.random.default_rng(0), np.random.default_rng(1)
    changes: dict[tuple[str, str, str], list[float]] = {}
    #: the largest change: (|Δp|, subject number, first answer, moved answer)
    worst: dict[tuple[str, str, str], tuple[float, int, np.ndarray, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for subject, (_, row) in enumerate(truth.iterrows()):
            base = {**row.to_dict(), "head_scale": 1.0,
                    **{f"rotation_{a}_deg": 0.0 for a in "xyz"},
                    **{f"shift_{a}_mm": 0.0 for a in "xyz"}}
            record = ClinicalRecord(**rows[row.subject_id].model_dump(exclude={"mri_path"}))
            # (truth, scanner seed, move of the scan): the brain (its lesions) is seed 11's
            scans = {"moved": [(base, None, None)] + [({**base, **random_pose(rng)}, None, None)
                                                      for _ in range(args.poses)],
                     "scan moved": [(base, None, None)] + [(base, None, random_pose(scan_rng))
                                                           for _ in range(args.poses)],
                     "rescanned": [(base, None, None)] + [(base, 12 + i, None)
                                                          for i in range(args.poses)]}
            for change, renders in scans.items():
                paths = []
                for i, (truth_i, scan_seed, move) in enumerate(renders):
                    volume, affine = render_subject(truth_i, spacing=3.0, seed=11,
                                                    scan_seed=scan_seed)
                    if move is not None:  # the very same scan, resampled under the pose
                        m = np.linalg.inv(affine) @ np.linalg.inv(head_pose(move)) @ affine
                        volume = ndimage.affine_transform(volume, m[:3, :3], m[:3, 3], order=1)
                    path = Path(tmp) / f"{row.subject_id}-{change}-{i}.nii.gz"
                    store_subject(volume, affine, SITES[int(row.site_index)], path,
                                  site_storage=True)
                    paths.append(path)
                for name, predictor in predictors.items():
                    for inputs, rec in (("MRI only", None), ("MRI + record", record),
                                        ("MRI, uncal.", None)):
                        fitted = predictor.calibration
                        if inputs == "MRI, uncal.":  # what the network answers before the
                            predictor.calibration = None  # temperature sharpens it
                        probs = [np.array(list(predictor.predict(p, rec).probabilities
                                               .values())) for p in paths]
                        predictor.calibration = fitted
                        key = (change, name, inputs)
                        for p in probs[1:]:
                            delta = float(np.abs(p - probs[0]).max())
                            changes.setdefault(key, []).append(delta)
                            if delta >= worst.get(key, (-1.0,))[0]:
                                worst[key] = (delta, subject, probs[0], p)
    print(f"{len(truth)} subjects x {args.poses} poses (or rescans); |Δp| = largest change of "
          "any class probability against the first scan of the unmoved brain")
    # the 90th percentile beside the maximum: one brain sets the maximum, so two builds
    # are better told apart by the percentile
    print(f"{'brain':<10} {'preprocessing':<26} {'inputs':<14} {'mean |Δp|':>10} "
          f"{'p90 |Δp|':>10} {'max |Δp|':>10}")
    for (change, name, inputs), values in changes.items():
        print(f"{change:<10} {name:<26} {inputs:<14} {np.mean(values):>10.3f} "
              f"{np.percentile(values, 90):>10.3f} {np.max(values):>10.3f}")
    # whether the largest changes come from brains whose answer sits between two classes
    print("\nlargest change: subject number (in the cohort's order), first answer -> moved")
    for (change, name, inputs), (delta, subject, first, moved) in worst.items():
        if name == "registered (default)" and inputs != "MRI, uncal.":
            print(f"{change:<10} {inputs:<14} {delta:.3f} #{subject:<3} "
                  f"{np.round(first, 2)} -> {np.round(moved, 2)}")


if __name__ == "__main__":
    main()
