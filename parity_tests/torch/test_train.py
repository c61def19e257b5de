"""umx_torch.train: one training step against upstream (gradient-parity fixtures), data parallelism; the loop
(``unmix-train --framework torch``, :mod:`unmix.train_torch`).

- gradient parity (``parity_tests/fixtures_train.py``, upstream openunmix / demucs with torch autograd, float64):
  loss, every parameter gradient, BatchNorm running statistics, the parameters after one and two Adam steps, in
  float64 and float32;
- data parallelism (DDP over gloo, 2 CPU processes, each on half the batch): Demucs's averaged gradient is the full
  batch's; UMX's is the mean of the halves' gradients, each with its own BatchNorm statistics (upstream uses plain
  BatchNorm1d), which differs from the full batch's;
- the loop on a tiny MUSDB-style root: the loss decreases, the canonical best model reloads in the separator with
  the same output, ``--resume`` continues exactly where an uninterrupted run would be, ``--devices 2`` trains Demucs
  as one process does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from core_spec.epochs import EpochTrainer
from core_spec.tolerances import check, check_distinct, judge
from parity_tests.fixtures_train import (
    TRAIN_CASES,
    TrainCase,
    check_grads,
    check_loss,
    check_running,
    check_updated,
    load_train_case,
)
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, np_of, torch, torch_device
from umx_torch import Demucs, OpenUnmix, load_weights
from umx_torch.train import (
    Trainer,
    data_parallel_loss_and_grads,
    loss_and_grads,
    make_optimizer,
    set_lstm_dropout,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The shapes here are small: one intra-op thread avoids OpenMP's overhead (and oversubscription on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(TRAIN_CASES))
def case(request: pytest.FixtureRequest) -> TrainCase:
    return load_train_case(request.param)


def _model(case: TrainCase, dtype: str, device: str) -> torch.nn.Module:
    """The port's model with the case's weights, dropout off (UMX), julius's kernels injected (Demucs)."""
    cls = OpenUnmix if case.stft is not None else Demucs
    model = cls.from_config(case.config, torch_device(device), TORCH_DTYPES[dtype])
    load_weights(model, case.weights)
    if case.stft is not None:
        set_lstm_dropout(model, 0.0)
    else:
        model.set_resample_kernels(case.kernels)
    return model


def _params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: np_of(p) for k, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_step_matches_upstream(case, dtype, device):
    """Loss, gradients, BatchNorm running statistics, and the parameters after two Adam steps (coupled decay)."""
    model = _model(case, dtype, device)
    what = f"torch {dtype} "
    loss, grads = loss_and_grads(model, case.inputs, case.recipe, case.stft)
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())
    check_loss(loss, case, dtype, device, what=what)
    check_grads(grads, case, dtype, device, what=what)
    if case.running is not None:
        state = {k: np_of(v) for k, v in model.state_dict().items()}
        check_running(state, case, dtype, device, what=what)
    optimizer = make_optimizer(model, case.recipe)
    optimizer.step()
    check_updated(_params(model), case, dtype, device, what=what, step=1)
    loss_and_grads(model, case.inputs, case.recipe, case.stft)  # the gradient at the updated parameters
    optimizer.step()
    check_updated(_params(model), case, dtype, device, what=what, step=2)


def test_adamw_is_not_the_recipe(case):
    """The fixtures tell coupled L2 (Adam(weight_decay)) from decoupled decay (AdamW): AdamW must fail."""
    model = _model(case, "float64", "cpu")
    loss_and_grads(model, case.inputs, case.recipe, case.stft)
    torch.optim.AdamW(model.parameters(), lr=case.recipe.lr, weight_decay=case.recipe.weight_decay).step()
    verdicts = {k: judge(p, case.updated[k], "train.update", "float64") for k, p in _params(model).items()}
    assert not all(v.ok for v in verdicts.values()), "AdamW's update passes the train.update row of Adam's"


