"""Worker pools: one pool shared across batch steps, one thread per worker."""

from __future__ import annotations

import os
import time

from mediad.workers import process_pool, shared_workers


def _whoami(_: int) -> tuple[int, int]:
    import torch

    time.sleep(0.2)  # long enough that both workers take tasks
    return os.getpid(), torch.get_num_threads()


def test_shared_workers_serve_every_pool_of_the_block() -> None:
    """Inside the block two batch steps run on the same two processes (each pool used to
    start its own, and load the templates again), one thread each; the pool is closed
    after the block, and pools outside it are their own."""
    with shared_workers(2):
        with process_pool(2) as first:
            seen = list(first.map(_whoami, range(6)))
        with process_pool(2) as second:
            assert second is first
            seen += list(second.map(_whoami, range(6)))
        with shared_workers(2), process_pool(2) as nested:  # an inner block: the same pool
            assert nested is first
    assert len({pid for pid, _ in seen}) == 2
    assert {threads for _, threads in seen} == {1}
    with process_pool(2) as own:
        assert own is not first
        assert not {pid for pid, _ in own.map(_whoami, range(6))} & {pid for pid, _ in seen}
