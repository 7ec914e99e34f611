"""``e3elastic predict``: elastic tensors of structure files, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from e3elastic.config import THEORIES

from .errors import CLIError
from .output import check_output_path, output_format, write_output

#: Columns of the CSV output before the tensor components.
_CSV_KEYS = [
    "file",
    "formula",
    "K_VRH_GPa",
    "G_VRH_GPa",
    "youngs_modulus_GPa",
    "poisson_ratio",
    "universal_anisotropy",
    "born_stable",
    "K_VRH_std_GPa",
    "G_VRH_std_GPa",
    # an ensemble's log-space intervals: [low, high] in two columns each
    *[
        f"{q}_{end}{level}_GPa"
        for q in ("K_VRH", "G_VRH", "youngs_modulus")
        for level in ("68", "95")
        for end in ("low", "high")
    ],
    "space_group",
    "theory",
    "model",
    "error",
    "warnings",
]


def _predictions_csv(results: list) -> str:
    """One row per structure: the properties, then C_IJ (upper triangle) and their sigma."""
    import csv
    import io

    keys = _CSV_KEYS
    upper = [(i, j) for i in range(6) for j in range(i, 6)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        keys + [f"C{i + 1}{j + 1}" for i, j in upper] + [f"C{i + 1}{j + 1}_std" for i, j in upper]
    )
    for r in results:
        v, sd = r.get("voigt_GPa"), r.get("voigt_std_GPa")
        comps = [] if v is None else [f"{v[i][j]:.4f}" for i, j in upper]
        stds = [""] * len(upper) if sd is None else [f"{sd[i][j]:.4f}" for i, j in upper]
        row = [_csv_value(r, k) for k in keys]
        row[keys.index("warnings")] = " | ".join(r.get("warnings") or [])
        row[keys.index("space_group")] = (r.get("symmetry") or {}).get("space_group", "")
        model = r.get("model") or {}
        row[keys.index("model")] = f"{model.get('name', '')} {model.get('version', '')}".strip()
        w.writerow(row + (comps + stds if comps else []))
    return buf.getvalue()


def _csv_value(r: dict, key: str):
    """A result's value for a CSV column; ``Q_lowNN_GPa``/``Q_highNN_GPa`` are the ends of
    ``Q_intervalNN_GPa``."""
    for end, i in (("_low", 0), ("_high", 1)):
        if end in key:
            q, level = key.split(end)
            pair = r.get(f"{q}_interval{level}")
            return "" if pair is None else pair[i]
    value = r.get(key)
    return "" if value is None else value


def _interval(r: dict, q: str) -> str:
    """`` (68 %: low-high, 95 %: low-high)`` when the result has those intervals."""
    parts = [
        f"{level} %: {pair[0]:.1f}-{pair[1]:.1f}"
        for level in ("68", "95")
        if (pair := r.get(f"{q}_interval{level}_GPa")) is not None
    ]
    return f" ({', '.join(parts)})" if parts else ""


def _prediction_table(r: dict) -> list[str]:
    """The lines of one result: formula, symmetry, warnings, C_IJ (+- sigma), moduli."""
    head = r.get("file") or r.get("id") or "structure"
    if r["error"] is not None:
        return [f"{head}: FAILED: {r['error']}\n"]
    lines = [f"{head}: {r['formula']}"]
    sym = r.get("symmetry")
    if sym:
        lines.append(
            f"  space group {sym['space_group']} (point group {sym['point_group']}, "
            f"symprec {sym['symprec']:g} A)"
            + ("; tensor symmetrized over it" if sym.get("symmetrized") else "")
        )
    for warning in r.get("warnings") or []:
        lines.append(f"  WARNING {warning}")
    std = r.get("voigt_std_GPa")
    lines.append(
        "  Voigt stiffness C_IJ (GPa), order 11 22 33 23 13 12"
        + ("; +- one calibrated standard deviation over the members:" if std is not None else ":")
    )
    import numpy as np

    voigt = np.round(np.asarray(r["voigt_GPa"], np.float64), 2) + 0.0  # no "-0.00"
    width = max(10, 2 + max(len(f"{x:.2f}") for row in voigt for x in row))
    for i, row in enumerate(voigt):
        cells = "".join(f"{x:{width}.2f}" for x in row)
        if std is not None:
            cells += "   +- " + " ".join(f"{s:5.1f}" for s in std[i])
        lines.append("  " + cells)
    lines.append(
        f"  K_VRH {r['K_VRH_GPa']:.1f}{_interval(r, 'K_VRH')} GPa, "
        f"G_VRH {r['G_VRH_GPa']:.1f}{_interval(r, 'G_VRH')} GPa, "
        f"E {r['youngs_modulus_GPa']:.1f}{_interval(r, 'youngs_modulus')} GPa, "
        f"nu {r['poisson_ratio']:.3f}, "
        f"A^U {r['universal_anisotropy']:.3f}, "
        f"{'Born stable' if r['born_stable'] else 'NOT Born stable'}\n"
    )
    return lines


def format_predictions(results: list, fmt: str) -> str:
    """``results`` of :func:`e3elastic.inference.predict` as ``fmt`` (table, json or csv)."""
    from e3elastic.inference import to_json_ready

    if fmt == "json":
        return json.dumps([to_json_ready(r) for r in results], indent=2)
    if fmt == "csv":
        return _predictions_csv(results)
    return "\n".join(line for r in results for line in _prediction_table(r))


def _inputs(args: argparse.Namespace) -> list:
    """Paths, folders and globs expanded, then the ``--mp-id`` structures downloaded."""
    from e3elastic import inference

    inputs: list = inference.expand_paths(args.paths)
    if args.out:  # a folder that holds this command's own earlier output
        out = Path(args.out).resolve()
        inputs = [p for p in inputs if Path(p).resolve() != out or p in args.paths]
    if args.mp_id:
        from e3elastic import data

        inputs += [data.fetch_mp_structure(m) for m in args.mp_id]
    if not inputs:
        raise CLIError("nothing to predict: give structure files, folders, globs or --mp-id")
    return inputs


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\rpredicting {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _cmd_predict(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from e3elastic import inference, runtime

    runtime.enable_compilation_cache()
    fmt = output_format(args.out, args.format)
    check_output_path(args.out)
    if not (args.symprec > 0):
        raise CLIError(f"--symprec must be a positive number of Angstrom, got {args.symprec}")
    inputs = _inputs(args)
    model = inference.load_model(args.model)
    model.theory_index(args.theory)  # an unknown level of theory fails before any work
    results = inference.predict(
        inputs,
        model,
        symmetrize=args.symmetrize,
        progress=_progress,
        theory=args.theory,
        symprec=args.symprec,
    )
    if not isinstance(results, list):
        results = [results]
    text = format_predictions(results, fmt)
    if args.out:
        write_output(args.out, text)
    else:
        print(text)
    failed = [r for r in results if r["error"] is not None]
    if args.out:  # the table on stdout shows them; a file alone would hide them
        for r in results:
            for warning in r.get("warnings") or []:
                print(f"WARNING {r.get('file') or r.get('id')}: {warning}", file=sys.stderr)
    for r in failed:
        print(f"error: {r.get('file') or r.get('id')}: {r['error']}", file=sys.stderr)
    print(
        f"{len(results) - len(failed)} of {len(results)} structures predicted in "
        f"{time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 1 if failed else 0


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "predict",
        help="predict elastic tensors of structure files",
        description="Predict C (GPa) in the frame of each structure as given. Reads any file "
        "pymatgen reads (CIF, POSCAR, ...), folders and globs.",
    )
    parser.add_argument("paths", nargs="*", help="structure files, folders or glob patterns")
    parser.add_argument("--model", default=None, help="shipped model name or bundle folder")
    parser.add_argument(
        "--format",
        default=None,
        choices=("table", "json", "csv"),
        help="output format (default: from the --out extension, .json or .csv; else table)",
    )
    parser.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="same as --format json (as for tensor, evaluate and data summary)",
    )
    parser.add_argument("--symmetrize", action="store_true", help="impose the point group exactly")
    parser.add_argument(
        "--symprec",
        type=float,
        default=0.01,
        help="symmetry tolerance in Angstrom for the reported and imposed group (default 0.01)",
    )
    parser.add_argument(
        "--theory",
        default="pbe",
        choices=[t.lower() for t in THEORIES],
        help="level of theory of the predicted tensor (default pbe; b3lyp-d2 for the "
        "SiO2 zeolites' functional)",
    )
    parser.add_argument(
        "--out", default=None, help="write to this file instead of stdout (checked first)"
    )
    parser.add_argument("--mp-id", action="append", default=[], help="a Materials Project id")
    parser.set_defaults(func=_cmd_predict)