def test_dropout_is_upstream_and_switchable():
    """UMX trains with LSTM dropout 0.4 between layers (upstream); parity switches it off, the loop back on."""
    from core_spec.configs import UMX_LSTM_DROPOUT, umx_preset

    config = umx_preset("umxhq").model
    model = OpenUnmix.from_config(config)
    assert model.lstm.dropout == config.lstm_dropout == UMX_LSTM_DROPOUT
    assert set_lstm_dropout(model, 0.0).lstm.dropout == 0.0


def test_trainer_is_an_epoch_trainer():
    """:class:`umx_torch.train.Trainer` is what unmix.train_loop.run_epochs drives: the learning rate goes to every
    parameter group, a step returns the batch's loss before the update (the fixture's), one replica is its own mean."""
    case = load_train_case("demucs")
    model = _model(case, "float64", "cpu")
    optimizer = make_optimizer(model, case.recipe)
    trainer = Trainer(model, model, optimizer, case.recipe, case.stft)
    assert isinstance(trainer, EpochTrainer)
    trainer.set_learning_rate(0.5)
    assert [group["lr"] for group in optimizer.param_groups] == [0.5]
    check_loss(trainer.step(case.inputs), case, "float64", what="torch Trainer.step ")
    assert trainer.mean_over_replicas(0.25) == 0.25


# --- data parallelism -------------------------------------------------------------------------------------------


def test_data_parallel_demucs_equals_full_batch():
    """2 DDP replicas (gloo, CPU), one item each: the averaged gradient is the full batch's (the fixture's)."""
    case = load_train_case("demucs")
    replicas = data_parallel_loss_and_grads(
        case.config, case.weights, case.inputs, case.recipe, world_size=2, dtype="float64", kernels=case.kernels
    )
    for rank, replica in enumerate(replicas):
        check_grads(replica["grads"], case, "float64", "cpu", what=f"torch DDP rank {rank} ")
    check(
        np.mean([r["loss"] for r in replicas]), np.asarray(case.loss), "train.loss", "float64", "cpu",
        what="torch DDP demucs mean of the replicas' losses",
    )  # fmt: skip


def test_data_parallel_umx_per_replica_batch_norm():
    """UMX under DDP: each replica normalises with its own half's batch statistics (plain BatchNorm1d, as upstream),
    so the averaged gradient is the mean of the halves' gradients computed one by one, not the full batch's;
    replica 0's running statistics are its half's."""
    case = load_train_case("umx")
    replicas = data_parallel_loss_and_grads(
        case.config, case.weights, case.inputs, case.recipe, world_size=2, dtype="float64", lstm_dropout=0.0,
        stft_config=case.stft,
    )  # fmt: skip
    halves, running = [], None
    for rank in range(2):
        model = _model(case, "float64", "cpu")
        half = {k: v[rank : rank + 1] for k, v in case.inputs.items()}
        halves.append(loss_and_grads(model, half, case.recipe, case.stft))
        if rank == 0:
            running = {k: np_of(v) for k, v in model.named_buffers() if "running" in k}
    expected = {k: (halves[0][1][k] + halves[1][1][k]) / 2 for k in case.grads}
    peak = max(float(np.abs(g).max()) for g in expected.values())
    for rank, replica in enumerate(replicas):
        check(replica["loss"], halves[rank][0], "train.replica", "float64", "cpu", what=f"torch DDP rank {rank} loss")
        for name, grad in expected.items():
            if name == "input_mean":  # zero analytically: compare on the model's scale
                check(replica["grads"][name] / peak, grad / peak, "train.grad_zero", "float64", "cpu")
            else:
                check(replica["grads"][name], grad, "train.grad", "float64", "cpu", what=f"torch DDP umx {name}")
    for name, value in running.items():
        check(replicas[0]["buffers"][name], value, "train.bn_running", "float64", "cpu", what=f"DDP rank 0 {name}")
    # the documented difference: per-replica batch statistics are not the full batch's
    for k in ("fc1.weight", "bn1.weight"):
        check_distinct(replicas[0]["grads"][k], case.grads[k], "train.grad", "float64", what=f"DDP rank 0 {k}")


