"""Patient page: one MRI and one record in, a diagnosis suggestion you can question.

State rules: an input is in use only while what the page shows says so. A refused upload
clears the input it would have replaced, and removing an upload (×) clears what it gave, so
Predict never uses a file the user no longer sees.
"""

from __future__ import annotations

import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import streamlit as st
from pydantic import ValidationError

from mediad.data.imaging import load_volume
from mediad.data.preprocess import template_brain
from mediad.data.records import ClinicalRecord, load_manifest, load_records
from mediad.engine.explain import saliency
from mediad.engine.predictor import CONFIDENT, PreparedMRI, probability_text
from mediad.errors import MediADError
from mediad.paths import data_dir
from ui.common import (
    Upload,
    banner,
    current_predictor,
    model_version,
    on_disk,
    read_upload,
    show_error,
    upload_token,
)

st.title("Patient")
banner()
predictor = current_predictor()
state = st.session_state
ENCODINGS = ["utf-8", "latin-1", "cp1252"]


def forget(*keys: str) -> None:
    if "mri" in keys:
        keys = (*keys, "prepared", "preview")
    for key in (*keys, "prediction", "saliency", "saliency_key"):
        state.pop(key, None)


# The MRI as another model prepared it (its grid and preprocessing can differ), and that
# model's answer, are not this one's: choosing another model in the sidebar prepares the
# MRI again and drops the answer.
if state.get("prepared_by") != (model_key := predictor and model_version(predictor.path)):
    forget("prepared", "preview")
    state["prepared_by"] = model_key


