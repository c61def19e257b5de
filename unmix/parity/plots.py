"""The two plots of the ``unmix-parity`` report, drawn with matplotlib (Agg backend, imported here only).

- :func:`snr_heatmap`: the lowest SNR of every stage (rows, in the chain's order) for every implementation and
  dtype (columns); cells out of tolerance are marked.
- :func:`difference_spectrogram`: for the separated stem with the lowest SNR (any port or upstream), the
  spectrogram of the reference's stem and of the difference ``stem - reference`` on one dB scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.canonical import atomic_write
from core_spec.configs import UMXSeparatorConfig
from core_spec.reference.transforms import stft
from unmix.parity.stages import sources_of

__all__ = ["difference_spectrogram", "snr_heatmap"]

_INF_SNR = 300.0  # exact equality is drawn as this many dB


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")

    out = atomic_write(path, write, suffix=".png")
    _pyplot().close(fig)
    return out


def snr_heatmap(report: Any, path: Path) -> Path:
    """SNR (dB) per stage x implementation/dtype, the worst comparison of each cell; ``path`` written."""
    plt = _pyplot()
    columns = sorted({f"{r.implementation} {r.dtype}" for r in report.rows}, key=lambda c: (c.split()[1], c))
    stages = [s for s in report.stages if any(r.stage == s for r in report.rows)]
    snr = np.full((len(stages), len(columns)), np.nan)
    bad = np.zeros(snr.shape, dtype=bool)
    for r in report.rows:
        i, j = stages.index(r.stage), columns.index(f"{r.implementation} {r.dtype}")
        value = _INF_SNR if math.isinf(r.snr_db) else r.snr_db
        snr[i, j] = value if np.isnan(snr[i, j]) else min(snr[i, j], value)
        bad[i, j] |= not r.ok
    fig, ax = plt.subplots(figsize=(1.3 * len(columns) + 3, 0.5 * len(stages) + 1.8))
    image = ax.imshow(snr, cmap="viridis", aspect="auto", vmin=np.nanmin(snr) if np.isfinite(snr).any() else 0)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(stages)), stages)
    for i in range(len(stages)):
        for j in range(len(columns)):
            if np.isnan(snr[i, j]):
                continue
            text = ("inf" if snr[i, j] == _INF_SNR else f"{snr[i, j]:.0f}") + (" FAIL" if bad[i, j] else "")
            style = dict(color="red", fontweight="bold") if bad[i, j] else dict(color="white")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, **style)
    fig.colorbar(image, ax=ax, label="lowest SNR vs the float64 reference (dB)")
    ax.set_title(f"unmix-parity: {report.model['name']} on {report.audio['source']} ({report.device})")
    return _save(fig, path)


def _spectrogram_db(x: np.ndarray, n_fft: int, n_hop: int) -> np.ndarray:
    """``20 log10 |STFT|`` of a ``(C, L)`` signal, averaged over channels in power: ``(F, T)``."""
    power = np.mean(np.abs(stft(x, n_fft, n_hop)) ** 2, axis=0)
    return 10 * np.log10(np.maximum(power, 1e-30))


Captures = Mapping[tuple[str, str], Mapping[str, np.ndarray]]

# the stages whose rows are separated stems -> their captured key
_STEM_KEYS = {"separator": "separator", "demucs.apply": "apply", "htdemucs.apply": "htdemucs_apply"}


def difference_spectrogram(report: Any, captures: Captures, path: Path) -> Path | None:
    """For the stem with the lowest SNR: its reference spectrogram and the spectrogram of its difference; ``path``
    written (``None`` if no stem was compared)."""
    stems = [r for r in report.rows if r.stage in _STEM_KEYS and not math.isnan(r.snr_db)]
    if not stems:
        return None
    worst = min(stems, key=lambda r: r.snr_db)
    config = report.config
    sources = sources_of(config)
    source = worst.key.split(" ", 1)[1]
    index = sources.index(source)
    key = _STEM_KEYS[worst.stage]
    reference = captures[("reference", "float64")][key]
    actual = captures[(worst.implementation, worst.dtype)][key]
    ref_stem = reference[0, index] if key == "separator" else reference[index]
    stem = actual[0, index] if key == "separator" else actual[index]
    if isinstance(config, UMXSeparatorConfig):
        n_fft, n_hop, rate = config.separator.stft.n_fft, config.separator.stft.n_hop, config.separator.sample_rate
    else:
        n_fft, n_hop, rate = 2048, 512, config.samplerate
    ref_db = _spectrogram_db(ref_stem, n_fft, n_hop)
    diff_db = _spectrogram_db(stem.astype(np.float64) - ref_stem, n_fft, n_hop)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    extent = (0, ref_stem.shape[-1] / rate, 0, rate / 2000)
    top = float(ref_db.max())
    for ax, data, title in (
        (axes[0], ref_db, f"reference: {source}"),
        (axes[1], diff_db, f"{worst.implementation} {worst.dtype} - reference (SNR {worst.snr_db:.1f} dB)"),
    ):
        image = ax.imshow(data, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=top - 200, vmax=top)
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=axes, label="power (dB, channel mean)")
    fig.suptitle(f"worst stem: {worst.stage} {source}, {worst.implementation} {worst.dtype}")
    return _save(fig, path)