# --- the loop on a tiny MUSDB-style root --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = pytest.importorskip("parity_tests.tiny_musdb")
    pytest.importorskip("unmix.data")
    return tiny.make_tiny_musdb(tmp_path_factory.mktemp("tiny_musdb"))


def _args(root: Path, out: Path, *options: str) -> argparse.Namespace:
    from unmix.train_cli import build_parser

    return build_parser().parse_args(["--framework", "torch", "--root", str(root), "--out", str(out), *options])


UMX_SMOKE = ("--model", "umx", "--batch-size", "2", "--seq-dur", "1.0", "--samples-per-track", "2", "--quiet")
# demucs_unittest (channels 4), 3 steps of 2 segments an epoch on the two 2-s training tracks
DEMUCS_SMOKE = ("--model", "demucs", "--preset", "demucs_unittest", "--batch-size", "2", "--remix-group-size", "2",
                "--samples", "22050", "--data-stride", "22050", "--quiet")  # fmt: skip


def _history(out: Path, name: str) -> list[dict]:
    return json.loads((out / f"checkpoint-{name}-torch" / "state.json").read_text())["history"]


def test_smoke_umx_loss_decreases_and_reloads(tiny_root, tmp_path):
    """A few UMX epochs (umxhq shapes, 1-s excerpts): the training loss decreases; the canonical best model reloads
    in the separator and in upstream openunmix with the same outputs as the torch state dict saved beside it."""
    from parity_tests import oracle
    from umx_torch import Separator, from_canonical_file, load_module
    from unmix.train_torch import main

    out = tmp_path / "umx"
    assert main(_args(tiny_root, out, *UMX_SMOKE, "--epochs", "4", "--lr", "3e-3")) == 0
    history = _history(out, "vocals")
    assert len(history) == 4 and all(h["steps"] == 2 for h in history)
    # the training loss falls; the validation loss (eval mode: BatchNorm's running statistics, a few momentum-0.1
    # updates old) is not a signal after 8 steps
    assert history[-1]["train"] < 0.8 * history[0]["train"], history

    model = from_canonical_file(out / "vocals.safetensors")
    native = load_module(out / "vocals-torch")
    assert isinstance(model, OpenUnmix) and isinstance(native, OpenUnmix)
    for name, value in native.state_dict().items():
        np.testing.assert_array_equal(np_of(model.state_dict()[name]), np_of(value), err_msg=name)
    assert float(model.input_scale.detach().abs().max()) != 1.0  # the input statistics were set
    audio = torch.from_numpy(0.1 * np.random.default_rng(0).standard_normal((1, 2, 44100)).astype(np.float32))
    with torch.no_grad():
        ours = Separator({"vocals": model}, niter=0)(audio)
        theirs = Separator({"vocals": native}, niter=0)(audio)
        np.testing.assert_array_equal(np_of(ours), np_of(theirs))
        from core_spec.canonical import load_canonical

        weights, config, provenance = load_canonical(out / "vocals.safetensors")
        assert provenance["framework"] == "torch" and provenance["recipe"]["target"] == "vocals"
        spec = torch.rand(1, 2, config.nb_bins, 20)
        upstream = oracle.umx_model(config, weights, torch.float32)
        check(np_of(model(spec)), np_of(upstream(spec)), "umx.output", "float32", "cpu", what="trained UMX vs upstream")


def test_resume_is_exact(tiny_root, tmp_path):
    """``--epochs 2`` straight equals ``--epochs 1`` then ``--resume --epochs 2`` (weights, optimiser, schedule and
    random generators all restored); a run folder with results is not overwritten without ``--resume`` / ``--force``."""
    from unmix.train_torch import main

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_args(tiny_root, straight, *DEMUCS_SMOKE, "--epochs", "2")) == 0
    assert main(_args(tiny_root, resumed, *DEMUCS_SMOKE, "--epochs", "1")) == 0
    assert main(_args(tiny_root, resumed, *DEMUCS_SMOKE, "--epochs", "1")) == 2
    assert main(_args(tiny_root, tmp_path / "empty", *DEMUCS_SMOKE, "--resume")) == 2
    assert main(_args(tiny_root, resumed, *DEMUCS_SMOKE, "--epochs", "2", "--resume")) == 0
    a = torch.load(straight / "checkpoint-demucs-torch" / "model.pth")
    b = torch.load(resumed / "checkpoint-demucs-torch" / "model.pth")
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    assert [h["train"] for h in _history(straight, "demucs")] == [h["train"] for h in _history(resumed, "demucs")]
    assert [h["valid"] for h in _history(straight, "demucs")] == [h["valid"] for h in _history(resumed, "demucs")]


