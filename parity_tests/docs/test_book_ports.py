"""The book's HTDemucs pages (issue 25): the ``%% ports`` directive (a spec object, then one tab per port with the
definitions the page names), the pages' coverage of the ports' HTDemucs modules, and the HTDemucs mapping table
(read off a stand-in port with known rules; a port without the model says "not yet").

Main environment; nothing here imports a framework. The directive's own cases run on a scratch checkout of a few
files, so they do not depend on which ports have HTDemucs today.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from book import ROOT, mapping, mapping_page
from book.catalog import PORT_LABELS
from book.directives import Expander, read_pages
from book.extract import Sources
from book.source_index import locate, source_of
from core_spec.params import parameter_inventory
from core_spec.public_api import PORTS

SPEC_FILE = "core_spec/reference/htdemucs_spec.py"
LINE = "%% ports reference.htdemucs_spec.magnitude torch=magnitude jax=magnitude"


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A checkout holding the spec's and two ports' ``htdemucs_spec.py`` only (no TensorFlow, no NNabla)."""
    for path in (SPEC_FILE, "umx_torch/htdemucs_spec.py", "umx_jax/htdemucs_spec.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((ROOT / path).read_text())
    return tmp_path


def _expand(root: Path, line: str, allow_missing: bool = False) -> tuple[Expander, str]:
    expander = Expander(Sources(root), allow_missing)
    return expander, expander.expand(line + "\n", "x.md")


def _tab(text: str, label: str) -> str:
    """The body of the tab titled ``label`` (up to the next tab)."""
    match = re.search(rf'^=== "{label}"\n(.*?)(?=^=== "|\Z)', text, re.M | re.S)
    assert match is not None, f"no tab {label}"
    return match.group(1)


def _block_title(root: Path, path: str, name: str, label: str) -> str:
    found = locate((root / path).read_text(), name)
    assert found is not None
    return f'title="{label} · {path}:{found.lineno}-{found.end_lineno}" linenums="{found.lineno}"'


def test_ports_shows_the_spec_then_each_port_in_its_tab(scratch: Path) -> None:
    expander, text = _expand(scratch, LINE)
    assert expander.problems == []
    spec_at = text.index(_block_title(scratch, SPEC_FILE, "magnitude", "NumPy reference: magnitude"))
    tabs = [text.index(f'=== "{label}"') for label in PORT_LABELS.values()]
    assert spec_at < tabs[0] and tabs == sorted(tabs), "the spec, then the tabs in PORTS order"
    for port in ("umx_torch", "umx_jax"):
        path = f"{port}/htdemucs_spec.py"
        body = _tab(text, PORT_LABELS[port])
        assert _block_title(scratch, path, "magnitude", "magnitude") in body
        code = source_of((scratch / path).read_text(), "magnitude").rstrip("\n")
        assert code in textwrap.dedent(body)
        assert "magnitude" in expander.shown[port] and (path, "magnitude") in expander.quoted
    for port in ("umx_tf", "umx_nnabla"):
        body = _tab(text, PORT_LABELS[port])
        assert "not yet" in body and f"`{port}/htdemucs_spec.py`" in body
        assert expander.shown[port] == set()


def test_ports_names_a_missing_definition(scratch: Path) -> None:
    expander, _ = _expand(scratch, LINE.replace("jax=magnitude", "jax=magnitud"))
    assert expander.problems == ["umx_jax/htdemucs_spec.py: magnitud is not defined (quoted on book/pages/x.md)"]
    expander, text = _expand(scratch, LINE.replace("torch=magnitude", "torch=HTDemucs.magnitude"), allow_missing=True)
    assert expander.problems == [
        "umx_torch/htdemucs_spec.py: HTDemucs.magnitude is not defined (quoted on book/pages/x.md)"
    ]
    assert "Not in the code yet" in _tab(text, "PyTorch") and "Not in the code yet" not in _tab(text, "JAX")
    expander, _ = _expand(scratch, LINE.replace("magnitude torch", "magnitud torch"))
    assert expander.problems == [
        f"{SPEC_FILE}: magnitud is not defined (spec object core_spec.reference.htdemucs_spec.magnitud)"
    ]


def test_ports_requires_every_port_that_has_the_module(scratch: Path) -> None:
    """A port that gains the module (HTDemucs in TensorFlow, issue 26) fails the build until the page names its
    version."""
    (scratch / "umx_tf").mkdir()
    (scratch / "umx_tf" / "htdemucs_spec.py").write_text("def magnitude(z):\n    return z\n")
    expander, _ = _expand(scratch, LINE)
    assert expander.problems == [
        f"book/pages/x.md: '{LINE}': umx_tf/htdemucs_spec.py exists, so the page must name its version "
        "(tensorflow=NAME)"
    ]
    expander, text = _expand(scratch, LINE + " tensorflow=magnitude")
    assert expander.problems == []
    assert _block_title(scratch, "umx_tf/htdemucs_spec.py", "magnitude", "magnitude") in _tab(text, "TensorFlow")


@pytest.mark.parametrize(
    "arguments",
    ["torch=magnitude tf=magnitude", "torch= jax=magnitude", "torch=magnitude torch=spec", "magnitude"],
)
def test_ports_refuses_malformed_arguments(scratch: Path, arguments: str) -> None:
    line = f"%% ports reference.htdemucs_spec.magnitude {arguments}"
    expander, _ = _expand(scratch, line)
    assert len(expander.problems) == 1
    assert expander.problems[0].startswith(f"book/pages/x.md: '{line}': ")
    assert "is not PORT=NAME[,NAME...] with PORT one of torch, tensorflow, jax, nnabla" in expander.problems[0]


def test_ports_shows_several_definitions_and_builtin_layers() -> None:
    line = (
        "%% ports reference.htdemucs_transformer.multihead_attention "
        "torch=_attention,builtin:torch.nn.MultiheadAttention tensorflow=MultiheadAttention "
        "jax=MultiheadAttention,_group_norm_1 nnabla=MultiheadAttention"
    )
    expander, text = _expand(ROOT, line)
    assert expander.problems == []
    torch_tab = _tab(text, "PyTorch")
    assert 'built in: torch.nn.MultiheadAttention"' in torch_tab
    assert "https://docs.pytorch.org/docs/stable/generated/torch.nn.MultiheadAttention.html" in torch_tab
    assert "`umx_torch/htdemucs_transformer.py:" in torch_tab  # where the port calls it
    jax_tab = _tab(text, "JAX")
    path = "umx_jax/htdemucs_transformer.py"
    first = jax_tab.index(_block_title(ROOT, path, "MultiheadAttention", "MultiheadAttention"))
    assert first < jax_tab.index(_block_title(ROOT, path, "_group_norm_1", "_group_norm_1"))


def _public_definitions(path: Path) -> list[str]:
    """The classes and functions a module defines and lists in its ``__all__``."""
    tree = ast.parse(path.read_text())
    exported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            exported = set(ast.literal_eval(node.value))
    return [
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in exported
    ]


def test_the_htdemucs_pages_show_every_public_definition_of_every_port() -> None:
    """Every class and function a port's ``htdemucs*.py`` exports is shown on a page (by ``%% ports`` or
    ``%% source``), and every ``%% ports`` line of the book expands."""
    pages = read_pages(ROOT / "book" / "pages")
    expander = Expander(Sources(ROOT), mapping=lambda model: "", parity=lambda: "")
    texts = {file: expander.expand(text, file) for file, text in pages.items()}
    assert expander.problems == []
    assert sum(text.count("\n%% ports ") for text in pages.values()) >= 20
    expected = {
        (f"{port}/{path.name}", name)
        for port in PORTS
        for path in sorted((ROOT / port).glob("htdemucs*.py"))
        for name in _public_definitions(path)
    }
    assert {p for p, _ in expected} >= {f"umx_torch/htdemucs{m}.py" for m in ("", "_apply", "_layers", "_spec")}
    assert sorted(expected - expander.quoted) == [], "exported HTDemucs definitions no page shows"
    assert all("%% ports" not in text for text in texts.values())


# --- the HTDemucs mapping table ------------------------------------------------------------------------------------


def _jax_like(port: str, config: Any, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stand-in port with JAX's kind of rules: convolution kernels ``(*k, in, out)``, the frequency decoders'
    ``(in, out, K, 1)`` transposed kernels squeezed to ``(K, in, out)``, linear weights transposed."""
    out = {}
    for name, w in weights.items():
        w = np.asarray(w)
        if name.endswith("conv_tr.weight") and w.ndim == 4:
            out[name[: -len("weight")] + "kernel"] = w.reshape(w.shape[:3]).transpose(2, 0, 1)
        elif name.endswith("conv_tr.weight"):
            out[name[: -len("weight")] + "kernel"] = w.transpose(2, 0, 1)
        elif w.ndim >= 3:
            out[name[: -len("weight")] + "kernel"] = w.transpose(*range(2, w.ndim), 1, 0)
        elif w.ndim == 2:
            out[name + ".T"] = w.T
        else:
            out[name] = w
    return out


def test_mapping_probe_reads_htdemucs_rules_back_at_the_released_shapes() -> None:
    data = mapping.probe("fake", build=_jax_like, has=lambda port, model: model == "htdemucs")
    assert {m for m, d in data["models"].items() if "absent" in d} == {"umxhq", "demucs"}
    table = data["models"]["htdemucs"]
    inventory = parameter_inventory(mapping.MODELS["htdemucs"]())
    assert [(r["canonical"], tuple(r["shape"])) for r in table["rows"]] == [(n, tuple(s)) for n, s in inventory]
    assert table["unfed"] == []
    rows = {r["canonical"]: r["targets"] for r in table["rows"]}
    assert all(len(targets) == 1 for targets in rows.values())
    expected = {
        "decoder.0.conv_tr.weight": (
            "decoder.0.conv_tr.kernel",
            [8, 384, 192],
            "transpose (2, 0, 1, 3); reshape to (8, 384, 192)",
        ),
        "decoder.3.conv_tr.weight": (
            "decoder.3.conv_tr.kernel",
            [8, 48, 16],
            "transpose (2, 0, 1, 3); reshape to (8, 48, 16)",
        ),
        "tdecoder.3.conv_tr.weight": ("tdecoder.3.conv_tr.kernel", [8, 48, 8], "transpose (2, 0, 1)"),
        "encoder.0.conv.weight": ("encoder.0.conv.kernel", [8, 1, 4, 48], "transpose (2, 3, 1, 0)"),
        "channel_upsampler.weight": ("channel_upsampler.kernel", [1, 384, 512], "transpose (2, 1, 0)"),
        "crosstransformer.layers.0.self_attn.in_proj_weight": (
            "crosstransformer.layers.0.self_attn.in_proj_weight.T",
            [512, 1536],
            "transpose",
        ),
        "crosstransformer.layers.1.gamma_1.scale": ("crosstransformer.layers.1.gamma_1.scale", [512], "same layout"),
    }
    for name, (variable, shape, transform) in expected.items():
        assert rows[name] == [{"variable": variable, "shape": shape, "where": "", "transform": transform}], name


def test_a_port_without_the_model_says_not_yet(tmp_path: Path) -> None:
    assert mapping.has_model(ROOT, "umx_torch", "htdemucs") and mapping.has_model(ROOT, "umx_jax", "htdemucs")
    assert not mapping.has_model(tmp_path, "umx_torch", "htdemucs")
    data = mapping.probe("umx_tf", build=_jax_like, has=lambda port, model: False)
    assert data["models"]["htdemucs"] == {"absent": "umx_tf has no htdemucs module yet (umx_tf/htdemucs.py)"}
    assert data["models"]["umxhq"] == {"absent": "umx_tf has no umx module yet (umx_tf/umx.py)"}
    row = {"canonical": "a.weight", "shape": [3], "targets": [{"variable": "a.scale", "shape": [3], "where": ""}]}
    row["targets"][0]["transform"] = "same layout"
    present = {"rows": [row], "unfed": []}
    found = {port: {"models": {"htdemucs": present}} for port in ("umx_torch", "umx_jax")}
    found |= {port: data for port in ("umx_tf", "umx_nnabla")}
    text = mapping_page.markdown("htdemucs", found, {}, allow=False)
    for port, label in PORT_LABELS.items():
        tab = _tab(text, label)
        if port in ("umx_tf", "umx_nnabla"):
            assert f'{label}: not yet"' in tab and "has no htdemucs module yet" in tab
            assert "| canonical (upstream) |" not in tab
        else:
            assert "| `a.weight` | (3,) | `a.scale` | (3,) | whole | same layout |" in tab and "not yet" not in tab
