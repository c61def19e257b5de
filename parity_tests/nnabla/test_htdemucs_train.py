"""``umx_nnabla.train`` with HTDemucs: one training step against demucs 4.1.0's float64 autograd
(``parity_tests/fixtures_htdemucs_train.py``), float32 (NNabla's CPU extension has no float64 kernels), and demucs
4's two-group Adam (:class:`umx_nnabla.train.GroupedTorchAdam`).

- the loss (L1 per source, weighted, the network in training mode at the batch's length, the frequency branch
  inverted in the graph), every gradient, the parameters after one and two Adam steps (the second step's gradient at
  the updated parameters), rows ``htdemucs.train.loss`` / ``htdemucs.train.grad`` / ``train.update``;
- the optimiser alone on upstream's own gradients: the two groups reproduce upstream's update, one group (the
  transformer decayed too) does not; the groups' learning rates (``t_lr``); the solver state round trip;
- the training graph's pieces: :func:`~umx_nnabla.train.htdemucs_loss` against the spec's loss;
- the :class:`~umx_nnabla.train.Trainer` the epoch loop steps: a step, demucs 4's validation against the spec, the
  best model's files and a checkpoint that resumes exactly;
- ``unmix-train --framework nnabla --model htdemucs`` on the tiny MUSDB root: one epoch of the fixture's small
  HTDemucs from ``--init`` (upstream's initialisation, :func:`~core_spec.training.initial_weights`) writes a run
  folder whose best model loads in the port (canonical and ``.h5`` alike) and separates with ``apply_model``; a
  fresh run starts from :func:`~core_spec.training.initial_weights` at the recipe's seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import nnabla as nn
import numpy as np
import pytest

from core_spec.canonical import load_canonical, save_canonical
from core_spec.reference import htdemucs_apply as ref_apply
from core_spec.reference.train import htdemucs_loss as reference_loss
from core_spec.seeded import random_audio
from core_spec.tolerances import check, judge
from core_spec.training import initial_weights
from parity_tests.fixtures_htdemucs_train import (
    CASE,
    HTDemucsTrainCase,
    check_grads,
    check_loss,
    check_updated,
    load_case,
)
from parity_tests.nnabla.helpers import run_on
from umx_nnabla.build import from_canonical
from umx_nnabla.htdemucs import HTDemucs
from umx_nnabla.train import (
    GroupedTorchAdam,
    TorchAdam,
    Trainer,
    batch_shape,
    htdemucs_loss,
    load_checkpoint,
    loss_and_grads,
    make_optimizer,
    make_step,
    optimizer_groups,
    trainable_parameters,
)
from umx_nnabla.weights import htdemucs_parameter_name, load_native, to_canonical


@pytest.fixture(scope="module")
def case() -> HTDemucsTrainCase:
    return load_case()


def _model(case: HTDemucsTrainCase, device: str = "cpu") -> HTDemucs:
    model = from_canonical(case.config, case.weights, device=device)
    assert isinstance(model, HTDemucs)
    return model


def test_one_step_matches_upstream(case, device):
    """Loss, gradients and the parameters after two Adam steps of demucs 4's optimiser; the groups hold upstream's
    parameters."""
    with run_on(device):
        model = _model(case, device)
        batch = {"sources": case.sources}
        loss, grads = loss_and_grads(model, batch, case.recipe)
        optimizer = make_optimizer(model, case.recipe)
        labels = optimizer_groups(trainable_parameters(model))
        sizes = [sum(1 for label in labels.values() if label == group) for group in ("main", "transformer")]
        assert sizes == case.meta["optimizer_group_sizes"]
        assert all(g.dtype == np.float32 for g in grads.values())
        check_loss(loss, case, "float32", device, what="nnabla ")
        check_grads(grads, case, "float32", device, what="nnabla ")
        optimizer.step()
        check_updated(to_canonical(model), case, "float32", device, what="nnabla ", step=1)
        loss_and_grads(model, batch, case.recipe)  # zeroes, then leaves the new gradients on the parameters
        optimizer.step()
        check_updated(to_canonical(model), case, "float32", device, what="nnabla ", step=2)


def _update_with_upstream_grads(case: HTDemucsTrainCase, optimizer_of) -> dict[str, np.ndarray]:
    """One step of ``optimizer_of(params)`` from the fixture's weights with upstream's own gradients (float32)."""
    model = _model(case)
    params = trainable_parameters(model)
    for name, grad in case.grads.items():
        params[htdemucs_parameter_name(name)].g = np.asarray(grad, np.float32)
    optimizer_of(params).step()
    return to_canonical(model)


def test_two_groups_are_upstreams_step(case):
    """demucs 4's optimiser on upstream's gradients gives upstream's parameters; one Adam group for everything (the
    transformer decayed too) does not."""
    recipe = case.recipe
    groups = {"main": (None, recipe.weight_decay), "transformer": (case.config.t_lr, case.config.t_weight_decay)}
    grouped = _update_with_upstream_grads(
        case, lambda p: GroupedTorchAdam(p, optimizer_groups(p), groups, lr=recipe.lr)
    )
    check_updated(grouped, case, "float32", what="nnabla grouped ")
    single = _update_with_upstream_grads(case, lambda p: TorchAdam(p, lr=recipe.lr, weight_decay=recipe.weight_decay))
    verdicts = [judge(v, case.updated[k], "train.update", "float32").ok for k, v in single.items()]
    assert not all(verdicts), "one group's update passes the train.update row"


def test_learning_rates_of_the_groups(case):
    """``set_learning_rate`` moves both groups; a config's ``t_lr`` keeps the transformer's."""
    optimizer = make_optimizer(_model(case), case.recipe)
    assert optimizer.learning_rates == pytest.approx({"main": 3e-4, "transformer": 3e-4})
    optimizer.set_learning_rate(1e-3)
    assert optimizer.learning_rates == pytest.approx({"main": 1e-3, "transformer": 1e-3})
    config = dataclasses.replace(case.config, t_lr=5e-5)
    optimizer = make_optimizer(from_canonical(config, case.weights), case.recipe)
    assert optimizer.learning_rates == pytest.approx({"main": 3e-4, "transformer": 5e-5})
    optimizer.set_learning_rate(1e-3)
    assert optimizer.learning_rates == pytest.approx({"main": 1e-3, "transformer": 5e-5})


def test_solver_states_round_trip(case, tmp_path):
    """The grouped optimiser's moments and step count survive its ``.protobuf`` file."""
    model = _model(case)
    loss_and_grads(model, {"sources": case.sources}, case.recipe)
    optimizer = make_optimizer(model, case.recipe)
    optimizer.step()
    optimizer.save_states(tmp_path / "solver.protobuf")
    restored = make_optimizer(model, case.recipe)
    restored.load_states(tmp_path / "solver.protobuf")
    assert restored.t == 1
    read = restored.state_arrays()
    for name, state in optimizer.state_arrays().items():
        np.testing.assert_array_equal(read[name]["m"], state["m"], err_msg=name)
        np.testing.assert_array_equal(read[name]["v"], state["v"], err_msg=name)


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_loss_graph_is_the_specs(loss):
    """:func:`htdemucs_loss` on random estimates against :func:`core_spec.reference.train.htdemucs_loss` (L1 averaged
    over the batch, MSE summed over it), unequal source weights."""
    rng = np.random.default_rng(5)
    estimates, sources = (rng.standard_normal((3, 4, 2, 50)).astype(np.float32) for _ in range(2))
    weights = (1.0, 2.0, 0.5, 1.5)
    graph = htdemucs_loss(nn.Variable.from_numpy_array(estimates), nn.Variable.from_numpy_array(sources), weights, loss)
    graph.forward()
    expected = reference_loss(estimates, sources, weights, loss)
    check(np.asarray(graph.d), np.asarray(expected), "htdemucs.train.loss", "float32", what=f"loss {loss}")


