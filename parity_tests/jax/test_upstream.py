"""The JAX port against the live upstream code on real music (the stempeg clip), float32.

- A canonical file (written with ``core_spec.canonical.save_canonical``, as the converter writes one from an
  upstream checkpoint) goes to the JAX native file through :func:`umx_jax.weights.save_native` (what
  ``unmix-convert --to jax`` calls), is loaded back as a Flax separator, and separates a 3-s crop of the clip with
  umxhq-shaped seeded weights (niter 1); upstream ``openunmix.model.Separator`` gets the same weights.
- Demucs (``demucs_unittest`` shapes, 1-s segments so the crop is split) through :func:`umx_jax.apply_model` and
  :func:`umx_jax.separate_track` against ``demucs.utils.apply_model`` (shifts 0) and ``separate.py``'s
  normalisation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_spec.canonical import join_targets, load_canonical, save_canonical, split_targets
from core_spec.configs import demucs_preset
from core_spec.tolerances import check
from core_spec.weights import random_weights
from parity_tests import fixtures_umx
from parity_tests.real_clip import load_clip
from umx_jax import apply_model, load_module, save_native, separate_track
from umx_jax.weights import from_canonical

pytestmark = pytest.mark.upstream

RATE = 44100


@pytest.fixture(scope="module")
def clip():
    return load_clip()


def test_converted_checkpoint_separates_clip_like_upstream(clip, tmp_path, device: str) -> None:
    from parity_tests.oracle import torch, umx_separator

    config = fixtures_umx.SEPARATOR_CASES["umxhq_niter1"][0]
    save_canonical(tmp_path / "umxhq", join_targets(fixtures_umx.separator_weights(config, seed=7)), config)
    canonical, file_config, _ = load_canonical(tmp_path / "umxhq")
    paths = save_native(tmp_path / "umxhq_jax", canonical, file_config)
    separator = load_module(paths[0], device=device)
    assert separator.target_names == config.separator.targets and separator.niter == 1

    crop = clip.mixture[:, int(1.5 * RATE) : int(4.5 * RATE)].astype(np.float32)
    ours = np.asarray(separator.separate(crop))[0]
    upstream = umx_separator(file_config, split_targets(canonical, config.separator.targets), torch.float32)
    with torch.no_grad():
        theirs = upstream(torch.from_numpy(crop[None])).numpy()[0]
    check(ours, theirs, "separator", "float32", device, what="jax umxhq (native file) stempeg clip vs upstream")


def test_demucs_split_matches_upstream(clip, device: str) -> None:
    from demucs.utils import apply_model as upstream_apply

    from parity_tests.oracle import demucs_model, torch

    config = dataclasses.replace(demucs_preset("demucs_unittest"), segment_length=RATE)
    weights = random_weights(config, 5)
    wav = clip.mixture[:, int(0.5 * RATE) : int(3.0 * RATE)]  # 2.5 s: segments at 0, 0.75, 1.5 and 2.25 s
    ref = wav.mean(axis=0)
    mean, std = ref.mean(), ref.std(ddof=1)
    normalised = ((wav - mean) / std).astype(np.float32)

    model = from_canonical(config, weights, device=device)
    ours = np.asarray(apply_model(model, normalised, split=True))
    with torch.no_grad():
        theirs = upstream_apply(
            demucs_model(config, weights, torch.float32), torch.from_numpy(normalised), shifts=0, split=True
        ).numpy()
    check(ours, theirs, "demucs.apply", "float32", device, what="jax demucs_unittest split stempeg clip vs upstream")

    track = np.asarray(separate_track(model, wav.astype(np.float32)))[0]
    check(track, theirs * std + mean, "demucs.apply", "float32", device, what="jax separate_track vs upstream")
