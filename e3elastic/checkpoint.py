"""Checkpoints for training (orbax) and inference bundles (plain files, no pickle).

Training state lives in ``<workdir>/ckpt/<step>/`` through an orbax ``CheckpointManager``:
params, optimizer state, step, epoch and RNG as arrays (``StandardSave``), plus a JSON ``meta``
part with the config, normalisation statistics, split ids and the early-stopping record. orbax
writes each step to a temporary folder and renames it when complete, so a killed run never
leaves a step that looks finished (temporary folders left by a kill are removed when the
manager starts).

orbax does not checksum array data: a damaged data file can load as wrong numbers without any
error (a flipped byte in ``state/ocdbt.process_0/d/*`` does). So once orbax has finished a step,
:meth:`TrainCheckpoints.save` writes a sidecar ``<workdir>/ckpt_manifest/<step>.json`` with the
sha256 of every file of the step (a temporary file, fsynced and renamed into place, so it is
never half-written), and :meth:`TrainCheckpoints.restore` checks it before loading.
:meth:`TrainCheckpoints.restore` falls back to the previous step when the latest one does not
match its manifest or cannot be read, and says which step it skipped and why (naming the
file). Skipped steps newer than the restored one are moved to ``<workdir>/ckpt_damaged/`` (kept
for inspection) so that training can write those steps again. A step without a manifest (saved
by an older version, or a kill between orbax finishing and the manifest being renamed into
place) is loaded unverified, with a note through ``log``.

An inference bundle is a folder::

    config.json     the run config (rebuilds the model)
    params.npz      weights, flattened with "/" keys (numpy, allow_pickle=False)
    stats.json      irreps normalisation: shift and scale, 21 numbers each (GPa)
    info.json       training data, split, metrics, date (free-form)
    MANIFEST.json   sha256 of every file above

Loading checks every hash (a truncated or damaged file is named), reads the array headers
and refuses shapes or dtypes that differ from the ones its config builds before reading any
data (so a crafted header cannot make it allocate huge arrays), loads arrays without pickle,
and refuses non-finite weights or statistics. Neither path can execute code from the files.
:func:`export_bundle` replaces a bundle with two renames; if a kill lands between them, the
previous bundle is left complete in ``.<name>.old`` beside it, and :func:`load_bundle` reads it
from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import E3ElasticError, short_error
from .files import atomic_write

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


class CheckpointError(E3ElasticError, ValueError):
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
        old = _old_bundle_path(path)
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        # A kill here leaves no ``path``; load_bundle then reads the complete ``old``.
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_exports(path)
    return path


def _remove_stale_exports(path: Path, min_age_s: float = 600.0) -> None:
    """Delete temporary folders of exports killed before they finished (``.<name>.*``, at
    least ``min_age_s`` old, so another process's export in progress is left alone)."""
    now = time.time()
    for p in path.parent.glob(f".{path.name}.*"):
        try:
            if p.is_dir() and p != _old_bundle_path(path) and now - p.stat().st_mtime > min_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({short_error(e, 200)})") from e


def load_bundle(path: str | os.PathLike) -> tuple[Config, dict[str, Any], dict, dict]:
    """Read a bundle: ``(config, params, stats, info)``; raises :class:`CheckpointError`.

    Every file's sha256 must match ``MANIFEST.json``; params are read with
    ``allow_pickle=False`` and their shapes are checked against the model the config builds
    (from the array headers, before any data is read).
    """
    path = Path(path)
    if not path.is_dir() and (_old_bundle_path(path) / "MANIFEST.json").is_file():
        path = _old_bundle_path(path)  # an export was interrupted between its two renames
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
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {short_error(e, 200)}") from e
    want = _expected_shapes_or_error(config, path / "config.json")
    flat = _read_params_npz(path / "params.npz", want)
    stats_raw = _read_json(path / "stats.json")
    try:
        stats = {k: np.asarray(stats_raw[k], np.float64).reshape(21) for k in ("shift", "scale")}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'stats.json'}: needs 'shift' and 'scale' (21 each)") from e
    if not all(np.all(np.isfinite(v)) for v in stats.values()) or np.any(stats["scale"] <= 0):
        raise CheckpointError(
            f"{path / 'stats.json'}: shift and scale must be finite and scale positive"
        )
    info = _read_json(path / "info.json")
    return config, unflatten_params(flat), stats, info


