"""Cohort page: evaluate the model on a manifest; metrics with CIs, plots, downloads.

An uploaded manifest's MRI paths are relative to the data folder, as the page says; absolute
paths and paths that leave the folder are refused (a server must not read arbitrary files),
and every path problem is listed before the run. The upload stays in memory; evaluation
results go to ``<data folder>/evaluations/``, and a refused run leaves nothing there.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pandas as pd
import streamlit as st

from mediad.data.records import load_manifest
from mediad.errors import LeakageError, MediADError
from mediad.experiments.evaluation import evaluate
from mediad.paths import data_dir
from ui.common import (
    Upload,
    banner,
    current_predictor,
    model_label,
    model_version,
    on_disk,
    read_upload,
    show_error,
    upload_token,
    user_message,
)

st.title("Cohort evaluation")
banner()
predictor = current_predictor()
state = st.session_state
root = data_dir()
manifests = sorted(root.glob("**/manifest.csv")) if root.is_dir() else []
manifests = [m for m in manifests if "runs" not in m.parts]
choice = st.selectbox("Manifest under the data folder", [None, *manifests],
                      format_func=lambda p: "—" if p is None else str(p.relative_to(root)))
uploaded = st.file_uploader(f"…or upload a manifest CSV whose mri_path values are relative "
                            f"to the data folder ({root})", type=["csv"], key="cohort_up")


def check_upload(item: Upload) -> list[str]:
    """Every problem of an uploaded manifest, paths included, before anything runs."""
    with on_disk(item) as path:
        try:
            table = load_manifest(path, strict=False, base_dir=root, confine=True)
        except MediADError as exc:
            return [user_message(exc, path, item.name)]
        return [user_message(MediADError(i.describe()), path, item.name)
                for i in table.errors]


token = upload_token(uploaded)
if token != state.get("cohort_token"):
    state["cohort_token"] = token
    state.pop("cohort_upload", None)
    state["cohort_problems"] = []
    if uploaded is not None:
        try:
            item = read_upload(uploaded, "record")
            state["cohort_problems"] = check_upload(item)
            if not state["cohort_problems"]:
                state["cohort_upload"] = item
        except MediADError as exc:
            state["cohort_problems"] = [user_message(exc)]
problems: list[str] = state.get("cohort_problems", [])
if problems:
    st.error(f"This manifest cannot be evaluated ({len(problems)} problem(s)):\n\n"
             + "\n".join(f"- {p}" for p in problems[:30]))
upload: Upload | None = state.get("cohort_upload")
source: Upload | Path | None = upload if uploaded is not None else choice
force = st.checkbox("Evaluate even if subjects were in the training data (the report will "
                    "say so)")
if predictor is not None and st.button("Run evaluation", type="primary",
                                       disabled=source is None):
    out = root / "evaluations" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    bar = st.progress(0.0, text="Predicting…")
    try:
        with on_disk(source) as path:  # type: ignore[arg-type]
            evaluate(predictor.path, path, out, force=force, n_bootstrap=300,
                     progress=lambda d, t: bar.progress(d / max(t, 1),
                                                        text=f"Predicted {d}/{t}"),
                     base_dir=root if isinstance(source, Upload) else None,
                     confine=isinstance(source, Upload),
                     manifest_name=source.name if isinstance(source, Upload) else None)
        previous = state.get("cohort_out")
        state["cohort_out"] = str(out)
        state["cohort_model"] = model_version(predictor.path)
        if previous and Path(previous) != out:
            shutil.rmtree(previous, ignore_errors=True)  # one result per session is kept
    except LeakageError as exc:
        shutil.rmtree(out, ignore_errors=True)
        show_error("Refused: ", exc)
    except MediADError as exc:
        shutil.rmtree(out, ignore_errors=True)
        show_error("Cannot evaluate: ", exc)
    bar.empty()

out_dir = state.get("cohort_out")
if out_dir and Path(out_dir).is_dir():
    out = Path(out_dir)
    made_by = state.get("cohort_model", ("", 0, 0))
    st.subheader(f"Results of {model_label(made_by[0])}")
    if predictor is not None and made_by != model_version(predictor.path):
        # another model is chosen, or this one was retrained: not the chosen one's numbers
        st.warning(f"These results come from {model_label(made_by[0])}, not from "
                   f"{model_label(predictor.path)} as it is now chosen in the sidebar (another "
                   "model, or the same one retrained). Run the evaluation again to see its "
                   "results.")
    metrics_file = out / "metrics.json"
    if metrics_file.is_file():
        payload = json.loads(metrics_file.read_text())
        for w in payload["warnings"]:
            st.warning(w)
        m = payload["metrics"]
        cols = st.columns(4)
        for col, key in zip(cols, ("balanced_accuracy", "accuracy", "macro_f1", "ece"),
                            strict=True):
            col.metric(key.replace("_", " "), f"{m[key]['value']:.3f}",
                       f"95% CI {m[key]['ci_low']:.2f}–{m[key]['ci_high']:.2f}",
                       delta_color="off")
        if (floor := payload["cohort"].get("ece_floor")) is not None:
            st.caption(f"ECE is above zero on a finite cohort even for exact probabilities: "
                       f"a perfectly calibrated model would read about {floor:.3f} on these "
                       "subjects. Only an ECE well above that shows miscalibration.")
        st.dataframe(pd.DataFrame(m).T, width="stretch")
        pics = [p for p in ("confusion_matrix.png", "roc_curves.png", "reliability.png",
                            "subgroups.png") if (out / p).is_file()]
        for row in range(0, len(pics), 2):
            for col, pic in zip(st.columns(2), pics[row:row + 2], strict=False):
                col.image(str(out / pic))
    else:
        st.info("No labels in this cohort: predictions only.")
    c1, c2, c3 = st.columns(3)
    c1.download_button("predictions.csv", (out / "predictions.csv").read_bytes(),
                       "predictions.csv", "text/csv")
    c2.download_button("report.html", (out / "report.html").read_bytes(), "report.html",
                       "text/html")
    c3.download_button("report.md", (out / "report.md").read_bytes(), "report.md",
                       "text/markdown")
