"""The first start of the app (`make demo` on a fresh clone, once installed): seconds per
phase of building the demo, as `mediad app` builds it, in an empty data folder.

The phases are read off what each one writes (the cohorts' cards, the run's config and
epoch log, the calibration report), so the timing runs the very code the app runs. The
same machine differs by up to 1.8x from day to day here: the yardstick line times a fixed
workload (a training step of the demo network's MRI encoder on one 48³ batch) so that runs
on different days can be compared.

Run: ``python benchmarks/bench_first_start.py [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def yardstick(repeats: int = 20) -> float:
    """Median seconds of one training step of the demo network's MRI encoder (batch 8 at
    48³, the threads torch picks)."""
    import numpy as np
    import torch

    from mediad.engine.config import TrainConfig
    from mediad.experiments.demo import DEMO_CONFIG
    from mediad.networks.models import build_model

    encoder = build_model(TrainConfig.from_yaml(DEMO_CONFIG).model, (48, 48, 48)).image
    optimizer = torch.optim.AdamW(encoder.parameters())
    x = torch.rand(8, 1, 48, 48, 48)
    times = []
    for _ in range(repeats + 3):
        t = time.perf_counter()
        encoder(x).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t)
    return float(np.median(times[3:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        os.environ["MEDIAD_DATA_DIR"] = str(root)
        started = time.time()
        from mediad.cli import _start_workers_for_demo

        _start_workers_for_demo(root)  # as `mediad app` does, before its imports
        from mediad.experiments.demo import (
            DEMO_CALIBRATION_FOLDER,
            DEMO_COHORT,
            ensure_demo_cohort,
            ensure_demo_model,
        )
        from mediad.workers import shared_workers

        imported = time.time()
        with shared_workers(DEMO_COHORT.workers):
            ensure_demo_cohort(root)
            ensure_demo_model(root, show_progress=False)
        done = time.time()
        model = root / "demo-model"
        marks = [("imports", imported),
                 ("drawing the demo cohort", (root / "demo-cohort" / "dataset_card.json")),
                 ("preprocessing its MRIs", model / "splits.json"),
                 ("training (60 epochs)", model / "metrics.jsonl"),
                 ("evaluation, temperatures on validation", model / "metrics.json"),
                 ("drawing the calibration cohort",
                  root / DEMO_CALIBRATION_FOLDER / "dataset_card.json"),
                 ("preprocessing and scoring it, refit", model / "calibration.json")]
        print(f"{'phase':<42} {'seconds':>8}")
        last = started
        for name, mark in marks:
            at = mark if isinstance(mark, float) else mark.stat().st_mtime
            print(f"{name:<42} {at - last:>8.1f}")
            last = at
        print(f"{'total (the app opens now)':<42} {done - started:>8.1f}")
    print(f"yardstick: one training step of the MRI encoder, batch 8 at 48³: "
          f"{yardstick() * 1000:.0f} ms")


if __name__ == "__main__":
    main()
