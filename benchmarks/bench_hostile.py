"""Refusing hostile NIfTI files: peak memory and time, each case in a fresh process.

Cases: a 4 KB ``.nii`` whose header declares 1000³ (and 4000³) float32 voxels, a 2 GB gzip
bomb (its header declares 16³ voxels), and, for scale, a real 3 mm demo-sized volume that
is accepted. Each path a user takes is measured: ``validate``'s reader, ``predict``'s
loader and the training pipeline. Run: ``python benchmarks/bench_hostile.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from mediad.errors import ImageError
path, reader = Path(sys.argv[1]), sys.argv[2]
from mediad.data.imaging import ImagingConfig, build_transforms, inspect_volume, load_volume
cfg = ImagingConfig()
fn = {"validate": inspect_volume, "predict": lambda p: load_volume(p, cfg),
      "train": lambda p: build_transforms(cfg)({"image": str(p)})}[reader]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    fn(path)
    outcome = "accepted"
except Exception as exc:
    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, ImageError):
        cause = cause.__cause__
    outcome = "refused" if isinstance(cause, ImageError) else f"crashed: {type(exc).__name__}"
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "seconds": seconds, "peak_mb": peak / 1024,
                  "growth_mb": (peak - base) / 1024}))
"""


def main() -> None:
    from tests.hostile import gzip_bomb, header_bomb

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        import nibabel as nib
        import numpy as np

        real = folder / "real.nii.gz"
        rng = np.random.default_rng(0)
        nib.save(nib.Nifti1Image(rng.random((60, 72, 60), dtype=np.float32) * 100,
                                 np.diag([3.0, 3.0, 3.0, 1.0])), str(real))
        cases = {
            "header 1000^3 (4 GB declared)": header_bomb(folder / "h1000.nii", 1000),
            "header 4000^3 (256 GB declared)": header_bomb(folder / "h4000.nii", 4000),
            "gzip bomb, 2 GB stream": gzip_bomb(folder / "bomb.nii.gz", 2 << 30),
            "real 3 mm volume (accepted)": real,
        }
        print(f"{'case':<34} {'path':<9} {'outcome':<9} {'seconds':>8} {'peak RSS':>10} "
              f"{'growth':>8}")
        for name, path in cases.items():
            for reader in ("validate", "predict", "train"):
                out = subprocess.run([sys.executable, "-c", CHILD, str(path), reader],
                                     capture_output=True, text=True, cwd=ROOT, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{name:<34} {reader:<9} {r['outcome']:<9} {r['seconds']:>8.3f} "
                      f"{r['peak_mb']:>7.0f} MB {r['growth_mb']:>5.0f} MB")


if __name__ == "__main__":
    main()
