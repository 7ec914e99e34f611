"""Predict elastic tensors of structures with a trained model (or an ensemble).

>>> import e3elastic
>>> model = e3elastic.load_model("default")                       # doctest: +SKIP
>>> [r] = e3elastic.predict(["examples/silicon.cif"], model=model)  # doctest: +SKIP
>>> r["voigt_GPa"][0][0], r["K_VRH_GPa"]                           # doctest: +SKIP

Each result is a :class:`~e3elastic.prediction.Prediction`, a dict with methods (JSON-ready
apart from numpy arrays, see :func:`to_json_ready`):

``file``, ``id``, ``formula``, ``voigt_GPa`` (6x6), ``cartesian_GPa`` (3x3x3x3), the derived
moduli of :func:`e3elastic.tensors.derived_properties` (``K_VRH_GPa``, ``G_VRH_GPa``,
``youngs_modulus_GPa``, ``poisson_ratio``, ``universal_anisotropy``, ``min_eigenvalue_GPa``,
``born_stable``, and the Voigt/Reuss bounds), ``warnings`` (a list of ``"code: sentence"``
strings for inputs outside the model's domain, see :mod:`e3elastic.domain`), with an ensemble
``voigt_std_GPa``,
``K_VRH_std_GPa`` and ``G_VRH_std_GPa``, and ``error``: None, or why this structure failed (its
other fields are then None). A failing structure never stops the others: unreadable files,
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
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import domain, tensors
from . import graph as graph_mod
from .config import Config
from .errors import E3ElasticError, short_error
from .files import atomic_write
from .prediction import RESULT_KEYS, Prediction, to_json_ready

__all__ = [
    "Model",
    "Prediction",
    "expand_paths",
    "load_model",
    "predict",
    "read_structure",
    "to_json_ready",
]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = "default"

#: Default edge budget of one structure (neighbour pairs within the cutoff); a structure with
#: more (atoms packed far denser than any crystal, or a huge supercell) is reported as an error
#: instead of taking minutes and gigabytes.
MAX_EDGES = 300_000
#: Atoms further than this many cells from the origin (fractional coordinate) are refused:
#: float64 cannot place them within the cell to better than ~1e-7 of a lattice vector.
MAX_FRACTIONAL = 1e9

#: Default spglib tolerance (Angstrom) for the symmetry of a structure.
SYMPREC = 0.01

#: File suffixes collected from a directory.
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".extxyz", ".json", ".cssr", ".xsf")


class PredictError(E3ElasticError, ValueError):
    """A model or input cannot be used; the message says which and why."""


@dataclass
class Model:
    """One or more bundles with the same architecture (more than one: a deep ensemble)."""

    config: Config
    members: list[tuple[Any, dict[str, np.ndarray]]]  # (params, stats) per member
    info: dict[str, Any]
    path: str
    name: str = ""
    version: str = ""
    #: Factors for an ensemble's standard deviations (``voigt``, ``K_VRH``, ``G_VRH``) fitted
    #: on validation data (the ensemble folder's ``calibration.json``); empty: uncalibrated.
    sigma_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._predict = None
        self.name = self.name or self.path

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def n_parameters(self) -> int:
        """Trainable parameters of one member."""
        import jax

        return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(self.members[0][0])))

    def __repr__(self) -> str:
        trained = (self.info.get("training_set") or {}).get("theories") or {}
        data = ", ".join(f"{n} {t}" for t, n in trained.items())
        return (
            f"Model({self.name!r}, config={self.config.name!r}, "
            f"parameters={self.n_parameters:,}, members={self.n_members}, "
            f"version={self.version!r}" + (f", trained on {data}" if data else "") + ")"
        )

    def provenance(self) -> dict[str, Any]:
        from . import __version__

        out = {
            "name": self.name,
            "version": self.version,
            "e3elastic": __version__,
            "members": self.n_members,
        }
        if self.n_members > 1:
            out["sigma_calibrated"] = bool(self.sigma_scale)
        return out

    def _fn(self):
        """``apply(params, inputs)``: the network, compiled once per input shape."""
        if self._predict is None:
            self._predict = _StoredPrograms(self.config)
        return self._predict

    def theory_index(self, theory: str | None) -> int:
        """Input index of a level of theory; ``PredictError`` if the model cannot take it."""
        if theory is None:
            return 0
        from .config import THEORIES, theory_index

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
        from .interface import batch_inputs

        fn = self._fn()
        out = np.zeros((self.n_members, len(graphs), 21))
        if not graphs:
            return out
        buckets = buckets or _inference_buckets(graphs, batch_size)
        for b in graph_mod.batches(graphs, batch_size=batch_size, buckets=buckets):
            inp = batch_inputs(b, np.float32, theory)
            real = b.graph_index >= 0
            for k, (params, stats) in enumerate(self.members):
                y = np.asarray(fn(params, inp), np.float64)
                out[k, b.graph_index[real]] = stats["shift"] + stats["scale"] * y[real]
        return out

    def voigt(self, outputs: np.ndarray) -> np.ndarray:
        """Voigt stiffness ``(..., 6, 6)`` (GPa) from :meth:`predict_irreps` outputs."""
        from .interface import voigt_from_outputs

        return voigt_from_outputs(outputs, self.config.model)


class _StoredPrograms:
    """The network's jitted ``apply``, one program per input shape, each kept on disk.

    Tracing the flax/e3nn network takes seconds; so every program is also exported
    (``jax.export``, StableHLO) to ``<cache>/exported/``, keyed by the architecture
    (:func:`e3elastic.checkpoint.architecture_key`), the input and parameter shapes, the
    backend and the precision mode. A later process deserialises it instead of tracing, and XLA
    compiles it from the persistent compilation cache. Without a usable cache (or without the
    ``flatbuffers`` package that serialisation needs) it falls back to a plain ``jax.jit``.
    """

    def __init__(self, config: Config):
        self.config = config
        self.programs: dict[Any, Any] = {}

    def _jitted(self):
        import jax

        from .model import ElasticityNet

        return jax.jit(ElasticityNet(self.config.model).apply)

    def __call__(self, params, inputs):
        sig = tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in sorted(inputs.items()))
        fn = self.programs.get(sig)
        if fn is None:
            fn = self.programs[sig] = self._program(params, inputs, sig)
        return fn(params, inputs)

    def _program(self, params, inputs, sig):
        import hashlib

        import jax

        from .checkpoint import architecture_key
        from .runtime import cache_root

        try:
            from jax import export
        except ImportError:
            return self._jitted()
        leaves = jax.tree_util.tree_leaves(params)
        key = repr(
            (
                architecture_key(self.config),
                sig,
                [(np.shape(a), np.asarray(a).dtype.str) for a in leaves],
                jax.default_backend(),
                bool(jax.config.jax_enable_x64),
            )
        )
        path = cache_root() / "exported" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.bin"
        try:
            return jax.jit(export.deserialize(bytearray(path.read_bytes())).call)
        except Exception:  # absent, damaged or from another jax: export it again
            pass
        jitted = self._jitted()  # the network itself (flax, e3nn-jax) only on a cache miss
        try:
            exported = export.export(jitted)(params, inputs)
            blob = exported.serialize()
        except Exception:  # e.g. no flatbuffers: serialisation unavailable
            return jitted
        try:
            atomic_write(path, blob)
        except OSError:
            pass
        return jax.jit(exported.call)


def _inference_buckets(graphs, batch_size):
    """Power-of-two shapes, so repeated calls reuse a few compiled programs."""
    n = max(g.n_node for g in graphs)
    e = max(g.n_edge for g in graphs)
    total_n = sum(g.n_node for g in graphs)
    total_e = sum(g.n_edge for g in graphs)
    nodes = 1 << max(6, int(min(total_n, max(n, 1) * batch_size) + 1).bit_length())
    edges = 1 << max(10, int(min(total_e, max(e, 1) * batch_size)).bit_length())
    return (graph_mod.Bucket(nodes, edges, batch_size + 1),)


def _bundle_dirs(path: Path) -> list[Path]:
    if (path / "MANIFEST.json").is_file():
        return [path]
    if (path / "best" / "MANIFEST.json").is_file():
        return [path / "best"]
    if (path / ".best.old" / "MANIFEST.json").is_file():
        return [path / "best"]  # an export was interrupted; load_bundle reads .best.old
    members = sorted(p for p in path.iterdir() if (p / "MANIFEST.json").is_file())
    if members:
        return members
    raise PredictError(f"{path}: no model bundle here (MANIFEST.json not found)")


def load_model(name_or_path: str | os.PathLike | None = None) -> Model:
    """Load a shipped model by name (``default``) or a bundle/run/ensemble folder by path.

    An ensemble folder holds several bundle folders (``member_0/``, ``member_1/``, ...).
    Raises :class:`PredictError` naming the file when a bundle is missing or damaged.
    """
    from .checkpoint import CheckpointError, load_bundle

    name = DEFAULT_MODEL if name_or_path is None else name_or_path
    path = Path(name)
    if not path.exists():
        shipped = PRETRAINED_DIR / str(name)
        if shipped.is_dir():
            path = shipped
        else:
            have = (
                sorted(p.name for p in PRETRAINED_DIR.iterdir() if p.is_dir())
                if (PRETRAINED_DIR.is_dir())
                else []
            )
            raise PredictError(
                f"model {str(name)!r} is neither a folder nor a shipped model "
                f"(shipped: {', '.join(have) or 'none'})"
            )
    if not path.is_dir():
        raise PredictError(f"{path}: a model is a folder (a bundle, run or ensemble)")
    members, config, info, hashes = [], None, {}, []
    for d in _bundle_dirs(path):
        try:
            cfg, params, stats, inf = load_bundle(d)
        except CheckpointError as e:
            raise PredictError(str(e)) from None
        if config is None:
            config, info = cfg, inf
        elif cfg.model != config.model:
            raise PredictError(f"{d}: ensemble members must share one model config")
        members.append((params, stats))
        hashes.append(_params_hash(d))
    version = hashes[0] if len(hashes) == 1 else _hash_text(" ".join(hashes))
    if info.get("trained"):
        version = f"{info['trained']}+{version}"
    return Model(
        config=config,
        members=members,
        info=info,
        path=str(path),
        name=str(name),
        version=version,
        sigma_scale=_sigma_scale(path) if len(members) > 1 else {},
    )


def _sigma_scale(folder: Path) -> dict[str, float]:
    """The ``sigma_scale`` of an ensemble folder's ``calibration.json`` ({} if none)."""
    import json

    f = folder / "calibration.json"
    if not f.is_file():
        return {}
    try:
        scale = json.loads(f.read_text()).get("sigma_scale") or {}
        return {str(k): float(v) for k, v in scale.items() if np.isfinite(float(v)) and v > 0}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise PredictError(f"{f}: unreadable calibration ({e})") from None


