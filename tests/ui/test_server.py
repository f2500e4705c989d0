"""`mediad app` as a process: it serves on 127.0.0.1, and stopping it stops the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_mediad_app_stops_streamlit(app_data: Path, sig: signal.Signals) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MEDIAD_DATA_DIR": str(app_data)}
    proc = subprocess.Popen([sys.executable, "-m", "mediad", "app", "--no-demo", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not _healthy(url):
            assert proc.poll() is None, "mediad app exited before serving"
            assert time.monotonic() < deadline, "the app did not start within 90 s"
            time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            assert conn.getpeername()[0] == "127.0.0.1"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
        deadline = time.monotonic() + 15
        while _healthy(url):  # the Streamlit child must be gone too
            assert time.monotonic() < deadline, "Streamlit still serves after mediad app stopped"
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
