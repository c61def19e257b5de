"""The parity tests every port runs, written once. NumPy only: both environments.

A port's test module defines a ``port`` fixture returning its :class:`~unmix.parity.adapters.Port` adapter (plain
functions that take and return NumPy arrays, running the port's own code in ``dtype`` on ``device``; the adapters
live in ``unmix/parity/adapters/``, shared with ``unmix-parity``) and imports the tests::

    from parity_tests.harness import *  # noqa: F403  (the shared stage tests)

    @pytest.fixture(scope="module")
    def port() -> Port: ...

Each test runs one stage of the port on the inputs of a committed fixture and compares it with

- the NumPy reference on the same inputs (float64, the spec; the chain of parity), at the tolerance of the
  port's dtype, and
- for float32, also the upstream output made in float32 (the fixture itself); for the rows relative to upstream
  (``wiener``, ``separator``: ``core_spec.tolerances``) the port's float32 error is judged against upstream's
  float32 error on the same input, and an output degraded by ``REGRESSION_DB`` must fail (:func:`compare`).

A few tests have no upstream output to compare with: the STFT of the shortest signals and the clear error below
them (the spec's :class:`~core_spec.reference.transforms.ShortSignalError` and message, from the STFT and from the
separator), and the Wiener filter on a one-channel mixture (seeded inputs, against the spec only). The traced
stages also check that the port records exactly the spec's keys, in the spec's order. A port whose FFT rounds the
imaginary parts of real-axis bins to other signs than NumPy's (``Port.fft_signs_differ``) has its float64
separator compared with ``atan2="exact"`` on both sides (upstream's atan2 is discontinuous there).

Adapters may leave a stage as ``None`` only while the port does not have it yet; such tests fail (not skip)
with a message naming the missing stage, so an unfinished port is never counted as passing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from core_spec.configs import DemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig, umx_preset
from core_spec.reference import apply as ref_apply
from core_spec.reference import demucs as ref_demucs
from core_spec.reference import filtering as ref_filtering
from core_spec.reference import resample as ref_resample
from core_spec.reference import separator as ref_separator
from core_spec.reference import transforms as ref_transforms
from core_spec.reference import umx as ref_umx
from core_spec.reference.transforms import ShortSignalError
from core_spec.seeded import random_audio, random_weights
from core_spec.tolerances import REGRESSION_DB, check, degrade, judge, tolerance
from parity_tests import fixtures_demucs, fixtures_umx
from parity_tests.fixtures import load
from unmix.parity.adapters import Port

__all__ = [
    "Port",
    "compare",
    "test_port_stft",
    "test_port_istft",
    "test_port_stft_upstream_window",
    "test_port_istft_upstream_window",
    "test_port_short_signal",
    "test_port_shortest_signal",
    "test_port_magnitude",
    "test_port_umx_layers",
    "test_port_wiener",
    "test_port_wiener_mono",
    "test_port_separator",
    "test_port_separator_short_signal",
    "test_port_resample",
    "test_port_demucs_forward",
    "test_port_demucs_apply",
]

Array = np.ndarray


def _stage(port: Port, name: str) -> Callable[..., Any]:
    fn = getattr(port, name)
    if fn is None:
        pytest.fail(f"{port.name} has no '{name}' stage yet")
    return fn


def _dtypes(port: Port) -> list[str]:
    return list(port.dtypes)


def compare(
    port: Port, actual: Array, reference: Array, upstream32: Array | None, stage: str, dtype: str, what: str
) -> None:
    """Check ``actual`` against the float64 reference and, for float32, against upstream's float32 output.

    For a row relative to upstream (``snr_margin_db``: ``wiener``, ``separator``) the check against the reference
    is judged against upstream's own float32 error on the same input, and the same output degraded by
    ``REGRESSION_DB`` must fail it (the row catches a port that loses that much).
    """
    upstream = upstream32 if dtype == "float32" else None
    check(actual, reference, stage, dtype, port.device, what=f"{port.name} {what} vs reference", upstream=upstream)
    if upstream is None:
        return
    check(actual, upstream, stage, dtype, port.device, what=f"{port.name} {what} vs upstream float32")
    if tolerance(stage, dtype, port.device).snr_margin_db is not None:
        worse = judge(degrade(actual, reference, REGRESSION_DB), reference, stage, dtype, port.device, upstream)
        assert not worse.ok, (
            f"{port.name} {what}: an output {REGRESSION_DB:g} dB worse ({worse.metrics}) still passes "
            f"({worse.describe()})"
        )


# --- transforms ---------------------------------------------------------------------------------------------

_TRANSFORM_PRESETS = sorted(fixtures_umx.TRANSFORM_PRESETS)


def _stft_cfg(preset: str) -> STFTConfig:
    return umx_preset(preset).separator.stft


@pytest.mark.parametrize("preset", _TRANSFORM_PRESETS)
def test_port_stft(port: Port, preset: str) -> None:
    fx, _ = load("umx_transforms")
    cfg = _stft_cfg(preset)
    audio = fx[f"{preset}.audio"]
    reference = ref_transforms.stft(audio, cfg.n_fft, cfg.n_hop)
    for dtype in _dtypes(port):
        X = _stage(port, "stft")(audio.astype(dtype), cfg, dtype, port.device)
        compare(port, X, reference, fx[f"{preset}.stft.float32"], "stft", dtype, f"{preset} stft")


@pytest.mark.parametrize("preset", _TRANSFORM_PRESETS)
def test_port_istft(port: Port, preset: str) -> None:
    fx, _ = load("umx_transforms")
    cfg = _stft_cfg(preset)
    X = fx[f"{preset}.stft.float64"]
    length = fx[f"{preset}.audio"].shape[-1]
    reference = ref_transforms.istft(X, cfg.n_fft, cfg.n_hop, length=length)
    for dtype in _dtypes(port):
        cdtype = np.complex64 if dtype == "float32" else np.complex128
        y = _stage(port, "istft")(X.astype(cdtype), cfg, length, dtype, port.device)
        compare(port, y, reference, fx[f"{preset}.istft.float32"], "istft", dtype, f"{preset} istft")
        audio = fx[f"{preset}.audio"].astype(dtype)
        round_trip = _stage(port, "istft")(
            _stage(port, "stft")(audio, cfg, dtype, port.device), cfg, length, dtype, port.device
        )
        check(
            round_trip, fx[f"{preset}.audio"], "round_trip", dtype, port.device, what=f"{port.name} {preset} round trip"
        )


@pytest.mark.parametrize("preset", _TRANSFORM_PRESETS)
def test_port_stft_upstream_window(port: Port, preset: str) -> None:
    """Given upstream's window (``torch.hann_window`` built in float32, cast), the port's STFT is upstream's in both
    dtypes: the transform itself, apart from the window (which differs from the float64 Hann window by float32
    rounding, ~6e-8: far above the float64 row)."""
    fx, _ = load("umx_transforms")
    cfg = _stft_cfg(preset)
    audio = fx[f"{preset}.audio"]
    for dtype in _dtypes(port):
        window = fx[f"{preset}.window.{dtype}"]
        X = _stage(port, "stft")(audio.astype(dtype), cfg, dtype, port.device, window=window)
        what = f"{port.name} {preset} stft, upstream's window, vs upstream {dtype}"
        check(X, fx[f"{preset}.stft.{dtype}"], "stft", dtype, port.device, what=what)


@pytest.mark.parametrize("preset", _TRANSFORM_PRESETS)
def test_port_istft_upstream_window(port: Port, preset: str) -> None:
    """Given upstream's window, the port's ISTFT of upstream's STFT is upstream's ISTFT in both dtypes."""
    fx, _ = load("umx_transforms")
    cfg = _stft_cfg(preset)
    length = fx[f"{preset}.audio"].shape[-1]
    for dtype in _dtypes(port):
        cdtype = np.complex64 if dtype == "float32" else np.complex128
        X = fx[f"{preset}.stft.{dtype}"].astype(cdtype)
        y = _stage(port, "istft")(X, cfg, length, dtype, port.device, window=fx[f"{preset}.window.{dtype}"])
        what = f"{port.name} {preset} istft, upstream's window, vs upstream {dtype}"
        check(y, fx[f"{preset}.istft.{dtype}"], "istft", dtype, port.device, what=what)


def _spec_error(fn: Callable[[], Any]) -> str:
    """The spec's :class:`ShortSignalError` message for the same input (the spec raises it, or this fails)."""
    with pytest.raises(ShortSignalError) as error:
        fn()
    return str(error.value)


