"""Cohort page: evaluate the model on a manifest; metrics with CIs, plots, downloads."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import streamlit as st

from mediad.errors import LeakageError, MediADError
from mediad.experiments.evaluation import evaluate
from mediad.paths import data_dir
from ui.common import banner, current_predictor, models_dir, save_upload

st.title("Cohort evaluation")
banner()
predictor = current_predictor()
root = data_dir()
manifests = sorted(root.glob("**/manifest.csv")) if root.is_dir() else []
manifests = [m for m in manifests if "runs" not in m.parts]
choice = st.selectbox("Manifest under the data folder", [None, *manifests],
                      format_func=lambda p: "—" if p is None else str(p.relative_to(root)))
uploaded = st.file_uploader("…or upload a CSV of records whose mri_path values are relative "
                            "to the data folder", type=["csv"])
manifest: Path | None = choice
if uploaded is not None:
    try:
        saved = save_upload(uploaded, "record")
        # relative MRI paths resolve against the manifest's folder: the data folder
        manifest = root / ".uploads" / f"{uuid.uuid4().hex}.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_bytes(saved.read_bytes())
    except MediADError as exc:
        st.error(str(exc))
        manifest = None
force = st.checkbox("Evaluate even if subjects were in the training data (the report will "
                    "say so)")
if predictor is not None and manifest is not None and st.button("Run evaluation",
                                                                 type="primary"):
    out = Path(tempfile.mkdtemp(prefix="mediad-eval-", dir=str(models_dir()) if
                                models_dir().is_dir() else None))
    bar = st.progress(0.0, text="Predicting…")
    try:
        result = evaluate(predictor.path, manifest, out, force=force, n_bootstrap=300,
                          progress=lambda d, t: bar.progress(d / max(t, 1),
                                                             text=f"Predicted {d}/{t}"))
        st.session_state["cohort_out"] = str(out)
    except LeakageError as exc:
        st.error(f"Refused: {exc}")
    except MediADError as exc:
        st.error(f"Cannot evaluate: {exc}")
    bar.empty()

out_dir = st.session_state.get("cohort_out")
if out_dir:
    out = Path(out_dir)
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
