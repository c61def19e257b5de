"""``umx_jax.train``: one training step against upstream's (torch autograd, float64 fixtures), the optimiser, the
functional layout, data parallelism over two host devices, and the ``unmix-train`` loop (``unmix.train_jax``) on the
tiny MUSDB root.

Compiled steps are shared between trainers of the same model (``ModelLayout.of``), so the loop tests reuse what
the parity tests compiled where the shapes agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from core_spec.canonical import load_canonical, save_canonical
from core_spec.configs import SeparatorConfig, UMXConfig, UMXSeparatorConfig, WienerConfig
from core_spec.tolerances import check
from parity_tests.fixtures_train import (
    TRAIN_CASES,
    check_grads,
    check_loss,
    check_running,
    check_updated,
    load_train_case,
)
from umx_jax import dtype_scope
from umx_jax.build import from_canonical
from umx_jax.train import ModelLayout, Trainer, initial_weights, loss_and_grads, train_stft
from umx_jax.weights import load_native, to_canonical
from unmix.train_cli import build_parser
from unmix.train_jax import main

ROOT = Path(__file__).resolve().parents[2]
DTYPES = ("float64", "float32")


def _devices(device: str) -> list[jax.Device] | None:
    return None if device == "cpu" else [jax.devices("gpu")[0]]


def _device_name(device: str) -> str | None:
    return None if device == "cpu" else "gpu"


def _trainer(case, dtype: str, device: str = "cpu", **kwargs) -> Trainer:
    """A trainer for a fixture case: LSTM dropout off; Demucs in float64 with julius's resampling kernels (the
    float32 run uses the spec's, well inside its tolerance, and so shares its compiled step with the loop test)."""
    extra = {"stft": case.stft} if case.stft is not None else {}
    if case.kernels is not None and dtype == "float64":
        extra["resample_kernels"] = case.kernels
    return Trainer(
        case.config, case.weights, case.recipe, dtype=dtype, dropout=False, devices=_devices(device),
        precision="highest", **extra, **kwargs,
    )  # fmt: skip


# --- one step against upstream ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(TRAIN_CASES))
def test_training_step_matches_upstream(name: str, dtype: str, device: str) -> None:
    """Loss, every gradient, BatchNorm running statistics and the parameters after two Adam steps (coupled decay)."""
    case = load_train_case(name)
    trainer = _trainer(case, dtype, device)
    loss, grads = trainer.step_with_grads(case.inputs)
    check_loss(loss, case, dtype, device, what="jax ")
    check_grads(grads, case, dtype, device, what="jax ")
    weights = trainer.canonical()
    assert all(w.dtype == np.dtype(dtype) for w in weights.values())
    if case.running is not None:
        check_running(weights, case, dtype, device, what="jax ")
    check_updated(weights, case, dtype, device, what="jax ")
    trainer.step_with_grads(case.inputs)
    check_updated(trainer.canonical(), case, dtype, device, what="jax ", step=2)


def test_loss_and_grads_updates_the_module(device: str) -> None:
    """The module-level ``loss_and_grads``: gradients by canonical name, BatchNorm statistics moved in the module."""
    case = load_train_case("umx")
    model = from_canonical(case.config, case.weights, dtype=np.float64, device=_device_name(device))
    loss, grads = loss_and_grads(model, case.inputs, case.recipe, stft_config=case.stft)
    check_loss(loss, case, "float64", device, what="jax loss_and_grads ")
    check_grads(grads, case, "float64", device, what="jax loss_and_grads ")
    np.testing.assert_array_equal(grads["lstm.bias_ih_l0"], grads["lstm.bias_hh_l0"])
    with dtype_scope("float64"):
        check_running(to_canonical(model), case, "float64", device, what="jax loss_and_grads ")
    assert model.bn1.use_running_average  # the caller's module stays in eval mode


