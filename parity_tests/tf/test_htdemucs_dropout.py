"""HTDemucs's cross-transformer dropout (``t_dropout``) in the TensorFlow port's :class:`umx_tf.train.Trainer`.

Upstream's masks cannot be reproduced in another framework, so these tests check the dropout's own rules on a
small HTDemucs (both layer kinds, self and cross attention; seeded weights whose LayerScales are near 1, so that
the transformer's dropout shows in a float32 loss), the trainers' steps run eagerly (a trace of the step costs
seconds) but for the resume check, which runs the compiled step:

- ``t_dropout`` 0: the training step's loss is the no-dropout step's (``dropout=False``), exactly;
- ``t_dropout`` 0.3: the training step's loss differs from the same step without dropout, which is the ``t_dropout``
  0 model's exactly; two trainers with the same seed give identical losses, another seed another; the seed
  generators' states saved in the checkpoint make a resumed trainer draw the masks the first one draws; the eval
  forward of the model built with 0.3 is bit for bit the one built with 0;
- a probe of one dropout site, the attention weights (the one the port writes itself, also in blocks of query
  rows): the fraction of zeros is the rate within 5 binomial standard deviations, the kept weights are the eval
  weights times ``1 / (1 - rate)`` (rate 0.75: a factor 4, exact in floating point), every block draws its own
  mask, and restoring the generator's state draws the same mask again.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import numpy as np
import pytest

import umx_tf.htdemucs_transformer as transformer
from core_spec.configs import HTDemucsConfig
from core_spec.seeded import random_audio, random_weights
from core_spec.training import HTDemucsTrainConfig
from parity_tests.tf.helpers import eagerly, tf
from umx_tf.build import from_canonical
from umx_tf.htdemucs import forward
from umx_tf.train import Trainer, _load_checkpoint, _save_checkpoint

# two transformer layers (self, then cross attention), 2 heads, no DConv: cheap to build and trace
CONFIG = HTDemucsConfig(channels=4, nfft=512, depth=2, t_layers=2, t_heads=2, dconv_mode=0, segment=(1, 40))
RECIPE = HTDemucsTrainConfig(batch_size=2, lr=3e-4)
RATE = 0.3
WEIGHTS = random_weights(CONFIG, seed=0)
SOURCES = np.stack([random_audio(900, 2, seed=10 + i, nb_samples=2) for i in range(4)], axis=1)  # (B, S, C, T)


def _trainer(rate: float, seed: int = 0, dropout: bool = True) -> Trainer:
    keras.utils.set_random_seed(seed)  # as unmix.train_tf, before the model is built
    model = from_canonical(dataclasses.replace(CONFIG, t_dropout=rate), WEIGHTS)
    return Trainer(model, RECIPE, weights=WEIGHTS, dropout=dropout)


@pytest.fixture(scope="module")
def reference_loss() -> float:
    """The training step's loss of the ``t_dropout`` 0 model with dropout off."""
    with eagerly():
        return _trainer(0.0, dropout=False).step(SOURCES)


def test_zero_rate_is_the_no_dropout_step(reference_loss):
    assert CONFIG.t_dropout == 0.0
    with eagerly():
        assert _trainer(0.0, dropout=True).step(SOURCES) == reference_loss


def test_dropout_is_seeded_and_switchable(reference_loss):
    with eagerly():
        loss = _trainer(RATE, seed=0).step(SOURCES)
        assert loss != reference_loss  # the training step drops
        assert _trainer(RATE, dropout=False).step(SOURCES) == reference_loss  # switched off: the 0 model's step
        assert _trainer(RATE, seed=0).step(SOURCES) == loss  # same seed, same masks
        assert _trainer(RATE, seed=1).step(SOURCES) != loss  # another seed, other masks


@dataclasses.dataclass
class _Folder:
    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint-htdemucs-tf"


class _Run:
    def save(self, folder: _Folder, rng: np.random.Generator) -> None:
        (folder.checkpoint / "state.json").write_text("{}")

    def load(self, folder: _Folder, rng: np.random.Generator) -> dict:
        return {}


def test_compiled_step_resumes_the_masks(tmp_path):
    """The compiled step (one trace): the checkpoint after a step holds every site's generator state; read back,
    the next step is the one the run took (its masks drawn on, not the first step's again)."""
    trainer = _trainer(RATE, seed=0)
    first = trainer.step(SOURCES)
    folder, run = _Folder(tmp_path), _Run()
    _save_checkpoint(trainer, folder, run, np.random.default_rng(0))
    with np.load(folder.checkpoint / "optimizer.npz") as arrays:
        assert sum(k.startswith("seed.") for k in arrays) == 2 * CONFIG.t_layers * 4  # four sites a layer
    second = trainer.step(SOURCES)
    _load_checkpoint(trainer, folder, run, np.random.default_rng(0))
    assert trainer.step(SOURCES) == second != first


def test_eval_forward_is_untouched():
    """The eval forward (padded to the segment, as every apply path runs it) of the model built with ``t_dropout``
    0.3 is the one built with 0, bit for bit."""
    mix = tf.constant(SOURCES.sum(axis=1), tf.float32)
    with eagerly():
        dropped, plain = (from_canonical(dataclasses.replace(CONFIG, t_dropout=r), WEIGHTS) for r in (RATE, 0.0))
        np.testing.assert_array_equal(forward(dropped, mix)[0].numpy(), forward(plain, mix)[0].numpy())


@pytest.mark.parametrize("blocks", [1, 3])
def test_attention_weight_dropout_probe(blocks, monkeypatch):
    """One head of width ``d`` on the ``d`` one-hot tokens, query and key projections zero, value and output
    projections the identity (biases zero): the output is the attention weights themselves, ``1 / d`` each in eval
    mode; ``blocks``: the rows in that many blocks (:func:`~umx_tf.htdemucs_transformer._attend`)."""
    d, rate = 128, 0.75
    if blocks > 1:
        monkeypatch.setattr(transformer, "attention_query_blocks", lambda b, h, q, k: (blocks, -(-q // blocks)))
    keras.utils.set_random_seed(0)
    mha = transformer.MultiheadAttention(d, 1, rate, dtype="float64")
    eye = np.eye(d)
    mha.in_proj_kernel.assign(np.concatenate([np.zeros((d, 2 * d)), eye], axis=1))
    mha.out_proj.kernel.assign(eye)
    mha.out_proj.bias.assign(np.zeros(d))
    x = tf.constant(eye[None])
    evaluated = mha(x, x, x).numpy()[0]
    np.testing.assert_array_equal(evaluated, np.full((d, d), 1.0 / d))  # softmax of zeros, no dropout

    state = mha.seed_generator.state.numpy()
    dropped = mha(x, x, x, training=True).numpy()[0]
    zeros = dropped == 0
    n = zeros.size
    assert abs(zeros.sum() - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate)), zeros.mean()
    np.testing.assert_array_equal(dropped[~zeros], evaluated[~zeros] * 4.0)  # 1 / (1 - 0.75)
    assert not np.array_equal(mha(x, x, x, training=True).numpy()[0], dropped)  # the generator moved on
    mha.seed_generator.state.assign(state)
    np.testing.assert_array_equal(mha(x, x, x, training=True).numpy()[0], dropped)
    if blocks > 1:
        size = -(-d // blocks)
        masks = [zeros[i * size : (i + 1) * size][: d - 2 * size] for i in range(blocks)]
        assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
