"""Each backend for real: llama.cpp on the shipped SmolLM2, a local HTTP server, a tiny HF
model built in a temp dir."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from mediad.data.records import ClinicalRecord
from mediad.errors import MediADError
from mediad.summarize import (
    LlamaCppGenerator,
    OpenAIGenerator,
    Summarizer,
    SummaryConfig,
    TransformersGenerator,
    verify_summary,
)
from mediad.summarize.backends import local_model_path, quiet_loading


@pytest.fixture(scope="module")
def smollm() -> LlamaCppGenerator:
    return LlamaCppGenerator("smollm2-135m-instruct", threads=2)


def test_local_default_model_runs_offline(smollm: LlamaCppGenerator,
                                          record: ClinicalRecord) -> None:
    assert local_model_path("smollm2-135m-instruct").is_file()
    s = Summarizer(SummaryConfig(backend="local", max_attempts=1), generator=smollm)
    summary = s.summarize(record)
    prov = summary.provenance
    assert prov.backend == "local" and prov.model_id == "smollm2-135m-instruct"
    assert prov.model_licence == "Apache-2.0" and prov.attempts == 4
    assert prov.source in {"llm", "fallback"}
    # whatever the model wrote, what we kept is faithful to the record
    assert verify_summary(s.template, summary.text, record, prov.fields_included) == []


def test_unknown_or_missing_local_model() -> None:
    with pytest.raises(MediADError, match="unknown local model"):
        local_model_path("nope")


class _Handler(BaseHTTPRequestHandler):
    mode = "good"
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                **body})
        if self.mode == "error":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model crashed")
            return
        facts = re.search(r"Facts: (.*)\nSentence:", body["messages"][-1]["content"]).group(1)
        answer = facts + "." if self.mode == "good" else "The patient has AD."
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"seen": [], "mode": "good"})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler
    httpd.shutdown()
    httpd.server_close()


def test_openai_backend_against_a_local_server(server: tuple[str, type[_Handler]],
                                               record: ClinicalRecord,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, handler = server
    monkeypatch.setenv("MY_KEY", "secret")
    config = SummaryConfig(backend="openai", base_url=url, model="my-llm", api_key_env="MY_KEY")
    summary = Summarizer(config).summarize(record)
    assert summary.provenance.source == "llm" and summary.provenance.model_id == "my-llm"
    assert handler.seen[0]["path"] == "/v1/chat/completions"
    assert handler.seen[0]["auth"] == "Bearer secret" and handler.seen[0]["model"] == "my-llm"
    assert not any("011_S_0002" in json.dumps(s) for s in handler.seen)  # no identifier sent
    handler.mode = "liar"
    lied = Summarizer(config).summarize(record)
    assert lied.provenance.source == "fallback" and "AD" not in lied.text.replace("ADAS", "")
    handler.mode = "error"
    down = Summarizer(config).summarize(record)
    assert down.provenance.source == "fallback"
    assert "HTTP 500: model crashed" in down.provenance.fallback_reasons[0]


def test_openai_backend_unreachable(record: ClinicalRecord) -> None:
    gen = OpenAIGenerator("http://127.0.0.1:9/v1", "m", timeout=2)
    summary = Summarizer(SummaryConfig(backend="openai", base_url="http://127.0.0.1:9/v1",
                                       model="m"), generator=gen).summarize(record)
    assert "cannot reach" in summary.provenance.fallback_reasons[0]


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer GPT-2 with a word-level tokenizer, saved like any local HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "age", "years", "female", "male", "MMSE", "no", "yes", ";",
             ".", "Facts", ":", "Sentence", "\n"] + [str(i) for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>",
                                   pad_token="<eos>")
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=1024, n_embd=16,
                                       n_layer=1, n_head=2))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_transformers_backend_reads_a_local_folder(tiny_hf_model: Path,
                                                   record: ClinicalRecord) -> None:
    config = SummaryConfig(backend="transformers", model=str(tiny_hf_model), max_attempts=1,
                           decoding={"max_tokens": 8})
    summary = Summarizer(config).summarize(record)
    prov = summary.provenance
    assert prov.backend == "transformers" and prov.model_id == "tiny-gpt2"
    # random weights write nonsense: every section is checked and falls back
    assert prov.source == "fallback" and len(prov.fallback_reasons) == 4
    with pytest.raises(MediADError, match="not a Hugging Face model folder"):
        TransformersGenerator(tiny_hf_model.parent)


def test_loading_a_model_draws_no_weights_bar(tiny_hf_model: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """transformers draws a "Loading weights" bar per model; ours load without it and
    leave the user's setting as it was."""
    from transformers.utils import logging

    from mediad.networks.encoders import TextEmbedder

    capsys.readouterr()
    TransformersGenerator(tiny_hf_model)._load()
    TextEmbedder()._load()
    assert "Loading weights" not in capsys.readouterr().err
    assert logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        with quiet_loading():
            pass
        assert not logging.is_progress_bar_enabled()  # a user's "off" stays off
    finally:
        logging.enable_progress_bar()
