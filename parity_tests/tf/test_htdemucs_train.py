"""``umx_tf.train`` with HTDemucs: one training step against demucs 4.1.0's autograd
(``parity_tests/fixtures_htdemucs_train.py``) and demucs 4's two-group Adam.

- gradient parity, float64 and float32: the loss (L1 per source, weighted, the network in training mode at the
  batch's length), every gradient, the parameters after one and two Adam steps in demucs 4's two groups;
- the optimiser alone on upstream's own float64 gradients: the two groups match, one group misses;
- the groups' learning rates (a config's ``t_lr`` keeps the transformer's); the optimiser state survives a
  checkpoint's arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_spec.tolerances import judge
from parity_tests.fixtures_htdemucs_train import (
    HTDemucsTrainCase,
    check_grads,
    check_loss,
    check_updated,
    load_case,
)
from parity_tests.tf.helpers import DTYPES, on_device, tf
from umx_tf.build import from_canonical
from umx_tf.train import Adam, GroupedAdam, Parameters, Trainer, loss_and_grads, make_optimizer, optimizer_groups


@pytest.fixture(scope="module")
def case() -> HTDemucsTrainCase:
    return load_case()


def _trainer(case: HTDemucsTrainCase, dtype: str, device: str = "cpu") -> Trainer:
    model = from_canonical(case.config, case.weights, dtype=dtype, device=device)
    return Trainer(model, case.recipe, weights=case.weights, dropout=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_step_matches_upstream(case, dtype, device):
    """Loss and gradients (the step's own loss-and-gradient code, run eagerly: one graph trace per test is enough),
    and the parameters after two compiled Adam steps of demucs 4's optimiser (the second step's gradient at the
    updated parameters); the groups hold upstream's parameters; the state survives its checkpoint arrays."""
    what = f"tf {dtype} "
    with on_device(device):
        trainer = _trainer(case, dtype, device)
        assert isinstance(trainer.optimizer, GroupedAdam)
        labels = optimizer_groups(trainer.params.names)
        sizes = [labels.count(group) for group in ("main", "transformer")]
        assert sizes == case.meta["optimizer_group_sizes"]
        loss, grads = trainer.loss_and_grads(trainer._tensors((case.sources,)))
        grads = trainer.params.canonical([g.numpy() for g in grads])
        assert all(g.dtype == np.dtype(dtype) for g in grads.values())
        check_loss(float(loss), case, dtype, device, what=what)
        check_grads(grads, case, dtype, device, what=what)
        trainer.step(case.sources)
        check_updated(trainer.params.weights(), case, dtype, device, what=what, step=1)
        trainer.step(case.sources)
        weights = trainer.params.weights()
        assert all(w.dtype == np.dtype(dtype) for w in weights.values())
        check_updated(weights, case, dtype, device, what=what, step=2)

        restored = _trainer(case, dtype, device)
        restored.params.load(weights)
        state = trainer.optimizer.state(trainer.params.names)
        restored.optimizer.load_state(state, restored.params.names)
        assert int(restored.optimizer.step.numpy()) == 2 and restored.learning_rates == trainer.learning_rates
        back = restored.optimizer.state(restored.params.names)
        assert sorted(back) == sorted(state)
        for key, value in state.items():
            np.testing.assert_array_equal(back[key], value, err_msg=key)
        for name, value in restored.params.weights().items():
            np.testing.assert_array_equal(value, weights[name], err_msg=name)


def test_loss_and_grads_function(case, device):
    """:func:`umx_tf.train.loss_and_grads` (the one-step function of the parity suite) gives the fixture's float64
    loss and gradients."""
    with on_device(device):
        model = from_canonical(case.config, case.weights, dtype="float64", device=device)
        loss, grads = loss_and_grads(model, {"sources": case.sources}, case.recipe, weights=case.weights)
    check_loss(loss, case, "float64", device, what="tf loss_and_grads ")
    check_grads(grads, case, "float64", device, what="tf loss_and_grads ")


def _adam_update(optimizer_of, case: HTDemucsTrainCase) -> dict[str, np.ndarray]:
    """One step of an optimiser from the fixture's weights with upstream's own float64 gradients (canonical
    names)."""
    model = from_canonical(case.config, case.weights, dtype="float64")
    params = Parameters(model, case.weights)
    optimizer = optimizer_of(params)
    grads = [tf.constant(layout_back(case.grads[n])) for n, layout_back in zip(params.names, params._to_keras)]
    optimizer.apply(grads)
    params.sync()
    return {k: v for k, v in params.weights().items() if k in case.updated}


def test_two_groups_are_upstreams_step(case):
    """demucs 4's optimiser on upstream's gradients gives upstream's parameters; one Adam group for everything (the
    transformer decayed too) does not."""
    check_updated(_adam_update(lambda p: make_optimizer(p, case.recipe), case), case, "float64", what="tf adam ")
    recipe = case.recipe
    one = _adam_update(lambda p: Adam(p.values, recipe.lr, weight_decay=recipe.weight_decay), case)
    verdicts = [judge(v, case.updated[k], "train.update", "float64").ok for k, v in one.items()]
    assert not all(verdicts), "one group's update passes the train.update row"


def test_learning_rates_of_the_groups(case):
    """``set_learning_rate`` moves both groups; a config's ``t_lr`` keeps the transformer's."""
    trainer = _trainer(case, "float32")
    assert trainer.learning_rates == pytest.approx({"main": 3e-4, "transformer": 3e-4})
    trainer.set_learning_rate(1e-3)
    assert trainer.learning_rates == pytest.approx({"main": 1e-3, "transformer": 1e-3})
    config = dataclasses.replace(case.config, t_lr=5e-5)
    trainer = Trainer(from_canonical(config, case.weights), case.recipe, weights=case.weights, dropout=False)
    assert trainer.learning_rates == pytest.approx({"main": 3e-4, "transformer": 5e-5})
    trainer.set_learning_rate(1e-3)
    assert trainer.learning_rates == pytest.approx({"main": 1e-3, "transformer": 5e-5})
