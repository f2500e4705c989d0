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
from dataclasses import dataclass, field

from mediad.data.records import ClinicalRecord
from mediad.summarize.template import (
    DIAGNOSIS_TERMS,
    IDENTIFIER_PATTERNS,
    SectionSpec,
    SummaryTemplate,
    format_value,
    render_text,
)

__all__ = ["FIELD_KEYWORDS", "VERIFIER_VERSION", "FieldStatement", "bind_numbers",
           "numbers_in", "verify_section", "verify_summary"]

#: Part of every summary cache key: a stricter verifier must not serve texts that an older
#: one accepted.
VERIFIER_VERSION = "4"

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


#: Fields whose number comes *before* their words ("an 81-year-old", "12 years of education").
_TRAILING = (("age", re.compile(r"(?i)^\s*-?\s*years?[- ]old")),
             ("education_years", re.compile(r"(?i)^\s*years? of (?:formal )?"
                                            r"(?:education|school)")))


@dataclass
class FieldStatement:
    """One statement of a field: its span of words, its text up to the next field's, and
    the numbers bound to it."""

    name: str
    start: int
    end: int
    text: str = ""
    numbers: list[float] = field(default_factory=list)


def _mentions(text: str, fields: Iterable[str]) -> list[tuple[int, int, str]]:
    low = text.lower()
    found = []
    for name in fields:
        for k in FIELD_KEYWORDS.get(name, ()):
            found += [(m.start(), m.start() + len(k), name)
                      for m in re.finditer(re.escape(k), low)]
    return sorted(found)


def bind_numbers(text: str, fields: Iterable[str]
                 ) -> tuple[list[FieldStatement], list[float]]:
    """Tie every number of ``text`` to the field it states.

    A number belongs to the field named right after it when that field's value comes first
    ("an 81-year-old"), else to the nearest field named before it ("MMSE 26/30, FAQ 4/30":
    26 and 30 to MMSE, 4 and 30 to FAQ). Mentions of one field with no number between them
    are one statement ("Mini-Mental State Examination (MMSE) 26"); a field stated twice has
    two. Returns ``(statements in text order, numbers tied to no field)``.
    """
    groups: list[FieldStatement] = []
    for start, end, name in _mentions(text, fields):
        last = groups[-1] if groups else None
        if last is not None and (start < last.end  # overlapping keywords of one mention
                                 or (last.name == name
                                     and not _NUMBER.search(text[last.end:start]))):
            last.end = max(last.end, end)
            continue
        groups.append(FieldStatement(name, start, end))
    for i, g in enumerate(groups):
        g.text = text[g.start:groups[i + 1].start if i + 1 < len(groups) else len(text)]
    unbound: list[float] = []
    for m in _NUMBER.finditer(text):
        value = float(m.group(0))
        before = [g for g in groups if g.start <= m.start()]
        owner = next((g for name, rx in _TRAILING if rx.match(text[m.end():])
                      for g in groups if g.name == name and g.start >= m.end()), None)
        if owner is not None and before and before[-1].name != owner.name and re.fullmatch(
                r"\s*(?:of|is|was|:|=)?\s*", text[before[-1].end:m.start()]):
            owner = None  # "age 13 years of education": read either way, so neither
        elif owner is None and before:
            owner = before[-1]
        if owner is None:
            unbound.append(value)
        else:
            owner.numbers.append(value)
    return groups, unbound


def _fixed_numbers(section: SectionSpec, name: str) -> list[float]:
    """Numbers that are part of a field's name or scale ("ADAS-Cog-13", "/30"), not values."""
    spec = section.fields[name]
    return numbers_in(spec.label) + numbers_in(render_text(spec.text, value="V"))


def _binding_problems(section: SectionSpec, text: str, record: ClinicalRecord,
                      fields: list[str]) -> list[str]:
    """Each stated number must be its own field's recorded value, stated once; a field
    that is not recorded may carry no value."""
    title = section.title
    groups, unbound = bind_numbers(text, fields)
    problems = [f"{title}: number {format_value(v)} is tied to no field" for v in unbound]
    for name in fields:
        own = [g for g in groups if g.name == name]
        if len(own) > 1:
            problems.append(f"{title}: {name} is stated {len(own)} times")
        value = getattr(record, name)
        for g in own:
            stated = list(g.numbers)
            for fixed in _fixed_numbers(section, name):  # once: "FAQ 30/30" keeps a 30
                if fixed in stated:
                    stated.remove(fixed)
            if name in ("apoe4", "sex"):
                continue  # words ("one allele", "woman"), checked on their own
            if value is None or isinstance(value, bool):
                if stated:
                    problems.append(f"{title}: {name} is "
                                    f"{'not recorded' if value is None else 'yes/no'} in the "
                                    f"record, but the text gives "
                                    f"{', '.join(format_value(v) for v in stated)}")
                continue
            if len(stated) > 1 and len(own) == 1:  # "a 74-year-old, aged 74"
                problems.append(f"{title}: {name} is stated {len(stated)} times")
            wrong = [v for v in stated if not _matches(v, [float(value)])]
            if wrong:
                problems.append(f"{title}: {name} is {format_value(value)} in the record, the "
                                f"text gives {', '.join(format_value(v) for v in wrong)}")
            if _UNKNOWN.search(g.text):
                problems.append(f"{title}: {name} is recorded, but the text says not "
                                "recorded")
    return problems


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
    problems += _binding_problems(section, text, record, fields)
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
