"""Training, checkpoints, resume, DDP and prediction on the tiny synthetic cohort."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from mediad.data.records import COGNITIVE_SCORES, has_no_scores, load_manifest
from mediad.data.splits import Splits
from mediad.engine.calibration import MIN_FIT_SUBJECTS, MIN_TEMPERATURE
from mediad.engine.checkpoint import load_checkpoint
from mediad.engine.config import OptimConfig, TrainConfig
from mediad.engine.predictor import TEXTURE_CAVEAT, Predictor
from mediad.engine.trainer import train
from mediad.errors import ImageError, InputError, MediADError
from mediad.networks.models import build_model
from tests.conftest import tiny_train_config


@pytest.fixture
def run(tiny_run: Path) -> Path:
    return tiny_run


def test_run_folder_and_checkpoint_contents(run: Path) -> None:
    for name in ("config.yaml", "splits.json", "metrics.jsonl", "last.pt", "best.pt",
                 "metrics.json"):
        assert (run / name).is_file(), name
    ck = torch.load(run / "best.pt", weights_only=True)  # no pickled code
    assert ck["classes"] == ["CN", "MCI", "AD"] and ck["text_model_id"] == "all-minilm-l6-v2"
    assert ck["template_version"].startswith("1.0+") and len(ck["data_fingerprint"]) == 16
    assert "front_door.prototypes" in ck["model_state"] and ck["metrics"]["test"]["n"] > 0
    assert bool(ck["model_state"]["front_door.ready"])
    assert TrainConfig.model_validate(ck["config"]).model.kind == "mediad"
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3, 4]


def test_a_run_started_afresh_keeps_no_earlier_epochs(tiny_cohort: Path, tmp_path: Path
                                                      ) -> None:
    """A grid cell whose folder came without its last.pt (a fresh clone) trains from the
    start; its log must not carry the earlier attempt's epochs too."""
    out = tmp_path / "cell"
    train(tiny_train_config(tiny_cohort), out, show_progress=False, max_epochs=2)
    (out / "last.pt").unlink()
    train(tiny_train_config(tiny_cohort), out, show_progress=False, max_epochs=1)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()]
    assert epochs == [1]


def test_checkpoint_round_trip_reproduces_predictions(run: Path, tiny_cohort: Path) -> None:
    """Reloaded, the model scores the test split exactly as training reported."""
    predictor = Predictor(run / "best.pt")
    split = json.loads((run / "splits.json").read_text())
    rows = [r for r in load_manifest(tiny_cohort / "manifest.csv").rows
            if r.subject_id in split["test"]]
    probs = [predictor.predict(r.mri_path, r) for r in rows]
    # the network's own output (what training scored), before calibration
    log_p = predictor.run_network([(r.mri_path, r) for r in rows])["log_p"]
    nll = -np.mean([lp[predictor.classes.index(r.diagnosis)] for lp, r in zip(
        log_p, rows, strict=True)])
    reported = json.loads((run / "metrics.json").read_text())["test"]["log_loss"]
    assert nll == pytest.approx(reported, abs=1e-5)
    again = Predictor(run / "best.pt").predict(rows[0].mri_path, rows[0])
    assert again.probabilities == probs[0].probabilities