def _short_lengths() -> list[int]:
    fft = _stft_cfg("umxhq")
    return [0, 1, ref_transforms.min_length(fft.n_fft, fft.center) - 1]


@pytest.mark.parametrize("length", _short_lengths())
def test_port_short_signal(port: Port, length: int) -> None:
    """A signal too short for reflect-centred framing raises the spec's ShortSignalError, with the spec's message
    (the length and the minimum), in the STFT; never a framework error or a port-specific padding."""
    cfg = _stft_cfg("umxhq")
    expected = _spec_error(lambda: ref_transforms.stft(np.zeros((1, 2, length)), cfg.n_fft, cfg.n_hop, cfg.center))
    for dtype in _dtypes(port):
        with pytest.raises(ShortSignalError) as error:
            _stage(port, "stft")(np.zeros((1, 2, length), dtype), cfg, dtype, port.device)
        assert str(error.value) == expected, f"{port.name} stft of {length} samples {dtype}"


def test_port_shortest_signal(port: Port) -> None:
    """The shortest signal the STFT accepts (``min_length``), and an ISTFT asked for more samples than the frames
    hold (zero padding after the last one they reach), against the spec; the round trip keeps the signal."""
    cfg = _stft_cfg("umxhq")
    length = ref_transforms.min_length(cfg.n_fft, cfg.center)
    padded = length + cfg.n_hop
    audio = random_audio(length, 2, seed=7, nb_samples=1)
    X_ref = ref_transforms.stft(audio, cfg.n_fft, cfg.n_hop, cfg.center)
    y_ref = ref_transforms.istft(X_ref, cfg.n_fft, cfg.n_hop, cfg.center, length=padded)
    for dtype in _dtypes(port):
        X = _stage(port, "stft")(audio.astype(dtype), cfg, dtype, port.device)
        assert X.shape == X_ref.shape, f"{port.name} stft of {length} samples: {X.shape}, the spec {X_ref.shape}"
        check(X, X_ref, "stft", dtype, port.device, what=f"{port.name} stft of the shortest signal {dtype}")
        y = _stage(port, "istft")(X, cfg, padded, dtype, port.device)
        assert y.shape == y_ref.shape, f"{port.name} istft to {padded} samples: {y.shape}"
        check(y, y_ref, "istft", dtype, port.device, what=f"{port.name} istft padded to {padded} samples {dtype}")
        what = f"{port.name} round trip of the shortest signal {dtype}"
        check(y[..., :length], audio, "round_trip", dtype, port.device, what=what)