# --- the trainer the epoch loop steps ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Folder:
    """A run folder (:class:`core_spec.epochs.RunFiles`) under ``root``."""

    root: Path

    @property
    def best(self) -> Path:
        return self.root / "htdemucs"

    @property
    def native(self) -> Path:
        return self.root / "htdemucs-nnabla"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint-htdemucs-nnabla"


class _Run:
    """The run's bookkeeping (:class:`core_spec.epochs.RunRecord`): ``state.json`` with the port's entries."""

    def provenance(self, framework: str, valid_loss: float, **versions: str) -> dict:
        return {"framework": framework, "valid_loss": valid_loss, **versions}

    def save(self, folder, rng, **extra) -> None:
        (folder.checkpoint / "state.json").write_text(json.dumps(extra))

    def load(self, folder, rng) -> dict:
        return json.loads((folder.checkpoint / "state.json").read_text())


def _trainer(case: HTDemucsTrainCase) -> Trainer:
    model = _model(case)
    step = make_step(model, case.recipe)
    step.graph(batch_shape(step, {"sources": case.sources}, case.recipe))
    return Trainer(model, step, make_optimizer(model, case.recipe), case.recipe, None)


def test_trainer_steps_validates_and_saves(case, tmp_path):
    """:class:`~umx_nnabla.train.Trainer` on HTDemucs: a step is upstream's first Adam step; the validation is demucs
    4's (``apply_model`` at the model's segment, overlap 0, no shifts, the weighted training loss) against the spec;
    the best model's files and the checkpoint come back as they were written."""
    trainer = _trainer(case)
    trainer.step({"sources": case.sources})
    check_updated(to_canonical(trainer.model), case, "float32", what="nnabla trainer ", step=1)

    tracks = [random_audio(3000, 2, seed=60 + i, nb_samples=len(case.config.sources)) for i in range(2)]  # (S, C, T)
    weights = to_canonical(trainer.model)
    expected = 0.0
    for sources in tracks:
        estimates = ref_apply.apply_model(weights, case.config, sources.sum(axis=0), shifts=0, overlap=0.0)
        expected += reference_loss(estimates[None], sources[None], case.recipe.weights, case.recipe.loss) / 2
    valid = trainer.evaluate(tracks)
    check(np.asarray(valid), np.asarray(expected), "htdemucs.train.loss", "float32", what="nnabla validation")

    folder, run = _Folder(tmp_path), _Run()
    trainer.save_best(folder, run, valid)
    best, config, _ = load_canonical(folder.best)
    assert config == case.config and all(np.array_equal(best[k], v) for k, v in weights.items())
    native, _ = load_native(folder.native)
    assert all(np.array_equal(native[k], v) for k, v in weights.items())

    trainer.save_checkpoint(folder, run, np.random.default_rng(0))
    resumed = _trainer(case)
    load_checkpoint(resumed.model, resumed.optimizer, folder, run, np.random.default_rng(0))
    assert resumed.optimizer.t == 1
    back = to_canonical(resumed.model)
    assert all(np.array_equal(back[k], v) for k, v in weights.items())
    trainer.step({"sources": case.sources})
    resumed.step({"sources": case.sources})
    after, resumed_after = to_canonical(trainer.model), to_canonical(resumed.model)
    for name, value in after.items():
        np.testing.assert_array_equal(resumed_after[name], value, err_msg=name)


