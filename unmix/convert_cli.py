"""``unmix-convert`` (also ``unmix convert``): upstream weights -> the canonical format; trained targets -> one
separator; canonical weights -> upstream's own layouts.

Examples::

    unmix-convert vocals-b62c91ce.pth --model umxhq --out umxhq-vocals
    unmix-convert path/to/open-unmix-model/ --out mymodel             # folder written by scripts/train.py
    unmix-convert demucs-e07c671f.th --out demucs --to torch          # also write the PyTorch state dict
    unmix-convert demucs_quantized-07afea75.th --model demucs_quantized   # needs torch + diffq + demucs
    unmix-convert 955717e8-8726e21a.th -m htdemucs -o htdemucs          # demucs 4.x package (HTDemucs, v4)
    unmix-convert models/htdemucs_ft.yaml -o htdemucs_ft              # demucs 4.x bag: the yaml and its <sig>-*.th
    unmix-convert my_state_dict.pt -m htdemucs_6s -o mine             # bare HTDemucs state dict: name its preset
    unmix-convert run_vocals run_drums -o mine                        # unmix-train targets -> one separator
    unmix-convert mine.safetensors --export openunmix -o mine_umx     # -> umx --model mine_umx (needs torch)
    unmix-convert run_demucs --export demucs -o models/mine.th        # -> demucs.separate --models models -n mine

Exit status: 0 on success, 1 when the input cannot be converted or an output exists (message on stderr), 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from core_spec.configs import DEMUCS_PRESETS, HTDEMUCS_PRESETS, UMX_PRESETS
from unmix.convert import convert
from unmix.convert_targets import FRAMEWORKS
from unmix.export_upstream import FORMATS
from unmix.quick_exit import run_console
from weights_convert.sources import PRESET_ALIASES

__all__ = ["console_main", "build_parser", "main"]


def _list(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def build_parser() -> argparse.ArgumentParser:
    presets = sorted([*UMX_PRESETS, *DEMUCS_PRESETS, *HTDEMUCS_PRESETS, *PRESET_ALIASES])
    parser = argparse.ArgumentParser(
        prog="unmix-convert",
        description=(
            "Convert upstream Open-Unmix / Demucs v2 / HTDemucs (v4) weights (a .pth/.th file, a demucs 4.1.0 hub "
            "<sig>.safetensors, a demucs bag .yaml (or a folder holding one) with the files it names, or an openunmix "
            "model folder) to the "
            "canonical format (<out>.safetensors + <out>.json), without PyTorch; optionally also to a framework's "
            "own format. Loading never runs code from the file. Open-Unmix target networks in the canonical format "
            "(unmix-train run folders, <target>.safetensors files) are joined into one separator file. --export "
            "writes upstream's own layout instead (an openunmix model folder, a demucs package; needs torch)."
        ),
        epilog="See docs/weights.md for the formats read and the canonical format.",
    )
    parser.add_argument(
        "source",
        nargs="+",
        help=(
            "upstream weight file (.pth, .th, .pt, hub .safetensors), demucs bag .yaml (or a folder holding one and "
            "its files) or openunmix model folder; or canonical files: unmix-train run "
            "folder(s) or <target>.safetensors files (Open-Unmix targets, joined into one separator; several may "
            "be given), or one canonical file of a whole model"
        ),
    )
    parser.add_argument(
        "-o",
        "--out",
        help=(
            "output stem: writes OUT.safetensors and OUT.json (default: ./<source name>); with --export openunmix "
            "the model folder, with --export demucs the package file (.th added if missing)"
        ),
    )
    parser.add_argument(
        "--export",
        choices=FORMATS,
        help=(
            "write upstream's layout instead of the canonical file: 'openunmix' (a model folder for openunmix 1.3.0's "
            "umx --model / load_separator), 'demucs' (a demucs 2.0.3 package for demucs.separate --models); "
            "needs torch and -o"
        ),
    )
    parser.add_argument(
        "-m",
        "--model",
        metavar="PRESET",
        help=(
            f"use and check against this preset ({', '.join(presets)}); needed for a bare HTDemucs state dict whose "
            "shapes fit more than one preset"
        ),
    )
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument(
        "--to",
        action="append",
        type=_list,
        default=[],
        metavar="FW[,FW]",
        help=f"also write a framework's own format ({', '.join(FRAMEWORKS)}) through its port's weights.py",
    )
    parser.add_argument("--targets", type=_list, help="folder(s): the targets to read, in order (default: all found)")
    parser.add_argument("--target", help="single Open-Unmix file: its target name (default: from the file name)")
    parser.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bar while reading tensors (auto: for files of 64 MiB of tensors or more)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    frameworks = [fw for group in args.to for fw in group]
    unknown = [fw for fw in frameworks if fw not in FRAMEWORKS]
    if unknown:
        parser.error(f"--to: unknown framework(s) {', '.join(unknown)}; choose from {', '.join(FRAMEWORKS)}")
    if args.export and frameworks:
        parser.error("--to writes a framework's format beside a canonical file; --export writes upstream's layout only")
    if args.export and args.out is None:
        what = "model folder" if args.export == "openunmix" else ".th package"
        parser.error(f"--export {args.export} needs -o/--out: the {what} to write")
    source = args.source[0] if len(args.source) == 1 else args.source
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # not the conversion's: keras's np.array of TensorFlow 2.21 tensors warns once a variable under --to tf
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            report = convert(
                source,
                out=args.out,
                model=args.model,
                force=args.force,
                to=frameworks,
                targets=args.targets,
                target=args.target,
                progress=args.progress,
                export=args.export,
            )
        except (ValueError, OSError) as e:
            for w in caught:
                print(f"unmix-convert: warning: {w.message}", file=sys.stderr)
            print(f"unmix-convert: error: {e}", file=sys.stderr)
            return 1
    for w in caught:
        print(f"unmix-convert: warning: {w.message}", file=sys.stderr)
    if not args.quiet:
        print("\n".join(report.lines()))
    return 0


def console_main() -> NoReturn:
    """The ``unmix-convert`` console script and ``python -m unmix.convert_cli``: :func:`main`, then the process ends
    without the interpreter's teardown (:mod:`unmix.quick_exit`)."""
    run_console(main)


if __name__ == "__main__":
    console_main()