@pytest.mark.parametrize("mono", [False, True])
def test_port_magnitude(port: Port, mono: bool) -> None:
    fx, _ = load("umx_transforms")
    X = fx["umxhq.stft.float64"]
    reference = ref_transforms.complex_norm(X, mono=mono)
    key = "magnitude_mono" if mono else "magnitude"
    for dtype in _dtypes(port):
        cdtype = np.complex64 if dtype == "float32" else np.complex128
        mag = _stage(port, "complex_norm")(X.astype(cdtype), mono, dtype, port.device)
        compare(port, mag, reference, fx[f"umxhq.{key}.float32"], "magnitude", dtype, key)


# --- Open-Unmix -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(fixtures_umx.MODEL_PRESETS))
def test_port_umx_layers(port: Port, preset: str) -> None:
    fx, meta = load(f"umx_model_{preset}")
    config: UMXConfig = umx_preset(preset).model
    weights = random_weights(config, meta["weights_seed"])
    x = fx["input.float64"]
    ref_trace: dict[str, Array] = {}
    reference = ref_umx.open_unmix(weights, config, x, trace=ref_trace)
    for dtype in _dtypes(port):
        out, trace = _stage(port, "umx")(weights, config, x.astype(dtype), dtype, port.device)
        assert tuple(trace) == ref_umx.UMX_TRACE_KEYS, (
            f"{port.name} umx records {tuple(trace)}; the spec's keys, in order: {ref_umx.UMX_TRACE_KEYS}"
        )
        for key in ref_umx.UMX_TRACE_KEYS:
            compare(port, trace[key], ref_trace[key], fx[f"trace.{key}.float32"], "umx.layer", dtype, f"{preset} {key}")
        compare(port, out, reference, fx["output.float32"], "umx.output", dtype, f"{preset} output")


