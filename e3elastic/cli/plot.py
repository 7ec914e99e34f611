"""``e3elastic plot``: directional Young's modulus and linear compressibility of a given or
predicted tensor, and parity plots of an evaluation.

``structure`` takes files, folders and globs as ``predict`` does. A structure that cannot be
predicted (or a tensor that cannot be drawn) is reported on stderr with its reason, the others
are still drawn, and the exit status is then 1. Each prediction's domain warnings (``vacuum``,
``unseen-element``, ...) go to stderr and their codes into the figures' titles.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from .errors import CLIError
from .evaluate import run_evaluation
from .options import SPLIT_CHOICES
from .tensor import check_voigt, read_voigt_file


class _Input(NamedTuple):
    """One input file: its tensors (Voigt matrix in GPa, figure title, file-name suffix), the
    prediction's warnings (``"code: sentence"``), or why it has no tensor."""

    src: str
    tensors: list[tuple[Any, str, str]]
    warnings: tuple[str, ...] = ()
    error: str | None = None


def _check_out_folder(out: str) -> None:
    """Fail before any work when the folder the figures go into is missing or read-only, as
    ``predict`` does for its ``--out``."""
    parent = Path(out + "_").parent  # "figs/si" and "figs/" both write into figs
    if not parent.is_dir():
        raise CLIError(f"--out {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"--out {out}: the folder {parent} is not writable")


def _parity(args: argparse.Namespace) -> int:
    from e3elastic import plots

    if not args.model:
        raise CLIError("plot parity needs --model (a model name, bundle or run folder)")
    _check_out_folder(args.out)
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


def _read_voigt(src: str, symmetrize: bool) -> list[tuple[Any, str, str]]:
    """(Voigt matrix, title, file-name suffix) of each matrix of one file (``file[i]`` for each of
    a file of several); a file that cannot be used raises :class:`CLIError`."""
    if not src.lower().endswith((".txt", ".csv", ".json")):
        raise CLIError(f"{src}: plot voigt reads a 6x6 matrix (.txt, .csv or .json)")
    voigt = read_voigt_file(src)
    batch = voigt.ndim == 3
    out = []
    for i, v in enumerate(voigt if batch else [voigt]):
        name = f"{src}[{i}]" if batch else src
        try:
            v, note = check_voigt(v, symmetrize=symmetrize)
        except CLIError as err:
            raise CLIError(f"{name}: {err}") from None
        if note:
            print(f"note: {name}: {note}", file=sys.stderr)
        out.append((v, name, f"_{i}" if batch else ""))
    return out


def _predicted(args: argparse.Namespace) -> list[_Input]:
    """The predicted tensor of each structure file (folders and globs expanded); a structure
    that fails has its error instead. Its title names its warnings' codes, so that no saved
    figure shows a number outside the model's domain unflagged."""
    from e3elastic import inference, runtime

    runtime.enable_compilation_cache()
    paths = inference.expand_paths(args.inputs)
    results = inference.predict(paths, model=args.model, symmetrize=args.symmetrize)
    out = []
    for src, r in zip(paths, results, strict=True):
        if r["error"] is not None:
            out.append(_Input(src, [], error=str(r["error"])))
            continue
        warnings = tuple(r.get("warnings") or ())
        title = f"{r['formula']} ({src}, predicted)"
        if warnings:
            title += "; WARNING: " + ", ".join(w.split(":", 1)[0] for w in warnings)
        out.append(_Input(src, [(r["voigt_GPa"], title, "")], warnings))
    return out


def _unique(names: list[str]) -> list[str]:
    """``names`` with ``_2``, ``_3``, ... added to the later of any that repeat."""
    seen: set[str] = set()
    out = []
    for name in names:
        new, k = name, 1
        while new in seen:
            k += 1
            new = f"{name}_{k}"
        seen.add(new)
        out.append(new)
    return out


def _file_names(srcs: list[str]) -> list[str]:
    """A name for each input's figures: the file's stem, with its folder's name in front when
    two inputs share a stem (``a/POSCAR.cif`` and ``b/POSCAR.cif``: ``a_POSCAR``, ``b_POSCAR``)."""
    stems = [Path(s).stem for s in srcs]
    count = Counter(stems)
    return [
        f"{Path(s).resolve().parent.name}_{stem}" if count[stem] > 1 else stem
        for s, stem in zip(srcs, stems, strict=True)
    ]


def _cmd_plot(args: argparse.Namespace) -> int:
    from e3elastic import plots

    if args.kind == "parity":
        return _parity(args)
    if not args.inputs:
        raise CLIError(f"plot {args.kind} needs a structure file or a 6x6 Voigt file")
    _check_out_folder(args.out)
    if args.kind == "voigt":  # every file is read and checked before anything is drawn
        inputs = [_Input(src, _read_voigt(src, args.symmetrize)) for src in args.inputs]
    else:
        inputs = _predicted(args)
    names = _file_names([i.src for i in inputs])
    bases = [args.out if len(inputs) == 1 else f"{args.out}_{n}" for n in names]
    # one prefix per tensor, in drawing order; never one file for two tensors
    prefixes = iter(
        _unique([b + t[2] for i, b in zip(inputs, bases, strict=True) for t in i.tensors])
    )
    failed: set[int] = set()  # the inputs, by position, with an error
    for k, inp in enumerate(inputs):
        if inp.error is not None:
            print(f"error: {inp.src}: {inp.error}", file=sys.stderr)
            failed.add(k)
        for warning in inp.warnings:
            print(f"WARNING {inp.src}: {warning}", file=sys.stderr)
        for voigt, title, suffix in inp.tensors:
            try:
                paths = plots.plot_tensor(voigt, next(prefixes), fmt=args.format, title=title)
            except ImportError as e:
                raise CLIError(str(e)) from None
            except ValueError as e:
                name = f"{inp.src}[{suffix[1:]}]" if suffix else inp.src
                print(f"error: {name}: {e}", file=sys.stderr)
                failed.add(k)
                continue
            for p in paths:
                print(p)
    if failed:
        print(f"{len(inputs) - len(failed)} of {len(inputs)} inputs plotted", file=sys.stderr)
    return 1 if failed else 0


class _Inputs(argparse.Action):
    """The positional inputs, refused for ``parity`` (it plots an evaluation of --model on
    --data) rather than silently ignored."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values and namespace.kind == "parity":
            parser.error(
                "plot parity takes no input files (it evaluates --model on --data); "
                f"unexpected: {' '.join(values)}"
            )
        setattr(namespace, self.dest, values)


def add_parser(sub) -> None:
    pl = sub.add_parser(
        "plot",
        help="directional Young's modulus, linear compressibility and parity plots",
        description="'structure': predict C for structure files (folders and globs as for "
        "predict) and plot it; 'voigt': plot a given 6x6 tensor; 'parity': predicted against "
        "DFT values of an evaluation run. A structure that fails is reported and the others "
        "are still drawn (exit status 1); prediction warnings go to stderr and into the "
        "figure titles.",
    )
    pl.add_argument("kind", choices=("structure", "voigt", "parity"))
    pl.add_argument(
        "inputs",
        nargs="*",
        action=_Inputs,
        help="structure files, folders or globs (structure) or 6x6 files (voigt)",
    )
    pl.add_argument("--model", default=None, help="model name or folder")
    pl.add_argument("--data", default=None, help="data for 'parity'")
    pl.add_argument("--split", default="test", choices=SPLIT_CHOICES)
    pl.add_argument(
        "--symmetrize",
        action="store_true",
        help="structure: impose the point group exactly; voigt: use (C + C^T)/2 for a matrix "
        "that is not symmetric",
    )
    pl.add_argument(
        "--out",
        default="e3elastic_plot",
        help="output file prefix; with several inputs each gets its file stem added (its "
        "folder too when two share a stem); the folder must exist",
    )
    pl.add_argument("--format", default="png", choices=("png", "svg"))
    pl.set_defaults(func=_cmd_plot)
