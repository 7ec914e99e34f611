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

Reading and checking the inputs is :mod:`e3elastic.inference.structures`, the network's compiled
programs :mod:`e3elastic.inference.programs`, the batch loop
:func:`e3elastic.network.interface.predict_irreps`; their public names are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import graph as graph_mod
from .. import tensors
from ..config import THEORIES, Config, theory_index
from ..errors import short_error
from ..network.interface import predict_irreps, voigt_from_outputs
from . import domain
from .bundle import CheckpointError, bundle_dirs, load_bundle, model_folder
from .prediction import RESULT_KEYS, Prediction, moduli_intervals, tensor_fields, to_json_ready
from .programs import StoredPrograms, inference_buckets
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

DEFAULT_MODEL = "default"

#: Default edge budget of one structure (neighbour pairs within the cutoff); a structure with
#: more (atoms packed far denser than any crystal, or a huge supercell) is reported as an error
#: instead of taking minutes and gigabytes.
MAX_EDGES = 300_000


@dataclass
class Model:
    """One or more bundles (more than one: a deep ensemble).

    Members of one architecture are ``members``; a mixed ensemble keeps the members of each
    further architecture in ``others``, models of their own that build the same graphs
    (cutoff), share the head and the levels of theory, and whose members follow this one's
    in every ``(n_members, ...)`` output."""

    config: Config
    members: list[tuple[Any, dict[str, np.ndarray]]]  # (params, stats) per member
    info: dict[str, Any]
    path: str
    name: str = ""
    version: str = ""
    #: Factors for an ensemble's standard deviations (``voigt``, ``K_VRH``, ``G_VRH``) fitted
    #: on validation data (the ensemble folder's ``calibration.json``); empty: uncalibrated.
    sigma_scale: dict[str, float] = field(default_factory=dict)
    #: Half-widths (in log-space standard deviations) of the 68 % and 95 % intervals of K_VRH,
    #: G_VRH and Young's modulus, fitted on validation data (``calibration.json``'s
    #: ``interval_scale``); empty: the Gaussian values.
    interval_scale: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The members of other architectures in a mixed ensemble (see the class docstring).
    others: list[Model] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._compiled = None
        self.name = self.name or self.path

    @property
    def n_members(self) -> int:
        return len(self.members) + sum(o.n_members for o in self.others)

    @property
    def n_parameters(self) -> int:
        """Trainable parameters of one member (of the first architecture in a mixed ensemble)."""
        import jax

        return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(self.members[0][0])))

    def _parameter_text(self) -> str:
        return " + ".join(
            f"{m.n_parameters:,}" + (f" x{len(m.members)}" if self.others else "")
            for m in (self, *self.others)
        )

    def __repr__(self) -> str:
        trained = (self.info.get("training_set") or {}).get("theories") or {}
        data = ", ".join(f"{n} {t}" for t, n in trained.items())
        return (
            f"Model({self.name!r}, config={self.config.name!r}, "
            f"parameters={self._parameter_text()}, members={self.n_members}, "
            f"version={self.version!r}" + (f", trained on {data}" if data else "") + ")"
        )

    def provenance(self) -> dict[str, Any]:
        from .. import __version__

        out = {
            "name": self.name,
            "version": self.version,
            "e3elastic": __version__,
            "members": self.n_members,
        }
        if self.n_members > 1:
            out["sigma_calibrated"] = bool(self.sigma_scale)
            out["intervals_calibrated"] = bool(self.interval_scale)
        return out

    def compiled(self) -> StoredPrograms:
        """``apply(params, inputs)``: the network, compiled once per input shape."""
        if self._compiled is None:
            self._compiled = StoredPrograms(self.config)
        return self._compiled

    def theory_index(self, theory: str | None) -> int:
        """Input index of a level of theory; ``PredictError`` if the model cannot take it."""
        if theory is None:
            return 0
        try:
            i = theory_index(theory)
        except ValueError as e:
            raise PredictError(str(e)) from None
        if i >= max(1, self.config.model.n_theories):
            raise PredictError(
                f"this model was trained for {THEORIES[0].lower()} only; "
                f"it cannot predict {theory!r}"
            )
        return i

    def predict_irreps(
        self, graphs: Sequence[Any], batch_size: int = 8, theory: Any = 0, buckets=None
    ) -> np.ndarray:
        """``(n_members, n, 21)`` denormalised head outputs for graphs (irreps of C in GPa, or of
        its logarithm for a log-head model; :meth:`voigt` turns them into C).

        ``theory`` is one level-of-theory index for all graphs or one per graph. ``buckets``
        (default: sized to these graphs) fixes the padded shapes, so a later call with the same
        buckets reuses the compiled program."""
        apply = self.compiled()
        if not graphs:
            return np.zeros((self.n_members, 0, tensors.N_IRREPS))
        buckets = buckets or inference_buckets(graphs, batch_size)
        out = predict_irreps(apply, self.members, graphs, buckets, batch_size, np.float32, theory)
        if not self.others:
            return out
        rest = [o.predict_irreps(graphs, batch_size, theory, buckets) for o in self.others]
        return np.concatenate([out, *rest], axis=0)

    def voigt(self, outputs: np.ndarray) -> np.ndarray:
        """Voigt stiffness ``(..., 6, 6)`` (GPa) from :meth:`predict_irreps` outputs."""
        return voigt_from_outputs(outputs, self.config.model)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_model(name_or_path: str | os.PathLike | None = None) -> Model:
    """Load a shipped model by name (``default``) or a bundle/run/ensemble folder by path.

    An ensemble folder holds several bundle folders (``member_0/``, ``member_1/``, ...).
    Raises :class:`PredictError` naming the file when a bundle is missing or damaged.
    """
    name = DEFAULT_MODEL if name_or_path is None else name_or_path
    path = _model_folder(name)
    groups: list[tuple[Config, list]] = []  # (config, members) per architecture
    info, hashes = {}, []
    try:
        dirs = bundle_dirs(path)
    except CheckpointError as e:
        raise PredictError(str(e)) from None
    for d in dirs:
        try:
            cfg, params, stats, inf = load_bundle(d)
        except CheckpointError as e:
            raise PredictError(str(e)) from None
        if not groups:
            info = inf
        else:
            _check_compatible(d, groups[0][0], cfg)
        for config, members in groups:
            if config.model == cfg.model:
                members.append((params, stats))
                break
        else:
            groups.append((cfg, [(params, stats)]))
        hashes.append(_params_hash(d))
    version = hashes[0] if len(hashes) == 1 else _hash_text(" ".join(hashes))
    if info.get("trained"):
        version = f"{info['trained']}+{version}"
    several = len(hashes) > 1
    others = [
        Model(config=c, members=m, info=info, path=str(path), name=str(name), version=version)
        for c, m in groups[1:]
    ]
    return Model(
        config=groups[0][0],
        members=groups[0][1],
        info=info,
        path=str(path),
        name=str(name),
        version=version,
        sigma_scale=_sigma_scale(path) if several else {},
        interval_scale=_interval_scale(path) if several else {},
        others=others,
    )


