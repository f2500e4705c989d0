"""Training engine: one entry point for a single process and for ``torchrun`` (DDP).

``mediad train CONFIG --out DIR`` saves the YAML config, makes (or loads) subject-level
splits, summarises and embeds the records once, caches the preprocessed MRIs (MONAI
CacheDataset), trains with AdamW (linear warm-up, then cosine decay, per step), class
weighting, modality dropout and early stopping on validation balanced accuracy, writes
``last.pt`` every epoch and ``best.pt`` at each improvement (atomically; rank 0 only), logs
metrics per epoch, and ends with test metrics.
Under ``torchrun --nproc_per_node N`` each rank takes every N-th sample of the same shuffled
order (DistributedSampler), BatchNorm is synchronised, the front-door dictionary is
re-clustered from features gathered from all ranks, and rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from mediad.data.nifti import check_nifti_file
from mediad.data.records import ManifestRow, load_manifest
from mediad.data.splits import Splits, check_leakage, make_splits
from mediad.engine.calibration import (
    UNSCORED,
    Calibration,
    InputPattern,
    fit_calibration,
    model_patterns,
    restrict_inputs,
)
from mediad.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    hash_subjects,
    load_checkpoint,
    new_salt,
    save_checkpoint,
)
from mediad.engine.config import OptimConfig, TrainConfig, cache_root
from mediad.engine.ddp import DistInfo, distributed, gather
from mediad.engine.samples import (
    balance_weights,
    batch_to,
    build_samples,
    data_fingerprint,
    drop_modalities,
    drop_scores,
    make_dataset,
    make_summarizer,
    prepare_images,
    reads_scores,
)
from mediad.errors import ImageError, InputError, Issue, MediADError
from mediad.metrics import (
    classification_metrics,
    expected_calibration_error,
    site_balanced_accuracy,
)
from mediad.networks.encoders import TextEmbedder
from mediad.networks.models import ARCHITECTURE, MultimodalNet, TabularBaseline, build_model

__all__ = ["CHANCE_MARGIN", "TrainResult", "lr_schedule", "predict_loader",
           "predict_patterns", "selection_score",
           "should_stop", "train"]

#: A run whose best validation score is still within this of chance (1 / classes) does not
#: stop early: MediAD's image path can sit at chance for 10-15 epochs before it learns, and
#: patience that runs out first ends the run at chance. In the ablation, MediAD trained
#: unconfounded stopped at epochs 16 and 17 with best scores 0.39 and 0.38 in 2 seeds of 3,
#: while the third started to learn at epoch 10 and reached 0.83.
CHANCE_MARGIN = 0.1


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    metrics: dict[str, Any]


@torch.no_grad()
def predict_loader(model: MultimodalNet, loader: DataLoader, device: torch.device,
                   pattern: InputPattern | None = None, averaged: bool = False
                   ) -> dict[str, np.ndarray]:
    """Predictions over a loader: ``y``, ``log_probs`` (P(Y|do(X))), ``log_probs_mediator``
    (the auxiliary mediator head), ``features`` (what the label is read from) and sample
    ``index``; ``pattern`` hides the inputs outside it (calibration per input pattern);
    ``averaged``: the shift-averaged answer users get (:meth:`MultimodalNet.predict`)."""
    return predict_patterns(model, loader, device, [pattern], averaged)[pattern]


@torch.no_grad()
def predict_patterns(model: MultimodalNet, loader: DataLoader, device: torch.device,
                     patterns: Sequence[InputPattern | None], averaged: bool = False
                     ) -> dict[InputPattern | None, dict[str, np.ndarray]]:
    """:func:`predict_loader` for several input patterns in one pass, each image encoded
    once for all of them (:meth:`MultimodalNet.predict_views`)."""
    model.eval()
    keys = ("y", "log_probs", "log_probs_mediator", "features", "index", "scored")
    parts: dict[InputPattern | None, dict[str, list[np.ndarray]]] = {
        p: {k: [] for k in keys} for p in patterns}
    for batch in loader:
        b = batch_to(batch, device)
        views = [b if p is None else restrict_inputs(b, p) for p in patterns]
        # fp32 even on a GPU: metrics, temperatures and the feature distribution are then
        # fitted on the numbers Predictor gives users, which runs without autocast
        outs = model.predict_views(views, average=averaged)
        for p, out in zip(patterns, outs, strict=True):
            parts[p]["y"].append(batch["label"].numpy())
            parts[p]["log_probs"].append(out.log_probs.float().cpu().numpy())
            parts[p]["log_probs_mediator"].append(out.log_probs_mediator.float().cpu().numpy())
            if out.readout is not None:
                parts[p]["features"].append(out.readout.float().cpu().numpy())
            parts[p]["index"].append(batch["index"].numpy())
            if "scored" in batch:
                parts[p]["scored"].append(batch["scored"].numpy())
    return {p: {k: np.concatenate(v) for k, v in part.items() if v}
            for p, part in parts.items()}


def _autocast(device: torch.device, precision: str) -> Any:
    """Mixed precision for training steps on CUDA (``optim.precision``)."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _rows_for_task(rows: list[ManifestRow], classes: Sequence[str]) -> list[ManifestRow]:
    return [r for r in rows if r.diagnosis in classes]


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False,
          show_progress: bool = True, max_epochs: int | None = None) -> TrainResult:
    """Train one model variant.

    Args:
        config: data, model and optimisation settings.
        out_dir: run folder (created); holds config.yaml, splits.json, metrics.jsonl,
            last.pt, best.pt and metrics.json.
        resume: continue from ``out_dir/last.pt``.
        show_progress: tqdm bars on rank 0.
        max_epochs: stop after this many epochs in this call (tests of resumption).

    Raises:
        MediADError: bad inputs, an existing run without ``resume``, or leakage.
    """
    with distributed() as d:
        return _train(config, Path(out_dir), resume, show_progress, max_epochs, d)


