"""The upstream training recipes, framework-neutral: hyper-parameters, the learning-rate schedule and early stopping.

Every port's ``train.py`` reads its settings from these dataclasses and drives its optimiser with the two state
machines below, so that the four training loops make the same decisions from the same validation losses.

- Open-Unmix: ``scripts/train.py`` of open-unmix-pytorch 1.3.0 (argparse defaults): Adam (lr 1e-3, *coupled*
  L2 weight decay 1e-5 added to the gradient, as ``torch.optim.Adam(weight_decay=...)``), MSE between the
  network's output and the target's magnitude spectrogram (STFT with ``center=False``), ``ReduceLROnPlateau``
  (factor 0.3, patience 80, cooldown 10), early stopping (patience 140), 6-s excerpts, batch 16, 64 excerpts a track
  an epoch, augmentations ``gain`` and ``channelswap`` and random mixing of sources across tracks.
- Demucs v2: ``demucs/parser.py`` and ``demucs/__main__.py`` of demucs 2.0.3: Adam (lr 3e-4, no weight decay), L1
  between the estimates and the centre-trimmed sources, 10-s excerpts (``valid_length(samples) + data_stride``
  read, then ``Shift`` crops ``data_stride``), batch 64, augmentations ``Shift``, ``FlipSign``, ``FlipChannels``,
  ``Scale`` and ``Remix`` (groups of 4); no schedule, no early stopping (180 epochs, the best validation loss kept).
  Repitch (``soundstretch``) is not part of the recipe here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DemucsTrainConfig",
    "EarlyStopping",
    "ReduceLROnPlateau",
    "UMXTrainConfig",
    "train_config_from_dict",
]


@dataclass(frozen=True)
class UMXTrainConfig:
    """Open-Unmix training settings (upstream ``scripts/train.py`` defaults)."""

    target: str = "vocals"
    epochs: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5  # coupled (L2 added to the gradient), as torch.optim.Adam
    patience: int = 140  # early stopping, in epochs without improvement
    lr_decay_patience: int = 80
    lr_decay_gamma: float = 0.3
    lr_decay_cooldown: int = 10
    seq_dur: float = 6.0  # seconds of each training excerpt
    samples_per_track: int = 64
    source_augmentations: tuple[str, ...] = ("gain", "channelswap")
    random_track_mix: bool = True
    seed: int = 42
    stft_center: bool = False  # upstream trains on un-centred frames (its separator runs centred ones)

    @property
    def model(self) -> str:
        return "umx"


@dataclass(frozen=True)
class DemucsTrainConfig:
    """Demucs v2 training settings (``demucs/parser.py`` defaults of demucs 2.0.3)."""

    epochs: int = 180
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    samples: int = 44100 * 10  # excerpt fed to the network (before valid_length)
    data_stride: int = 44100  # extra samples read; Shift crops them at a random offset
    loss: str = "l1"  # "l1" or "mse"
    augment: bool = True  # FlipSign, FlipChannels, Scale, Remix (Shift always)
    remix_group_size: int = 4
    scale_min: float = 0.25
    scale_max: float = 1.25
    norm_wav: bool = True  # each track normalised by its mixture's mean and std (upstream --no_norm_wav turns it off)
    seed: int = 42

    @property
    def model(self) -> str:
        return "demucs"


def train_config_from_dict(model: str, values: dict[str, Any]) -> UMXTrainConfig | DemucsTrainConfig:
    """A recipe from ``{field: value}`` (e.g. parsed command-line options); unknown fields are an error."""
    cls = {"umx": UMXTrainConfig, "demucs": DemucsTrainConfig}.get(model)
    if cls is None:
        raise ValueError(f"unknown model {model!r}: expected 'umx' or 'demucs'")
    known = {f.name for f in cls.__dataclass_fields__.values()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


@dataclass
class ReduceLROnPlateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode ``min``, threshold 1e-4 relative), as a state machine.

    Call :meth:`step` with each epoch's validation loss; it returns the learning rate for the next epoch. The state
    is plain numbers (:meth:`state_dict` / :meth:`load_state_dict`) so that every framework checkpoints it alike.
    """

    lr: float
    factor: float = 0.3
    patience: int = 80
    cooldown: int = 10
    threshold: float = 1e-4
    min_lr: float = 0.0
    eps: float = 1e-8
    best: float = math.inf
    num_bad_epochs: int = 0
    cooldown_counter: int = 0

    def step(self, loss: float) -> float:
        if loss < self.best * (1.0 - self.threshold):
            self.best, self.num_bad_epochs = float(loss), 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        return self.lr

    def state_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


@dataclass
class EarlyStopping:
    """open-unmix's ``utils.EarlyStopping`` (mode ``min``, ``min_delta`` 0), edge cases included.

    :meth:`step` takes an epoch's validation loss and returns ``True`` when training should stop: after
    ``patience`` epochs without a strictly lower loss, or at a NaN loss (but the first loss is always accepted, as
    upstream's ``best is None`` branch). ``patience=0`` counts every loss as an improvement and stops at the
    second epoch, as upstream. :attr:`is_best` is upstream ``train.py``'s ``valid_loss == es.best``: save the best
    model when it is set.
    """

    patience: int = 140
    best: float | None = None
    num_bad_epochs: int = 0
    is_best: bool = field(default=False)

    def step(self, loss: float) -> bool:
        loss = float(loss)
        if self.best is None:
            self.best, self.is_best = loss, not math.isnan(loss)  # NaN == NaN is False upstream too
            return False
        if math.isnan(loss):
            self.is_best = False
            return True
        if loss < self.best or self.patience == 0:
            self.best, self.num_bad_epochs = loss, 0
        else:
            self.num_bad_epochs += 1
        self.is_best = loss == self.best
        return self.num_bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
