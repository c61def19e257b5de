"""The side-by-side book (issue 17, ``book/``): its pages cover the alignment table and every public name, its
mapping tables cover the inventory, and a missing target fails the build with a message naming it.

Main environment (``mkdocs`` and the docs pins are installed in ``.venv``); the mapping tables are probed in each
port's environment by :func:`book.mapping.tables` (cached under ``build/book``, shared with ``make docs``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from book import ROOT, mapping, parity
from book.catalog import COMPONENTS, lessons
from book.directives import Expander, placement_problems, read_pages
from book.extract import Sources, lesson_problems
from core_spec.params import parameter_inventory
from core_spec.public_api import PORTS, PUBLIC_NAMES

PAGES = ROOT / "book" / "pages"


def _expand_all(root: Path, allow_missing: bool = False) -> tuple[Expander, dict[str, str]]:
    expander = Expander(Sources(root), allow_missing, mapping=lambda model: "", parity=lambda: "")
    pages = read_pages(root / "book" / "pages")
    return expander, {file: expander.expand(text, file) for file, text in pages.items()}


def test_every_lesson_sits_on_its_page() -> None:
    assert sorted(c.file for c in COMPONENTS) == sorted(set(c.file for c in COMPONENTS))
    for component in COMPONENTS:
        assert (PAGES / component.file).is_file(), component.file
    assert placement_problems(read_pages(PAGES)) == []
    assert len(lessons()) == sum(1 for _ in lessons())  # unique keys (lessons() raises on a duplicate)


def test_every_lesson_target_can_be_extracted() -> None:
    """The strict build's first check, on this checkout: the spec and every port define every lesson's target."""
    assert lesson_problems(Sources(ROOT)) == []


def test_every_public_name_of_every_port_is_on_a_page() -> None:
    expander, texts = _expand_all(ROOT)
    assert expander.problems == []
    missing = [
        f"{port}: {name} (PUBLIC_NAMES[{module!r}])"
        for port in PORTS
        for module, names in PUBLIC_NAMES.items()
        for name in names
        if name not in expander.shown[port]
    ]
    assert missing == [], "public names no page shows"
    everything = "\n".join(texts.values())
    for names in PUBLIC_NAMES.values():
        for name in names:
            assert name in everything


@pytest.fixture(scope="module")
def tables() -> tuple[dict, dict]:
    return mapping.tables(ROOT, say=lambda text: None)


@pytest.mark.parametrize("model", sorted(mapping.MODELS))
@pytest.mark.parametrize("port", list(PORTS))
def test_mapping_table_lists_the_inventory(tables: tuple[dict, dict], port: str, model: str) -> None:
    found, errors = tables
    assert port not in errors, errors.get(port)
    data = found[port]["models"][model]
    if "absent" in data:  # a port without the model's module (HTDemucs in TensorFlow and NNabla, issue 26)
        assert not mapping.has_model(ROOT, port, model), data["absent"]
        return
    inventory = parameter_inventory(mapping.MODELS[model]())
    assert [(r["canonical"], tuple(r["shape"])) for r in data["rows"]] == [(n, tuple(s)) for n, s in inventory]
    filled: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for row in data["rows"]:
        assert row["targets"], f"{row['canonical']} goes to no {port} variable"
        for target in row["targets"]:
            share = 0.5 if "folded bias" in target["transform"] else 1.0  # two tensors fill the same places
            filled[target["variable"]] = filled.get(target["variable"], 0.0) + share * int(np.prod(row["shape"]))
            sizes[target["variable"]] = int(np.prod(target["shape"]))
    holes = {v: (filled[v], sizes[v]) for v in sizes if filled[v] != sizes[v]}
    assert holes == {}, "framework variables not exactly filled by the canonical tensors"


def _fake_build(port: str, config: Any, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stand-in port with known rules: transpose 2-D weights, flip-and-permute conv kernels, fold and stack
    LSTM biases per direction."""
    out = {}
    biases: dict[str, list[np.ndarray]] = {}
    for name, w in weights.items():
        w = np.asarray(w)
        if "bias_ih_l" in name or "bias_hh_l" in name:
            layer = name.replace("bias_ih_", "bias_").replace("bias_hh_", "bias_").replace("_reverse", "")
            key = f"{layer}[{'1' if name.endswith('_reverse') else '0'}]"
            biases.setdefault(key, []).append(w)
        elif w.ndim == 2:
            out[name + ".T"] = w.T
        elif w.ndim == 3:
            out[name + ".kernel"] = np.flip(w, -1).transpose(2, 1, 0)
        else:
            out[name] = w
    stacks: dict[str, dict[str, np.ndarray]] = {}
    for key, (ih, hh) in biases.items():
        layer, direction = key[:-3], key[-2]
        stacks.setdefault(layer, {})[direction] = ih + hh
    for layer, by_direction in stacks.items():
        out[layer] = np.stack([by_direction[d] for d in sorted(by_direction)])
    return out


