"""The JAX port against the live upstream code on real music (the stempeg clip), float32.

- Open-Unmix: each target's upstream ``OpenUnmix`` (umxhq shapes, seeded weights) is saved by upstream PyTorch
  (``torch.save(model.state_dict())``, the format of the released ``.pth`` files, ``num_batches_tracked``
  included), converted with ``unmix-convert <file> --model umxhq --target <t> --to jax``, loaded from the JAX
  native file (a one-target separator), and the four networks assembled into a :class:`umx_jax.Separator`
  (niter 1) that separates a 3-s crop of the clip;
  upstream's ``openunmix.model.Separator`` gets the same weights.
- Demucs (``demucs_unittest`` shapes, 1-s segments so the crop is split): an upstream ``torch.save``'d state dict
  converted with ``unmix-convert --to jax``, through :func:`umx_jax.apply_model` and :func:`umx_jax.separate_track`,
  against ``demucs.utils.apply_model`` (shifts 0) and ``separate.py``'s normalisation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_spec.configs import demucs_preset
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from parity_tests import fixtures_umx
from parity_tests.real_clip import load_clip
from umx_jax import Separator, apply_model, load_module, separate_track

pytestmark = pytest.mark.upstream

RATE = 44100


@pytest.fixture(scope="module")
def clip():
    return load_clip()


def _convert(tmp_path, checkpoint, *args: str):
    """``unmix-convert CHECKPOINT --out <stem> ARGS --to jax``; the JAX module from the native file."""
    from unmix.convert_cli import main

    stem = tmp_path / checkpoint.stem
    assert main([str(checkpoint), "--out", str(stem), *args, "--to", "jax", "--quiet"]) == 0
    return stem.with_name(f"{stem.name}-jax.msgpack")


def test_converted_checkpoints_separate_clip_like_upstream(clip, tmp_path, device: str) -> None:
    from parity_tests.oracle import torch, umx_model, umx_separator

    config = fixtures_umx.SEPARATOR_CASES["umxhq_niter1"][0]
    weights = fixtures_umx.separator_weights(config, seed=7)
    models = {}
    for target in config.separator.targets:
        checkpoint = tmp_path / f"{target}.pth"
        torch.save(umx_model(config.model, weights[target], torch.float32).state_dict(), checkpoint)
        native = _convert(tmp_path, checkpoint, "--model", "umxhq", "--target", target)
        single = load_module(native, device=device)  # a one-target umxhq separator
        assert single.target_names == (target,)
        models[target] = single.target_models[target]
    separator = Separator(models, niter=1)
    assert separator.config == config

    crop = clip.mixture[:, int(1.5 * RATE) : int(4.5 * RATE)].astype(np.float32)
    ours = np.asarray(separator.separate(crop))[0]
    with torch.no_grad():
        theirs = umx_separator(config, weights, torch.float32)(torch.from_numpy(crop[None])).numpy()[0]
    check(ours, theirs, "separator", "float32", device, what="jax umxhq (unmix-convert --to jax) clip vs upstream")


def test_demucs_split_matches_upstream(clip, tmp_path, device: str) -> None:
    from demucs.utils import apply_model as upstream_apply

    from parity_tests.oracle import demucs_model, torch

    config = dataclasses.replace(demucs_preset("demucs_unittest"), segment_length=RATE)  # upstream's split segment
    weights = random_weights(config, 5)
    wav = clip.mixture[:, int(0.5 * RATE) : int(3.0 * RATE)]  # 2.5 s: segments at 0, 0.75, 1.5 and 2.25 s
    ref = wav.mean(axis=0)
    mean, std = ref.mean(), ref.std(ddof=1)
    normalised = ((wav - mean) / std).astype(np.float32)

    upstream = demucs_model(config, weights, torch.float32)
    checkpoint = tmp_path / "demucs_unittest.th"
    torch.save(upstream.state_dict(), checkpoint)
    model = load_module(_convert(tmp_path, checkpoint, "--model", "demucs_unittest"), device=device)
    ours = np.asarray(apply_model(model, normalised, split=True, segment_length=RATE))
    with torch.no_grad():
        theirs = upstream_apply(upstream, torch.from_numpy(normalised), shifts=0, split=True).numpy()
    check(ours, theirs, "demucs.apply", "float32", device, what="jax demucs_unittest split stempeg clip vs upstream")

    track = np.asarray(separate_track(model, wav.astype(np.float32), segment_length=RATE))[0]
    check(track, theirs * std + mean, "demucs.apply", "float32", device, what="jax separate_track vs upstream")
