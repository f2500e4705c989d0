"""Shared fixtures: tiny synthetic subjects and cohorts built in temporary folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mediad.simulate import SimulationConfig, simulate_cohort


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small confounded cohort at 6 mm (fast), shared read-only by the tests."""
    out = tmp_path_factory.mktemp("cohort") / "tiny"
    return simulate_cohort(SimulationConfig(n_subjects=24, seed=3, spacing=6.0), out)


@pytest.fixture
def write_nifti(tmp_path: Path) -> Callable[..., Path]:
    """Write an array as NIfTI in the test's temp dir and return its path."""

    def write(data: np.ndarray, name: str = "img.nii.gz", affine: np.ndarray | None = None
              ) -> Path:
        path = tmp_path / name
        nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
        return path

    return write


@pytest.fixture
def brain(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 32^3 synthetic head: bright ellipsoid 'brain' in a darker 'skull' shell, RAS, 4 mm."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij"))
    r = np.sqrt(((grid / np.array([0.7, 0.85, 0.65])[:, None, None, None]) ** 2).sum(0))
    vol = np.where(r < 0.8, 100.0 + 50.0 * grid[0], 0.0) + np.where((r > 0.85) & (r < 1.0),
                                                                      40.0, 0.0)
    # a bright lesion-like blob off every axis of symmetry, so flips and shifts show
    blob = ((grid - np.array([0.3, 0.35, -0.25])[:, None, None, None]) ** 2).sum(0) < 0.15**2
    vol = np.where(blob, 250.0, vol)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -62.0
    return vol.astype(np.float32), affine
