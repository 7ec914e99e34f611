"""Predict elastic tensors of structures with a trained model (or an ensemble).

>>> import e3elastic
>>> model = e3elastic.load_model("default")                       # doctest: +SKIP
>>> [r] = e3elastic.predict(["examples/silicon.cif"], model=model)  # doctest: +SKIP
>>> r["voigt_GPa"][0][0], r["K_VRH_GPa"]                           # doctest: +SKIP

Each result is a :class:`~e3elastic.inference.prediction.Prediction`, a dict with methods
(JSON-ready apart from numpy arrays, see :func:`to_json_ready`):

``file``, ``id``, ``formula``, ``voigt_GPa`` (6x6), ``cartesian_GPa`` (3x3x3x3), the derived
moduli of :func:`e3elastic.tensors.derived_properties` (``K_VRH_GPa``, ``G_VRH_GPa``,
``youngs_modulus_GPa``, ``poisson_ratio``, ``universal_anisotropy``, ``min_eigenvalue_GPa``,
``born_stable``, and the Voigt/Reuss bounds), ``warnings`` (a list of ``"code: sentence"``
strings for inputs outside the model's domain, see :mod:`e3elastic.inference.domain`), with an
ensemble ``voigt_std_GPa``, ``K_VRH_std_GPa`` and ``G_VRH_std_GPa``, and ``error``: None, or
why this structure failed (its other fields are then None). A failing structure never stops
the others: unreadable files,
structures the graph code refuses (:class:`~e3elastic.graph.GraphError`: overlapping atoms,
isolated atoms, degenerate cells), atoms more than ``MAX_FRACTIONAL`` cells from the origin,
structures with more than ``max_edges`` neighbour pairs, and failures of the model on one
structure all end up in ``error``. Atoms are wrapped into the cell before the graph is built,
so coordinates far outside it (1e8 Angstrom) give the same prediction as inside it.

The tensor is in the Cartesian frame of the structure as given: the network is equivariant, so
rotating the input rotates the output. ``symmetrize=True`` averages the prediction over the
structure's point group (spglib with tolerance ``symprec``, default :data:`SYMPREC` Angstrom),
making its symmetry exact.

Every result also records where it came from: ``model`` (name, version, e3elastic version,
members), ``theory``, ``lattice_A`` (the 3x3 lattice, rows a, b, c in Angstrom: the Cartesian
frame of the tensor) and ``symmetry`` (space group, point group, crystal system, the
``symprec`` used, and whether the tensor was symmetrized).

Loading a model (and the :class:`Model` itself) is :mod:`e3elastic.inference.models`, reading
and checking the inputs :mod:`e3elastic.inference.structures`, the network's compiled programs
:mod:`e3elastic.inference.programs`, the batch loop
:func:`e3elastic.network.interface.predict_irreps`; their public names are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import graph as graph_mod
from .. import tensors
from ..config import THEORIES
from ..errors import short_error
from . import domain
from .models import Model, load_model
from .prediction import RESULT_KEYS, Prediction, moduli_intervals, tensor_fields, to_json_ready
from .programs import inference_buckets
from .structures import (
    MAX_FRACTIONAL,
    STRUCTURE_SUFFIXES,
    SYMPREC,
    PredictError,
    as_structure,
    check_structure,
    expand_paths,
    input_items,
    read_structure,
    symmetry,
    symmetry_or_none,
    wrapped_into_cell,
)

__all__ = [
    "MAX_EDGES",
    "MAX_FRACTIONAL",
    "STRUCTURE_SUFFIXES",
    "SYMPREC",
    "Model",
    "PredictError",
    "Prediction",
    "expand_paths",
    "load_model",
    "predict",
    "read_structure",
    "symmetry",
    "to_json_ready",
]

#: Default edge budget of one structure (neighbour pairs within the cutoff); a structure with
#: more (atoms packed far denser than any crystal, or a huge supercell) is reported as an error
#: instead of taking minutes and gigabytes.
MAX_EDGES = 300_000


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def predict(
    structures: Iterable[Any],
    model: Model | str | os.PathLike | None = None,
    *,
    symmetrize: bool = False,
    batch_size: int = 8,
    progress=None,
    max_edges: int | None = MAX_EDGES,
    theory: str | None = None,
    symprec: float = SYMPREC,
) -> Prediction | list[Prediction]:
    """Predict C for each structure (see the module docstring for the result fields).

    One Structure, ASE Atoms or file path gives one
    :class:`~e3elastic.inference.prediction.Prediction`;
    a list (or a folder or glob pattern, expanded as on the command line) gives a list.

    ``progress(done, total)`` is called after each batch when given. A structure with more
    than ``max_edges`` neighbour pairs (None: no limit) gets an error instead of a result.
    ``theory`` (``pbe``, the default, or ``b3lyp-d2``) is the level of theory whose tensor
    the model should give, for a model trained on several. ``symprec`` (Angstrom) is the
    symmetry tolerance reported in ``symmetry`` and used by ``symmetrize``.
    """
    if not (isinstance(symprec, int | float) and np.isfinite(symprec) and symprec > 0):
        raise ValueError(f"symprec must be a positive number of Angstrom, got {symprec!r}")
    if not isinstance(model, Model):
        model = load_model(model)
    theory_input = model.theory_index(theory)
    provenance = model.provenance()
    items, single = input_items(structures)
    results: list[Prediction] = []
    ready: list[tuple[int, Any, np.ndarray | None]] = []  # (result index, graph, rotations)
    for item in items:
        res = _new_result(item, provenance, THEORIES[theory_input])
        prepared = _prepare(res, item, model, symmetrize, symprec, max_edges)
        if prepared is not None:
            ready.append((len(results), *prepared))
        results.append(res)
    _predict_prepared(model, ready, results, batch_size, theory_input, progress)
    for r in results:
        if r["error"] is not None:
            for k in RESULT_KEYS:
                r.setdefault(k, None)
    return results[0] if single else results


def _new_result(item: Any, provenance: dict[str, Any], theory: str) -> Prediction:
    """The result of one input before anything is known about it."""
    label = str(item) if isinstance(item, str | os.PathLike) else None
    return Prediction(
        {
            "file": label,
            "id": label,  # a file's label even when it cannot be read
            "formula": None,
            "error": None,
            "warnings": [],
            "model": provenance,
            "theory": theory,
            "lattice_A": None,
            "symmetry": None,
        }
    )


def _prepare(
    res: Prediction, item: Any, model: Model, symmetrize: bool, symprec: float, max_edges
) -> tuple[Any, np.ndarray | None] | None:
    """Read and check one input, filling ``res`` (id, formula, lattice, warnings, symmetry):
    ``(graph, rotations to symmetrize over or None)``, or None with ``res["error"]`` set."""
    try:
        name, s, read_notes = as_structure(item)
        check_structure(s)
        res["id"] = name
        res["formula"] = s.composition.reduced_formula
        res["lattice_A"] = np.asarray(s.lattice.matrix, np.float64)
        s = wrapped_into_cell(s)
        g = graph_mod.structure_to_graph(s, model.config.model.cutoff, id=name, max_edges=max_edges)
        res["warnings"] = read_notes + domain.structure_warnings(
            s, g, model.info.get("training_set")
        )
        rotations = _symmetry_fields(res, s, symmetrize, symprec)
        return g, rotations if symmetrize else None
    except graph_mod.GraphError as e:
        text = str(e).removeprefix(f"{res.get('id')}: ")
        res["error"] = text.replace(
            "; pass allow_isolated=True to accept it",
            ": an isolated atom (an atom or a molecule alone in a box) cannot be predicted",
        )
    except (PredictError, ValueError) as e:
        res["error"] = str(e) if str(e) else short_error(e)
    except Exception as e:  # pymatgen and friends raise many types on odd input
        res["error"] = f"cannot use this structure: {short_error(e)}"
    return None


def _symmetry_fields(res: Prediction, s, symmetrize: bool, symprec: float) -> np.ndarray | None:
    """Fill ``res["symmetry"]`` (and a ``symmetry-p1`` warning); the point group's rotations."""
    rotations, res["symmetry"] = symmetry_or_none(s, symprec)
    if symmetrize:
        if rotations is None:
            raise PredictError("cannot symmetrize: spglib found no symmetry for this cell")
        res["symmetry"]["symmetrized"] = True
        if len(rotations) <= 2:  # 1 or -1: no constraint on a 4th-rank tensor
            res["warnings"].append(
                f"symmetry-p1: found only point group {res['symmetry']['point_group']} "
                f"at symprec {symprec:g} A, so symmetrizing changed nothing; a larger "
                "--symprec may find the intended symmetry"
            )
    elif res["symmetry"] is not None:
        res["symmetry"]["symmetrized"] = False
    return rotations


