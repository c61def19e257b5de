"""The port columns of ``make demo``: every port separates the stempeg clip next to the upstream code.

- Open-Unmix: a separator with umxhq shapes (4 targets, 8.9 M parameters each, seeded weights), ``niter=1``,
  float32: upstream ``openunmix.model.Separator`` and ``Separator.separate`` of ``umx_torch``, ``umx_tf``,
  ``umx_jax`` and ``umx_nnabla``.
- Demucs: ``demucs_unittest`` shapes (seeded weights), 4-s segments so the 6-s clip is split and cross-faded,
  float32: upstream ``demucs.utils.apply_model`` inside ``separate.py``'s normalisation, and each port's
  ``separate_track``.

Printed per stem: the SNR in dB of each port's stems against upstream's, and the time of one call (after a
warm-up call for the compiled ports: TensorFlow's and JAX's first call traces and compiles). The NNabla port runs in
``.venv-nnabla``: the weights go there as a canonical file, the clip as ``.npz`` (``python -m umx_nnabla
separate-npz``); its time is measured there, without the interpreter's start.

Run alone: ``python -m scripts.demo_ports`` (or through ``make demo``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# torch's OpenMP threads spin while they wait; on a shared machine that stalls single calls for seconds
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core_spec.canonical import join_targets, save_canonical  # noqa: E402
from core_spec.configs import DEMUCS_PRESETS, umx_preset  # noqa: E402
from core_spec.seeded import random_weights  # noqa: E402
from core_spec.tolerances import metrics  # noqa: E402
from parity_tests import fixtures_umx  # noqa: E402

UMX_SEED = 7
DEMUCS_SEED = 0
SEGMENT_SECONDS = 4
PORTS = ("umx_torch", "umx_tf", "umx_jax", "umx_nnabla")

Run = Callable[[], np.ndarray]


def umx_config() -> Any:
    config = umx_preset("umxhq")
    wiener = dataclasses.replace(config.separator.wiener, niter=1)
    return dataclasses.replace(config, separator=dataclasses.replace(config.separator, wiener=wiener))


def demucs_config() -> Any:
    preset = DEMUCS_PRESETS["demucs_unittest"]
    return dataclasses.replace(preset, segment_length=SEGMENT_SECONDS * preset.samplerate)


def _timed(run: Run, warm_up: bool) -> tuple[np.ndarray, float]:
    if warm_up:
        run()
    start = time.perf_counter()
    out = run()
    return np.asarray(out), time.perf_counter() - start


def _in_process(port: str, kind: str, config: Any, weights: dict, mixture: np.ndarray) -> tuple[np.ndarray, float]:
    import importlib

    pkg = importlib.import_module(port)
    model = pkg.from_canonical(config, weights)
    if kind == "umx":
        return _timed(lambda: np.asarray(model.separate(mixture))[0], warm_up=port != "umx_torch")
    segment = config.segment_length
    return _timed(lambda: np.asarray(pkg.separate_track(model, mixture, segment_length=segment))[0], True)


def _nnabla(config: Any, weights: dict, mixture: np.ndarray) -> tuple[np.ndarray, float]:
    python = ROOT / ".venv-nnabla" / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"{python} missing: run make setup")
    with tempfile.TemporaryDirectory() as tmp:
        save_canonical(Path(tmp) / "model", weights, config)
        np.savez(Path(tmp) / "in.npz", mixture=mixture)
        command = [str(python), "-m", "umx_nnabla", "separate-npz", "--weights", str(Path(tmp) / "model")]
        command += ["--input", str(Path(tmp) / "in.npz"), "--output", str(Path(tmp) / "out.npz")]
        if hasattr(config, "segment_length"):
            command += ["--segment-length", str(config.segment_length)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"umx_nnabla separate-npz failed:\n{done.stderr[-2000:]}")
        with np.load(Path(tmp) / "out.npz") as out:
            return out["estimates"], float(out["seconds"])


def _upstream(kind: str, config: Any, weights: dict, mixture: np.ndarray) -> tuple[np.ndarray, float]:
    from parity_tests.oracle import demucs_model, torch, umx_separator

    if kind == "umx":
        separator = umx_separator(config, weights, torch.float32)
        with torch.no_grad():
            return _timed(lambda: separator(torch.from_numpy(mixture[None])).numpy()[0], warm_up=False)
    from demucs.utils import apply_model

    model = demucs_model(config, weights, torch.float32)
    wav = torch.from_numpy(mixture)
    ref = wav.mean(0)

    def run() -> np.ndarray:
        with torch.no_grad():
            sources = apply_model(model, (wav - ref.mean()) / ref.std(), shifts=0, split=True, overlap=0.25)
        return (sources * ref.std() + ref.mean()).numpy()

    return _timed(run, warm_up=False)


def compare(kind: str, mixture: np.ndarray) -> dict[str, Any]:
    """Separate ``mixture`` ``(2, nb_timesteps)`` (float32, 44.1 kHz) upstream and in every port.

    Returns:
        ``{"sources": names, "snr_db": {port: {source: dB}}, "time_s": {implementation: seconds}}``; a port that
        fails is reported under ``"errors"`` instead of stopping the demo.
    """
    if kind == "umx":
        config = umx_config()
        per_target = fixtures_umx.separator_weights(config, seed=UMX_SEED)
        weights: dict = join_targets(per_target)
        sources = config.separator.targets
        upstream_weights: dict = per_target
    else:
        config = demucs_config()
        weights = upstream_weights = random_weights(config, DEMUCS_SEED)
        sources = config.sources
    theirs, seconds = _upstream(kind, config, upstream_weights, mixture)
    result: dict[str, Any] = {"sources": sources, "snr_db": {}, "time_s": {"upstream": seconds}, "errors": {}}
    for port in PORTS:
        try:
            if port == "umx_nnabla":
                ours, seconds = _nnabla(config, weights, mixture)
            else:
                ours, seconds = _in_process(port, kind, config, weights, mixture)
        except Exception as e:  # the demo reports a broken port and goes on with the others
            result["errors"][port] = f"{type(e).__name__}: {e}"
            continue
        result["snr_db"][port] = {s: metrics(ours[i], theirs[i]).snr_db for i, s in enumerate(sources)}
        result["time_s"][port] = seconds
    return result


def print_table(title: str, result: dict[str, Any]) -> None:
    ports = list(result["snr_db"])
    width = max(12, *(len(p) + 2 for p in ports))
    print(f"\n{title}")
    print(f"{'stem':<8}" + "".join(f"{p:>{width}}" for p in ports))
    for source in result["sources"]:
        print(f"{source:<8}" + "".join(f"{result['snr_db'][p][source]:>{width}.1f}" for p in ports))
    print(f"{'time s':<8}" + "".join(f"{result['time_s'][p]:>{width}.2f}" for p in ports), end="")
    print(f"   (upstream {result['time_s']['upstream']:.2f} s)")
    for port, error in result["errors"].items():
        print(f"  {port} failed: {error}")


TITLES = {
    "umx": "Open-Unmix separator (umxhq shapes, seeded weights, niter 1, float32): SNR vs upstream, dB",
    "demucs": "Demucs separate_track (demucs_unittest shapes, 4-s segments, float32): SNR vs upstream, dB",
}


def run(mixture: np.ndarray) -> int:
    """Both tables for ``mixture`` ``(2, nb_timesteps)``; 1 if a port failed, else 0."""
    failed = False
    for kind, title in TITLES.items():
        result = compare(kind, mixture)
        print_table(title, result)
        failed = failed or bool(result["errors"])
    return int(failed)


def main() -> int:
    from parity_tests import real_clip

    return run(real_clip.load_clip().mixture.astype(np.float32))


if __name__ == "__main__":
    raise SystemExit(main())
