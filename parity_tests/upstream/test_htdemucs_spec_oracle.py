"""core_spec.reference.htdemucs_spec against live demucs 4.1.0 in float64 (main environment, parity_tests.oracle4).

One oracle subprocess builds a small ``demucs.htdemucs.HTDemucs`` per ``nfft`` (only to call its methods) and sends
back, on seeded float64 inputs, ``_spec`` (of signals shorter than the reflect pad, of a few lengths, and of 7.8 s
at 44.1 kHz), ``_magnitude`` of it (CaC), ``_ispec`` of random spectrograms and of ``_spec``'s own output,
``_mask`` (CaC) of a random decoder output, the input normalisation as the forward writes it (``mean`` and
torch's ``std`` over all axes but the batch), and the window upstream uses (``torch.hann_window`` in float32 cast
to float64), which the spec is given so that the transforms are compared and not the two windows.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from core_spec.configs import HTDemucsConfig, constructor_kwargs
from core_spec.reference.htdemucs_spec import ispec, magnitude, mask_cac, normalise_input, spec
from core_spec.seeded import random_audio
from core_spec.tolerances import check
from parity_tests.oracle4 import run_oracle4

pytestmark = pytest.mark.upstream

NFFTS = (4096, 512)
# per nfft: lengths incl. one shorter than the reflect pad (hop // 2 * 3), one equal to it, one multiple of the hop
LENGTHS = {4096: (1, 1000, 1536, 8192, 20_001, 343_980), 512: (7, 192, 1000, 4096, 5_003)}
NB_SOURCES = 2
NB_FRAMES_RANDOM = 9  # frames of the random spectrograms given to _ispec and _mask

_SNIPPET = """
from fractions import Fraction
from demucs.htdemucs import HTDemucs

for nfft in ARGS["nffts"]:
    kwargs = dict(ARGS["kwargs"][str(nfft)])
    kwargs["segment"] = Fraction(*kwargs["segment"])
    model = HTDemucs(**kwargs).double().eval()
    ARRAYS[f"{nfft}.window"] = torch.hann_window(nfft).to(torch.float64)
    with torch.no_grad():
        for length in ARGS["lengths"][str(nfft)]:
            key = f"{nfft}.{length}"
            x = torch.from_numpy(INPUTS[f"{key}.x"])
            z = model._spec(x)
            ARRAYS[f"{key}.spec"] = z
            ARRAYS[f"{key}.magnitude"] = model._magnitude(z)
            ARRAYS[f"{key}.ispec_of_spec"] = model._ispec(z, length)
            zr = torch.from_numpy(INPUTS[f"{key}.zr"]) + 1j * torch.from_numpy(INPUTS[f"{key}.zi"])
            ARRAYS[f"{key}.ispec"] = model._ispec(zr, length)
            for branch, t in (("freq", model._magnitude(z)), ("time", x)):
                dims = tuple(range(1, t.dim()))
                mean = t.mean(dim=dims, keepdim=True)
                std = t.std(dim=dims, keepdim=True)
                ARRAYS[f"{key}.{branch}.mean"] = mean
                ARRAYS[f"{key}.{branch}.std"] = std
                ARRAYS[f"{key}.{branch}.normalised"] = (t - mean) / (1e-5 + std)
        m = torch.from_numpy(INPUTS[f"{nfft}.mask_in"])
        ARRAYS[f"{nfft}.mask"] = model._mask(None, m)
