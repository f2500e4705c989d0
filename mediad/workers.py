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
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

__all__ = ["PRELOAD", "one_thread", "process_pool", "shared_workers", "start_worker_server"]

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


def one_thread() -> None:
    """A worker's thread limits: one BLAS/OpenMP, torch and ITK thread each (workers x
    threads > cores thrashes)."""
    import SimpleITK as sitk
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


#: The pools :func:`shared_workers` keeps open, by number of workers.
_SHARED: dict[int, ProcessPoolExecutor] = {}


@contextmanager
def shared_workers(workers: int) -> Iterator[None]:
    """Within the block, every :func:`process_pool` of ``workers`` processes is one pool
    whose workers live on between batch steps.

    A new pool's workers load what they need anew: the simulator's templates (2.2 s) and
    the registration's (1.4 s), each worker at once, so every pool started idled both cores
    that long; the demo's first start drew and preprocessed in four pools. Its workers keep
    their thread limits (:func:`one_thread`) and caches; they wait, idle, while the caller
    trains. Nested blocks share the outer pool.
    """
    if workers in _SHARED or workers < 2:
        yield
        return
    pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=one_thread)
    _SHARED[workers] = pool
    try:
        yield
    finally:
        del _SHARED[workers]
        pool.shutdown(cancel_futures=True)  # an interrupted block leaves no queued task


def process_pool(workers: int, initializer: Callable[[], None] | None = None
                 ) -> AbstractContextManager[ProcessPoolExecutor]:
    """A pool of ``workers`` processes, forked from the fork server where there is one, to
    use in a ``with`` block: the open one inside :func:`shared_workers` (whose workers ran
    :func:`one_thread`, not ``initializer``), else a new one, shut down after the block."""
    if workers in _SHARED:
        return nullcontext(_SHARED[workers])
    return ProcessPoolExecutor(workers, mp_context=_context(), initializer=initializer)
