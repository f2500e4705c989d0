"""Summariser speed and quality: wrapper vs raw llama.cpp, cache hits, throughput, acceptance.

Run: ``make bench`` (or ``python benchmarks/bench_summarize.py --cohort DIR``). All ratios
come from one run on one machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from mediad.data.records import load_manifest
from mediad.experiments.demo import ensure_demo_cohort
from mediad.summarize import LlamaCppGenerator, Summarizer, SummaryConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", type=Path, help="cohort folder (default: the demo)")
    parser.add_argument("--subjects", type=int, default=20, help="subjects for the LLM run")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    folder = args.cohort or ensure_demo_cohort()[0]
    records = load_manifest(folder / "manifest.csv").records()

    gen = LlamaCppGenerator("smollm2-135m-instruct")
    llm = Summarizer(SummaryConfig(backend="local"), generator=gen)
    section = llm.template.sections[1]
    facts = "; ".join(llm.template.facts(section, records[0], llm.fields))
    request = llm._request(section, facts)
    server = gen._load()
    body = {"messages": request.messages, "max_tokens": 64, "temperature": 0.0, "seed": 0,
            "top_p": 0.95}
    server.handle_chat_completions(body)  # warm-up
    raw, wrapped, tokens = [], [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        t = time.perf_counter()
        out = server.handle_chat_completions(body)
        raw.append(time.perf_counter() - t)
        tokens.append(out["usage"]["completion_tokens"])
        t = time.perf_counter()
        gen.generate(request, llm.config.decoding.model_copy(update={"max_tokens": 64}))
        wrapped.append(time.perf_counter() - t)
    n_tok = statistics.median(tokens)
    raw_tps, wrap_tps = n_tok / statistics.median(raw), n_tok / statistics.median(wrapped)

    with tempfile.TemporaryDirectory() as tmp:
        cached = Summarizer(SummaryConfig(backend="local", cache_dir=Path(tmp)), generator=gen)
        subset = records[: args.subjects]
        t = time.perf_counter()
        results = [cached.summarize(r) for r in subset]
        cold = time.perf_counter() - t
        t = time.perf_counter()
        for r in subset:
            cached.summarize(r)
        warm = time.perf_counter() - t
    sections = Counter(s for res in results for s in res.provenance.section_sources.values())
    llm_sections = sections["llm"] + sections["fallback"]
    template = Summarizer(SummaryConfig(backend="template"))
    t = time.perf_counter()
    for r in records:
        template.summarize(r)
    template_rate = len(records) / (time.perf_counter() - t)

    rows = {
        "completion tokens per call": n_tok,
        "raw llama.cpp tokens/s (end to end)": raw_tps,
        "wrapper tokens/s (same prompt)": wrap_tps,
        "wrapper / raw": wrap_tps / raw_tps,
        "LLM summaries/s (demo cohort, cold)": len(subset) / cold,
        "cache-hit speed-up": cold / warm,
        "template summaries/s": template_rate,
        "LLM sections accepted": sections["llm"] / max(1, llm_sections),
        "summaries fully from the LLM": sum(r.provenance.source == "llm" for r in results)
        / len(results),
    }
    for key, value in rows.items():
        print(f"{key:<40} {value:10.3f}")
    print("sections by source:", dict(sections))


if __name__ == "__main__":
    main()