def _train(config: TrainConfig, out: Path, resume: bool, show_progress: bool,
           max_epochs: int | None, d: DistInfo) -> TrainResult:
    from tqdm.auto import tqdm

    if (out / "last.pt").exists() and not resume:
        raise MediADError(f"{out} already holds a run; pass --resume to continue it or choose "
                          "another --out")
    if resume and not (out / "last.pt").exists():
        raise MediADError(f"{out}/last.pt not found: nothing to resume")
    torch.manual_seed(config.optim.seed)
    np.random.seed(config.optim.seed)
    classes = config.model.classes
    table = load_manifest(config.data.manifest)
    rows = _rows_for_task(table.rows, classes)
    if len(rows) < 6:
        raise InputError(f"{config.data.manifest}: only {len(rows)} labelled row(s) for task "
                         f"{config.model.task}; training needs more")
    use_image, use_text = config.model.inputs
    cache = cache_root(config)
    if use_image:
        _check_images(rows)
        _preprocess(rows, config, cache, show_progress and d.main)
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no folder
    splits = _splits(config, rows, out, d)
    by_split = {name: [r for r in rows if splits.split_of(r.subject_id) == name]
                for name in ("train", "val", "test")}
    # the training sites (from the manifest's site column): the back door and the site
    # adversary are sized by them; the model never reads a site as an input
    sites = tuple(sorted({r.site for r in by_split["train"] if r.site}))
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"sites": sites})})
    if d.main:
        (out / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        if not resume:  # a run started afresh (e.g. a grid cell whose last.pt was not
            # committed) must not append its epochs to an earlier attempt's log
            (out / "metrics.jsonl").unlink(missing_ok=True)
    summarizer = make_summarizer(config, cache) if use_text else None
    embedder = TextEmbedder(config.data.text_model, cache / "embeddings") if (
        use_text) else None
    salt = new_salt()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "architecture": ARCHITECTURE,
        "config": config.model_dump(mode="json"),
        "classes": list(classes),
        "template_version": summarizer.template.version if summarizer else None,
        "summary_fields": summarizer.fields if summarizer else [],
        "text_model_id": config.data.text_model if use_text else None,
        "data_fingerprint": data_fingerprint(by_split["train"]),
        "subject_salt": salt,
        "train_subject_hashes": hash_subjects((r.subject_id for r in by_split["train"]), salt),
    }
    # records without scores are a pattern of their own (score dropout in training, a
    # temperature after it) wherever the model reads a score
    unscored = config.model.kind != "tabular" and reads_scores(
        config.model, summarizer.fields if summarizer else ())
    samples = {name: build_samples(rs, [r.mri_path if use_image else None for r in rs],
                                   classes, summarizer, embedder,
                                   config.model.tabular_fields, sites, unscored)
               for name, rs in by_split.items()}
    oc = config.optim
    for name, group in samples.items():
        weights = (balance_weights(np.array([s["label"] for s in group]),
                                   np.array([s["site"] for s in group]), len(classes),
                                   oc.class_weighting, oc.site_balance)
                   if name == "train" and group else np.ones(len(group), np.float32))
        for sample, w in zip(group, weights, strict=True):
            sample["weight"] = np.float32(w)
    if config.model.kind == "tabular":
        return _train_tabular(config, out, samples, meta, d)
    return _train_net(config, out, samples, meta, d, resume, show_progress, max_epochs, tqdm)


