from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def app_data(tiny_run: Path, tiny_cohort: Path, held_out_cohort: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder laid out like `make demo` leaves it, with the tiny model and cohort."""
    root = tmp_path_factory.mktemp("appdata")
    (root / "demo-model").mkdir()
    shutil.copy(tiny_run / "best.pt", root / "demo-model" / "best.pt")
    shutil.copytree(held_out_cohort, root / "demo-shifted")
    shutil.copytree(tiny_cohort, root / "train-cohort")  # the model's own training cohort
    abl = root / "ablation-run"
    abl.mkdir()
    (abl / "ablation.csv").write_text(
        "variant,confounding,seed,test_set,n,bacc,bacc_low,bacc_high,site_probe,best_epoch,"
        "train_seconds\n"
        "concat,0.8,0,site_reversed,100,0.5,0.4,0.6,0.9,5,10\n")
    (abl / "ablation.md").write_text("# x\n\n## Verdict\n- **mediad** at confounding 0.8 "
                                     "(1 seed(s)): site reversed: not different from concat."
                                     "\n\n## Results\n")
    return root


@pytest.fixture
def app_env(app_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDIAD_DATA_DIR", str(app_data))
    monkeypatch.setenv("MEDIAD_MODELS_DIR", str(app_data))
    return app_data
