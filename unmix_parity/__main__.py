"""``python -m unmix_parity``: the ``unmix-parity`` command."""

from .cli import main

raise SystemExit(main())
