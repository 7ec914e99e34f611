"""``e3elastic plot``: directional Young's modulus and linear compressibility of a given or
predicted tensor, and parity plots of an evaluation."""

from __future__ import annotations

import argparse
import sys

from .errors import CLIError
from .evaluate import run_evaluation
from .options import SPLIT_CHOICES
from .tensor import check_voigt, read_voigt_file


def _parity(args: argparse.Namespace) -> int:
    from e3elastic import plots

    if not args.model:
        raise CLIError("plot parity needs --model (a model name, bundle or run folder)")
    m = run_evaluation(args)
    out = args.out if args.out.endswith((".png", ".svg")) else f"{args.out}.{args.format}"
    arrays = m["arrays"]
    path = plots.parity(
        arrays["pred_voigt"],
        arrays["true_voigt"],
        out,
        title=f"{m['evaluated']} (n={m['metrics']['n']})",
    )
    print(path)
    return 0


def _tensors_of(src: str, args: argparse.Namespace) -> list[tuple[object, str, str]]:
    """(Voigt matrix, title, file-name suffix) of each tensor of one input: read (``voigt``;
    ``file[i]`` for each of a file of several matrices) or predicted (``structure``)."""
    if args.kind == "voigt":
        if not src.lower().endswith((".txt", ".csv", ".json")):
            raise CLIError(f"{src}: plot voigt reads a 6x6 matrix (.txt, .csv or .json)")
        voigt = read_voigt_file(src)
        batch = voigt.ndim == 3
        out = []
        for i, v in enumerate(voigt if batch else [voigt]):
            name = f"{src}[{i}]" if batch else src
            try:
                v, note = check_voigt(v, symmetrize=args.symmetrize)
            except CLIError as err:
                raise CLIError(f"{name}: {err}") from None
            if note:
                print(f"note: {name}: {note}", file=sys.stderr)
            out.append((v, name, f"_{i}" if batch else ""))
        return out
    from e3elastic import inference, runtime

    runtime.enable_compilation_cache()
    [r] = inference.predict([src], model=args.model, symmetrize=args.symmetrize)
    if r["error"] is not None:
        raise CLIError(f"{src}: {r['error']}")
    return [(r["voigt_GPa"], f"{r['formula']} ({src}, predicted)", "")]


def _cmd_plot(args: argparse.Namespace) -> int:
    from e3elastic import plots

    if args.kind == "parity":
        return _parity(args)
    if not args.inputs:
        raise CLIError(f"plot {args.kind} needs a structure file or a 6x6 Voigt file")
    for src in args.inputs:
        stem = src.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        base = f"{args.out}_{stem}" if len(args.inputs) > 1 else args.out
        for voigt, title, suffix in _tensors_of(src, args):
            try:
                paths = plots.plot_tensor(voigt, base + suffix, fmt=args.format, title=title)
            except (ValueError, ImportError) as e:
                raise CLIError(f"{src}: {e}") from None
            for p in paths:
                print(p)
    return 0


def add_parser(sub) -> None:
    pl = sub.add_parser(
        "plot",
        help="directional Young's modulus, linear compressibility and parity plots",
        description="'structure': predict C for structure files and plot it; 'voigt': plot a "
        "given 6x6 tensor; 'parity': predicted against DFT values of an evaluation run.",
    )
    pl.add_argument("kind", choices=("structure", "voigt", "parity"))
    pl.add_argument("inputs", nargs="*", help="structure files (structure) or 6x6 files (voigt)")
    pl.add_argument("--model", default=None, help="model name or folder")
    pl.add_argument("--data", default=None, help="data for 'parity'")
    pl.add_argument("--split", default="test", choices=SPLIT_CHOICES)
    pl.add_argument(
        "--symmetrize",
        action="store_true",
        help="structure: impose the point group exactly; voigt: use (C + C^T)/2 for a matrix "
        "that is not symmetric",
    )
    pl.add_argument("--out", default="e3elastic_plot", help="output file prefix")
    pl.add_argument("--format", default="png", choices=("png", "svg"))
    pl.set_defaults(func=_cmd_plot)
