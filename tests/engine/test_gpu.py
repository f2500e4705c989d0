"""Training and prediction on a CUDA GPU, in both precisions (``optim.precision``).

CI has no GPU, so these run only where one is: ``pytest -m gpu`` on a CUDA machine. They
use MRIs already in MNI space (no brain extraction or registration), so that they also run
on a GPU machine with only the core packages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mediad.data.records import load_manifest
from mediad.data.simulate import SimulationConfig, simulate_cohort
from mediad.engine.predictor import Predictor
from mediad.engine.trainer import train
from tests.conftest import tiny_train_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def mni_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Brains in the template's space, some subjects without an MRI."""
    out = tmp_path_factory.mktemp("cohort") / "mni"
    return simulate_cohort(SimulationConfig(n_subjects=24, seed=3, spacing=6.0,
                                            native_space=False, missing_mri_rate=0.1), out)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_gpu_trained_model_answers_alike_on_gpu_and_cpu(mni_cohort: Path, tmp_path: Path,
                                                          precision: str) -> None:
    config = tiny_train_config(mni_cohort)
    imaging = config.data.imaging.model_copy(update={"preprocess": None})
    config = config.model_copy(update={
        "data": config.data.model_copy(update={"imaging": imaging}),
        "optim": config.optim.model_copy(update={"precision": precision})})
    out = tmp_path / "run"
    train(config, out, show_progress=False)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == config.optim.epochs
    assert all(math.isfinite(e["train_loss"]) for e in epochs)
    assert "calibration" in json.loads((out / "metrics.json").read_text())

    rows = load_manifest(mni_cohort / "manifest.csv").rows
    asked = [(r.mri_path, r) for r in rows[:8]] + [(rows[0].mri_path, None)]
    answers = {device: Predictor(out / "best.pt", device=device, mni_inputs=True
                                 ).predict_many(asked) for device in ("cuda", "cpu")}
    for gpu, cpu in zip(answers["cuda"], answers["cpu"], strict=True):
        assert gpu.input_pattern == cpu.input_pattern
        for c, p in cpu.probabilities.items():
            assert gpu.probabilities[c] == pytest.approx(p, abs=1e-3)
