"""Pseudo-tensors for the K/G-only crystals of a training split, from a teacher's predictions.

    e3elastic evaluate --model checkpoints/ens --split train --out teacher_train.json
    python scripts/pseudo_tensors.py teacher_train.json --out checkpoints/pseudo.json
    e3elastic train ... --set train.pseudo_tensors=checkpoints/pseudo.json

The teacher (an ensemble, trained on the same training split) predicts a full tensor for each
crystal that has only K_VRH and G_VRH. Its isotropic part is then moved onto the DFT moduli:
with ``L = logm(Mandel C)``, the tensor ``expm(L + a P_K + b P_G)`` (``P_K`` the projector on
hydrostatic strain, ``P_G = 1 - P_K``) has the crystal's own K_VRH and G_VRH, found by Newton
steps in ``(a, b)``. For an isotropic C that scales K by ``e^a`` and G by ``e^b``; for any C
the result stays positive-definite and keeps the teacher's anisotropy. A training run with
``train.pseudo_tensors`` then learns each such crystal's anisotropy from the teacher and its
moduli from DFT (see ``train.pseudo_weight``). The file also keeps the teacher's raw tensors of
the crystals that have a DFT tensor (key ``soft``), which ``train.soft_weight`` blends into
their targets. Only ``--part`` (default train) crystals are written, so validation and test
crystals never reach training through this file.

The file is derived from the data's crystal ids and a model's predictions; keep it out of the
repository, next to the runs that use it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from e3elastic import tensors
from e3elastic.moduli import bulk_modulus, shear_modulus
from e3elastic.training.prepare import PSEUDO_FORMAT

_V = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]) / np.sqrt(3.0)
P_BULK = np.outer(_V, _V)  # Mandel projector on hydrostatic strain
P_SHEAR = np.eye(6) - P_BULK


def _sym_fn(m: np.ndarray, fn) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    return (v * fn(w)) @ v.T


def log_kg(voigt: np.ndarray) -> np.ndarray:
    """``(ln K_VRH, ln G_VRH)`` of a Voigt stiffness."""
    return np.log([float(bulk_modulus(voigt)["hill"]), float(shear_modulus(voigt)["hill"])])


def match_moduli(voigt, k: float, g: float, steps: int = 30, tol: float = 1e-10) -> np.ndarray:
    """The Voigt stiffness ``expm(logm(C) + a P_K + b P_G)`` whose K_VRH and G_VRH are ``k``
    and ``g`` (GPa). Raises ValueError when C is not positive-definite or Newton fails."""
    c = np.asarray(voigt, np.float64)
    m = tensors.voigt_to_mandel(c)
    if np.linalg.eigvalsh(m).min() <= 0:
        raise ValueError("the stiffness is not positive-definite")
    base = _sym_fn(m, np.log)
    goal = np.log([k, g])

    def at(ab):
        out = tensors.mandel_to_voigt(_sym_fn(base + ab[0] * P_BULK + ab[1] * P_SHEAR, np.exp))
        return out, log_kg(out)

    ab = goal - log_kg(c)
    for _ in range(steps):
        out, got = at(ab)
        r = got - goal
        if np.abs(r).max() < tol:
            return 0.5 * (out + out.T)
        h = 1e-6
        jac = np.stack([(at(ab + h * e)[1] - got) / h for e in np.eye(2)], axis=1)
        ab = ab - np.linalg.solve(jac, r)
    raise ValueError("the moduli did not converge")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("teacher", type=Path, help="`e3elastic evaluate --out X.json` of the teacher")
    ap.add_argument("--out", type=Path, required=True, help="pseudo-tensor file to write")
    ap.add_argument("--part", default="train", help="split part the evaluation must be of")
    args = ap.parse_args(argv)
    try:
        doc = json.loads(args.teacher.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: cannot read {args.teacher}: {e}", file=sys.stderr)
        return 2
    evaluated = doc.get("evaluated")
    if evaluated != f"the model's {args.part} split":
        print(
            f"error: {args.teacher} is an evaluation of {evaluated!r}, not of the model's "
            f"{args.part} split (run `e3elastic evaluate --split {args.part}`)",
            file=sys.stderr,
        )
        return 2
    crystals = doc.get("moduli_only", {}).get("crystals", [])
    if not crystals:
        print(f"error: {args.teacher} lists no K/G-only crystals", file=sys.stderr)
        return 2
    out, failed, shift = {}, [], []
    for c in crystals:
        try:
            v = match_moduli(c["pred_voigt_GPa"], c["K_VRH_true_GPa"], c["G_VRH_true_GPa"])
        except (ValueError, np.linalg.LinAlgError) as e:
            failed.append(f"{c['id']}: {e}")
            continue
        out[c["id"]] = np.round(v, 4).tolist()
        shift.append(
            np.abs(
                np.log(
                    [
                        c["K_VRH_pred_GPa"] / c["K_VRH_true_GPa"],
                        c["G_VRH_pred_GPa"] / c["G_VRH_true_GPa"],
                    ]
                )
            )
        )
    # the teacher's own tensors of the training part's tensor crystals (train.soft_weight)
    soft = {
        c["id"]: np.round(np.asarray(c["pred_voigt_GPa"], float), 4).tolist()
        for c in doc.get("crystals", [])
        if c.get("positive_definite", True)
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "format": PSEUDO_FORMAT,
                "teacher": doc.get("model"),
                "teacher_members": doc.get("members"),
                "part": args.part,
                "tensors": out,
                "soft": soft,
            }
        )
    )
    s = np.array(shift).reshape(-1, 2)
    print(
        f"{len(out)} pseudo-tensors written to {args.out}; {len(failed)} left out; "
        f"{len(soft)} teacher tensors of tensor crystals (for train.soft_weight)"
    )
    if len(s):
        print(
            f"teacher's |ln(pred/DFT)| before the shift: K median {np.median(s[:, 0]):.3f}, "
            f"G median {np.median(s[:, 1]):.3f}"
        )
    for f in failed[:10]:
        print(f"  left out: {f}")
    return 0 if out else 1


if __name__ == "__main__":
    sys.exit(main())
