"""``python -m unmix.parity``: the ``unmix-parity`` command."""

from unmix.parity.cli import console_main

console_main()
