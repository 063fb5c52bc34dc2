"""Threads for independent jobs of small tensor operations (k-means parts, column loops, candidate configs)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["one_thread_workers"]


@contextlib.contextmanager
def one_thread_workers(workers: int) -> Iterator[ThreadPoolExecutor]:
    """``workers`` threads for independent jobs, with torch's intra-op parallelism at one thread until the pool
    closes (restored after). The jobs (k-means parts, column loops) are chains of small operations, which a second
    intra-op thread barely speeds up; side by side, one thread each, they keep both cores busy. Every job computes
    with one thread whatever ``workers`` is, so the result does not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="vptq-lab") as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)
