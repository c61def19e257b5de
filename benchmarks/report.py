"""The results of a benchmark run: ``latest.json`` (:func:`build`), ``latest.md`` (:func:`markdown`) and
``latest.png`` (:func:`chart`), written atomically by :func:`write`.

JSON: ``{"name", "created", "plan", "settings", "implementations", "rows", "sweeps", "meta"}``. One row per
(point, implementation): the worker's measurements (:mod:`benchmarks.worker`) and the point's description, plus
``rtf`` (min wall time / seconds of audio: below 1 is faster than real time; training: the batch's audio),
``ratio_vs_upstream`` (min wall time / upstream's in the same run; ``ratio_median_vs_upstream`` for the medians),
``peak_rss_ratio_vs_upstream`` and ``peak_delta_ratio_vs_upstream`` (HTDemucs points: against upstream's demucs
4.1.0 worker, whose versions are under ``implementations.upstream.variants.upstream4``); a row with
``unavailable`` (a workload the implementation does not have yet) has no figures. ``sweeps``: per model and
implementation, the time per second of audio and the peak memory at each length, and whether time grows linearly
(every length's time per second within :data:`LINEAR_TOLERANCE` of the shortest's) and memory no faster than the
length.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.impls import THREADS, XLA_FLAGS, common_env, impl_spec
from benchmarks.plan import Plan, Point
from core_spec.files import atomic_write

__all__ = ["LINEAR_TOLERANCE", "build", "chart", "markdown", "summary", "write"]

LINEAR_TOLERANCE = 0.2
"""Time per second of audio may differ by this fraction from the shortest length's (the issue's 20 %)."""

PROTOCOL = (
    "Each (point, implementation) runs in a fresh process (quick plan: one process per implementation). The "
    "first call is measured for peak resident memory (the process's high-water mark, VmHWM reset before the call; "
    "glibc maps blocks from 1 MiB so that the peak follows the live arrays) and timed (first_call_s). For TF and "
    "JAX the first call traces and compiles: compile_s = first_call_s - wall_s_median, and the memory is a second "
    "call's. Then the mmap threshold is fixed at 32 MiB and up to `repeats` calls are timed (wall and process CPU "
    "time), stopping once they took the plan's max_timed_s. Ratios use the minimum wall time; the median is in the "
    "rows. SNR: the port's first output against upstream's on the same input (float64 sums over the whole array); "
    "training: relative difference of the first loss (UMX: different dropout masks)."
)


def _finite(value: Any) -> Any:
    """JSON without NaN/inf: non-finite floats become ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


SWEEP_TITLES = {"umx": "UMX separator, niter 1", "demucs": "Demucs apply_model", "htdemucs": "HTDemucs apply_model"}


def _measured(row: Mapping[str, Any]) -> bool:
    """A row with figures (not failed, not unavailable)."""
    return "wall_s_min" in row and "error" not in row


def _ratios(rows: list[dict[str, Any]]) -> None:
    upstream = {r["point"]: r for r in rows if r["impl"] == "upstream" and _measured(r)}
    for r in rows:
        up = upstream.get(r["point"])
        if r["impl"] == "upstream" or up is None or not _measured(r):
            continue
        r["ratio_vs_upstream"] = r["wall_s_min"] / up["wall_s_min"]
        r["ratio_median_vs_upstream"] = r["wall_s_median"] / up["wall_s_median"]
        r["cpu_ratio_vs_upstream"] = r["cpu_s_min"] / up["cpu_s_min"] if up["cpu_s_min"] > 0 else None
        r["peak_rss_ratio_vs_upstream"] = r["peak_rss_mb"] / up["peak_rss_mb"]
        r["peak_delta_ratio_vs_upstream"] = r["peak_delta_mb"] / max(up["peak_delta_mb"], 1e-9)


