"""umx_tf.train: one training step against upstream (gradient-parity fixtures), data parallelism, the loop
(``unmix.train_tf``).

- gradient parity (``parity_tests/fixtures_train.py``, upstream openunmix / demucs with torch autograd, float64):
  loss, every parameter gradient, BatchNorm running statistics, the parameters after one and two Adam steps
  (coupled weight decay), in float64 and float32, with the step as a plain ``tf.function`` and XLA-compiled;
- the LSTM's own backward loop: the recomputing (inference) and the saving (training) paths give one gradient;
- data parallelism (``tf.distribute.MirroredStrategy`` over 2 logical CPU devices, in a subprocess so that this
  process keeps its single CPU device): Demucs's replicated step is the full batch's (fixture and single device);
  UMX's is the mean of the halves' (each replica normalises with its own batch statistics, as upstream under DDP);
- the loop on a tiny MUSDB-style root: the loss decreases, the canonical best model reloads in the separator and in
  upstream openunmix with the same output, the Keras ``.weights.h5`` beside it holds the same, ``--resume``
  continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_spec.tolerances import check, check_distinct
from parity_tests.fixtures_train import (
    TRAIN_CASES,
    TrainCase,
    check_grads,
    check_loss,
    check_running,
    check_updated,
    load_train_case,
)
from parity_tests.tf.helpers import DTYPES, eagerly, on_device, tf
from umx_tf import Demucs, from_canonical
from umx_tf.train import Parameters, Trainer, loss_and_grads

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=sorted(TRAIN_CASES))
def case(request: pytest.FixtureRequest) -> TrainCase:
    return load_train_case(request.param)


def _model(case: TrainCase, dtype: str):
    """The port's model with the case's weights (Demucs: julius's float32-built resampling kernels injected)."""
    model = from_canonical(case.config, case.weights, dtype=dtype)
    if isinstance(model, Demucs):
        model.set_resample_kernels(case.kernels)
    return model


def _batch(case: TrainCase) -> tuple[np.ndarray, ...]:
    return (case.inputs["x"], case.inputs["y"]) if case.stft is not None else (case.inputs["sources"],)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_step_matches_upstream(case, dtype, device):
    """Loss, gradients and BatchNorm running statistics of one step; the parameters after two Adam steps."""
    what = f"tf {dtype} "
    with on_device(device):
        model = _model(case, dtype)
        loss, grads = loss_and_grads(model, case.inputs, case.recipe, fft=case.stft, weights=case.weights)
        assert all(g.dtype == np.dtype(dtype) for g in grads.values())
        check_loss(loss, case, dtype, device, what=what)
        check_grads(grads, case, dtype, device, what=what)
        if case.running is not None:
            check_running(Parameters(model).weights(), case, dtype, device, what=what)
        trainer = Trainer(_model(case, dtype), case.recipe, fft=case.stft, weights=case.weights, dropout=False)
        with eagerly():  # the arithmetic; the compiled step is test_xla_step_matches_upstream's and the loop's
            for step in (1, 2):  # the second gradient is taken at the updated parameters, on the same batch
                trainer.step(_batch(case))
                check_updated(trainer.params.weights(), case, dtype, device, what=what, step=step)


def test_xla_step_matches_upstream(device):
    """The whole step XLA-compiled (``jit_compile=True``): the same two Adam steps (UMX: STFT, BatchNorm, the
    LSTMs' backward loops and the update in one cluster)."""
    case = load_train_case("umx")
    with on_device(device):
        trainer = Trainer(
            _model(case, "float64"), case.recipe, fft=case.stft, weights=case.weights, jit_compile=True, dropout=False
        )
        for step in (1, 2):
            trainer.step(_batch(case))
            check_updated(trainer.params.weights(), case, "float64", device, what="tf xla float64 ", step=step)


def test_lstm_backward_paths_agree():
    """The LSTM keeps its gates for the backward loop in training and recomputes them otherwise: one gradient."""
    case = load_train_case("demucs")
    model = _model(case, "float64")
    mix = tf.constant(case.inputs["sources"].sum(axis=1))
    grads = []
    for training in (True, False):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(mix, training=training)))
        grads.append([g.numpy() for g in tape.gradient(loss, model.trainable_variables)])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_folded_lstm_bias_keeps_both_halves():
    """Keras holds ``bias_ih + bias_hh``; the optimiser updates the halves separately (torch's Adam sees two
    parameters with their own weight decay), and the checkpoint writes both back."""
    case = load_train_case("demucs")
    params = Parameters(_model(case, "float64"), case.weights)
    weights = params.weights()
    for name in (k for k in case.weights if "bias_ih_" in k or "bias_hh_" in k):
        np.testing.assert_array_equal(weights[name], case.weights[name])
    fresh = Parameters(_model(case, "float64"))  # no canonical halves known: bias_ih = the sum, bias_hh = 0
    name = next(k for k in case.weights if "bias_hh_" in k)
    assert not fresh.weights()[name].any()


