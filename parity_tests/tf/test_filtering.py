"""umx_tf's Wiener step on a chunked track: :func:`umx_tf.separator.filter_chunks` filters every chunk of
``wiener_win_len`` frames in one batched call, the shorter last chunk zero-padded to a whole one and masked
(``wiener_planar(frame_mask=...)``), which must give what the spec gives chunk by chunk
(``core_spec.reference.separator.filter_chunks``), eagerly and XLA-compiled (static shapes).

The shared harness's separator fixtures have no shorter last chunk (their tracks are one chunk or whole chunks),
so this is where the padded chunk is checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.configs import WienerConfig
from core_spec.reference import separator as ref_separator
from core_spec.shapes import wiener_chunks
from core_spec.tolerances import check
from parity_tests.tf.helpers import DTYPES, on_device, tf
from umx_tf.filtering import wiener_planar
from umx_tf.separator import filter_chunks

NB_FRAMES = 23  # chunks of 5 (4 whole ones and 3 frames) or 7 (3 and 2)


def _inputs(nb_targets: int, nb_channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes ``(2, S, C|1, 9, T)`` and a stereo mixture ``(2, 2, 9, T)`` with exactly-zero bins (which
    upstream's atan2 turns into 1.0 for the rest of the call: the padding must not get them)."""
    rng = np.random.default_rng(seed)
    v = np.abs(rng.standard_normal((2, nb_targets, nb_channels, 9, NB_FRAMES)))
    mix = rng.standard_normal((2, 2, 9, NB_FRAMES)) + 1j * rng.standard_normal((2, 2, 9, NB_FRAMES))
    mix[:, :, 4, 6] = 0.0
    mix[1, :, :, -1] = 0.0
    return v, mix


CASES = [
    (WienerConfig(niter=1, wiener_win_len=5), 2, 2),
    (WienerConfig(niter=2, residual=True, wiener_win_len=7), 1, 1),
    (WienerConfig(niter=1, softmask=True, residual=True, wiener_win_len=5), 2, 2),
    (WienerConfig(niter=0, residual=True, wiener_win_len=5), 2, 2),
]


@pytest.mark.parametrize(("wiener", "nb_targets", "nb_channels"), CASES)
def test_filter_chunks_matches_the_spec(device, wiener, nb_targets, nb_channels):
    v, mix = _inputs(nb_targets, nb_channels)
    reference = ref_separator.filter_chunks(v, mix, wiener)
    assert wiener_chunks(NB_FRAMES, wiener.wiener_win_len).pad > 0
    what = f"tf filter_chunks {wiener}"
    with on_device(device):
        for dtype in DTYPES:
            cdtype = np.complex64 if dtype == "float32" else np.complex128
            args = tf.constant(v.astype(dtype)), tf.constant(mix.astype(cdtype))
            out = filter_chunks(*args, wiener).numpy()
            assert out.shape == reference.shape and out.dtype == cdtype
            check(out, reference, "wiener", dtype, device, what=f"{what} {dtype} vs reference")
            compiled = tf.function(lambda a, b: filter_chunks(a, b, wiener), jit_compile=True)(*args).numpy()
            check(compiled, reference, "wiener", dtype, device, what=f"{what} {dtype} XLA vs reference")


def test_padded_chunk_is_the_unpadded_call(device):
    """The masked, zero-padded last chunk equals the call on its frames alone (float64: rounding only)."""
    wiener = WienerConfig(niter=2, residual=True, wiener_win_len=5)
    v, mix = _inputs(2, 2, seed=1)
    plan = wiener_chunks(NB_FRAMES, wiener.wiener_win_len)
    with on_device(device):
        out = filter_chunks(tf.constant(v), tf.constant(mix), wiener).numpy()
        for t in plan.slices():
            alone = wiener_planar(v[..., t], mix[..., t], 2, residual=True).numpy()
            check(out[..., t], alone, "wiener", "float64", device, what=f"tf chunk {t} batched vs alone")
