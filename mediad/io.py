"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "complete_lines",
           "file_sha256", "hash_file"]


@lru_cache(maxsize=1)
def _new_file_mode() -> int:
    """What ``open()`` would give a new file: 0o666 less the umask (read without changing
    it where /proc tells, since setting it is process-wide)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    The result gets the permissions a plainly written file would (or the replaced file's):
    the temporary file is private (0600), and a report that only its writer can read is
    no use to the rest of a lab."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                               suffix=target.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def complete_lines(path: str | Path) -> str:
    """The text of an append-only file up to its last newline, cutting off a torn last line.

    A crash while appending leaves a partial line; resuming writers call this first so the
    file they append to is valid again.
    """
    p = Path(path)
    if not p.exists():
        return ""
    data = p.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(p, "r+b") as fh:
            fh.truncate(len(keep))
    return keep.decode("utf-8")


def hash_file(h: Any, path: str | Path) -> Any:
    """Feed a file's bytes to the hash ``h`` in chunks (checkpoints and volumes can be
    large); returns ``h``, so more can be added to the same key."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes."""
    return str(hash_file(hashlib.sha256(), path).hexdigest())