def _params_hash(bundle: Path) -> str:
    """Short content hash of a bundle's parameters (from its MANIFEST.json)."""
    import json

    try:
        manifest = json.loads((bundle / "MANIFEST.json").read_text())
        return str(manifest["params.npz"])[:12]
    except (OSError, ValueError, KeyError):
        return "unknown"


def _hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files from paths, directories (their structure files, sorted) and glob patterns.

    A pattern or directory that matches nothing is returned as is, so it is reported as a
    failed input rather than silently dropped.
    """
    out: list[str] = []
    for p in paths:
        s = str(p)
        if any(ch in s for ch in "*?[") and not Path(s).exists():
            hits = sorted(glob.glob(s, recursive=True))
            out.extend(hits if hits else [s])
        elif Path(s).is_dir():
            hits = sorted(
                str(f)
                for f in Path(s).iterdir()
                if f.is_file()
                and (
                    f.suffix.lower() in STRUCTURE_SUFFIXES
                    or f.name.upper().startswith(("POSCAR", "CONTCAR"))
                )
            )
            out.extend(hits if hits else [s])
        else:
            out.append(s)
    return out


def read_structure(path: str | os.PathLike):
    """A pymatgen Structure from any file pymatgen (or ASE, when installed) reads."""
    import warnings

    from pymatgen.core import Structure

    p = Path(path)
    if not p.exists():
        raise PredictError("no such file")
    if p.is_dir():
        raise PredictError("a directory with no structure files")
    if p.stat().st_size == 0:
        raise PredictError("empty file")
    errors = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_file(str(p))
    except Exception as e:  # pymatgen raises many types on bad files
        errors.append(f"pymatgen: {short_error(e)}")
    try:
        from ase.io import read as ase_read
        from pymatgen.io.ase import AseAtomsAdaptor
    except ImportError:
        pass
    else:
        try:
            return AseAtomsAdaptor.get_structure(ase_read(str(p)))
        except Exception as e:
            errors.append(f"ase: {short_error(e)}")
    raise PredictError(f"not a readable structure ({'; '.join(errors)})")


def _as_structure(item: Any):
    """(label, Structure) from a Structure, an ASE Atoms or a path."""
    from pymatgen.core import Structure

    if isinstance(item, Structure):
        return item.composition.reduced_formula, item
    if type(item).__name__ == "Atoms" and hasattr(item, "get_cell"):
        from pymatgen.io.ase import AseAtomsAdaptor

        s = AseAtomsAdaptor.get_structure(item)
        return s.composition.reduced_formula, s
    if isinstance(item, str | os.PathLike):
        return str(item), read_structure(item)
    raise PredictError(
        f"cannot predict for a {type(item).__name__}; give a Structure, Atoms or path"
    )


def _check_structure(s) -> None:
    if len(s) == 0:
        raise PredictError("structure has no atoms")
    if not s.is_ordered:
        raise PredictError("structure has partial occupancies; give an ordered structure")
    lat = np.asarray(s.lattice.matrix)
    if not np.all(np.isfinite(lat)) or not np.all(np.isfinite(s.cart_coords)):
        raise PredictError("structure has non-finite lattice or coordinates")


def _wrapped(s):
    """The structure with every atom moved into the cell (fractional coordinates in [0, 1)).

    The model reads float32 positions; an atom 1e8 Angstrom away would lose all precision
    there, while the wrapped structure is the same crystal.
    """
    from pymatgen.core import Structure

    frac = np.asarray(s.frac_coords, dtype=np.float64)
    if not np.all(np.isfinite(frac)):
        raise PredictError("structure has non-finite fractional coordinates")
    far = float(np.abs(frac).max())
    if far > MAX_FRACTIONAL:
        raise PredictError(
            f"an atom lies {far:.3g} cells from the origin (more than {MAX_FRACTIONAL:g}); "
            "wrap the coordinates into the cell"
        )
    if far < 1.0 and np.all(frac >= 0.0):
        return s
    return Structure(s.lattice, s.species, frac - np.floor(frac))


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def symmetry(structure, symprec: float = SYMPREC) -> tuple[np.ndarray, dict[str, Any]]:
    """Cartesian point-group operations ``(n, 3, 3)`` of a structure and a description
    (``space_group``, ``space_group_number``, ``point_group``, ``crystal_system``, ``symprec``).

    spglib (through pymatgen) with tolerance ``symprec`` in Angstrom. A lattice symmetric only
    within ``symprec`` makes the Cartesian operations slightly non-orthogonal, and they then no
    longer form a group. So the lattice metric is first averaged over the (integer, exact)
    fractional operations, and the operations are expressed in the nearest lattice with that
    metric (the input lattice under a small symmetric strain, no rotation): they are then
    orthogonal and close into a group to float64 round-off.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    frac = np.array([op.rotation_matrix for op in sga.get_point_group_operations(cartesian=False)])
    lat_t = np.asarray(structure.lattice.matrix, np.float64).T  # columns a, b, c
    metric = lat_t.T @ lat_t
    ideal = np.mean(np.swapaxes(frac, 1, 2) @ metric @ frac, axis=0)  # invariant metric
    inv = np.linalg.inv(lat_t)
    w, v = np.linalg.eigh(inv.T @ ideal @ inv)  # S^2: the lattice becomes S @ lat_t
    strain = (v * np.sqrt(w)) @ v.T
    ideal_t = strain @ lat_t
    rots = tensors.nearest_orthogonal(ideal_t @ frac @ np.linalg.inv(ideal_t))
    return rots, {
        "space_group": sga.get_space_group_symbol(),
        "space_group_number": int(sga.get_space_group_number()),
        "point_group": sga.get_point_group_symbol(),
        "crystal_system": sga.get_crystal_system(),
        "symprec": float(symprec),
    }