def test_missing_modalities_still_predict(run: Path, tiny_cohort: Path) -> None:
    row = load_manifest(tiny_cohort / "manifest.csv").rows[0]
    predictor = Predictor(run / "best.pt")
    both = predictor.predict(row.mri_path, row)
    mri_only = predictor.predict(row.mri_path, None)
    record_only = predictor.predict(None, row)
    assert both.inputs_used["mri"] and both.inputs_used["record"]
    assert mri_only.inputs_used == {**mri_only.inputs_used, "mri": True, "record": False,
                                    "summary_fields": [], "tabular_fields": []}
    assert not record_only.inputs_used["mri"] and record_only.summary is not None
    assert "mmse" in both.inputs_used["label_defining_fields_used"]
    # a score the record lacks is named as not recorded, never as used
    unscored = row.model_copy(update={"mmse": None, "cdr_sb": None})
    used = predictor.predict(row.mri_path, unscored).inputs_used
    assert used["label_defining_fields_used"] == []
    assert {"mmse", "cdr_sb"} <= set(used["summary_fields_not_recorded"])
    assert "mmse" not in used["summary_fields"] and "age" in used["summary_fields"]

    # each partial prediction rests on the input it says it used
    other = load_manifest(tiny_cohort / "manifest.csv").rows[1]
    assert predictor.predict(other.mri_path, None).probabilities != mri_only.probabilities
    assert predictor.predict(None, other).probabilities != record_only.probabilities
    for p in (both, mri_only, record_only):
        assert "Research use only" in p.notice
    # an MRI-only answer of a model trained without scanner augmentation says what it may
    # rest on; answers with the record, and an augmented model's, do not carry it
    # (temperatures set off their bounds first: the tiny model's may sit on one)
    assert predictor.calibration is not None
    predictor.calibration.temperature = dict.fromkeys(predictor.calibration.temperature, 1.0)
    # the tiny model's temperatures come from a handful of validation subjects: every
    # answer says its probability is rough, naming how many
    n_val = predictor.calibration.n_fitted["record"]
    assert 0 < n_val < MIN_FIT_SUBJECTS
    rough = predictor.predict(None, row).caveats
    assert len(rough) == 1 and f"fitted on only {n_val} subjects" in rough[0]
    assert "mind its 1 caveat" in predictor.predict(None, row).uncertainty
    predictor.calibration.n_fitted = dict.fromkeys(predictor.calibration.temperature, 200)
    assert predictor.predict(row.mri_path, None).caveats == [TEXTURE_CAVEAT]
    assert predictor.predict(row.mri_path, row).caveats == []
    assert predictor.predict(None, row).caveats == []
    predictor.config.data.augment = True
    assert predictor.predict(row.mri_path, None).caveats == []
    # a temperature at its bound is said of the answers it calibrates, and only of those
    predictor.calibration.temperature["record"] = MIN_TEMPERATURE
    assert "sits at a bound" in predictor.predict(None, row).caveats[0]
    assert predictor.predict(row.mri_path, row).caveats == []
    assert row.subject_id not in (record_only.summary or "")