# --- data parallelism -------------------------------------------------------------------------------------------

MIRRORED_WORKER = """
import json, sys
import numpy as np
import umx_tf
from umx_tf import train
strategy = train.make_strategy(2)  # before any TensorFlow op
import tensorflow as tf
tf.config.run_functions_eagerly(True)  # the arithmetic of the replicated step; tracing it would cost more
from parity_tests.fixtures_train import load_train_case
out = {}
for name in ("demucs", "umx"):
    case = load_train_case(name)
    with strategy.scope():
        model = umx_tf.from_canonical(case.config, case.weights, dtype="float64")
        if case.kernels:
            model.set_resample_kernels(case.kernels)
        trainer = train.Trainer(model, case.recipe, fft=case.stft, weights=case.weights, strategy=strategy,
                                dropout=False)
    batch = (case.inputs["x"], case.inputs["y"]) if case.stft else (case.inputs["sources"],)
    loss, grads = trainer.grads(*batch)
    after_forward = trainer.params.weights()  # UMX: the BatchNorm statistics the forward left
    step_loss = trainer.step(batch)
    out[name] = {"loss": loss, "step_loss": step_loss, "grads": grads, "weights": trainer.params.weights(),
                 "after_forward": after_forward, "devices": list(strategy.extended.worker_devices)}
np.save(sys.argv[1], out, allow_pickle=True)
"""


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of :data:`MIRRORED_WORKER` in a fresh interpreter (2 logical CPU devices, 2 replicas)."""
    path = tmp_path_factory.mktemp("mirrored") / "out.npy"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_WORKER, str(path)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return np.load(path, allow_pickle=True).item()


def test_mirrored_demucs_equals_full_batch(mirrored):
    """2 replicas, one item each: the averaged gradient and the update are the full batch's, against the fixture
    and against the single-device step in this process."""
    case = load_train_case("demucs")
    result = mirrored["demucs"]
    assert len(result["devices"]) == 2 and all("CPU" in d for d in result["devices"])
    check_loss(result["loss"], case, "float64", what="tf mirrored ")
    check_grads(result["grads"], case, "float64", what="tf mirrored ")
    check_updated(result["weights"], case, "float64", what="tf mirrored ", step=1)
    single = Trainer(_model(case, "float64"), case.recipe, weights=case.weights)
    with eagerly():
        loss, grads = single.grads(*_batch(case))
        single.step(_batch(case))
    check(np.asarray(result["loss"]), np.asarray(loss), "train.loss", "float64", what="tf mirrored vs single loss")
    for name, grad in grads.items():
        check(result["grads"][name], grad, "train.grad", "float64", what=f"tf mirrored vs single grad {name}")
    for name, value in single.params.weights().items():
        check(result["weights"][name], value, "train.update", "float64", what=f"tf mirrored vs single {name}")


def test_mirrored_umx_per_replica_batch_norm(mirrored):
    """UMX replicated: each replica normalises with its own half's batch statistics (upstream's plain
    ``BatchNorm1d`` under DDP), so the averaged gradient is the mean of the halves' gradients computed one by one;
    the running statistics are the first replica's."""
    case = load_train_case("umx")
    result = mirrored["umx"]
    halves, running = [], None
    for rank in range(2):
        model = _model(case, "float64")
        half = {k: v[rank : rank + 1] for k, v in case.inputs.items()}
        halves.append(loss_and_grads(model, half, case.recipe, fft=case.stft, weights=case.weights))
        if rank == 0:
            running = {k: v for k, v in Parameters(model).weights().items() if "running" in k}
    check(np.asarray(result["loss"]), np.asarray((halves[0][0] + halves[1][0]) / 2), "train.loss", "float64")
    expected = {k: (halves[0][1][k] + halves[1][1][k]) / 2 for k in case.grads}
    peak = max(float(np.abs(g).max()) for g in expected.values())
    for name, grad in expected.items():
        if name == "input_mean":  # zero analytically: compared on the model's scale
            check(result["grads"][name] / peak, grad / peak, "train.grad_zero", "float64", what="tf mirrored umx")
        else:
            check(result["grads"][name], grad, "train.grad", "float64", what=f"tf mirrored umx {name}")
    for name, value in running.items():
        check(result["after_forward"][name], value, "train.bn_running", "float64", what=f"tf mirrored umx {name}")
    # the documented difference: per-replica batch statistics are not the full batch's
    for k in ("fc1.weight", "bn1.weight"):
        check_distinct(result["grads"][k], case.grads[k], "train.grad", "float64", what=f"tf mirrored umx {k}")


