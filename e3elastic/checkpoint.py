"""Checkpoints for training (orbax) and inference bundles (plain files, no pickle).

Training state lives in ``<workdir>/ckpt/<step>/`` through an orbax ``CheckpointManager``:
params, optimizer state, step, epoch and RNG as arrays (``StandardSave``), plus a JSON ``meta``
part with the config, normalisation statistics, split ids and the early-stopping record. orbax
writes each step to a temporary folder and renames it when complete, so a killed run never
leaves a step that looks finished. :meth:`TrainCheckpoints.restore` falls back to the previous
step when the latest one cannot be read, and says which step it skipped and why.

An inference bundle is a folder::

    config.json     the run config (rebuilds the model)
    params.npz      weights, flattened with "/" keys (numpy, allow_pickle=False)
    stats.json      irreps normalisation: shift and scale, 21 numbers each (GPa)
    info.json       training data, split, metrics, date (free-form)
    MANIFEST.json   sha256 of every file above

Loading checks every hash (a truncated or damaged file is named), loads arrays without
pickle, and refuses weights whose shapes differ from the ones its config builds. Neither path
can execute code from the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config

__all__ = [
    "BUNDLE_FILES",
    "CheckpointError",
    "TrainCheckpoints",
    "export_bundle",
    "flatten_params",
    "load_bundle",
    "unflatten_params",
]

BUNDLE_FILES = ("config.json", "params.npz", "stats.json", "info.json")


class CheckpointError(ValueError):
    """A checkpoint or bundle is missing, damaged or does not fit its config."""


# --------------------------------------------------------------------------------------------
# Parameter trees <-> flat dicts
# --------------------------------------------------------------------------------------------


def flatten_params(tree: Any, prefix: str = "", *, as_numpy: bool = True) -> dict[str, Any]:
    """Nested dict of arrays -> ``{"a/b/c": array}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if "/" in str(key):
            raise CheckpointError(f"parameter name {key!r} contains '/'")
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(flatten_params(value, name + "/", as_numpy=as_numpy))
        else:
            out[name] = np.asarray(value) if as_numpy else value
    return out


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


# --------------------------------------------------------------------------------------------
# Inference bundles
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def export_bundle(
    path: str | os.PathLike,
    config: Config,
    params: Any,
    stats: dict[str, Any],
    info: dict[str, Any] | None = None,
) -> Path:
    """Write an inference bundle atomically (a temporary folder renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "config.json").write_text(config.to_json())
        flat = {k: np.asarray(v, np.float32) for k, v in flatten_params(params).items()}
        with open(tmp / "params.npz", "wb") as f:
            np.savez(f, **flat)
        st = {k: np.asarray(stats[k], np.float64).tolist() for k in ("shift", "scale")}
        (tmp / "stats.json").write_text(json.dumps(st))
        (tmp / "info.json").write_text(
            json.dumps(info or {}, indent=2, sort_keys=True, default=_json_default)
        )
        manifest = {name: _sha256(tmp / name) for name in BUNDLE_FILES}
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def load_bundle(path: str | os.PathLike) -> tuple[Config, dict[str, Any], dict, dict]:
    """Read a bundle: ``(config, params, stats, info)``; raises :class:`CheckpointError`.

    Every file's sha256 must match ``MANIFEST.json``; params are read with
    ``allow_pickle=False`` and their shapes are checked against the model the config builds.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model bundle folder")
    manifest_path = path / "MANIFEST.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: MANIFEST.json missing; not a complete bundle")
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: not a JSON object")
    for name in BUNDLE_FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the bundle")
        if manifest.get(name) != _sha256(f):
            raise CheckpointError(f"{f}: content does not match MANIFEST.json (damaged or edited)")
    try:
        config = Config.from_json((path / "config.json").read_text())
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from e
    try:
        with np.load(path / "params.npz", allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path / 'params.npz'}: cannot read weights ({e})") from e
    stats_raw = _read_json(path / "stats.json")
    try:
        stats = {k: np.asarray(stats_raw[k], np.float64).reshape(21) for k in ("shift", "scale")}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'stats.json'}: needs 'shift' and 'scale' (21 each)") from e
    info = _read_json(path / "info.json")
    params = unflatten_params(flat)
    check_param_shapes(config, params, where=str(path / "params.npz"))
    return config, params, stats, info


def expected_param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Parameter shapes the config's model has (traced abstractly, nothing compiled)."""
    import jax
    import jax.numpy as jnp

    from .model import ElasticityNet

    n, e, g = 3, 4, 2
    inputs = {
        "species": jnp.zeros(n, jnp.int32),
        "positions": jnp.zeros((n, 3), jnp.float32),
        "lattice": jnp.zeros((g, 3, 3), jnp.float32),
        "senders": jnp.zeros(e, jnp.int32),
        "receivers": jnp.zeros(e, jnp.int32),
        "cell_shifts": jnp.zeros((e, 3), jnp.int32),
        "edge_graph": jnp.zeros(e, jnp.int32),
        "node_graph": jnp.zeros(n, jnp.int32),
        "node_mask": jnp.ones(n, bool),
        "graph_mask": jnp.ones(g, bool),
    }
    net = ElasticityNet(config.model)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), inputs)
    return {k: tuple(v.shape) for k, v in flatten_params(shapes, as_numpy=False).items()}


def check_param_shapes(config: Config, params: Any, where: str = "params") -> None:
    want = expected_param_shapes(config)
    have = {k: tuple(np.shape(v)) for k, v in flatten_params(params).items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if extra:
            parts.append(f"unexpected {extra[:3]}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shape, e.g. {k}: {have[k]} != {want[k]}")
        raise CheckpointError(
            f"{where}: weights do not match the model built from its config ({'; '.join(parts)})"
        )


# --------------------------------------------------------------------------------------------
# Training checkpoints (orbax)
# --------------------------------------------------------------------------------------------


class TrainCheckpoints:
    """Save and restore full training state under ``<workdir>/ckpt`` with orbax."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(workdir).absolute() / "ckpt"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        ocp = self._ocp
        meta = json.loads(json.dumps(meta, default=_json_default))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, log=print) -> tuple[int, Any, dict] | None:
        """Latest readable ``(step, state, meta)``, or None when there is no checkpoint.

        A step that fails to load is reported through ``log`` and the previous one is tried.
        Raises :class:`CheckpointError` when steps exist but none can be read.
        """
        ocp = self._ocp
        steps = self.steps()
        if not steps:
            return None
        errors = []
        for step in reversed(steps):
            try:
                out = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                return step, out["state"], dict(out["meta"])
            except Exception as e:  # orbax raises many types for damaged files
                msg = f"checkpoint step {step} in {self.directory} is unreadable: {_short(e)}"
                errors.append(msg)
                log(msg + "; trying the previous step")
        raise CheckpointError("no readable checkpoint: " + " | ".join(errors))

    def close(self) -> None:
        self.manager.close()


def _short(e: BaseException, limit: int = 200) -> str:
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s if len(s) <= limit else s[: limit - 3] + "..."