def _sweep(plan: Plan, model: str, rows: list[dict[str, Any]], impls: Sequence[str]) -> dict[str, Any]:
    names = plan.sweeps[model]
    out: dict[str, Any] = {"points": list(names), "implementations": {}}
    for impl in impls:
        measured = sorted(
            (r for r in rows if r["impl"] == impl and r["point"] in names and _measured(r)),
            key=lambda r: r["seconds"],
        )
        if len(measured) < 2:
            continue
        seconds = [r["seconds"] for r in measured]
        per_second = [r["wall_s_min"] / r["seconds"] for r in measured]
        delta = [r["peak_delta_mb"] for r in measured]
        relative = [t / per_second[0] for t in per_second]
        memory_growth = (delta[-1] / max(delta[0], 1e-9)) / (seconds[-1] / seconds[0])
        flags = [
            f"time per second of audio at {s:g} s is {rel:.2f}x that at {seconds[0]:g} s"
            for s, rel in zip(seconds[1:], relative[1:])
            if abs(rel - 1) > LINEAR_TOLERANCE
        ]
        if memory_growth > 1 + LINEAR_TOLERANCE:
            flags.append(
                f"the memory a call adds grows {delta[-1] / max(delta[0], 1e-9):.1f}x from {seconds[0]:g} s to "
                f"{seconds[-1]:g} s ({seconds[-1] / seconds[0]:g}x the audio)"
            )
        out["implementations"][impl] = {
            "seconds": seconds,
            "time_per_audio_s": per_second,
            "time_relative_to_shortest": relative,
            "peak_rss_mb": [r["peak_rss_mb"] for r in measured],
            "peak_delta_mb": delta,
            "memory_growth_vs_length": memory_growth,
            "linear_time": not any("time per second" in f for f in flags),
            "flags": flags,
        }
    return out


