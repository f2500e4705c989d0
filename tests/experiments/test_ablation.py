"""The ablation grid end to end on a toy budget: outputs, verdict, resumption."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
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


def _scores(y: np.ndarray, correct: float, seed: int) -> dict[str, np.ndarray]:
    """Predictions right for a share ``correct`` of the subjects, wrong (next class) else."""
    rng = np.random.default_rng(seed)
    right = rng.random(len(y)) < correct
    return {"y": y, "pred": np.where(right, y, (y + 1) % 3)}


@pytest.mark.parametrize(("ref_shift", "cand_shift", "expected"), [
    (0.4, 0.85, "mediad loses less accuracy under shift than concat"),
    (0.85, 0.4, "mediad loses MORE accuracy under shift than concat"),
    (0.7, 0.7, "no clear difference between mediad and concat under shift"),
])
def test_verdict_reads_the_paired_bootstrap(ref_shift: float, cand_shift: float,
                                            expected: str) -> None:
    from mediad.experiments.ablation import drop_difference, verdict

    y = np.arange(150) % 3
    test = _scores(y, 0.9, 0)
    ref = (test, _scores(y, ref_shift, 1))
    cand = (test, _scores(y, cand_shift, 1 if ref_shift == cand_shift else 2))
    diff = drop_difference(ref, cand, n_boot=300, seed=0)
    assert diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    assert verdict(diff["ci_low"], diff["ci_high"], "concat", "mediad") == expected


def test_paired_bootstrap_is_narrower_than_unpaired() -> None:
    """Pairing is the point: two models scored on the same hard subjects differ by little,
    even when each one's own interval is wide."""
    from mediad.metrics import balanced_accuracy, bootstrap_statistic, paired_bootstrap

    y = np.arange(90) % 3
    a = _scores(y, 0.6, 0)
    b = {"y": y, "pred": a["pred"].copy()}
    b["pred"][:3] = y[:3]  # b fixes three of a's answers
    stat_a = lambda i: balanced_accuracy(a["y"][i], a["pred"][i])  # noqa: E731
    stat_b = lambda i: balanced_accuracy(b["y"][i], b["pred"][i])  # noqa: E731
    paired = paired_bootstrap(stat_b, stat_a, len(y), n_boot=300, seed=0)
    single = bootstrap_statistic(stat_a, len(y), n_boot=300, seed=0)
    assert paired["ci_high"] - paired["ci_low"] < 0.5 * (single["ci_high"] - single["ci_low"])
    assert paired["ci_low"] >= 0  # b is never worse on the same subjects


def test_subject_resamples_keep_visits_together() -> None:
    from mediad.metrics import subject_resamples

    groups = ["a", "a", "a", "b", "c", "c"]
    for idx in subject_resamples(groups, 50, seed=0):
        drawn = [groups[i] for i in idx]
        for g in set(drawn):
            assert drawn.count(g) % groups.count(g) == 0  # whole subjects only
