"""``python -m unmix.parity``: the ``unmix-parity`` command."""

from unmix.parity.cli import main

raise SystemExit(main())
