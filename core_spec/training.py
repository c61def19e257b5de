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
- HTDemucs (demucs 4.1.0, ``demucs/solver.py``, ``demucs/train.py``; the conf of the released models is not in the
  wheel: GitHub's ``conf/config.yaml`` and ``grids/mmi.py``): Adam (lr 3e-4, betas (0.9, 0.999), no weight decay),
  L1 per source (mean over channels and time, then over the batch), weighted by per-source ``weights`` (all 1);
  batch 32; the network's input is the released segment, 7.8 s (mmi's 10-s items, Repitch's 12 % trim, then 1 s
  for ``Shift``); the augmentations of Demucs v2 (``Shift`` of 1 s, ``FlipChannels``, ``FlipSign``, ``Scale``,
  ``Remix`` in groups of 4, with probability 1); no schedule (360 epochs). Not reproduced: Repitch, the EMAs of the
  weights, the transformer's dropout (a model setting, ``t_dropout``), ``max_batches`` (800 steps an epoch upstream).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .configs import DemucsConfig, HTDemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig

__all__ = [
    "DemucsTrainConfig",
    "HTDemucsTrainConfig",
    "EarlyStopping",
    "RECIPES",
    "ReduceLROnPlateau",
    "Recipe",
    "UMXTrainConfig",
    "initial_weights",
    "input_scaler_weights",
    "shard_batch",
    "train_config_from_dict",
    "train_stft",
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


@dataclass(frozen=True)
class HTDemucsTrainConfig:
    """HTDemucs (demucs 4.x) training settings (module docstring). The field names of
    :class:`DemucsTrainConfig` where the meaning is the same, so that the Demucs data pipeline reads both
    (``samples``: here the network's input itself, HTDemucs trains at any length; ``data_stride``: the items'
    stride and what ``Shift`` crops, demucs 4's ``dset.shift``)."""

    epochs: int = 360
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0  # demucs 4's optim.weight_decay (coupled, torch.optim.Adam)
    samples: int = 343980  # 7.8 s at 44.1 kHz: the released models' segment
    data_stride: int = 44100  # dset.shift: 1 s
    loss: str = "l1"  # "l1" or "mse" (optim.loss)
    weights: tuple[float, ...] = ()  # per-source loss weights (args.weights); empty: 1 for every source
    augment: bool = True  # FlipChannels, FlipSign, Scale, Remix (Shift always)
    remix_group_size: int = 4
    scale_min: float = 0.25
    scale_max: float = 1.25
    norm_wav: bool = True  # dset.normalize
    seed: int = 42

    @property
    def model(self) -> str:
        return "htdemucs"


Recipe = UMXTrainConfig | DemucsTrainConfig | HTDemucsTrainConfig

RECIPES: dict[str, type] = {"umx": UMXTrainConfig, "demucs": DemucsTrainConfig, "htdemucs": HTDemucsTrainConfig}


def train_config_from_dict(model: str, values: dict[str, Any]) -> Recipe:
    """A recipe from ``{field: value}`` (e.g. parsed command-line options); unknown fields are an error."""
    cls = RECIPES.get(model)
    if cls is None:
        raise ValueError(f"unknown model {model!r}: expected one of {sorted(RECIPES)}")
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


# --- framework-neutral pieces of every port's training loop --------------------------------------------------------


def train_stft(config: UMXConfig, center: bool = False) -> STFTConfig:
    """The STFT a UMX network of ``config`` is trained on: the preset's with the same number of bins
    (``umxhq``: 4096 / 1024, ``umxse``: 1024 / 512), else ``n_fft = 2 (nb_bins - 1)``, ``n_hop = n_fft / 4``;
    ``center=False`` as upstream's training script."""
    from .configs import UMX_PRESETS, STFTConfig

    for preset in UMX_PRESETS.values():
        if preset.model.nb_bins == config.nb_bins:
            return dataclasses.replace(preset.separator.stft, center=center)
    n_fft = 2 * (config.nb_bins - 1)
    return STFTConfig(n_fft=n_fft, n_hop=n_fft // 4, center=center)


def initial_weights(
    config: UMXConfig | DemucsConfig | HTDemucsConfig,
    seed: int = 42,
    input_mean: np.ndarray | None = None,
    input_scale: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Canonical float32 weights of an untrained model, as upstream initialises it (seeded NumPy draws).

    PyTorch's default init (uniform in ``+-1/sqrt(fan_in)``, :func:`core_spec.seeded.random_weights`, one seeded
    stream per name); BatchNorm ``weight = 1``, ``bias = 0``, running mean 0 and variance 1; UMX ``output_scale``
    and ``output_mean`` 1, ``input_mean = -mean`` and ``input_scale = 1 / scale`` of the dataset statistics
    (``(nb_bins,)``, cropped to ``max_bin``; 0 and 1 without); Demucs: ``rescale_module(reference=rescale)``, every
    convolution divided by ``sqrt(std(weight) / rescale)`` (unbiased std; biases too). HTDemucs:
    :func:`_htdemucs_init`. The draws are NumPy's, not torch's: the same distributions, other numbers.
    """
    from .configs import HTDemucsConfig, UMXConfig
    from .seeded import random_weights

    weights = random_weights(config, seed)
    if isinstance(config, HTDemucsConfig):
        return _htdemucs_init(weights, config, seed)
    if isinstance(config, UMXConfig):
        n = config.crop_bins
        for name, value in list(weights.items()):
            leaf = name.rsplit(".", 1)[-1]
            if name.startswith("bn"):
                fill = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}[leaf]
                weights[name] = np.full_like(value, fill)
            elif name in ("output_scale", "output_mean"):
                weights[name] = np.ones_like(value)
        mean = np.zeros(n) if input_mean is None else -np.asarray(input_mean, np.float64)[:n]
        scale = np.ones(n) if input_scale is None else 1.0 / np.asarray(input_scale, np.float64)[:n]
        weights["input_mean"] = mean.astype(np.float32)
        weights["input_scale"] = scale.astype(np.float32)
        return weights
    if config.rescale:
        convs = {
            n.rsplit(".", 1)[0] for n in weights if n.startswith(("encoder.", "decoder.")) and n.endswith(".weight")
        }
        _rescale(weights, sorted(convs), config.rescale)
    return weights


def _rescale(weights: dict[str, np.ndarray], convs: list[str], reference: float) -> None:
    """demucs' ``rescale_conv`` on each convolution prefix, in place: weight and bias divided by
    ``sqrt(std(weight) / reference)`` (unbiased std of the weight)."""
    for prefix in convs:
        w = weights[f"{prefix}.weight"].astype(np.float64)
        factor = math.sqrt(float(np.std(w, ddof=1)) / reference)
        weights[f"{prefix}.weight"] = (w / factor).astype(np.float32)
        if f"{prefix}.bias" in weights:
            weights[f"{prefix}.bias"] = (weights[f"{prefix}.bias"].astype(np.float64) / factor).astype(np.float32)


HTDEMUCS_UNETS = ("encoder.", "decoder.", "tencoder.", "tdecoder.")  # the modules rescale_module reaches


def _htdemucs_init(weights: dict[str, np.ndarray], config: HTDemucsConfig, seed: int) -> dict[str, np.ndarray]:
    """demucs 4.1.0's ``HTDemucs.__init__`` initialisation on :func:`core_spec.seeded.random_weights`'s draws
    (PyTorch's default for every convolution and linear layer), in upstream's order:

    - every GroupNorm / LayerNorm (DConv's, the transformer's ``norm*``) ``weight = 1``, ``bias = 0``;
    - LayerScales: DConv's ``scale = dconv_init`` (1e-3), the transformer's ``gamma_1`` / ``gamma_2``
      ``scale = 1e-4`` (``init_values``, which HTDemucs never passes);
    - ``nn.MultiheadAttention``'s ``_reset_parameters``: ``in_proj_weight`` Xavier-uniform
      (``+-sqrt(6 / (d + 3 d))``), ``in_proj_bias`` and ``out_proj.bias`` 0;
    - ``freq_emb`` (``ScaledEmbedding``): ``N(0, 1)`` rows, with ``emb_smooth`` their cumulative sum over the
      frequencies divided by ``sqrt(1 .. F)``, then divided by ``emb_scale``;
    - ``rescale_module(reference=rescale)`` over the four U-Nets' convolutions (``encoder``, ``decoder``,
      ``tencoder``, ``tdecoder``: conv, rewrite, ``conv_tr`` and DConv's): upstream calls it before building the
      1x1 channel samplers and the transformer, which keep PyTorch's default.
    """
    from .seeded import _is_norm

    for name, value in list(weights.items()):
        leaf = name.rsplit(".", 1)[-1]
        if _is_norm(name, config):
            weights[name] = np.full_like(value, 1.0 if leaf == "weight" else 0.0)
        elif leaf == "scale":  # LayerScale
            init = 1e-4 if name.startswith("crosstransformer.") else config.dconv_init
            weights[name] = np.full_like(value, init)
        elif leaf == "in_proj_weight":
            bound = math.sqrt(6.0 / (value.shape[0] + value.shape[1]))
            rng = np.random.default_rng([seed, 1, _name_key(name)])
            weights[name] = rng.uniform(-bound, bound, value.shape).astype(np.float32)
        elif leaf == "in_proj_bias" or name.endswith("out_proj.bias"):
            weights[name] = np.zeros_like(value)
    if "freq_emb.embedding.weight" in weights:
        shape = weights["freq_emb.embedding.weight"].shape
        emb = np.random.default_rng([seed, 2, _name_key("freq_emb.embedding.weight")]).standard_normal(shape)
        if config.emb_smooth:
            emb = np.cumsum(emb, axis=0) / np.sqrt(np.arange(1, shape[0] + 1))[:, None]
        weights["freq_emb.embedding.weight"] = (emb / config.emb_scale).astype(np.float32)
    if config.rescale:
        convs = [
            n[: -len(".weight")]
            for n, v in weights.items()
            if n.startswith(HTDEMUCS_UNETS) and n.endswith(".weight") and v.ndim >= 3
        ]
        _rescale(weights, convs, config.rescale)
    return weights


def _name_key(name: str) -> int:
    """A stable integer of a parameter name (a seed component: ``crc32``, as :mod:`core_spec.seeded`)."""
    return zlib.crc32(name.encode())


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """Replica ``rank``'s contiguous share of a batch (the leading axis of every array divided by ``world_size``);
    ``batch``: an array, a tuple / list of arrays or a mapping of them."""
    if isinstance(batch, Mapping):
        return {k: shard_batch(v, rank, world_size) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(shard_batch(v, rank, world_size) for v in batch)
    if not hasattr(batch, "shape"):
        batch = np.asarray(batch)
    size = batch.shape[0]
    if size % world_size:
        raise ValueError(f"a batch of {size} does not split over {world_size} replicas")
    n = size // world_size
    return batch[rank * n : (rank + 1) * n]


def input_scaler_weights(
    mean: np.ndarray, std: np.ndarray, config: UMXConfig | UMXSeparatorConfig
) -> dict[str, np.ndarray]:
    """``{"input_mean": -mean[:max_bin], "input_scale": 1 / std[:max_bin]}`` float32, as ``OpenUnmix.__init__``
    stores ``get_statistics``'s output."""
    from .configs import UMXSeparatorConfig

    model = config.model if isinstance(config, UMXSeparatorConfig) else config
    crop = model.crop_bins
    return {
        "input_mean": (-np.asarray(mean)[:crop]).astype(np.float32),
        "input_scale": (1.0 / np.asarray(std)[:crop]).astype(np.float32),
    }
