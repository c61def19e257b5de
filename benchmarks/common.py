"""What every part of ``python -m benchmarks`` shares: paths, measurement helpers, the environment of the
processes it starts, and the JSON result files.

- :func:`measure_peak_rss`: the peak resident memory a call adds on top of what the process holds before it
  (Linux: the kernel's high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs``; elsewhere a sampling
  thread). Run it first in a fresh process, before any warm-up, so allocator caches do not hide the peak.
- :data:`MEMORY_ENV`, :data:`TIMING_ENV`: allocator and OpenMP settings of a measured process;
  :func:`child_env`: the environment of a process the benchmarks start (this checkout first on ``PYTHONPATH``).
- :func:`machine_info`: what the results record about the machine.
- :func:`write_result`: ``benchmarks/results/<name>.json`` with the machine description and one row per
  measurement (the subcommands ``separate``, ``resample``, ``chunk_snr``);
- :class:`NotAvailable`: raised by an implementation for a workload it does not have yet (its row says so; it is
  neither a measurement nor a failure).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "MEMORY_ENV",
    "NotAvailable",
    "RESULTS_DIR",
    "OMP_WAIT_POLICIES",
    "TIMING_ENV",
    "current_rss_mb",
    "machine_info",
    "measure_peak_rss",
    "child_env",
    "release_free_memory",
    "omp_wait",
    "set_omp_wait",
    "write_result",
]


class NotAvailable(Exception):
    """The implementation does not have this workload yet (e.g. a port's HTDemucs trainer): the point's row records
    the message as ``unavailable``, with no figures, and the run does not count it as failed."""


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (0 where unknown)."""
    kb = _status_kb("VmRSS")
    return (kb or 0.0) / 1024


def lifetime_peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (or since the last reset), in MiB."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Return freed heap memory to the OS (:func:`unmix.heap.release_free_heap`: glibc ``malloc_trim``), so that a
    later peak is not hidden by reuse."""
    from unmix.heap import release_free_heap

    release_free_heap()


def measure_peak_rss(fn: Callable[[], Any], interval_s: float = 0.002) -> tuple[Any, dict[str, float]]:
    """Call ``fn`` once; return its result and ``{"rss_before_mb", "peak_rss_mb", "peak_delta_mb"}``.

    Freed heap memory is returned to the OS first, so the delta is what the call itself needs.
    """
    import gc

    gc.collect()
    release_free_memory()
    before = current_rss_mb()
    if _reset_peak():
        result = fn()
        peak = lifetime_peak_rss_mb()
    else:  # sample from a thread: may miss very short peaks
        samples = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(current_rss_mb())
                time.sleep(interval_s)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            result = fn()
        finally:
            done.set()
            thread.join()
        peak = max(samples + [current_rss_mb()])
    return result, {"rss_before_mb": before, "peak_rss_mb": peak, "peak_delta_mb": peak - before}


# glibc serves large blocks from mmap (returned to the OS when freed) only above a threshold that it raises on
# its own as blocks are freed; blocks below it stay in the heap and keep counting as resident. Fixing the
# threshold at 1 MiB makes the resident peak follow the live tensors, and the same for every implementation.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_ARENA_MAX": "2"}

# The OpenMP wait policy of every measured process (``--omp-wait``). "default": none set, the environment users
# run in (libgomp's threads spin a while before they sleep). "passive": OMP_WAIT_POLICY=PASSIVE, for a machine whose
# cores other processes also use (a spinning thread there holds a core the thread it waits for needs, and single
# calls stall for seconds). Passive waiting is not free on a quiet machine: every parallel region then wakes
# sleeping threads, which slows PyTorch's many small LSTM steps (upstream's `umx` on a 30-s track: 3.7 s by
# default, 5.5-5.7 s passive) and not TensorFlow's or JAX's own thread pools, so it flatters the ports that do not
# use OpenMP against upstream. Quote figures with the policy they were measured under (the result files record it).
OMP_WAIT_POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
TIMING_ENV: dict[str, str] = {}


def set_omp_wait(policy: str) -> None:
    """Make :data:`TIMING_ENV` (the measured processes' extra environment) that of ``policy``
    (:data:`OMP_WAIT_POLICIES`); call before starting them."""
    TIMING_ENV.clear()
    TIMING_ENV.update(OMP_WAIT_POLICIES[policy])


def omp_wait() -> str:
    """The policy :data:`TIMING_ENV` holds now."""
    return next(name for name, env in OMP_WAIT_POLICIES.items() if env == TIMING_ENV)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a process the benchmarks start: ``extra`` on top, TensorFlow's C++ log
    quiet, and this checkout first on ``PYTHONPATH`` (its ``benchmarks``, ``core_spec`` and ports)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return env


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def write_result(name: str, rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json``: ``{"name", "created", "machine", "meta", "rows"}``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "meta": dict(meta or {}),
        "rows": [dict(r) for r in rows],
    }
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path