def _symmetry_or_none(structure, symprec: float):
    try:
        return symmetry(structure, symprec)
    except Exception:  # spglib gives up on some odd cells; symmetry is then unknown
        return None, None


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

    One Structure, ASE Atoms or file path gives one :class:`~e3elastic.prediction.Prediction`;
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
    from .config import THEORIES

    provenance = model.provenance()
    items, single = _input_items(structures)
    results: list[Prediction] = []
    good: list[tuple[int, Any, Any]] = []  # (result index, structure, graph)
    for item in items:
        label = str(item) if isinstance(item, str | os.PathLike) else None
        res = Prediction(
            {
                "file": label,
                "id": None,
                "formula": None,
                "error": None,
                "warnings": [],
                "model": provenance,
                "theory": THEORIES[theory_input],
                "lattice_A": None,
                "symmetry": None,
            }
        )
        try:
            name, s = _as_structure(item)
            _check_structure(s)
            res["id"] = name
            res["formula"] = s.composition.reduced_formula
            res["lattice_A"] = np.asarray(s.lattice.matrix, np.float64)
            s = _wrapped(s)
            g = graph_mod.structure_to_graph(
                s, model.config.model.cutoff, id=name, max_edges=max_edges
            )
            res["warnings"] = domain.structure_warnings(s, g, model.info.get("training_set"))
            rotations, res["symmetry"] = _symmetry_or_none(s, symprec)
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
            good.append((len(results), s, g, rotations if symmetrize else None))
        except (PredictError, graph_mod.GraphError, ValueError) as e:
            res["error"] = str(e) if str(e) else short_error(e)
        except Exception as e:  # pymatgen and friends raise many types on odd input
            res["error"] = f"cannot use this structure: {short_error(e)}"
        results.append(res)

    done = 0
    for start in range(0, len(good), max(1, batch_size) * 8):
        chunk = good[start : start + max(1, batch_size) * 8]
        graphs = [g for _, _, g, _ in chunk]
        buckets = _inference_buckets(graphs, batch_size)
        batch_error = None
        try:
            irreps = model.predict_irreps(graphs, batch_size, theory_input, buckets)  # (M, n, 21)
        except Exception as e:  # e.g. out of memory: retry one by one, so only the culprit fails
            irreps, batch_error = None, short_error(e)
        for j, (i, _s, g, rotations) in enumerate(chunk):
            try:
                one = (
                    irreps[:, j]
                    if irreps is not None  # the same padded shapes: no new compilation
                    else model.predict_irreps([g], batch_size, theory_input, buckets)[:, 0]
                )
                voigts = model.voigt(one)
                results[i].update(_finish(voigts, rotations, model.sigma_scale))
                results[i]["warnings"] += domain.ensemble_warnings(voigts)
            except Exception as e:  # non-finite output, singular tensor, model failure
                results[i]["error"] = f"prediction failed: {short_error(e)}" + (
                    f" (its batch of {len(chunk)} had failed first: {batch_error})"
                    if batch_error
                    else ""
                )
        done += len(chunk)
        if progress is not None:
            progress(done, len(good))
    for r in results:
        if r["error"] is not None:
            for k in RESULT_KEYS:
                r.setdefault(k, None)
    return results[0] if single else results


