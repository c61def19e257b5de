"""HTDemucs's cross-transformer dropout (``t_dropout``) in the NNabla port's :class:`umx_nnabla.train.Trainer`.

Upstream's masks cannot be reproduced in another framework, so these tests check the dropout's own rules on a
small HTDemucs (both layer kinds, self and cross attention; seeded weights whose LayerScales are near 1, so that the
transformer's dropout shows in the float32 loss):

- ``t_dropout`` 0: the training step's loss is the no-dropout step's (``t_dropout=0`` given to the step), exactly;
- ``t_dropout`` 0.3: the training step's loss differs from the same step without dropout, which is the ``t_dropout``
  0 model's exactly; two trainers with the same recipe seed give identical losses, another seed another (the
  trainer reseeds NNabla's generator per epoch); a trainer resumed from a checkpoint draws, at the next epoch, the
  masks the first one draws; the eval forward of the model built with 0.3 is bit for bit the one built with 0;
- a probe of one dropout site, the attention weights: the fraction of zeros is the rate within 5 binomial standard
  deviations, the kept weights are the eval weights times ``1 / (1 - rate)`` (rate 0.75: a factor 4, exact in
  floating point), and reseeding draws the same mask again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from pathlib import Path

import nnabla as nn
import numpy as np

from core_spec.configs import HTDemucsConfig
from core_spec.seeded import random_audio, random_weights
from core_spec.training import HTDemucsTrainConfig
from umx_nnabla.build import from_canonical
from umx_nnabla.htdemucs import forward
from umx_nnabla.htdemucs_transformer import MultiheadAttention
from umx_nnabla.train import Trainer, batch_shape, load_checkpoint, make_optimizer, make_step

# two transformer layers (self, then cross attention), 2 heads, no DConv: cheap to build
CONFIG = HTDemucsConfig(channels=4, nfft=512, depth=2, t_layers=2, t_heads=2, dconv_mode=0, segment=(1, 40))
RECIPE = HTDemucsTrainConfig(batch_size=2, lr=3e-4)
RATE = 0.3
WEIGHTS = random_weights(CONFIG, seed=0)
SOURCES = np.stack([random_audio(900, 2, seed=10 + i, nb_samples=2) for i in range(4)], axis=1)  # (B, S, C, T)


def _trainer(rate: float, seed: int = 42, t_dropout: float | None = None) -> Trainer:
    model = from_canonical(dataclasses.replace(CONFIG, t_dropout=rate), WEIGHTS)
    recipe = dataclasses.replace(RECIPE, seed=seed)
    step = make_step(model, recipe, t_dropout=t_dropout)
    step.graph(batch_shape(step, SOURCES, recipe))
    return Trainer(model, step, make_optimizer(model, recipe), recipe, None)


def _first_step(trainer: Trainer, epoch: int = 0) -> float:
    trainer.start_epoch(epoch)  # what the epoch loop does first
    return trainer.step(SOURCES)


def test_zero_rate_is_the_no_dropout_step():
    assert CONFIG.t_dropout == 0.0
    assert _first_step(_trainer(0.0)) == _first_step(_trainer(0.0, t_dropout=0.0))


def test_dropout_is_seeded_and_switchable():
    reference = _first_step(_trainer(0.0))
    loss = _first_step(_trainer(RATE))
    assert loss != reference  # the training step drops
    assert _first_step(_trainer(RATE, t_dropout=0.0)) == reference  # switched off: the 0 model's step
    assert _first_step(_trainer(RATE)) == loss  # same seed, same masks
    assert _first_step(_trainer(RATE, seed=1)) != loss  # another seed, other masks


@dataclasses.dataclass
class _Folder:
    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint-htdemucs-nnabla"


class _Run:
    def save(self, folder: _Folder, rng: np.random.Generator, **extra) -> None:
        (folder.checkpoint / "state.json").write_text(json.dumps(extra))

    def load(self, folder: _Folder, rng: np.random.Generator) -> dict:
        return json.loads((folder.checkpoint / "state.json").read_text())


def test_resumed_trainer_draws_the_runs_masks(tmp_path):
    """A checkpoint after epoch 0, read back into a fresh trainer: its epoch-1 step is the run's."""
    trainer = _trainer(RATE)
    _first_step(trainer, epoch=0)
    folder, run = _Folder(tmp_path), _Run()
    trainer.save_checkpoint(folder, run, np.random.default_rng(0))
    resumed = _trainer(RATE)
    load_checkpoint(resumed.model, resumed.optimizer, folder, run, np.random.default_rng(0))
    loss = _first_step(resumed, epoch=1)  # NNabla's generator is global: each epoch starts by reseeding it
    assert _first_step(trainer, epoch=1) == loss


def test_eval_forward_is_untouched():
    """The eval forward (padded to the segment, as every apply path runs it) of the model built with ``t_dropout``
    0.3 is the one built with 0, bit for bit."""
    mix = SOURCES.sum(axis=1).astype(np.float32)
    dropped, plain = (from_canonical(dataclasses.replace(CONFIG, t_dropout=r), WEIGHTS) for r in (RATE, 0.0))
    np.testing.assert_array_equal(forward(dropped, mix)[0], forward(plain, mix)[0])


def test_attention_weight_dropout_probe():
    """One head of width ``d`` on the ``d`` one-hot tokens, query and key projections zero, value and output
    projections the identity (biases zero): the output is the attention weights themselves, ``1 / d`` each in eval
    mode."""
    d, rate = 128, 0.75
    x = nn.Variable.from_numpy_array(np.eye(d, dtype=np.float32)[None])
    with nn.parameter_scope("probe", OrderedDict()):
        evaluated, dropped = (MultiheadAttention(d, 1, "mha")(x, x, x, p) for p in (0.0, rate))
        params = nn.get_parameters(grad_only=False)
        params["mha/in_proj_weight"].d = np.concatenate([np.zeros((2 * d, d)), np.eye(d)])
        params["mha/in_proj_bias"].d = 0.0
        params["mha/out_proj/weight"].d = np.eye(d)
        params["mha/out_proj/bias"].d = 0.0
    evaluated.forward()
    np.testing.assert_array_equal(evaluated.d[0], np.full((d, d), 1.0 / d, np.float32))  # softmax of zeros

    nn.seed(7)
    dropped.forward()
    mask = dropped.d[0].copy()
    zeros = mask == 0
    n = zeros.size
    assert abs(zeros.sum() - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate)), zeros.mean()
    np.testing.assert_array_equal(mask[~zeros], evaluated.d[0][~zeros] * 4.0)  # 1 / (1 - 0.75)
    dropped.forward()
    assert not np.array_equal(dropped.d[0], mask)  # the generator moved on
    nn.seed(7)
    dropped.forward()
    np.testing.assert_array_equal(dropped.d[0], mask)