# --- the loop on a tiny MUSDB-style root --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from parity_tests.tiny_musdb import make_tiny_musdb

    return make_tiny_musdb(tmp_path_factory.mktemp("tiny_musdb"))


def _args(root: Path, out: Path, *options: str) -> argparse.Namespace:
    from unmix.train_cli import build_parser

    return build_parser().parse_args(["--framework", "tf", "--root", str(root), "--out", str(out), *options])


def _train(root: Path, out: Path, *options: str) -> list[dict]:
    from unmix.train_tf import main

    assert main(_args(root, out, *options)) == 0
    name = "demucs" if "demucs" in options else "vocals"
    return json.loads((out / f"checkpoint-{name}-tf" / "state.json").read_text())["history"]


UMX_SMOKE = ("--model", "umx", "--batch-size", "2", "--seq-dur", "1.0", "--samples-per-track", "2", "--quiet")
# 0.2-s excerpts read with a 0.5-s stride: 4 segments of each 2-s track, 2 steps an epoch
DEMUCS_SMOKE = ("--model", "demucs", "--preset", "demucs_unittest", "--batch-size", "4", "--samples", "8820",
                "--data-stride", "22050", "--quiet")  # fmt: skip


def test_smoke_umx_loss_decreases_and_reloads(tiny_root, tmp_path):
    """Two UMX epochs (umxhq shapes, 1-s excerpts, input statistics from the data): the training loss
    decreases; the canonical best model reloads in the separator (the same output as the Keras ``.weights.h5``
    written beside it) and in upstream openunmix (the same network output)."""
    from core_spec.canonical import load_canonical
    from core_spec.configs import SeparatorConfig, UMXSeparatorConfig, umx_preset
    from parity_tests import oracle
    from umx_tf import Separator, load_native
    from umx_tf.train import spectrogram

    history = _train(tiny_root, tmp_path, *UMX_SMOKE, "--epochs", "2")
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[-1]["train"] < history[0]["train"]
    weights, config, provenance = load_canonical(tmp_path / "vocals")
    assert config == umx_preset("umxhq").model and provenance["framework"] == "tf"
    assert np.any(weights["input_mean"] != 0)  # the data's statistics, not the initial zeros
    native, native_config = load_native(tmp_path / "vocals-tf")
    assert native_config == config
    sep = UMXSeparatorConfig(model=config, separator=SeparatorConfig(targets=("vocals",)))
    audio = (0.1 * np.random.default_rng(0).standard_normal((1, 2, 44100))).astype(np.float32)
    a = Separator.from_config(sep, {"vocals": weights}, niter=0, jit_compile=False)
    b = Separator.from_config(sep, {"vocals": native}, niter=0, jit_compile=False)
    np.testing.assert_array_equal(np.asarray(a.separate(audio)), np.asarray(b.separate(audio)))
    # upstream openunmix with the canonical file: the same network output
    X = spectrogram(tf.constant(audio), sep.separator.stft, mono=False)
    ours = a.target_models["vocals"](X).numpy()
    upstream = oracle.umx_model(config, weights, oracle.torch.float32)
    with oracle.torch.no_grad():
        theirs = upstream(oracle.torch.from_numpy(X.numpy())).numpy()
    check(ours, theirs, "umx.output", "float32", what="tf-trained umx in upstream openunmix")


