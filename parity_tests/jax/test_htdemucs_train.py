"""``umx_jax.train`` with HTDemucs: one training step against demucs 4.1.0's autograd
(``parity_tests/fixtures_htdemucs_train.py``), demucs 4's two-group Adam in optax, upstream's initialisation
(:func:`core_spec.training.initial_weights`) and ``unmix-train --framework jax --model htdemucs``.

- gradient parity, float64 and float32: the loss (L1 per source, weighted, the network in training mode at the
  batch's length), every gradient, the parameters after one and two Adam steps in demucs 4's two groups;
- the optimiser alone on upstream's own float64 gradients: the two groups match, one group or AdamW miss;
- the loop on the tiny MUSDB root: one epoch of the fixture's small HTDemucs from ``--init`` (its initial weights
  :func:`~core_spec.training.initial_weights`'s) writes a run folder whose best model loads in the port (canonical
  and msgpack file alike) and separates with ``apply_model``.

Both fixture steps run through :meth:`Trainer.step_with_grads` (one compilation a dtype).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from core_spec.canonical import load_canonical, save_canonical
from core_spec.seeded import random_weights
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
from umx_jax import dtype_scope
from umx_jax.train import Trainer, make_optimizer, optimizer_groups

DTYPES = ("float64", "float32")


@pytest.fixture(scope="module")
def case() -> HTDemucsTrainCase:
    return load_case()


def _devices(device: str) -> list[jax.Device] | None:
    return None if device == "cpu" else [jax.devices("gpu")[0]]


def _trainer(case: HTDemucsTrainCase, dtype: str, device: str = "cpu", **kwargs) -> Trainer:
    return Trainer(case.config, case.weights, case.recipe, dtype=dtype, dropout=False, devices=_devices(device),
                   precision="highest", **kwargs)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_step_matches_upstream(case, dtype, device):
    """Loss, gradients, and the parameters after two Adam steps of demucs 4's optimiser (the second step's
    gradient at the updated parameters); the groups hold upstream's parameters; the state survives its bytes."""
    trainer = _trainer(case, dtype, device)
    what = f"jax {dtype} "
    labels = optimizer_groups(trainer.params)
    sizes = [sum(1 for label in labels.values() if label == group) for group in ("main", "transformer")]
    assert sizes == case.meta["optimizer_group_sizes"]
    batch = {"sources": case.sources}
    loss, grads = trainer.step_with_grads(batch)
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())
    check_loss(loss, case, dtype, device, what=what)
    check_grads(grads, case, dtype, device, what=what)
    check_updated(trainer.canonical(), case, dtype, device, what=what, step=1)
    trainer.step_with_grads(batch)
    weights = trainer.canonical()
    assert all(w.dtype == np.dtype(dtype) for w in weights.values())
    check_updated(weights, case, dtype, device, what=what, step=2)

    restored = _trainer(case, dtype, device)
    restored.load_bytes(trainer.to_bytes())
    assert restored.step_count == 2 and restored.learning_rates == trainer.learning_rates
    for name, value in restored.canonical().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


def _adam_update(tx: optax.GradientTransformation, case: HTDemucsTrainCase) -> dict[str, np.ndarray]:
    """One step of ``tx`` from the fixture's weights with upstream's own float64 gradients (canonical names)."""
    with dtype_scope("float64"):
        params = {k: jax.numpy.asarray(v) for k, v in case.weights.items()}
        grads = {k: jax.numpy.asarray(case.grads[k]) for k in params}
        step = jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))  # one dispatch
        return {k: np.asarray(v) for k, v in step(params, grads).items()}


def test_two_groups_are_upstreams_step(case):
    """demucs 4's optimiser on upstream's gradients gives upstream's parameters; one Adam group for everything
    (the transformer decayed too) and AdamW do not."""
    check_updated(_adam_update(make_optimizer(case.recipe, case.config), case), case, "float64", what="optax ")
    recipe = case.recipe
    for name, tx in (("one group", make_optimizer(recipe)), ("adamw", optax.adamw(recipe.lr, weight_decay=0.1))):
        verdicts = [judge(v, case.updated[k], "train.update", "float64").ok for k, v in _adam_update(tx, case).items()]
        assert not all(verdicts), f"{name}'s update passes the train.update row"


def test_learning_rates_of_the_groups(case):
    """``set_learning_rate`` moves both groups; a config's ``t_lr`` keeps the transformer's."""
    trainer = _trainer(case, "float32")
    assert trainer.learning_rates == pytest.approx({"main": 3e-4, "transformer": 3e-4})
    trainer.set_learning_rate(1e-3)
    assert trainer.learning_rates == pytest.approx({"main": 1e-3, "transformer": 1e-3})
    config = dataclasses.replace(case.config, t_lr=5e-5)
    trainer = Trainer(config, case.weights, case.recipe, dropout=False)
    assert trainer.learning_rates == pytest.approx({"main": 3e-4, "transformer": 5e-5})
    trainer.set_learning_rate(1e-3)
    assert trainer.learning_rates == pytest.approx({"main": 1e-3, "transformer": 5e-5})


