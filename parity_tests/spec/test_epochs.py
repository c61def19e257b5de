"""core_spec.epochs (the epoch loop of unmix-train, run_epochs) with a fake NumPy trainer, and
unmix.train_cli.run_main (NumPy only: runs in both environments).

The reference is the loop the four ports ran before run_epochs (``umx_torch/train.py``, ``umx_tf/train.py``,
``umx_jax/train.py``, ``umx_nnabla/train.py`` ``fit``), transcribed as the event list of :func:`expected_events`:
the calls a trainer sees, the ``run.done`` checks, the clock reads and the log lines, in their order. The values
(learning rates, best-model decisions, early stopping) come from an independent :class:`RunState` fed the same
validation losses, and the step losses from an independent copy of the fake model.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from core_spec.canonical import load_canonical
from core_spec.configs import UMXConfig
from core_spec.epochs import EpochTrainer, Progress, TrainerBase, no_progress, save_best, steps_per_epoch
from core_spec.training import DemucsTrainConfig, UMXTrainConfig, initial_weights
from unmix import train_cli, train_loop
from unmix.run_folder import RunFolder, RunState, read_state
from unmix.train_loop import run_epochs

SEED = 7
TICK = 0.25  # the fake clock's step: an exact binary fraction, so durations are exact
VALID_SET = "the validation set"  # what run_epochs must hand to evaluate, as it is
Events = list[tuple[Any, ...]]


# --- the fakes ------------------------------------------------------------------------------------------------------


class Clock:
    """Stands in for the module ``time`` in core_spec.epochs: every ``time()`` is an event and ticks by TICK."""

    def __init__(self, events: Events):
        self.events, self.now = events, 0.0

    def time(self) -> float:
        self.events.append(("clock",))
        self.now += TICK
        return self.now


class RecordingRun(RunState):
    """A RunState whose ``done`` and ``end_epoch`` calls are events (set ``events`` after construction)."""

    events: Events

    def done(self, max_steps: int | None) -> bool:
        self.events.append(("done", self.step))
        return super().done(max_steps)

    def end_epoch(self, train_loss, valid_loss, lr, steps, duration):
        self.events.append(("end_epoch", train_loss, valid_loss, lr, steps, duration))
        return super().end_epoch(train_loss, valid_loss, lr, steps, duration)


def fake_model_step(w: np.ndarray, batch: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
    """The fake model: weights ``w`` (3,), loss ``w . batch``, plain SGD."""
    return float(w @ batch), w - lr * batch


class FakeTrainer(TrainerBase):
    """A NumPy EpochTrainer whose every call is an event; the validation loss of epoch ``e`` is
    ``valid_losses[e]`` (the epoch as ``start_epoch`` gave it)."""

    def __init__(self, events: Events, valid_losses: list[float], writes_best: bool = True, record_base: bool = True):
        self.events, self.valid_losses, self.writes_best = events, valid_losses, writes_best
        self.record_base = record_base  # False: TrainerBase's start_epoch / mean_over_replicas, not recorded
        self.w, self.lr, self.epoch = np.ones(3), math.nan, -1

    def set_learning_rate(self, lr: float) -> None:
        self.events.append(("lr", lr))
        self.lr = lr

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.record_base:
            self.events.append(("start_epoch", epoch))

    def step(self, batch: np.ndarray) -> float:
        loss, self.w = fake_model_step(self.w, batch, self.lr)
        self.events.append(("step", loss))
        return loss

    def mean_over_replicas(self, value: float) -> float:
        if self.record_base:
            self.events.append(("mean", value))
        return super().mean_over_replicas(value)

    def evaluate(self, valid_set: Any, progress: Progress = no_progress) -> float:
        loss = self.valid_losses[self.epoch]
        assert list(progress(range(2), 2, "valid")) == [0, 1]  # the loop's progress passes the items through
        self.events.append(("evaluate", valid_set, loss))
        return loss

    def save_best(self, folder: RunFolder, run: RunState, valid_loss: float) -> None:
        self.events.append(("save_best", run.epoch, valid_loss))
        if self.writes_best:
            folder.best_file.write_bytes(self.w.tobytes())

    def save_checkpoint(self, folder: RunFolder, run: RunState, rng: np.random.Generator) -> None:
        self.events.append(("save_checkpoint", run.epoch))
        folder.checkpoint.mkdir(parents=True, exist_ok=True)
        np.save(folder.checkpoint / "w.npy", self.w)
        run.save(folder, rng)

    def load_checkpoint(self, folder: RunFolder, run: RunState, rng: np.random.Generator) -> None:
        run.load(folder, rng)
        self.w = np.load(folder.checkpoint / "w.npy")


def batches_from(rng: np.random.Generator, events: Events, nb_batches: int) -> Callable[[int], Iterator[np.ndarray]]:
    """``batches(epoch)``: ``nb_batches`` draws of ``rng``, drawn lazily (each draw is an event)."""

    def batches(epoch: int) -> Iterator[np.ndarray]:
        events.append(("batches", epoch))
        for _ in range(nb_batches):
            events.append(("draw",))
            yield rng.standard_normal(3)

    return batches


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Events:
    """The event list; unmix.train_loop's clock and log write into it."""
    recorded: Events = []
    monkeypatch.setattr(train_loop, "time", Clock(recorded))
    monkeypatch.setattr(train_loop, "log", lambda message, quiet: recorded.append(("log", message, quiet)))
    return recorded


