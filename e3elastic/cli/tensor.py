"""``e3elastic tensor``: derived moduli of given 6x6 Voigt tensors (numpy only, starts fast).

Exit status: 0 when every tensor was read and is stable; 1 when every input was read but a
tensor is not positive-definite (its report is still printed, marked UNSTABLE); 2 when an input
could not be used (a missing or unreadable file, a shape or symmetry error, an unknown example),
the status the whole command line gives bad input. With ``--json`` every input gives one object
of the list printed, and an input that could not be used gives ``{"name", "error"}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from .errors import CLIError

#: Keys of a JSON object that may hold the matrix, tried in this order. ``elastic_tensor`` of a
#: Materials Project document is itself an object: its ``ieee_format`` (the IEEE-standard
#: frame) is read before its ``raw`` (the frame of the structure), as pymatgen does.
_JSON_KEYS = (
    "voigt_GPa",
    "elastic_tensor_voigt_GPa",
    "voigt",
    "elastic_tensor",
    "elasticity",
    "ieee_format",
    "raw",
)
_ACCEPTED = (
    "accepted: a 6x6 list of numbers, a list of them, a 3x3x3x3 Cartesian tensor, an object "
    '{"voigt_GPa": ...}, or a Materials Project document {"elastic_tensor": {"ieee_format": '
    '...}} (or "raw")'
)
#: Relative tolerance (of the largest |C_IJ|) of the cubic-symmetry test of the Zener ratio.
CUBIC_RTOL = 1e-3


def _matrix_of(obj):
    """The nested lists of numbers inside a parsed JSON document (keys :data:`_JSON_KEYS`)."""
    if isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj):
        return [_matrix_of(o) for o in obj]  # a list of documents: a batch
    while isinstance(obj, dict):
        key = next((k for k in _JSON_KEYS if k in obj), None)
        if key is None:
            keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise CLIError(f"the JSON object has no matrix key (its keys: {keys}); {_ACCEPTED}")
        obj = obj[key]
    return obj


def _read_json(text: str) -> np.ndarray:
    from e3elastic import tensors

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise CLIError(f"not valid JSON ({err})") from None
    try:
        a = np.asarray(_matrix_of(obj), dtype=float)
    except (TypeError, ValueError) as err:
        why = " ".join(str(err).split())
        raise CLIError(f"not a matrix of numbers ({why}); {_ACCEPTED}") from None
    if a.ndim in (4, 5) and a.shape[-4:] == (3, 3, 3, 3):
        try:
            return tensors.cartesian_to_voigt(a)
        except ValueError as err:
            raise CLIError(str(err)) from None
    if a.ndim not in (2, 3) or a.shape[-2:] != (6, 6) or a.size == 0:
        raise CLIError(f"the JSON array has shape {a.shape}; {_ACCEPTED}")
    return a


def _number(token: str, line: int) -> float:
    try:
        return float(token)
    except ValueError:
        pass
    try:
        complex(token)
    except ValueError:
        raise CLIError(f"line {line}: {token!r} is not a number") from None
    raise CLIError(f"line {line}: {token!r} is complex; an elastic stiffness is real")


def _read_text(text: str) -> np.ndarray:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split("#", 1)[0].replace(",", " ").split()
        if tokens:
            rows.append([_number(t, n) for t in tokens])
    widths = sorted({len(r) for r in rows})
    if not rows or widths != [6] or len(rows) % 6:
        got = "no numbers" if not rows else f"{len(rows)} rows of {'/'.join(map(str, widths))}"
        raise CLIError(
            "a text file holds a 6x6 Voigt matrix as 6 rows of 6 numbers (or several matrices "
            f"one after another), got {got} numbers"
        )
    a = np.array(rows).reshape(-1, 6, 6)
    return a[0] if len(a) == 1 else a


def _read(path: str) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise CLIError(f"cannot read file ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise CLIError("not a text file (JSON or a text matrix)") from None
    if path.lower().endswith(".json") or text.lstrip()[:1] in ("[", "{"):
        return _read_json(text)
    return _read_text(text)


def read_voigt_file(path: str) -> np.ndarray:
    """The Voigt matrix (GPa) of a JSON or text file: shape (6, 6), or (n, 6, 6) for a file of
    n matrices. JSON: a 6x6 list, a list of them, a 3x3x3x3 Cartesian tensor, an object
    ``{"voigt_GPa": ...}`` or a Materials Project document ``{"elastic_tensor":
    {"ieee_format": ...}}``; text: rows of 6 numbers (``#`` starts a comment). Raises
    :class:`CLIError` naming the file."""
    try:
        return _read(path)
    except CLIError as err:
        raise CLIError(f"{path}: {err}") from None


def check_voigt(voigt: np.ndarray, symmetrize: bool = False) -> tuple[np.ndarray, str | None]:
    """``(voigt, note)``: one 6x6 matrix checked to be finite and symmetric (within
    ``SYMMETRY_RTOL`` of its largest entry), or averaged with its transpose (``symmetrize``;
    ``note`` then says by how much it was off). Raises :class:`CLIError`."""
    from e3elastic.tensors import SYMMETRY_RTOL

    v = np.asarray(voigt, dtype=float)
    assert v.shape == (6, 6), v.shape
    if not np.all(np.isfinite(v)):
        raise CLIError(f"holds {np.count_nonzero(~np.isfinite(v))} NaN or infinite value(s)")
    asym = np.abs(v - v.T)
    i, j = np.unravel_index(np.argmax(asym), asym.shape)
    worst = float(asym[i, j])
    tol = SYMMETRY_RTOL * max(float(np.abs(v).max()), 1.0)
    what = f"|C{i + 1}{j + 1} - C{j + 1}{i + 1}| = {worst:.3g} GPa"
    if symmetrize:
        return 0.5 * (v + v.T), (f"symmetrized: {what}" if worst > tol else None)
    if worst > tol:
        raise CLIError(
            f"not symmetric: the largest asymmetry is {what}, above the tolerance of "
            f"{tol:.2g} GPa ({SYMMETRY_RTOL:g} of the largest entry); an elastic stiffness has "
            "C_IJ = C_JI. Pass --symmetrize to use (C + C^T)/2"
        )
    return v, None


def zener_ratio(voigt: np.ndarray, rtol: float = CUBIC_RTOL) -> float | None:
    """Zener anisotropy ``2 C44 / (C11 - C12)`` (1 when isotropic) of a 6x6 Voigt matrix with
    cubic symmetry in its cube axes (C11 = C22 = C33, C12 = C13 = C23, C44 = C55 = C66, every
    other entry 0, each within ``rtol`` of the largest |C_IJ|); None for any other matrix."""
    v = np.asarray(voigt, dtype=float)
    tol = rtol * float(np.abs(v).max())
    normal, shear = np.diag(v)[:3], np.diag(v)[3:]
    off = np.array([v[1, 2], v[0, 2], v[0, 1]])
    zero = v.copy()
    zero[:3, :3] = 0.0
    zero[[3, 4, 5], [3, 4, 5]] = 0.0
    c11, c12, c44 = normal.mean(), off.mean(), shear.mean()
    cubic = all(np.ptp(x) <= tol for x in (normal, off, shear)) and np.abs(zero).max() <= tol
    if not cubic or abs(c11 - c12) <= tol:
        return None
    return float(2.0 * c44 / (c11 - c12))


_UNSTABLE_NOTE = "UNSTABLE (not positive-definite): the moduli below are not physical"
_UNSTABLE_WARNING = (
    "not positive-definite (mechanically unstable): its Reuss and Hill moduli, E, nu, A^U and "
    "directional moduli are not physical"
)
_WIDTH = 36  # of the labels of the table


def format_tensor_report(name: str, voigt: np.ndarray) -> str:
    """The table of one tensor: its matrix, averages, E, nu, A^U, the Zener ratio (cubic
    tensors), stability, E and linear compressibility along the axes. The moduli of an unstable
    tensor are printed after a line that says they are not physical."""
    from e3elastic import tensors

    props = tensors.derived_properties(voigt)
    lines = [f"{name}", "  Voigt stiffness C_IJ (GPa), order 11 22 33 23 13 12:"]
    for row in voigt:
        lines.append("    " + " ".join(f"{x:9.2f}" for x in row))
    if not props["born_stable"]:
        lines.append(f"  {_UNSTABLE_NOTE}")

    def line(label: str, text: str) -> None:
        lines.append(f"  {label:<{_WIDTH}}: {text}")

    rows = [
        ("bulk modulus K   (Voigt/Reuss/Hill)", "K_V_GPa", "K_R_GPa", "K_VRH_GPa", "GPa"),
        ("shear modulus G  (Voigt/Reuss/Hill)", "G_V_GPa", "G_R_GPa", "G_VRH_GPa", "GPa"),
    ]
    for label, a, b, c, unit in rows:
        line(label, f"{props[a]:8.2f} {props[b]:8.2f} {props[c]:8.2f} {unit}")
    line("Young's modulus E (Hill)", f"{props['youngs_modulus_GPa']:8.2f} GPa")
    line("Poisson's ratio nu (Hill)", f"{props['poisson_ratio']:8.4f}")
    line("universal anisotropy A^U", f"{props['universal_anisotropy']:8.4f}")
    zener = zener_ratio(voigt)
    if zener is not None:
        line("Zener anisotropy 2 C44/(C11-C12)", f"{zener:8.4f} (cubic)")
    stable = "stable" if props["born_stable"] else "UNSTABLE"
    lowest = props["min_eigenvalue_GPa"]
    line("Born stability (min Mandel eigval)", f"{lowest:8.2f} GPa -> {stable}")
    axes = np.eye(3)
    e_dir = tensors.directional_youngs_modulus(voigt, axes)
    beta = tensors.linear_compressibility(voigt, axes)
    line("E along x, y, z", " ".join(f"{x:8.2f}" for x in e_dir) + " GPa")
    line("linear compressibility x, y, z", " ".join(f"{1000 * x:8.3f}" for x in beta) + " 1/TPa")
    return "\n".join(lines)


def _jobs(args: argparse.Namespace) -> list[tuple[str, np.ndarray | None, str | None]]:
    """``(name, Voigt matrix or None, error or None)`` of each ``--example`` and of each matrix
    of each file (``file[i]`` for the i-th of a file of several). Raises :class:`CLIError` only
    when there is nothing to do."""
    from e3elastic import examples

    jobs: list[tuple[str, np.ndarray | None, str | None]] = []
    if args.example:
        names = examples.EXAMPLE_TENSORS if args.example == ["all"] else args.example
        for name in names:
            if name not in examples.EXAMPLE_TENSORS:
                known = ", ".join(sorted(examples.EXAMPLE_TENSORS))
                jobs.append((name, None, f"unknown example tensor; known: {known}, all"))
            else:
                jobs.append((examples.describe(name), examples.example_voigt(name), None))
    for path in args.files:
        try:
            v = _read(path)
        except CLIError as err:
            jobs.append((path, None, str(err)))
            continue
        if v.ndim == 2:
            jobs.append((path, v, None))
        else:
            jobs += [(f"{path}[{i}]", m, None) for i, m in enumerate(v)]
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


def _json_value(v: np.ndarray) -> bool | float | None:
    if v.dtype == bool:
        return bool(v)
    return float(v) if math.isfinite(float(v)) else None  # NaN is not JSON


def _json_report(name: str, voigt: np.ndarray, props: dict, error: str | None) -> dict:
    """The JSON object of one tensor: ``name, voigt_GPa, error`` (the instability, or None),
    ``stable`` and ``warning`` (why the moduli are not physical, or None), the moduli of
    :func:`e3elastic.tensors.derived_properties` and ``zener_anisotropy`` (None unless cubic)."""
    stable = bool(props["born_stable"])
    return (
        {"name": name, "voigt_GPa": voigt.tolist(), "error": error, "stable": stable}
        | {"warning": None if stable else _UNSTABLE_WARNING}
        | {k: _json_value(v) for k, v in props.items()}
        | {"zener_anisotropy": zener_ratio(voigt)}
    )


def _cmd_tensor(args: argparse.Namespace) -> int:
    """Exit 2 when an input could not be used, else 1 when a tensor is not positive-definite
    (its report is still printed, marked UNSTABLE), else 0."""
    from e3elastic import tensors

    try:
        jobs = _jobs(args)
    except CLIError as err:
        if args.json:
            print(json.dumps([{"name": None, "error": str(err)}], indent=2))
        raise
    bad_input = unstable = 0
    reports = []
    for name, voigt, error in jobs:
        note = None
        if error is None:
            try:
                voigt, note = check_voigt(voigt, symmetrize=args.symmetrize)
                props = tensors.derived_properties(voigt)
            except (CLIError, ValueError) as err:
                error = str(err)
        if error is not None:
            bad_input += 1
            print(f"error: {name}: {error}", file=sys.stderr)
            reports.append({"name": name, "error": error})
            continue
        if note:
            print(f"note: {name}: {note}", file=sys.stderr)
        error = _unstable(props)
        if args.json:
            reports.append(_json_report(name, voigt, props, error))
        else:
            print(format_tensor_report(name, voigt), end="\n\n")
        if error is not None:
            unstable += 1
            print(f"error: {name}: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(reports, indent=2))
    return 2 if bad_input else 1 if unstable else 0


def add_parser(sub) -> None:
    t = sub.add_parser(
        "tensor",
        help="derived moduli of a given elastic tensor",
        description="Print Voigt/Reuss/Hill moduli, Young's modulus, Poisson's ratio, "
        "anisotropy (and the Zener ratio of a cubic tensor) and Born stability of 6x6 Voigt "
        "tensors (GPa). A file may hold several matrices: each gets its own report. Exit "
        "status: 2 when an input cannot be used, 1 when a tensor is not positive-definite.",
    )
    t.add_argument(
        "files",
        nargs="*",
        help="files holding 6x6 Voigt matrices: JSON (a 6x6 list, a list of them, "
        '{"voigt_GPa": ...}, a Materials Project {"elastic_tensor": {"ieee_format": ...}}) '
        "or text (rows of 6 numbers)",
    )
    t.add_argument("--example", nargs="+", metavar="NAME", help="a built-in tensor, or 'all'")
    t.add_argument("--json", action="store_true", help="print JSON (a list) instead of a table")
    t.add_argument(
        "--symmetrize",
        action="store_true",
        help="use (C + C^T)/2 for a matrix that is not symmetric (by default refused)",
    )
    t.set_defaults(func=_cmd_tensor)
