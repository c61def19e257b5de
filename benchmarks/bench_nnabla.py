"""Speed of the NNabla port against upstream, measured in the same run. Runs in the NNabla environment::

    .venv-nnabla/bin/python benchmarks/bench_nnabla.py            # all cases + micro-benchmarks
    .venv-nnabla/bin/python benchmarks/bench_nnabla.py --quick    # short signals: checks that everything runs

Cases (those of ``bench_torch.py``; float32, CPU), on the stempeg example's four stems summed and tiled:

- ``umx_separator_niter0`` / ``umx_separator_niter1``: the Open-Unmix separator at umxhq shapes (4 targets,
  8.9 M parameters each, seeded weights), 30 s of stereo at 44.1 kHz, Wiener ``niter`` 0 and 1
  (``wiener_win_len`` 300);
- ``demucs_apply``: Demucs v2 at the released size (channels 64, 265.7 M parameters, seeded weights),
  ``apply_model(split=True, shifts=0)`` on 10 s of stereo.

The upstream figures (openunmix 1.3.0, demucs 2.0.3 on torch) come from ``bench_nnabla_upstream.py``, started in
the main environment as a subprocess in the same run, with one torch thread by default (NNabla's CPU kernels
use one; ``--upstream-threads 0`` gives torch's default); only files cross between the environments: the timings
as JSON, the input audio (this environment cannot decode stem files) and upstream's outputs as ``.npz``; the
port's outputs are compared with upstream's as a check that both computed the same thing. Per implementation and
case: a first call (``first_call_s``; for NNabla it includes building the graphs, one node per LSTM step; its
peak memory is recorded), then ``--repeats`` timed calls (``wall_s_*``, ``cpu_s_*``: process CPU time, which
a loaded machine disturbs less). ``ratio_vs_upstream`` = NNabla ``wall_s_min`` / upstream's; also
``cpu_ratio_vs_upstream`` and ``first_call_ratio_vs_upstream``. Rows in the format of ``benchmarks/common.py``.

Micro-benchmarks (in ``meta.micro``; ``--no-micro`` skips them): the choices of :mod:`umx_nnabla.transforms`
(``F.stft`` / ``F.istft`` against the FFT STFT, 5 s of stereo at n_fft 4096) and :mod:`umx_nnabla.filtering`
(NumPy against the NNabla graph, one 300-frame chunk at umxhq shapes, 4 targets, niter 1).

Results: ``benchmarks/results/nnabla.json``. The machine may be shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core_spec.configs import DemucsConfig, UMXSeparatorConfig, demucs_preset, umx_preset  # noqa: E402
from core_spec.seeded import random_audio, random_weights  # noqa: E402

MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # "umx" or "demucs"
    seconds: float
    niter: int = 0
    channels: int = 64
    description: str = ""

    def scaled(self, umx_seconds: float | None, demucs_seconds: float | None) -> Case:
        seconds = umx_seconds if self.kind == "umx" else demucs_seconds
        return dataclasses.replace(self, seconds=seconds) if seconds else self


CASES: dict[str, Case] = {
    "umx_separator_niter0": Case("umx", 30.0, niter=0, description="UMX separator, umxhq shapes, 4 targets, niter 0"),
    "umx_separator_niter1": Case("umx", 30.0, niter=1, description="UMX separator, umxhq shapes, 4 targets, niter 1"),
    "demucs_apply": Case("demucs", 10.0, description="Demucs v2 apply_model, channels 64, split, shifts 0"),
}


def umx_setup(case: Case) -> tuple[UMXSeparatorConfig, dict[str, dict[str, np.ndarray]]]:
    """Config and seeded weights per target of a UMX case."""
    preset = umx_preset("umxhq")
    sep = dataclasses.replace(preset.separator, wiener=dataclasses.replace(preset.separator.wiener, niter=case.niter))
    config = dataclasses.replace(preset, separator=sep)
    return config, {t: random_weights(config.model, seed=100 + i) for i, t in enumerate(sep.targets)}


def demucs_setup(case: Case) -> tuple[DemucsConfig, dict[str, np.ndarray]]:
    """Config and seeded weights of a Demucs case."""
    config = dataclasses.replace(demucs_preset("demucs"), channels=case.channels)
    return config, random_weights(config, seed=7)


def timed(call: Callable[[], Any], repeats: int) -> tuple[dict[str, Any], Any]:
    """A first call (time, CPU time, peak memory it adds), then ``repeats`` timed calls; returns the timing row
    (``benchmarks/common.py`` names) and the last output."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import measure_peak_rss

    start, start_cpu = time.perf_counter(), time.process_time()
    out, memory = measure_peak_rss(call)
    first, first_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    row = {
        "first_call_s": first,
        "first_call_cpu_s": first_cpu,
        "wall_s_min": min(wall or [first]),
        "wall_s_median": float(np.median(wall or [first])),
        "wall_s_all": wall,
        "cpu_s_min": min(cpu or [first_cpu]),
        "cpu_s_all": cpu,
        "repeats": repeats,
        **memory,
    }
    return row, out