def test_mapping_probe_reads_known_rules_back() -> None:
    data = mapping.probe("fake", build=_fake_build)
    rows = {r["canonical"]: r["targets"] for r in data["models"]["umxhq"]["rows"]}
    assert rows["fc1.weight"] == [
        {"variable": "fc1.weight.T", "shape": [2974, 512], "where": "", "transform": "transpose"}
    ]
    assert rows["lstm.bias_hh_l2_reverse"] == [
        {
            "variable": "lstm.bias_l2",
            "shape": [2, 1024],
            "where": "[1]",
            "transform": "plus lstm.bias_ih_l2_reverse (one folded bias)",
        }
    ]
    demucs = {r["canonical"]: r["targets"] for r in data["models"]["demucs"]["rows"]}
    assert demucs["decoder.0.2.weight"] == [
        {
            "variable": "decoder.0.2.weight.kernel",
            "shape": [8, 1024, 2048],
            "where": "",
            "transform": "transpose (2, 1, 0); flip axis 0",
        }
    ]


def test_mapping_probe_refuses_what_it_cannot_name() -> None:
    def scrambled(port: str, config: Any, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = _fake_build(port, config, weights)
        w = out["fc1.weight.T"]
        out["fc1.weight.T"] = np.random.default_rng(0).permutation(w.reshape(-1)).reshape(w.shape)
        return out

    with pytest.raises(mapping.MappingError, match=r"fc1\.weight\.T: fc1\.weight is rearranged"):
        mapping.probe("fake", build=scrambled)


@pytest.fixture(scope="module")
def renamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of what the book reads, with ``complex_norm`` renamed in one port (``umx_jax``)."""
    root = tmp_path_factory.mktemp("book")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("core_spec", "book", "docs", *PORTS):
        shutil.copytree(ROOT / folder, root / folder, ignore=ignore)
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    path = root / "umx_jax" / "transforms.py"
    text = path.read_text()
    assert text.count("def complex_norm(") == 1
    path.write_text(text.replace("def complex_norm(", "def complex_magnitude("))
    return root


RENAMED = (
    "umx_jax/transforms.py: complex_norm is not defined (port umx_jax, module transforms, name complex_norm: "
    "lesson transforms.complex_norm of core_spec.public_api.LESSONS['transforms'], shown on book/pages/stft.md)"
)


def test_a_renamed_port_function_is_named_by_the_checks(renamed: Path) -> None:
    """The rename adds exactly one problem, the line naming file, port, module, name and page (compared with the
    checkout it was copied from, whatever that one still lacks)."""
    before = set(lesson_problems(Sources(ROOT)))
    assert set(lesson_problems(Sources(renamed))) - before == {RENAMED}
    expander, _ = _expand_all(ROOT)
    before = set(expander.problems)
    expander, _ = _expand_all(renamed)
    assert set(expander.problems) - before == {RENAMED}
    expander, texts = _expand_all(renamed, allow_missing=True)  # the development build: a visible placeholder
    assert "Not in the code yet" in texts["stft.md"] and RENAMED in texts["stft.md"]


def test_a_renamed_port_function_fails_the_build(renamed: Path) -> None:
    from mkdocs.config import load_config
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import Files

    from book import hooks

    config = load_config(str(renamed / "mkdocs.yml"))
    hooks.on_config(config)
    with pytest.raises(PluginError) as raised:
        hooks.on_files(Files([]), config)
    assert RENAMED in str(raised.value)


def test_parity_page_without_a_report_says_how_to_make_one() -> None:
    text = parity.markdown([], [], heatmap=False)
    assert "No parity report yet" in text and "make test" in text


def test_parity_groups_keep_the_worst_figures() -> None:
    rows = [
        dict(suite="jax", stage="stft", dtype="float32", device="cpu", rel=r, max_abs=a, snr_db=s, ok=ok)
        for r, a, s, ok in ((1e-7, 2e-6, 130.0, True), (3e-7, 1e-6, 120.0, False))
    ]
    (group,) = parity.groups(rows)
    assert (group.framework, group.n, group.rel, group.max_abs, group.snr_db, group.failed) == (
        "JAX",
        2,
        3e-7,
        2e-6,
        120.0,
        1,
    )
