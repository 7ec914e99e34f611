"""``e3elastic tensor``: derived moduli of given 6x6 Voigt tensors (numpy only, starts fast)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .errors import CLIError


def read_voigt_file(path: str) -> np.ndarray:
    """Read a 6x6 Voigt matrix (GPa) from JSON (a 6x6 list, or {"voigt_GPa": ...}) or text."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise CLIError(f"{path}: cannot read file ({err.strerror})") from None
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            for key in ("voigt_GPa", "elastic_tensor_voigt_GPa", "voigt", "elastic_tensor"):
                if key in obj:
                    obj = obj[key]
                    break
            else:
                raise CLIError(f"{path}: JSON object has no 'voigt_GPa' key")
        return np.asarray(obj, dtype=float)
    except json.JSONDecodeError:
        pass
    except (TypeError, ValueError) as err:
        raise CLIError(f"{path}: not a 6x6 matrix of numbers ({err})") from None
    try:
        rows = [line.replace(",", " ").split() for line in text.splitlines()]
        rows = [r for r in rows if r and not r[0].startswith("#")]
        return np.array([[float(x) for x in r] for r in rows])
    except ValueError as err:
        raise CLIError(f"{path}: not a 6x6 matrix of numbers ({err})") from None


def format_tensor_report(name: str, voigt: np.ndarray) -> str:
    """The table of one tensor: its matrix, averages, E, nu, A^U, stability, E and linear
    compressibility along the axes."""
    from e3elastic import tensors

    props = tensors.derived_properties(voigt)
    lines = [f"{name}", "  Voigt stiffness C_IJ (GPa), order 11 22 33 23 13 12:"]
    for row in voigt:
        lines.append("    " + " ".join(f"{x:9.2f}" for x in row))
    rows = [
        ("bulk modulus K   (Voigt/Reuss/Hill)", "K_V_GPa", "K_R_GPa", "K_VRH_GPa", "GPa"),
        ("shear modulus G  (Voigt/Reuss/Hill)", "G_V_GPa", "G_R_GPa", "G_VRH_GPa", "GPa"),
    ]
    for label, a, b, c, unit in rows:
        lines.append(f"  {label}: {props[a]:8.2f} {props[b]:8.2f} {props[c]:8.2f} {unit}")
    lines += [
        f"  Young's modulus E (Hill)            : {props['youngs_modulus_GPa']:8.2f} GPa",
        f"  Poisson's ratio nu (Hill)           : {props['poisson_ratio']:8.4f}",
        f"  universal anisotropy A^U            : {props['universal_anisotropy']:8.4f}",
        f"  Born stability (min Mandel eigval)  : {props['min_eigenvalue_GPa']:8.2f} GPa "
        f"-> {'stable' if props['born_stable'] else 'UNSTABLE'}",
    ]
    axes = np.eye(3)
    e_dir = tensors.directional_youngs_modulus(voigt, axes)
    beta = tensors.linear_compressibility(voigt, axes)
    lines.append(
        "  E along x, y, z                     : " + " ".join(f"{x:8.2f}" for x in e_dir) + " GPa"
    )
    lines.append(
        "  linear compressibility x, y, z      : "
        + " ".join(f"{1000 * x:8.3f}" for x in beta)
        + " 1/TPa"
    )
    return "\n".join(lines)


def _jobs(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    """(name, Voigt matrix) of each ``--example`` and each file."""
    from e3elastic import examples

    jobs: list[tuple[str, np.ndarray]] = []
    if args.example:
        names = examples.EXAMPLE_TENSORS if args.example == ["all"] else args.example
        for name in names:
            if name not in examples.EXAMPLE_TENSORS:
                known = ", ".join(sorted(examples.EXAMPLE_TENSORS))
                raise CLIError(f"unknown example tensor {name!r}; known: {known}, all")
            jobs.append((examples.describe(name), examples.example_voigt(name)))
    for path in args.files:
        jobs.append((path, read_voigt_file(path)))
    if not jobs:
        raise CLIError("give a file with a 6x6 Voigt matrix, or --example NAME (or 'all')")
    return jobs


def _unstable(props: dict) -> str | None:
    """The error of a tensor that is not positive-definite (its Reuss and Hill averages, E and
    nu then mean nothing), or None."""
    if props["born_stable"]:
        return None
    lowest = float(props["min_eigenvalue_GPa"])
    return (
        f"not positive-definite (smallest Mandel eigenvalue {lowest:.2f} GPa): not "
        "mechanically stable, so the derived moduli are not meaningful"
    )


def _cmd_tensor(args: argparse.Namespace) -> int:
    """Exit 1 when a tensor is invalid or not positive-definite (the report of an unstable one
    is still printed, marked UNSTABLE)."""
    from e3elastic import tensors

    failed = 0
    reports = []
    for name, voigt in _jobs(args):
        try:
            tensors.compliance_voigt(voigt)  # validates shape, symmetry, finiteness
            props = tensors.derived_properties(voigt)
            error = _unstable(props)
            if args.json:
                reports.append(
                    {"name": name, "voigt_GPa": voigt.tolist(), "error": error}
                    | {k: (bool(v) if v.dtype == bool else float(v)) for k, v in props.items()}
                )
            else:
                print(format_tensor_report(name, voigt), end="\n\n")
        except ValueError as err:
            error = str(err)
            if args.json:
                reports.append({"name": name, "error": error})
        if error is not None:
            failed += 1
            print(f"error: {name}: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(reports, indent=2))
    return 1 if failed else 0


def add_parser(sub) -> None:
    t = sub.add_parser(
        "tensor",
        help="derived moduli of a given elastic tensor",
        description="Print Voigt/Reuss/Hill moduli, Young's modulus, Poisson's ratio, "
        "anisotropy and Born stability of 6x6 Voigt tensors (GPa).",
    )
    t.add_argument("files", nargs="*", help="files holding a 6x6 Voigt matrix (JSON or text)")
    t.add_argument("--example", nargs="+", metavar="NAME", help="a built-in tensor, or 'all'")
    t.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t.set_defaults(func=_cmd_tensor)
