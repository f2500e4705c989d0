"""Throughput of the foundation: simulator subjects/s and MRI ingest volumes/s.

Run: ``make bench`` (or ``python benchmarks/bench_foundation.py --subjects 40``). Numbers
depend on the machine; compare ratios measured in one run, not absolute values across runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mediad.data.imaging import ImagingConfig, build_transforms, load_volume
from mediad.data.records import load_manifest
from mediad.data.simulate import SimulationConfig, _template, simulate_cohort
from mediad.data.validate import validate_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--spacing", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    _template()  # template loading is a one-off start-up cost, reported separately
    results: dict[str, float] = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            cfg = SimulationConfig(n_subjects=args.subjects, spacing=args.spacing,
                                   workers=workers, seed=1)
            t = time.perf_counter()
            out = simulate_cohort(cfg, Path(tmp) / f"w{workers}")
            results[f"simulate_subjects_per_s_workers{workers}"] = args.subjects / (
                time.perf_counter() - t)
        paths = [r.mri_path for r in load_manifest(out / "manifest.csv").rows]
        pipeline = build_transforms(ImagingConfig())
        load_volume(paths[0], transforms=pipeline)  # warm-up
        t = time.perf_counter()
        for p in paths:
            load_volume(p, transforms=pipeline)
        results["ingest_volumes_per_s"] = len(paths) / (time.perf_counter() - t)
        t = time.perf_counter()
        validate_path(out)
        results["validate_subjects_per_s"] = len(paths) / (time.perf_counter() - t)
    results["simulate_speedup_2_workers"] = (results["simulate_subjects_per_s_workers2"]
                                             / results["simulate_subjects_per_s_workers1"])
    for key, value in results.items():
        print(f"{key:<40} {value:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