@dataclasses.dataclass(frozen=True)
class Options:
    """What a scenario varies: batches an epoch, ``--max-steps``, the replica, ``quiet``, and whether the fake's
    ``save_best`` writes the best file."""

    nb_batches: int = 3
    max_steps: int | None = None
    rank: int = 0
    quiet: bool = True
    writes_best: bool = True


def train(
    events: Events,
    out: Any,
    recipe: UMXTrainConfig | DemucsTrainConfig,
    valid_losses: list[float],
    options: Options = Options(),
    *,
    trainer: FakeTrainer | None = None,
    run: RecordingRun | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, Any], FakeTrainer, RecordingRun, list[dict[str, Any]]]:
    """run_epochs on the fakes (a fresh run unless ``trainer``/``run``/``rng`` are given); returns the result, the
    trainer, the run and the rows ``progress`` received (also events)."""
    folder = RunFolder.for_recipe(out, "fake", recipe)
    folder.out.mkdir(parents=True, exist_ok=True)  # as check_out does
    if trainer is None:
        trainer = FakeTrainer(events, valid_losses, options.writes_best)
    if run is None:
        run = RecordingRun.for_recipe(recipe)
    run.events = events
    if rng is None:
        rng = np.random.default_rng(SEED)
    rows: list[dict[str, Any]] = []

    def progress(row: dict[str, Any]) -> None:
        events.append(("progress", row))
        rows.append(row)

    result = run_epochs(trainer, run, folder, batches_from(rng, events, options.nb_batches), valid_set=VALID_SET,
                        epochs=recipe.epochs, steps_per_epoch=options.nb_batches, max_steps=options.max_steps,
                        rng=rng, quiet=options.quiet, rank=options.rank, progress=progress)  # fmt: skip
    return result, trainer, run, rows


# --- the reference: today's loop as events --------------------------------------------------------------------------