def test_targets_train_into_one_folder(tiny_root, tmp_path):
    """``--target drums`` after ``--target vocals`` into the same ``--out`` (one step each, a small Open-Unmix from
    ``--init``): a new run, no ``--force``; both targets' files and checkpoints stay side by side; the same target
    again is refused without ``--resume`` / ``--force``; a checkpoint of the older layout (``checkpoint-torch/``)
    still resumes, and the run goes on there."""
    from core_spec.canonical import load_canonical, save_canonical
    from core_spec.configs import UMXConfig
    from core_spec.training import initial_weights
    from unmix.train_torch import main

    config = UMXConfig(nb_bins=257, nb_channels=2, hidden_size=16, nb_layers=2, max_bin=64)
    init = tmp_path / "small"
    save_canonical(init, initial_weights(config, 3), config)
    out = tmp_path / "run"
    options = (*UMX_SMOKE, "--init", str(init), "--valid-tracks", "1")
    small = (*options, "--max-steps", "1")
    assert main(_args(tiny_root, out, *small, "--target", "vocals")) == 0
    vocals = (out / "vocals.safetensors").read_bytes()
    assert main(_args(tiny_root, out, *small, "--target", "drums")) == 0  # no --force
    assert (out / "vocals.safetensors").read_bytes() == vocals  # the first run's files are left alone
    files = (".safetensors", ".json", "-torch.pth", "-torch.json")  # canonical and native best models
    expected = {f"{t}{suffix}" for t in ("vocals", "drums") for suffix in files}
    expected |= {"checkpoint-vocals-torch", "checkpoint-drums-torch"}
    assert {p.name for p in out.iterdir()} == expected
    for target in ("vocals", "drums"):
        _, file_config, provenance = load_canonical(out / target)
        assert file_config == config and provenance["recipe"]["target"] == target
        state = json.loads((out / f"checkpoint-{target}-torch" / "state.json").read_text())
        assert state["name"] == target and state["step"] == 1
    assert main(_args(tiny_root, out, *small, "--target", "drums")) == 2  # its results: --resume or --force

    (out / "checkpoint-drums-torch").rename(out / "checkpoint-torch")  # a run folder of the older layout
    assert main(_args(tiny_root, out, *options, "--target", "drums", "--max-steps", "2", "--resume")) == 0
    state = json.loads((out / "checkpoint-torch" / "state.json").read_text())
    assert state["name"] == "drums" and state["step"] == 2 and not (out / "checkpoint-drums-torch").exists()


def test_data_parallel_training_run(tiny_root, tmp_path):
    """``--devices 2`` (DDP, gloo, 2 processes): Demucs trains as one process does on the whole batch (the same
    training and validation losses, to float32 rounding)."""
    from unmix.train_torch import main

    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(tiny_root, one, *DEMUCS_SMOKE, "--max-steps", "2")) == 0
    assert main(_args(tiny_root, two, *DEMUCS_SMOKE, "--max-steps", "2", "--devices", "2")) == 0
    (h1,), (h2,) = _history(one, "demucs"), _history(two, "demucs")
    assert h1["steps"] == h2["steps"] == 2
    for key in ("train", "valid"):
        check(np.asarray(h2[key]), np.asarray(h1[key]), "train.loss", "float32", "cpu", what=f"DDP {key} loss")
    assert (two / "demucs.safetensors").exists() and (two / "demucs-torch.pth").exists()
