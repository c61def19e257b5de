"""Training in the NNabla port (``umx_nnabla.train``; its run: ``unmix.train_nnabla``), NNabla environment only,
float32 (NNabla's CPU extension has no float64 kernels).

- one step against upstream's float64 step with torch autograd (``parity_tests/fixtures_train.py``): the loss, every
  parameter gradient, BatchNorm's running statistics after the step, and the parameters after one and two Adam
  steps (:class:`umx_nnabla.train.TorchAdam`); NNabla's own ``S.Adam`` update misses that tolerance (its ``eps`` is
  not bias-corrected), which is why the port does not call it;
- the pieces the loop relies on: NNabla's coupled weight decay, the training mode of the graphs (dropout,
  eval-mode graphs unchanged), upstream's initialisation, the data-parallel arithmetic, and ``--devices 2`` on the
  CPU failing with a message that names what is missing;
- the loop on a tiny MUSDB-style root (``parity_tests/tiny_musdb.py``): the loss decreases, the canonical best model
  reloads in the separator and equals the native ``.h5``, ``--resume`` continues exactly, and ``python -m
  unmix.train_cli --framework nnabla`` trains.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import nnabla as nn
import numpy as np
import pytest

from core_spec.configs import UMX_LSTM_DROPOUT, DemucsConfig, UMXConfig
from core_spec.tolerances import check, judge, metrics, tolerance
from parity_tests.fixtures_train import (
    TRAIN_CASES,
    check_grads,
    check_loss,
    check_running,
    check_updated,
    load_train_case,
)
from umx_nnabla import train
from umx_nnabla.build import from_canonical
from umx_nnabla.weights import to_canonical
from unmix import train_nnabla

from .helpers import run_on

ROOT = Path(__file__).resolve().parents[2]
DTYPE = "float32"


def _model(case):
    return from_canonical(case.config, {k: v.astype(np.float32) for k, v in case.weights.items()})


def _bn_running(model) -> dict[str, np.ndarray]:
    params = model.get_parameters(grad_only=False)
    names = {"running_mean": "mean", "running_var": "var"}
    return {
        f"bn{i}.{leaf}": params[f"bn{i}/bn/{nn_leaf}"].d.reshape(-1)
        for i in (1, 2, 3)
        for leaf, nn_leaf in names.items()
    }


# --- one step against upstream -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_one_step_matches_upstream(name, device):
    """Loss and every gradient (canonical names, both LSTM biases) of one step in training mode, LSTM dropout 0;
    UMX: BatchNorm's running statistics after the step (momentum 0.1, unbiased variance)."""
    case = load_train_case(name)
    with run_on(device):
        model = _model(case)
        loss, grads = train.loss_and_grads(model, case.inputs, case.recipe, stft_config=case.stft, lstm_dropout=0.0)
        check_loss(loss, case, DTYPE, device, what="nnabla ")
        check_grads(grads, case, DTYPE, device, what="nnabla ")
        if case.running is not None:
            check_running(_bn_running(model), case, DTYPE, device, what="nnabla ")


def _adam_steps(case, device: str, native: bool = False) -> list[dict[str, np.ndarray]]:
    """The canonical weights after one and two optimiser steps on the case's batch (gradient at the current
    weights each time, as the fixture): :class:`TorchAdam`, or NNabla's ``S.Adam.update()`` if ``native``."""
    with run_on(device):
        model = _model(case)
        step = train.make_step(model, case.recipe, case.stft, lstm_dropout=0.0)
        optimizer = train.make_optimizer(model, case.recipe)
        out = []
        for _ in range(2):
            optimizer.zero_grad()
            step(case.inputs, case.recipe)
            if native:
                optimizer.solver.weight_decay(case.recipe.weight_decay)
                optimizer.solver.update()
            else:
                optimizer.step()
            train.sync_lstm_biases(model)
            out.append(to_canonical(model))
        return out


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_adam_steps_match_torch(name, device):
    """Two steps of :class:`TorchAdam` (coupled weight decay 0.1 in the fixture) = ``torch.optim.Adam``'s."""
    case = load_train_case(name)
    first, second = _adam_steps(case, device)
    check_updated(first, case, DTYPE, device, what="nnabla ", step=1)
    check_updated(second, case, DTYPE, device, what="nnabla ", step=2)


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_nnabla_adam_update_is_not_torchs(name):
    """Why :class:`TorchAdam` computes the update itself: ``S.Adam.update()`` adds ``eps`` to the uncorrected
    ``sqrt(v)`` (``eps`` effectively ``1e-8 / sqrt(1 - b2^t)`` in torch's terms), and lands further from torch's
    parameters than the float32 tolerance."""
    case = load_train_case(name)
    first, _ = _adam_steps(case, "cpu", native=True)
    worst = max(metrics(first[k], case.updated[k]).rel for k in case.trainable)
    assert worst > tolerance("train.update", DTYPE).rel


