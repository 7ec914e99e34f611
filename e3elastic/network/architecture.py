"""What names a network: hashes of the model a config builds, for caches and shipped programs.

Two keys, both derived from the model config, the source files that define the network and the
versions of the libraries that build it:

* :func:`architecture_key` names the network a config builds with this code and these
  libraries (jax included). It keys the cached parameter shapes
  (:func:`e3elastic.inference.bundle.expected_param_shapes`) and the programs exported to the cache
  (:class:`e3elastic.inference.programs.StoredPrograms`).
* :func:`network_key` names what the network computes, leaving out jax's version (an exported
  program stays loadable by later jax versions). It keys the programs shipped with the package
  (:data:`e3elastic.inference.programs.SHIPPED_DIR`).

This module imports nothing of the network, so the modules that cache by these keys need not
import each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ..config import Config

__all__ = ["ARCHITECTURE_SOURCES", "NETWORK_SOURCES", "architecture_key", "network_key"]

#: Source files (relative to the ``e3elastic`` package) whose content is hashed into
#: :func:`architecture_key`.
ARCHITECTURE_SOURCES = (
    "network/model.py",
    "network/kernels.py",
    "network/elements.py",
    "network/element_descriptors.json",
)
#: Source files whose content defines what the network computes (:func:`network_key`).
NETWORK_SOURCES = (
    "network/model.py",
    "network/kernels.py",
    "network/interface.py",
    "tensors.py",
    "voigt.py",
    "network/elements.py",
    "network/element_descriptors.json",
)
_ROOT = Path(__file__).resolve().parents[1]


def _versions(packages: tuple[str, ...]) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in packages:
        try:
            out.append(f"{pkg}={version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg}=?")
    return out


def _source_digests(files: tuple[str, ...]) -> list[str]:
    return [hashlib.sha256((_ROOT / f).read_bytes()).hexdigest() for f in files]


def _model_config_json(config: Config) -> str:
    return json.dumps(dataclasses.asdict(config.model), sort_keys=True, default=str)


def architecture_key(config: Config) -> str:
    """A short hash naming the network a config builds with this code and these libraries:
    the model config, e3elastic's version, :data:`ARCHITECTURE_SOURCES` and the flax, e3nn-jax
    and jax versions."""
    from .. import __version__

    parts = [_model_config_json(config), __version__]
    parts += _source_digests(ARCHITECTURE_SOURCES)
    parts += _versions(("flax", "e3nn-jax", "jax"))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def network_key(config: Config) -> str:
    """A hash of what the network of ``config`` computes: its model config, the sources in
    :data:`NETWORK_SOURCES` and the flax and e3nn-jax versions (not jax's: an exported
    program stays loadable by later jax versions)."""
    parts = [_model_config_json(config)]
    parts += _source_digests(NETWORK_SOURCES)
    parts += _versions(("flax", "e3nn-jax"))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
