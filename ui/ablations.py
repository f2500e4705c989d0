"""Ablations page: an ablation run's table, plot and plain-language verdict."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from ui.common import banner, models_dir

st.title("Confounder ablations")
banner()
roots = {models_dir(), Path.cwd()}
runs = sorted({p.parent for r in roots if r.is_dir() for p in r.glob("**/ablation.csv")})
typed = st.text_input("Ablation output folder (from `mediad ablate --out DIR`)", "")
options = [Path(typed)] if typed else runs
if not options:
    st.info("No ablation run found. Run `mediad ablate --quick --out DIR` and give DIR here.")
    st.stop()
folder = st.selectbox("Run", options, format_func=str)
table = folder / "ablation.csv"
if not table.is_file():
    st.error(f"{folder} holds no ablation.csv")
    st.stop()
md = (folder / "ablation.md").read_text(encoding="utf-8") if (folder / "ablation.md"
                                                             ).is_file() else ""
verdict = md.split("## Verdict", 1)[1].split("##", 1)[0].strip() if "## Verdict" in md else ""
if verdict:
    st.subheader("Verdict")
    st.markdown(verdict)
st.subheader("Results")
st.dataframe(pd.read_csv(table), width="stretch")
if (folder / "ablation.png").is_file():
    st.image(str(folder / "ablation.png"))