def test_demucs_resume_is_exact_and_reloads(tiny_root, tmp_path):
    """Demucs (demucs_unittest): ``--epochs 2`` straight equals ``--epochs 1`` then ``--resume --epochs 2``
    (weights, Adam's state and the data generator restored); the loss decreases; the canonical best model and the
    Keras file beside it give the same ``apply_model`` output."""
    from core_spec.canonical import load_canonical
    from umx_tf import apply_model, load_native

    with eagerly():  # the loop's logic (the compiled loop is the UMX smoke test's)
        straight = _train(tiny_root, tmp_path / "straight", *DEMUCS_SMOKE, "--epochs", "2")
        _train(tiny_root, tmp_path / "resumed", *DEMUCS_SMOKE, "--epochs", "1")
        resumed = _train(tiny_root, tmp_path / "resumed", *DEMUCS_SMOKE, "--epochs", "2", "--resume")
    for a, b in zip(straight, resumed, strict=True):
        assert (a["train"], a["valid"], a["steps"]) == (b["train"], b["valid"], b["steps"])
    assert straight[-1]["train"] < straight[0]["train"]
    final = {
        run: load_canonical(tmp_path / run / "checkpoint-demucs-tf" / "weights")[0] for run in ("straight", "resumed")
    }
    for name, value in final["straight"].items():
        np.testing.assert_array_equal(final["resumed"][name], value, err_msg=name)
    weights, config, _ = load_canonical(tmp_path / "straight" / "demucs")
    native, _ = load_native(tmp_path / "straight" / "demucs-tf")
    mix = (0.1 * np.random.default_rng(1).standard_normal((2, 22050))).astype(np.float32)
    outs = [apply_model(from_canonical(config, w), mix, jit_compile=False).numpy() for w in (weights, native)]
    np.testing.assert_array_equal(*outs)


def test_run_folder_is_not_overwritten(tiny_root, tmp_path):
    """A run folder holding results needs ``--resume`` or ``--force``."""
    from unmix.train_tf import main

    (tmp_path / "checkpoint-demucs-tf").mkdir()
    assert main(_args(tiny_root, tmp_path, *DEMUCS_SMOKE)) == 2


@pytest.mark.skipif(bool(tf.config.list_logical_devices("GPU")), reason="checks the refusal on a machine without GPU")
def test_device_gpu_without_a_gpu_is_refused_first(tiny_root, tmp_path):
    """``--device gpu`` where TensorFlow sees no GPU: exit status 1, before the run folder is checked or made."""
    from unmix.train_tf import main

    out = tmp_path / "run"
    assert main(_args(tiny_root, out, *DEMUCS_SMOKE, "--device", "gpu")) == 1
    assert not out.exists()