def test_layout_round_trip_keeps_both_lstm_biases() -> None:
    """canonical -> trainable dicts -> canonical is exact, ``bias_ih`` and ``bias_hh`` apart (Adam moves them
    differently under coupled weight decay); the module the dicts build folds them."""
    case = load_train_case("umx")
    with dtype_scope("float64"):
        model = from_canonical(case.config, case.weights, dtype=np.float64)
        layout = ModelLayout.of(model)
        assert layout is ModelLayout.of(from_canonical(case.config, case.weights, dtype=np.float64))
        params, stats = layout.from_canonical(case.weights)
        assert "lstm.layers.0.bias_hh" in params and "bn1.mean" in stats and "bn1.mean" not in params
        back = layout.to_canonical(params, stats)
        assert list(back) == list(case.weights)
        for k, v in case.weights.items():
            np.testing.assert_array_equal(back[k], v, err_msg=k)
        folded = to_canonical(layout.merge(params, stats, train=False))
        check(
            folded["lstm.bias_ih_l1_reverse"],
            case.weights["lstm.bias_ih_l1_reverse"] + case.weights["lstm.bias_hh_l1_reverse"],
            "identity",
            "float64",
            what="folded LSTM bias = bias_ih + bias_hh",
        )


def test_learning_rate_and_checkpoint_bytes(tmp_path: Path) -> None:
    """The plateau schedule's learning rate reaches the optimiser without a new trainer; the Flax msgpack state
    restores a trainer exactly (same next step)."""
    case = load_train_case("umx")
    a = _trainer(case, "float32")
    a.step_with_grads(case.inputs)  # the parity test's compiled step
    a.set_learning_rate(3e-4)
    assert np.float32(a.learning_rate) == np.float32(3e-4)  # the optimiser state holds it in float32
    data = a.to_bytes()
    b = _trainer(case, "float32")
    b.load_bytes(data)
    assert b.step_count == 1 and np.float32(b.learning_rate) == np.float32(3e-4)
    a.step_with_grads(case.inputs)
    b.step_with_grads(case.inputs)
    for k, v in a.canonical().items():
        np.testing.assert_array_equal(b.canonical()[k], v, err_msg=k)


# --- data parallelism ----------------------------------------------------------------------------------------------

_DATA_PARALLEL = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from parity_tests.fixtures_train import (
        check_grads, check_loss, check_running, check_updated, load_train_case,
    )
    from umx_jax import dtype_scope
    from umx_jax.train import Trainer

    assert len(jax.devices("cpu")) == 2, jax.devices()
    report = {}
    for name in ("umx", "demucs"):
        case = load_train_case(name)
        extra = {"stft": case.stft} if case.stft is not None else {"resample_kernels": case.kernels}
        trainer = Trainer(case.config, case.weights, case.recipe, dtype="float64", dropout=False, devices=2,
                          precision="highest", **extra)
        with dtype_scope("float64"):
            batch = trainer._place_batch(trainer._unpack(case.inputs))
        assert batch[0].sharding.spec == P("batch"), batch[0].sharding
        assert [s.data.shape[0] for s in batch[0].addressable_shards] == [1, 1]
        assert {s.data.dtype for s in batch[0].addressable_shards} == {np.dtype("float64")}
        loss, grads = trainer.step_with_grads(case.inputs)
        assert all(v.sharding.is_fully_replicated for v in trainer.params.values())
        check_loss(loss, case, "float64", what="jax 2 devices ")
        check_grads(grads, case, "float64", what="jax 2 devices ")
        weights = trainer.canonical()
        if case.running is not None:  # the statistics of the global batch (a synchronised BatchNorm)
            check_running(weights, case, "float64", what="jax 2 devices ")
        check_updated(weights, case, "float64", what="jax 2 devices ")
        trainer.step_with_grads(case.inputs)
        check_updated(trainer.canonical(), case, "float64", what="jax 2 devices ", step=2)
        report[name] = loss
    print("@@" + json.dumps(report))
    """
)


def test_data_parallel_two_host_devices_match_one() -> None:
    """Batch sharded over two host devices (a subprocess: the device count is fixed when JAX starts), parameters
    replicated: the step is upstream's full-batch step within the float64 tolerances, for Demucs and for UMX (whose
    BatchNorm then uses the global batch's statistics, the fixture's)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    losses = json.loads(done.stdout.rsplit("@@", 1)[1])
    assert set(losses) == {"umx", "demucs"}