def test_initial_weights_follow_upstream_init(case):
    """demucs 4's ``HTDemucs.__init__``: norms 1 / 0, LayerScales ``dconv_init`` and 1e-4, attention biases 0 and
    Xavier ``in_proj_weight``, the U-Nets' convolutions rescaled to ``std = sqrt(rescale * std0)``, the 1x1
    samplers and the transformer's linear layers at PyTorch's default (not rescaled)."""
    config = case.config
    raw, w = random_weights(config, 7), initial_weights(config, 7)
    assert set(w) == set(raw) and all(v.dtype == np.float32 for v in w.values())
    np.testing.assert_array_equal(w["encoder.0.dconv.layers.0.1.weight"], 1.0)
    np.testing.assert_array_equal(w["crosstransformer.layers.0.norm_out.bias"], 0.0)
    np.testing.assert_array_equal(w["encoder.1.dconv.layers.1.6.scale"], np.float32(config.dconv_init))
    np.testing.assert_array_equal(w["crosstransformer.layers_t.1.gamma_2.scale"], np.float32(1e-4))
    np.testing.assert_array_equal(w["crosstransformer.layers.1.cross_attn.in_proj_bias"], 0.0)
    np.testing.assert_array_equal(w["crosstransformer.layers.0.self_attn.out_proj.bias"], 0.0)
    in_proj = w["crosstransformer.layers.0.self_attn.in_proj_weight"]
    bound = np.sqrt(6.0 / (in_proj.shape[0] + in_proj.shape[1]))
    assert 0.9 * bound < np.abs(in_proj).max() <= bound
    for name in ("encoder.1.conv.weight", "tdecoder.0.conv_tr.weight", "decoder.0.rewrite.weight",
                 "tencoder.2.dconv.layers.0.0.weight"):  # fmt: skip
        std0 = raw[name].astype(np.float64).std(ddof=1)
        expected = raw[name].astype(np.float64) / np.sqrt(std0 / config.rescale)
        check(w[name], expected, "init", "float32", what=f"rescale_module {name}")
    for name in ("channel_upsampler.weight", "crosstransformer.layers.0.linear1.weight"):
        np.testing.assert_array_equal(w[name], raw[name])
    emb = w["freq_emb.embedding.weight"].astype(np.float64) * config.emb_scale
    assert abs(emb.std() - 1.0) < 0.5 and np.abs(np.diff(emb, axis=0)).mean() < np.abs(emb).mean()  # smooth


# --- unmix-train --framework jax --model htdemucs on the tiny MUSDB root ---------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from parity_tests.tiny_musdb import make_tiny_musdb

    return make_tiny_musdb(tmp_path_factory.mktemp("tiny") / "musdb")


def _args(root: Path, out: Path, device: str, *options: str) -> argparse.Namespace:
    from unmix.train_cli import build_parser

    argv = ["--framework", "jax", "--root", str(root), "--out", str(out), "--device", device, *options]
    return build_parser().parse_args(argv)


def test_one_epoch_writes_a_run_that_separates(tiny_root, tmp_path, device, capsys):
    """One epoch of the fixture's small HTDemucs (upstream's initialisation, saved as a canonical file for
    ``--init``), excerpts of its segment with demucs 4's augmentations: the run folder holds the best model
    (canonical and msgpack), which loads in the port and separates a track with ``apply_model``."""
    from umx_jax.build import from_canonical_file, load_module
    from umx_jax.htdemucs import HTDemucs
    from umx_jax.htdemucs_apply import apply_model
    from unmix.train_cli import main as cli_main
    from unmix.train_jax import main

    config = CASE.config
    init = tmp_path / "init"
    save_canonical(init, initial_weights(config, seed=0), config)
    out = tmp_path / "run"
    segment = str(config.segment_samples)
    options = ("--model", "htdemucs", "--init", str(init), "--batch-size", "2", "--remix-group-size", "2",
               "--samples", segment, "--data-stride", "22050", "--epochs", "1", "--quiet")  # fmt: skip
    assert main(_args(tiny_root, out, device, *options)) == 0
    state = json.loads((out / "checkpoint-htdemucs-jax" / "state.json").read_text())
    (epoch,) = state["history"]
    assert epoch["steps"] >= 1 and np.isfinite(epoch["train"]) and np.isfinite(epoch["valid"])
    assert state["recipe"]["weights"] == [] and state["recipe"]["samples"] == config.segment_samples

    weights, file_config, provenance = load_canonical(out / "htdemucs.safetensors")
    assert file_config == config and provenance["framework"] == "jax"
    assert any(not np.array_equal(weights[k], v) for k, v in load_canonical(init)[0].items())  # it trained
    device_name = None if device == "cpu" else "gpu"
    model = from_canonical_file(out / "htdemucs.safetensors", device=device_name)
    native = load_module(out / "htdemucs-jax", device=device_name)
    assert isinstance(model, HTDemucs) and isinstance(native, HTDemucs)
    track = (0.1 * np.random.default_rng(0).standard_normal((2, 5000))).astype(np.float32)
    stems = np.asarray(apply_model(model, track, shifts=0))
    np.testing.assert_array_equal(stems, np.asarray(apply_model(native, track, shifts=0)))
    assert stems.shape == (len(config.sources), 2, 5000) and np.all(np.isfinite(stems))

    # the command line takes --framework jax for htdemucs (a run with results: refused without --resume / --force)
    argv = ["--framework", "jax", "--model", "htdemucs", "--root", str(tiny_root), "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "trains in" not in err, err