def mid_planes(volume: np.ndarray) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices through the middle of a RAS volume."""
    i, j, k = (s // 2 for s in volume.shape)
    return [volume[i], volume[:, j], volume[:, :, k]]


def prepare(source: Upload | str, label: str) -> bool:
    """Bring the MRI to the network's input once, as the model was trained (brain
    extraction and registration to MNI152, with a status while it runs). An upload is
    preprocessed inside its private temporary folder, so nothing of it stays on disk; the
    page keeps the result and a preview in memory. Returns whether the MRI is usable."""
    with on_disk(source) as path:
        try:
            if predictor is None:  # nothing to predict with: show the upload as it is
                state["volume"], state["prepared"] = load_volume(path), None
                return True
            if predictor.preprocess is None or state.get("mni_inputs"):  # MNI space already
                state["prepared"] = PreparedMRI(load_volume(path,
                                                            transforms=predictor.transforms))
                state["volume"] = state["prepared"].tensor
                return True
            cache = path.parent / "preprocessed" if isinstance(source, Upload) else None
            with st.status("Preprocessing the MRI: brain extraction (deepbet) and "
                           "registration to MNI152; a few seconds…") as status:
                prepared = predictor.load_image(path, cache_dir=cache)
                result = prepared.preprocessed
                assert result is not None
                raw = nib.as_closest_canonical(nib.load(str(path)))
                raw_data = np.asarray(raw.dataobj, dtype=np.float32).reshape(raw.shape[:3])
                mask = (np.asarray(nib.load(result.mask).dataobj) > 0 if result.mask
                        else np.ones(raw_data.shape, bool))
                brain = np.asarray(nib.load(result.image).dataobj, dtype=np.float32)
                status.update(label="Preprocessed: " + " → ".join(
                    result.qc.steps).replace("_", " "), state="complete")
        except MediADError as exc:
            state["mri_error"] = show_error("This MRI cannot be used: ", exc, path, label)
            return False
    template_mask = template_brain(predictor.preprocess.output_spacing)[1]
    state["preview"] = {"raw": mid_planes(raw_data), "mask": mid_planes(mask),
                        "brain": mid_planes(brain), "template": mid_planes(template_mask),
                        "qc": result.qc}
    state["prepared"] = prepared._replace(preprocessed=None)  # its files are gone
    state["volume"] = prepared.tensor
    return True


def load_demo_subject() -> None:
    folder = data_dir() / "demo-shifted"
    try:
        rows = load_manifest(folder / "manifest.csv").rows
        # a subject with both inputs (the cohort also has MRI-less and score-less ones)
        row = next((r for r in rows if r.mri_path and r.mmse is not None), rows[0])
    except (MediADError, IndexError) as exc:
        state["demo_error"] = ("The held-out demo cohort is not there yet: `mediad app` "
                               "builds it in the background after the app starts (about a "
                               f"minute); try again shortly. ({exc})")
        return
    forget("mri", "volume", "record", "record_table", "record_from", "mri_error")
    state["mri"], state["mri_label"] = row.mri_path, "demo MRI (held-out synthetic cohort)"
    state["record"] = ClinicalRecord(**row.model_dump(exclude={"mri_path"}))
    state["record_from"] = "demo"


st.button("Load a demo subject", on_click=load_demo_subject, type="secondary")
if "demo_error" in state:
    st.error(state.pop("demo_error"))


def take_mri(uploaded: Any) -> None:
    """A new upload replaces the MRI; a refused one or a removal leaves none in use."""
    forget("mri", "volume", "mri_error")
    if uploaded is None:
        return
    try:
        upload = read_upload(uploaded, "mri")
    except MediADError as exc:
        state["mri_error"] = show_error("This MRI cannot be used: ", exc)
        return
    if prepare(upload, upload.name):
        state["mri"], state["mri_label"] = upload, upload.name


def take_record_file(uploaded: Any, kind: str, encoding: str) -> None:
    """Read a record file; a table of several rows offers a subject/visit picker."""
    if state.get("record_from") == kind or uploaded is not None:
        forget("record", "record_table", "record_from")
    state.pop(f"rec_{kind}_error", None)
    if uploaded is None:
        return
    try:
        upload = read_upload(uploaded, "record")
    except MediADError as exc:
        state[f"rec_{kind}_error"] = show_error("This record cannot be used: ", exc)
        return
    with on_disk(upload) as path:
        try:
            table = load_records(path, encoding=encoding)
        except MediADError as exc:
            state[f"rec_{kind}_error"] = show_error("This record has problems:\n", exc, path,
                                                    upload.name)
            return
    records = table.records()
    state["record_from"] = kind
    if len(records) == 1:
        state["record"] = records[0]
    else:
        state["record_table"] = records


left, right = st.columns(2)
with left:
    st.subheader("MRI")
    mri = st.file_uploader("T1 MRI (NIfTI .nii or .nii.gz)", type=["nii", "gz"], key="mri_up")
    mni = st.checkbox("Already brain-extracted and registered to MNI152 (skip preprocessing)",
                      key="mni_inputs", help="Raw T1s (whole head, any pose) are extracted "
                      "and registered first, as the model was trained; tick this only for "
                      "volumes that went through such a pipeline already.")
    if state.setdefault("mni_seen", mni) != mni:  # the same MRI, prepared the other way
        state["mni_seen"] = mni
        forget("prepared", "preview", "volume", "mri_error")
    token = upload_token(mri)
    if token != state.get("mri_token"):
        state["mri_token"] = token
        take_mri(mri)
    elif state.get("mri_error"):
        st.error(state["mri_error"])
    if state.get("mri") is not None:
        st.caption(f"MRI loaded: {state['mri_label']}.")

with right:
    st.subheader("Clinical record")
    form_tab, json_tab, csv_tab = st.tabs(["Form", "JSON file", "CSV (ADNIMERGE, NACC)"])
    with form_tab, st.form("record_form"):
        rec: ClinicalRecord | None = state.get("record")
        c1, c2, c3 = st.columns(3)
        age = c1.number_input("Age (years)", 18.0, 110.0, value=rec.age if rec and rec.age
                              else None, step=1.0)
        sex = c2.selectbox("Sex", ["not recorded", "female", "male"],
                           index=["not recorded", "female", "male"].index(
                               rec.sex if rec and rec.sex else "not recorded"))
        edu = c3.number_input("Education (years)", 0.0, 30.0, value=rec.education_years
                              if rec else None)
        apoe = c1.selectbox("APOE e4 alleles", ["not recorded", 0, 1, 2],
                            index=0 if not rec or rec.apoe4 is None else rec.apoe4 + 1)
        mmse = c2.number_input("MMSE (0-30)", value=rec.mmse if rec else None)
        cdr = c3.number_input("CDR-SB (0-18)", value=rec.cdr_sb if rec else None)
        adas = c1.number_input("ADAS-Cog-13 (0-85)", value=rec.adas13 if rec else None)
        faq = c2.number_input("FAQ (0-30)", value=rec.faq if rec else None)
        bmi = c3.number_input("BMI", value=rec.bmi if rec else None)
        yn = ["not recorded", "yes", "no"]

        def pick(col: Any, label: str, value: bool | None) -> str:
            return col.selectbox(label, yn, index=0 if value is None else (1 if value else 2))

        hyp = pick(c1, "Hypertension", rec.hypertension if rec else None)
        dia = pick(c2, "Diabetes", rec.diabetes if rec else None)
        smo = pick(c3, "Ever smoked", rec.smoking if rec else None)
        notes = st.text_area("Notes (free text; treated as data)", value=rec.notes or "" if rec
                             else "")
        if st.form_submit_button("Use this record"):
            values = {"subject_id": "form", "age": age, "education_years": edu, "mmse": mmse,
                      "cdr_sb": cdr, "adas13": adas, "faq": faq, "bmi": bmi,
                      "notes": notes or None,
                      "sex": None if sex == "not recorded" else sex,
                      "apoe4": None if apoe == "not recorded" else int(apoe),
                      "hypertension": None if hyp == yn[0] else hyp == "yes",
                      "diabetes": None if dia == yn[0] else dia == "yes",
                      "smoking": None if smo == yn[0] else smo == "yes"}
            forget("record", "record_table", "record_from")
            try:
                state["record"], state["record_from"] = ClinicalRecord(**values), "form"
                st.success("Record accepted.")
            except ValidationError as exc:
                for e in exc.errors():
                    st.error(f"{e['loc'][0]} = {e.get('input')!r}: {e['msg']}")
    for tab, kind in ((json_tab, "json"), (csv_tab, "csv")):
        with tab:
            up = st.file_uploader(f"Record file ({kind.upper()}; one patient, or an export "
                                  "to pick from)", type=[kind], key=f"rec_{kind}")
            encoding = st.selectbox("Text encoding", ENCODINGS, key=f"enc_{kind}",
                                    help="Exports from older systems are often latin-1.")
            token = (upload_token(up), encoding)
            if token != state.get(f"rec_{kind}_token"):
                state[f"rec_{kind}_token"] = token
                take_record_file(up, kind, encoding)
            elif state.get(f"rec_{kind}_error"):
                st.error(state[f"rec_{kind}_error"])
            table = state.get("record_table") if state.get("record_from") == kind else None
            if table:
                labels = [f"{r.subject_id} / {r.visit}" for r in table]
                choice = st.selectbox(f"This file holds {len(table)} records: subject / visit",
                                      range(len(table)), format_func=labels.__getitem__,
                                      key=f"pick_{kind}")
                if state.get("record") is not table[choice]:
                    forget("record")
                    state["record"] = table[choice]
            if state.get("record_from") == kind and state.get("record") is not None:
                st.success("Record accepted.")

def show_preprocessing(preview: dict[str, Any], smoothing: float = 0.0) -> None:
    """What preprocessing did: the upload with the brain mask's outline, the brain on the
    template grid with the template brain's outline, and the QC figures.

    Args:
        preview: the slices and QC record :func:`prepare` kept.
        smoothing: the model's ``resample_smoothing``, so that a softer registered brain
            is explained rather than taken for a fault.
    """
    qc = preview["qc"]
    st.subheader("Preprocessing")
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.4), layout="constrained")
    rows = (("raw", "mask", "as uploaded (native space); outline: brain mask"),
            ("brain", "template", "registered to MNI152; outline: template brain"))
    for row, (image, outline, title) in zip(axes, rows, strict=True):
        for ax, img, line, plane in zip(row, preview[image], preview[outline],
                                        ("sagittal", "coronal", "axial"), strict=True):
            ax.imshow(img.T, origin="lower", cmap="gray")
            ax.contour(line.T.astype(float), levels=[0.5], colors="#ff4040", linewidths=0.8)
            ax.set_title(f"{plane}", fontsize=9)
            ax.set_axis_off()
        row[0].text(-0.08, 0.5, title, transform=row[0].transAxes, rotation=90, fontsize=9,
                    ha="right", va="center")
    st.pyplot(fig)
    plt.close(fig)
    if smoothing > 0:
        st.caption(f"The registered brain is smoothed on purpose (Gaussian, {smoothing:g} "
                   "voxel) before its one resampling, so that where the template grid falls "
                   "does not change the texture the model reads; the model sees this brain.")
    c = st.columns(4)
    # short values: a four-column row on a laptop cut "already done" to "already d…"
    extraction = ("deepbet" if "brain_extraction" in qc.steps else "not needed"
                  if "already_brain_extracted" in qc.steps else "off")
    why = {"deepbet": "deepbet took the skull and scalp away.",
           "not needed": "The upload was already brain-extracted (detected).",
           "off": "This model's preprocessing has brain extraction off."}[extraction]
    c[0].metric("Brain extraction", extraction, help=why)
    c[1].metric("Brain volume", f"{qc.brain_volume_ml:.0f} mL" if qc.brain_volume_ml else "-",
                help="Plausible adult range 800-2600 mL.")
    c[2].metric("Overlap with template", f"{qc.overlap:.2f}" if qc.overlap else "-",
                help="Dice of the registered brain's outline with the MNI152 brain mask (≥ 0.85).")
    c[3].metric("Similarity", f"{qc.similarity:.2f}" if qc.similarity else "-",
                help="Correlation with the template inside its brain (real brains: about "
                "0.4 and above).")
    st.caption("Steps: " + " → ".join(qc.steps).replace("_", " "))
    for flag in qc.flags:
        st.warning(f"Quality control: {flag}. Treat any answer for this MRI with caution.")


record: ClinicalRecord | None = state.get("record")
mri_in: Upload | str | None = state.get("mri")
if (mri_in is not None and predictor is not None and state.get("prepared") is None
        and not state.get("mri_error")):
    if not prepare(mri_in, state.get("mri_label", "MRI")):  # the demo subject's file
        forget("mri")
        mri_in = None
if state.get("preview"):
    show_preprocessing(state["preview"], getattr(predictor and predictor.preprocess,
                                                 "resample_smoothing", 0.0))
st.divider()
if predictor is None:
    st.stop()
if st.button("Predict", type="primary", disabled=not (record or mri_in)):
    try:
        state["prediction"] = predictor.predict(state.get("prepared") if mri_in is not None
                                                else None, record)
    except MediADError as exc:
        show_error("Cannot predict: ", exc)
if not (record or mri_in):
    st.info("Load a demo subject, or give an MRI and/or a record, then press Predict.")

pred = state.get("prediction")
if pred is not None:
    st.subheader("Probabilities")
    shown = {c: min(max(p, 0.01), 0.99) for c, p in pred.probabilities.items()}
    c1, c2 = st.columns([2, 1])
    fig, ax = plt.subplots(figsize=(6, 2.4))
    pd.Series(shown).plot.barh(ax=ax, xlim=(0, 1), color="#b22222")
    ax.invert_yaxis()
    ax.set_xlabel("probability" + (" (calibrated)" if pred.calibrated else ""))
    c1.pyplot(fig)
    plt.close(fig)
    c1.dataframe(pd.DataFrame({"probability": [probability_text(p) for p in
                                               pred.probabilities.values()]},
                              index=list(pred.probabilities)), width="stretch")
    top = max(pred.probabilities.values())
    c2.metric("Suggestion", pred.predicted, probability_text(top), delta_color="off")
    if pred.flags:
        c2.error(pred.uncertainty)
    elif top < CONFIDENT:
        c2.warning(pred.uncertainty)
    else:
        c2.info(pred.uncertainty)
    c2.caption("Trained on synthetic data: not a clinical risk, even when calibrated.")
    used = pred.inputs_used
    if used["mri"] != used["record"]:
        st.warning(f"This answer rests on the {'MRI' if used['mri'] else 'record'} alone: "
                   f"the {'record' if used['mri'] else 'MRI'} was not given.")
    if pred.input_pattern.endswith("(no scores)"):
        st.info("The record holds none of the cognitive scores (MMSE, CDR-SB, ADAS-Cog-13, "
                "FAQ): the answer rests on the rest of it"
                + (" and the MRI" if used["mri"] else "") + ", and is calibrated on records "
                "without them, which settle the question far less often.")
    for caveat in pred.caveats:
        st.warning(f"Caveat: {caveat}.")
    st.write("**Inputs used:** " + ", ".join(k for k in ("mri", "record") if used[k]).replace(
        "mri", "MRI") + (f"; label-defining fields: {', '.join(used['label_defining_fields_used'])}"
                         if used["label_defining_fields_used"] else ""))
    if pred.summary:
        st.subheader("Clinical summary")
        prov = pred.summary_provenance or {}
        st.code(pred.summary, language=None, wrap_lines=True)
        st.caption(f"Source: {prov.get('source')} ({prov.get('backend')}, model "
                   f"{prov.get('model_id')}, template {prov.get('template_version')}); "
                   f"fields left out: {', '.join(prov.get('fields_left_out', [])) or 'none'}")
        for reason in prov.get("fallback_reasons", []):
            st.caption(f"Fallback: {reason}")
    with st.expander("Full prediction (JSON)"):
        st.code(json.dumps(pred.model_dump(), indent=2), language="json")


def show_volume(volume: np.ndarray, heat: np.ndarray | None) -> None:
    """Three planes in neurological convention (subject's left on the screen's left), with
    orientation letters and a colour bar for the saliency overlay."""
    shape = volume.shape
    c = st.columns(4)
    ix = c[0].slider("Sagittal (x)", 0, shape[0] - 1, shape[0] // 2)
    iy = c[1].slider("Coronal (y)", 0, shape[1] - 1, shape[1] // 2)
    iz = c[2].slider("Axial (z)", 0, shape[2] - 1, shape[2] // 2)
    lo, hi = c[3].slider("Intensity window", 0.0, 1.0, (0.0, 1.0))
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 4), layout="constrained")
    planes = ((volume[ix], None if heat is None else heat[ix], "sagittal", ("P", "A")),
              (volume[:, iy], None if heat is None else heat[:, iy], "coronal", ("L", "R")),
              (volume[:, :, iz], None if heat is None else heat[:, :, iz], "axial",
               ("L", "R")))
    overlay = None
    for ax, (img, h, title, (low, high)) in zip(axes, planes, strict=True):
        # RAS arrays: index 0 is the subject's left (x) or back (y); drawn at the left edge
        ax.imshow(img.T, origin="lower", cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-3))
        if h is not None:
            overlay = ax.imshow(h.T, origin="lower", cmap="hot", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        for x, text in ((0.02, low), (0.98, high)):
            ax.text(x, 0.5, text, transform=ax.transAxes, color="yellow", fontsize=12,
                    fontweight="bold", ha="left" if x < 0.5 else "right", va="center")
    if overlay is not None:
        fig.colorbar(overlay, ax=axes, shrink=0.8, label="saliency (0 = none, 1 = most)")
    st.pyplot(fig)
    plt.close(fig)


volume = state.get("volume")
if mri_in is not None and predictor is not None:
    st.subheader("MRI viewer")
    method = st.radio("Saliency", ["none", "gradcam", "occlusion"], horizontal=True,
                      help="monai.visualize: GradCAM on the last encoder block (about a "
                      "second), or occlusion sensitivity (tens of seconds, with a progress "
                      "bar).")
    heat = explained = None
    try:
        if method != "none" and pred is not None and predictor.use_image:
            key = (state.get("mri_label"), method, predictor.path, id(record))
            if state.get("saliency_key") != key:
                bar = st.progress(0.0, text=f"Computing {method} saliency…")
                state["saliency"] = saliency(
                    predictor, state["prepared"], record, method,  # type: ignore[arg-type]
                    progress=lambda d, t: bar.progress(d / max(t, 1),
                                                       text=f"{method}: {d}/{t}"))
                state["saliency_key"] = key
                bar.empty()
            _, heat, explained = state["saliency"]
    except MediADError as exc:
        show_error("", exc)
        st.stop()
    show_volume(volume[0].numpy(), heat)
    if explained:
        st.caption(f"Saliency ({method}) for the predicted class {explained}, on the "
                   "preprocessed volume (RAS, network grid). Letters mark the subject's "
                   "right (R), left (L), anterior (A) and posterior (P).")
