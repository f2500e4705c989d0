from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mediad.data.records import ClinicalRecord
from mediad.data.splits import SplitConfig, Splits, check_leakage, make_splits
from mediad.errors import InputError, LeakageError


def cohort(n: int = 100, visits: int = 3) -> list[ClinicalRecord]:
    labels = ["CN"] * 5 + ["MCI"] * 3 + ["AD"] * 2
    return [ClinicalRecord(subject_id=f"S{i:03d}", visit=v, diagnosis=labels[i % 10])
            for i in range(n) for v in ["bl", "m06", "m12"][:visits]]


def test_visits_never_straddle_splits() -> None:
    rows = cohort()
    splits = make_splits(rows, SplitConfig(seed=1))
    owner = {r.subject_id: splits.split_of(r.subject_id) for r in rows}
    assert None not in owner.values()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 100
    assert not (set(splits.train) & set(splits.test)) and not (set(splits.val) & set(splits.test))


def test_stratified_by_diagnosis() -> None:
    rows = cohort()
    label = {r.subject_id: r.diagnosis for r in rows}
    splits = make_splits(rows, SplitConfig(val_fraction=0.2, test_fraction=0.2))
    for name in ("train", "val", "test"):
        counts = Counter(label[s] for s in getattr(splits, name))
        total = sum(counts.values())
        assert counts["CN"] / total == pytest.approx(0.5, abs=0.02)
        assert counts["AD"] / total == pytest.approx(0.2, abs=0.02)


def test_deterministic_for_a_seed() -> None:
    rows = cohort()
    assert make_splits(rows, SplitConfig(seed=3)) == make_splits(rows, SplitConfig(seed=3))
    assert make_splits(rows, SplitConfig(seed=3)).test != make_splits(rows,
                                                                      SplitConfig(seed=4)).test


def test_tiny_strata_keep_a_training_subject() -> None:
    rows = [ClinicalRecord(subject_id="A", diagnosis="AD"),
            ClinicalRecord(subject_id="B", diagnosis="CN"),
            ClinicalRecord(subject_id="C", diagnosis="CN")]
    splits = make_splits(rows, SplitConfig(val_fraction=0.4, test_fraction=0.4))
    assert "A" in splits.train and len(splits.train) >= 2


def test_save_load_round_trip_and_leakage_refusal(tmp_path: Path) -> None:
    splits = make_splits(cohort(), SplitConfig(seed=2))
    path = splits.save(tmp_path / "splits.json")
    assert Splits.load(path) == splits
    data = json.loads(path.read_text())
    data["test"].append(data["train"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(LeakageError, match=f"1 test subject.*seen in training: {data['train'][0]}"):
        Splits.load(path)


def test_check_leakage_names_subjects() -> None:
    check_leakage(["A", "B"], ["C"])
    with pytest.raises(LeakageError, match="2 test subject\\(s\\) were seen in training: B, C"):
        check_leakage(["A", "B", "C"], ["C", "B", "D"])


def test_bad_split_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="splits file not found"):
        Splits.load(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="not a MediAD splits file"):
        Splits.load(tmp_path / "x.json")


def test_fractions_must_leave_training_data() -> None:
    with pytest.raises(ValueError, match="must leave subjects for training"):
        SplitConfig(val_fraction=0.5, test_fraction=0.5)