def test_weight_decay_is_coupled():
    """``solver.weight_decay(wd)`` adds ``wd * w`` to the gradient before the moments (torch's ``Adam(weight_decay)``,
    not AdamW): after one step from zero moments every parameter moves by ``lr * sign(g + wd w)``."""
    w0 = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    g = np.array([0.5, 0.1, -1.0, -0.2], np.float32)
    param = nn.Variable.from_numpy_array(w0.copy(), need_grad=True)
    optimizer = train.TorchAdam({"w": param}, lr=1e-3, weight_decay=0.1)
    optimizer.zero_grad()
    param.g = g
    optimizer.step()
    expected = w0 - 1e-3 * np.sign(g + 0.1 * w0)  # |m / sqrt(v)| = 1 at step 1 (eps aside)
    check(param.d, expected, "train.update", DTYPE, what="coupled decay, one step")


def test_optimizer_states_round_trip(tmp_path):
    """``save_states`` / ``load_states`` (NNabla's solver-state file, ``.protobuf``) restore the moments and the step
    count; the ``.h5`` reader of NNabla 1.39 mixes up ``lstm/.../weight`` and ``weight_l0``, which is caught."""
    case = load_train_case("demucs")
    model = _model(case)
    step = train.make_step(model, case.recipe)
    optimizer = train.make_optimizer(model, case.recipe)
    for _ in range(3):
        optimizer.zero_grad()
        step(case.inputs, case.recipe)
        optimizer.step()
    optimizer.save_states(tmp_path / "solver.protobuf")
    fresh = train.TorchAdam(optimizer.params, lr=case.recipe.lr, weight_decay=case.recipe.weight_decay)
    fresh.load_states(tmp_path / "solver.protobuf")
    assert fresh.t == 3
    a, b = optimizer.state_arrays(), fresh.state_arrays()
    for k in a:
        for moment in ("m", "v"):
            assert b[k][moment].dtype == np.float32, (k, moment)
            np.testing.assert_array_equal(a[k][moment], b[k][moment], err_msg=f"{k} {moment}")
    optimizer.solver.save_states(str(tmp_path / "solver.h5"))
    with pytest.raises(ValueError, match="solver states of lstm/lstm/lstm/weight "):
        fresh.load_states(tmp_path / "solver.h5")


# --- training mode -----------------------------------------------------------------------------------------------


def test_lstm_dropout_is_upstream_and_switchable():
    """UMX trains with dropout 0.4 between LSTM layers (upstream's default); 0 gives the deterministic loss; the
    eval-mode graph reads the folded bias and has no dropout (two forwards agree)."""
    case = load_train_case("umx")
    model = _model(case)
    assert model.lstm_dropout == UMX_LSTM_DROPOUT
    nn.seed(0)
    losses, grads = {}, {}
    for p in (0.0, None):
        params = model.get_parameters(grad_only=False)
        running = {k: v.d.copy() for k, v in params.items() if k.endswith(("/mean", "/var"))}
        losses[p], grads[p] = train.loss_and_grads(model, case.inputs, case.recipe, case.stft, lstm_dropout=p)
        for k, value in running.items():  # undo the BatchNorm update: both steps from the same state
            params[k].d = value
    check_loss(losses[0.0], case, DTYPE, what="dropout 0 ")
    assert losses[None] != losses[0.0]
    # the layer after a dropped-out one sees other inputs: its gradient is outside the train.grad row of the
    # dropout-free one
    dropped = judge(grads[None]["lstm.weight_ih_l1"], case.grads["lstm.weight_ih_l1"], "train.grad", DTYPE)
    assert not dropped.ok, dropped.describe()
    X = np.abs(np.random.default_rng(0).standard_normal((1, 2, case.config.nb_bins, 7))).astype(np.float32)
    np.testing.assert_array_equal(model.infer(X), model.infer(X))


