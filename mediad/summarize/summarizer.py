"""Record -> templated clinical summary, with an LLM when configured, always verified.

Each LLM section is generated from that section's facts, checked against the record
(:mod:`mediad.summarize.verify`), retried within ``max_attempts``, and otherwise replaced by
the deterministic rendering — and the summary's provenance says so and why. Free-text notes
never enter a prompt: they are quoted (redacted) as data, so prompt injection has nothing
to act on. Summaries are cached by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mediad.data.records import LABEL_DEFINING_FIELDS, ClinicalRecord
from mediad.errors import MediADError
from mediad.summarize.backends import (
    LOCAL_MODELS,
    DecodingSettings,
    GenerationError,
    Generator,
    LlamaCppGenerator,
    OpenAIGenerator,
    PromptRequest,
    TransformersGenerator,
)
from mediad.summarize.template import (
    SectionSpec,
    SummaryTemplate,
    load_template,
    render_text,
    sanitize_free_text,
)
from mediad.summarize.verify import VERIFIER_VERSION, verify_section, verify_summary

__all__ = [
    "Provenance",
    "Summarizer",
    "Summary",
    "SummaryCache",
    "SummaryConfig",
    "make_generator",
]

Backend = Literal["template", "local", "transformers", "openai"]


class SummaryConfig(BaseModel):
    """Which backend writes summaries, from which fields, with which settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = "local"
    model: str | None = Field(None, description="Local model id (default smollm2-135m-"
                              "instruct), Hugging Face folder, or remote model name.")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. "
                                 "http://127.0.0.1:8000/v1")
    api_key_env: str = "OPENAI_API_KEY"
    include: list[str] | None = Field(None, description="Fields in the summary (default: "
                                      "every template field).")
    exclude: list[str] = Field(default_factory=list, description="Fields left out, e.g. the "
                               "label-defining mmse and cdr_sb.")
    decoding: DecodingSettings = Field(default_factory=DecodingSettings)
    max_attempts: int = Field(3, ge=1, le=10, description="LLM tries per section.")
    template: Path | None = None
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _backend_needs(self) -> SummaryConfig:
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("the openai backend needs base_url and model")
        if self.backend == "transformers" and not self.model:
            raise ValueError("the transformers backend needs model (a local folder)")
        if self.backend == "local" and self.model and self.model not in LOCAL_MODELS:
            raise ValueError(f"unknown local model {self.model!r}; choose one of "
                             f"{', '.join(LOCAL_MODELS)}")
        return self


class Provenance(BaseModel):
    """Where a summary came from; enough to reproduce or distrust it."""

    backend: str
    model_id: str
    model_licence: str
    template_version: str
    source: Literal["template", "llm", "fallback"]
    section_sources: dict[str, Literal["template", "llm", "fallback", "data"]]
    fallback_reasons: list[str] = Field(default_factory=list)
    attempts: int = 0
    fields_included: list[str]
    fields_left_out: list[str]
    label_defining_fields_used: list[str]
    decoding: dict[str, float | int] = Field(default_factory=dict)
    cached: bool = False


class Summary(BaseModel):
    """A summary's text (fixed sections in order) and its provenance. No identifiers."""

    text: str
    sections: dict[str, str]
    provenance: Provenance


def make_generator(config: SummaryConfig) -> Generator | None:
    """The generator a config asks for (``None`` for the template backend)."""
    if config.backend == "template":
        return None
    if config.backend == "local":
        return LlamaCppGenerator(config.model or "smollm2-135m-instruct")
    if config.backend == "transformers":
        return TransformersGenerator(config.model or "")
    return OpenAIGenerator(config.base_url or "", config.model or "", config.api_key_env)


class SummaryCache:
    """Content-addressed summaries on disk; safe with concurrent writers (atomic renames)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Summary | None:
        try:
            return Summary.model_validate_json(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent or unreadable: recompute

    def put(self, key: str, summary: Summary) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(summary.model_dump_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_PREFIX = re.compile(r"^\s*(?:sentence|summary|answer|output)\s*:\s*", re.I)


def _clean(text: str) -> str:
    """First line of the model's answer, without a echoed label or wrapping quotes."""
    line = next((t for t in text.strip().splitlines() if t.strip()), "")
    return _PREFIX.sub("", line).strip().strip('"').strip()


