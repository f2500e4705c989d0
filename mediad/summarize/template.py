"""The fixed clinical-summary template: sections, field phrases, prompts and its version.

The template lives in ``llm_templates/`` as YAML. Its effective version is the declared
version plus a hash of the file, so any edit changes the version that caches and checkpoints
record. The deterministic renderer (Jinja2) is both the ``template`` backend and the fallback
of every LLM backend.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mediad.data.records import ClinicalRecord
from mediad.errors import MediADError

__all__ = [
    "DIAGNOSIS_TERMS",
    "IDENTIFIER_PATTERNS",
    "SummaryTemplate",
    "default_template_path",
    "format_value",
    "load_template",
    "render_text",
    "sanitize_free_text",
]

# Words that name a diagnosis; never allowed in a summary (notes are redacted).
DIAGNOSIS_TERMS = re.compile(
    r"\b(?:CN|MCI|AD|aMCI|naMCI|SMC|EMCI|LMCI|SCD)\b"
    r"|(?i:\balzheimer\w*|\bdementia\b|\bdemented\b|mild cognitive impairment"
    r"|cognitively (?:normal|unimpaired|intact|healthy)|healthy control|\bprodromal\b)"
)
# Direct identifiers: ADNI PTID / RID, NACC ids, e-mail addresses, phone-like numbers.
IDENTIFIER_PATTERNS = re.compile(
    r"\b\d{3}_S_\d{4}\b|\bNACC\d{6}\b|\bRID\s*[:#]?\s*\d+\b|[\w.+-]+@[\w-]+\.[\w.]+"
    r"|\+?\d[\d ()-]{8,}\d"
)


class FieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    text: str


class SectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    free_text: str | None = None
    empty: str = "none recorded"


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    section: str
    facts: str
    sentence: str


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str
    user: str
    completion: str
    examples: list[Example]


class SummaryTemplate(BaseModel):
    """A parsed template file; ``version`` is the effective (declared + hash) version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    declared_version: str = Field(alias="version")
    missing: str
    excluded: str
    sections: list[SectionSpec]
    prompts: PromptSpec
    digest: str = ""
    path: str = ""

    @property
    def version(self) -> str:
        return f"{self.declared_version}+{self.digest[:8]}"

    @property
    def titles(self) -> list[str]:
        return [s.title for s in self.sections]

    def section_of(self, field: str) -> SectionSpec | None:
        return next((s for s in self.sections if field in s.fields or s.free_text == field),
                    None)

    def summary_fields(self) -> list[str]:
        """Every record field the template can put in a summary."""
        out: list[str] = []
        for s in self.sections:
            out += list(s.fields)
            if s.free_text:
                out.append(s.free_text)
        return out

    # -- rendering -----------------------------------------------------------------------

    def facts(self, section: SectionSpec, record: ClinicalRecord, fields: Iterable[str]
              ) -> list[str]:
        """One phrase per included field of ``section`` (missing ones say so)."""
        included = set(fields)
        phrases = []
        for name, spec in section.fields.items():
            if name not in included:
                continue
            value = getattr(record, name)
            if value is None:
                phrases.append(f"{spec.label} {self.missing}")
            else:
                shown = value if isinstance(value, bool) else format_value(value)
                phrases.append(render_text(spec.text, value=shown))
        return phrases

    def render_section(self, section: SectionSpec, record: ClinicalRecord,
                       fields: Iterable[str]) -> str:
        """The deterministic sentence of one section."""
        fields = list(fields)
        if section.free_text:
            if section.free_text not in fields:
                return _sentence(self.excluded)
            text = sanitize_free_text(getattr(record, section.free_text), record.subject_id)
            return f'"{text}"' if text else _sentence(section.empty)
        phrases = self.facts(section, record, fields)
        return _sentence("; ".join(phrases) if phrases else self.excluded)

    def assemble(self, sentences: Sequence[str]) -> str:
        return "\n".join(f"{s.title}: {t}" for s, t in zip(self.sections, sentences,
                                                             strict=True))

    def render(self, record: ClinicalRecord, fields: Iterable[str]) -> str:
        """The whole summary, deterministically."""
        fields = list(fields)
        return self.assemble([self.render_section(s, record, fields) for s in self.sections])


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


@lru_cache(maxsize=256)
def _compiled(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


def render_text(text: str, **values: Any) -> str:
    return _compiled(text).render(**values)


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def format_value(value: Any) -> str:
    """Numbers as a clinician writes them: ``28`` not ``28.0``, ``10.67`` not ``10.670``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def sanitize_free_text(text: str | None, subject_id: str | None = None,
                       limit: int = 300) -> str:
    """Free text as data: one line, quotes neutralised, diagnosis terms and ids removed."""
    if not text:
        return ""
    clean = " ".join(str(text).split()).replace('"', "'")
    if subject_id:
        clean = clean.replace(subject_id, "[id removed]")
    clean = IDENTIFIER_PATTERNS.sub("[id removed]", clean)
    clean = DIAGNOSIS_TERMS.sub("[diagnosis term removed]", clean)
    return clean[:limit].rstrip() + ("..." if len(clean) > limit else "")


def default_template_path() -> Path:
    """``$MEDIAD_TEMPLATES/clinical_summary.yaml`` or the repository's ``llm_templates``."""
    root = os.environ.get("MEDIAD_TEMPLATES")
    folder = Path(root) if root else Path(__file__).resolve().parents[2] / "llm_templates"
    return folder / "clinical_summary.yaml"


def load_template(path: str | Path | None = None) -> SummaryTemplate:
    """Read and check a template file.

    Raises:
        MediADError: the file is missing or not a valid template.
    """
    p = Path(path) if path else default_template_path()
    try:
        raw = p.read_bytes()
        data = yaml.safe_load(raw)
        template = SummaryTemplate.model_validate(
            {**data, "digest": hashlib.sha256(raw).hexdigest(), "path": str(p)})
    except FileNotFoundError:
        raise MediADError(f"{p}: summary template not found (set MEDIAD_TEMPLATES to the "
                          "folder holding clinical_summary.yaml)") from None
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise MediADError(f"{p}: not a valid summary template ({exc})") from None
    for section in template.sections:
        for field in [*section.fields, *([section.free_text] if section.free_text else [])]:
            if field not in ClinicalRecord.model_fields or field in {"diagnosis", "subject_id",
                                                                     "site"}:
                raise MediADError(f"{p}: section {section.title!r} uses field {field!r}, "
                                  "which is not a summary field of a clinical record")
    return template
