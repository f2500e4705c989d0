"""Shared pieces of the MediAD app: banner, model loading, uploads. Logic lives in the
`mediad` library; this module only glues it to Streamlit.

Uploads are kept in the session as bytes and written to a private temporary folder only
while a library call reads them, so nothing is left on disk, and messages name the user's
file, never an internal path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from mediad import RESEARCH_NOTICE
from mediad.engine.predictor import Predictor
from mediad.errors import InputError, MediADError
from mediad.paths import data_dir

__all__ = [
    "FAVICON",
    "Upload",
    "banner",
    "checkpoints",
    "current_predictor",
    "max_upload_mb",
    "models_dir",
    "on_disk",
    "read_upload",
    "show_error",
    "upload_token",
    "user_message",
]

FAVICON = Path(__file__).with_name("assets") / "favicon.png"
_SUFFIXES = {"mri": (".nii.gz", ".nii"), "record": (".json", ".csv")}


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


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def load_predictor(version: tuple[str, int, int]) -> Predictor:
    """A loaded model, kept across reruns, keyed by :func:`model_version`: a model
    retrained into the same folder is loaded afresh, not served from the old weights."""
    return Predictor(version[0])


def model_version(checkpoint: str | Path) -> tuple[str, int, int]:
    """What identifies a model's weights: its path, modification time and size (a model
    retrained into its folder is another model). ``(path, 0, 0)`` once the file is gone."""
    try:
        stat = Path(checkpoint).stat()
    except OSError:
        return str(checkpoint), 0, 0
    return str(checkpoint), stat.st_mtime_ns, stat.st_size


def model_label(checkpoint: str | Path) -> str:
    """How the sidebar names a model: its folder under the models folder."""
    p, root = Path(checkpoint), models_dir()
    return str(p.parent.relative_to(root)) if p.is_relative_to(root) else str(p)


def current_predictor() -> Predictor | None:
    """The model chosen in the sidebar (loaded once per process)."""
    options = checkpoints()
    if not options:
        st.error(f"No trained model found under {models_dir()}. Run `make demo` (or "
                 "`mediad train`) first.")
        return None
    labels = [model_label(p) for p in options]
    choice = st.sidebar.selectbox("Model", range(len(options)), format_func=labels.__getitem__,
                                  key="model_choice")
    try:
        return load_predictor(model_version(options[choice]))
    except MediADError as exc:
        st.error(f"Cannot load this model: {exc}")
        return None


@dataclass(frozen=True)
class Upload:
    """An uploaded file held in memory: the user's name (shown, never used as a path)."""

    name: str
    data: bytes
    kind: str
    suffix: str


def upload_token(uploaded: object | None) -> tuple[str, int, str] | None:
    """What identifies one upload across reruns (``None`` when the uploader is empty)."""
    if uploaded is None:
        return None
    return (str(getattr(uploaded, "name", "")), int(getattr(uploaded, "size", 0)),
            str(getattr(uploaded, "file_id", "")))


def read_upload(uploaded: object, kind: str) -> Upload:
    """Check an upload's size and type and keep it in memory.

    Raises:
        MediADError: over the size limit or of the wrong type.
    """
    name = str(getattr(uploaded, "name", "the file"))
    size = int(getattr(uploaded, "size", 0))
    if size > max_upload_mb() * 1024 * 1024:
        raise MediADError(f"{name} is {size / 2**20:.1f} MB; the limit is "
                          f"{max_upload_mb():g} MB")
    suffixes = _SUFFIXES[kind]
    suffix = next((s for s in suffixes if name.lower().endswith(s)), None)
    if suffix is None:
        raise MediADError(f"{name!r} is not a {' or '.join(suffixes)} file")
    return Upload(name, uploaded.getvalue(), kind, suffix)  # type: ignore[attr-defined]


@contextmanager
def on_disk(item: Upload | str | Path) -> Iterator[Path]:
    """A path to read ``item`` from: a file on disk as is, an upload in a private temporary
    folder that is deleted on exit (the user's file name never becomes a path)."""
    if not isinstance(item, Upload):
        yield Path(item)
        return
    with tempfile.TemporaryDirectory(prefix="mediad-upload-") as folder:
        path = Path(folder) / f"{item.kind}{item.suffix}"
        path.write_bytes(item.data)
        yield path


def user_message(exc: BaseException, path: Path | None = None, name: str | None = None) -> str:
    """The error's message with an internal path replaced by what the user knows it as."""
    if isinstance(exc, InputError) and len(exc.issues) > 1:
        text = "\n".join(f"- {i.describe()}" for i in exc.issues if i.severity == "error")
    else:
        text = getattr(exc, "reason", None) or str(exc)
    if path is not None:
        text = text.replace(str(path), name or path.name)
        text = text.replace(str(path.parent), "(upload)")
    return text


def show_error(prefix: str, exc: BaseException, path: Path | None = None,
               name: str | None = None) -> str:
    """Show an error (internal paths replaced) and return the text shown."""
    text = f"{prefix}{user_message(exc, path, name)}"
    st.error(text)
    return text