def _check_images(rows: Sequence[ManifestRow]) -> None:
    """Refuse hostile or broken MRIs by header before any is loaded, naming each subject."""
    issues = []
    for row in rows:
        if row.mri_path:
            try:
                check_nifti_file(row.mri_path)
            except ImageError as exc:
                issues.append(Issue("error", exc.reason, subject=row.subject_id,
                                    field="mri_path", value=Path(row.mri_path).name))
    InputError.raise_if_errors(issues, summary=f"{len(issues)} unusable MRI(s); fix or "
                               "remove them from the manifest")


def _preprocess(rows: Sequence[ManifestRow], config: TrainConfig, cache: Path,
                show_progress: bool) -> None:
    """Raw T1s to MNI152 once, in workers, before any dataset reads them (cached)."""
    if config.data.imaging.preprocess is None:
        return
    from tqdm.auto import tqdm

    with tqdm(total=len({r.mri_path for r in rows if r.mri_path}), desc="preprocessing MRIs",
              disable=not show_progress) as bar:
        qc = prepare_images(rows, config.data.imaging, cache, config.data.workers,
                            lambda done, _total: bar.update(done - bar.n))
    flagged = sum(1 for q in qc.values() if q.flags)
    if flagged and show_progress:
        tqdm.write(f"{flagged} of {len(qc)} MRIs carry a preprocessing QC flag (see "
                   "`mediad preprocess` for the reasons); they are used as they are")


def _splits(config: TrainConfig, rows: list[ManifestRow], out: Path, d: DistInfo) -> Splits:
    if config.data.splits is not None:
        splits = Splits.load(config.data.splits)
    elif (out / "splits.json").exists():
        splits = Splits.load(out / "splits.json")
    else:
        splits = make_splits(rows, config.data.split)
        if d.main:
            splits.save(out / "splits.json")
    check_leakage(splits.train, splits.test, "test")
    return splits


