"""Raw-T1 preprocessing: seconds per subject for brain extraction, registration and the
total, cold and from the cache (2 cores, one run). Input: nilearn's whole-head MNI152 T1,
moved by 10°, ×1.05 and a few mm, at 1 mm and at 2 mm.

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

    print(f"{'input':<22} {'extraction':>11} {'registration':>13} {'total cold':>11} "
          f"{'cached':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("head 2 mm", "head 2 mm, again"):
            path = moved_head(folder / f"{name.split(',')[0].replace(' ', '')}.nii.gz")
            t = time.perf_counter()
            result = preprocess_file(path, PreprocessConfig(), folder / name)
            total = time.perf_counter() - t
            t = time.perf_counter()
            preprocess_file(path, PreprocessConfig(), folder / name)
            cached = time.perf_counter() - t
            s = result.qc.seconds
            print(f"{name:<22} {s['brain_extraction']:>10.1f}s {s['registration']:>12.1f}s "
                  f"{total:>10.1f}s {cached:>7.2f}s")


if __name__ == "__main__":
    main()
