"""The shared stage tests (``parity_tests.harness``) run on the TensorFlow port."""

from __future__ import annotations

from parity_tests.harness import *  # noqa: F403  (the shared stage tests)
from parity_tests.tf.helpers import port  # noqa: F401  (the adapter fixture)