@pytest.mark.parametrize("i", range(len(fixtures_umx.WIENER_CASES)))
def test_port_wiener(port: Port, i: int) -> None:
    fx, _ = load("umx_wiener")
    case = fixtures_umx.WIENER_CASES[i]
    v, mix = fx[f"{i}.v"], fx[f"{i}.mix"]
    args = (case["niter"], case["softmask"], case["residual"])
    reference = ref_filtering.wiener(v, mix, *args)
    what = f"wiener case {i} {case}"
    for dtype in _dtypes(port):
        cdtype = np.complex64 if dtype == "float32" else np.complex128
        out = _stage(port, "wiener")(v.astype(dtype), mix.astype(cdtype), *args, dtype, port.device)
        compare(port, out, reference, fx[f"{i}.out.float32"], "wiener", dtype, what)


@pytest.mark.parametrize("i", range(len(fixtures_umx.WIENER_MONO_CASES)))
def test_port_wiener_mono(port: Port, i: int) -> None:
    """A one-channel mixture (no upstream fixture: against the spec; float32 by the row's floor)."""
    case = fixtures_umx.WIENER_MONO_CASES[i]
    v, mix = fixtures_umx.wiener_mono_inputs(i)
    args = (case["niter"], case["softmask"], case["residual"])
    reference = ref_filtering.wiener(v, mix, *args)
    for dtype in _dtypes(port):
        cdtype = np.complex64 if dtype == "float32" else np.complex128
        out = _stage(port, "wiener")(v.astype(dtype), mix.astype(cdtype), *args, dtype, port.device)
        compare(port, out, reference, None, "wiener", dtype, f"wiener mono case {i} {case}")


def _exact_atan2(config: UMXSeparatorConfig) -> UMXSeparatorConfig:
    wiener = dataclasses.replace(config.separator.wiener, atan2="exact")
    return dataclasses.replace(config, separator=dataclasses.replace(config.separator, wiener=wiener))


@pytest.mark.parametrize("name", sorted(fixtures_umx.SEPARATOR_CASES))
def test_port_separator(port: Port, name: str) -> None:
    """The whole separator. Float64 on a port with ``fft_signs_differ``: both sides with ``atan2="exact"``.

    Upstream's atan2 adds pi rounded to float32, so the phase it gives a bin on the negative real axis jumps by
    2 x 8.7e-8 rad with the sign of a rounding-level imaginary part. Such bins are not rare: every bin of the first
    frame is real in exact arithmetic (a reflect-padded, centred frame times a symmetric window is even), half of
    them negative. Where the port's FFT and NumPy's disagree on those signs, the float64 output moves by up to
    ~3e-8 of its peak (row: 1e-9); the exact atan2 is continuous at the axis.
    """
    fx, _ = load("umx_separator")
    config: UMXSeparatorConfig
    config, _ = fixtures_umx.SEPARATOR_CASES[name]
    weights = fixtures_umx.separator_weights(config)
    audio = fx[f"{name}.audio"]
    reference = ref_separator.separate(audio, weights, config)
    for dtype in _dtypes(port):
        if dtype == "float64" and port.fft_signs_differ:
            exact = _exact_atan2(config)
            out = _stage(port, "separator")(weights, exact, audio, dtype, port.device)
            expected = ref_separator.separate(audio, weights, exact)
            what = f"{port.name} separator {name} exact atan2 vs reference"
            check(out, expected, "separator", dtype, port.device, what=what)
            continue
        out = _stage(port, "separator")(weights, config, audio.astype(dtype), dtype, port.device)
        compare(port, out, reference, fx[f"{name}.out.float32"], "separator", dtype, f"separator {name}")