def test_a_model_trained_without_score_dropout_warns_on_records_without_scores(
        run: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    """Trained with score dropout (the default), no caveat; a checkpoint from before it
    existed (no such setting stored) says so, only for records without any score."""
    from mediad.data.records import COGNITIVE_SCORES
    from mediad.engine.checkpoint import load_checkpoint, save_checkpoint
    from mediad.engine.predictor import UNSCORED_CAVEAT

    row = load_manifest(tiny_cohort / "manifest.csv").rows[0]
    unscored = row.model_copy(update=dict.fromkeys(COGNITIVE_SCORES))
    assert UNSCORED_CAVEAT not in Predictor(run / "best.pt").predict(None, unscored).caveats
    ck = load_checkpoint(run / "best.pt")
    del ck["config"]["optim"]["score_dropout"]
    save_checkpoint(tmp_path / "old.pt", ck)
    old = Predictor(tmp_path / "old.pt")
    assert UNSCORED_CAVEAT in old.predict(row.mri_path, unscored).caveats
    assert UNSCORED_CAVEAT in old.predict(None, unscored).caveats
    assert UNSCORED_CAVEAT not in old.predict(row.mri_path, row).caveats
    assert UNSCORED_CAVEAT not in old.predict(row.mri_path, None).caveats


def test_resume_continues_identically(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(tiny_cohort)
    train(cfg, tmp_path / "straight", show_progress=False)
    train(cfg, tmp_path / "resumed", show_progress=False, max_epochs=2)
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 2
    train(cfg, tmp_path / "resumed", resume=True, show_progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)

    def losses(name: str) -> list[float]:
        return [json.loads(line)["train_loss"]
                for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert losses("straight") == pytest.approx(losses("resumed"), abs=1e-6)


def test_baselines_train(tiny_cohort: Path, tmp_path: Path) -> None:
    from mediad.data.records import COGNITIVE_SCORES
    from mediad.engine.predictor import UNSCORED_CAVEAT

    row = load_manifest(tiny_cohort / "manifest.csv").rows[0]
    unscored = row.model_copy(update=dict.fromkeys(COGNITIVE_SCORES))
    for kind in ("tabular", "concat", "cf_adversarial"):
        cfg = tiny_train_config(tiny_cohort, kind=kind)
        cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 1})})
        result = train(cfg, tmp_path / kind, show_progress=False)
        assert result.metrics["test"]["n"] > 0
        predictor = Predictor(tmp_path / kind / "best.pt")
        assert predictor.predict(None, row).model["kind"] == kind
        # the tabular baseline reads the scores but never hides them in training, whatever
        # its optim.score_dropout says: a record without them is outside what it learned
        caveats = predictor.predict(None, unscored).caveats
        assert (UNSCORED_CAVEAT in caveats) == (kind == "tabular"), (kind, caveats)


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(tiny_cohort)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 2})})
    path = tmp_path / "train.yaml"
    path.write_text(cfg.to_yaml())
    single = train(cfg, tmp_path / "one", show_progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mediad",
                    "train", str(path), "--out", str(tmp_path / "two")], check=True, env=env,
                   capture_output=True, timeout=600)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    one_losses = [json.loads(x)["train_loss"] for x in
                  (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two_losses = [json.loads(x)["train_loss"] for x in
                  (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert two_losses == pytest.approx(one_losses, rel=0.05)
    for split in ("val", "test"):
        assert two[split]["log_loss"] == pytest.approx(single.metrics[split]["log_loss"],
                                                       rel=0.05)


def test_bad_inputs_to_train_and_predict(run: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(MediADError, match="checkpoint not found"):
        Predictor(tmp_path / "none.pt")
    with pytest.raises(MediADError, match="is for task 'cn_mci_ad', not 'cn_ad'"):
        Predictor(run / "best.pt", task="cn_ad")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MediADError, match="not a MediAD checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {manifest: m.csv}\nmodel: {kind: mediad, hidden_size: 3}\n")
    with pytest.raises(InputError, match=r"model\.hidden_size: Extra inputs are not permitted"):
        TrainConfig.from_yaml(bad)
    bad.write_text("data: {manifest: m.csv}\nmodel: {kind: transformer}\n")
    with pytest.raises(InputError, match=r"model\.kind"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(MediADError, match="already holds a run"):
        train(tiny_train_config(tiny_cohort), run, show_progress=False)
    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(32, 32).astype(np.float32), np.eye(4)), flat)
    with pytest.raises(ImageError, match="is a 2D image"):
        Predictor(run / "best.pt").predict(flat, None)
    with pytest.raises(MediADError, match="nothing to predict from"):
        Predictor(run / "best.pt").predict(None, None)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_training_refuses_hostile_mris_by_subject(tiny_cohort: Path, tmp_path: Path) -> None:
    """A header bomb in a training manifest is refused before any MRI is loaded, naming the
    subject, and leaves no run folder behind."""
    from tests.hostile import header_bomb

    lines = (tiny_cohort / "manifest.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("mri_path")
    first = lines[1].split(",")
    first[col] = str(header_bomb(tmp_path / "bomb.nii"))
    rows = [",".join(header), ",".join(first)]
    rows += [line.replace("images/", f"{tiny_cohort}/images/", 1) for line in lines[2:]]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = tiny_train_config(tmp_path, tmp_path / "cache")
    with pytest.raises(InputError) as info:
        train(cfg, tmp_path / "run", show_progress=False)
    message = str(info.value)
    assert f"subject {first[0]}" in message and "bomb.nii" in message
    assert "declares 4000x4000x4000 voxels" in message
    assert not (tmp_path / "run").exists()


def test_learning_rate_warms_up_per_step_then_decays() -> None:
    from mediad.engine.trainer import lr_schedule

    f = lr_schedule(total_steps=100, warmup_steps=10)
    warm = [f(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] < 0.2 and f(10) == 1.0  # peak right after
    decay = [f(s) for s in range(10, 100)]
    assert decay == sorted(decay, reverse=True) and decay[-1] < 0.01
    assert lr_schedule(100, 0)(0) == 1.0  # no warm-up: the peak from the first step


def test_selection_breaks_ties_on_validation_log_loss() -> None:
    """On a few dozen validation subjects equal scores are common; the better-calibrated
    epoch of two equals is kept (the demo's epochs 12 and 15 both read 0.933)."""
    from mediad.engine.config import OptimConfig
    from mediad.engine.trainer import selection_score

    oc = OptimConfig()
    early = {"site_balanced_accuracy": 0.933, "balanced_accuracy": 0.9, "log_loss": 0.48}
    late = {**early, "log_loss": 0.34}
    assert selection_score(late, oc, 1.0) > selection_score(early, oc, 1.0)
    assert selection_score({**early, "site_balanced_accuracy": 0.95}, oc, 1.0) > \
        selection_score(late, oc, 1.0)  # the score itself still comes first
    first = OptimConfig(tie_break="first")
    assert not selection_score(late, first, 1.0) > selection_score(early, first, 1.0)
    plain = OptimConfig(selection="balanced")
    assert selection_score(late, plain, 1.0)[0] == 0.9
    # no usable validation score (one class: NaN; or no split): the training loss decides
    assert selection_score({"site_balanced_accuracy": float("nan")}, oc, 0.7) == (-0.7, 0.0)
    assert selection_score({}, oc, 0.5) > selection_score({}, oc, 0.7)


def test_a_run_from_before_the_warm_up_is_not_resumed(tiny_cohort: Path,
                                                        tmp_path: Path) -> None:
    """An older last.pt (learning rate per epoch) would restart the schedule wrongly."""
    config = tiny_train_config(tiny_cohort, kind="concat")
    train(config, tmp_path / "run", max_epochs=1, show_progress=False)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    ck["scheduler"] = {"T_max": 4, "last_epoch": 1}  # what CosineAnnealingLR stored
    torch.save(ck, tmp_path / "run" / "last.pt")
    with pytest.raises(MediADError, match="older MediAD"):
        train(config, tmp_path / "run", resume=True, show_progress=False)


def test_no_early_stop_while_validation_is_at_chance() -> None:
    """Patience counts only once the model has left chance: MediAD's image path can sit at
    chance for 10-15 epochs, and two of three unconfounded ablation runs stopped there."""
    from mediad.engine.config import OptimConfig
    from mediad.engine.trainer import CHANCE_MARGIN, should_stop

    oc = OptimConfig(patience=3, min_epochs=5)
    chance = 1 / 3
    assert should_stop(0.8, 3, 5, oc, 3, validated=True)
    assert not should_stop(0.8, 2, 5, oc, 3, validated=True)  # patience left
    assert not should_stop(0.8, 9, 4, oc, 3, validated=True)  # before min_epochs
    assert not should_stop(chance + CHANCE_MARGIN, 9, 9, oc, 3, validated=True)  # at chance
    assert should_stop(chance + CHANCE_MARGIN + 0.01, 9, 9, oc, 3, validated=True)
    assert not should_stop(0.55, 9, 9, oc, 2, validated=True)  # chance is 0.5 for two classes
    # without a validation split the score is minus the training loss: patience alone
    assert should_stop(-0.7, 3, 5, oc, 3, validated=False)


def test_selection_on_each_input_pattern(tiny_cohort: Path, tmp_path: Path, run: Path
                                         ) -> None:
    """``selection_inputs: each_pattern`` keeps the epoch with the best mean validation
    score over MRI and record, MRI only and record only, and logs each pattern's metrics;
    the default reads the answer from every input only."""
    config = tiny_train_config(tiny_cohort)
    config = config.model_copy(update={"optim": config.optim.model_copy(
        update={"selection_inputs": "each_pattern"})})
    train(config, tmp_path / "run", show_progress=False)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    for e in epochs:
        assert set(e["val_patterns"]) == {"mri+record", "mri", "record"}
        assert e["val_patterns"]["mri+record"] == e["val"]
        assert e["val_selection"]["site_balanced_accuracy"] == pytest.approx(np.mean(
            [m["site_balanced_accuracy"] for m in e["val_patterns"].values()]))
    # the patterns are really different answers (the MRI alone is not the record alone)
    assert any(e["val_patterns"]["mri"]["log_loss"] != e["val_patterns"]["record"]["log_loss"]
               for e in epochs)
    scores = [(e["val_selection"]["site_balanced_accuracy"], -e["val_selection"]["log_loss"])
              for e in epochs]
    best = json.loads((tmp_path / "run" / "metrics.json").read_text())["best_epoch"]
    assert best == epochs[scores.index(max(scores))]["epoch"]
    default = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert all("val_patterns" not in e and "val_selection" not in e for e in default)


def test_augmented_training_is_reproducible(tiny_cohort: Path, tmp_path: Path) -> None:
    """Two runs with scanner and pose augmentation train the same model: MONAI's random
    transforms start unseeded, and the first prototype refresh reads augmented images
    (every augmented run used to differ from the first epoch on)."""
    config = tiny_train_config(tiny_cohort)
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"augment": True, "augment_pose": True})})
    for name in ("a", "b"):
        train(config, tmp_path / name, show_progress=False, max_epochs=2)
    a, b = ([json.loads(line)["train_loss"] for line in (tmp_path / n / "metrics.jsonl").open()]
            for n in ("a", "b"))
    assert len(a) == 2 and a == b


def test_selection_last_keeps_the_final_epoch(tiny_cohort: Path, tmp_path: Path) -> None:
    """``selection: last`` keeps the end of the schedule, with no early stop, even where
    validation says an earlier epoch was better."""
    config = tiny_train_config(tiny_cohort, dropout=0.1)  # dropout: see validate_every
    config = config.model_copy(update={"optim": config.optim.model_copy(
        update={"selection": "last", "patience": 1, "min_epochs": 1})})
    train(config, tmp_path / "run", show_progress=False)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]  # patience 1 stopped nothing
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert best["epoch"] == 4 and json.loads((tmp_path / "run" / "metrics.json").read_text()
                                             )["best_epoch"] == 4
    assert all(torch.equal(v, last["model_state"][k]) for k, v in best["model_state"].items()
               if not k.startswith("front_door"))
    # validated every third epoch and at the last: the same network (dropout draws from
    # the generator validation advances), the log without the skipped epochs' validation
    sparse = config.model_copy(update={"optim": config.optim.model_copy(
        update={"validate_every": 3})})
    train(sparse, tmp_path / "sparse", show_progress=False)
    logged = [json.loads(line) for line in (tmp_path / "sparse" / "metrics.jsonl").open()]
    assert [e["epoch"] for e in logged if "val" in e] == [3, 4]
    assert [e["train_loss"] for e in logged] == [e["train_loss"] for e in epochs]
    again = load_checkpoint(tmp_path / "sparse" / "best.pt")["model_state"]
    assert all(torch.equal(v, again[k]) for k, v in best["model_state"].items())
    with pytest.raises(ValidationError, match="validate_every"):
        OptimConfig(validate_every=3)  # selection and early stopping read every epoch


