"""Saliency on a trained model: maps on the network's grid, progress for occlusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mediad.data.records import load_manifest
from mediad.engine.explain import saliency
from mediad.engine.predictor import Predictor
from mediad.errors import MediADError


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_saliency_maps_and_progress(tiny_run: Path, tiny_cohort: Path, method: str) -> None:
    predictor = Predictor(tiny_run / "best.pt")
    row = load_manifest(tiny_cohort / "manifest.csv").rows[0]
    calls: list[tuple[int, int]] = []
    volume, heat, explained = saliency(predictor, row.mri_path, row, method,  # type: ignore[arg-type]
                                       progress=lambda d, t: calls.append((d, t)))
    shape = predictor.config.data.imaging.shape
    assert volume.shape == heat.shape == shape and explained in predictor.classes
    assert np.isfinite(heat).all() and heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    if method == "occlusion":  # 16-voxel cube, steps of 8 on 32³: 3³ positions
        assert calls[-1] == (27, 27)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        assert len(calls) > 2  # reported as it goes, not only at the end
    else:
        assert calls == []


def test_saliency_needs_a_model_that_uses_mris(tmp_path: Path) -> None:
    class NoImage:
        model = object()

    with pytest.raises(MediADError, match="does not use MRIs"):
        saliency(NoImage(), tmp_path / "x.nii.gz")  # type: ignore[arg-type]
