"""Summarise a whole cohort: resumable, nothing done twice, nothing lost.

Rows are appended to ``OUT.partial`` (one JSON line each, flushed and fsynced) and the file
is renamed to ``OUT`` when the cohort is complete. A rerun after an interruption reads the
partial file, drops a torn last line, skips the subjects already there and carries on.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mediad.data.records import ClinicalRecord
from mediad.errors import InputError
from mediad.io import complete_lines
from mediad.summarize.summarizer import Summarizer

__all__ = ["BatchResult", "read_summaries", "summarize_records"]


@dataclass
class BatchResult:
    """Counts of one batch run (this run only, not rows resumed from before)."""

    path: Path
    total: int
    done_before: int = 0
    written: int = 0
    cached: int = 0
    sources: Counter = field(default_factory=Counter)
    llm_sections: int = 0
    llm_sections_accepted: int = 0

    @property
    def section_acceptance(self) -> float | None:
        return (self.llm_sections_accepted / self.llm_sections) if self.llm_sections else None


def _partial_rows(partial: Path) -> set[tuple[str, str]]:
    """Keys already written (a torn last line from a crash is cut off)."""
    done = set()
    for line in complete_lines(partial).splitlines():
        row = json.loads(line)
        done.add((row["subject_id"], row["visit"]))
    return done


def summarize_records(records: Sequence[ClinicalRecord], summarizer: Summarizer,
                      out: str | Path,
                      progress: Callable[[int, int], None] | None = None) -> BatchResult:
    """Summarise ``records`` into the JSON-lines file ``out`` (resuming a partial run).

    Returns:
        Counts for this run, including how many LLM sections were accepted.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    done = _partial_rows(partial)
    result = BatchResult(out, len(records), done_before=len(done))
    with open(partial, "a", encoding="utf-8") as fh:
        for i, record in enumerate(records):
            key = (record.subject_id, record.visit)
            if key not in done:
                summary = summarizer.summarize(record)
                prov = summary.provenance
                row = {"subject_id": record.subject_id, "visit": record.visit,
                       "summary": summary.text, "sections": summary.sections,
                       "provenance": prov.model_dump(mode="json")}
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                done.add(key)
                result.written += 1
                result.cached += prov.cached
                result.sources[prov.source] += 1
                llm = [s for s in prov.section_sources.values() if s in ("llm", "fallback")]
                result.llm_sections += len(llm)
                result.llm_sections_accepted += llm.count("llm")
            if progress:
                progress(i + 1, len(records))
    os.replace(partial, out)
    return result


def read_summaries(path: str | Path) -> dict[tuple[str, str], dict]:
    """Load a summaries file written by :func:`summarize_records`, keyed by (subject, visit).

    Raises:
        InputError: the file is missing or a line is not a summary row.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: summaries file not found")
    rows = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            rows[(row["subject_id"], row["visit"])] = row
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{p}:{n}: not a summary row") from None
    return rows