def expected_events(
    recipe: UMXTrainConfig | DemucsTrainConfig, valid_losses: list[float], options: Options = Options()
) -> tuple[Events, dict[str, Any]]:
    """The events of today's ``fit`` loops (e.g. ``umx_jax/train.py`` ``while run.epoch < recipe.epochs and not
    done: ...``) for a fresh run on the fakes, and its result."""
    nb_batches, max_steps, rank, quiet, writes_best = dataclasses.astuple(options)
    rng, w = np.random.default_rng(SEED), np.ones(3)
    ref = RunState.for_recipe(recipe)
    saved = False  # whether the best file exists
    events: Events = [("done", 0)]  # `done = run.done(args.max_steps)` before the loop
    reached = max_steps is not None and max_steps <= 0
    while ref.epoch < recipe.epochs and not reached:
        lr = ref.lr
        events += [("clock",), ("lr", lr), ("start_epoch", ref.epoch), ("batches", ref.epoch)]
        losses = []
        for _ in range(nb_batches):
            events.append(("draw",))
            loss, w = fake_model_step(w, rng.standard_normal(3), lr)
            losses.append(loss)
            ref.step += 1
            events += [("step", loss), ("done", ref.step)]  # the check comes after the increment
            reached = max_steps is not None and ref.step >= max_steps
            if reached:
                break
        total = 0.0
        for loss in losses:
            total += loss
        train_loss, valid_loss = total / len(losses), valid_losses[ref.epoch]
        events += [("mean", train_loss), ("evaluate", VALID_SET, valid_loss), ("clock",)]
        events.append(("end_epoch", train_loss, valid_loss, lr, len(losses), TICK))
        row, stop, is_best = ref.end_epoch(train_loss, valid_loss, lr, len(losses), TICK)
        if rank == 0:
            if is_best or not saved:
                events.append(("save_best", ref.epoch, valid_loss))
                saved = saved or writes_best
            events.append(("save_checkpoint", ref.epoch))
        events += [("progress", row), ("log", ref.epoch_message(row), quiet)]
        if stop:
            events.append(("log", f"early stopping after {ref.epoch} epochs", quiet))
            break
    return events, ref.result()


def umx_recipe(epochs: int = 10) -> UMXTrainConfig:
    """Early stopping after 2 epochs without improvement, the learning rate decayed after every such epoch."""
    return UMXTrainConfig(epochs=epochs, patience=2, lr_decay_patience=0, lr_decay_cooldown=0, lr_decay_gamma=0.5)


# --- run_epochs -----------------------------------------------------------------------------------------------------

# epoch 2 repeats the best loss: upstream's `valid_loss == es.best` saves it; epoch 3 is the second without a
# strictly lower loss: early stopping; the schedule halves the rate after epochs 2 and 3
UMX_LOSSES = [1.0, 0.5, 0.5, 0.7, 0.2, 0.1]
DEMUCS_LOSSES = [2.0, 3.0, 1.0, 1.0, 0.5]  # best when strictly lower: epochs 0, 2, 4
NAN_FIRST = [math.nan, 1.0, 2.0, 3.0, 4.0]  # never a best model: saved once, because no best file exists


@pytest.mark.parametrize(
    ("recipe", "losses"),
    [
        (umx_recipe(), UMX_LOSSES),
        (DemucsTrainConfig(epochs=5), DEMUCS_LOSSES),
        (umx_recipe(5), NAN_FIRST),
        (DemucsTrainConfig(epochs=5), NAN_FIRST),
    ],
    ids=["umx-early-stop", "demucs", "umx-nan", "demucs-nan"],
)
def test_call_order(events, tmp_path, recipe, losses):
    result, _, run, rows = train(events, tmp_path, recipe, losses)
    want, want_result = expected_events(recipe, losses)
    assert events == want
    assert result == want_result == run.result()
    assert rows == run.history and len(rows) == run.epoch
    assert result["steps"] == sum(row["steps"] for row in rows)


def test_early_stop_and_schedule_were_exercised(events, tmp_path):
    """The UMX case of test_call_order covers what it claims: a decayed rate, a save on an equal loss, a stop."""
    recipe = umx_recipe()
    _, _, run, _ = train(events, tmp_path, recipe, UMX_LOSSES)
    rates = [e[1] for e in events if e[0] == "lr"]
    assert rates[0] == recipe.lr and rates[-1] < rates[0]
    assert [e[1] for e in events if e[0] == "save_best"] == [1, 2, 3]  # run.epoch after booking epochs 0, 1, 2
    assert run.epoch == 4 < recipe.epochs and events[-1][1] == "early stopping after 4 epochs"


@pytest.mark.parametrize("max_steps", [0, 2, 3, 4, 7], ids=lambda n: f"max{n}")
def test_max_steps(events, tmp_path, max_steps):
    """``--max-steps``: checked after every step; the epoch that reaches it is still validated and saved; no batch
    is drawn past it."""
    recipe = DemucsTrainConfig(epochs=5)
    result, _, run, rows = train(events, tmp_path, recipe, DEMUCS_LOSSES, Options(max_steps=max_steps))
    want, want_result = expected_events(recipe, DEMUCS_LOSSES, Options(max_steps=max_steps))
    assert events == want and result == want_result
    assert run.step == min(max_steps, 3 * recipe.epochs)
    assert sum(e == ("draw",) for e in events) == run.step
    assert len(rows) == math.ceil(max_steps / 3)


