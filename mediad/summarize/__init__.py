"""Clinical summaries: fixed templates, LLM backends, verification, cache, batch runs."""

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
from mediad.summarize.batch import BatchResult, read_summaries, summarize_records
from mediad.summarize.summarizer import (
    Provenance,
    Summarizer,
    Summary,
    SummaryCache,
    SummaryConfig,
    make_generator,
)
from mediad.summarize.template import SummaryTemplate, load_template
from mediad.summarize.verify import verify_section, verify_summary

__all__ = [
    "LOCAL_MODELS",
    "BatchResult",
    "DecodingSettings",
    "GenerationError",
    "Generator",
    "LlamaCppGenerator",
    "OpenAIGenerator",
    "PromptRequest",
    "Provenance",
    "Summarizer",
    "Summary",
    "SummaryCache",
    "SummaryConfig",
    "SummaryTemplate",
    "TransformersGenerator",
    "load_template",
    "make_generator",
    "read_summaries",
    "summarize_records",
    "verify_section",
    "verify_summary",
]
