"""Open-Unmix fixtures: upstream openunmix 1.3.0 outputs, per stage, float64 and float32.

The module is importable without torch (the cases are plain data, shared by the tests of every environment);
:func:`make` imports the oracle. Files written (``parity_tests/fixtures/``):

``umx_transforms.npz``
    per preset ``p`` in (umxhq, umxse): ``p.window.<dtype>`` upstream's STFT window (made in float32 by
    ``torch.hann_window`` and cast); ``p.audio`` ``(B, 2, L)``; ``p.stft.<dtype>`` complex
    ``(B, 2, F, T)`` from ``torch.stft``; ``p.istft.<dtype>`` ``(B, 2, L)`` = ``torch.istft`` of that STFT;
    ``p.magnitude.<dtype>`` and ``p.magnitude_mono.<dtype>`` from ``openunmix.transforms.ComplexNorm``.
``umx_model_<preset>.npz``
    ``input.<dtype>`` magnitude ``(1, C, F, T)``; ``trace.<key>.<dtype>`` for every key of
    ``core_spec.reference.umx.UMX_TRACE_KEYS`` (captured with forward hooks); ``output.<dtype>``.
``umx_wiener.npz``
    for every case ``i`` of :data:`WIENER_CASES`: ``{i}.v`` magnitudes ``(T, F, C|1, S)``, ``{i}.mix`` complex
    ``(T, F, 2)`` (with exactly-zero bins and negative real parts), ``{i}.out.<dtype>`` complex
    ``(T, F, 2, S[+1])`` from ``openunmix.filtering.wiener``.
``umx_separator.npz``
    for every case ``name`` of :data:`SEPARATOR_CASES`: ``name.audio`` ``(1, 2, L)``, ``name.out.<dtype>``
    ``(1, S, 2, L)`` from ``openunmix.model.Separator``.

``<dtype>`` is ``float64`` or ``float32``: the precision upstream ran in. Weights come from
``core_spec.seeded.random_weights(config, seed)``; their SHA-256 is in the metadata, so a change of the weight
generator is detected instead of silently comparing different models.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np

from core_spec.canonical import join_targets
from core_spec.configs import UMXSeparatorConfig, WienerConfig, umx_preset
from core_spec.seeded import random_audio, random_weights
from parity_tests.fixtures import save, weights_sha256

DTYPES = ("float64", "float32")
TRANSFORM_PRESETS = {"umxhq": 6000, "umxse": 5000}  # preset -> signal length in samples
MODEL_PRESETS = {"umxhq": 7168, "umxse": 8000}

# (niter, softmask, residual, nb_channels of the magnitudes)
WIENER_CASES = [
    dict(niter=n, softmask=s, residual=r, spec_channels=c)
    for n, s, r, c in itertools.product((0, 1, 2), (False, True), (False, True), (1, 2))
]
WIENER_SHAPE = (12, 33, 2, 3)  # frames, bins, mixture channels, sources
# one-channel (mono) mixtures: seeded inputs only (:func:`wiener_mono_inputs`), not in a fixture file; the parity
# suite compares every port with the spec, and parity_tests/torch/test_filtering.py runs upstream on them live
WIENER_MONO_CASES = [
    dict(niter=n, softmask=s, residual=r, channels=1)
    for n, s, r in itertools.product((0, 1, 2), (False, True), (False, True))
]
WIENER_MONO_SHAPE = (10, 17, 1, 3)  # frames, bins, mixture channels, sources


def _sep(preset: str, **wiener: object) -> UMXSeparatorConfig:
    cfg = umx_preset(preset)
    return dataclasses.replace(
        cfg, separator=dataclasses.replace(cfg.separator, wiener=dataclasses.replace(cfg.separator.wiener, **wiener))
    )


# name -> (config, nb_timesteps)
SEPARATOR_CASES: dict[str, tuple[UMXSeparatorConfig, int]] = {
    "umxhq_niter1": (_sep("umxhq", niter=1), 11025),
    "umxhq_niter2_softmask_residual_win3": (
        _sep("umxhq", niter=2, softmask=True, residual=True, wiener_win_len=3),
        8192,
    ),
    "umxhq_niter0": (_sep("umxhq", niter=0), 8192),
    "umxse_niter1": (_sep("umxse", niter=1), 8000),
}


def target_seed(preset_seed: int, index: int) -> int:
    """Seed of the ``index``-th target's weights."""
    return 1000 * preset_seed + index


