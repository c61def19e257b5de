"""JAX-specific checks beside the shared stages: the transposed convolution against the reference, the jitted
separator against the same computation run op by op (and the reference, on the masked last-chunk path the shared
fixtures do not reach), input errors, and that float64 runs leave JAX's global x64 flag alone."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from core_spec.configs import DemucsConfig, SeparatorConfig, STFTConfig, UMXConfig, WienerConfig, umx_preset
from core_spec.reference import demucs as ref_demucs
from core_spec.reference import filtering as ref_filtering
from core_spec.reference import layers as ref_layers
from core_spec.reference import separator as ref_separator
from core_spec.reference import umx as ref_umx
from core_spec.reference.transforms import ShortSignalError
from core_spec.seeded import random_audio, random_weights
from core_spec.shapes import valid_length
from core_spec.tolerances import check, judge
from parity_tests import fixtures_umx
from umx_jax import dtype_scope, from_canonical, stft
from umx_jax.filtering import initial_estimate, phase_factors
from umx_jax.layers import conv_transpose1d
from umx_jax.separator import filter_and_invert

DTYPES = ("float32", "float64")


@pytest.mark.parametrize("kernel_size, stride", [(8, 4), (3, 1), (5, 2), (7, 3)])
def test_conv_transpose_matches_reference(kernel_size: int, stride: int, device: str) -> None:
    """``conv_transpose1d`` (a product and an overlap-add; the kernel never flipped) equals
    ``torch.nn.ConvTranspose1d``'s definition; ``lax.conv_transpose`` on the same kernel does not (it would need the
    kernel flipped), judged by the same tolerance row."""
    rng = np.random.default_rng([kernel_size, stride])
    x = rng.standard_normal((2, 5, 11))  # (B, in, L), upstream's layout
    weight = rng.standard_normal((5, 3, kernel_size))  # (in, out, k), PyTorch's transposed-conv layout
    bias = rng.standard_normal(3)
    reference = ref_layers.conv_transpose1d(x, weight, bias, stride)
    for dtype in DTYPES:
        with dtype_scope(dtype, "highest"), jax.default_device(jax.devices(_platform(device))[0]):
            kernel = jnp.asarray(weight.transpose(2, 0, 1), dtype)  # (k, in, out), unflipped
            y = conv_transpose1d(jnp.asarray(x.transpose(0, 2, 1), dtype), kernel, stride) + jnp.asarray(bias, dtype)
            out = np.asarray(y).transpose(0, 2, 1)
            check(
                out, reference, "demucs.layer", dtype, device, what=f"jax conv_transpose1d k={kernel_size} s={stride}"
            )
            # the trap the layer avoids: lax.conv_transpose without transpose_kernel does not flip the kernel
            unflipped = lax.conv_transpose(
                jnp.asarray(x.transpose(0, 2, 1), dtype),
                kernel,
                (stride,),
                "VALID",
                dimension_numbers=("NWC", "WIO", "NWC"),
            )
            trap = np.asarray(unflipped).transpose(0, 2, 1) + bias[:, None]
            assert not judge(trap, reference, "demucs.layer", dtype, device).ok, "the unflipped kernel must fail"


def _platform(device: str) -> str:
    return "gpu" if device == "gpu" else "cpu"


def test_jit_matches_op_by_op_and_reference(device: str) -> None:
    """The compiled separator, the same computation op by op, and the reference agree; the last Wiener chunk is
    shorter than the others (padded and masked inside the compiled filter), with residual and 2 EM iterations.
    float64 runs leave JAX's global x64 flag off."""
    base = umx_preset("umxse")
    wiener = dataclasses.replace(base.separator.wiener, niter=2, residual=True, wiener_win_len=4)
    config = dataclasses.replace(base, separator=dataclasses.replace(base.separator, wiener=wiener))
    weights = fixtures_umx.separator_weights(config, seed=3)
    audio = random_audio(5000, 2, seed=4, nb_samples=2)  # 10 frames: chunks of 4, 4 and 2
    audio[1, :, 1000:3000] = 0.0  # digital silence: zero mixture bins (upstream's atan2 sets them to 1.0)
    reference = ref_separator.separate(audio, weights, config)
    assert not jax.config.jax_enable_x64
    for dtype in DTYPES:
        separator = from_canonical(config, weights, dtype=dtype, device=device)
        jitted = np.asarray(separator.separate(audio))
        assert jitted.dtype == dtype and not jax.config.jax_enable_x64  # float64 enables x64 only while it runs
        what = f"jax separator umxse win4 {dtype}"
        check(jitted, reference, "separator", dtype, device, what=f"{what} vs reference")
        if dtype == "float32":  # op by op compiles every primitive on its own: once is enough
            with dtype_scope(dtype, "highest"), jax.default_device(jax.devices(_platform(device))[0]):
                eager = np.asarray(separator.forward(jnp.asarray(audio, dtype)))
            check(jitted, eager, "separator", dtype, device, what=f"{what} jit vs op by op")