def test_rank_other_than_zero_writes_nothing(events, tmp_path):
    recipe = umx_recipe()
    train(events, tmp_path, recipe, UMX_LOSSES, Options(rank=1))
    assert events == expected_events(recipe, UMX_LOSSES, Options(rank=1))[0]
    assert not any(e[0] in ("save_best", "save_checkpoint") for e in events)
    assert list(tmp_path.iterdir()) == []


def test_save_best_when_no_best_file(events, tmp_path):
    """A trainer whose ``save_best`` leaves no best file is asked again every epoch."""
    recipe = DemucsTrainConfig(epochs=5)
    train(events, tmp_path, recipe, DEMUCS_LOSSES, Options(writes_best=False))
    assert events == expected_events(recipe, DEMUCS_LOSSES, Options(writes_best=False))[0]
    assert sum(e[0] == "save_best" for e in events) == recipe.epochs


def test_best_file_of_an_earlier_run(events, tmp_path):
    """A best file already in the folder (``--force``) counts: a worse first epoch does not replace it."""
    recipe = DemucsTrainConfig(epochs=2)
    folder = RunFolder.for_recipe(tmp_path, "fake", recipe)
    folder.best_file.write_bytes(b"earlier")
    train(events, tmp_path, recipe, NAN_FIRST)
    assert [e for e in events if e[0] == "save_best"] == [("save_best", 2, NAN_FIRST[1])]


def test_quiet_is_passed_on(events, tmp_path):
    recipe = DemucsTrainConfig(epochs=2)
    train(events, tmp_path, recipe, DEMUCS_LOSSES, Options(quiet=False))
    assert events == expected_events(recipe, DEMUCS_LOSSES, Options(quiet=False))[0]


def test_log_lines(tmp_path, capsys, monkeypatch):
    """The real ``log`` and progress bar: the epoch lines and the early-stopping line on stderr, nothing when
    quiet."""
    monkeypatch.setattr(train_loop, "time", Clock([]))
    recipe = umx_recipe()
    train([], tmp_path / "loud", recipe, UMX_LOSSES, Options(quiet=False))
    err = capsys.readouterr().err
    lines = [e[1] for e in expected_events(recipe, UMX_LOSSES, Options(quiet=False))[0] if e[0] == "log"]
    assert lines[-1].startswith("early stopping after")
    for line in lines:
        assert f"{line}\n" in err
    train([], tmp_path / "quiet", recipe, UMX_LOSSES, Options(quiet=True))
    assert capsys.readouterr().err == ""


def test_trainer_base_defaults(events, tmp_path):
    """TrainerBase: ``start_epoch`` does nothing, ``mean_over_replicas`` is the identity; a trainer with the
    defaults trains as one that records them."""
    base = TrainerBase()
    assert base.start_epoch(3) is None and base.mean_over_replicas(0.1) == 0.1
    fake = FakeTrainer(events, UMX_LOSSES)
    assert isinstance(fake, EpochTrainer) and not isinstance(base, EpochTrainer)

    recipe = umx_recipe()
    plain = FakeTrainer(events, UMX_LOSSES, record_base=False)
    result, _, _, _ = train(events, tmp_path / "plain", recipe, UMX_LOSSES, trainer=plain)
    want = [e for e in expected_events(recipe, UMX_LOSSES)[0] if e[0] not in ("start_epoch", "mean")]
    assert events == want and result == expected_events(recipe, UMX_LOSSES)[1]


class Replicas(FakeTrainer):
    """A replica whose ``mean_over_replicas`` averages with another replica's loss (a fixed offset)."""

    def mean_over_replicas(self, value: float) -> float:
        value = super().mean_over_replicas(value)
        return (value + (value + 1.0)) / 2


