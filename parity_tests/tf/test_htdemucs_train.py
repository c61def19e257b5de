"""``umx_tf.train`` with HTDemucs: one training step against demucs 4.1.0's autograd
(``parity_tests/fixtures_htdemucs_train.py``) and demucs 4's two-group Adam.

- gradient parity, float64 and float32: the loss (L1 per source, weighted, the network in training mode at the
  batch's length), every gradient, the parameters after one and two Adam steps in demucs 4's two groups;
- the optimiser alone on upstream's own float64 gradients: the two groups match, one group misses;
- the groups' learning rates (a config's ``t_lr`` keeps the transformer's); the optimiser state survives a
  checkpoint's arrays;
- ``unmix-train --framework tf --model htdemucs`` on the tiny MUSDB root: one epoch of the fixture's small HTDemucs
  from ``--init`` (upstream's initialisation, :func:`~core_spec.training.initial_weights`) writes a run folder whose
  best model loads in the port (canonical and Keras file alike) and separates with ``apply_model``; a fresh run
  starts from :func:`~core_spec.training.initial_weights` at the recipe's seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from core_spec.canonical import load_canonical, save_canonical
from core_spec.tolerances import judge
from core_spec.training import initial_weights
from parity_tests.fixtures_htdemucs_train import (
    CASE,
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


# --- unmix-train --framework tf --model htdemucs on the tiny MUSDB root ----------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from parity_tests.tiny_musdb import make_tiny_musdb

    return make_tiny_musdb(tmp_path_factory.mktemp("tiny") / "musdb")


def _args(root: Path, out: Path, device: str, *options: str) -> argparse.Namespace:
    from unmix.train_cli import build_parser

    argv = ["--framework", "tf", "--root", str(root), "--out", str(out), "--device", device, *options]
    return build_parser().parse_args(argv)


def test_one_epoch_writes_a_run_that_separates(tiny_root, tmp_path, device, capsys):
    """One epoch of the fixture's small HTDemucs (upstream's initialisation, saved as a canonical file for
    ``--init``), excerpts of its segment with demucs 4's augmentations: the run folder holds the best model
    (canonical and ``.weights.h5``), which loads in the port and separates a track with ``apply_model``."""
    from umx_tf.build import from_canonical_file, load_module
    from umx_tf.htdemucs import HTDemucs
    from umx_tf.htdemucs_apply import apply_model
    from unmix.train_cli import main as cli_main
    from unmix.train_tf import main

    config = CASE.config
    init = tmp_path / "init"
    save_canonical(init, initial_weights(config, seed=0), config)
    out = tmp_path / "run"
    segment = str(config.segment_samples)
    options = ("--model", "htdemucs", "--init", str(init), "--batch-size", "2", "--remix-group-size", "2",
               "--samples", segment, "--data-stride", "22050", "--epochs", "1", "--quiet")  # fmt: skip
    assert main(_args(tiny_root, out, device, *options)) == 0
    state = json.loads((out / "checkpoint-htdemucs-tf" / "state.json").read_text())
    (epoch,) = state["history"]
    assert epoch["steps"] >= 1 and np.isfinite(epoch["train"]) and np.isfinite(epoch["valid"])
    assert state["recipe"]["weights"] == [] and state["recipe"]["samples"] == config.segment_samples

    weights, file_config, provenance = load_canonical(out / "htdemucs.safetensors")
    assert file_config == config and provenance["framework"] == "tf"
    assert any(not np.array_equal(weights[k], v) for k, v in load_canonical(init)[0].items())  # it trained
    device_name = None if device == "cpu" else "gpu"
    with on_device(device):
        model = from_canonical_file(out / "htdemucs.safetensors", device=device_name)
        native = load_module(out / "htdemucs-tf", device=device_name)
        assert isinstance(model, HTDemucs) and isinstance(native, HTDemucs)
        track = (0.1 * np.random.default_rng(0).standard_normal((2, 5000))).astype(np.float32)
        stems = np.asarray(apply_model(model, track, shifts=0))
        np.testing.assert_array_equal(stems, np.asarray(apply_model(native, track, shifts=0)))
    assert stems.shape == (len(config.sources), 2, 5000) and np.all(np.isfinite(stems))

    # the command line takes --framework tf for htdemucs (a run with results: refused without --resume / --force)
    argv = ["--framework", "tf", "--model", "htdemucs", "--root", str(tiny_root), "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "trains in" not in err, err


def test_fresh_run_starts_from_upstreams_initialisation(tmp_path, monkeypatch):
    """Without ``--init``, the model's weights are :func:`~core_spec.training.initial_weights` at the recipe's
    seed (upstream's initialisation; Keras's initialisers are other distributions), here at the fixture's small
    config in place of the released preset."""
    import unmix.train_tf as train_tf
    from umx_tf.weights import to_canonical
    from unmix.train_cli import recipe_from_args

    args = _args(tmp_path, tmp_path / "run", "cpu", "--model", "htdemucs", "--seed", "3")
    recipe = recipe_from_args(args)
    monkeypatch.setattr(train_tf, "model_config", lambda a, r: (CASE.config, None, float(CASE.config.samplerate)))
    model, weights, _ = train_tf._build_model(args, recipe)
    expected = initial_weights(CASE.config, 3)
    assert weights is not None and sorted(weights) == sorted(expected)
    got = to_canonical(model)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
