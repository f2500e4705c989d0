"""MediAD app entry point: `streamlit run ui/app.py` (or `mediad app`)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui.common import FAVICON

# A local icon: a material or emoji page icon makes the browser fetch it from a web host.
st.set_page_config(page_title="MediAD (research use only)", page_icon=str(FAVICON),
                   layout="wide")
here = Path(__file__).parent
pages = st.navigation([
    st.Page(str(here / "patient.py"), title="Patient", icon=":material/person:", default=True),
    st.Page(str(here / "cohort.py"), title="Cohort", icon=":material/analytics:"),
    st.Page(str(here / "ablations.py"), title="Ablations", icon=":material/science:"),
    st.Page(str(here / "model_card.py"), title="Model card", icon=":material/description:"),
])
pages.run()
