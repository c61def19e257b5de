"""The API reference pages: written at build time, rendered by mkdocstrings (Python handler, static analysis by
griffe: nothing is imported, so neither torch, TensorFlow, JAX nor NNabla is needed).

- ``api/core_spec/<module>.md``: one page per module of ``core_spec`` (every module of the package tree);
- ``api/<port>.md``: one page per port, a section per module of :data:`core_spec.public_api.MODULES` with the
  public names the port *defines* there (those of ``PUBLIC_NAMES`` and its lesson targets; a shared name it
  imports is documented once, in ``core_spec``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from book.source_index import definitions
from core_spec.public_api import BUILTIN, LESSONS, MODULES, PORTS, PUBLIC_NAMES

from .catalog import PORT_LABELS
from .extract import Sources, port_file

__all__ = ["core_modules", "nav", "pages", "port_members"]

PREFIX = "api"


def core_modules(root: Path) -> list[str]:
    """Dotted names of every module of ``core_spec`` (packages included, ``__main__`` left out), sorted."""
    out = []
    for path in sorted((Path(root) / "core_spec").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _uri(module: str) -> str:
    return f"{PREFIX}/{module.replace('.', '/')}.md" if module != "core_spec" else f"{PREFIX}/core_spec/index.md"


def port_members(sources: Sources, port: str, module: str) -> list[str]:
    """The public names ``port`` defines in ``module`` among ``PUBLIC_NAMES[module]`` and its lesson targets, in
    source order."""
    text = sources.text(port_file(port, module))
    if text is None:
        return []
    wanted = set(PUBLIC_NAMES.get(module, ()))
    wanted |= {
        lesson.ports[port].split(".", 1)[0]
        for lesson in LESSONS.get(module, ())
        if not lesson.ports[port].startswith(BUILTIN)
    }
    return list(dict.fromkeys(d.name for d in definitions(text) if d.name in wanted and not d.name.startswith("_")))


def pages(root: Path) -> dict[str, str]:
    """Page path (under the docs folder) -> Markdown, for every API page."""
    sources = Sources(root)
    out = {}
    for module in core_modules(root):
        out[_uri(module)] = f"# `{module}`\n\n::: {module}\n"
    for port in PORTS:
        parts = [
            f"# {PORT_LABELS[port]}: `{port}`\n\n"
            f"The public names `{port}` defines, module by module (the framework-neutral names it imports are "
            "documented once, under `core_spec`).\n"
        ]
        for module in MODULES:
            members = port_members(sources, port, module)
            if not members:
                continue
            listed = "".join(f"        - {m}\n" for m in members)
            parts.append(
                f"## `{port}.{module}`\n\n::: {port}.{module}\n    options:\n      show_root_heading: false\n"
                f"      members:\n{listed}"
            )
        out[f"{PREFIX}/{port}.md"] = "\n".join(parts)
    return out


def nav(root: Path) -> list[dict[str, Any]]:
    """The navigation section of the API pages."""
    core = [{module: _uri(module)} for module in core_modules(root)]
    ports = [{PORT_LABELS[port]: f"{PREFIX}/{port}.md"} for port in PORTS]
    return [{"core_spec": core}, {"Ports": ports}]