def test_port_separator_short_signal(port: Port) -> None:
    """A mixture too short for the separator's STFT raises the spec's ShortSignalError, with the spec's message."""
    config, _ = fixtures_umx.SEPARATOR_CASES["umxse_niter1"]
    weights = fixtures_umx.separator_weights(config)
    fft = config.separator.stft
    audio = np.zeros((1, 2, ref_transforms.min_length(fft.n_fft, fft.center) - 1))
    expected = _spec_error(lambda: ref_separator.separate(audio, weights, config))
    for dtype in _dtypes(port):
        with pytest.raises(ShortSignalError) as error:
            _stage(port, "separator")(weights, config, audio.astype(dtype), dtype, port.device)
        assert str(error.value) == expected, f"{port.name} separator of {audio.shape[-1]} samples {dtype}"


# --- Demucs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["up", "down"])
def test_port_resample(port: Port, direction: str) -> None:
    fx, _ = load("demucs_resample")
    old, new = (1, 2) if direction == "up" else (2, 1)
    audio = fx["audio"]
    reference = ref_resample.resample_frac(audio, old, new)
    for dtype in _dtypes(port):
        y = _stage(port, "resample")(audio.astype(dtype), old, new, dtype, port.device)
        check(y, reference, "resample", dtype, port.device, what=f"{port.name} resample {direction} vs reference")


def _demucs_case(prefix: str, name: str) -> tuple[dict[str, Array], DemucsConfig, dict[str, Array]]:
    from core_spec.configs import config_from_json

    fx, meta = load(f"demucs_{prefix}_{name}")
    config = config_from_json(meta["config"])
    return fx, config, random_weights(config, meta["weights_seed"])


@pytest.mark.parametrize("name", sorted(fixtures_demucs.FORWARD_CASES))
def test_port_demucs_forward(port: Port, name: str) -> None:
    fx, config, weights = _demucs_case("forward", name)
    mix = fx["mix"]
    ref_trace: dict[str, Array] = {}
    reference = ref_demucs.demucs(weights, config, mix, trace=ref_trace)
    for dtype in _dtypes(port):
        out, trace = _stage(port, "demucs")(weights, config, mix.astype(dtype), dtype, port.device)
        keys = ref_demucs.demucs_trace_keys(config)
        assert tuple(trace) == keys, f"{port.name} {name} records {tuple(trace)}; the spec's keys, in order: {keys}"
        for key in keys:
            check(trace[key], ref_trace[key], "demucs.layer", dtype, port.device, what=f"{port.name} {name} {key}")
        check(out, reference, "demucs.output", dtype, port.device, what=f"{port.name} {name} output vs reference")
        if dtype == "float32":
            check(
                out, fx["output.float32"], "demucs.output", dtype, port.device, what=f"{port.name} {name} vs upstream"
            )


@pytest.mark.parametrize("name", sorted(fixtures_demucs.APPLY_CASES))
def test_port_demucs_apply(port: Port, name: str) -> None:
    fx, config, weights = _demucs_case("apply", name)
    case = fixtures_demucs.APPLY_CASES[name]
    mix = fx["mix"]
    kwargs = dict(
        split=True, overlap=case.overlap, transition_power=case.transition_power, segment_length=config.segment_length
    )
    reference = ref_apply.apply_model(weights, config, mix, **kwargs)
    for dtype in _dtypes(port):
        out = _stage(port, "apply_model")(weights, config, mix.astype(dtype), dtype=dtype, device=port.device, **kwargs)
        check(out, reference, "demucs.apply", dtype, port.device, what=f"{port.name} apply {name} vs reference")
        if dtype == "float32":
            check(out, fx["output.float32"], "demucs.apply", dtype, port.device, what=f"{port.name} apply {name}")