def test_train_loss_is_the_mean_over_replicas(events, tmp_path):
    recipe = DemucsTrainConfig(epochs=3)
    _, _, _, rows = train(events, tmp_path, recipe, DEMUCS_LOSSES, trainer=Replicas(events, DEMUCS_LOSSES))
    for row, mean in zip(rows, [e[1] for e in events if e[0] == "mean"], strict=True):
        assert row["train"] == (mean + (mean + 1.0)) / 2


# --- --resume -------------------------------------------------------------------------------------------------------


def resume(events: Events, out: Any, recipe: Any, losses: list[float], options: Options = Options()):
    """A new process: fresh trainer, run and generator, read back from the checkpoint (as the ports' fit)."""
    folder = RunFolder.for_recipe(out, "fake", recipe)
    trainer, run, rng = FakeTrainer(events, losses), RecordingRun.for_recipe(recipe), np.random.default_rng(0)
    trainer.load_checkpoint(folder, run, rng)
    return train(events, out, recipe, losses, options, trainer=trainer, run=run, rng=rng)


def steps_and_rows(events: Events) -> tuple[list[Any], list[Any]]:
    return [e for e in events if e[0] in ("step", "evaluate", "lr")], [e[1] for e in events if e[0] == "progress"]


@pytest.mark.parametrize(
    ("recipe", "losses", "split"),
    [(umx_recipe(), UMX_LOSSES, 2), (DemucsTrainConfig(epochs=5), DEMUCS_LOSSES, 3)],
    ids=["umx", "demucs"],
)
def test_resume_is_exact(events, tmp_path, recipe, losses, split):
    """Stopping after ``split`` epochs and resuming gives the run that did not stop: the same batches, losses,
    rates, rows, best-model saves and result."""
    straight, trainer, _, _ = train(events, tmp_path / "straight", recipe, losses)
    reference, events[:] = list(events), []

    first = train(events, tmp_path / "resumed", dataclasses.replace(recipe, epochs=split), losses)[0]
    assert first["epochs"] == split
    result, resumed, _, _ = resume(events, tmp_path / "resumed", recipe, losses)
    assert result == straight
    assert steps_and_rows(events) == steps_and_rows(reference)
    np.testing.assert_array_equal(resumed.w, trainer.w)
    saves = [e for e in reference if e[0] == "save_best"]
    assert [e for e in events if e[0] == "save_best"] == saves
    assert read_state(RunFolder.for_recipe(tmp_path / "resumed", "fake", recipe)) == read_state(
        RunFolder.for_recipe(tmp_path / "straight", "fake", recipe)
    )


def test_resume_after_max_steps(events, tmp_path):
    """``--max-steps`` in the middle of an epoch, then ``--resume`` without it: the partial epoch counts as an
    epoch; the next one starts where the generator stopped, as if the process had gone on."""
    recipe = DemucsTrainConfig(epochs=4)
    rng = np.random.default_rng(SEED)
    _, trainer, run, _ = train(events, tmp_path / "on", recipe, DEMUCS_LOSSES, Options(max_steps=5), rng=rng)
    assert (run.epoch, run.step, [r["steps"] for r in run.history]) == (2, 5, [3, 2])
    went_on = train(events, tmp_path / "on", recipe, DEMUCS_LOSSES, trainer=trainer, run=run, rng=rng)[0]
    reference, events[:] = list(events), []

    train(events, tmp_path / "resumed", recipe, DEMUCS_LOSSES, Options(max_steps=5))
    result, _, _, _ = resume(events, tmp_path / "resumed", recipe, DEMUCS_LOSSES)
    assert result == went_on and [r["steps"] for r in result["history"]] == [3, 2, 3, 3]
    assert steps_and_rows(events) == steps_and_rows(reference)


def test_resume_at_max_steps_does_nothing(events, tmp_path):
    recipe = DemucsTrainConfig(epochs=4)
    train(events, tmp_path, recipe, DEMUCS_LOSSES, Options(max_steps=3))
    events[:] = []
    result, _, run, _ = resume(events, tmp_path, recipe, DEMUCS_LOSSES, Options(max_steps=3))
    assert events == [("done", 3)] and result == run.result() and run.epoch == 1


# --- steps_per_epoch, save_best -------------------------------------------------------------------------------------


