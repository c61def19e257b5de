"""umx_torch.train with HTDemucs: one training step against demucs 4.1.0's autograd
(``parity_tests/fixtures_htdemucs_train.py``), and ``unmix-train --framework torch --model htdemucs``.

- gradient parity, float64 and float32: the loss (L1 per source, weighted), every gradient, the parameters after one
  and two Adam steps in demucs 4's two groups (the transformer without the recipe's weight decay);
- the optimiser is upstream's: one group for everything, or AdamW, misses the fixture;
- the loop on the tiny MUSDB root: one epoch of a small HTDemucs from ``--init`` writes a run folder whose best
  model loads in the port (canonical and native file alike) and separates with ``apply_model``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from core_spec.tolerances import judge
from parity_tests.fixtures_htdemucs_train import (
    CASE,
    HTDemucsTrainCase,
    check_grads,
    check_loss,
    check_updated,
    load_case,
)
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, np_of, torch, torch_device
from umx_torch import load_weights
from umx_torch.htdemucs import HTDemucs
from umx_torch.train import loss_and_grads, make_optimizer, set_transformer_dropout


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def case() -> HTDemucsTrainCase:
    return load_case()


def _model(case: HTDemucsTrainCase, dtype: str, device: str) -> HTDemucs:
    model = HTDemucs.from_config(case.config, torch_device(device), TORCH_DTYPES[dtype])
    load_weights(model, case.weights)
    set_transformer_dropout(model, 0.0)
    return model


def _params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: np_of(p) for k, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_step_matches_upstream(case, dtype, device):
    """Loss, gradients, and the parameters after two Adam steps of demucs 4's optimiser."""
    model = _model(case, dtype, device)
    what = f"torch {dtype} "
    batch = {"sources": case.sources}
    loss, grads = loss_and_grads(model, batch, case.recipe)
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())
    check_loss(loss, case, dtype, device, what=what)
    check_grads(grads, case, dtype, device, what=what)
    optimizer = make_optimizer(model, case.recipe)
    assert [len(g["params"]) for g in optimizer.param_groups] == case.meta["optimizer_group_sizes"]
    optimizer.step()
    check_updated(_params(model), case, dtype, device, what=what, step=1)
    loss_and_grads(model, batch, case.recipe)  # the gradient at the updated parameters
    optimizer.step()
    check_updated(_params(model), case, dtype, device, what=what, step=2)


@pytest.mark.parametrize("optimizer", ["one group", "adamw"])
def test_other_optimisers_miss_the_fixture(case, optimizer):
    """One Adam group for every parameter (the transformer decayed too) or AdamW is not demucs 4's step."""
    model = _model(case, "float64", "cpu")
    loss_and_grads(model, {"sources": case.sources}, case.recipe)
    cls = torch.optim.Adam if optimizer == "one group" else torch.optim.AdamW
    cls(model.parameters(), lr=case.recipe.lr, weight_decay=case.recipe.weight_decay).step()
    verdicts = {k: judge(p, case.updated[k], "train.update", "float64") for k, p in _params(model).items()}
    assert not all(v.ok for v in verdicts.values()), f"{optimizer}'s update passes the train.update row"


def test_eval_mode_loss_is_another_function(case):
    """The step runs in train mode (the network at the batch's length): the eval-mode forward, padded to the
    model's segment, gives another loss."""
    from umx_torch.train import compute_loss

    model = _model(case, "float64", "cpu").eval()
    with torch.no_grad():
        loss = float(compute_loss(model, {"sources": case.sources}, case.recipe))
    assert not judge(np.asarray(loss), np.asarray(case.loss), "htdemucs.train.loss", "float32").ok


# --- unmix-train --model htdemucs on the tiny MUSDB root -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = pytest.importorskip("parity_tests.tiny_musdb")
    return tiny.make_tiny_musdb(tmp_path_factory.mktemp("tiny_musdb"))