"""


def _kwargs(nfft: int) -> dict:
    config = HTDemucsConfig(sources=("a", "b"), channels=8, nfft=nfft, t_layers=1, t_heads=2)
    kwargs = constructor_kwargs(config)
    kwargs["segment"] = list(config.segment)
    return kwargs


def _inputs() -> dict[str, np.ndarray]:
    inputs = {}
    for nfft in NFFTS:
        rng = np.random.default_rng(nfft)
        for length in LENGTHS[nfft]:
            key = f"{nfft}.{length}"
            batch = 1 if length > 100_000 else 2
            inputs[f"{key}.x"] = np.stack([random_audio(length, 2, seed=length + i) for i in range(batch)])
            nb_frames = -(-length // (nfft // 4))
            shape = (batch, 2, nfft // 2, nb_frames)
            inputs[f"{key}.zr"], inputs[f"{key}.zi"] = rng.standard_normal(shape), rng.standard_normal(shape)
        inputs[f"{nfft}.mask_in"] = rng.standard_normal((2, NB_SOURCES, 4, nfft // 2, NB_FRAMES_RANDOM))
    return inputs


@cache
def oracle() -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray], str]:
    """One oracle run for the module, its failure cached too: ``(arrays, inputs, error)``."""
    inputs = _inputs()
    args = {
        "nffts": list(NFFTS),
        "lengths": {str(n): list(LENGTHS[n]) for n in NFFTS},
        "kwargs": {str(n): _kwargs(n) for n in NFFTS},
    }
    try:
        _, arrays = run_oracle4(_SNIPPET, args=args, inputs=inputs)
    except Exception as err:  # reported by every test that needs it
        return None, inputs, f"{type(err).__name__}: {err}"
    return arrays, inputs, ""


def upstream() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    arrays, inputs, error = oracle()
    if arrays is None:
        pytest.fail(error, pytrace=False)
    return arrays, inputs


CASES = [(nfft, length) for nfft in NFFTS for length in LENGTHS[nfft]]


@pytest.mark.parametrize("nfft,length", CASES)
def test_spec_is_upstream_spec(nfft, length):
    up, inputs = upstream()
    key = f"{nfft}.{length}"
    z = spec(inputs[f"{key}.x"], nfft, nfft // 4, window=up[f"{nfft}.window"])
    assert z.shape == up[f"{key}.spec"].shape
    check(z, up[f"{key}.spec"], "stft", "float64", what=f"_spec nfft={nfft} L={length}")


@pytest.mark.parametrize("nfft,length", CASES)
def test_magnitude_is_upstream_cac(nfft, length):
    up, _ = upstream()
    key = f"{nfft}.{length}"
    check(magnitude(up[f"{key}.spec"]), up[f"{key}.magnitude"], "magnitude", "float64", what=f"_magnitude {key}")


@pytest.mark.parametrize("nfft,length", CASES)
def test_ispec_is_upstream_ispec(nfft, length):
    up, inputs = upstream()
    key = f"{nfft}.{length}"
    window = up[f"{nfft}.window"]
    z = inputs[f"{key}.zr"] + 1j * inputs[f"{key}.zi"]
    check(ispec(z, length, nfft, nfft // 4, window), up[f"{key}.ispec"], "istft", "float64", what=f"_ispec {key}")
    y = ispec(up[f"{key}.spec"], length, nfft, nfft // 4, window)
    check(y, up[f"{key}.ispec_of_spec"], "istft", "float64", what=f"_ispec(_spec) {key}")


@pytest.mark.parametrize("nfft", NFFTS)
def test_mask_is_upstream_cac(nfft):
    up, inputs = upstream()
    out = mask_cac(inputs[f"{nfft}.mask_in"])
    assert out.shape == up[f"{nfft}.mask"].shape == (2, NB_SOURCES, 2, nfft // 2, NB_FRAMES_RANDOM)
    check(out, up[f"{nfft}.mask"], "magnitude", "float64", what=f"_mask (cac) nfft={nfft}")


@pytest.mark.parametrize("nfft,length", CASES)
@pytest.mark.parametrize("branch", ["freq", "time"])
def test_normalise_input_is_upstream(nfft, length, branch):
    up, inputs = upstream()
    key = f"{nfft}.{length}"
    x = magnitude(up[f"{key}.spec"]) if branch == "freq" else inputs[f"{key}.x"]
    y, mean, std = normalise_input(x)
    for name, value in (("mean", mean), ("std", std), ("normalised", y)):
        what = f"{branch} {name} {key}"
        check(value, up[f"{key}.{branch}.{name}"], "data.statistics", "float64", what=what)
