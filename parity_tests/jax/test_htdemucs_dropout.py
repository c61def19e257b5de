"""HTDemucs's cross-transformer dropout (``t_dropout``) in the JAX port's :class:`umx_jax.train.Trainer`.

Upstream's masks cannot be reproduced in another framework, so these tests check the dropout's own rules on a
small HTDemucs (both layer kinds, self and cross attention; seeded weights whose LayerScales are near 1, so that
the transformer's dropout shows in a float32 loss), through ``Trainer.loss_and_grads`` (the train-mode forward and
backward at the trainer's step count, no update):

- ``t_dropout`` 0: the loss is the no-dropout trainer's (``dropout=False``), exactly;
- ``t_dropout`` 0.3: the loss differs from the same step without dropout, which is the ``t_dropout`` 0 model's
  exactly; the masks are a function of the seed and the step count (``fold_in(key(seed), step)``): the same seed
  and step give the same loss (so a run resumed at its step count draws on as the straight run), another seed or
  another step another loss; the eval forward of the model built with 0.3 is bit for bit the one built with 0;
- a probe of one dropout site, the attention weights (also in blocks of query rows): the fraction of zeros is the
  rate within 5 binomial standard deviations, the kept weights are the eval weights times ``1 / (1 - rate)``
  (rate 0.75: a factor 4, exact in floating point), and every block draws its own mask.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import umx_jax.htdemucs_transformer as transformer
from core_spec.configs import HTDemucsConfig
from core_spec.seeded import random_audio, random_weights
from core_spec.training import HTDemucsTrainConfig
from umx_jax import from_canonical
from umx_jax.htdemucs import forward
from umx_jax.train import Trainer

# two transformer layers (self, then cross attention), 2 heads, no DConv: cheap to build and compile
CONFIG = HTDemucsConfig(channels=4, nfft=512, depth=2, t_layers=2, t_heads=2, dconv_mode=0, segment=(1, 40))
RECIPE = HTDemucsTrainConfig(batch_size=2, lr=3e-4)
RATE = 0.3
WEIGHTS = random_weights(CONFIG, seed=0)
SOURCES = np.stack([random_audio(900, 2, seed=10 + i, nb_samples=2) for i in range(4)], axis=1)  # (B, S, C, T)


def _loss(rate: float, seed: int = 0, dropout: bool = True, step: int = 0) -> float:
    trainer = Trainer(dataclasses.replace(CONFIG, t_dropout=rate), WEIGHTS, RECIPE, dropout=dropout, seed=seed)
    trainer.step_count = step
    return trainer.loss_and_grads(SOURCES)[0]


@pytest.fixture(scope="module")
def reference_loss() -> float:
    """The train-mode loss of the ``t_dropout`` 0 model with dropout off."""
    return _loss(0.0, dropout=False)


def test_zero_rate_is_the_no_dropout_step(reference_loss):
    assert CONFIG.t_dropout == 0.0
    assert _loss(0.0, dropout=True) == reference_loss


def test_dropout_is_seeded_and_switchable(reference_loss):
    loss = _loss(RATE, seed=0)
    assert loss != reference_loss  # the training step drops
    assert _loss(RATE, dropout=False) == reference_loss  # switched off: the 0 model's step
    assert _loss(RATE, seed=0) == loss  # same seed and step, same masks: a resumed run draws on
    assert _loss(RATE, seed=1) != loss  # another seed, other masks
    assert _loss(RATE, seed=0, step=1) != loss  # the next step, other masks


def test_eval_forward_is_untouched():
    """The eval forward (padded to the segment, as every apply path runs it) of the model built with ``t_dropout``
    0.3 is the one built with 0, bit for bit."""
    mix = jnp.asarray(SOURCES.sum(axis=1), jnp.float32)
    dropped, plain = (from_canonical(dataclasses.replace(CONFIG, t_dropout=r), WEIGHTS) for r in (RATE, 0.0))
    np.testing.assert_array_equal(np.asarray(forward(dropped, mix)[0]), np.asarray(forward(plain, mix)[0]))


@pytest.mark.parametrize("blocks", [1, 3])
def test_attention_weight_dropout_probe(blocks, monkeypatch):
    """One head of width ``d`` on the ``d`` one-hot tokens, query and key projections zero, value and output
    projections the identity (biases zero): the output is the attention weights themselves, ``1 / d`` each without
    dropout; ``blocks``: the rows in that many blocks (:func:`~umx_jax.htdemucs_transformer._attend`)."""
    d, rate = 128, 0.75
    monkeypatch.setattr(transformer, "attention_query_blocks", lambda b, h, q, k: (blocks, -(-q // blocks)))
    with jax.enable_x64(True):
        mha = transformer.MultiheadAttention(d, 1, dtype=jnp.float64, rngs=nnx.Rngs(0))
        eye = jnp.eye(d, dtype=jnp.float64)
        mha.in_proj.kernel[...] = jnp.concatenate([jnp.zeros((d, 2 * d), jnp.float64), eye], axis=1)
        mha.in_proj.bias[...] = jnp.zeros(3 * d, jnp.float64)
        mha.out_proj.kernel[...] = eye
        mha.out_proj.bias[...] = jnp.zeros(d, jnp.float64)
        x = eye[None]
        evaluated = np.asarray(mha(x, x, x))[0]
        np.testing.assert_array_equal(evaluated, np.full((d, d), 1.0 / d))  # softmax of zeros, no dropout

        key = jax.random.key(0)
        dropped = np.asarray(mha(x, x, x, dropout=(rate, key)))[0]
        np.testing.assert_array_equal(np.asarray(mha(x, x, x, dropout=(rate, key)))[0], dropped)  # the key's mask
    zeros = dropped == 0
    n = zeros.size
    assert abs(zeros.sum() - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate)), zeros.mean()
    np.testing.assert_array_equal(dropped[~zeros], evaluated[~zeros] * 4.0)  # 1 / (1 - 0.75)
    if blocks > 1:
        size = -(-d // blocks)
        masks = [zeros[i * size : (i + 1) * size][: d - 2 * size] for i in range(blocks)]
        assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


@pytest.mark.parametrize("rate", [0.02, 0.4, 0.75])
def test_dropout_masks(rate):
    """:func:`umx_jax.layers.dropout` itself, on an odd-sized array (the last 32-bit word's second draw unused): the
    fraction of zeros is the rate within 5 binomial standard deviations, so is the fraction of neighbouring pairs
    both zeroed (the two 16-bit draws of one word independent) against rate ** 2; the kept values are JAX's
    ``x / (1 - rate)``; the same key gives the same mask, another key another."""
    from umx_jax.layers import dropout

    shape = (3, 401, 333)  # an odd number of elements
    x = jnp.arange(1, math.prod(shape) + 1, dtype=jnp.float32).reshape(shape)
    key = jax.random.key(1, impl="rbg")
    y = np.asarray(dropout(x, rate, key))
    zeros = (y == 0).reshape(-1)
    n = zeros.size
    assert abs(zeros.sum() - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate)), zeros.mean()
    pairs = zeros[0 : n - 1 : 2] & zeros[1:n:2]
    p2 = rate * rate
    assert abs(pairs.sum() - pairs.size * p2) <= 5 * math.sqrt(pairs.size * p2 * (1 - p2)), pairs.mean()
    kept = ~zeros.reshape(shape)
    np.testing.assert_array_equal(y[kept], np.asarray(x / (1.0 - rate))[kept])  # as JAX scales x
    np.testing.assert_array_equal(np.asarray(dropout(x, rate, key)), y)
    assert not np.array_equal(np.asarray(dropout(x, rate, jax.random.key(2, impl="rbg"))), y)


def test_dropout_rates_zero_and_one():
    from umx_jax.layers import dropout

    x = jnp.ones((5, 7), jnp.float32)
    key = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(np.asarray(dropout(x, 0.0, key)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(dropout(x, 1.0, key)), np.zeros((5, 7), np.float32))
