"""End to end in a real browser: Debian's Chromium driven by Playwright against the app
served on 127.0.0.1 (never `playwright install`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import nibabel as nib
import numpy as np
import pytest

from mediad.cli import streamlit_command

UI = Path(__file__).resolve().parents[2] / "ui" / "app.py"
CHROMIUM = os.environ.get("MEDIAD_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def server(app_data: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MEDIAD_DATA_DIR": str(app_data), "MEDIAD_MODELS_DIR": str(app_data)}
    proc = subprocess.Popen(streamlit_command(UI, "127.0.0.1", port), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start: " + proc.stdout.read(4000).decode())  # type: ignore[union-attr]
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wait_idle(page: Any, timeout_s: float = 120.0) -> None:
    """Wait until Streamlit has finished its script run: its status widget ("Running…") is
    gone and stays gone for a moment. Acting during a run is what made this test flaky: an
    upload made while the first run was still going was dropped by the rerun."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        running = page.locator('[data-testid="stStatusWidget"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.6:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"the app was still running after {timeout_s:.0f} s")


def test_upload_sequences_predict_and_screenshot(server: str, app_data: Path,
                                                 tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get install chromium` (the "
                    "Makefile's test target does this) or set MEDIAD_CHROMIUM")
    from playwright.sync_api import sync_playwright

    manifest = (app_data / "demo-shifted" / "manifest.csv").read_text().splitlines()
    header, first = manifest[0].split(","), manifest[1].split(",")
    row = dict(zip(header, first, strict=True))
    mri = app_data / "demo-shifted" / row["mri_path"]
    upload = tmp_path / "scan.nii.gz"
    shutil.copy(mri, upload)
    img = nib.as_closest_canonical(nib.load(mri))
    data = np.asarray(img.dataobj, dtype=np.float32)
    inverted = tmp_path / "inverted.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > 0.02 * data.max(), data.max() - data, 0),
                             img.affine), str(inverted))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + b"x" * 200)
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"subject_id": "E2E-1", "age": float(row["age"]),
                                  "sex": row["sex"], "hypertension": True, "apoe4": 1}))
    shots = Path(os.environ.get("MEDIAD_SCREENSHOTS", tmp_path))
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.on("request", lambda r: None if urlparse(r.url).hostname in (
            "127.0.0.1", "localhost", None) or r.url.startswith("data:") else
            outside.append(r.url))
        page.goto(server, timeout=60_000)
        page.get_by_text("Research use only").first.wait_for(timeout=60_000)
        wait_idle(page)
        assert page.get_by_text("Deploy", exact=True).count() == 0
        mri_input = page.locator("input[type=file]").first
        mri_input.set_input_files(str(upload))
        page.get_by_text("MRI loaded: scan.nii.gz.").wait_for(timeout=180_000)  # preprocessing
        wait_idle(page)
        # what preprocessing did is on the page: the outlines and the QC figures
        page.get_by_text("Overlap with template").wait_for(timeout=60_000)
        page.get_by_role("tab", name="JSON file").click()
        page.locator("input[type=file]").nth(1).set_input_files(str(record))
        page.get_by_text("Record accepted.").first.wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_role("button", name="Predict").click()
        page.get_by_text("Probabilities", exact=True).wait_for(timeout=120_000)
        page.get_by_text("Clinical summary", exact=True).wait_for(timeout=60_000)
        page.get_by_text("Demographics:").first.wait_for(timeout=60_000)
        wait_idle(page)
        body = page.inner_text("body")
        assert "Suggestion" in body and "Demographics:" in body
        assert "E2E-1" not in body  # the identifier is never shown
        page.screenshot(path=str(shots / "patient-e2e.png"), full_page=True)
        # good MRI -> refused MRI: the page no longer claims an MRI, the answer is gone
        mri_input.set_input_files(str(broken))
        page.get_by_text("This MRI cannot be used").wait_for(timeout=60_000)
        wait_idle(page)
        body = page.inner_text("body")
        assert "MRI loaded" not in body and "Probabilities" not in body
        page.get_by_role("button", name="Predict").click()
        page.get_by_text("Probabilities", exact=True).wait_for(timeout=120_000)
        wait_idle(page)
        body = page.inner_text("body")
        assert '"mri": false' in body.replace("\n", " ") or "Inputs used: record" in body
        assert "rests on the record alone" in body
        # a fresh page, an MRI with inverted contrast and no record: an MRI-only answer,
        # said to be one, with the out-of-distribution warning
        page.goto(server, timeout=60_000)
        page.get_by_text("Research use only").first.wait_for(timeout=60_000)
        wait_idle(page)
        page.locator("input[type=file]").first.set_input_files(str(inverted))
        page.get_by_text("MRI loaded: inverted.nii.gz.").wait_for(timeout=180_000)
        wait_idle(page)
        page.get_by_role("button", name="Predict").click()
        page.get_by_text("Probabilities", exact=True).wait_for(timeout=120_000)
        wait_idle(page)
        body = page.inner_text("body")
        assert "rests on the MRI alone" in body and "Do not rely on this answer" in body
        assert "can read the scanner" in body  # the unaugmented model's MRI-only caveat
        assert "p = 1.00" not in body and "1.000" not in body
        page.screenshot(path=str(shots / "patient-ood.png"), full_page=True)
        browser.close()
    assert (shots / "patient-e2e.png").stat().st_size > 10_000
    assert not outside, f"the page requested outside hosts: {sorted(set(outside))[:5]}"
