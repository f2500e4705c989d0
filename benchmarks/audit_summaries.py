"""Field-by-field audit of the LLM's accepted summary sections (issue 12).

The local LLM summarises the demo records; every section the verifier accepted is parsed
back into fields by an independent reader (label-anchored patterns written from the
template's phrases, not the verifier's number binding) and compared with the record:
a value that differs is *wrong*, a value for a field the record lacks is *invented*, a
recorded field the text does not state is *missing*, a field stated twice is *repeated*.

The same generations are verified twice, with and without the verifier's binding of
numbers to fields, so acceptance per section is reported before and after that check.
Run: ``python benchmarks/audit_summaries.py [--records 200] [--out FILE.md]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_NUM = r"(\d+(?:\.\d+)?)"
_GAP = r"[^\d;.,]{0,24}?"  # words between a label and its value: no number, no new clause
_UNKNOWN = r"(?:not recorded|unknown|not available|missing)"
#: field -> the labels a sentence may use for it (the template's label first).
LABELS: dict[str, tuple[str, ...]] = {
    "mmse": ("mmse", "mini-mental state examination"),
    "cdr_sb": ("cdr-sb", "cdr sum of boxes", "cdr"),
    "adas13": ("adas-cog-13", "adas-cog 13", "adas13", "adas-cog"),
    "faq": ("faq", "functional activities questionnaire"),
    "csf_abeta": ("csf amyloid-beta", "amyloid-beta", "amyloid beta", "abeta"),
    "csf_tau": ("csf total tau", "total tau", "t-tau"),
    "csf_ptau": ("csf phospho-tau", "phospho-tau", "p-tau"),
    "bmi": ("bmi", "body mass index"),
    "education_years": ("education",),
}
_BEFORE = {  # fields whose value a writer puts before the words
    "age": re.compile(rf"(?i){_NUM}[- ]years?[- ]old|\baged? {_NUM}|\bage {_NUM}"),
    "education_years": re.compile(rf"(?i){_NUM} years? of (?:formal )?(?:education|school)"),
}


def read_fields(text: str) -> dict[str, list[float | None]]:
    """Every value the text states, per field (``None``: stated as not recorded)."""
    low = text.lower()
    found: dict[str, list[float | None]] = {}
    for name, rx in _BEFORE.items():
        for m in rx.finditer(low):
            found.setdefault(name, []).append(float(next(g for g in m.groups() if g)))
    taken: list[tuple[int, int]] = []
    for name, labels in LABELS.items():
        for label in labels:  # longest first within a field: "total tau" before "tau"
            for m in re.finditer(rf"(?<![\w-]){re.escape(label)}(?![\w])", low):
                if any(a <= m.start() < b for a, b in taken):
                    continue  # part of a longer label already read
                rest = low[m.end():]
                value = re.match(rf"{_GAP}{_NUM}", rest)
                unknown = re.match(rf"[^;.]{{0,60}}?{_UNKNOWN}", rest)
                if name == "adas13":  # the "13" of the name is not a value
                    value = re.match(rf"(?:[- ]?13)?{_GAP}{_NUM}", rest)
                if value and not (unknown and unknown.end() < value.end()):
                    found.setdefault(name, []).append(float(value.group(1)))
                elif unknown:
                    found.setdefault(name, []).append(None)
                taken.append((m.start(), m.end()))
    return found


def audit_section(fields: list[str], text: str, record: Any) -> Counter:
    """Counts of wrong / invented / missing / repeated values in one accepted section."""
    stated = read_fields(text)
    out: Counter = Counter()
    for name in fields:
        value = getattr(record, name)
        if (name not in LABELS and name not in _BEFORE) or isinstance(value, bool):
            continue  # words (sex, yes/no, allele counts): the verifier's own checks
        said = [v for v in stated.get(name, []) if v is not None]
        if len(stated.get(name, [])) > 1:
            out["repeated"] += 1
        if value is None:
            out["invented"] += bool(said)
        elif not said:
            out["missing"] += 1
        elif any(abs(v - value) > 0.051 and abs(v - round(value)) > 1e-9 for v in said):
            out["wrong"] += 1
    return out


class _Memo:
    """The generator's answers, kept (and in ``path``, so a rerun costs no generation): the
    second verification pass sees the same text."""

    def __init__(self, generator: Any, path: Path | None = None) -> None:
        self.generator, self.path = generator, path
        self.seen: dict[str, str] = (json.loads(path.read_text(encoding="utf-8"))
                                     if path is not None and path.is_file() else {})
        self.backend, self.model_id = generator.backend, generator.model_id
        self.licence = generator.licence

    def generate(self, request: Any, settings: Any, attempt: int = 0) -> str:
        key = hashlib.sha256(f"{attempt}\n{request.completion}".encode()).hexdigest()
        if key not in self.seen:
            self.seen[key] = self.generator.generate(request, settings, attempt)
            if self.path is not None and len(self.seen) % 50 == 0:
                self.save()
        return self.seen[key]

    def save(self) -> None:
        if self.path is not None:
            from mediad.io import atomic_write_text

            atomic_write_text(self.path, json.dumps(self.seen))


def main() -> None:
    from tqdm import tqdm

    import mediad.summarize.verify as verify
    from mediad.data.records import load_manifest
    from mediad.experiments.demo import ensure_demo_cohort
    from mediad.summarize import LlamaCppGenerator, Summarizer, SummaryConfig

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--generations", type=Path, help="JSON file keeping the LLM's "
                        "answers, so a rerun regenerates nothing")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (1 "
                        "when other jobs share the cores: its threads spin-wait)")
    args = parser.parse_args()
    records = [r for shifted in (False, True)
               for r in load_manifest(ensure_demo_cohort(shifted=shifted)[0]
                                      / "manifest.csv").records()][: args.records]
    memo = _Memo(LlamaCppGenerator("smollm2-135m-instruct", threads=args.threads),
                 args.generations)
    binding = verify._binding_problems
    failures: list[str] = []
    lines = [f"# Summary audit: {len(records)} demo records, SmolLM2-135M (local)", "",
             "| verifier | section | LLM sections accepted | wrong | invented | missing | "
             "repeated |", "|---|---|---|---|---|---|---|"]
    for name, check in (("with binding (now)", binding),
                        ("without binding (before)", lambda *a: [])):
        verify._binding_problems = check
        llm = Summarizer(SummaryConfig(backend="local"), generator=memo)  # type: ignore[arg-type]
        accepted: Counter = Counter()
        asked: Counter = Counter()
        errors: dict[str, Counter] = {}
        for record in tqdm(records, desc=name):
            summary = llm.summarize(record)
            for section in llm.template.sections:
                source = summary.provenance.section_sources.get(section.title)
                if source not in ("llm", "fallback"):
                    continue
                asked[section.title] += 1
                if source == "llm":
                    accepted[section.title] += 1
                    fields = [f for f in llm.fields if f in section.fields]
                    found = +audit_section(fields, summary.sections[section.title], record)
                    errors.setdefault(section.title, Counter()).update(found)
                    if found and check is binding:  # the text and its facts, no id
                        failures.append(f"- {section.title}: {dict(found)}: "
                                        f"{summary.sections[section.title]!r} <- "
                                        f"{'; '.join(llm.template.facts(section, record, fields))}")
        for title in asked:
            e = errors.get(title, Counter())
            lines.append(f"| {name} | {title} | {accepted[title]}/{asked[title]} "
                         f"({accepted[title] / asked[title]:.0%}) | {e['wrong']} | "
                         f"{e['invented']} | {e['missing']} | {e['repeated']} |")
    verify._binding_problems = binding
    memo.save()
    if failures:
        lines += ["", "Accepted sections the audit finds fault with (text <- facts):", *failures]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from mediad.io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