def _predict_prepared(
    model: Model,
    ready: list[tuple[int, Any, np.ndarray | None]],
    results: list[Prediction],
    batch_size: int,
    theory_input: int,
    progress,
) -> None:
    """Run the model on the prepared graphs in chunks and fill their results. A chunk that
    fails (e.g. out of memory) is retried one structure at a time, each padded to one of the
    chunk's shapes, so only the culprit fails."""
    done = 0
    chunk_size = max(1, batch_size) * 8
    for start in range(0, len(ready), chunk_size):
        chunk = ready[start : start + chunk_size]
        graphs = [g for _, g, _ in chunk]
        buckets = inference_buckets(graphs, batch_size)
        batch_error = None
        try:
            irreps = model.predict_irreps(graphs, batch_size, theory_input, buckets)  # (M, n, 21)
        except Exception as e:  # e.g. out of memory: retry one by one, so only the culprit fails
            irreps, batch_error = None, short_error(e)
        for j, (i, g, rotations) in enumerate(chunk):
            try:
                one = (
                    irreps[:, j]
                    if irreps is not None
                    else model.predict_irreps([g], batch_size, theory_input, buckets)[:, 0]
                )
                voigts = model.voigt(one)
                results[i].update(
                    _result_fields(voigts, rotations, model.sigma_scale, model.interval_scale)
                )
                results[i]["warnings"] += domain.ensemble_warnings(voigts)
                results[i]["warnings"] += domain.stiffness_warnings(
                    results[i]["K_VRH_GPa"], results[i]["G_VRH_GPa"]
                )
            except Exception as e:  # non-finite output, singular tensor, model failure
                results[i]["error"] = f"prediction failed: {short_error(e)}" + (
                    f" (its batch of {len(chunk)} had failed first: {batch_error})"
                    if batch_error
                    else ""
                )
        done += len(chunk)
        if progress is not None:
            progress(done, len(ready))


