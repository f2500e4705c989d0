"""GPU check and mixed-precision benchmark: what ``optim.precision`` buys on a CUDA GPU,
and whether a GPU-trained model answers as the CPU-trained one does.

1. **Step speed**: one training step (forward, loss, backward, AdamW) of the demo model
   (MediAD, 48³, batch 8) and of the same network on a larger input (96³, batch 16), in
   fp32 and under bf16 autocast: median seconds per step and peak GPU memory, with the
   ratio measured in the same run.
2. **The demo recipe, trained on the GPU** once per precision on the demo cohort: seconds,
   best epoch, validation and test balanced accuracy, test balanced accuracy per input
   pattern, and the fitted temperatures; next to the CPU-built demo model when the data
   folder holds one (another machine's kernels: expect another model, as between CPUs).
3. **Device agreement**: the bf16-trained checkpoint predicts the demo test split on the GPU
   and on the CPU (``Predictor(device=...)``); the largest difference in any probability.
   Training evaluates in fp32 (no autocast), so its temperatures and feature distribution
   are fitted on the numbers ``Predictor`` gives.

Run on a machine with a CUDA GPU: ``python benchmarks/bench_gpu.py [--out DIR]`` (builds
the demo cohort in the data folder when absent). ``--cohort DIR --mni-inputs`` trains on a
copy of the demo cohort whose MRIs were already preprocessed (what `mediad preprocess`
writes), for a GPU machine without brain extraction and registration installed. ``--out``
keeps the table (``gpu.md``), each run's ``metrics.json`` and the bf16 checkpoint, so that a
CPU-only machine can load it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mediad.data.records import load_manifest
from mediad.data.splits import Splits
from mediad.engine.predictor import Predictor
from mediad.engine.trainer import train
from mediad.experiments.demo import demo_config, ensure_demo_cohort
from mediad.io import atomic_write_text
from mediad.networks.models import MultimodalNet, build_model
from mediad.paths import data_dir

PRECISIONS = ("fp32", "bf16")


def synthetic_batch(n: int, shape: tuple[int, int, int], n_fields: int, device: torch.device
                    ) -> dict[str, torch.Tensor]:
    """A batch with every input present (the worst case for a step's cost)."""
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(n, 1, *shape, generator=g),
        "has_image": torch.ones(n),
        "text": torch.randn(n, 5, 384, generator=g),
        "has_text": torch.ones(n),
        "tab_values": torch.randn(n, n_fields, generator=g) * 10 + 50,
        "tab_mask": torch.ones(n, n_fields),
        "site": torch.arange(n) % 3,
        "confounders": torch.randn(n, 3, generator=g),
        "label": torch.arange(n) % 3,
        "weight": torch.ones(n),
    }
    return {k: v.to(device) for k, v in batch.items()}