# --- the loop --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from parity_tests.tiny_musdb import make_tiny_musdb

    return make_tiny_musdb(tmp_path_factory.mktemp("tiny") / "musdb")


UMX_ARGS = ["--model", "umx", "--target", "vocals", "--seq-dur", "1.0", "--batch-size", "2",
            "--samples-per-track", "2", "--lr", "3e-3", "--quiet"]  # fmt: skip


def _train(root: Path, out: Path, *options: str, device: str = "cpu") -> int:
    args = build_parser().parse_args(
        ["--framework", "jax", "--root", str(root), "--out", str(out), "--device", device, *options]
    )
    return main(args)


@pytest.fixture(scope="module")
def umx_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory, device: str) -> Path:
    out = tmp_path_factory.mktemp("umx-run")
    assert _train(tiny_root, out, *UMX_ARGS, "--epochs", "3", device=device) == 0
    return out


def test_umx_run_trains_and_reloads_everywhere(umx_run: Path, device: str) -> None:
    """umxhq on the tiny root: the training loss falls; the best model's canonical file, its msgpack twin and the
    checkpoint agree; it separates in the port's separator (vocals and the residual)."""
    state = json.loads((umx_run / "checkpoint-vocals-jax" / "state.json").read_text())
    train = [row["train"] for row in state["history"]]
    assert state["epoch"] == 3 and state["step"] == 6 and len(train) == 3
    assert train[-1] < train[0], train
    assert all(np.isfinite(row["valid"]) for row in state["history"])

    weights, config, provenance = load_canonical(umx_run / "vocals")
    assert isinstance(config, UMXConfig) and provenance["framework"] == "jax"
    assert config.nb_bins == 2049 and config.max_bin == 1487
    assert np.all(weights["input_scale"] != 1.0)  # the dataset's statistics were set before training
    native, native_config = load_native(umx_run / "vocals-jax")
    assert native_config == config
    for k, v in weights.items():
        np.testing.assert_array_equal(native[k], v, err_msg=k)
    assert not np.array_equal(weights["lstm.bias_ih_l0"], weights["lstm.bias_hh_l0"])

    one_target = SeparatorConfig(targets=("vocals",), wiener=WienerConfig(niter=1, residual=True))
    sep_config = UMXSeparatorConfig(model=config, separator=one_target)
    separator = from_canonical(sep_config, {"vocals": weights}, device=_device_name(device))
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((1, 2, 44100))).astype(np.float32)
    estimates = np.asarray(separator(audio))
    assert estimates.shape == (1, 2, 2, 44100) and np.all(np.isfinite(estimates))


@pytest.mark.upstream
def test_umx_run_loads_in_upstream_openunmix(umx_run: Path) -> None:
    """The trained canonical weights in openunmix 1.3.0's ``OpenUnmix`` give the JAX network's output."""
    from parity_tests import oracle

    weights, config, _ = load_canonical(umx_run / "vocals")
    model = from_canonical(config, weights)
    upstream = oracle.umx_model(config, weights, oracle.torch.float32)
    rng = np.random.default_rng(1)
    X = np.abs(rng.standard_normal((1, 2, config.nb_bins, 12))).astype(np.float32)
    with oracle.torch.no_grad():
        expected = upstream(oracle.torch.from_numpy(X)).numpy()
    check(np.asarray(model(X)), expected, "umx.output", "float32", what="jax-trained umx in openunmix")


