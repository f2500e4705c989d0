from __future__ import annotations

import re

import pytest

from mediad.data.records import ClinicalRecord
from mediad.summarize import DecodingSettings, Generator, PromptRequest, SummaryTemplate
from mediad.summarize.template import load_template


@pytest.fixture(scope="session")
def template() -> SummaryTemplate:
    return load_template()


@pytest.fixture
def record() -> ClinicalRecord:
    return ClinicalRecord(
        subject_id="011_S_0002", age=74.3, sex="female", education_years=16, apoe4=1,
        mmse=28, cdr_sb=0.5, adas13=10.67, faq=None, hypertension=True, diabetes=False,
        smoking=None, bmi=27.1, notes="Lives alone.", diagnosis="MCI", site="SITE-A")


class EchoGenerator(Generator):
    """A perfect LLM: writes back the facts it was given (what a good model would say)."""

    backend = "fake"
    model_id = "echo"
    licence = "test"

    def __init__(self) -> None:
        self.requests: list[PromptRequest] = []

    def facts(self, request: PromptRequest) -> str:
        return re.search(r"Facts: (.*)\nSentence:", request.messages[-1]["content"]).group(1)

    def generate(self, request: PromptRequest, settings: DecodingSettings,
                 attempt: int = 0) -> str:
        self.requests.append(request)
        return self.facts(request) + "."


class ScriptedGenerator(EchoGenerator):
    """Returns scripted answers per section title (then echoes), counting calls."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        super().__init__()
        self.script = {k: list(v) for k, v in script.items()}

    def generate(self, request: PromptRequest, settings: DecodingSettings,
                 attempt: int = 0) -> str:
        self.requests.append(request)
        title = re.search(r"Section: (.*)\n", request.messages[-1]["content"]).group(1)
        answers = self.script.get(title)
        return answers.pop(0) if answers else self.facts(request) + "."
