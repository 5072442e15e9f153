"""Run independent per-frame work on the machine's cores.

Frames of a phantom are independent and write to disjoint slices of preallocated arrays; numpy
releases the GIL inside its kernels, so a small thread pool renders them in parallel while the
result stays bit-identical to a serial run (each frame is computed by the same code on the same
inputs, whatever the order).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


def worker_count(limit: int = 4) -> int:
    """Threads to use: the cores this process may run on, at most ``limit``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(limit, cores))


def run_frames(work: Callable[[int], None], num_frames: int) -> None:
    """Call ``work(t)`` for every frame ``t``, in parallel where there is more than one core."""
    workers = min(worker_count(), num_frames)
    if workers <= 1:
        for t in range(num_frames):
            work(t)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(work, t) for t in range(num_frames)]:
            future.result()
