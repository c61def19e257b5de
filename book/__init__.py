"""The side-by-side book (issue 17): a MkDocs + Material site generated from the code.

- :mod:`book.catalog`: the pages, their order and the ``Lesson.page`` values each one hosts; port labels.
- :mod:`book.extract`: the code of a lesson, extracted by name from the spec and the four ports
  (:func:`book.source_index.source_of`), with its file and lines; a missing target is a :class:`MissingTarget`.
- :mod:`book.render`: Markdown for code blocks, content tabs and notes.
- :mod:`book.directives`: the ``%% ...`` lines of the pages and what they expand to.
- :mod:`book.mapping`: the parameter-mapping tables, read off each port's own ``from_canonical`` (run in the
  port's environment, cached under ``build/book``).
- :mod:`book.parity`: the parity page from the last ``make test`` report.
- :mod:`book.api`: the generated API reference pages (mkdocstrings, static analysis).
- :mod:`book.hooks`: the MkDocs hook that ties them together (``hooks:`` in ``mkdocs.yml``).

The Markdown sources are in ``book/pages`` (``docs_dir``). Nothing here imports a deep-learning framework; the
mapping probe does, in a subprocess of the port's environment.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""