# --- NNabla side ------------------------------------------------------------------------------------------------


def run_nnabla(case: Case, audio: np.ndarray, repeats: int) -> tuple[dict[str, Any], np.ndarray]:
    from umx_nnabla import apply_model, from_canonical

    if case.kind == "umx":
        config, weights = umx_setup(case)
        separator = from_canonical(config, weights)

        def call():
            return separator(audio[None])[0]

    else:
        config, weights = demucs_setup(case)
        model = from_canonical(config, weights)
        del weights

        def call():
            return apply_model(model, audio, shifts=0, split=True, overlap=0.25)

    return timed(call, repeats)


def _best(seconds: float, fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if times[-1] * repeats > seconds:
            break
    return min(times)


def micro_transforms(seconds: float = 5.0) -> dict[str, Any]:
    """``F.stft`` / ``F.istft`` against the FFT STFT of :mod:`umx_nnabla.transforms`, n_fft 4096, stereo."""
    import nnabla as nn

    from core_spec.reference.transforms import istft as ref_istft
    from core_spec.reference.transforms import stft as ref_stft
    from core_spec.tolerances import metrics
    from umx_nnabla import transforms

    audio = random_audio(int(seconds * 44100), 2, seed=5).astype(np.float32)
    n_fft, n_hop = 4096, 1024
    reference = ref_stft(audio.astype(np.float64), n_fft, n_hop)
    x = nn.Variable.from_numpy_array(audio)
    re, im = transforms.stft_graph(x, n_fft, n_hop)

    def dft():
        nn.forward_all([re, im], clear_buffer=False)

    t_dft = _best(30, dft, 2)
    t_fft = _best(5, lambda: transforms.stft(audio, n_fft, n_hop), 5)
    X = transforms.stft(audio, n_fft, n_hop)
    out = {
        "signal": f"{seconds:g} s stereo, n_fft {n_fft}, hop {n_hop}, float32",
        "stft": {
            "F.stft_s": t_dft,
            "fft_s": t_fft,
            "F.stft_rel": metrics(re.d + 1j * im.d, reference).rel,
            "fft_rel": metrics(X, reference).rel,
        },
    }
    length = audio.shape[-1]
    y_ref = ref_istft(reference, n_fft, n_hop, length=length)
    Xr = nn.Variable.from_numpy_array(reference.real.astype(np.float32))
    Xi = nn.Variable.from_numpy_array(reference.imag.astype(np.float32))
    y = transforms.istft_graph(Xr, Xi, n_fft, n_hop, length=length)
    t_idft = _best(30, lambda: y.forward(clear_buffer=False), 2)
    X64 = reference.astype(np.complex64)
    t_ifft = _best(5, lambda: transforms.istft(X64, n_fft, n_hop, length=length), 5)
    out["istft"] = {
        "F.istft_s": t_idft,
        "fft_s": t_ifft,
        "F.istft_rel": metrics(y.d, y_ref).rel,
        "fft_rel": metrics(transforms.istft(X64, n_fft, n_hop, length=length), y_ref).rel,
    }
    return out


def micro_wiener(nb_frames: int = 300) -> dict[str, Any]:
    """The Wiener filter (niter 1) on one chunk of umxhq shapes: NumPy against the NNabla graph."""
    import nnabla as nn

    from core_spec.reference.filtering import wiener as ref_wiener
    from core_spec.tolerances import metrics
    from umx_nnabla import filtering

    rng = np.random.default_rng(3)
    shape = (nb_frames, 2049, 2)
    mix = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * rng.uniform(0.01, 30, (1, 2049, 1))
    v = np.abs(rng.standard_normal((*shape, 4)))
    mix64, v32 = mix.astype(np.complex64), v.astype(np.float32)
    out: dict[str, Any] = {"chunk": f"{nb_frames} frames x 2049 bins x 2 channels x 4 targets, niter 1, float32"}
    out["numpy_s"] = _best(20, lambda: filtering.wiener(v32, mix64, 1), 3)

    def graph():
        re, im = filtering.wiener_graph(
            nn.Variable.from_numpy_array(v32),
            nn.Variable.from_numpy_array(mix64.real.copy()),
            nn.Variable.from_numpy_array(mix64.imag.copy()),
            1,
        )
        re.persistent = im.persistent = True
        nn.forward_all([re, im], clear_buffer=True)
        return re.d + 1j * im.d

    out["nnabla_graph_s"] = _best(60, graph, 3)
    reference = ref_wiener(v, mix, 1)
    out["numpy_snr_db"] = metrics(filtering.wiener(v32, mix64, 1), reference).snr_db
    return out


# --- the run ----------------------------------------------------------------------------------------------------


def run_upstream(
    names: list[str], repeats: int, umx_s: float | None, demucs_s: float | None, threads: int, tmp: Path
) -> dict:
    if not MAIN_PYTHON.exists():
        raise SystemExit(f"the upstream rows need the main environment ({MAIN_PYTHON}); run 'make setup'")
    cmd = [str(MAIN_PYTHON), str(ROOT / "benchmarks" / "bench_nnabla_upstream.py"), "--json", str(tmp / "up.json")]
    cmd += ["--npz", str(tmp / "up.npz"), "--cases", ",".join(names), "--repeats", str(repeats)]
    cmd += ["--threads", str(threads)]
    if umx_s:
        cmd += ["--umx-seconds", str(umx_s)]
    if demucs_s:
        cmd += ["--demucs-seconds", str(demucs_s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    data = json.loads((tmp / "up.json").read_text())
    with np.load(tmp / "up.npz") as arrays:
        data["arrays"] = {k: arrays[k] for k in arrays.files}
    return data


def _snr(actual: np.ndarray, expected: np.ndarray) -> float:
    noise = float(np.sum((actual.astype(np.float64) - expected) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(expected.astype(np.float64) ** 2)) / noise)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="NNabla port vs upstream, same run")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the first one")
    parser.add_argument("--quick", action="store_true", help="short signals (3 s UMX, 2 s Demucs) to check the script")
    parser.add_argument("--umx-seconds", type=float)
    parser.add_argument("--demucs-seconds", type=float)
    parser.add_argument(
        "--upstream-threads",
        type=int,
        default=1,
        help="torch intra-op threads for the upstream rows (default 1: NNabla's CPU kernels run on one thread, so "
        "this compares equal resources, and it avoids torch's OpenMP stalls on a loaded machine; 0: torch's own "
        "default, one per core)",
    )
    parser.add_argument("--no-upstream", action="store_true", help="NNabla rows only, on seeded noise")
    parser.add_argument("--no-micro", action="store_true", help="skip the transform / Wiener micro-benchmarks")
    parser.add_argument("--name", default="nnabla", help="result file benchmarks/results/<name>.json")
    args = parser.parse_args(argv)
    umx_s = args.umx_seconds or (3.0 if args.quick else None)
    demucs_s = args.demucs_seconds or (2.0 if args.quick else None)
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {list(CASES)}")

    import nnabla

    import umx_nnabla  # noqa: F401  (its import fixes NNabla's slow graph construction, see umx_nnabla._context)
    from benchmarks.common import print_table, write_result

    started = time.time()
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "device": "cpu",
        "dtype": "float32",
        "nnabla": nnabla.__version__,
        "numpy": np.__version__,
        "target": "ratio <= 1.5 for every case",
        "notes": "NNabla's CPU extension runs single-threaded Eigen kernels (no BLAS, no OpenMP); upstream runs torch "
        "with meta.upstream.torch_threads threads. NNabla's first call builds the graphs.",
    }
    with tempfile.TemporaryDirectory(prefix="bench-nnabla-") as tmp:
        upstream = None
        if names and not args.no_upstream:
            upstream = run_upstream(names, args.repeats, umx_s, demucs_s, args.upstream_threads, Path(tmp))
            meta["upstream"] = upstream["versions"]
            meta["input"] = "the stempeg example's stems summed, tiled (read in the main environment)"
        else:
            meta["input"] = "seeded noise (core_spec.seeded.random_audio, std 0.1)"
        for name in names:
            case = CASES[name].scaled(umx_s, demucs_s)
            if upstream is not None:
                audio = upstream["arrays"][f"{name}.input"]
            else:
                audio = random_audio(int(case.seconds * 44100), 2, seed=42).astype(np.float32)
            timing, out = run_nnabla(case, audio, args.repeats)
            ours = {"case": name, "impl": "umx_nnabla", "seconds_of_audio": case.seconds, **timing}
            if upstream is not None:
                theirs = {"case": name, "impl": "upstream", "seconds_of_audio": case.seconds}
                theirs.update(upstream["cases"][name])
                ours["ratio_vs_upstream"] = ours["wall_s_min"] / theirs["wall_s_min"]
                ours["ratio_median_vs_upstream"] = ours["wall_s_median"] / theirs["wall_s_median"]
                ours["cpu_ratio_vs_upstream"] = ours["cpu_s_min"] / theirs["cpu_s_min"]
                ours["first_call_ratio_vs_upstream"] = ours["first_call_s"] / theirs["first_call_s"]
                ours["snr_db_vs_upstream"] = _snr(out, upstream["arrays"][f"{name}.output"])
                rows.append(theirs)
            rows.append(ours)
            shown = f"ratio {ours['ratio_vs_upstream']:.2f}" if upstream is not None else ""
            print(f"  {name:<22} umx_nnabla {ours['wall_s_min']:.2f} s wall {shown}", file=sys.stderr, flush=True)
    if not args.no_micro:
        meta["micro"] = {"transforms": micro_transforms(2.0 if args.quick else 5.0), "wiener": micro_wiener()}
        print(json.dumps(meta["micro"], indent=1), file=sys.stderr)
    meta["total_s"] = time.time() - started
    print_table(rows)
    for r in rows:
        if "snr_db_vs_upstream" in r:
            print(f"{r['case']}: output SNR NNabla vs upstream {r['snr_db_vs_upstream']:.1f} dB")
    path = write_result(args.name, rows, meta)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
