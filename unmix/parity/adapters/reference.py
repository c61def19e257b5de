"""The float64 NumPy reference (``core_spec.reference``) as a :class:`~unmix.parity.adapters.Port`: what every
implementation is compared with. NumPy only (every environment); always float64, whatever ``dtype`` says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from core_spec.reference import apply, demucs, filtering, htdemucs, htdemucs_apply, resample, separator, transforms, umx
from unmix.parity.adapters import Port, port_of

__all__ = ["port"]


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.complex128 if np.iscomplexobj(x) else np.float64)


def _stft(x, cfg: STFTConfig, dtype, device, window=None):
    return transforms.stft(_f64(x), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, window)


def _istft(X, cfg: STFTConfig, length, dtype, device, window=None):
    return transforms.istft(_f64(X), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, length, window)


def _complex_norm(X, mono, dtype, device):
    return transforms.complex_norm(_f64(X), mono=mono)


def _umx(weights, config: UMXConfig, x, dtype, device):
    trace: dict[str, np.ndarray] = {}
    out = umx.open_unmix(weights, config, _f64(x), trace=trace)
    return out, trace


def _wiener(v, mix, niter, softmask, residual, dtype, device):
    return filtering.wiener(_f64(v), _f64(mix), niter, softmask=softmask, residual=residual)


def _separator(weights, config: UMXSeparatorConfig, audio, dtype, device):
    return separator.separate(_f64(audio), weights, config)


def _resample(x, old, new, dtype, device):
    return resample.resample_frac(_f64(x), old, new)


def _demucs(weights, config: DemucsConfig, mix, dtype, device):
    trace: dict[str, np.ndarray] = {}
    out = demucs.demucs(weights, config, _f64(mix), trace=trace)
    return out, trace


def _apply_model(weights, config: DemucsConfig, mix, split, overlap, transition_power, segment_length, dtype, device):
    return apply.apply_model(
        weights,
        config,
        _f64(mix),
        split=split,
        overlap=overlap,
        transition_power=transition_power,
        segment_length=segment_length,
    )


def _htdemucs(weights, config: HTDemucsConfig, mix, dtype, device, stats=None):
    trace: dict[str, np.ndarray] = {}
    out = htdemucs.htdemucs(weights, config, _f64(mix), trace=trace, stats=stats)
    return out, trace


@contextlib.contextmanager
def _injected_stats(calls: Sequence[Mapping[str, np.ndarray]]) -> Iterator[list[int]]:
    """While inside, every network call of the spec's ``apply_model`` normalises its inputs with the next entry
    of ``calls`` (``mean``, ``std``, ``mean_t``, ``std_t``: upstream's own, recorded in its call order); yields a
    one-item list counting the calls made. The spec's ``apply_model`` looks its network up as the module global
    ``htdemucs`` of :mod:`core_spec.reference.htdemucs_apply`, which is replaced meanwhile."""
    original = htdemucs_apply.htdemucs
    made = [0]

    def network(w, config, mix, trace=None, window=None, **kwargs):
        if made[0] >= len(calls):
            raise RuntimeError(f"the spec made more network calls than upstream's {len(calls)}")
        stats = calls[made[0]]
        made[0] += 1
        return original(w, config, mix, trace=trace, window=window, stats=stats, **kwargs)

    htdemucs_apply.htdemucs = network
    try:
        yield made
    finally:
        htdemucs_apply.htdemucs = original


def _htdemucs_apply(weights, config: HTDemucsConfig | BagConfig, mix, shifts, split, overlap, transition_power,
                    segment, seed, dtype, device, stats=None):  # fmt: skip
    per_model = weights[0] if isinstance(config, HTDemucsConfig) else weights
    kwargs = dict(shifts=shifts, split=split, overlap=overlap, transition_power=transition_power, segment=segment)
    if stats is None:
        return htdemucs_apply.apply_model(per_model, config, _f64(mix), rng=seed, **kwargs), None
    with _injected_stats(stats) as made:
        out = htdemucs_apply.apply_model(per_model, config, _f64(mix), rng=seed, **kwargs)
    if made[0] != len(stats):
        raise RuntimeError(f"the spec made {made[0]} network calls, upstream {len(stats)}")
    return out, None


def port(device: str = "cpu") -> Port:
    """The reference (NumPy on the CPU whatever ``device`` says)."""
    return port_of("reference", globals(), dtypes=("float64",), device="cpu")