def build(plan: Plan, points: Sequence[Point], results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> dict:
    """The JSON document of a run from the workers' results (see the module docstring)."""
    by_name = {p.name: p for p in points}
    rows: list[dict[str, Any]] = []
    implementations: dict[str, Any] = {}
    for result in results:
        spec = impl_spec(result["impl"])  # a worker key: upstream4 is upstream's demucs 4.1.0 variant
        entry = implementations.setdefault(spec.key, impl_spec(spec.key).to_dict())
        target = (
            entry
            if result["impl"] == spec.key
            else entry.setdefault("variants", {}).setdefault(result["impl"], spec.to_dict())
        )
        target.update({k: result[k] for k in ("python", "versions", "error") if k in result})
        entry["processes"] = entry.get("processes", 0) + 1
        entry["process_s"] = entry.get("process_s", 0.0) + result.get("job_s", 0.0)
        for row in result["rows"]:
            point = by_name[row["point"]]
            described = {
                "label": point.label,
                "kind": point.kind,
                "model": point.model,
                "seconds": point.seconds,
                "audio_seconds": point.audio_seconds,
                "batch": point.batch,
                "niter": point.niter,
            }
            full = {**described, **row}
            if "wall_s_min" in full:
                full["rtf"] = full["wall_s_min"] / point.audio_seconds
            rows.append(full)
    order = {p.name: i for i, p in enumerate(points)}
    impl_order = {k: i for i, k in enumerate(meta["impls"])}
    rows.sort(key=lambda r: (order[r["point"]], impl_order.get(r["impl"], 99)))
    _ratios(rows)
    sweeps = {model: _sweep(plan, model, rows, meta["impls"]) for model in plan.sweeps}
    settings = {
        "threads": meta["threads"],
        "dtype": "float32",
        "device": "cpu",
        "worker_env": common_env(meta["threads"]),
        "xla_flags": XLA_FLAGS if meta["threads"] == THREADS else None,
        "thread_settings": {
            "upstream": "torch.set_num_threads (demucs 2.0.3 / openunmix; HTDemucs: demucs 4.1.0, its own process)",
            "torch": "torch.set_num_threads",
            "tf": "tf.config.threading intra-op and inter-op",
            "jax": "XLA_FLAGS",
            "nnabla": "none: NNabla's CPU kernels are single-threaded (NumPy parts: OpenBLAS/OpenMP threads)",
        },
        "protocol": PROTOCOL,
        "rtf": "wall_s_min / seconds of audio a call processes (training: batch x excerpt); < 1: faster than real time",
        "ratio": "port wall_s_min / upstream wall_s_min, measured in the same run",
    }
    doc = {
        "name": "unmix-ports benchmark",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": bool(meta["quick"]),
        "plan": plan.to_dict(),
        "settings": settings,
        "implementations": implementations,
        "rows": rows,
        "sweeps": sweeps,
        "meta": dict(meta),
    }
    return _finite(doc)


# --- Markdown -----------------------------------------------------------------------------------------------------


def _f(value: Any, fmt: str = ".2f", none: str = "") -> str:
    return none if value is None else format(value, fmt)


def _label(impl: str, doc: Mapping[str, Any]) -> str:
    return doc["implementations"].get(impl, {}).get("label", impl)


def _check(row: Mapping[str, Any]) -> str:
    if row.get("output_identical"):
        return "identical"
    if row.get("snr_db_vs_upstream") is not None:
        return f"{row['snr_db_vs_upstream']:.1f} dB"
    if row.get("loss_rel_diff_vs_upstream") is not None:
        return f"loss {row['loss_rel_diff_vs_upstream']:.1e}"
    return ""


def markdown(doc: Mapping[str, Any]) -> str:
    """The run as Markdown: the workloads table, the length sweep, the settings."""
    meta = doc["meta"]
    start, end = meta["machine_start"], meta["machine_end"]
    git = meta.get("git", {})
    commit = f"{git.get('commit', '?')[:10]}{' (dirty tree)' if git.get('dirty') else ''}"
    loads = [_f(m.get("load_average", [None])[0], ".1f", "?") for m in (start, end)]
    load = " -> ".join(loads)
    lines = [
        f"# Benchmark: every port against upstream ({doc['plan']['name']} plan)",
        "",
        f"`python -m benchmarks{' --quick' if doc['quick'] else ''}`, {doc['created']}, commit {commit}; "
        f"{start.get('cpu', start.get('processor'))}, {start.get('cpu_count')} cores, load average {load}; "
        f"{meta['total_s'] / 60:.1f} min in all. float32 on the CPU, {doc['settings']['threads']} threads for every "
        "implementation (NNabla's kernels are single-threaded); OpenMP wait policy "
        f"{meta.get('omp_wait', 'passive (before --omp-wait)')}.",
        "",
    ]
    if doc["quick"]:
        lines += [
            "Quick plan: seconds-long inputs and small models; it checks the command, its figures mean nothing.",
            "",
        ]
    lines += [
        "Times in seconds (min and median of the timed calls after the warm-up; first call: trace/compile included; "
        "compile = first call - median, TF and JAX). RTF = min time / seconds of audio. Memory: peak resident MiB "
        "of the process during a call (+ what the call added). Ratios: port / upstream in this run.",
        "",
        "| workload | implementation | min | median | first call | compile | RTF | peak MiB (+call) "
        "| time ratio | memory ratio | vs upstream |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["rows"]:
        name = f"{r['label']} (`{r['point']}`)"
        if "error" in r:
            lines.append(f"| {name} | {_label(r['impl'], doc)} | failed: {r['error'].splitlines()[0][:80]} |||||||||")
            continue
        if "unavailable" in r:
            lines.append(f"| {name} | {_label(r['impl'], doc)} | not available: {r['unavailable'][:80]} |||||||||")
            continue
        memory = f"{r['peak_rss_mb']:.0f} (+{r['peak_delta_mb']:.0f})"
        lines.append(
            f"| {name} | {_label(r['impl'], doc)} | {r['wall_s_min']:.3f} | {r['wall_s_median']:.3f} "
            f"| {r['first_call_s']:.2f} | {_f(r.get('compile_s'), '.1f')} | {r['rtf']:.3f} | {memory} "
            f"| {_f(r.get('ratio_vs_upstream'))} | {_f(r.get('peak_rss_ratio_vs_upstream'))} | {_check(r)} |"
        )
    lines += ["", "## Length sweep", ""]
    for model, sweep in doc["sweeps"].items():
        impls = sweep["implementations"]
        if not impls:
            continue
        seconds = sorted({s for v in impls.values() for s in v["seconds"]})
        head = " | ".join(f"{s:g} s" for s in seconds)
        title = SWEEP_TITLES.get(model, model)
        lines += [
            f"### {title}: seconds per second of audio; peak MiB (+call)",
            "",
            f"| implementation | {head} | linear time | {head} |",
            "|---|" + "---:|" * len(seconds) + "---|" + "---:|" * len(seconds),
        ]
        for impl, v in impls.items():
            at = dict(zip(v["seconds"], zip(v["time_per_audio_s"], v["peak_rss_mb"], v["peak_delta_mb"])))
            times = " | ".join(_f(at[s][0], ".4f") if s in at else "" for s in seconds)
            mems = " | ".join(f"{at[s][1]:.0f} (+{at[s][2]:.0f})" if s in at else "" for s in seconds)
            lines.append(f"| {_label(impl, doc)} | {times} | {'yes' if v['linear_time'] else '**no**'} | {mems} |")
        flagged = [(impl, f) for impl, v in impls.items() for f in v["flags"]]
        if flagged:
            lines += ["", "Not linear:"] + [f"- {_label(impl, doc)}: {f}" for impl, f in flagged]
        lines.append("")
    impls = set(meta["impls"])
    skipped = [p for p in doc["plan"]["points"] if p["name"] in meta["points"] and impls & set(p["long_for"])]
    if skipped and not meta.get("long"):
        notes = [f"`{p['name']}` for {', '.join(i for i in p['long_for'] if i in impls)} ({p['long_reason']})"
                 for p in skipped]  # fmt: skip
        lines += ["Run only with `--long`: " + "; ".join(notes) + ".", ""]
    lines += ["## Settings", "", doc["settings"]["protocol"], ""]
    for info in doc["implementations"].values():
        versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        for variant in info.get("variants", {}).values():
            more = ", ".join(f"{k} {v}" for k, v in variant.get("versions", {}).items())
            versions += f"{'; ' if versions else ''}{variant['label']}: {more}"
        processes = f"; {info.get('processes', 0)} process(es), {info.get('process_s', 0.0):.0f} s in all"
        lines.append(f"- {info['label']}: Python {info.get('python', '?')}, {versions}{processes}")
    return "\n".join(lines) + "\n"


# --- chart --------------------------------------------------------------------------------------------------------


def chart(doc: Mapping[str, Any], path: str | Path) -> None:
    """A PNG: time ratio and peak memory per workload (bars per implementation), and the sweeps' time per second
    of audio per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in doc["rows"] if _measured(r)]
    main = [n for n in doc["plan"]["main"] if any(r["point"] == n for r in rows)]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    ports = [i for i in impls if i != "upstream"]
    columns = max(2, len(doc["sweeps"]))  # the bottom row: one panel per sweep
    fig, axes = plt.subplots(2, columns, figsize=(15, 9), squeeze=False)
    for ax in axes[0, 2:]:
        ax.set_visible(False)

    def bars(ax: Any, keys: Sequence[str], value: Any, names: Sequence[str]) -> None:
        width = 0.8 / max(len(keys), 1)
        x = np.arange(len(names))
        for k, key in enumerate(keys):
            values = []
            for name in names:
                row = next((r for r in rows if r["point"] == name and r["impl"] == key), None)
                values.append(np.nan if row is None or value(row) is None else value(row))
            ax.bar(x + (k - (len(keys) - 1) / 2) * width, values, width, label=_label(key, doc))
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        if keys:
            ax.legend(fontsize=8)

    bars(axes[0, 0], ports, lambda r: r.get("ratio_vs_upstream"), main)
    axes[0, 0].axhline(1.0, color="black", linewidth=0.8)
    axes[0, 0].set_ylabel("wall time / upstream's (min)")
    axes[0, 0].set_title("time ratio (lower is faster)")
    bars(axes[0, 1], impls, lambda r: r["peak_rss_mb"], main)
    axes[0, 1].set_ylabel("peak resident memory (MiB)")
    axes[0, 1].set_title("peak memory")
    for ax, (model, sweep) in zip(axes[1], doc["sweeps"].items()):
        for impl, v in sweep["implementations"].items():
            ax.plot(v["seconds"], v["time_per_audio_s"], marker="o", label=_label(impl, doc))
        lengths = sorted({s for v in sweep["implementations"].values() for s in v["seconds"]})
        ax.set_xscale("log")
        ax.set_xticks(lengths, [f"{s:g}" for s in lengths])
        ax.minorticks_off()
        ax.set_xlabel("seconds of audio")
        ax.set_ylabel("seconds per second of audio")
        ax.set_title(f"length sweep: {SWEEP_TITLES.get(model, model)}")
        if sweep["implementations"]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "fewer than two lengths in this run", ha="center", transform=ax.transAxes)
    fig.suptitle(f"unmix-ports benchmark ({doc['plan']['name']} plan), {doc['created']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- files --------------------------------------------------------------------------------------------------------


def write(doc: Mapping[str, Any], folder: str | Path, stem: str = "latest") -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``folder``, each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"
    paths = [
        atomic_write(folder / f"{stem}.json", lambda tmp: Path(tmp).write_text(text)),
        atomic_write(folder / f"{stem}.md", lambda tmp: Path(tmp).write_text(markdown(doc))),
        atomic_write(folder / f"{stem}.png", lambda tmp: chart(doc, tmp), suffix=".png"),
    ]
    return paths


def summary(doc: Mapping[str, Any]) -> str:
    """A few lines for the terminal: each port's time ratio per main workload, and the sweep flags."""
    lines = []
    for name in doc["plan"]["main"]:
        ratios = [
            f"{r['impl']} {r['ratio_vs_upstream']:.2f}"
            for r in doc["rows"]
            if r["point"] == name and r.get("ratio_vs_upstream") is not None
        ]
        if ratios:
            lines.append(f"{name:<22} time ratio vs upstream: {', '.join(ratios)}")
    for model, sweep in doc["sweeps"].items():
        for impl, v in sweep["implementations"].items():
            for flag in v["flags"]:
                lines.append(f"sweep {model} {impl}: not linear: {flag}")
    return "\n".join(lines)
