"""Registration at the demo's settings and at other step counts: how far each simulated
brain lands from where its known pose puts it, how consistently one brain lands under
different poses, how much its preprocessed input differs between poses, and the seconds.

Why three figures: the metric's optimum is not the true pose (the subject's anatomy is not
the template's; the metric compares local contrast on a 7 mm grid), so an optimiser
stopped early can land nearer the truth by chance while landing somewhere else for every
pose of the same brain. What the pose tests need is consistency: the residual map
(template -> registration -> the true pose undone) should be the same for every pose of a
brain. "spread" is its RMS distance from that brain's mean residual over the template
brain, in mm; "from truth" the mean residual's RMS distance from the identity; "input" the
RMS difference between two poses' preprocessed inputs inside the template brain, in units
of the input's own standard deviation (what the network sees; resampling the scanner's
noise anew under each pose is part of it, so it has a floor above zero).

Brains are rendered as the demo cohort's are (3 mm, a site's scanner, brain-extracted),
each under ``--poses`` random poses (rotations up to 10°, shifts up to 10 mm, scale
0.9-1.1, as the pose test draws them).

Run: ``python benchmarks/bench_registration.py [--brains 8] [--poses 4]
[--iterations 40 60 80 120]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: SimpleITK's physical space is LPS, nibabel's RAS.
_LPS = np.array([-1.0, -1.0, 1.0])


def _brains(n_brains: int, n_poses: int, seed: int) -> list[list[tuple[dict, object]]]:
    import nibabel as nib

    from mediad.data.simulate import SimulationConfig, draw_population, render_subject
    from tests.engine.test_pose import random_pose

    frame = draw_population(SimulationConfig(n_subjects=n_brains, seed=seed))
    rng = np.random.default_rng(seed)
    brains = []
    for i, row in frame.iterrows():
        base = {**row.to_dict(), "whole_head": False}
        poses = []
        for _ in range(n_poses):
            truth = {**base, **random_pose(rng)}
            volume, affine = render_subject(truth, 3.0, seed=1000 + int(i))
            poses.append((truth, nib.Nifti1Image(volume, affine)))
        brains.append(poses)
    return brains


def _residual(transform: object, truth: dict, points: np.ndarray) -> np.ndarray:
    """Template points mapped by the registration, then back through the true pose."""
    from mediad.data.simulate import head_pose

    undo = np.linalg.inv(head_pose(truth))
    moved = np.array([transform.TransformPoint(tuple(map(float, p * _LPS)))  # type: ignore[attr-defined]
                      for p in points]) * _LPS
    return moved @ undo[:3, :3].T + undo[:3, 3]


def main() -> None:
    from mediad.data.preprocess import (
        PreprocessConfig,
        fit_registration,
        register_to_template,
        template_brain,
    )
    from mediad.engine.config import TrainConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--brains", type=int, default=8)
    parser.add_argument("--poses", type=int, default=4)
    parser.add_argument("--iterations", type=int, nargs="+", default=[40, 60, 80, 120])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    demo = TrainConfig.from_yaml(Path(__file__).resolve().parents[1] / "mediad" / "configs"
                                 / "demo.yaml").data.imaging.preprocess
    assert demo is not None
    brains = _brains(args.brains, args.poses, args.seed)
    template, mask = template_brain(demo.output_spacing)
    points = (np.argwhere(mask) @ template.affine[:3, :3].T + template.affine[:3, 3])[::7]
    fit_registration(brains[0][0][1], demo)  # the template's grids, built once
    print(f"{args.brains} brains x {args.poses} poses; demo settings: "
          f"{demo.model_dump(include={'registration_spacing', 'iterations', 'sampling'})}")
    print(f"{'steps':>5} {'fit s':>6} {'spread mm (mean / max)':>23} {'from truth mm':>14} "
          f"{'input, z (mean / max)':>22}")
    for steps in args.iterations:
        config = PreprocessConfig(**{**demo.model_dump(), "iterations": steps})
        seconds, spread, truth_error, inputs = [], [], [], []
        for poses in brains:
            residuals, volumes = [], []
            for truth, image in poses:
                t = time.perf_counter()
                transform = fit_registration(image, config)
                seconds.append(time.perf_counter() - t)
                residuals.append(_residual(transform, truth, points))
                x = np.asarray(register_to_template(image, config)[0].dataobj)[mask]
                volumes.append((x - x.mean()) / x.std())
            r = np.array(residuals)
            mean = r.mean(0)
            spread += np.sqrt(((r - mean) ** 2).sum(-1).mean(-1)).tolist()
            truth_error.append(float(np.sqrt(((mean - points) ** 2).sum(-1).mean())))
            inputs += [float(np.sqrt(((a - b) ** 2).mean()))
                       for i, a in enumerate(volumes) for b in volumes[i + 1:]]
        print(f"{steps:>5} {np.mean(seconds):>6.3f} {np.mean(spread):>11.3f} / "
              f"{np.max(spread):.3f} {np.mean(truth_error):>14.3f} "
              f"{np.mean(inputs):>12.4f} / {np.max(inputs):.4f}", flush=True)


if __name__ == "__main__":
    main()