def test_umx_resume_equals_straight_run(umx_run: Path, tiny_root: Path, tmp_path: Path, device: str) -> None:
    """``--epochs 1`` then ``--resume --epochs 3`` ends with the weights and losses of a straight 3-epoch run
    (dropout keys, data draws and the numpy generator all restored)."""
    out = tmp_path / "resumed"
    assert _train(tiny_root, out, *UMX_ARGS, "--epochs", "1", device=device) == 0
    assert _train(tiny_root, out, *UMX_ARGS, "--epochs", "1", device=device) == 2  # results present: refused
    assert _train(tiny_root, out, *UMX_ARGS, "--epochs", "3", "--resume", device=device) == 0
    straight = json.loads((umx_run / "checkpoint-vocals-jax" / "state.json").read_text())
    resumed = json.loads((out / "checkpoint-vocals-jax" / "state.json").read_text())
    assert [(r["train"], r["valid"], r["lr"]) for r in resumed["history"]] == [
        (r["train"], r["valid"], r["lr"]) for r in straight["history"]
    ]
    assert resumed["rng"] == straight["rng"] and resumed["stopper"] == straight["stopper"]
    a, _ = load_native(umx_run / "checkpoint-vocals-jax" / "model")
    b, _ = load_native(out / "checkpoint-vocals-jax" / "model")
    for k, v in a.items():
        np.testing.assert_array_equal(b[k], v, err_msg=k)


def test_demucs_run(tiny_root: Path, tmp_path: Path, device: str) -> None:
    """Demucs from ``--init`` (the fixture's small architecture, upstream's initialisation with
    ``rescale_module``): two epochs of augmented batches, validation through ``apply_model``, the files reload."""
    case = load_train_case("demucs")
    init = tmp_path / "init"
    save_canonical(init, initial_weights(case.config, seed=3), case.config)
    out = tmp_path / "run"
    options = ["--model", "demucs", "--init", str(init), "--samples", "400", "--data-stride", "44100",
               "--batch-size", "2", "--remix-group-size", "2", "--epochs", "2", "--quiet"]  # fmt: skip
    assert _train(tiny_root, out, *options, device=device) == 0
    state = json.loads((out / "checkpoint-demucs-jax" / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 4
    assert all(np.isfinite([row["train"], row["valid"]]).all() for row in state["history"])
    weights, config, _ = load_canonical(out / "demucs")
    assert config == case.config
    native, _ = load_native(out / "demucs-jax")
    for k, v in weights.items():
        np.testing.assert_array_equal(native[k], v, err_msg=k)
    start, _, _ = load_canonical(init)
    assert not np.array_equal(weights["encoder.0.0.weight"], start["encoder.0.0.weight"])


def test_initial_weights_follow_upstream_init() -> None:
    """BatchNorm 1/0/0/1, output scalings 1, the statistics as ``-mean`` / ``1 / std``; Demucs's convolutions
    rescaled so that their weights' std is ``sqrt(rescale * std0)``."""
    config = UMXConfig(nb_bins=257, hidden_size=16, max_bin=64)
    mean, std = np.linspace(0.1, 1.0, 257), np.linspace(1.0, 2.0, 257)
    w = initial_weights(config, 0, mean, std)
    np.testing.assert_array_equal(w["bn2.weight"], 1.0)
    np.testing.assert_array_equal(w["bn3.running_var"], 1.0)
    np.testing.assert_array_equal(w["output_mean"], 1.0)
    check(w["input_mean"], -mean[:64], "init", "float32", what="input_mean = -mean")
    check(w["input_scale"], 1.0 / std[:64], "init", "float32", what="input_scale = 1 / std")
    assert train_stft(config).n_fft == 512 and not train_stft(config).center
    demucs = load_train_case("demucs").config
    from core_spec.seeded import random_weights

    raw, scaled = random_weights(demucs, 5), initial_weights(demucs, 5)
    w0 = raw["encoder.1.0.weight"].astype(np.float64)
    factor = np.sqrt(w0.std(ddof=1) / demucs.rescale)
    check(scaled["encoder.1.0.weight"], w0 / factor, "init", "float32", what="rescale_module")
    np.testing.assert_array_equal(scaled["lstm.linear.weight"], raw["lstm.linear.weight"])
