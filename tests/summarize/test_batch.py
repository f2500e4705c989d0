from __future__ import annotations

import json
from pathlib import Path

import pytest

from mediad.data.records import ClinicalRecord
from mediad.summarize import Summarizer, SummaryConfig, read_summaries, summarize_records

from .conftest import EchoGenerator


def cohort(n: int = 8) -> list[ClinicalRecord]:
    return [ClinicalRecord(subject_id=f"S{i}", age=60 + i, sex="male", mmse=20 + i)
            for i in range(n)]


class Crashing(Summarizer):
    def __init__(self, crash_after: int) -> None:
        super().__init__(SummaryConfig(backend="local"), generator=EchoGenerator())
        self.left = crash_after

    def summarize(self, record: ClinicalRecord):  # type: ignore[override]
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super().summarize(record)


def test_interrupted_then_resumed(tmp_path: Path) -> None:
    out = tmp_path / "summaries.jsonl"
    with pytest.raises(KeyboardInterrupt):
        summarize_records(cohort(), Crashing(crash_after=3), out)
    partial = tmp_path / "summaries.jsonl.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 3
    with open(partial, "a") as fh:  # a crash mid-write leaves a torn line
        fh.write('{"subject_id": "S3", "vis')
    result = summarize_records(cohort(), Crashing(crash_after=100), out)
    assert (result.done_before, result.written) == (3, 5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["subject_id"] for r in rows] == [f"S{i}" for i in range(8)]  # none lost or twice
    assert not partial.exists()
    assert result.sources == {"llm": 5} and result.section_acceptance == 1.0


def test_rows_carry_provenance_and_no_identifier_in_text(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    summarize_records(cohort(2), Summarizer(SummaryConfig(backend="template")), out)
    rows = read_summaries(out)
    row = rows[("S1", "bl")]
    assert row["provenance"]["backend"] == "template" and "S1" not in row["summary"]
    assert row["sections"]["Cognition"].startswith("MMSE 21/30")
