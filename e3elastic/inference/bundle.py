"""Inference bundles: a trained model as plain files (no pickle), written and read safely.

A bundle is a folder::

    config.json     the run config (rebuilds the model)
    params.npz      weights, flattened with "/" keys (numpy, allow_pickle=False)
    stats.json      irreps normalisation: shift and scale, 21 numbers each (GPa)
    info.json       training data, split, metrics, date (free-form)
    MANIFEST.json   sha256 of every file above

Loading checks every hash (a truncated or damaged file is named), reads the array headers
and refuses shapes or dtypes that differ from the ones its config builds before reading any
data (so a crafted header cannot make it allocate huge arrays), loads arrays without pickle,
and refuses non-finite weights or statistics. It cannot execute code from the files.
:func:`export_bundle` replaces a bundle with two renames; if a kill lands between them, the
previous bundle is left complete in ``.<name>.old`` beside it, and :func:`load_bundle` reads it
from there. :func:`bundle_dirs` finds the bundle(s) of a bundle, run or ensemble folder.

The parameter shapes a config builds come from an abstract trace of the network's ``init``,
cached on disk under :func:`e3elastic.network.architecture.architecture_key`
(:func:`expected_param_shapes`). Training checkpoints (orbax) are in
:mod:`e3elastic.training.checkpoint`, which re-exports this module's names.
"""

from __future__ import annotations

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

from ..config import Config
from ..errors import E3ElasticError, short_error
from ..files import atomic_write
from ..network.architecture import architecture_key
from ..tensors import N_IRREPS

__all__ = [
    "BUNDLE_FILES",
    "CheckpointError",
    "architecture_key",
    "bundle_dirs",
    "expected_param_shapes",
    "export_bundle",
    "flatten_params",
    "load_bundle",
    "unflatten_params",
]

BUNDLE_FILES = ("config.json", "params.npz", "stats.json", "info.json")
#: Where the shipped models live (``e3elastic/pretrained/NAME``).
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def model_folder(name: str | os.PathLike) -> Path:
    """The folder of a model: ``name`` itself when it exists, else the shipped model of that
    name; :class:`CheckpointError` naming the shipped models when neither exists."""
    path = Path(name)
    if path.exists():
        return path
    shipped = PRETRAINED_DIR / str(name)
    if shipped.is_dir():
        return shipped
    have = (
        sorted(p.name for p in PRETRAINED_DIR.iterdir() if p.is_dir())
        if (PRETRAINED_DIR.is_dir())
        else []
    )
    raise CheckpointError(
        f"model {str(name)!r} is neither a folder nor a shipped model "
        f"(shipped: {', '.join(have) or 'none'})"
    )


class CheckpointError(E3ElasticError, ValueError):
    """A checkpoint or bundle is missing, damaged or does not fit its config."""


# --------------------------------------------------------------------------------------------
# Parameter trees <-> flat dicts
# --------------------------------------------------------------------------------------------


def flatten_params(tree: Any, prefix: str = "", *, as_numpy: bool = True) -> dict[str, Any]:
    """Nested dict of arrays -> ``{"a/b/c": array}`` (``flax.traverse_util.flatten_dict``
    order); a key holding ``/`` raises :class:`CheckpointError`."""
    from flax.traverse_util import flatten_dict

    out: dict[str, Any] = {}
    for path, value in flatten_dict(tree).items():
        if any("/" in str(key) for key in path):
            raise CheckpointError(f"parameter name {'/'.join(map(str, path))!r} contains '/'")
        out[prefix + "/".join(map(str, path))] = np.asarray(value) if as_numpy else value
    return out


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"a/b/c": array}`` -> nested dict, the inverse of :func:`flatten_params`.

    Written out rather than ``flax.traverse_util.unflatten_dict(sep="/")`` (the same result):
    loading a bundle for prediction does not import flax (about 0.5 s)."""
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
        stats = {
            k: np.asarray(stats_raw[k], np.float64).reshape(N_IRREPS) for k in ("shift", "scale")
        }
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path / 'stats.json'}: needs 'shift' and 'scale' ({N_IRREPS} each)"
        ) from e
    if not all(np.all(np.isfinite(v)) for v in stats.values()) or np.any(stats["scale"] <= 0):
        raise CheckpointError(
            f"{path / 'stats.json'}: shift and scale must be finite and scale positive"
        )
    info = _read_json(path / "info.json")
    return config, unflatten_params(flat), stats, info


def bundle_dirs(path: str | os.PathLike) -> list[Path]:
    """The bundle folder(s) of a model folder: a bundle itself, a training run (its ``best/``
    bundle) or an ensemble (every bundle folder inside, sorted); raises
    :class:`CheckpointError` when there is none."""
    path = Path(path)
    if (path / "MANIFEST.json").is_file():
        return [path]
    if (path / "best" / "MANIFEST.json").is_file():
        return [path / "best"]
    if (_old_bundle_path(path / "best") / "MANIFEST.json").is_file():
        return [path / "best"]  # an export was interrupted; load_bundle reads .best.old
    members = sorted(p for p in path.iterdir() if (p / "MANIFEST.json").is_file())
    if members:
        return members
    raise CheckpointError(f"{path}: no model bundle here (MANIFEST.json not found)")


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
    same architecture reads it back. The shapes the package's shipped programs take
    (:func:`e3elastic.inference.programs.shipped_param_shapes`) come first: the shipped models need
    no trace at all.
    """
    key = architecture_key(config)
    if key in _SHAPES:
        return dict(_SHAPES[key])
    from .programs import shipped_param_shapes

    shipped = shipped_param_shapes(config)  # exported with the package for this network
    if shipped is not None:
        _SHAPES[key] = shipped
        return dict(shipped)
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


def _shapes_file(key: str) -> Path:
    from ..runtime import cache_root

    return cache_root() / "shapes" / f"{key}.json"


def _traced_param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Parameter shapes from an abstract trace of ``init`` (nothing compiled)."""
    import jax

    from ..network.interface import dummy_inputs
    from ..network.model import ElasticityNet

    inputs = dummy_inputs(n_node=3, n_edge=4, n_graph=2)
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