def test_filter_and_invert_follows_the_spec(device: str) -> None:
    """``filter_and_invert`` (the separator after the networks) and ``initial_estimate`` against the spec, float64:
    10 frames in chunks of 4 (the last chunk padded and masked inside one filter call), EM 2 iterations, residual,
    a one-channel magnitude broadcast over a stereo mixture."""
    rng = np.random.default_rng(12)
    wiener = WienerConfig(niter=2, residual=True, wiener_win_len=4)
    sep = SeparatorConfig(targets=("a", "b"), stft=STFTConfig(n_fft=64, n_hop=16), wiener=wiener)
    mix = rng.standard_normal((2, 2, 33, 10)) + 1j * rng.standard_normal((2, 2, 33, 10))
    spectrograms = np.abs(rng.standard_normal((2, 1, 33, 10, 2)))
    reference = ref_separator.filter_and_invert(mix, spectrograms, sep, 150)
    planar = np.moveaxis(spectrograms, -1, 1)  # (B, S, 1, F, T)
    ref_y, ref_mix = ref_filtering.initial_estimate(planar, mix, residual=True)
    with dtype_scope("float64", "highest"), jax.default_device(jax.devices(_platform(device))[0]):
        out = np.asarray(jax.jit(filter_and_invert, static_argnums=(2, 3))(mix, spectrograms, sep, 150))
        y, modified = (np.asarray(a) for a in initial_estimate(planar, mix, residual=True))
    check(out, reference, "separator", "float64", device, what="jax filter_and_invert vs spec")
    check(y, ref_y, "wiener", "float64", device, what="jax initial_estimate vs spec")
    np.testing.assert_array_equal(modified, ref_mix)


def test_variants_match_reference(device: str) -> None:
    """Constructor options the released models do not use: a unidirectional UMX LSTM; Demucs without GLU, without
    the rewrite convolutions, without LSTM (float64, against the reference)."""
    umx_config = UMXConfig(nb_bins=65, nb_channels=2, hidden_size=8, nb_layers=2, unidirectional=True, max_bin=40)
    x = np.abs(np.random.default_rng(6).standard_normal((2, 2, 65, 7)))
    weights = random_weights(umx_config, 6)
    with dtype_scope("float64", "highest"), jax.default_device(jax.devices(_platform(device))[0]):
        model = from_canonical(umx_config, weights, dtype="float64", device=device)
        out = np.asarray(nnx.jit(lambda m, x: m(x), graph_updates=False)(model, x))
    check(
        out, ref_umx.open_unmix(weights, umx_config, x), "umx.output", "float64", device, what="jax umx unidirectional"
    )
    for config in (
        DemucsConfig(channels=3, depth=3, glu=False, lstm_layers=1),
        DemucsConfig(channels=3, depth=3, rewrite=False, lstm_layers=0, resample=False),
    ):
        weights = random_weights(config, 7)
        mix = random_audio(valid_length(600, config), 2, seed=8, nb_samples=1)
        with dtype_scope("float64", "highest"), jax.default_device(jax.devices(_platform(device))[0]):
            model = from_canonical(config, weights, dtype="float64", device=device)
            out = np.asarray(nnx.jit(lambda m, x: m(x), graph_updates=False)(model, mix))
        what = f"jax demucs glu={config.glu} rewrite={config.rewrite} lstm={config.lstm_layers}"
        check(out, ref_demucs.demucs(weights, config, mix), "demucs.output", "float64", device, what=what)


def test_phase_factors_follow_upstream_atan2() -> None:
    """``phase_factors`` (no transcendentals) equals ``cos``/``sin`` of openunmix's own ``atan2`` in every case it
    distinguishes: each quadrant, both axes, the origin (whose real part becomes 1.0), signed zeros."""
    values = [0.0, -0.0, 1.0, -1.0, 2.5, -3e-3]
    re, im = (np.array(a) for a in zip(*[(a, b) for a in values for b in values]))
    mix = np.empty(re.shape, np.complex128)
    mix.real, mix.imag = re, im  # (re + 1j * im would turn -0.0 real parts into +0.0)
    angle, re_modified = ref_filtering.upstream_atan2(im, re)
    with dtype_scope("float64"):
        cos, sin, modified = (np.asarray(a) for a in phase_factors(jnp.asarray(mix), "upstream"))
        exact_cos, exact_sin, same = (np.asarray(a) for a in phase_factors(jnp.asarray(mix), "exact"))
    check(cos, np.cos(angle), "identity", "float64", what="phase_factors upstream cos")
    check(sin, np.sin(angle), "identity", "float64", what="phase_factors upstream sin")
    np.testing.assert_array_equal(modified.real, re_modified)
    np.testing.assert_array_equal(modified.imag, im)
    exact = np.arctan2(im, re)
    check(exact_cos, np.cos(exact), "identity", "float64", what="phase_factors exact cos")
    check(exact_sin, np.sin(exact), "identity", "float64", what="phase_factors exact sin")
    assert np.array_equal(np.signbit(same.real), np.signbit(re)) and np.array_equal(same, mix)


def test_short_signal_is_refused() -> None:
    with pytest.raises(ShortSignalError, match="too short"):
        stft(jnp.zeros((1, 2, 2048)), 4096, 1024)
    stft(jnp.zeros((1, 2, 2049)), 4096, 1024)  # the shortest signal reflect centring accepts