def test_initial_weights_are_upstreams():
    """BatchNorm 1 / 0 / 0 / 1 and UMX's scalers as upstream builds them; Demucs convolutions rescaled so that
    their standard deviation is ``sqrt(std * rescale)`` (``demucs.model.rescale_conv``)."""
    from core_spec.seeded import random_weights

    umx = UMXConfig(nb_bins=257, hidden_size=16, max_bin=64)
    w = train.initial_weights(umx, seed=1)
    assert np.all(w["bn1.weight"] == 1) and np.all(w["bn2.bias"] == 0) and np.all(w["bn3.running_var"] == 1)
    assert np.all(w["input_mean"] == 0) and np.all(w["input_scale"] == 1) and np.all(w["output_mean"] == 1)
    demucs = DemucsConfig(channels=4, depth=2)
    raw, w = random_weights(demucs, seed=1), train.initial_weights(demucs, seed=1)
    for name in ("encoder.0.0.weight", "decoder.1.2.weight"):
        std = raw[name].astype(np.float64).std(ddof=1)
        check(w[name].std(ddof=1), np.sqrt(std * demucs.rescale), "init", "float32", what=f"rescaled std {name}")
    np.testing.assert_array_equal(w["lstm.lstm.weight_ih_l0"], raw["lstm.lstm.weight_ih_l0"])


# --- data parallelism --------------------------------------------------------------------------------------------


def test_data_parallel_arithmetic_demucs_equals_full_batch():
    """Two replicas' shards, gradients averaged (what the MPI all-reduce computes) = the full batch's gradient
    (Demucs has no normalisation layers)."""
    case = load_train_case("demucs")
    model = _model(case)
    losses, grads = train.data_parallel_loss_and_grads(model, case.inputs, case.recipe, replicas=2)
    loss, full = train.loss_and_grads(model, case.inputs, case.recipe)
    check(np.mean(losses), loss, "train.loss", DTYPE, what="2 replicas, mean shard loss")
    for k in full:
        check(grads[k], full[k], "train.grad", DTYPE, what=f"2 replicas vs full batch, {k}")


def _args(root: Path, out: Path, *options: str) -> argparse.Namespace:
    from unmix.train_cli import build_parser

    return build_parser().parse_args(["--framework", "nnabla", "--root", str(root), "--out", str(out), *options])


def test_devices_on_cpu_names_what_is_missing(tmp_path, capsys):
    """``--devices 2`` on the CPU stops before reading any data, naming the CUDA extension and MPI."""
    args = _args(tmp_path / "no-data", tmp_path / "run", "--model", "demucs", "--devices", "2")
    assert train_nnabla.main(args) == 2
    message = capsys.readouterr().err
    for needed in ("nnabla-ext-cuda", "MPI", "mpirun", "--devices 1"):
        assert needed in message
    assert not (tmp_path / "run").exists()


# --- the loop on a tiny MUSDB-style root -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = pytest.importorskip("parity_tests.tiny_musdb")
    pytest.importorskip("unmix.data")
    return tiny.make_tiny_musdb(tmp_path_factory.mktemp("tiny_musdb"))


@pytest.fixture(scope="module")
def small_umx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Open-Unmix (n_fft 512, hidden 16, 2 layers) as a canonical file for ``--init``: the umxhq shapes cost
    NNabla's single-threaded CPU kernels ~20 s a step."""
    from core_spec.canonical import save_canonical

    config = UMXConfig(nb_bins=257, nb_channels=2, hidden_size=16, nb_layers=2, max_bin=64)
    path = tmp_path_factory.mktemp("init") / "small"
    save_canonical(path, train.initial_weights(config, seed=3), config)
    return path


