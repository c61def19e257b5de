"""The NNabla-function implementations the separator does not use by default, against the same references.

- ``stft_graph`` / ``istft_graph`` (``F.stft`` / ``F.istft``, with the ``length`` handling) on the transform
  fixtures (short signals: both are direct DFTs);
- ``F.lstm`` (``lstm_impl="builtin"``) in Open-Unmix and Demucs on the model fixtures;
- the Wiener filter as a graph (``wiener_graph``) on every Wiener case, and inside the separator.
"""

from __future__ import annotations

import nnabla as nn
import numpy as np
import pytest

from core_spec.configs import config_from_json, umx_preset
from core_spec.reference import demucs as ref_demucs
from core_spec.reference import filtering as ref_filtering
from core_spec.reference import transforms as ref_transforms
from core_spec.reference import umx as ref_umx
from core_spec.reference.separator import separate
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from parity_tests import fixtures_demucs, fixtures_umx
from parity_tests.fixtures import load
from umx_nnabla import filtering, transforms
from umx_nnabla.build import from_canonical

from .helpers import run_on, trace_arrays

DTYPE = "float32"


@pytest.mark.parametrize("preset", sorted(fixtures_umx.TRANSFORM_PRESETS))
def test_stft_istft_graph(preset: str, device: str) -> None:
    fx, _ = load("umx_transforms")
    cfg = umx_preset(preset).separator.stft
    audio = fx[f"{preset}.audio"]
    length = audio.shape[-1]
    with run_on(device):
        re, im = transforms.stft_graph(nn.Variable.from_numpy_array(audio.astype(DTYPE)), cfg.n_fft, cfg.n_hop)
        y = transforms.istft_graph(re, im, cfg.n_fft, cfg.n_hop, length=length)
        nn.forward_all([re, im, y])
        X = re.d + 1j * im.d
        check(X, ref_transforms.stft(audio, cfg.n_fft, cfg.n_hop), "stft", DTYPE, device, what=f"F.stft {preset}")
        check(y.d, audio, "round_trip", DTYPE, device, what=f"F.stft -> F.istft {preset}")

        # the inverse alone, on upstream's STFT, at torch's own length and at lengths that need padding or cropping
        X64 = fx[f"{preset}.stft.float64"]
        nb_frames = X64.shape[-1]
        for out_length in (
            length,
            (nb_frames - 1) * cfg.n_hop,
            (nb_frames - 1) * cfg.n_hop + cfg.n_fft // 4,
            length - 7,
        ):
            re = nn.Variable.from_numpy_array(X64.real.astype(DTYPE))
            im = nn.Variable.from_numpy_array(X64.imag.astype(DTYPE))
            y = transforms.istft_graph(re, im, cfg.n_fft, cfg.n_hop, length=out_length)
            y.forward()
            expected = ref_transforms.istft(X64, cfg.n_fft, cfg.n_hop, length=out_length)
            check(y.d, expected, "istft", DTYPE, device, what=f"F.istft {preset} length {out_length}")
            np.testing.assert_array_equal(transforms.istft(X64.astype(np.complex64), cfg.n_fft, cfg.n_hop,
                                                           length=out_length).shape, expected.shape)  # fmt: skip


@pytest.mark.parametrize("preset", sorted(fixtures_umx.MODEL_PRESETS))
def test_umx_builtin_lstm(preset: str, device: str) -> None:
    fx, meta = load(f"umx_model_{preset}")
    config = umx_preset(preset).model
    weights = random_weights(config, meta["weights_seed"])
    x = fx["input.float64"]
    ref_trace: dict[str, np.ndarray] = {}
    reference = ref_umx.open_unmix(weights, config, x, trace=ref_trace)
    with run_on(device):
        model = from_canonical(config, weights, lstm_impl="builtin")
        trace: dict[str, nn.Variable] = {}
        out = model(nn.Variable.from_numpy_array(x.astype(DTYPE)), trace=trace)
        out.forward(clear_buffer=True)
    traced = trace_arrays(trace)
    for key in ("lstm", "fc2", "bn3"):
        check(traced[key], ref_trace[key], "umx.layer", DTYPE, device, what=f"F.lstm umx {preset} {key}")
    check(out.d, reference, "umx.output", DTYPE, device, what=f"F.lstm umx {preset} output")


