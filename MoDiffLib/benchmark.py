"""Speed and memory of the generation pipeline, per stage (what ``modiff bench`` reports).

Peak CPU memory is the process's resident-set high-water mark (``VmHWM``), reset before each
run where Linux allows it (``/proc/self/clear_refs``), so each row shows that run's own peak.
Peak GPU memory is ``torch.cuda.max_memory_allocated``, reset likewise.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from typing import Any, Callable

import torch

from .pipeline import MoDiffPipeline


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (since the last reset where supported)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_description() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench_generation(
    make_pipeline: Callable[[], MoDiffPipeline],
    volume,
    frame_counts: list[int],
    steps: int | None,
    device: str,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Time ``generate`` per stage for each N; the model load is timed once per run as ``load``."""
    runs = []
    for n in frame_counts:
        reset_peak_rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0, cpu0 = time.perf_counter(), time.process_time()
        load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        pipeline = make_pipeline()
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = pipeline.generate(volume, n, steps=steps, seed=0, device=device)
        total_s = time.perf_counter() - t0
        stages = {"load": round(load_s, 3), **{k: round(v, 3) for k, v in result.timings_s.items() if k != "load"}}
        row = {
            "frames": n,
            "steps": result.provenance["steps"],
            "device": result.provenance["device"],
            "stages_s": stages,
            "total_s": round(load_s + total_s, 3),
            # CPU seconds of all threads and the load before the run: on a shared machine the wall
            # time includes waiting for other jobs, the CPU time does not.
            "cpu_s": round(time.process_time() - cpu0, 3),
            "load_average_1min": None if load_avg is None else round(load_avg, 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        }
        log(f"N={n}: {row['total_s']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB, stages {stages}")
        runs.append(row)
    return {"runs": runs, "parameters": make_pipeline().parameter_counts()}
