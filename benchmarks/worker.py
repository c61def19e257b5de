"""One implementation's points, measured in this (fresh) process: ``python -m benchmarks.worker JOB.json``.

``JOB.json``: ``{"impl", "points": [Point dicts], "sizes", "folder", "threads", "max_timed_s", "result"}``; the
rows are written to ``result`` (JSON). Per point (:func:`measure`):

1. build the model from the run's files (``setup_s``);
2. the first call, under :func:`benchmarks.common.measure_peak_rss` with glibc's large blocks mapped from 1 MiB
   (``MEMORY_ENV``: the resident peak then follows the live arrays): ``first_call_s`` and its peak. For an
   implementation that compiles (TF, JAX) the first call traces and compiles, so the peak memory is that of a
   second call; for the others the first call is the warm-up and its peak is the point's;
3. glibc's mmap threshold is then fixed at 32 MiB (the ceiling its own dynamic threshold reaches once large
   blocks are freed), so that the timed calls do not pay a page fault for every fresh array;
4. up to ``repeats`` timed calls (wall and process CPU time), stopping once they took ``max_timed_s`` (at least
   one runs); for TF and JAX ``compile_s = first_call_s - wall_s_median``;
5. the first call's output against upstream's (upstream's worker writes it; it runs first): SNR in dB (float64
   sums over the whole output), or for a training step the relative difference of the first loss.

A failing point is recorded with its error and the next one runs; a workload the implementation does not have
(:class:`benchmarks.common.NotAvailable` from its build) is recorded as ``unavailable``. ``impl`` in the job is a
worker key (:func:`benchmarks.impls.impl_spec`: ``upstream4`` is upstream's demucs 4.1.0 variant); the rows carry
the implementation's key (``upstream``).
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import inputs, models
from benchmarks.common import NotAvailable, measure_peak_rss
from benchmarks.impls import Impl, impl_spec
from benchmarks.plan import Point, Sizes

__all__ = ["main", "measure", "snr_db", "timed_calls"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _mallopt(option: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(option, value)
    except (OSError, AttributeError):  # not glibc: nothing to set
        pass


def malloc_for_memory() -> None:
    """Large blocks (>= 1 MiB) from mmap, returned to the OS when freed (as ``MEMORY_ENV``)."""
    _mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def malloc_for_timing() -> None:
    """Blocks up to 32 MiB from the heap and kept for reuse (glibc's dynamic threshold at its ceiling)."""
    _mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    _mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def _call_measured(call: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    start, start_cpu = time.perf_counter(), time.process_time()
    out, memory = measure_peak_rss(call)
    return out, {"s": time.perf_counter() - start, "cpu_s": time.process_time() - start_cpu, **memory}


def timed_calls(call: Callable[[], Any], repeats: int, max_timed_s: float) -> dict[str, Any]:
    """Up to ``repeats`` calls, stopping once their wall time reaches ``max_timed_s`` (at least one)."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(max(1, repeats)):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if sum(wall) >= max_timed_s:
            break
    return {
        "wall_s_min": min(wall),
        "wall_s_median": statistics.median(wall),
        "wall_s_all": wall,
        "cpu_s_min": min(cpu),
        "cpu_s_all": cpu,
        "repeats": len(wall),
    }


def snr_db(actual: np.ndarray, expected: np.ndarray, block: int = 1 << 22) -> float:
    """``10 log10(sum expected^2 / sum (actual - expected)^2)``, float64 sums in blocks; ``inf`` if equal.

    Raises:
        ValueError: the shapes differ, or the output is not finite.
    """
    if actual.shape != expected.shape:
        raise ValueError(f"output shape {actual.shape} differs from upstream's {expected.shape}")
    a, e = actual.reshape(-1), expected.reshape(-1)
    signal = noise = 0.0
    for i in range(0, a.size, block):
        ref = e[i : i + block].astype(np.float64)
        diff = a[i : i + block].astype(np.float64) - ref
        signal += float(ref @ ref)
        noise += float(diff @ diff)
    if not math.isfinite(noise):
        raise ValueError("the output is not finite")
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def _build(module: Any, impl: Impl, point: Point, sizes: Sizes, f: inputs.Files) -> tuple[Callable[[], Any], dict]:
    cfg = models.config(point, sizes)
    weights = inputs.load_weights(f.weights)
    if point.kind == "train":
        with np.load(f.input) as data:
            batch = {k: data[k] for k in data.files}
        call, params = module.train(cfg, models.recipe(point), weights, batch, impl.options)
        return call, {"parameters": int(params)}
    audio = np.load(f.input)
    return getattr(module, point.kind)(cfg, weights, audio, impl.options), {}


def _compare(out: Any, point: Point, f: inputs.Files, reference: bool) -> dict[str, Any]:
    train = point.kind == "train"
    if reference:
        inputs.write_reference(f, float(out) if train else np.asarray(out))
        return {"first_loss": float(out)} if train else {}
    expected = inputs.read_reference(f, train)
    if train:
        row: dict[str, Any] = {"first_loss": float(out)}
        if expected is not None:
            row["loss_rel_diff_vs_upstream"] = abs(float(out) - expected) / abs(expected)
        return row
    if expected is None:
        return {}
    snr = snr_db(np.asarray(out), expected)
    return {"snr_db_vs_upstream": None if math.isinf(snr) else snr, "output_identical": math.isinf(snr)}


def measure(module: Any, impl: Impl, point: Point, sizes: Sizes, folder: str, max_timed_s: float) -> dict[str, Any]:
    """The row of one point (see the module's docstring); an ``error`` entry instead of raising."""
    row: dict[str, Any] = {"point": point.name, "impl": impl.key}
    try:
        f = inputs.files(folder, point)
        start = time.perf_counter()
        call, extra = _build(module, impl, point, sizes, f)
        gc.collect()
        row.update(extra, setup_s=time.perf_counter() - start)
        malloc_for_memory()
        out, first = _call_measured(call)
        row.update(
            first_call_s=first["s"],
            first_call_cpu_s=first["cpu_s"],
            rss_before_mb=first["rss_before_mb"],
            first_call_peak_rss_mb=first["peak_rss_mb"],
            first_call_peak_delta_mb=first["peak_delta_mb"],
        )
        memory = first
        if impl.compiles:
            _, memory = _call_measured(call)
            row["second_call_s"] = memory["s"]
        row.update(
            peak_rss_mb=memory["peak_rss_mb"],
            peak_delta_mb=memory["peak_delta_mb"],
            memory_call="second" if impl.compiles else "first",
        )
        malloc_for_timing()
        row.update(timed_calls(call, point.repeats, max_timed_s))
        if impl.compiles:
            row["compile_s"] = row["first_call_s"] - row["wall_s_median"]
        row.update(_compare(out, point, f, reference=impl.key == "upstream"))
    except NotAvailable as e:
        row["unavailable"] = str(e)
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc()[-4000:]
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    started, started_cpu = time.perf_counter(), time.process_time()
    job = json.loads(Path(argv[0]).read_text())
    impl = impl_spec(job["impl"])
    sizes = Sizes(**job["sizes"])
    result: dict[str, Any] = {"impl": job["impl"], "python": sys.version.split()[0], "rows": []}
    try:
        module = importlib.import_module(impl.module)
        module.configure(job["threads"], impl.options)
        result["versions"] = module.versions()
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()[-4000:]
        module = None
    for data in job["points"]:
        point = Point(**data)
        if module is None:
            result["rows"].append({"point": point.name, "impl": impl.key, "error": result["error"]})
            continue
        row = measure(module, impl, point, sizes, job["folder"], job["max_timed_s"])
        result["rows"].append(row)
        result.update(process_s=time.perf_counter() - started, process_cpu_s=time.process_time() - started_cpu)
        _write(job["result"], result)  # after every point: a later crash keeps the rows measured so far
        gc.collect()
    result.update(process_s=time.perf_counter() - started, process_cpu_s=time.process_time() - started_cpu)
    _write(job["result"], result)
    return 0


def _write(path: str, result: Mapping[str, Any]) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