def _old_bundle_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _expected_shapes_or_error(config: Config, where: Path) -> dict[str, tuple[int, ...]]:
    try:
        return expected_param_shapes(config)
    except Exception as e:  # a config whose model cannot be built (bad irreps, types, ...)
        raise CheckpointError(
            f"{where}: cannot build the model it describes ({short_error(e, 200)})"
        ) from e


def _read_params_npz(f: Path, want: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Weights from ``params.npz``; every header is checked against ``want`` before any data.

    Only floating-point arrays of the expected names and shapes are read, with
    ``allow_pickle=False``: a crafted file can neither run code nor make this allocate more
    than the model's size.
    """
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(f) as z:
            names = z.namelist()
            have: dict[str, tuple[int, ...]] = {}
            for name in names:
                key = name.removesuffix(".npy")
                if key == name or key in have:
                    raise CheckpointError(f"{f}: not a plain .npz of arrays (member {name!r})")
                with z.open(name) as fh:
                    version = fmt.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = fmt.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = fmt.read_array_header_2_0(fh)
                if dtype.hasobject or dtype.kind != "f":
                    raise CheckpointError(
                        f"{f}: array {key!r} has dtype {dtype}, not floating point "
                        "(object arrays are never unpickled)"
                    )
                have[key] = tuple(shape)
            _compare_shapes(want, have, str(f))
        with np.load(f, allow_pickle=False) as npz:
            flat = {k: npz[k] for k in npz.files}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{f}: cannot read weights ({short_error(e, 200)})") from e
    bad = [k for k, v in flat.items() if not np.all(np.isfinite(v))]
    if bad:
        raise CheckpointError(f"{f}: {len(bad)} weight array(s) hold NaN or inf, e.g. {bad[0]}")
    return flat


def expected_param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Parameter shapes the config's model has.

    Tracing the model's ``init`` takes seconds, so the result is kept in memory and on disk
    (``<cache>/shapes/``, keyed by the model config, the source of the model modules and the
    versions of e3elastic, flax, e3nn-jax and jax); a later process loading a bundle of the
    same architecture reads it back.
    """
    key = architecture_key(config)
    if key in _SHAPES:
        return dict(_SHAPES[key])
    cached = _shapes_file(key)
    try:
        shapes = {k: tuple(v) for k, v in json.loads(cached.read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        shapes = _traced_param_shapes(config)
        try:
            atomic_write(cached, json.dumps(shapes))
        except OSError:
            pass  # no writable cache: trace again next time
    _SHAPES[key] = shapes
    return dict(shapes)


_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def architecture_key(config: Config) -> str:
    """A short hash naming the network a config builds with this code and these libraries."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    parts = [json.dumps(dataclasses.asdict(config.model), sort_keys=True, default=str)]
    parts.append(__version__)
    for module in ("model.py", "elements.py", "element_descriptors.json"):  # the architecture
        parts.append(hashlib.sha256((Path(__file__).parent / module).read_bytes()).hexdigest())
    for pkg in ("flax", "e3nn-jax", "jax"):
        try:
            parts.append(f"{pkg}={version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg}=?")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _shapes_file(key: str) -> Path:
    from .runtime import cache_root

    return cache_root() / "shapes" / f"{key}.json"


def _traced_param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Parameter shapes from an abstract trace of ``init`` (nothing compiled)."""
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
        "theory": jnp.zeros(g, jnp.int32),
    }
    net = ElasticityNet(config.model)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), inputs)
    return {k: tuple(v.shape) for k, v in flatten_params(shapes, as_numpy=False).items()}


