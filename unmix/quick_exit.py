"""How the console scripts end: once ``main`` has returned, the process ends without Python's teardown.

When a command's ``main`` returns, every file it wrote is complete and closed. Python then finalises the
interpreter: it joins the remaining threads, runs the ``atexit`` handlers, and destroys every module and object,
TensorFlow's, PyTorch's and XLA's included. On this project's 2-core machine that last part costs a warm 30-s
``unmix-separate`` about 0.4-0.5 s with TensorFlow, 0.25 s with PyTorch and 0.1 s with JAX
(``python -m benchmarks separate``, ``benchmarks/results/separate_warm_umx30_quick_exit.json``), for nothing the
user keeps.

:func:`run_console` registers, before any framework is imported, an ``atexit`` handler that runs last (``atexit``
runs handlers last-registered first): the threads are joined and every other handler (the frameworks', logging's)
has run by then; it flushes the standard streams and ends the process with ``os._exit`` and ``main``'s exit
code. The same idea as Instagram's workers, which end with ``os._exit`` to skip the final garbage collection.

Only the console scripts and ``python -m`` entry points go through it. Code that calls a ``main`` itself (tests,
notebooks, :mod:`unmix.__main__`) keeps its interpreter; a ``main`` that raises (a traceback, ``--help``'s
``SystemExit``) leaves the normal way, so its message and exit status are Python's.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = ["run_console"]

_exit_code: int | None = None  # set once main returned; None: leave through Python's normal shutdown


def _leave() -> None:
    if _exit_code is None:
        return
    logging.shutdown()  # registered with atexit before this handler (logging was imported first): runs it now
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written to it anyway
            pass
    os._exit(_exit_code)


def run_console(main: Callable[[], int | None]) -> NoReturn:
    """Run ``main()`` and end the process with its exit code (``None``: 0), skipping the interpreter's teardown.

    Call it from a console script's entry point before importing any framework: its ``atexit`` handler must be
    registered before theirs, so that it runs after them.
    """
    global _exit_code
    atexit.register(_leave)
    code = main()
    _exit_code = int(code or 0)
    sys.exit(_exit_code)