def _input_items(structures: Any) -> tuple[list[Any], bool]:
    """(items, single): one Structure/Atoms/file is a single input; a list, a folder or a
    glob pattern is expanded into many."""
    from pymatgen.core import Structure

    if isinstance(structures, Structure) or (
        type(structures).__name__ == "Atoms" and hasattr(structures, "get_cell")
    ):
        return [structures], True
    if isinstance(structures, str | os.PathLike):
        s = str(structures)
        if Path(s).is_file():
            return [s], True
        return list(expand_paths([s])), False
    items: list[Any] = []
    for item in structures:
        if isinstance(item, str | os.PathLike) and not Path(str(item)).is_file():
            items.extend(expand_paths([item]))
        else:
            items.append(item)
    return items, False


def _finish(
    member_voigts: np.ndarray, rotations: np.ndarray | None, sigma_scale: dict[str, float]
) -> dict[str, Any]:
    """Result fields from the members' Voigt tensors, averaged over ``rotations`` if given;
    an ensemble's standard deviations are multiplied by ``sigma_scale``."""
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
    out: dict[str, Any] = {
        "voigt_GPa": mean,
        "cartesian_GPa": tensors.voigt_to_cartesian(mean),
    }
    for k, v in props.items():
        out[k] = bool(v) if k == "born_stable" else float(v)
    if len(voigts) > 1:
        k_all = tensors.bulk_modulus(voigts)["hill"]
        g_all = tensors.shear_modulus(voigts)["hill"]
        out["voigt_std_GPa"] = voigts.std(axis=0, ddof=1) * sigma_scale.get("voigt", 1.0)
        out["K_VRH_std_GPa"] = float(np.std(k_all, ddof=1)) * sigma_scale.get("K_VRH", 1.0)
        out["G_VRH_std_GPa"] = float(np.std(g_all, ddof=1)) * sigma_scale.get("G_VRH", 1.0)
        out["n_members"] = len(voigts)
    return out
