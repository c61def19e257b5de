"""CUDA against CPU for the whole pipelines (run with ``--device gpu``; TF32 off). Every other test of this folder
also runs on the GPU with that option, against the same upstream fixtures and reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_spec.configs import demucs_preset, umx_preset
from core_spec.seeded import random_audio, random_weights
from core_spec.tolerances import check
from parity_tests.fixtures_umx import separator_weights
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, np_of, torch, torch_device
from umx_torch import Demucs, Separator, apply_model, load_weights

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", DTYPES)
def test_separator_cuda_vs_cpu(dtype, device):
    cfg = umx_preset("umxhq")
    cfg = dataclasses.replace(
        cfg, separator=dataclasses.replace(cfg.separator, wiener=dataclasses.replace(cfg.separator.wiener, niter=1))
    )
    weights = separator_weights(cfg)
    audio = random_audio(3 * 44100, 2, seed=1, nb_samples=2)
    outs = [
        np_of(Separator.from_config(cfg, weights, device=dev, dtype=TORCH_DTYPES[dtype]).separate(audio))
        for dev in (torch.device("cpu"), torch_device(device))
    ]
    check(outs[1], outs[0], "separator", dtype, "gpu", what=f"torch separator {dtype} cuda vs cpu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_demucs_cuda_vs_cpu(dtype, device):
    cfg = dataclasses.replace(demucs_preset("demucs"), channels=16, segment_length=44100)
    weights = random_weights(cfg)
    x = torch.from_numpy(random_audio(3 * 44100, 2, seed=2)).to(TORCH_DTYPES[dtype])
    outs = []
    for dev in (torch.device("cpu"), torch_device(device)):
        model = Demucs.from_config(cfg, dev, TORCH_DTYPES[dtype])
        load_weights(model, weights)
        outs.append(np_of(apply_model(model, x.to(dev), split=True)))
    check(outs[1], outs[0], "demucs.apply", dtype, "gpu", what=f"torch demucs apply {dtype} cuda vs cpu")
    assert np.all(np.isfinite(outs[1]))
