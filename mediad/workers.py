"""Worker processes for the CPU-heavy batch steps (drawing a cohort, preprocessing MRIs).

A freshly spawned Python process pays for its imports before it does any work: importing
MONAI alone (it loads every submodule, transformers included) took 10-12 s here, and the
demo starts two pools of two workers. So, where the platform has it, workers are forked
from one *fork server* that has imported the heavy modules once, and can be started early,
while the main process does its own imports. The server is a clean process that never runs
a parallel torch operation, so forking it is safe (forking a process whose OpenMP runtime
has started can hang, which is why plain ``fork`` is never used). Elsewhere (Windows)
workers are spawned.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

__all__ = ["PRELOAD", "process_pool", "start_worker_server"]

#: What every worker needs, imported once in the fork server.
PRELOAD = ("mediad.data.simulate", "mediad.data.preprocess", "nilearn.datasets",
           "SimpleITK", "deepbet")


def _context() -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


def start_worker_server() -> None:
    """Start the fork server now, so that its imports overlap the caller's own work (no-op
    where workers are spawned)."""
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def process_pool(workers: int, initializer: Callable[[], None] | None = None
                 ) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, forked from the fork server where there is one."""
    return ProcessPoolExecutor(workers, mp_context=_context(), initializer=initializer)