def separator_weights(config: UMXSeparatorConfig, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Seeded weights for every target of a separator config."""
    return {t: random_weights(config.model, target_seed(seed, i)) for i, t in enumerate(config.separator.targets)}


def small_separator(niter: int, residual: bool = False) -> tuple[UMXSeparatorConfig, dict[str, np.ndarray]]:
    """A umxhq separator of 24 hidden units (quick to trace and export) with ``niter`` and ``residual``, and its
    seeded weights (flat canonical names): what the exported-graph tests of every port separate with."""
    config = _sep("umxhq", niter=niter, residual=residual)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, hidden_size=24))
    weights = {t: random_weights(config.model, seed=70 + i) for i, t in enumerate(config.separator.targets)}
    return config, join_targets(weights)


def wiener_inputs(case: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(v, mix)`` of Wiener case ``case``: music-like magnitudes and a mixture with zero bins."""
    spec = WIENER_CASES[case]
    nb_frames, nb_bins, nb_channels, nb_sources = WIENER_SHAPE
    rng = np.random.default_rng([7, case])
    mix = rng.standard_normal((nb_frames, nb_bins, nb_channels)) + 1j * rng.standard_normal(
        (nb_frames, nb_bins, nb_channels)
    )
    mix *= rng.uniform(0.01, 30.0, (1, nb_bins, 1))  # bins of very different energy (max_abs scaling > 1)
    mix[0] = 0  # a silent frame
    mix[3, 4:7] = 0  # silent bins in both channels
    mix[5, 8, 0] = 0  # a zero in one channel only
    mix[6, 10] = -1.0 + 0j  # negative real part, zero imaginary part
    v = np.abs(rng.standard_normal((nb_frames, nb_bins, spec["spec_channels"], nb_sources)))
    v[0] = 0  # targets are silent where the mixture is
    v[3, 4:7] = 0
    return v, mix


def wiener_mono_inputs(case: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(v, mix)`` of mono case ``case`` (:data:`WIENER_MONO_CASES`): a one-channel mixture with a silent
    frame, silent bins and a negative real bin, magnitudes ``(T, F, 1, S)``."""
    nb_frames, nb_bins, nb_channels, nb_sources = WIENER_MONO_SHAPE
    shape = (nb_frames, nb_bins, nb_channels)
    rng = np.random.default_rng([11, case])
    mix = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * rng.uniform(0.01, 30, (1, nb_bins, 1))
    mix[0] = 0
    mix[4, 3:5] = 0
    mix[6, 7] = -2.0
    v = np.abs(rng.standard_normal(shape + (nb_sources,)))
    v[0] = 0
    return v, mix


def make() -> list[Path]:
    from parity_tests import oracle
    from parity_tests.oracle import torch

    torch.set_num_threads(2)
    versions = oracle.versions()
    tdt = {"float64": torch.float64, "float32": torch.float32}
    written = []

    # --- transforms -----------------------------------------------------------------------------------------
    from openunmix.transforms import ComplexNorm, make_filterbanks

    arrays: dict[str, np.ndarray] = {}
    for preset, length in TRANSFORM_PRESETS.items():
        stft_cfg = umx_preset(preset).separator.stft
        audio = random_audio(length, 2, seed=1, nb_samples=1 if preset == "umxhq" else 2)
        arrays[f"{preset}.audio"] = audio
        for dt in DTYPES:
            enc, dec = make_filterbanks(n_fft=stft_cfg.n_fft, n_hop=stft_cfg.n_hop, center=True)
            enc, dec = enc.to(tdt[dt]), dec.to(tdt[dt])
            with torch.no_grad():
                X = enc(torch.from_numpy(audio).to(tdt[dt]))  # (B, C, F, T, 2)
                y = dec(X, length=length)
                mag = ComplexNorm(mono=False)(X)
                mag_mono = ComplexNorm(mono=True)(X)
            arrays[f"{preset}.window.{dt}"] = enc.window.detach().numpy().copy()
            arrays[f"{preset}.stft.{dt}"] = torch.view_as_complex(X.contiguous()).numpy()
            arrays[f"{preset}.istft.{dt}"] = y.numpy()
            arrays[f"{preset}.magnitude.{dt}"] = mag.numpy()
            arrays[f"{preset}.magnitude_mono.{dt}"] = mag_mono.numpy()
    meta = {"versions": versions, "lengths": TRANSFORM_PRESETS, "audio_seed": 1}
    written.append(save("umx_transforms", arrays, meta))

    # --- the network, layer by layer ------------------------------------------------------------------------
    from core_spec.reference.transforms import complex_norm, stft
    from core_spec.reference.umx import UMX_TRACE_KEYS

    for preset, length in MODEL_PRESETS.items():
        cfg = umx_preset(preset)
        weights = random_weights(cfg.model, seed=0)
        audio = random_audio(length, 2, seed=2, nb_samples=1)
        spec = complex_norm(
            stft(audio, cfg.separator.stft.n_fft, cfg.separator.stft.n_hop), mono=cfg.model.nb_channels == 1
        )
        arrays = {}
        for dt in DTYPES:
            model = oracle.umx_model(cfg.model, weights, tdt[dt])
            x = torch.from_numpy(spec).to(tdt[dt])
            out, captured = oracle.umx_traced(model, x)  # forward hooks on the layers of UMX_TRACE_KEYS
            arrays[f"input.{dt}"] = x.numpy()
            arrays[f"output.{dt}"] = out
            for key in UMX_TRACE_KEYS:
                arrays[f"trace.{key}.{dt}"] = captured[key]
        meta = {"versions": versions, "preset": preset, "weights_seed": 0, "weights_sha256": weights_sha256(weights)}
        written.append(save(f"umx_model_{preset}", arrays, meta))

    # --- Wiener / EM -----------------------------------------------------------------------------------------
    from openunmix.filtering import wiener

    arrays = {}
    for i, case in enumerate(WIENER_CASES):
        v, mix = wiener_inputs(i)
        arrays[f"{i}.v"] = v
        arrays[f"{i}.mix"] = mix
        for dt in DTYPES:
            mix_t = torch.from_numpy(np.stack([mix.real, mix.imag], axis=-1)).to(tdt[dt])
            out = wiener(
                torch.from_numpy(v).to(tdt[dt]),
                mix_t,
                case["niter"],
                softmask=case["softmask"],
                residual=case["residual"],
            ).numpy()
            arrays[f"{i}.out.{dt}"] = out[..., 0, :] + 1j * out[..., 1, :]
    meta = {
        "versions": versions,
        "cases": WIENER_CASES,
        "shape": WIENER_SHAPE,
        "defaults": dataclasses.asdict(WienerConfig()),
    }
    written.append(save("umx_wiener", arrays, meta))

    # --- the whole separator ---------------------------------------------------------------------------------
    arrays = {}
    shas = {}
    for name, (cfg, length) in SEPARATOR_CASES.items():
        weights = separator_weights(cfg)
        shas[name] = {t: weights_sha256(w) for t, w in weights.items()}
        audio = random_audio(length, 2, seed=3, nb_samples=1)
        arrays[f"{name}.audio"] = audio
        for dt in DTYPES:
            separator = oracle.umx_separator(cfg, weights, tdt[dt])
            with torch.no_grad():
                arrays[f"{name}.out.{dt}"] = separator(torch.from_numpy(audio).to(tdt[dt])).numpy()
    meta = {"versions": versions, "weights_sha256": shas, "cases": {k: v[1] for k, v in SEPARATOR_CASES.items()}}
    written.append(save("umx_separator", arrays, meta))
    return written
