"""Check an LLM's summary against the record it came from.

Small models hallucinate (wrong risk factors, flipped sex, invented numbers), so every LLM
sentence is checked before it is used: every number must come from the facts of its
section, every recorded fact must be there, sex / yes-no risk factors / APOE4 count must
agree with the record, and no diagnosis label, identifier or field outside the section may
appear. Each failure is a short reason; an empty list means accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mediad.data.records import ClinicalRecord
from mediad.summarize.template import (
    DIAGNOSIS_TERMS,
    IDENTIFIER_PATTERNS,
    SectionSpec,
    SummaryTemplate,
    format_value,
)

__all__ = ["FIELD_KEYWORDS", "numbers_in", "verify_section", "verify_summary"]

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_FEMALE = re.compile(r"(?i)\b(?:she|her|hers|woman|women|female|lady|mrs|ms)\b")
_MALE = re.compile(r"(?i)\b(?:he|him|his|man|men|male|gentleman|mr)\b")
_NEGATION = re.compile(r"(?i)\b(?:no|not|denies|denied|without|never|absent|negative|none)\b"
                       r"|non-?smok|free of")
_UNKNOWN = re.compile(r"(?i)not (?:recorded|known|available|documented|reported)|unknown"
                      r"|unrecorded|missing")

#: Words that show a sentence talks about a field.
FIELD_KEYWORDS: dict[str, tuple[str, ...]] = {
    "age": ("year-old", "years old", "aged", "age "),
    "education_years": ("education", "school"),
    "mmse": ("mmse", "mini-mental"),
    "cdr_sb": ("cdr",),
    "adas13": ("adas",),
    "faq": ("faq", "functional activities"),
    "apoe4": ("apoe", "e4 allele", "ε4"),
    "csf_abeta": ("amyloid", "abeta", "aβ"),
    "csf_tau": ("total tau", "t-tau"),
    "csf_ptau": ("phospho", "p-tau", "ptau"),
    "hypertension": ("hypertension", "blood pressure", "hypertensive"),
    "diabetes": ("diabet",),
    "smoking": ("smok", "tobacco", "cigarette"),
    "bmi": ("bmi", "body mass", "body-mass"),
}
_APOE_COUNT = {
    0: re.compile(r"(?i)\b(?:no|zero|0|none|non-?carrier|not (?:a )?carr\w*|neither)\b"),
    1: re.compile(r"(?i)\b(?:one|1|single|a single|heterozygous|heterozygote)\b"),
    2: re.compile(r"(?i)\b(?:two|2|both|homozygous|homozygote)\b"),
}


def numbers_in(text: str) -> list[float]:
    return [float(m) for m in _NUMBER.findall(text)]


def _matches(value: float, allowed: Iterable[float]) -> bool:
    """Equal, or equal after the rounding a writer might do (74.3 -> 74, 10.67 -> 10.7)."""
    return any(abs(value - a) < 1e-9 or abs(value - round(a)) < 1e-9
               or abs(value - round(a, 1)) < 1e-9 for a in allowed)


def _clause(text: str, keywords: Iterable[str]) -> str | None:
    """The clause (between ; , . or 'and') that mentions one of ``keywords``."""
    for clause in re.split(r"[;,.]|\band\b|\bbut\b", text):
        low = clause.lower()
        if any(k in low for k in keywords):
            return clause
    return None


def _span(text: str, keywords: Iterable[str]) -> str | None:
    """From the first mention of ``keywords`` to the end of its sentence part (; or .)."""
    low = text.lower()
    starts = [low.find(k) for k in keywords if k in low]
    if not starts:
        return None
    start = min(starts)
    end = re.search(r"[;.](?:\s|$)", text[start:])
    return text[start:start + end.start()] if end else text[start:]


def _sex_problems(text: str, sex: str | None) -> list[str]:
    female, male = bool(_FEMALE.search(text)), bool(_MALE.search(text))
    if sex == "female" and male:
        return ["sex: the record says female, the text says male"]
    if sex == "male" and female:
        return ["sex: the record says male, the text says female"]
    if sex is None and (male or female):
        return ["sex: not recorded, but the text states one"]
    return []


def verify_section(template: SummaryTemplate, section: SectionSpec, sentence: str,
                   record: ClinicalRecord, fields: Iterable[str]) -> list[str]:
    """Reasons to reject ``sentence`` as the text of ``section`` (empty: accept)."""
    fields = [f for f in fields if f in section.fields]
    text = sentence.strip()
    problems: list[str] = []
    if not text:
        return [f"{section.title}: empty"]
    if "\n" in text or len(text) > 400:
        problems.append(f"{section.title}: not a single short sentence")
    if any(re.match(rf"\s*{re.escape(t)}\s*:", text, re.I) for t in template.titles):
        problems.append(f"{section.title}: contains a section header")
    if DIAGNOSIS_TERMS.search(text):
        problems.append(f"{section.title}: names a diagnosis "
                        f"({DIAGNOSIS_TERMS.search(text).group(0)!r})")
    if IDENTIFIER_PATTERNS.search(text) or record.subject_id in text:
        problems.append(f"{section.title}: contains an identifier")
    facts = "; ".join(template.facts(section, record, fields))
    allowed = numbers_in(facts)
    for value in numbers_in(text):
        if not _matches(value, allowed):
            problems.append(f"{section.title}: number {format_value(value)} is not in the "
                            "record")
    low = text.lower()
    for name, keywords in FIELD_KEYWORDS.items():
        mentioned = any(k in low for k in keywords)
        if mentioned and name not in fields:
            where = "not included" if template.section_of(name) is section else (
                "belongs to another section")
            problems.append(f"{section.title}: mentions {name} ({where})")
    for name in fields:
        value = getattr(record, name)
        problems += _fact_problems(section.title, name, value, text)
    if "sex" in section.fields:
        problems += [f"{section.title}: {p}" for p in _sex_problems(
            text, record.sex if "sex" in fields else None)]
    return problems


def _fact_problems(title: str, name: str, value: object, text: str) -> list[str]:
    keywords = FIELD_KEYWORDS.get(name, ())
    if value is None:
        span = _span(text, keywords) if keywords else None
        if span is not None and not _UNKNOWN.search(span):
            return [f"{title}: {name} is not recorded, but the text gives it"]
        return []
    clause = _clause(text, keywords) if keywords else None
    if isinstance(value, bool):
        if clause is None:
            return [f"{title}: {name} ({'yes' if value else 'no'}) is missing"]
        if _UNKNOWN.search(clause):
            return [f"{title}: {name} is recorded, but the text says not recorded"]
        said = not bool(_NEGATION.search(clause))
        return [] if said == value else [
            f"{title}: {name} is {'yes' if value else 'no'} in the record, "
            f"{'yes' if said else 'no'} in the text"]
    if name == "apoe4":
        if clause is None:
            return [f"{title}: APOE4 count missing"]
        said = [k for k, rx in _APOE_COUNT.items() if rx.search(clause)]
        return [] if said == [value] else [f"{title}: APOE4 is {value} in the record, the "
                                           f"text says {said or 'nothing clear'}"]
    if name == "sex":
        return []
    if isinstance(value, int | float) and not _matches(float(value), numbers_in(text)) and (
            not any(_matches(n, [float(value)]) for n in numbers_in(text))):
        return [f"{title}: {name} ({format_value(value)}) is missing"]
    return []


def verify_summary(template: SummaryTemplate, text: str, record: ClinicalRecord,
                   fields: Iterable[str]) -> list[str]:
    """Reasons to reject a whole summary: structure first, then every section."""
    fields = list(fields)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    titles = template.titles
    found: list[tuple[str, str]] = []
    problems: list[str] = []
    for line in lines:
        title, sep, body = line.partition(":")
        if not sep or title.strip() not in titles:
            problems.append(f"text outside the template: {line[:60]!r}")
            continue
        found.append((title.strip(), body.strip()))
    seen = [t for t, _ in found]
    for t in titles:
        if t not in seen:
            problems.append(f"missing section {t!r}")
    if [t for t in seen if t in titles] != [t for t in titles if t in seen]:
        problems.append("sections out of order")
    if len(seen) != len(set(seen)):
        problems.append("a section appears twice")
    record_sex = record.sex if "sex" in fields else None
    for title, body in found:
        section = template.sections[titles.index(title)]
        if section.free_text:
            expected = template.render_section(section, record, fields)
            if body != expected:
                problems.append(f"{title}: free text changed")
            continue
        problems += verify_section(template, section, body, record, fields)
        if "sex" not in section.fields:
            problems += [f"{title}: {p}" for p in _sex_problems(body, record_sex)
                         if "not recorded" not in p]
    return problems
