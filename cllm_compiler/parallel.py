"""Fork-based parallel map for CPU-bound compile work (the allocator's candidate simulations).

Workers are forked, so they share the parent's model, calibration statistics and passes
copy-on-write and nothing is pickled but the item index and the small result. Results come
back in input order, so the output does not depend on the number of workers. Each worker is
single-threaded (torch's OpenMP pool is never started with one thread, which keeps fork safe).
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Any, Callable, Sequence

_JOB: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def default_workers() -> int:
    env = os.environ.get("CLLM_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _call(i: int) -> Any:
    import torch
    torch.set_num_threads(1)
    fn, items = _JOB  # type: ignore[misc]
    return fn(items[i])


def fork_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int,
             on_result: Callable[[int], None] | None = None) -> list[Any]:
    """[fn(x) for x in items], in `workers` forked processes when workers > 1."""
    global _JOB
    if workers <= 1 or len(items) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        out = []
        for i, x in enumerate(items):
            out.append(fn(x))
            if on_result:
                on_result(i)
        return out
    _JOB = (fn, items)
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(items))) as pool:
            out = []
            for i, r in enumerate(pool.imap(_call, range(len(items)), chunksize=1)):
                out.append(r)
                if on_result:
                    on_result(i)
            return out
    finally:
        _JOB = None
