"""Model speed: one-subject prediction vs its floor, and the training loader vs tensors.

Run: ``make bench`` (uses the demo cohort and demo model, building them if needed).
Ratios come from one run on one machine.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader

from mediad.data.imaging import load_volume
from mediad.data.records import load_manifest
from mediad.engine.predictor import Predictor
from mediad.engine.samples import batch_to, build_samples, make_dataset
from mediad.experiments.demo import ensure_demo_cohort, ensure_demo_model
from mediad.networks.encoders import TextEmbedder
from mediad.networks.models import ModelConfig, build_model
from mediad.summarize import Summarizer, SummaryConfig


def median_time(fn, repeats: int = 15) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    cohort, _ = ensure_demo_cohort()
    best, _ = ensure_demo_model()
    rows = load_manifest(cohort / "manifest.csv").rows
    predictor = Predictor(best)
    row = rows[0]
    encoder = predictor.model.image
    transforms = predictor.transforms

    def floor() -> None:
        with torch.inference_mode():
            encoder(load_volume(row.mri_path, transforms=transforms)[None])

    t_predict = median_time(lambda: predictor.predict(row.mri_path, row))
    t_floor = median_time(floor)
    print(f"{'predict one subject (s)':<44} {t_predict:8.4f}")
    print(f"{'image load + bare encoder forward (s)':<44} {t_floor:8.4f}")
    print(f"{'ratio (goal <= 1.3)':<44} {t_predict / t_floor:8.3f}")

    # saliency for one subject, as the app computes it (occlusion at its default)
    from mediad.engine.explain import OCCLUSION_MASK, saliency

    for method in ("gradcam", "occlusion"):
        t = time.perf_counter()
        saliency(predictor, row.mri_path, row, method)
        label = f"saliency {method}" + (f" (cube {OCCLUSION_MASK})" if method == "occlusion"
                                        else "") + " (s)"
        print(f"{label:<44} {time.perf_counter() - t:8.2f}")

    # training steps/s: the real loader (MONAI CacheDataset) vs tensors already in memory
    config = predictor.config
    subset = rows[:96]
    samples = build_samples(subset, [r.mri_path for r in subset], config.model.classes,
                            Summarizer(SummaryConfig(backend="template")),
                            TextEmbedder(), config.model.tabular_fields)
    dataset = make_dataset(samples, config.data.imaging, augment=False)
    loader = DataLoader(dataset, batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    batches = [b for b in loader]
    model = build_model(ModelConfig.model_validate(config.model.model_dump()),
                        config.data.imaging.shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch: dict) -> None:
        b = batch_to(batch, torch.device("cpu"))
        out = model(b)
        loss = model.loss(out, b["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    def epoch_loader() -> None:
        for batch in loader:
            step(batch)

    def epoch_tensors() -> None:
        for batch in batches:
            step(batch)

    model.train()
    rates = {"loader": [], "tensors": []}
    for _ in range(3):  # interleaved rounds
        for name, fn in (("loader", epoch_loader), ("tensors", epoch_tensors)):
            t = time.perf_counter()
            fn()
            rates[name].append(len(batches) / (time.perf_counter() - t))
    loader_rate, tensor_rate = (statistics.median(rates[k]) for k in ("loader", "tensors"))
    print(f"{'training steps/s, real loader':<44} {loader_rate:8.2f}")
    print(f"{'training steps/s, pre-loaded tensors':<44} {tensor_rate:8.2f}")
    print(f"{'ratio (goal >= 0.9)':<44} {loader_rate / tensor_rate:8.3f}")


if __name__ == "__main__":
    main()