# --- unmix-train --framework nnabla --model htdemucs on the tiny MUSDB root ------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = pytest.importorskip("parity_tests.tiny_musdb")
    pytest.importorskip("unmix.data")
    return tiny.make_tiny_musdb(tmp_path_factory.mktemp("tiny_musdb"))


def _args(root: Path, out: Path, *options: str) -> argparse.Namespace:
    from unmix.train_cli import build_parser

    return build_parser().parse_args(["--framework", "nnabla", "--root", str(root), "--out", str(out), *options])


def test_one_epoch_writes_a_run_that_separates(tiny_root, tmp_path, capsys):
    """One epoch of the fixture's small HTDemucs (upstream's initialisation, saved as a canonical file for
    ``--init``), excerpts of its segment with demucs 4's augmentations: the run folder holds the best model
    (canonical and ``.h5``), which loads in the port and separates a track with ``apply_model``."""
    from umx_nnabla.build import from_canonical_file, load_module
    from umx_nnabla.htdemucs_apply import apply_model
    from unmix.train_cli import main as cli_main
    from unmix.train_nnabla import main

    config = CASE.config
    init = tmp_path / "init"
    save_canonical(init, initial_weights(config, seed=0), config)
    out = tmp_path / "run"
    segment = str(config.segment_samples)
    options = ("--model", "htdemucs", "--init", str(init), "--batch-size", "2", "--remix-group-size", "2",
               "--samples", segment, "--data-stride", "22050", "--epochs", "1", "--quiet")  # fmt: skip
    assert main(_args(tiny_root, out, *options)) == 0
    state = json.loads((out / "checkpoint-htdemucs-nnabla" / "state.json").read_text())
    (epoch,) = state["history"]
    assert epoch["steps"] >= 1 and np.isfinite(epoch["train"]) and np.isfinite(epoch["valid"])
    assert state["recipe"]["weights"] == [] and state["recipe"]["samples"] == config.segment_samples

    weights, file_config, provenance = load_canonical(out / "htdemucs.safetensors")
    assert file_config == config and provenance["framework"] == "nnabla"
    assert any(not np.array_equal(weights[k], v) for k, v in load_canonical(init)[0].items())  # it trained
    with run_on("cpu"):
        model, native = from_canonical_file(out / "htdemucs.safetensors"), load_module(out / "htdemucs-nnabla")
        assert isinstance(model, HTDemucs) and isinstance(native, HTDemucs)
        track = (0.1 * np.random.default_rng(0).standard_normal((2, 5000))).astype(np.float32)
        stems = apply_model(model, track, shifts=0)
        np.testing.assert_array_equal(stems, apply_model(native, track, shifts=0))
    assert stems.shape == (len(config.sources), 2, 5000) and np.all(np.isfinite(stems))

    # the command line takes --framework nnabla for htdemucs (a run with results: refused without --resume / --force)
    argv = ["--framework", "nnabla", "--model", "htdemucs", "--root", str(tiny_root), "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "trains in" not in err, err


def test_fresh_run_starts_from_upstreams_initialisation(tmp_path, monkeypatch):
    """Without ``--init``, the model's weights are :func:`~core_spec.training.initial_weights` at the recipe's
    seed, here at the fixture's small config in place of the released preset."""
    import unmix.train_nnabla as train_nnabla
    from unmix.train_cli import recipe_from_args

    args = _args(tmp_path, tmp_path / "run", "--model", "htdemucs", "--seed", "3")
    recipe = recipe_from_args(args)
    monkeypatch.setattr(train_nnabla, "model_config", lambda a, r: (CASE.config, None, float(CASE.config.samplerate)))
    model, _, _, from_file = train_nnabla._build_model(args, recipe)
    assert isinstance(model, HTDemucs) and not from_file
    got = to_canonical(model)
    for name, value in initial_weights(CASE.config, 3).items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