def _args(root: Path, out: Path, *options: str) -> argparse.Namespace:
    from unmix.train_cli import build_parser

    return build_parser().parse_args(["--framework", "torch", "--root", str(root), "--out", str(out), *options])


def test_one_epoch_writes_a_run_that_separates(tiny_root, tmp_path):
    """One epoch of the fixture's small HTDemucs (upstream's initialisation, saved as a canonical file for
    ``--init``), 0.05-s excerpts (its segment) with demucs 4's augmentations: the run folder holds the best model
    (canonical and native), which loads in the port and separates a track with ``apply_model``."""
    from core_spec.canonical import load_canonical, save_canonical
    from umx_torch import from_canonical_file, load_module
    from umx_torch.htdemucs_apply import apply_model
    from umx_torch.weights import to_canonical
    from unmix.train_torch import main

    config = CASE.config
    torch.manual_seed(0)
    init = tmp_path / "init"
    save_canonical(init, to_canonical(HTDemucs.from_config(config)), config)
    out = tmp_path / "run"
    segment = str(config.segment_samples)
    options = ("--model", "htdemucs", "--init", str(init), "--batch-size", "2", "--remix-group-size", "2",
               "--samples", segment, "--data-stride", "22050", "--epochs", "1", "--quiet")  # fmt: skip
    assert main(_args(tiny_root, out, *options)) == 0
    state = json.loads((out / "checkpoint-htdemucs-torch" / "state.json").read_text())
    (epoch,) = state["history"]
    assert epoch["steps"] >= 1 and np.isfinite(epoch["train"]) and np.isfinite(epoch["valid"])
    assert state["recipe"]["weights"] == [] and state["recipe"]["samples"] == config.segment_samples

    weights, file_config, provenance = load_canonical(out / "htdemucs.safetensors")
    assert file_config == config and provenance["framework"] == "torch"
    assert any(not np.array_equal(weights[k], v) for k, v in load_canonical(init)[0].items())  # it trained
    model, native = from_canonical_file(out / "htdemucs.safetensors"), load_module(out / "htdemucs-torch")
    assert isinstance(model, HTDemucs) and isinstance(native, HTDemucs)
    track = torch.from_numpy(0.1 * np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32))
    with torch.no_grad():
        stems = apply_model(model, track, shifts=0)
        np.testing.assert_array_equal(np_of(stems), np_of(apply_model(native, track, shifts=0)))
    assert stems.shape == (len(config.sources), 2, 5000) and bool(torch.isfinite(stems).all())


def test_htdemucs_is_refused_where_no_trainer_takes_it(tiny_root, tmp_path, capsys, monkeypatch):
    """A port outside ``HTDEMUCS_FRAMEWORKS`` (every port has HTDemucs now: here the list is narrowed) is refused
    before anything runs."""
    import unmix.train_cli as train_cli

    monkeypatch.setattr(train_cli, "HTDEMUCS_FRAMEWORKS", ("torch", "jax"))
    argv = ["--framework", "tf", "--model", "htdemucs", "--root", str(tiny_root), "--out", str(tmp_path / "x")]
    assert train_cli.main(argv) == 2
    assert "--model htdemucs trains in torch, jax (not tf yet)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_transformer_keeps_its_own_learning_rate(case) -> None:
    """demucs 4 never changes the transformer group's ``t_lr``; the epoch loop's learning rate is the other group's."""
    import dataclasses

    from umx_torch.train import Trainer

    config = dataclasses.replace(case.config, t_lr=1e-5)
    model = HTDemucs.from_config(config, torch_device("cpu"), TORCH_DTYPES["float64"])
    trainer = Trainer(model, model, make_optimizer(model, case.recipe), case.recipe, None)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [case.recipe.lr, 1e-5]
    trainer.set_learning_rate(1e-3)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 1e-5]
    plain = HTDemucs.from_config(case.config, torch_device("cpu"), TORCH_DTYPES["float64"])
    trainer = Trainer(plain, plain, make_optimizer(plain, case.recipe), case.recipe, None)
    trainer.set_learning_rate(1e-3)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 1e-3]
