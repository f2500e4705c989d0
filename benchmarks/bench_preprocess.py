"""Raw-T1 preprocessing: seconds per subject for brain extraction, registration and the
total, cold and from the cache (2 cores, one run). Input: nilearn's whole-head MNI152 T1,
moved by 10° (then 6°), ×1.05 and a few mm, on its 2 mm grid.

Run: ``python benchmarks/bench_preprocess.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from mediad.data.preprocess import PreprocessConfig, preprocess_file
    from tests.data.test_preprocess import moved_head

    print(f"{'subject':<38} {'extraction':>11} {'registration':>13} {'total cold':>11} "
          f"{'cached':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, name in enumerate(("first in a process (builds templates)",
                                  "next subject")):
            path = moved_head(folder / f"head{i}.nii.gz", degrees=10.0 - 4 * i)
            t = time.perf_counter()
            result = preprocess_file(path, PreprocessConfig(), folder / "cache")
            total = time.perf_counter() - t
            t = time.perf_counter()
            preprocess_file(path, PreprocessConfig(), folder / "cache")
            cached = time.perf_counter() - t
            s = result.qc.seconds
            print(f"{name:<38} {s['brain_extraction']:>10.1f}s {s['registration']:>12.1f}s "
                  f"{total:>10.1f}s {cached:>7.2f}s")


if __name__ == "__main__":
    main()
