"""Which part of a second scan moves the MRI-only answer: the same unmoved brain scanned
again with one part of the scanner drawn anew (its contrast, blur, bias field, noise, or
the noise's pattern at the same level), and with all of them (a rescan, as in
``bench_pose.py``).

Prints the mean and maximum change in any class probability against the first scan, for
the calibrated MRI-only answer and before its temperature. Needs the demo model (``mediad
demo``), or ``--model``.

Run: ``python benchmarks/bench_rescan_parts.py [--subjects 12] [--draws 3] [--model best.pt]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _answers(predictor: object, truth: dict, kwargs: dict, site: object, path: Path
             ) -> dict[bool, np.ndarray]:
    """The MRI-only answer to one scan of the brain, calibrated and not."""
    from mediad.data.simulate import render_subject, store_subject

    volume, affine = render_subject(truth, spacing=3.0, seed=11, **kwargs)
    store_subject(volume, affine, site, path, site_storage=True)
    fitted, out = predictor.calibration, {}
    for calibrated in (True, False):
        predictor.calibration = fitted if calibrated else None
        out[calibrated] = np.array(list(predictor.predict(path, None).probabilities.values()))
    predictor.calibration = fitted
    return out


def main() -> None:
    import pandas as pd

    from mediad.data.simulate import SCANNER_PARTS, SITES
    from mediad.engine.predictor import Predictor
    from mediad.experiments.demo import ensure_demo_cohort, ensure_demo_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None,
                        help="a best.pt (default: the demo model, built when absent)")
    args = parser.parse_args()
    cohort, _ = ensure_demo_cohort(shifted=True)
    predictor = Predictor(args.model or ensure_demo_model()[0])
    truth = pd.read_csv(cohort / "ground_truth.csv").head(args.subjects)
    truth["site_index"] = truth["site"].map({s.name: i for i, s in enumerate(SITES)})
    scans: dict[str, list[dict]] = {
        part: [{"redraw": (part, 100 + i)} for i in range(args.draws)] for part in SCANNER_PARTS}
    scans["all (a rescan)"] = [{"scan_seed": 12 + i} for i in range(args.draws)]
    changes: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _, row in truth.iterrows():
            unmoved = {**row.to_dict(), "head_scale": 1.0,
                       **{f"rotation_{a}_deg": 0.0 for a in "xyz"},
                       **{f"shift_{a}_mm": 0.0 for a in "xyz"}}
            path = Path(tmp) / f"{row.subject_id}.nii.gz"
            site = SITES[int(row.site_index)]
            first = _answers(predictor, unmoved, {}, site, path)
            for part, draws in scans.items():
                for kwargs in draws:
                    again = _answers(predictor, unmoved, kwargs, site, path)
                    for calibrated in (True, False):
                        changes.setdefault((part, calibrated), []).append(
                            float(np.abs(again[calibrated] - first[calibrated]).max()))
    print(f"{len(truth)} subjects x {args.draws} draws; |Δp| = largest change of any class "
          "probability of the MRI-only answer against the first scan")
    print(f"{'drawn anew':<16} {'answer':<14} {'mean |Δp|':>10} {'max |Δp|':>10}")
    for (part, calibrated), values in changes.items():
        print(f"{part:<16} {'calibrated' if calibrated else 'uncalibrated':<14} "
              f"{np.mean(values):>10.3f} {np.max(values):>10.3f}")


if __name__ == "__main__":
    main()
