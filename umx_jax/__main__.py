"""``python -m umx_jax separate INPUT... --model MODEL [options]``: ``unmix-separate --framework jax``, the
same code (:mod:`unmix.separate_cli`)."""

from __future__ import annotations

from unmix.quick_exit import run_console
from unmix.separate_cli import port_main

if __name__ == "__main__":
    run_console(lambda: port_main("jax"))
