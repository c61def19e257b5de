"""PyTorch port tests: one intra-op thread per pytest-xdist worker.

With ``-n 2`` on a 2-core machine, two workers of two OpenMP threads each oversubscribe the CPU and OpenMP's
spinning barriers then stall the recurrent layers by orders of magnitude. One thread per worker keeps the suite
fast and its timings stable.
"""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
