"""Shared pieces of the MediAD app: banner, model loading, safe uploads. Logic lives in the
`mediad` library; this module only glues it to Streamlit."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import streamlit as st

from mediad import RESEARCH_NOTICE
from mediad.engine.predictor import Predictor
from mediad.errors import MediADError
from mediad.paths import data_dir


def max_upload_mb() -> float:
    return float(os.environ.get("MEDIAD_MAX_UPLOAD_MB", "256"))


def banner() -> None:
    st.warning(f"**{RESEARCH_NOTICE}** Outputs are for research on de-identified data.",
               icon=":material/warning:")


def models_dir() -> Path:
    return Path(os.environ.get("MEDIAD_MODELS_DIR", str(data_dir())))


def checkpoints() -> list[Path]:
    """Every ``best.pt`` under the configured models folder, the demo model first."""
    root = models_dir()
    found = sorted(root.glob("**/best.pt")) if root.is_dir() else []
    demo = root / "demo-model" / "best.pt"
    return ([demo] if demo in found else []) + [p for p in found if p != demo]


@st.cache_resource(show_spinner="Loading the model…")
def load_predictor(path: str) -> Predictor:
    return Predictor(path)


def current_predictor() -> Predictor | None:
    """The model chosen in the sidebar (loaded once per process)."""
    options = checkpoints()
    if not options:
        st.error(f"No trained model found under {models_dir()}. Run `make demo` (or "
                 "`mediad train`) first.")
        return None
    root = models_dir()
    labels = [str(p.parent.relative_to(root)) if p.is_relative_to(root) else str(p)
              for p in options]
    choice = st.sidebar.selectbox("Model", range(len(options)), format_func=labels.__getitem__,
                                  key="model_choice")
    try:
        return load_predictor(str(options[choice]))
    except MediADError as exc:
        st.error(f"Cannot load this model: {exc}")
        return None


def upload_dir() -> Path:
    """A private temporary folder for this session's uploads."""
    if "upload_dir" not in st.session_state:
        st.session_state["upload_dir"] = tempfile.mkdtemp(prefix="mediad-upload-")
    return Path(st.session_state["upload_dir"])


def save_upload(uploaded: object, kind: str) -> Path:
    """Write an upload under a fixed name inside the session's temp folder.

    The user's file name is never used as a path, so nothing escapes the folder.

    Raises:
        MediADError: over the size limit or of the wrong type.
    """
    data = uploaded.getvalue()  # type: ignore[attr-defined]
    name = str(getattr(uploaded, "name", "")).lower()
    if len(data) > max_upload_mb() * 1024 * 1024:
        raise MediADError(f"the file is {len(data) / 2**20:.1f} MB; the limit is "
                          f"{max_upload_mb():g} MB")
    suffixes = {"mri": (".nii.gz", ".nii"), "record": (".json", ".csv")}[kind]
    suffix = next((s for s in suffixes if name.endswith(s)), None)
    if suffix is None:
        raise MediADError(f"{getattr(uploaded, 'name', 'the file')!r} is not a "
                          f"{' or '.join(suffixes)} file")
    target = upload_dir() / f"{kind}{suffix}"
    target.write_bytes(data)
    return target
