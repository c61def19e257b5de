"""Which resampler ``unmix-separate`` uses, measured: accuracy, speed and memory of three candidates.

- ``spec``: :func:`core_spec.reference.resample.resample_frac` (julius semantics, the Demucs resampler, float64);
- ``poly_default``: ``scipy.signal.resample_poly`` with its own default filter (Kaiser, cut at the Nyquist frequency);
- ``poly_julius``: ``resample_poly`` with julius's windowed-sinc design (:func:`unmix.audio_files.resample`, the
  choice).

Accuracy: band-limited stereo noise (10 s) resampled and compared, away from the edges, with the exact resampling
of that periodic band-limited signal (``scipy.signal.resample``, FFT): SNR in dB for content up to 0.8 and 0.9 of
the lower Nyquist frequency; for downsampling also the stop band (content just above the new Nyquist frequency,
which must vanish: output energy below the input's, in dB). Speed: seconds per 30 s of stereo audio. Memory: the
peak resident memory a 30-s stereo call adds (``benchmarks.common.measure_peak_rss``).

Run: ``.venv/bin/python -m benchmarks resample`` (writes ``benchmarks/results/separate_resample.json``).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from benchmarks.common import measure_peak_rss, write_result

RATES = [(22050, 44100), (48000, 44100), (16000, 44100), (96000, 44100), (44100, 16000)]


def candidates():
    from scipy import signal

    from core_spec.reference.resample import resample_frac
    from unmix.audio_files import resample

    return {
        "spec": lambda x, old, new: resample_frac(x, old, new),
        "poly_default": lambda x, old, new: signal.resample_poly(
            x, new // math.gcd(old, new), old // math.gcd(old, new), axis=-1
        ),
        "poly_julius": lambda x, old, new: resample(x, old, new),
    }


def band(rng: np.random.Generator, n: int, rate: int, low: float, high: float) -> np.ndarray:
    x = rng.standard_normal((2, n))
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[:, (freqs > high) | (freqs < low)] = 0
    return np.fft.irfft(spectrum, n)


def snr(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(expected**2) / np.sum((actual - expected) ** 2)))


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m benchmarks resample", description=__doc__.splitlines()[0]).parse_args(argv)
    from scipy import signal

    rng = np.random.default_rng(0)
    rows = []
    for old, new in RATES:
        n = old * 10
        m = n * new // old
        keep = slice(m // 10, -m // 10)
        tests = {f: band(rng, n, old, 0, f * min(old, new) / 2) for f in (0.8, 0.9)}
        exact = {f: signal.resample(x, m, axis=-1) for f, x in tests.items()}
        stop = band(rng, n, old, 1.05 * new / 2, old / 2) if new < old else None
        thirty = band(rng, old * 30, old, 0, min(old, new) / 2).astype(np.float32)
        for name, fn in candidates().items():
            fn(tests[0.8][:, : old // 10], old, new)  # warm-up (kernels are cached)
            row = {"case": f"{old}->{new}", "impl": name}
            for f, x in tests.items():
                row[f"snr_db_pass_{f}"] = round(
                    snr(np.asarray(fn(x, old, new))[..., :m][..., keep], exact[f][..., keep]), 1
                )
            if stop is not None:
                y = np.asarray(fn(stop, old, new))
                row["stop_band_db"] = round(float(10 * np.log10(np.mean(stop**2) / np.mean(y**2))), 1)
            began = time.perf_counter()
            _, memory = measure_peak_rss(lambda fn=fn, x=thirty, a=old, b=new: fn(x, a, b))
            row["seconds_per_30s"] = round(time.perf_counter() - began, 3)
            row["peak_delta_mb_30s"] = round(memory["peak_delta_mb"], 1)
            rows.append(row)
            print(row, flush=True)
    path = write_result(
        "separate_resample", rows, {"signal": "band-limited stereo noise, float64 (float32 for timing)"}
    )
    print(f"wrote {path}")
    return 0