def _tab_matrix(samples: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([np.where(s["tab_mask"] > 0, s["tab_values"], np.nan) for s in samples])
    return x, np.array([s["label"] for s in samples])


def _train_tabular(config: TrainConfig, out: Path, samples: dict[str, list[dict[str, Any]]],
                   meta: dict[str, Any], d: DistInfo) -> TrainResult:
    model = TabularBaseline(config.model, config.optim.seed)
    model.fit(*_tab_matrix(samples["train"]))
    metrics: dict[str, Any] = {"best_epoch": 0}
    for name in ("val", "test"):
        if samples[name]:
            x, y = _tab_matrix(samples[name])
            metrics[name] = classification_metrics(y, model.predict_log_proba(x),
                                                   config.model.classes)
    payload = {**meta, "model_state": model.state_dict(), "epoch": 0, "metrics": metrics}
    if d.main:
        save_checkpoint(out / "best.pt", payload)
        save_checkpoint(out / "last.pt", payload)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(out, 0, metrics)


def _train_net(config: TrainConfig, out: Path, samples: dict[str, list[dict[str, Any]]],
               meta: dict[str, Any], d: DistInfo, resume: bool, show_progress: bool,
               max_epochs: int | None, tqdm: Any) -> TrainResult:
    oc, imaging = config.optim, config.data.imaging
    device = torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    model = build_model(config.model, imaging.shape, oc.seed)
    assert isinstance(model, MultimodalNet)
    if model.tabular is not None:
        x = np.stack([s["tab_values"] for s in samples["train"]])
        m = np.stack([s["tab_mask"] for s in samples["train"]])
        model.tabular.set_stats(x, m)
    model.set_training_priors(np.array([s["site"] for s in samples["train"]]))
    model.to(device)
    net: torch.nn.Module = model
    if d.world > 1:
        if device.type == "cuda":  # DenseNet / SwinUNETR options still hold BatchNorm
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[d.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=True)
    cache = cache_root(config)
    train_set = make_dataset(samples["train"], imaging, config.data.augment,
                             cache_dir=cache, augment_pose=config.data.augment_pose)
    # MONAI's random transforms start from an unseeded RNG: the first prototype refresh
    # below reads augmented images, so an unseeded start made every augmented run differ
    _seed_augmentation(train_set, oc.seed)
    eval_sets = {k: make_dataset(samples[k], imaging, False, cache_dir=cache)
                 for k in ("val", "test") if samples[k]}
    sampler = DistributedSampler(train_set, num_replicas=d.world, rank=d.rank, shuffle=True,
                                 seed=oc.seed, drop_last=False)
    per_rank = max(1, oc.batch_size // d.world)
    loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=0)
    eval_loaders = {k: DataLoader(v, batch_size=oc.batch_size, shuffle=False)
                    for k, v in eval_sets.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=oc.lr, weight_decay=oc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(oc.epochs * len(loader), round(oc.warmup_epochs * len(loader))))
    state = {"epoch": 0, "best": (-1.0, -math.inf), "best_epoch": 0, "stale": 0}
    averaged = (torch.optim.swa_utils.AveragedModel(model) if oc.average_from else None)
    if resume:
        ck = load_checkpoint(out / "last.pt", config.model.task)
        if "lr_lambdas" not in ck["scheduler"]:
            raise MediADError(f"{out} was started by an older MediAD (learning rate per epoch, "
                              "without warm-up) and cannot be resumed; start a new run")
        model.load_state_dict(ck["model_state"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        state = dict(ck["train_state"])
        if averaged is not None and "averaged_state" in ck:
            averaged.load_state_dict(ck["averaged_state"])
        if not isinstance(state["best"], tuple):  # saved before the tie-break existed
            state["best"] = (float(state["best"]), -math.inf)
    elif model.front_door is not None:
        _refresh(model, *_features(net, loader, device, d, sampler, 0), oc.seed)
    stop = state["epoch"] + (max_epochs or oc.epochs)
    told_at_chance = False
    for epoch in range(state["epoch"] + 1, min(oc.epochs, stop) + 1):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        # seeded per epoch and rank, so a resumed run hides the same inputs
        dropout_rng = torch.Generator().manual_seed(oc.seed * 100_003 + epoch * 101 + d.rank)
        # its own stream: the modality masks stay what they are without it
        scores_rng = torch.Generator().manual_seed(oc.seed * 100_019 + epoch * 103 + d.rank)
        _seed_augmentation(train_set, oc.seed + epoch)
        model.site_scale = warmup_factor(epoch, oc.site_adversarial_warmup)
        net.train()
        total, n, feats, feat_sites = 0.0, 0, [], []
        bar = tqdm(loader, desc=f"epoch {epoch}/{oc.epochs}", leave=False,
                   disable=None if (show_progress and d.main) else True)  # None: tty only
        for batch in bar:
            b = drop_modalities(batch_to(batch, device), oc.modality_dropout, dropout_rng,
                                model.reads)
            b = drop_scores(b, oc.score_dropout, scores_rng)
            with _autocast(device, oc.precision):
                output = net(b)
                loss = model.loss(output, b["label"], b["weight"].float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch["label"])
            n += len(batch["label"])
            if output.fused is not None:
                feats.append(output.fused.float().cpu())
                feat_sites.append(batch["site"])
            bar.set_postfix(loss=f"{total / n:.3f}")
        if d.world > 1:  # report the loss over all ranks' samples
            sums = torch.tensor([total, float(n)], dtype=torch.float64)
            dist.all_reduce(sums)
            total, n = float(sums[0]), int(sums[1])
        if model.front_door is not None and feats:
            _refresh(model, gather(torch.cat(feats), d), gather(torch.cat(feat_sites), d),
                     oc.seed + epoch)
        if averaged is not None and epoch >= oc.average_from:
            averaged.update_parameters(model)
            if epoch == oc.epochs:  # the schedule's end: the mean becomes the model
                for mine, mean in zip(model.parameters(), averaged.module.parameters(),
                                      strict=True):
                    mine.data.copy_(mean.data)
                if model.front_door is not None:  # its dictionary, from the mean's features
                    _refresh(model, *_features(net, loader, device, d, sampler, epoch),
                             oc.seed + epoch)
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(1, n),
                                   "lr": scheduler.get_last_lr()[0],
                                   "seconds": time.perf_counter() - started}
        selected_on: dict[str, Any] = {}
        last = epoch == min(oc.epochs, stop)
        if "val" in eval_loaders and not (epoch % oc.validate_every == 0 or last):
            # what validation draws from torch's generator (its loader's base seed): the
            # dropout masks of later epochs, and so the network, stay as if it had run
            torch.empty((), dtype=torch.int64).random_()
        elif "val" in eval_loaders:
            per = _validate(model, eval_loaders["val"], device, samples["val"], config)
            metrics["val"] = selected_on = next(iter(per.values()))
            if len(per) > 1:  # each_pattern: select on the mean over the patterns
                metrics["val_patterns"] = per
                selected_on = {key: float(np.mean([v[key] for v in per.values()]))
                               for key in selected_on}
                metrics["val_selection"] = selected_on
        score = selection_score(selected_on, oc, metrics["train_loss"])
        improved = score > state["best"] or oc.selection == "last"
        state.update(epoch=epoch, stale=0 if improved else state["stale"] + 1)
        if improved:
            state.update(best=score, best_epoch=epoch)
        if d.main:
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(metrics) + "\n")
            base = {**meta, "model_state": model.state_dict(), "epoch": epoch,
                    "metrics": metrics}
            if improved:
                save_checkpoint(out / "best.pt", base)
            save_checkpoint(out / "last.pt", {
                **base, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "train_state": dict(state),
                **({"averaged_state": averaged.state_dict()} if averaged is not None else {})})
            if show_progress:
                line = f"epoch {epoch}: loss {metrics['train_loss']:.3f}"
                if "val" in metrics:
                    val = metrics["val"]
                    line += (f", val balanced accuracy {val['balanced_accuracy']:.3f}, "
                             f"site-balanced {val['site_balanced_accuracy']:.3f}"
                             + (f", mean over input patterns {score[0]:.3f}"
                                if "val_selection" in metrics else "")
                             + (" (best so far)" if improved and oc.selection != "last"
                                else ""))
                tqdm.write(line)
        if d.world > 1:
            dist.barrier()
        if should_stop(state["best"][0], state["stale"], epoch, oc, len(config.model.classes),
                       validated="val" in eval_loaders):
            break
        if (state["stale"] >= oc.patience and epoch >= oc.min_epochs and show_progress
                and d.main and not told_at_chance):
            told_at_chance = True
            tqdm.write(f"validation is still at chance after {epoch} epochs: no early stop "
                       f"(up to {oc.epochs} epochs)")
    # the training set as evaluation reads it (the cached one, unless it is augmented)
    train_eval = DataLoader(make_dataset(samples["train"], imaging, False, cache_dir=cache)
                            if config.data.augment or config.data.augment_pose else train_set,
                            batch_size=oc.batch_size, shuffle=False)
    unscored = bool(samples["train"]) and "text_unscored" in samples["train"][0]
    return _finish(config, out, model, eval_loaders, device, state, meta, d, train_eval,
                   unscored)


def should_stop(best: float, stale: int, epoch: int, oc: OptimConfig, n_classes: int,
                validated: bool) -> bool:
    """Early stopping: ``oc.patience`` epochs without improvement, not before
    ``oc.min_epochs``, and never while the best validation score is still at chance
    (within :data:`CHANCE_MARGIN` of ``1 / n_classes``); ``oc.epochs`` still bounds the run.

    Args:
        best: the best selection score so far (a balanced accuracy when ``validated``).
        stale: epochs since it last improved.
        epoch: the epoch just finished.
        oc: patience and minimum epochs.
        n_classes: the task's number of classes.
        validated: whether there is a validation split (else ``best`` is a training loss).
    """
    if stale < oc.patience or epoch < oc.min_epochs:
        return False
    return not (validated and best <= 1.0 / n_classes + CHANCE_MARGIN)


def _validate(model: MultimodalNet, loader: DataLoader, device: torch.device,
              samples: list[dict[str, Any]], config: TrainConfig
              ) -> dict[str, dict[str, float]]:
    """Validation metrics of the answer from every input (first) and, with
    ``optim.selection_inputs: each_pattern``, of each other input pattern the model answers;
    keyed by pattern name."""
    if config.optim.selection_inputs == "each_pattern":
        names, restricted = _patterns(model), _restricted_patterns(model)
    else:
        names, restricted = ("all",), [None]
    preds = predict_patterns(model, loader, device, restricted)
    out = {}
    for name, pattern in zip(names, restricted, strict=True):
        pv = preds[pattern]
        m = classification_metrics(pv["y"], pv["log_probs"], config.model.classes)
        sites = np.array([samples[i]["site"] for i in pv["index"]])
        m["site_balanced_accuracy"] = site_balanced_accuracy(pv["y"],
                                                             pv["log_probs"].argmax(1), sites)
        out[name] = m
    return out


def selection_score(val: dict[str, Any], oc: OptimConfig, train_loss: float
                    ) -> tuple[float, float]:
    """What checkpoint selection maximises: the validation score (``oc.selection``), then
    minus the validation log-loss (``oc.tie_break``); minus the training loss when there is
    no validation score (no split, or one class only: NaN). With ``selection: last`` it is
    the plain balanced accuracy, logged; the trainer keeps the final epoch regardless."""
    key = "site_balanced_accuracy" if oc.selection == "site_balanced" else "balanced_accuracy"
    score = val.get(key, float("nan"))
    if score != score:
        return -train_loss, 0.0
    tie = -val["log_loss"] if oc.tie_break == "log_loss" and "log_loss" in val else 0.0
    return float(score), float(tie)


def _finish(config: TrainConfig, out: Path, model: MultimodalNet,
            loaders: dict[str, DataLoader], device: torch.device, state: dict[str, Any],
            meta: dict[str, Any], d: DistInfo, train_eval: DataLoader,
            unscored: bool = False) -> TrainResult:
    best = load_checkpoint(out / "best.pt") if (out / "best.pt").exists() else None
    if best is not None:
        model.load_state_dict(best["model_state"])
    metrics: dict[str, Any] = {"best_epoch": state["best_epoch"]}
    memo: dict[tuple[str, InputPattern | None], dict[str, np.ndarray]] = {}

    def averaged(name: str, pattern: InputPattern | None = None) -> dict[str, np.ndarray]:
        """Shift-averaged predictions (27 forward passes a subject), every pattern of a
        split in one pass: a pattern that hides nothing the model reads is the plain
        prediction."""
        if pattern == _patterns(model)[0]:
            pattern = None
        if (name, pattern) not in memo:
            patterns = _restricted_patterns(model, unscored)
            for p, pred in predict_patterns(model, loaders[name], device, patterns,
                                            averaged=True).items():
                memo[name, p] = pred
        return memo[name, pattern]

    for name in loaders:
        p = averaged(name)
        metrics[name] = classification_metrics(p["y"], p["log_probs"], config.model.classes)
    calibration = None
    if "val" in loaders:
        calibration = _calibrate(model, averaged, train_eval, device, unscored)
        metrics["calibration"] = calibration.model_dump(mode="json", exclude={"features"})
        if "test" in loaders:
            metrics["test_calibrated"] = _pattern_metrics(model, averaged, calibration, config,
                                                          unscored)
    if d.main and best is not None:
        extra = {} if calibration is None else {"calibration": calibration.model_dump(
            mode="json")}
        save_checkpoint(out / "best.pt", {**best, "metrics": metrics, **extra})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(out, state["best_epoch"], metrics)


def _patterns(model: MultimodalNet, unscored: bool = False) -> tuple[InputPattern, ...]:
    """The input patterns a model can be asked with (``unscored``: records without scores
    too; calibration asks for them, checkpoint selection does not)."""
    return model_patterns(model.use_image, model.use_text or model.tabular is not None,
                          unscored)


def _restricted_patterns(model: MultimodalNet, unscored: bool = False
                         ) -> list[InputPattern | None]:
    """The model's patterns as :func:`restrict_inputs` takes them (``None``: all inputs)."""
    patterns = _patterns(model, unscored)
    return [None, *patterns[1:]]


def _answered_under(pattern: InputPattern, pred: dict[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """The predictions a pattern is fitted and scored on: a record without any score is
    answered under a pattern of its own where there is one (its samples carry ``scored``),
    never under the scored pattern."""
    if pattern not in UNSCORED or "scored" not in pred:
        return pred
    keep = pred["scored"] > 0
    return {k: v[keep] for k, v in pred.items()}


def _calibrate(model: MultimodalNet, averaged: Callable[..., dict[str, np.ndarray]],
               train_eval: DataLoader, device: torch.device, unscored: bool = False
               ) -> Calibration:
    """Temperatures on validation, and the training feature distribution, per pattern."""
    per_pattern = {}
    trains = predict_patterns(model, train_eval, device,  # features: unshifted
                              _restricted_patterns(model, unscored))
    for pattern, restricted in zip(_patterns(model, unscored),
                                   _restricted_patterns(model, unscored), strict=True):
        val = _answered_under(pattern, averaged("val", pattern))
        train = trains[restricted]
        per_pattern[pattern] = {"y": val["y"], "log_probs": val["log_probs"],
                                "train_features": train.get("features"),
                                "val_features": val.get("features")}
    return fit_calibration(per_pattern)


def _pattern_metrics(model: MultimodalNet, averaged: Callable[..., dict[str, np.ndarray]],
                     calibration: Calibration, config: TrainConfig, unscored: bool = False
                     ) -> dict[str, Any]:
    """Test balanced accuracy and ECE per input pattern, before and after calibration."""
    from scipy.special import softmax

    out = {}
    for pattern in _patterns(model, unscored):
        p = _answered_under(pattern, averaged("test", pattern))
        keep = p["y"] >= 0
        if not keep.any():
            continue
        y, lp = p["y"][keep], p["log_probs"][keep]
        calibrated = calibration.calibrate(lp, [pattern] * len(y))
        out[pattern] = {
            "n": len(y),
            "balanced_accuracy": classification_metrics(y, lp, config.model.classes)[
                "balanced_accuracy"],
            "ece_before": expected_calibration_error(y, softmax(lp, axis=1)),
            "ece_after": expected_calibration_error(y, np.exp(calibrated)),
        }
    return out


def lr_schedule(total_steps: int, warmup_steps: int) -> Any:
    """The learning-rate factor per optimiser step: linear warm-up, then cosine decay to 0.

    Without the warm-up, Adam's first full-size steps left the MRI encoder at chance for ten
    epochs or more (see ``OptimConfig.warmup_epochs``)."""
    total, warm = max(1, total_steps), max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1.0 + float(np.cos(np.pi * (step - warm) / max(1, total - warm))))
    return factor


def warmup_factor(epoch: int, warmup: int) -> float:
    """The DANN schedule ``2 / (1 + exp(-10 p)) - 1`` over ``warmup`` epochs (1 without):
    0 at the first epoch, about 1 after ``warmup``, so an adversary does not scramble
    features before there is anything to read from them."""
    if warmup <= 0:
        return 1.0
    p = min(1.0, (epoch - 1) / warmup)
    return float(2.0 / (1.0 + np.exp(-10.0 * p)) - 1.0)


def _seed_augmentation(dataset: Any, seed: int) -> None:
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed % (2**31))


@torch.no_grad()
def _features(net: torch.nn.Module, loader: DataLoader, device: torch.device, d: DistInfo,
              sampler: DistributedSampler, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused features of the training samples and their sites (all ranks)."""
    sampler.set_epoch(epoch)
    net.eval()
    feats, sites = [], []
    for batch in loader:
        out = net(batch_to(batch, device))
        feats.append(out.fused.float().cpu())
        sites.append(batch["site"])
    return gather(torch.cat(feats), d), gather(torch.cat(sites), d)


def _refresh(model: MultimodalNet, features: torch.Tensor, sites: torch.Tensor,
             seed: int) -> None:
    """Re-cluster the front-door dictionary from site-centred features."""
    assert model.front_door is not None
    model.front_door.refresh(features, seed, groups=sites.numpy())
