"""Evaluation scaling: time(4N) / time(N) (goal <= 4.4) and peak memory ratio (goal <= 1.2).

Each size runs in a fresh process so peak RSS is its own. Uses the demo model and the
held-out demo cohort (built if absent). Ratios come from one run on one machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from mediad.experiments.demo import ensure_demo_cohort, ensure_demo_model

CHILD = """
import json, resource, sys, time
from mediad.experiments.evaluation import evaluate
t = time.perf_counter()
evaluate(sys.argv[1], sys.argv[2], sys.argv[3], n_bootstrap=200)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(checkpoint: Path, manifest: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint), str(manifest),
                           str(out)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    cohort, _ = ensure_demo_cohort(shifted=True)
    best, _ = ensure_demo_model()
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    frame["mri_path"] = [str(cohort / p) for p in frame.mri_path]
    n = len(frame) // 4
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "n.csv", Path(tmp) / "4n.csv"
        frame.iloc[:n].to_csv(small, index=False)
        frame.iloc[: 4 * n].to_csv(large, index=False)
        a = run(best, small, Path(tmp) / "a")
        b = run(best, large, Path(tmp) / "b")
    print(f"N = {n}: {a['seconds']:.1f} s, peak {a['peak_mb']:.0f} MB")
    print(f"4N = {4 * n}: {b['seconds']:.1f} s, peak {b['peak_mb']:.0f} MB")
    print(f"time(4N)/time(N) = {b['seconds'] / a['seconds']:.2f} (goal <= 4.4)")
    print(f"peak memory ratio = {b['peak_mb'] / a['peak_mb']:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