@pytest.mark.parametrize("name", ["unittest", "c6d4_normalize"])
def test_demucs_builtin_lstm(name: str, device: str) -> None:
    fx, meta = load(f"demucs_forward_{name}")
    config = config_from_json(meta["config"])
    weights = random_weights(config, meta["weights_seed"])
    mix = fx["mix"]
    ref_trace: dict[str, np.ndarray] = {}
    reference = ref_demucs.demucs(weights, config, mix, trace=ref_trace)
    with run_on(device):
        model = from_canonical(config, weights, lstm_impl="builtin")
        trace: dict[str, nn.Variable] = {}
        out = model(nn.Variable.from_numpy_array(mix.astype(DTYPE)), trace=trace)
        out.forward(clear_buffer=True)
    check(trace["lstm.lstm"].d, ref_trace["lstm.lstm"], "demucs.layer", DTYPE, device, what=f"F.lstm demucs {name}")
    check(out.d, reference, "demucs.output", DTYPE, device, what=f"F.lstm demucs {name} output")
    check(out.d, fx["output.float32"], "demucs.output", DTYPE, device, what=f"F.lstm demucs {name} vs upstream")


assert fixtures_demucs.FORWARD_CASES  # the cases above are among them


@pytest.mark.parametrize("i", range(len(fixtures_umx.WIENER_CASES)))
def test_wiener_graph(i: int, device: str) -> None:
    fx, _ = load("umx_wiener")
    case = fixtures_umx.WIENER_CASES[i]
    v, mix = fx[f"{i}.v"], fx[f"{i}.mix"]
    args = (case["niter"], case["softmask"], case["residual"])
    reference = ref_filtering.wiener(v, mix, *args)
    with run_on(device):
        re, im = filtering.wiener_graph(
            nn.Variable.from_numpy_array(v.astype(DTYPE)),
            nn.Variable.from_numpy_array(mix.real.astype(DTYPE)),
            nn.Variable.from_numpy_array(mix.imag.astype(DTYPE)),
            *args,
        )
        nn.forward_all([re, im])
    out = re.d + 1j * im.d
    check(out, reference, "wiener", DTYPE, device, what=f"wiener_graph case {i} {case}")
    check(out, fx[f"{i}.out.float32"], "wiener", DTYPE, device, what=f"wiener_graph case {i} vs upstream")


@pytest.mark.parametrize("atan2", ["upstream", "exact"])
def test_wiener_atan2_modes(atan2: str, device: str) -> None:
    """Both phase initialisations of both implementations against the reference (residual: the mode matters)."""
    v, mix = fixtures_umx.wiener_inputs(7)
    reference = ref_filtering.wiener(v, mix, 1, residual=True, atan2=atan2)
    with run_on(device):
        out = filtering.wiener(v.astype(DTYPE), mix.astype(np.complex64), 1, residual=True, atan2=atan2)
        check(out, reference, "wiener", DTYPE, device, what=f"wiener atan2={atan2}")
        re, im = filtering.wiener_graph(
            nn.Variable.from_numpy_array(v.astype(DTYPE)),
            nn.Variable.from_numpy_array(mix.real.astype(DTYPE)),
            nn.Variable.from_numpy_array(mix.imag.astype(DTYPE)),
            1,
            residual=True,
            atan2=atan2,
        )
        nn.forward_all([re, im])
    check(re.d + 1j * im.d, reference, "wiener", DTYPE, device, what=f"wiener_graph atan2={atan2}")


def test_separator_with_wiener_graph(device: str) -> None:
    fx, _ = load("umx_separator")
    name = "umxhq_niter2_softmask_residual_win3"
    config, _ = fixtures_umx.SEPARATOR_CASES[name]
    weights = fixtures_umx.separator_weights(config)
    audio = fx[f"{name}.audio"]
    with run_on(device):
        out = from_canonical(config, weights, wiener_backend="nnabla")(audio)
    check(out, separate(audio, weights, config), "separator", DTYPE, device, what=f"separator {name} wiener graph")
    check(out, fx[f"{name}.out.float32"], "separator", DTYPE, device, what=f"separator {name} wiener graph vs upstream")
