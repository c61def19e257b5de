"""``python -m weights_convert``: the ``unmix-convert`` command."""

from .cli import main

raise SystemExit(main())
