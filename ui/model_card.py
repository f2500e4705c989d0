"""Model card: what the loaded model is, what it was trained on, how well, and its limits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from mediad.engine.calibration import MIN_FIT_SUBJECTS
from mediad.errors import MediADError
from mediad.experiments.demo import LABEL_BLIND_FOLDER, ensure_demo_model
from ui.common import banner, current_predictor, models_dir, show_error

PATTERN_NAMES = {"mri+record": "MRI and record", "mri": "MRI only", "record": "record only",
                 "mri+record (no scores)": "MRI and record without scores",
                 "record (no scores)": "record without scores only"}

st.title("Model card")
banner()
predictor = current_predictor()
if predictor is None:
    st.stop()
ck, cfg = predictor.ck, predictor.config
st.subheader("Provenance")
st.table(pd.Series({**predictor.model_info(), "classes": ", ".join(predictor.classes),
                    "summary fields": ", ".join(ck.get("summary_fields") or []) or "none",
                    "training subjects": len(ck.get("train_subject_hashes", []))},
                   name="value").astype(str))  # one type per column, as Arrow needs
st.subheader("Inputs")
inputs = predictor.inputs()
st.table(pd.Series(inputs, name="used"))
if inputs["label-defining scores"] != "none (label-blind)":
    st.caption("This model reads MMSE or CDR-SB, which define the diagnosis in ADNI: its "
               "accuracy says little about what the MRI and the rest of the record add. "
               "Compare with a label-blind model (`mediad demo --label-blind`, or below).")
    # built beside the demo model, in the folder the sidebar lists models from
    if not (models_dir() / LABEL_BLIND_FOLDER / "best.pt").is_file() and st.button(
            "Build the label-blind demo model (a few minutes)"):
        try:
            with st.spinner("Training the label-blind demo model on the demo cohort..."):
                ensure_demo_model(models_dir(), label_blind=True, show_progress=False)
            st.success("Built. Choose it in the sidebar's model list.")
        except MediADError as exc:
            show_error("Could not build the label-blind demo model: ", exc)
st.subheader("Training data")
card = Path(cfg.data.manifest).parent / "dataset_card.md"
if card.is_file():
    with st.expander("Dataset card of the training cohort", expanded=False):
        st.markdown(card.read_text(encoding="utf-8"))
else:
    st.write(f"Manifest: `{cfg.data.manifest}` (no dataset card found beside it).")
st.subheader("Metrics (held-out split of the training cohort)")
metrics = ck.get("metrics", {})
splits = {k: metrics[k] for k in ("val", "test") if isinstance(metrics.get(k), dict)}
if splits:
    st.dataframe(pd.DataFrame(splits).T, width="stretch")
if predictor.calibration is not None:
    cal = predictor.calibration
    # the training run's test ECE belongs to the temperatures it fitted, not to refitted ones
    tested = metrics.get("test_calibrated", {}) if cal.fitted_on == "validation split" else {}
    st.subheader("Calibration per input pattern")
    table = {PATTERN_NAMES.get(p, p): {
        "temperature": t,
        "class bias": " / ".join(f"{b:+.2f}" for b in cal.bias[p]) if p in cal.bias else "none",
        "fitted on (subjects)": cal.n_fitted.get(p, cal.n_validation),
        "fit ECE before": cal.ece_before.get(p),
        "fit ECE after": cal.ece_after.get(p),
        **({"test n": tested[p]["n"], "test balanced accuracy": tested[p]["balanced_accuracy"],
            "test ECE before": tested[p]["ece_before"], "test ECE after": tested[p]["ece_after"]}
           if p in tested else {})} for p, t in cal.temperature.items()}
    st.dataframe(pd.DataFrame(table).T, width="stretch")
    where = (f"the {cal.n_validation} validation subjects" if cal.fitted_on ==
             "validation split" else cal.fitted_on + " (`mediad calibrate`)")
    bias = (f" A class bias (per class, in the order {' / '.join(predictor.classes)}) is "
            "added after the temperature: on the recalibration cohort those answers leaned "
            "towards one class as a whole (`mediad calibrate --class-bias`); it is that "
            "population's correction." if cal.bias else "")
    st.caption(f"Each temperature was fitted on {where}; the 'fit ECE' columns are read on "
               f"those subjects.{bias} ECE on a few dozen subjects is noisy (see the Cohort "
               "page's floor).")
    if rough := cal.roughly_fitted():
        st.warning(f"Temperatures fitted on fewer than {MIN_FIT_SUBJECTS} subjects ("
                   + ", ".join(f"{PATTERN_NAMES.get(p, p)}: {n}" for p, n in rough.items())
                   + ") are rough (the demo model's both-input temperature, fitted on 22 "
                   "subjects drawn from 400 new ones, ranged from about 0.2 to 0.8), and "
                   "answers with these inputs say so. `mediad calibrate` refits them on a "
                   "labelled cohort of your own.")
    for p in cal.at_bound():
        st.warning(f"The {PATTERN_NAMES.get(p, p)} temperature sits at a bound of its search "
                   f"({cal.temperature[p]:g}): the subjects it was fitted on could not pin it "
                   "down (no errors to learn from, or no signal), so these probabilities deserve "
                   "less trust than the others.")
st.subheader("Intended use and limits")
st.markdown("""
- **Research use only.** Not a medical device; not for diagnosis or any clinical decision.
- Trained on **synthetic** subjects (MediAD's structural causal model on the MNI152 template)
  unless you trained it on your own data. Real scanners, protocols and populations differ.
- If MMSE or CDR-SB were inputs, accuracy is inflated: ADNI defines the diagnosis partly from
  them.
- Probabilities are calibrated per input pattern (MRI and record, MRI only, record only) by
  a temperature fitted on the validation split, or on a labelled cohort of your own
  (`mediad calibrate`); they are still not clinical risks. Check the reliability diagram
  of a cohort evaluation, above all on a shifted cohort.
- The causal head adjusts for the confounders it was given (age, sex, vascular risk; scanner
  through the front door). It cannot remove confounding it never saw.
- Summaries never contain the diagnosis or identifiers; free-text notes are quoted as data.
""")
if cfg.model.inputs[0] and not cfg.data.augment:
    st.warning("Trained without scanner augmentation: from an MRI alone, this model can "
               "read the scanner rather than the anatomy. The demo recipe trained so read "
               "it: its MRI-only answers were at chance on a cohort whose site-diagnosis "
               "link is reversed, and changed between two scans of one brain by up to 0.66 "
               "(README, \"Pose\"). The demo and reference models train with scanner "
               "augmentation.")
if cfg.model.inputs[0] and not cfg.data.augment_pose:
    st.info("Trained without pose augmentation: from an MRI alone, a brain moved in the "
            "scanner (registered again) changed the demo model's answer by up to 0.15, "
            "where the reference model, trained with it, changed by up to 0.052; with the "
            "record, both by at most 0.05 (README, \"Pose\").")
if cfg.model.kind == "tabular":
    st.warning("This tabular baseline's checkpoint holds its training matrix (numeric record "
               "fields, no ids, rows shuffled): scikit-learn models cannot be restored "
               "without unpickling code, so it refits on load. Share it only as you would "
               "share the training records.")
else:
    st.caption("Training subjects are stored as salted hashes: the checkpoint cannot list "
               "who was in the training data.")
st.subheader("Configuration")
st.code(cfg.to_yaml(), language="yaml")
