"""A loaded model: one network's bundle, or a deep ensemble of bundles (possibly of several
architectures), with its calibration; :func:`load_model` reads it from a shipped name or a
folder (bundle, run or ensemble). :mod:`e3elastic.inference.predictor` runs it on structures.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import tensors
from ..config import THEORIES, Config, theory_index
from ..network.interface import predict_irreps, voigt_from_outputs
from .bundle import CheckpointError, bundle_dirs, load_bundle, model_folder
from .programs import StoredPrograms, inference_buckets
from .structures import PredictError

__all__ = ["DEFAULT_MODEL", "SHARED_MODEL_FIELDS", "Model", "load_model"]

DEFAULT_MODEL = "default"


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
