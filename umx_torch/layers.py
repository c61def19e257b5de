"""The building blocks of the two networks: all of them are PyTorch's own layers, with upstream's defaults.

The spec writes each one out (``core_spec.reference.layers``); upstream (openunmix 1.3.0, demucs 2.0.3) uses
PyTorch's modules, so this port does too, and the state-dict names are upstream's by construction:

====================================  ==========================================================================
spec (``core_spec.reference.layers``)  PyTorch
====================================  ==========================================================================
``linear``                            :class:`torch.nn.Linear` (UMX: ``bias=False``)
``batch_norm``                        :class:`torch.nn.BatchNorm1d` in eval mode (``eps=1e-5``)
``batch_norm_train``                  :class:`torch.nn.BatchNorm1d` in train mode (momentum 0.1, unbiased running var)
``lstm``                              :class:`torch.nn.LSTM` (gates ``i, f, g, o``; ``bias_ih + bias_hh``)
``glu``                               :class:`torch.nn.GLU` (``dim=1``)
``conv1d``                            :class:`torch.nn.Conv1d`
``conv_transpose1d``                  :class:`torch.nn.ConvTranspose1d`
====================================  ==========================================================================

The one helper here is training-only: :func:`set_lstm_dropout` (upstream trains UMX with dropout 0.4 between its
LSTM layers, :attr:`core_spec.configs.UMXConfig.lstm_dropout`; the gradient-parity tests switch it off).
"""

from __future__ import annotations

from torch import nn

__all__ = ["set_lstm_dropout"]


def set_lstm_dropout(model: nn.Module, p: float) -> nn.Module:
    """Set the dropout between stacked LSTM layers (upstream UMX: 0.4 in training). The gradient-parity tests set 0:
    no two frameworks draw the same dropout masks. ``model`` may be a DDP wrapper (its modules include the model's)."""
    for module in model.modules():
        if isinstance(module, nn.LSTM):
            module.dropout = float(p) if module.num_layers > 1 else 0.0
    return model
