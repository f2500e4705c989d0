"""Patient page: one MRI and one record in, a diagnosis suggestion you can question."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import streamlit as st

from mediad.data.records import ClinicalRecord, load_manifest, load_records
from mediad.engine.explain import saliency
from mediad.errors import InputError, MediADError
from mediad.paths import data_dir
from ui.common import banner, current_predictor, save_upload

st.title("Patient")
banner()
predictor = current_predictor()
state = st.session_state


def load_demo_subject() -> None:
    folder = data_dir() / "demo-shifted"
    try:
        row = load_manifest(folder / "manifest.csv").rows[0]
    except MediADError as exc:
        st.error(f"The demo cohort is not there ({exc}); run `make demo` first.")
        return
    state["mri_path"] = row.mri_path
    state["record"] = ClinicalRecord(**row.model_dump(exclude={"mri_path"}))
    state["source"] = "demo subject (held-out synthetic cohort)"
    state.pop("prediction", None)


st.button("Load a demo subject", on_click=load_demo_subject, type="secondary")

left, right = st.columns(2)
with left:
    st.subheader("MRI")
    mri = st.file_uploader("T1 MRI (NIfTI .nii or .nii.gz)", type=["nii", "gz"], key="mri_up")
    if mri is not None and state.get("mri_name") != (mri.name, mri.size):
        try:
            path = save_upload(mri, "mri")
            from mediad.data.imaging import inspect_volume

            inspect_volume(path)
            state["mri_path"], state["mri_name"] = str(path), (mri.name, mri.size)
            state.pop("prediction", None)
        except MediADError as exc:
            st.error(f"This MRI cannot be used: {getattr(exc, 'reason', exc)}")
    if state.get("mri_path"):
        st.caption("MRI loaded." if "demo" not in state.get("source", "") else
                   "Demo MRI loaded.")

with right:
    st.subheader("Clinical record")
    form_tab, json_tab, csv_tab = st.tabs(["Form", "JSON file", "CSV row (ADNIMERGE)"])
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

        def pick(col: object, label: str, value: bool | None) -> str:
            return col.selectbox(label, yn, index=0 if value is None else (1 if value else 2))  # type: ignore[attr-defined]

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
            try:
                from pydantic import ValidationError

                state["record"] = ClinicalRecord(**values)
                state.pop("prediction", None)
                st.success("Record accepted.")
            except ValidationError as exc:
                for e in exc.errors():
                    st.error(f"{e['loc'][0]} = {e.get('input')!r}: {e['msg']}")
    for tab, kind in ((json_tab, "json"), (csv_tab, "csv")):
        with tab:
            up = st.file_uploader(f"One record ({kind.upper()})", type=[kind], key=f"rec_{kind}")
            if up is not None and state.get(f"rec_{kind}_name") != (up.name, up.size):
                state[f"rec_{kind}_name"] = (up.name, up.size)
                try:
                    path = save_upload(up, "record")
                    rows = load_records(path).records()
                    if len(rows) != 1:
                        raise MediADError(f"expected one record, found {len(rows)}; use the "
                                          "Cohort page for tables")
                    state["record"] = rows[0]
                    state.pop("prediction", None)
                    st.success("Record accepted.")
                except InputError as exc:
                    st.error("This record has problems:")
                    for issue in exc.issues:
                        if issue.severity == "error":
                            where = ", ".join(x for x in (issue.field and f"{issue.field}="
                                                          f"{issue.value!r}",) if x)
                            st.error(f"{where}: {issue.message}" if where else issue.message)
                except MediADError as exc:
                    st.error(str(exc))

record: ClinicalRecord | None = state.get("record")
mri_path: str | None = state.get("mri_path")
st.divider()
if predictor is None:
    st.stop()
if st.button("Predict", type="primary", disabled=not (record or mri_path)):
    try:
        state["prediction"] = predictor.predict(mri_path, record)
    except MediADError as exc:
        st.error(f"Cannot predict: {getattr(exc, 'reason', exc)}")
if not (record or mri_path):
    st.info("Load a demo subject, or give an MRI and/or a record, then press Predict.")

pred = state.get("prediction")
if pred is not None:
    st.subheader("Probabilities")
    table = pd.DataFrame({"with causal intervention": pred.probabilities,
                          "intervention switched off": pred.probabilities_intervention_off})
    c1, c2 = st.columns([2, 1])
    fig, ax = plt.subplots(figsize=(6, 2.6))
    table.plot.barh(ax=ax, xlim=(0, 1), color=["#b22222", "#9ab"])
    ax.invert_yaxis()
    ax.set_xlabel("probability")
    c1.pyplot(fig)
    plt.close(fig)
    c1.dataframe(table.style.format("{:.3f}"), width="stretch")
    top = max(pred.probabilities.values())
    entropy = -sum(p * np.log(p) for p in pred.probabilities.values() if p > 0)
    c2.metric("Suggestion", pred.predicted, f"p = {top:.2f}")
    c2.caption(f"Without the intervention: {pred.predicted_intervention_off}. Entropy "
               f"{entropy:.2f} nats (max {np.log(len(pred.classes)):.2f}).")
    if top < 0.6:
        c2.warning("Uncertain: no class reaches 0.6.")
    c2.caption("Trained on synthetic data: these are not calibrated clinical risks.")
    used = pred.inputs_used
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

if mri_path:
    st.subheader("MRI viewer")
    method = st.radio("Saliency", ["none", "gradcam", "occlusion"], horizontal=True,
                      help="monai.visualize: GradCAM on the last encoder block, or occlusion "
                      "sensitivity (slower).")
    try:
        if method != "none" and pred is not None and predictor.use_image:
            key = (mri_path, method, predictor.path)
            if state.get("saliency_key") != key:
                with st.spinner("Computing saliency…"):
                    state["saliency"] = saliency(predictor, mri_path, record, method)
                    state["saliency_key"] = key
            volume, heat, explained = state["saliency"]
        else:
            from mediad.data.imaging import load_volume

            volume = load_volume(mri_path, transforms=predictor.transforms)[0].numpy()
            heat, explained = None, None
    except MediADError as exc:
        st.error(str(exc))
        st.stop()
    shape = volume.shape
    c = st.columns(4)
    ix = c[0].slider("Sagittal (x)", 0, shape[0] - 1, shape[0] // 2)
    iy = c[1].slider("Coronal (y)", 0, shape[1] - 1, shape[1] // 2)
    iz = c[2].slider("Axial (z)", 0, shape[2] - 1, shape[2] // 2)
    lo, hi = c[3].slider("Intensity window", 0.0, 1.0, (0.0, 1.0))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, img, h, title in ((axes[0], volume[ix], None if heat is None else heat[ix],
                               "sagittal"),
                              (axes[1], volume[:, iy], None if heat is None else heat[:, iy],
                               "coronal"),
                              (axes[2], volume[:, :, iz], None if heat is None else
                               heat[:, :, iz], "axial")):
        ax.imshow(img.T, origin="lower", cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-3))
        if h is not None:
            ax.imshow(h.T, origin="lower", cmap="hot", alpha=0.35, vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    st.pyplot(fig)
    plt.close(fig)
    if explained:
        st.caption(f"Saliency ({method}) for the predicted class {explained}, on the "
                   "preprocessed volume (RAS, network grid).")