def _compare_shapes(
    want: dict[str, tuple[int, ...]], have: dict[str, tuple[int, ...]], where: str
) -> None:
    """Raise :class:`CheckpointError` ("do not match") unless ``have`` equals ``want``."""
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
    """Save and restore full training state under ``<workdir>/ckpt`` with orbax.

    Each finished step gets a sha256 manifest ``<workdir>/ckpt_manifest/<step>.json`` that
    :meth:`restore` verifies (see the module docstring).
    """

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        workdir = Path(workdir).absolute()
        self.directory = workdir / "ckpt"
        self.manifest_dir = workdir / "ckpt_manifest"
        self.damaged_dir = workdir / "ckpt_damaged"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(int(step))

    def manifest_path(self, step: int) -> Path:
        return self.manifest_dir / f"{int(step)}.json"

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save ``step`` and wait until it is on disk, then write its sha256 manifest.

        Raises :class:`CheckpointError` when the folder already holds this or a later step
        (orbax would silently skip the save), e.g. a fresh run started in an old run folder.
        """
        ocp = self._ocp
        step = int(step)
        latest = self.manager.latest_step()
        if latest is not None and latest >= step:
            raise CheckpointError(
                f"cannot save step {step}: {self.directory} already holds step {latest} "
                "(from an earlier run?); resume from it or use a new run folder"
            )
        self.manifest_path(step).unlink(missing_ok=True)  # stale, from a discarded step
        meta = json.loads(json.dumps(meta, default=_json_default))
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self.manager.wait_until_finished()
        if not saved:
            raise CheckpointError(f"orbax did not save step {step} in {self.directory}")
        self._write_manifest(step)
        kept = set(self.steps())
        for f in self.manifest_dir.glob("*.json"):
            if f.stem.isdigit() and int(f.stem) not in kept:
                f.unlink(missing_ok=True)

    def _write_manifest(self, step: int) -> None:
        root = self.step_dir(step)
        files = {
            f.relative_to(root).as_posix(): _sha256(f)
            for f in sorted(root.rglob("*"))
            if f.is_file()
        }
        if not files:
            raise CheckpointError(f"checkpoint step {step}: no files in {root}")
        body = json.dumps(
            {"format": "e3elastic-ckpt-manifest", "version": 1, "step": step, "files": files},
            indent=1,
            sort_keys=True,
        ).encode()
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifest_path(step), body)

    def verify(self, step: int) -> bool:
        """Check ``step`` against its sha256 manifest.

        Returns True when every file matches, False when the step has no manifest (not
        verifiable); raises :class:`CheckpointError` naming the step and the first file that
        is missing or differs, or a manifest that cannot be read.
        """
        step = int(step)
        mpath = self.manifest_path(step)
        if not mpath.exists():
            return False
        try:
            files = json.loads(mpath.read_text())["files"]
            if not isinstance(files, dict) or not files:
                raise ValueError("no file list")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            why = short_error(e, 200)
            raise CheckpointError(
                f"checkpoint step {step}: its manifest {mpath} is unreadable ({why})"
            ) from e
        root = self.step_dir(step)
        for rel, digest in sorted(files.items()):
            f = root / rel
            if not f.is_file():
                raise CheckpointError(f"checkpoint step {step}: file {f} is missing")
            if _sha256(f) != digest:
                raise CheckpointError(
                    f"checkpoint step {step}: file {f} does not match its sha256 in {mpath} "
                    "(damaged)"
                )
        return True

    def restore(self, abstract_state: Any, log=print) -> tuple[int, Any, dict] | None:
        """Latest readable ``(step, state, meta)``, or None when there is no checkpoint.

        Each step is checked against its sha256 manifest, then loaded. A step that fails is
        reported through ``log`` (naming the step and the file) and the previous one is
        tried; the failed steps are then moved to ``<workdir>/ckpt_damaged/`` so training can
        write them again. Raises :class:`CheckpointError` when steps exist but none can be
        read (nothing is moved then).
        """
        ocp = self._ocp
        steps = self.steps()
        if not steps:
            return None
        errors, failed = [], []
        for step in reversed(steps):
            try:
                if not self.verify(step):
                    log(
                        f"checkpoint step {step} has no sha256 manifest (older version, or a "
                        "kill right after saving); loading it unverified"
                    )
                out = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                result = step, out["state"], dict(out["meta"])
            except Exception as e:  # orbax raises many types for damaged files
                why = short_error(e, 200)
                msg = f"checkpoint step {step} in {self.directory} is unreadable: {why}"
                if isinstance(e, CheckpointError):
                    msg = str(e)
                errors.append(msg)
                failed.append(step)
                log(msg + "; trying the previous step")
                continue
            for bad in failed:
                self._quarantine(bad, log)
            return result
        raise CheckpointError("no readable checkpoint: " + " | ".join(errors))

    def _quarantine(self, step: int, log) -> None:
        """Move a damaged step (and its manifest) to ``ckpt_damaged/`` and forget it."""
        self.damaged_dir.mkdir(parents=True, exist_ok=True)
        dest = self.damaged_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 0
        while dest.exists():
            n += 1
            dest = self.damaged_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        os.replace(self.step_dir(step), dest)
        if self.manifest_path(step).exists():
            os.replace(self.manifest_path(step), dest.with_name(dest.name + ".manifest.json"))
        self.manager.reload()
        log(f"moved damaged checkpoint step {step} to {dest}")

    def close(self) -> None:
        self.manager.close()