def test_records_without_scores_are_calibrated_only_under_their_own_patterns(
        tiny_cohort: Path, tmp_path: Path) -> None:
    """Validation records that hold no score fit the temperatures of the patterns without
    scores, not those of the scored patterns (they are never answered under those)."""
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    table = pd.read_csv(cohort / "manifest.csv")
    table.loc[table.index % 3 == 0, [f for f in COGNITIVE_SCORES if f in table]] = np.nan
    table.to_csv(cohort / "manifest.csv", index=False)
    train(tiny_train_config(cohort), tmp_path / "run", show_progress=False)
    splits = Splits.load(tmp_path / "run" / "splits.json")
    val = [r for r in load_manifest(cohort / "manifest.csv").rows
           if splits.split_of(r.subject_id) == "val"]
    scored = sum(not has_no_scores(r) for r in val)
    assert 0 < scored < len(val)
    fitted = Predictor(tmp_path / "run" / "best.pt").calibration.n_fitted
    assert fitted == {"mri+record": scored, "mri": len(val), "record": scored,
                      "mri+record (no scores)": len(val), "record (no scores)": len(val)}


def test_weight_averaging_keeps_the_mean_of_the_last_epochs(tiny_cohort: Path,
                                                           tmp_path: Path) -> None:
    """``average_from`` leaves training as it is and keeps the mean of the weights from
    that epoch on; a run stopped in the middle of the averaging resumes it."""
    config = tiny_train_config(tiny_cohort)
    config = config.model_copy(update={"optim": config.optim.model_copy(
        update={"selection": "last"})})
    train(config, tmp_path / "plain", show_progress=False)
    raw4 = load_checkpoint(tmp_path / "plain" / "last.pt")["model_state"]
    averaging = config.model_copy(update={"optim": config.optim.model_copy(
        update={"average_from": 3})})
    train(averaging, tmp_path / "mean", show_progress=False, max_epochs=3)
    raw3 = load_checkpoint(tmp_path / "mean" / "last.pt")["model_state"]
    train(averaging, tmp_path / "mean", resume=True, show_progress=False)
    best = load_checkpoint(tmp_path / "mean" / "best.pt")
    mean = best["model_state"]
    names = [n for n, _ in build_model(TrainConfig.model_validate(best["config"]).model,
                                       (32, 32, 32)).named_parameters()]
    assert names and all(n in mean for n in names)
    moved = 0
    for name in names:
        torch.testing.assert_close(mean[name], (raw3[name] + raw4[name]) / 2, msg=name)
        moved += not torch.equal(raw3[name], raw4[name])
    assert moved > len(names) // 2  # the two epochs' weights differ: a mean was taken
    with pytest.raises(ValidationError, match="average_from"):
        OptimConfig(average_from=3)  # the mean is the final checkpoint: selection 'last'


def test_a_checkpoint_from_before_smoothed_resampling_keeps_its_preprocessing(
        run: Path, tmp_path: Path) -> None:
    """A model trained on linearly resampled, unsmoothed brains (preprocessing version 6
    and earlier) must see its inputs as it was trained, not with today's defaults."""
    from mediad.data.preprocess import PreprocessConfig

    ck = torch.load(run / "best.pt", weights_only=False)
    old = PreprocessConfig().model_dump()
    for key in ("interpolation", "resample_smoothing"):
        del old[key]
    ck["config"]["data"]["imaging"]["preprocess"] = old
    torch.save(ck, tmp_path / "old.pt")
    loaded = PreprocessConfig(**load_checkpoint(tmp_path / "old.pt")["config"]["data"]
                              ["imaging"]["preprocess"])
    assert (loaded.interpolation, loaded.resample_smoothing) == ("linear", 0.0)
    assert PreprocessConfig().interpolation == "bspline"  # new models: the new default