UMX_SMOKE = ("--model", "umx", "--batch-size", "2", "--seq-dur", "1.0", "--samples-per-track", "4", "--quiet")
DEMUCS_SMOKE = ("--model", "demucs", "--preset", "demucs_unittest", "--batch-size", "4", "--samples", "8820",
                "--data-stride", "11025", "--quiet")  # fmt: skip


def _state(out: Path, name: str) -> dict:
    return json.loads((out / f"checkpoint-{name}-nnabla" / "state.json").read_text())


def test_smoke_umx_loss_decreases_and_reloads(tiny_root, small_umx, tmp_path):
    """A few UMX epochs: the training loss decreases; the canonical best model equals the native ``.h5`` beside it
    and reloads in the port's separator."""
    from core_spec.canonical import load_canonical
    from umx_nnabla import Separator
    from umx_nnabla.weights import load_native

    out = tmp_path / "run"
    assert train_nnabla.main(_args(tiny_root, out, *UMX_SMOKE, "--init", str(small_umx), "--epochs", "4")) == 0
    history = _state(out, "vocals")["history"]
    assert len(history) == 4
    assert history[-1]["train"] < history[0]["train"]
    weights, config, provenance = load_canonical(out / "vocals")
    assert provenance["framework"] == "nnabla" and isinstance(config, UMXConfig)
    native, native_config = load_native(out / "vocals-nnabla")
    assert native_config == config
    for k in weights:
        np.testing.assert_array_equal(weights[k], native[k], err_msg=k)
    model = from_canonical(config, weights)
    separator = Separator({"vocals": model}, niter=0, n_fft=512, n_hop=128)
    audio = np.random.default_rng(0).standard_normal((1, 2, 8192)).astype(np.float32) * 0.1
    stems = separator(audio)
    assert stems.shape == (1, 1, 2, 8192) and np.all(np.isfinite(stems))


def test_resume_is_exact(tiny_root, tmp_path):
    """``--epochs 2`` straight equals ``--epochs 1`` then ``--resume --epochs 2`` (weights, optimiser state, random
    generator); a run folder with results is not overwritten without ``--resume`` / ``--force``."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_nnabla.main(_args(tiny_root, straight, *DEMUCS_SMOKE, "--epochs", "2")) == 0
    assert train_nnabla.main(_args(tiny_root, resumed, *DEMUCS_SMOKE, "--epochs", "1")) == 0
    assert train_nnabla.main(_args(tiny_root, resumed, *DEMUCS_SMOKE, "--epochs", "1")) == 2
    assert train_nnabla.main(_args(tiny_root, resumed, *DEMUCS_SMOKE, "--epochs", "2", "--resume")) == 0
    a, b = (_checkpoint_params(p) for p in (straight, resumed))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [h["train"] for h in _state(straight, "demucs")["history"]] == [
        h["train"] for h in _state(resumed, "demucs")["history"]
    ]
    assert _state(resumed, "demucs")["step"] == _state(straight, "demucs")["step"]


def _checkpoint_params(out: Path) -> dict[str, np.ndarray]:
    scope: OrderedDict = OrderedDict()
    with nn.parameter_scope("", scope):
        nn.load_parameters(str(out / "checkpoint-demucs-nnabla" / "params.h5"))
        return {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}


def test_unmix_train_cli_runs_in_the_nnabla_environment(tiny_root, small_umx, tmp_path):
    """``python -m unmix.train_cli --framework nnabla --model umx ...`` (what ``unmix-train`` runs in
    ``.venv-nnabla``) trains a few steps and writes the run folder."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "unmix.train_cli", "--framework", "nnabla", "--root", str(tiny_root)]
    cmd += ["--out", str(out), *UMX_SMOKE, "--init", str(small_umx), "--max-steps", "2", "--valid-tracks", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = _state(out, "vocals")
    assert state["step"] == 2 and state["framework"] == "nnabla"
    for name in ("vocals.safetensors", "vocals.json", "vocals-nnabla.h5", "vocals-nnabla.json"):
        assert (out / name).exists(), name
    for name in ("params.h5", "solver.protobuf", "state.json"):
        assert (out / "checkpoint-vocals-nnabla" / name).exists(), name
