"""MediAD app entry point: `streamlit run ui/app.py` (or `mediad app`)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parent))

st.set_page_config(page_title="MediAD (research use only)", page_icon="🧠", layout="wide")
here = Path(__file__).parent
pages = st.navigation([
    st.Page(str(here / "patient.py"), title="Patient", icon="🧑‍⚕️", default=True),
    st.Page(str(here / "cohort.py"), title="Cohort", icon="📊"),
    st.Page(str(here / "ablations.py"), title="Ablations", icon="🧪"),
    st.Page(str(here / "model_card.py"), title="Model card", icon="📄"),
])
pages.run()
