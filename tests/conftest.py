"""Shared fixtures: tiny synthetic subjects and cohorts built in temporary folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mediad.data.simulate import SimulationConfig, simulate_cohort
from mediad.engine.config import TrainConfig
from mediad.engine.trainer import train

SMALL_MODEL = {"image": {"channels": [8, 8, 16, 16]}, "d_model": 16, "heads": 2,
               "n_prototypes": 4, "dropout": 0.0, "use_tabular": True}


#: One cache for the whole session: every cache is content-addressed (preprocessed MRIs,
#: summaries, embeddings), so sharing it only saves recomputation between tests.
#: ``MEDIAD_TEST_CACHE`` names a lasting one instead (kept after the run), e.g. to run the
#: GPU tests on a machine without the text model, with the embeddings made elsewhere.
KEEP_CACHE = bool(os.environ.get("MEDIAD_TEST_CACHE"))
SHARED_CACHE = (Path(os.environ["MEDIAD_TEST_CACHE"]) if KEEP_CACHE
                else Path(tempfile.mkdtemp(prefix="mediad-test-cache-")))


def tiny_train_config(cohort: Path, cache: Path | None = None, **model: object
                      ) -> TrainConfig:
    """A training config small enough for unit tests (32^3, 4 epochs); the raw T1s are
    preprocessed as by default (in-process: a worker pool costs more than it saves here)."""
    return TrainConfig.model_validate({
        "data": {"manifest": str(cohort / "manifest.csv"),
                 "cache_dir": str(cache or SHARED_CACHE), "workers": 1,
                 "imaging": {"spacing": [6.0, 6.0, 6.0], "shape": [32, 32, 32]},
                 "split": {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}},
        "model": {**SMALL_MODEL, **model},
        "optim": {"epochs": 4, "batch_size": 4, "lr": 3e-3, "patience": 10,
                  "class_weighting": False},
    })


@pytest.fixture(scope="session", autouse=True)
def _shared_cache() -> Iterator[None]:
    yield
    if not KEEP_CACHE:
        shutil.rmtree(SHARED_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small confounded cohort at 6 mm (fast), shared read-only by the tests."""
    out = tmp_path_factory.mktemp("cohort") / "tiny"
    return simulate_cohort(SimulationConfig(n_subjects=24, seed=3, spacing=6.0), out)


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MediAD model trained on the tiny cohort (shared read-only)."""
    out = tmp_path_factory.mktemp("run") / "mediad"
    train(tiny_train_config(tiny_cohort), out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def in_distribution_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New subjects drawn like the tiny cohort (another seed, disjoint ids)."""
    out = tmp_path_factory.mktemp("cohort") / "in-distribution"
    return simulate_cohort(SimulationConfig(n_subjects=20, seed=5, spacing=6.0,
                                            subject_offset=7000), out)


@pytest.fixture(scope="session")
def held_out_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New subjects (ids disjoint from the tiny cohort), site and age links reversed."""
    out = tmp_path_factory.mktemp("cohort") / "held-out"
    return simulate_cohort(SimulationConfig(n_subjects=16, seed=9, spacing=6.0,
                                            shift="reversed", subject_offset=9000), out)


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
