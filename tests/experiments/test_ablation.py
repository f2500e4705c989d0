"""The ablation grid end to end on a toy budget: outputs, verdict, resumption."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mediad.errors import InputError
from mediad.experiments.ablation import QUICK, AblationConfig, run_ablation

TOY = AblationConfig(variants=["concat", "mediad"], confounding=[0.8], seeds=[0], n_train=36,
                     n_shifted=12, spacing=8.0, shape=(32, 32, 32), epochs=1, patience=1,
                     n_bootstrap=20)


@pytest.mark.slow
def test_grid_outputs_and_resume(tmp_path: Path) -> None:
    logs: list[str] = []
    run_ablation(TOY, tmp_path, log=logs.append)
    rows = list(csv.DictReader(open(tmp_path / "ablation.csv")))
    assert [(r["variant"], r["confounding"]) for r in rows] == [("concat", "0.8"),
                                                                ("mediad", "0.8")]
    for r in rows:
        assert float(r["bacc_test_low"]) <= float(r["bacc_test"]) <= float(r["bacc_test_high"])
        assert int(r["n_shifted"]) == 12
    md = (tmp_path / "ablation.md").read_text()
    assert "## Verdict" in md and "Confounding 0.8:" in md and "Research use only" in md
    assert "mmse, cdr_sb, adas13, faq" in md
    assert (tmp_path / "ablation.png").stat().st_size > 5000
    # a crash after the first cell: the second is redone, the first is not, no duplicates
    with open(tmp_path / "ablation.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerow(rows[0])
    logs.clear()
    run_ablation(TOY, tmp_path, log=logs.append)
    assert [line for line in logs if line.startswith("[")] == ["[2/2] mediad, confounding "
                                                               "0.8, seed 0"]
    again = list(csv.DictReader(open(tmp_path / "ablation.csv")))
    assert len(again) == 2 and again[1]["bacc_shifted"] == rows[1]["bacc_shifted"]


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        AblationConfig(variants=["resnet_magic"])
    bad = tmp_path / "a.yaml"
    bad.write_text("variants: [concat]\nepochz: 3\n")
    with pytest.raises(InputError, match="epochz"):
        AblationConfig.from_yaml(bad)
    assert set(QUICK.variants) >= {"concat", "mediad"} and 0.8 in QUICK.confounding