class Summarizer:
    """Write verified summaries of clinical records.

    Args:
        config: backend, fields and decoding settings.
        generator: a ready generator (tests, or to share one model); built from ``config``
            when omitted.
        template: a loaded template (default: ``config.template`` or the bundled one).
        cache: a summary cache (default: ``config.cache_dir`` when set, else none).
    """

    def __init__(self, config: SummaryConfig | None = None, generator: Generator | None = None,
                 template: SummaryTemplate | None = None, cache: SummaryCache | None = None
                 ) -> None:
        self.config = config or SummaryConfig()
        self.template = template or load_template(self.config.template)
        self.generator = generator if generator is not None else make_generator(self.config)
        self.cache = cache or (SummaryCache(self.config.cache_dir) if self.config.cache_dir
                               else None)
        available = self.template.summary_fields()
        include = self.config.include if self.config.include is not None else available
        unknown = sorted(f for f in set(include) | set(self.config.exclude) if f not in available)
        if unknown:
            raise MediADError(f"unknown summary field(s): {', '.join(unknown)}; the template "
                              f"has: {', '.join(available)}")
        self.fields = [f for f in available if f in include and f not in self.config.exclude]
        self.left_out = [f for f in available if f not in self.fields]

    @property
    def backend(self) -> str:
        return self.generator.backend if self.generator else "template"

    @property
    def model_id(self) -> str:
        return self.generator.model_id if self.generator else "none"

    def cache_key(self, record: ClinicalRecord) -> str:
        """Hash of what determines the text: content (not the subject id), template, model."""
        content = {f: getattr(record, f) for f in self.fields}
        if "notes" in content:
            content["notes"] = sanitize_free_text(record.notes, record.subject_id)
        key = {
            "record": content, "template": self.template.version, "backend": self.backend,
            "model": self.model_id, "decoding": self.config.decoding.model_dump(),
            "max_attempts": self.config.max_attempts if self.generator else 0,
            "verifier": VERIFIER_VERSION if self.generator else None,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def summarize(self, record: ClinicalRecord) -> Summary:
        """Summarise one record (from the cache when possible)."""
        key = self.cache_key(record) if self.cache else ""
        if self.cache:
            hit = self.cache.get(key)
            if hit is not None:
                return hit.model_copy(update={"provenance": hit.provenance.model_copy(
                    update={"cached": True})})
        summary = self._summarize(record)
        if self.cache:
            self.cache.put(key, summary)
        return summary

    def _provenance(self, source: str, sections: dict[str, str], reasons: list[str],
                    attempts: int) -> Provenance:
        licence = getattr(self.generator, "licence", "n/a") if self.generator else "n/a"
        return Provenance(
            backend=self.backend, model_id=self.model_id, model_licence=licence,
            template_version=self.template.version, source=source,  # type: ignore[arg-type]
            section_sources=sections,  # type: ignore[arg-type]
            fallback_reasons=reasons, attempts=attempts, fields_included=self.fields,
            fields_left_out=self.left_out,
            label_defining_fields_used=[f for f in LABEL_DEFINING_FIELDS if f in self.fields],
            decoding=self.config.decoding.model_dump() if self.generator else {},
        )

    def _deterministic(self, record: ClinicalRecord, source: str = "template",
                       reasons: list[str] | None = None, attempts: int = 0) -> Summary:
        sentences = [self.template.render_section(s, record, self.fields)
                     for s in self.template.sections]
        sources = {s.title: ("data" if s.free_text else source) for s in self.template.sections}
        return Summary(text=self.template.assemble(sentences),
                       sections=dict(zip(self.template.titles, sentences, strict=True)),
                       provenance=self._provenance(source, sources, reasons or [], attempts))

    def _request(self, section: SectionSpec, facts: str) -> PromptRequest:
        p = self.template.prompts

        messages = [{"role": "system", "content": p.system}]
        shots = []
        for ex in (e for e in p.examples if e.section == section.title):
            messages += [{"role": "user", "content": render_text(p.user, section=ex.section,
                                                             facts=ex.facts)},
                         {"role": "assistant", "content": ex.sentence}]
            shots.append(render_text(p.completion, facts=ex.facts) + " " + ex.sentence)
        messages.append({"role": "user", "content": render_text(p.user, section=section.title,
                                                            facts=facts)})
        completion = "\n\n".join([*shots, render_text(p.completion, facts=facts)])
        return PromptRequest(messages=messages, completion=completion)

    def _summarize(self, record: ClinicalRecord) -> Summary:
        if self.generator is None:
            return self._deterministic(record)
        sentences, sources, reasons, attempts = [], {}, [], 0
        broken: str | None = None
        for section in self.template.sections:
            fallback = self.template.render_section(section, record, self.fields)
            facts = self.template.facts(section, record, self.fields)
            if section.free_text or not facts:  # data, or nothing to say: no LLM
                sentences.append(fallback)
                sources[section.title] = "data" if section.free_text else "template"
                continue
            accepted = None
            for attempt in range(self.config.max_attempts if broken is None else 0):
                attempts += 1
                try:
                    raw = self.generator.generate(self._request(section, "; ".join(facts)),
                                                  self.config.decoding, attempt)
                except GenerationError as exc:
                    broken = str(exc)
                    reasons.append(f"{section.title}: backend error: {exc}")
                    break
                sentence = _clean(raw)
                problems = verify_section(self.template, section, sentence, record,
                                          self.fields)
                if not problems:
                    accepted = sentence
                    break
                reasons.append(f"{section.title} (attempt {attempt + 1}): {'; '.join(problems)}")
            if accepted is None:
                sentences.append(fallback)
                sources[section.title] = "fallback"
                if broken and not reasons[-1].startswith(section.title):
                    reasons.append(f"{section.title}: skipped, backend unavailable")
            else:
                sentences.append(accepted)
                sources[section.title] = "llm"
        text = self.template.assemble(sentences)
        final = verify_summary(self.template, text, record, self.fields)
        if final:  # belt and braces: the assembled text must pass the whole-summary check
            return self._deterministic(record, "fallback", reasons + final, attempts)
        source = "fallback" if "fallback" in sources.values() else "llm"
        return Summary(text=text, sections=dict(zip(self.template.titles, sentences,
                                                    strict=True)),
                       provenance=self._provenance(source, sources, reasons, attempts))