#: What every member of an ensemble must share: the graphs it reads (cutoff), what its outputs
#: mean (head and its unit) and the levels of theory it takes.
SHARED_MODEL_FIELDS = ("cutoff", "head", "log_reference", "n_theories")


def _check_compatible(where: Path, first: Config, cfg: Config) -> None:
    differ = [
        f"{k} {getattr(cfg.model, k)!r} against {getattr(first.model, k)!r}"
        for k in SHARED_MODEL_FIELDS
        if getattr(cfg.model, k) != getattr(first.model, k)
    ]
    if differ:
        raise PredictError(
            f"{where}: ensemble members must share "
            f"{', '.join(SHARED_MODEL_FIELDS)}; this one has {'; '.join(differ)}"
        )


def _model_folder(name: str | os.PathLike) -> Path:
    """The folder of a model: ``name`` itself when it exists, else the shipped model."""
    try:
        path = model_folder(name)
    except CheckpointError as e:
        raise PredictError(str(e)) from None
    if not path.is_dir():
        raise PredictError(f"{path}: a model is a folder (a bundle, run or ensemble)")
    return path


def _sigma_scale(folder: Path) -> dict[str, float]:
    """The ``sigma_scale`` of an ensemble folder's ``calibration.json`` ({} if none)."""
    f = folder / "calibration.json"
    if not f.is_file():
        return {}
    try:
        scale = json.loads(f.read_text()).get("sigma_scale") or {}
        return {str(k): float(v) for k, v in scale.items() if np.isfinite(float(v)) and v > 0}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise PredictError(f"{f}: unreadable calibration ({e})") from None


def _interval_scale(folder: Path) -> dict[str, dict[str, float]]:
    """The ``interval_scale`` of an ensemble folder's ``calibration.json`` ({} if none)."""
    f = folder / "calibration.json"
    if not f.is_file():
        return {}
    try:
        scale = json.loads(f.read_text()).get("interval_scale") or {}
        return {
            str(q): {str(lv): float(k) for lv, k in levels.items() if float(k) > 0}
            for q, levels in scale.items()
        }
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise PredictError(f"{f}: unreadable calibration ({e})") from None


def _params_hash(bundle: Path) -> str:
    """Short content hash of a bundle's parameters (from its MANIFEST.json)."""
    try:
        manifest = json.loads((bundle / "MANIFEST.json").read_text())
        return str(manifest["params.npz"])[:12]
    except (OSError, ValueError, KeyError):
        return "unknown"


def _hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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
            "id": None,
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
        name, s = as_structure(item)
        check_structure(s)
        res["id"] = name
        res["formula"] = s.composition.reduced_formula
        res["lattice_A"] = np.asarray(s.lattice.matrix, np.float64)
        s = wrapped_into_cell(s)
        g = graph_mod.structure_to_graph(s, model.config.model.cutoff, id=name, max_edges=max_edges)
        res["warnings"] = domain.structure_warnings(s, g, model.info.get("training_set"))
        rotations = _symmetry_fields(res, s, symmetrize, symprec)
        return g, rotations if symmetrize else None
    except (PredictError, graph_mod.GraphError, ValueError) as e:
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
    fails (e.g. out of memory) is retried one structure at a time with the same padded shapes
    (no new compilation), so only the culprit fails."""
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