def step_time(model: MultimodalNet, batch: dict[str, torch.Tensor], precision: str,
              steps: int = 20) -> tuple[float, float]:
    """Median seconds per training step and peak memory (GiB)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 3):  # 3 warm-up steps
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(batch)
            loss = model.loss(out, batch["label"], batch["weight"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def bench_steps(lines: list[str]) -> None:
    config = demo_config(Path("unused.csv"), Path("unused"))
    # three training sites, as in the demo cohort (the back door and the site adversary)
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"sites": ("SITE-A", "SITE-B", "SITE-C")})})
    lines += ["| input | batch | fp32 s/step | bf16 s/step | fp32 / bf16 | peak GiB fp32 / bf16 |",
              "|---|---|---|---|---|---|"]
    for shape, n in (((48, 48, 48), 8), ((96, 96, 96), 16)):
        got = {}
        for precision in PRECISIONS:
            model = build_model(config.model, shape, 0)
            assert isinstance(model, MultimodalNet)
            model.set_training_priors(np.arange(n) % 3)
            model.to("cuda")
            batch = synthetic_batch(n, shape, len(config.model.tabular_fields),
                                    torch.device("cuda"))
            got[precision] = step_time(model, batch, precision)
            del model, batch
            torch.cuda.empty_cache()
        (t32, m32), (t16, m16) = got["fp32"], got["bf16"]
        lines.append(f"| {shape[0]}³ | {n} | {t32:.4f} | {t16:.4f} | {t32 / t16:.2f} | "
                     f"{m32:.2f} / {m16:.2f} |")
        print(lines[-1], flush=True)


def bench_training(root: Path, cohort: Path, mni_inputs: bool, out: Path, lines: list[str]
                   ) -> Path:
    base = demo_config(cohort, root / "cache")
    if mni_inputs:
        imaging = base.data.imaging.model_copy(update={"preprocess": None})
        base = base.model_copy(update={"data": base.data.model_copy(update={"imaging": imaging})})
    lines += ["", "| model | device, precision | seconds | best epoch | val BA | test BA | "
              "test BA mri+record / mri / record | T mri+record / mri / record |",
              "|---|---|---|---|---|---|---|---|"]
    runs = {}
    work = Path(tempfile.mkdtemp(prefix="mediad-gpu-runs-"))
    for precision in PRECISIONS:
        folder = work / f"demo-{precision}"
        config = base.model_copy(update={
            "optim": base.optim.model_copy(update={"precision": precision})})
        started = time.perf_counter()
        train(config, folder, show_progress=False)
        runs[f"GPU, {precision}"] = (folder, time.perf_counter() - started)
        shutil.copy2(folder / "metrics.json", out / f"demo-{precision}-metrics.json")
    shutil.copy2(work / "demo-bf16" / "best.pt", out / "demo-bf16-best.pt")
    cpu = root / "demo-model"
    if (cpu / "metrics.json").is_file():
        runs["CPU (the data folder's demo model)"] = (cpu, float("nan"))
    for name, (folder, seconds) in runs.items():
        m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        per = m.get("test_calibrated", {})
        temps = m.get("calibration", {}).get("temperature", {})
        patterns = ("mri+record", "mri", "record")
        lines.append(
            f"| demo recipe | {name} | {seconds:.1f} | {m['best_epoch']} | "
            f"{m['val']['balanced_accuracy']:.3f} | {m['test']['balanced_accuracy']:.3f} | "
            + " / ".join(f"{per[p]['balanced_accuracy']:.3f}" for p in patterns if p in per)
            + " | " + " / ".join(f"{temps[p]:.2f}" for p in patterns if p in temps) + " |")
        print(lines[-1], flush=True)
    return runs["GPU, bf16"][0] / "best.pt"


def bench_agreement(cohort: Path, mni_inputs: bool, best: Path, lines: list[str]) -> None:
    splits = Splits.load(best.parent / "splits.json")
    rows = [r for r in load_manifest(cohort / "manifest.csv").rows
            if splits.split_of(r.subject_id) == "test"]
    probs = {}
    for device in ("cuda", "cpu"):
        predictor = Predictor(best, device=device, mni_inputs=mni_inputs)
        started = time.perf_counter()
        preds = predictor.predict_many([(r.mri_path, r) for r in rows])
        seconds = time.perf_counter() - started
        probs[device] = np.array([[p.probabilities[c] for c in predictor.classes]
                                  for p in preds])
        print(f"{device}: {len(rows)} subjects in {seconds:.1f} s", flush=True)
    diff = np.abs(probs["cuda"] - probs["cpu"]).max()
    same = (probs["cuda"].argmax(1) == probs["cpu"].argmax(1)).mean()
    lines += ["", f"The bf16-trained checkpoint on the demo test split ({len(rows)} subjects, "
              f"MRI and record): largest |p(GPU) - p(CPU)| = {diff:.2e}; same class for "
              f"{same:.0%}."]
    print(lines[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="keep gpu.md, the metrics and the bf16 checkpoint here")
    parser.add_argument("--cohort", type=Path, default=None,
                        help="a demo-cohort folder (default: the data folder's)")
    parser.add_argument("--mni-inputs", action="store_true",
                        help="the cohort's MRIs are already preprocessed to MNI space")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; this machine has none")
    out = args.out or Path(tempfile.mkdtemp(prefix="mediad-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; 'fp32' "
             f"convolutions may use TF32 (cudnn.allow_tf32 = {torch.backends.cudnn.allow_tf32}"
             f", matmul precision {torch.get_float32_matmul_precision()})", ""]
    print(lines[0], flush=True)
    bench_steps(lines)
    cohort = args.cohort or ensure_demo_cohort()[0]
    best = bench_training(data_dir(), cohort, args.mni_inputs, out, lines)
    bench_agreement(cohort, args.mni_inputs, best, lines)
    atomic_write_text(out / "gpu.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