def test_steps_per_epoch():
    assert steps_per_epoch(70, 16) == 70 // 16 and steps_per_epoch(70, 16, 4) == 70 // 16
    with pytest.raises(ValueError, match=r"^--batch-size 16 does not split over 3 replicas$"):
        steps_per_epoch(70, 16, 3)
    with pytest.raises(ValueError, match=r"^--batch-size 16 does not split over 3 devices$"):
        steps_per_epoch(70, 16, 3, unit="devices")
    with pytest.raises(ValueError, match=r"^15 training excerpts make no batch of 16$"):
        steps_per_epoch(15, 16)


def test_save_best(tmp_path):
    config = UMXConfig(nb_bins=257, max_bin=64, hidden_size=16, nb_layers=3)
    recipe = UMXTrainConfig(target="bass")
    folder = RunFolder.for_recipe(tmp_path, "fake", recipe)
    run = RunState.for_recipe(recipe)
    run.epoch, run.step = 3, 12
    weights = initial_weights(config, seed=1)
    native: list[tuple[Any, ...]] = []

    def save_native(path, arrays, cfg, force=False):
        native.append((path, arrays, cfg, force))

    for valid_loss in (0.5, 0.25):  # the second overwrites the first
        save_best(folder, run, "fake", valid_loss, weights, config, save_native, fake="1.0", other="2")
        loaded, loaded_config, provenance = load_canonical(folder.best)
        assert loaded_config == config and loaded.keys() == weights.keys()
        for name, value in weights.items():
            np.testing.assert_array_equal(loaded[name], value)
        assert provenance == run.provenance("fake", valid_loss, fake="1.0", other="2")
        assert native[-1][0] == folder.native and native[-1][1] is weights and native[-1][2:] == (config, True)
    assert len(native) == 2 and folder.best_file.exists()


# --- run_main -------------------------------------------------------------------------------------------------------


def cli_args(out: Any, *options: str) -> argparse.Namespace:
    return train_cli.build_parser().parse_args(
        ["--framework", "torch", "--model", "demucs", "--root", str(out), "--out", str(out), "--quiet", *options]
    )


def test_run_main(tmp_path, capsys):
    args = cli_args(tmp_path / "run", "--epochs", "3")
    seen = []

    def fit(recipe):
        seen.append(recipe)
        return {"epochs": 3, "steps": 9, "best_loss": 0.125}

    assert train_cli.run_main(args, "fake", fit) == 0
    assert seen == [train_cli.recipe_from_args(args)] and (tmp_path / "run").is_dir()
    assert capsys.readouterr().err == ""  # --quiet
    loud = cli_args(tmp_path / "run")
    loud.quiet = False
    assert train_cli.run_main(loud, "fake", fit) == 0
    assert capsys.readouterr().err == "done: 3 epochs, 9 steps, best valid loss 0.125\n"

    folder = RunFolder.for_recipe(tmp_path / "run", "fake", seen[0])
    folder.best_file.write_bytes(b"")
    assert train_cli.run_main(args, "fake", fit) == 2  # results there, no --resume / --force: fit not called
    assert len(seen) == 2 and capsys.readouterr().err.startswith(f"unmix-train: {tmp_path / 'run'} already holds")
    assert train_cli.run_main(cli_args(tmp_path / "run", "--resume"), "fake", fit) == 2
    assert "--resume:" in capsys.readouterr().err and len(seen) == 2
    assert train_cli.run_main(args, "fake", fit, prepare=lambda recipe: False) == 0  # a replica: no folder check
    assert len(seen) == 3


def test_run_main_prepare_errors(tmp_path, capsys):
    args = cli_args(tmp_path / "run")
    calls = []

    def prepare(recipe):
        calls.append(recipe)
        raise RuntimeError("no communicator")

    def fit(recipe):
        raise AssertionError("fit must not run")

    assert train_cli.run_main(args, "fake", fit, (FileExistsError, RuntimeError), prepare) == 2
    assert capsys.readouterr().err == "unmix-train: no communicator\n"
    assert calls == [train_cli.recipe_from_args(args)] and not (tmp_path / "run").exists()
    with pytest.raises(RuntimeError, match="no communicator"):  # not one of `errors`: not reported as status 2
        train_cli.run_main(args, "fake", fit, prepare=prepare)
