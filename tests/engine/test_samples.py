"""Samples for training: a record's summary as it reads without its cognitive scores, and
hiding the scores at random (score dropout)."""

from __future__ import annotations

import numpy as np
import torch

from mediad.data.records import COGNITIVE_SCORES, ClinicalRecord
from mediad.engine.samples import build_samples, drop_scores, reads_scores
from mediad.networks.encoders import TABULAR_FIELDS
from mediad.networks.models import ModelConfig
from mediad.summarize import Summarizer, SummaryConfig


class _Embedder:
    """Stands in for MiniLM: one distinct vector per distinct sentence, and a log of what
    it was asked to embed."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.asked += texts
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=384)
                         for t in texts]).astype(np.float32)


SCORED = ClinicalRecord(subject_id="S1", age=74.0, sex="female", mmse=24.0, cdr_sb=2.5,
                        faq=6.0, apoe4=1, diagnosis="MCI")
UNSCORED = ClinicalRecord(subject_id="S2", age=70.0, sex="male", apoe4=0, diagnosis="CN")


def test_unscored_text_differs_only_in_the_cognition_section() -> None:
    embedder = _Embedder()
    summarizer = Summarizer(SummaryConfig(backend="template"))
    samples = build_samples([SCORED, UNSCORED, None], [None, None, None], ["CN", "MCI", "AD"],
                            summarizer, embedder, TABULAR_FIELDS,  # type: ignore[arg-type]
                            unscored=True)
    scored, unscored, absent = samples
    titles = list(summarizer.summarize(SCORED).sections)
    cognition = titles.index("Cognition")
    changed = [i for i in range(len(titles))
               if not np.array_equal(scored["text"][i], scored["text_unscored"][i])]
    assert changed == [cognition]
    # without its scores, the first record's cognition section reads as the second's
    assert np.array_equal(scored["text_unscored"][cognition], unscored["text"][cognition])
    assert [f for f, s in zip(TABULAR_FIELDS, scored["tab_scores"], strict=True) if s] == list(
        COGNITIVE_SCORES)
    # a record with no scores to hide, and a missing record, read the same either way
    assert np.array_equal(unscored["text_unscored"], unscored["text"])
    assert not absent["text_unscored"].any() and absent["has_text"] == 0
    assert len(embedder.asked) == len(set(embedder.asked))  # each sentence embedded once
    # without unscored, the samples are as before: no extra key, no extra summaries
    plain = build_samples([SCORED], [None], ["CN", "MCI", "AD"], summarizer,
                          embedder, TABULAR_FIELDS)  # type: ignore[arg-type]
    assert "text_unscored" not in plain[0]
    assert np.array_equal(plain[0]["text"], scored["text"])


def test_score_dropout_hides_summary_and_fields_together() -> None:
    n, fields = 4000, list(TABULAR_FIELDS)
    columns = [fields.index(f) for f in COGNITIVE_SCORES]
    scores = torch.tensor([float(f in COGNITIVE_SCORES) for f in fields])
    batch = {"label": torch.zeros(n, dtype=torch.long),
             "text": torch.ones(n, 5, 384), "text_unscored": torch.zeros(n, 5, 384),
             "tab_mask": torch.ones(n, len(fields)), "tab_scores": scores.expand(n, -1)}
    out = drop_scores(batch, 0.3, torch.Generator().manual_seed(0))
    hidden = out["text"].amax((1, 2)) == 0
    assert 0.27 < float(hidden.float().mean()) < 0.33
    # the same samples lose their score fields, and only those fields
    assert torch.equal(out["tab_mask"][:, columns].amax(1) == 0, hidden)
    others = [i for i in range(len(fields)) if i not in columns]
    assert bool(out["tab_mask"][:, others].all())
    assert bool(batch["tab_mask"].all()) and bool(batch["text"].all())  # not modified
    assert drop_scores(batch, 0.0, torch.Generator()) is batch
    no_unscored = {k: v for k, v in batch.items() if k != "text_unscored"}
    assert drop_scores(no_unscored, 0.5, torch.Generator()) is no_unscored


def test_reads_scores_follows_the_fields_a_model_actually_reads() -> None:
    scored_fields = ("age", "mmse")
    # record fields count only when the model reads them; the tabular baseline always does
    assert reads_scores(ModelConfig(use_tabular=True, tabular_fields=scored_fields), ())
    assert not reads_scores(ModelConfig(use_tabular=False, tabular_fields=scored_fields), ())
    assert reads_scores(ModelConfig(kind="tabular", use_tabular=False,
                                    tabular_fields=scored_fields), ())
    # a summary that writes a score is enough; one without any is not
    assert reads_scores(ModelConfig(use_tabular=False), ("age", "cdr_sb"))
    assert not reads_scores(ModelConfig(use_tabular=True, tabular_fields=("age", "sex")),
                            ("age", "apoe4"))
