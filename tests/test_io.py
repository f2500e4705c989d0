"""Atomic writes: all or nothing, with the permissions a plain write would give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mediad.io import atomic_path, atomic_write_text


def test_a_new_file_gets_the_umask_permissions_not_the_temporary_files(tmp_path: Path
                                                                         ) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "report.md", "# report")
    # mkstemp's 0600 made every report, manifest and checkpoint private to its writer
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    atomic_write_text(target, '{"n": 1}')
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_text() == '{"n": 1}'


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "predictions.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [
        "predictions.csv"]