def _result_fields(
    member_voigts: np.ndarray,
    rotations: np.ndarray | None,
    sigma_scale: dict[str, float],
    interval_scale: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Result fields from the members' Voigt tensors, averaged over ``rotations`` if given;
    an ensemble's standard deviations are multiplied by ``sigma_scale``, and its log-space
    intervals of the moduli use ``interval_scale``."""
    carts = tensors.voigt_to_cartesian(member_voigts)  # (M, 3, 3, 3, 3)
    if rotations is not None:
        carts = tensors.symmetrize(carts, rotations)
    voigts = tensors.cartesian_to_voigt(carts)
    if not np.all(np.isfinite(voigts)):
        raise ValueError("the model gave non-finite values")
    mean = voigts.mean(axis=0)
    props = tensors.derived_properties(mean)
    if not all(np.isfinite(props[k]) for k in ("K_VRH_GPa", "G_VRH_GPa")):
        raise ValueError(
            "the model gave an extreme tensor (condition number beyond float64); no finite moduli"
        )
    out = tensor_fields(mean, props)
    if len(voigts) > 1:
        k_all = tensors.bulk_modulus(voigts)["hill"]
        g_all = tensors.shear_modulus(voigts)["hill"]
        out["voigt_std_GPa"] = voigts.std(axis=0, ddof=1) * sigma_scale.get("voigt", 1.0)
        out["K_VRH_std_GPa"] = float(np.std(k_all, ddof=1)) * sigma_scale.get("K_VRH", 1.0)
        out["G_VRH_std_GPa"] = float(np.std(g_all, ddof=1)) * sigma_scale.get("G_VRH", 1.0)
        out.update(moduli_intervals(voigts, out, interval_scale))
        out["n_members"] = len(voigts)
    return out
