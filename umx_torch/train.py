"""Training of Open-Unmix, Demucs v2 and HTDemucs (demucs 4) in PyTorch, with the upstream recipes of
:mod:`core_spec.training`.

The pieces, in the order a reader meets them (the lesson of ``core_spec.public_api.LESSONS["train"]``):

- the losses: :func:`spectrogram`, :func:`umx_loss` (MSE between the network's output and the target's magnitude,
  both from the ``center=False`` STFT of upstream's ``scripts/train.py``) and :func:`demucs_loss` (L1, or MSE,
  between the estimates and the centre-trimmed sources, ``demucs/train.py``), :func:`htdemucs_loss` (demucs 4's
  ``solver``: L1 per source over (channels, time) then the batch, weighted by the recipe's per-source ``weights``;
  the model in train mode runs at the input's length);
- :func:`make_optimizer`: ``torch.optim.Adam(lr, weight_decay)``, i.e. *coupled* L2 (the decay is added to the
  gradient before the moments), exactly upstream's optimiser; for HTDemucs in demucs 4's two groups (the
  cross-transformer with its own ``t_weight_decay`` / ``t_lr``, the rest with the recipe's);
- :class:`Trainer`: the model, its optimiser and its replica group behind :class:`core_spec.epochs.EpochTrainer`
  (learning rate, one step, the epoch's mean loss over the replicas, validation, the best model, the checkpoint);
- :func:`loss_and_grads`: one forward and backward pass in train mode, the gradients under their canonical
  (upstream state-dict) names; the gradient-parity tests call it;
- what the tool's driver (``unmix-train --framework torch``) calls besides the :class:`Trainer`:
  :func:`set_statistics` (UMX's input statistics), :func:`load_checkpoint` (``--resume``: what
  :meth:`Trainer.save_checkpoint` wrote), :func:`init_process_group` and :func:`data_parallel` (one replica of a
  data-parallel run). The epoch loop, the datasets, the run folder and the command line are the tool's: it validates
  on rank 0 and broadcasts (:meth:`Trainer.evaluate`), so that every replica takes the same decisions; the best
  model is written in the canonical format and as upstream's state dict (:func:`umx_torch.weights.save_native`);
- data parallelism: :class:`torch.nn.parallel.DistributedDataParallel` over ``gloo`` (CPU) or ``nccl`` (GPU),
  one process per replica (the tool starts them). Every replica draws the same order of
  items (the same seeded generator) and trains on its contiguous shard of ``batch_size / replicas`` items of each
  global batch (UMX: it reads only its shard; Demucs: every replica reads and augments the whole batch with the same
  draws, so ``Remix`` groups are those of one process, then keeps its shard); DDP averages the gradients. Demucs (no
  normalisation layers) then computes the full batch's gradient. Open-Unmix's BatchNorm1d layers (upstream uses
  plain ``BatchNorm1d``, not ``SyncBatchNorm``) normalise with each replica's own batch statistics, so its averaged
  gradient is the mean of the shards' gradients, not the full batch's; the running statistics kept are replica
  0's (DDP broadcasts them from rank 0 before every forward). :func:`data_parallel_loss_and_grads` runs one such
  step (the tests use it).

Initialisation is upstream's: PyTorch's default initialisation (and demucs's rescaling) after
``torch.manual_seed(recipe.seed)``, or the weights of ``--init``; UMX's input statistics, computed by the tool over
the training tracks, are set by :func:`set_statistics`. UMX trains with upstream's LSTM dropout
(:attr:`core_spec.configs.UMXConfig.lstm_dropout`: 0.4 between layers).

Shapes: UMX batches are waveforms ``x`` (mixture) and ``y`` (target), ``(nb_samples, nb_channels, nb_timesteps)``;
Demucs batches are sources ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``, already augmented.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_spec import epochs
from core_spec.configs import DemucsConfig, HTDemucsConfig, STFTConfig, UMXConfig
from core_spec.epochs import Progress, RunFiles, RunRecord, TrainerBase, no_progress
from core_spec.training import (
    DemucsTrainConfig,
    HTDemucsTrainConfig,
    UMXTrainConfig,
    input_scaler_weights,
    shard_batch,
    train_stft,
)

from .apply import apply_model
from .build import from_canonical
from .demucs import center_trim
from .htdemucs import HTDemucs
from .htdemucs_apply import apply_model as apply_htdemucs
from .layers import set_lstm_dropout
from .transforms import complex_norm, stft
from .umx import OpenUnmix
from .weights import save_native, to_canonical

__all__ = [
    "FRAMEWORK",
    "Recipe",
    "Trainer",
    "compute_loss",
    "data_parallel",
    "data_parallel_loss_and_grads",
    "demucs_loss",
    "htdemucs_loss",
    "init_process_group",
    "load_checkpoint",
    "loss_and_grads",
    "make_optimizer",
    "set_statistics",
    "set_lstm_dropout",
    "set_transformer_dropout",
    "spectrogram",
    "train_step",
    "train_stft",
    "umx_loss",
]

Recipe = UMXTrainConfig | DemucsTrainConfig | HTDemucsTrainConfig
FRAMEWORK = "torch"

# --- losses -----------------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def spectrogram(audio: Tensor, config: STFTConfig, mono: bool, window: Tensor | None = None) -> Tensor:
    """Magnitude STFT ``(B, C, T)`` -> ``(B, C or 1, F, frames)`` (``mono``: channel mean of the magnitudes)."""
    spec = stft(audio, config.n_fft, config.n_hop, center=config.center, normalized=config.normalized, window=window)
    return complex_norm(spec, mono=mono)


def umx_loss(model: nn.Module, x: Tensor, y: Tensor, config: STFTConfig, window: Tensor | None = None) -> Tensor:
    """``mse(model(|STFT(x)|), |STFT(y)|)``.

    Args:
        model: an :class:`~umx_torch.umx.OpenUnmix` (or a DDP wrapper of one).
        x: mixture waveform ``(nb_samples, nb_channels, nb_timesteps)``.
        y: target waveform, same shape.
        config: the training STFT (:func:`train_stft`).
        window: STFT window ``(n_fft,)``; ``None``: the periodic Hann window in the signal's dtype.
    """
    mono = _unwrap(model).nb_channels == 1
    X = spectrogram(x, config, mono, window)
    Y = spectrogram(y, config, mono, window)
    return F.mse_loss(model(X), Y)


def demucs_loss(model: nn.Module, sources: Tensor, loss: str = "l1") -> Tensor:
    """Loss of Demucs on ``sources`` ``(B, S, C, T)``: the mixture is their sum; the estimates
    ``(B, S, C, T')`` are compared with the centre ``T'`` samples of the sources."""
    estimates = model(sources.sum(dim=1))
    target = center_trim(sources, estimates)
    if loss == "l1":
        return F.l1_loss(estimates, target)
    if loss == "mse":
        return F.mse_loss(estimates, target)
    raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")


# --- the optimiser and the trainer of the epoch loop ------------------------------------------------------------------


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Adam:
    """``torch.optim.Adam(model.parameters(), lr, weight_decay)``: upstream's optimiser (coupled L2 decay).

    HTDemucs: demucs 4's ``get_optimizer``: a first group of every parameter outside the cross-transformer (the
    recipe's ``lr`` and ``weight_decay``), then the cross-transformer's (its ``make_optim_group``:
    ``weight_decay = t_weight_decay``, ``lr = t_lr`` when set); betas (0.9, 0.999) in both.
    """
    model = _unwrap(model)
    if isinstance(model, HTDemucs) and model.crosstransformer is not None:
        inner = set(model.crosstransformer.parameters())
        group = {"params": list(model.crosstransformer.parameters()), "weight_decay": model.config.t_weight_decay}
        if model.config.t_lr is not None:
            group["lr"] = model.config.t_lr
        groups = [{"params": [p for p in model.parameters() if p not in inner]}, group]
        return torch.optim.Adam(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


class Trainer(TrainerBase):
    """One replica's model, optimiser and replica group, as :func:`unmix.train_loop.run_epochs` drives them.

    Args:
        model: the :class:`~umx_torch.umx.OpenUnmix` or :class:`~umx_torch.demucs.Demucs` being trained (validated
            and saved unwrapped).
        net: what the steps run: ``model``, or its :class:`~torch.nn.parallel.DistributedDataParallel` wrapper.
        optimizer: :func:`make_optimizer`'s Adam.
        recipe, stft_config: as :func:`loss_and_grads`.
        rank, world_size, device: this replica, the number of replicas, its device (losses are averaged and
            broadcast there in float64).
    """

    def __init__(
        self,
        model: nn.Module,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        recipe: Recipe,
        stft_config: STFTConfig | None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> None:
        self.model, self.net, self.optimizer = model, net, optimizer
        self.recipe, self.stft_config = recipe, stft_config
        self.rank, self.world_size, self.device = rank, world_size, device

    def set_learning_rate(self, lr: float) -> None:
        """The learning rate of the next steps. HTDemucs: the transformer's group (the second) keeps its own
        ``t_lr`` when the config sets one (upstream never changes it), else follows ``lr``."""
        t_lr = getattr(_unwrap(self.model), "config", None)
        t_lr = getattr(t_lr, "t_lr", None)
        for index, group in enumerate(self.optimizer.param_groups):
            group["lr"] = t_lr if index == 1 and t_lr is not None else lr

    def step(self, batch: Any) -> float:
        """One optimiser step on this replica's shard (DDP averages the gradients): :func:`train_step`."""
        return train_step(self.net, self.optimizer, batch, self.recipe, self.stft_config)

    def mean_over_replicas(self, value: float) -> float:
        return _all_mean(value, self.world_size, self.device)

    def evaluate(self, valid_set: Any, progress: Progress = no_progress) -> float:
        """Rank 0 validates (its tracks through ``progress``); the loss is broadcast, so that every replica takes the
        same decisions."""
        loss = _validate(self.model, valid_set, self.recipe, self.stft_config, progress) if self.rank == 0 else 0.0
        return _broadcast(loss, self.world_size, self.device)

    def save_best(self, folder: RunFiles, run: RunRecord, valid_loss: float) -> None:
        """``<name>.safetensors`` + ``.json`` (canonical) and ``<name>-torch.pth`` + ``.json`` (upstream's state
        dict)."""
        epochs.save_best(folder, run, FRAMEWORK, valid_loss, to_canonical(self.model), self.model.config,
                         save_native, torch=torch.__version__)  # fmt: skip

    def save_checkpoint(self, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
        """``checkpoint-<name>-torch/``: ``model.pth``, ``optimizer.pth``, ``torch_rng.pth``, ``state.json``
        (:func:`load_checkpoint` reads them back)."""
        _save_checkpoint(self.model, self.optimizer, folder, run, rng)


# --- one step ---------------------------------------------------------------------------------------------------------


def loss_and_grads(
    model: nn.Module,
    batch: Any,
    recipe: Recipe,
    stft_config: STFTConfig | None = None,
    window: Tensor | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """One training forward and backward pass.

    The model is put in train mode (BatchNorm uses the batch statistics and updates its running ones; LSTM dropout
    is active unless disabled with :func:`set_lstm_dropout`), its gradients are zeroed, then the loss is
    back-propagated; the gradients stay on the parameters, so an ``optimizer.step()`` can follow.

    Args:
        model: :class:`~umx_torch.umx.OpenUnmix` or :class:`~umx_torch.demucs.Demucs`, or a DDP wrapper of one.
        batch: UMX: ``{"x", "y"}`` or ``(x, y)``, waveforms ``(B, C, T)``; Demucs: ``{"sources"}`` or the array
            ``(B, S, C, T)``. NumPy arrays or tensors, cast to the model's dtype and device.
        recipe: :class:`~core_spec.training.UMXTrainConfig` or :class:`~core_spec.training.DemucsTrainConfig`.
        stft_config: UMX: the STFT (default :func:`train_stft`).
        window: UMX: the STFT window (default: the periodic Hann window in the model's dtype).

    Returns:
        ``(loss, {canonical parameter name: gradient})``, gradients as NumPy arrays in the model's dtype.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    loss = compute_loss(model, batch, recipe, stft_config, window)
    loss.backward()
    grads = {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().to("cpu").numpy().copy()
        for name, p in _unwrap(model).named_parameters()
    }
    return float(loss.detach()), grads


# --- what the tool's driver calls: input statistics, --resume, replicas -----------------------------------------------


def set_statistics(model: OpenUnmix, mean: np.ndarray, scale: np.ndarray) -> None:
    """Set UMX's input scaler from the training set's statistics, upstream's convention
    (:func:`core_spec.training.input_scaler_weights`): ``input_mean = -mean[:max_bin]``,
    ``input_scale = 1 / scale[:max_bin]``."""
    with torch.no_grad():
        for name, value in input_scaler_weights(mean, scale, model.config).items():
            getattr(model, name).copy_(torch.from_numpy(value))


def _save_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, folder: RunFiles, run: RunRecord, rng: np.random.Generator
) -> None:
    """``checkpoint-<name>-torch/``: ``model.pth``, ``optimizer.pth``, ``torch_rng.pth``, ``state.json``."""
    folder.checkpoint.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().to("cpu") for k, v in model.state_dict().items()}, folder.checkpoint / "model.pth")
    torch.save(optimizer.state_dict(), folder.checkpoint / "optimizer.pth")
    torch.save(torch.get_rng_state(), folder.checkpoint / "torch_rng.pth")
    run.save(folder, rng)


def load_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, folder: RunFiles, run: RunRecord, rng: np.random.Generator
) -> None:
    """``--resume``: read back what :meth:`Trainer.save_checkpoint` wrote into ``folder.checkpoint``: ``run``'s state
    and ``rng`` (``state.json``), the model's weights and buffers, the optimiser's state, torch's generator (the
    dropout masks)."""
    run.load(folder, rng)
    model.load_state_dict(torch.load(folder.checkpoint / "model.pth", map_location="cpu"))
    optimizer.load_state_dict(torch.load(folder.checkpoint / "optimizer.pth", map_location="cpu"))
    torch.set_rng_state(torch.load(folder.checkpoint / "torch_rng.pth"))


def _validate(
    model: nn.Module, valid_set: Any, recipe: Recipe, stft_config: STFTConfig | None, progress: Progress
) -> float:
    """Mean loss over the validation tracks (batch 1, eval mode, no gradients). UMX: MSE of the magnitudes of whole
    tracks. Demucs: L1 of ``apply_model`` (no split, no shifts) on the track's mixture, normalised like its sources,
    against the sources (demucs 2.0.3 ``validate_model``). HTDemucs: demucs 4's validation (``valid_apply``):
    ``apply_model`` with the model's segment, ``overlap=0``, no shifts, on the normalised mixture, and the training
    loss (per-source weights) against the sources."""
    model.eval()
    ref = next(model.parameters())
    total, count = 0.0, len(valid_set)
    with torch.no_grad():
        for index in progress(range(count), count, "valid"):
            if isinstance(recipe, UMXTrainConfig):
                x, y = valid_set[index]
                loss = compute_loss(model, (x[None], y[None]), recipe, stft_config)
            else:
                sources = _tensor(valid_set[index], ref)  # (S, C, T), normalised
                mix = valid_set.mixture(index)  # the model's channels
                if valid_set.normalize:
                    mean, std = valid_set.track_statistics(index)
                    mix = (mix - np.float32(mean)) / np.float32(std)
                if isinstance(recipe, HTDemucsTrainConfig):
                    estimates = apply_htdemucs(model, _tensor(mix, ref), shifts=0, split=True, overlap=0.0)
                    loss = _valid_htdemucs_loss(estimates, sources, recipe)
                else:
                    estimates = apply_model(model, _tensor(mix, ref), shifts=0, split=False)
                    loss = F.l1_loss(estimates, sources) if recipe.loss == "l1" else F.mse_loss(estimates, sources)
            total += float(loss) / count
    return total


def _valid_htdemucs_loss(estimates: Tensor, sources: Tensor, recipe: HTDemucsTrainConfig) -> Tensor:
    """The training loss of one track: estimates and sources ``(S, C, T)`` as a batch of one."""
    est, src = estimates.reshape(1, *sources.shape), sources[None]
    dims = tuple(range(2, src.dim()))
    diff = (est - src).abs() if recipe.loss == "l1" else (est - src) ** 2
    return _weighted(diff.mean(dims).mean(0), recipe.weights)


def _all_mean(value: float, world_size: int, device: torch.device) -> float:
    if world_size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world_size


def _broadcast(value: float, world_size: int, device: torch.device) -> float:
    if world_size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t)


def init_process_group(rank: int, world_size: int, store: str, backend: str = "gloo") -> None:
    """Join replica ``rank`` of ``world_size`` to the default process group (``backend``: ``gloo`` on the CPU,
    ``nccl`` on GPUs), meeting the others through the file ``store`` (a path all processes share)."""
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size)


def data_parallel(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """``model`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` over the default process group
    (:func:`init_process_group`): rank 0's parameters and buffers are broadcast to every replica now (and the
    buffers before every forward), ``backward`` averages the gradients over the replicas. ``device``: the replica's
    CUDA device, or ``None`` / a CPU device."""
    device_ids = [device.index] if device is not None and device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


# --- beyond the lesson: one step's pieces, data-parallel gradients ----------------------------------------------------


def _weighted(per_source: Tensor, weights: Any) -> Tensor:
    """``sum(loss * w) / sum(w)`` over the last axis (sources) and any before it; ``weights`` empty: all 1."""
    w = torch.ones(per_source.shape[-1]) if weights is None or len(weights) == 0 else torch.tensor(list(weights))
    if w.shape[0] != per_source.shape[-1]:
        raise ValueError(f"{w.shape[0]} source weights for {per_source.shape[-1]} sources")
    w = w.to(per_source)
    return (per_source * w).sum() / w.sum()


def htdemucs_loss(model: nn.Module, sources: Tensor, weights: Any = None, loss: str = "l1") -> Tensor:
    """demucs 4's training loss on ``sources`` ``(B, S, C, T)``: the mixture is their sum, the estimates
    ``(B, S, C, T)`` (the model's mode is kept: in train mode HTDemucs runs at ``T``).

    ``l1``: ``|e - s|`` averaged over (channels, time), then over the batch, one value per source; ``mse``:
    ``(e - s)^2`` averaged over (channels, time) only (upstream's MSE is summed over the batch); then
    ``sum(loss * weights) / sum(weights)`` (``weights``: one per source, ``None`` or empty: all 1).
    """
    estimates = model(sources.sum(dim=1))
    dims = tuple(range(2, sources.dim()))
    if loss == "l1":
        per = F.l1_loss(estimates, sources, reduction="none").mean(dims).mean(0)
    elif loss == "mse":
        per = F.mse_loss(estimates, sources, reduction="none").mean(dims)
    else:
        raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")
    return _weighted(per, weights)


def set_transformer_dropout(model: nn.Module, p: float) -> None:
    """Set HTDemucs's transformer dropout (``t_dropout``: every ``nn.Dropout`` and the attention's dropout) to
    ``p``; the parity steps use 0 (no port draws torch's masks)."""
    for module in _unwrap(model).modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif isinstance(module, nn.MultiheadAttention):
            module.dropout = p


def _tensor(value: Any, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return torch.from_numpy(np.ascontiguousarray(value)).to(device=like.device, dtype=like.dtype)


def _unpack(batch: Any, recipe: Recipe, like: Tensor) -> tuple[Tensor, ...]:
    """``(x, y)`` for UMX, ``(sources,)`` for Demucs, from a mapping (the fixtures' ``inputs``), a tuple or an array."""
    if isinstance(recipe, UMXTrainConfig):
        x, y = (batch["x"], batch["y"]) if isinstance(batch, Mapping) else batch
        return _tensor(x, like), _tensor(y, like)
    sources = batch["sources"] if isinstance(batch, Mapping) else batch
    return (_tensor(sources, like),)


def compute_loss(
    model: nn.Module, batch: Any, recipe: Recipe, stft_config: STFTConfig | None = None, window: Tensor | None = None
) -> Tensor:
    """The recipe's loss on one batch (see :func:`umx_loss`, :func:`demucs_loss`, :func:`htdemucs_loss`); the
    model's mode is kept."""
    ref = next(_unwrap(model).parameters())
    if isinstance(recipe, UMXTrainConfig):
        x, y = _unpack(batch, recipe, ref)
        config = stft_config or train_stft(_unwrap(model).config, recipe.stft_center)
        return umx_loss(model, x, y, config, window)
    (sources,) = _unpack(batch, recipe, ref)
    if isinstance(recipe, HTDemucsTrainConfig):
        return htdemucs_loss(model, sources, recipe.weights, recipe.loss)
    return demucs_loss(model, sources, recipe.loss)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    recipe: Recipe,
    stft_config: STFTConfig | None = None,
    window: Tensor | None = None,
) -> float:
    """Zero the gradients, forward and backward one batch, one optimiser step; returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = compute_loss(model, batch, recipe, stft_config, window)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _ddp_grads_worker(
    rank: int,
    world_size: int,
    store: str,
    results: str,
    config: UMXConfig | DemucsConfig | HTDemucsConfig,
    weights: dict[str, np.ndarray],
    batch: Any,
    recipe: Recipe,
    dtype: str,
    lstm_dropout: float | None,
    stft_config: STFTConfig | None,
    kernels: dict[str, np.ndarray] | None,
) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    init_process_group(rank, world_size, store)
    try:
        model = from_canonical(config, weights, dtype=dtype)
        if lstm_dropout is not None:
            set_lstm_dropout(model, lstm_dropout)
        if kernels is not None:
            model.set_resample_kernels(kernels)
        ddp = data_parallel(model)
        loss, grads = loss_and_grads(ddp, shard_batch(batch, rank, world_size), recipe, stft_config)
        buffers = {k: v.detach().numpy() for k, v in model.named_buffers()}
        np.savez(
            os.path.join(results, f"rank{rank}.npz"),
            loss=np.float64(loss),
            **{f"grad/{k}": v for k, v in grads.items()},
            **{f"buffer/{k}": v for k, v in buffers.items()},
        )
        # every replica past its last collective before any tears the group down: a rank that destroyed the gloo
        # group while its peer was still finishing the gradient all-reduce aborted the peer ("terminate called
        # without an active exception", SIGABRT: seen once in a CI run of parity_tests/torch/test_train.py)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def data_parallel_loss_and_grads(
    config: UMXConfig | DemucsConfig | HTDemucsConfig,
    weights: Mapping[str, np.ndarray],
    batch: Any,
    recipe: Recipe,
    world_size: int = 2,
    dtype: str = "float64",
    lstm_dropout: float | None = None,
    stft_config: STFTConfig | None = None,
    kernels: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """One DDP step over ``world_size`` CPU processes (``gloo``), each on its contiguous shard of ``batch``.

    Args:
        config, weights: the model and its canonical weights (cast to ``dtype``).
        batch, recipe, stft_config: as :func:`loss_and_grads` (the whole batch: each replica takes its shard).
        lstm_dropout: set the UMX LSTM dropout (:func:`set_lstm_dropout`; 0 for parity).
        kernels: Demucs: resampling kernels to inject (:meth:`~umx_torch.demucs.Demucs.set_resample_kernels`).

    Returns:
        One dict per replica: ``"loss"`` (its shard's loss), ``"grads"`` (the all-reduced average: the same on every
        replica), ``"buffers"`` (its BatchNorm running statistics after the step).
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="umx-torch-ddp-") as tmp:
        store = os.path.join(tmp, "store")
        args = (world_size, store, tmp, config, dict(weights), batch, recipe, dtype, lstm_dropout, stft_config)
        args += (dict(kernels) if kernels is not None else None,)
        mp.spawn(_ddp_grads_worker, args=args, nprocs=world_size, join=True)
        out = []
        for rank in range(world_size):
            with np.load(os.path.join(tmp, f"rank{rank}.npz")) as f:
                out.append(
                    {
                        "loss": float(f["loss"]),
                        "grads": {k[5:]: f[k] for k in f.files if k.startswith("grad/")},
                        "buffers": {k[7:]: f[k] for k in f.files if k.startswith("buffer/")},
                    }
                )
    return out
