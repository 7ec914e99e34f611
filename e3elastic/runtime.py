"""JAX runtime settings shared by the CLI, training and tests.

Compilation dominates start-up (tens of seconds for a training step on a CPU), so
:func:`enable_compilation_cache` turns on JAX's persistent cache: a second process compiling
the same program reads it from disk in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "default_cache_dir", "enable_compilation_cache"]

_enabled: str | None = None


def cache_root() -> Path:
    """``$E3ELASTIC_CACHE``, else ``~/.cache/e3elastic``: parsed data, graphs, model shapes."""
    env = os.environ.get("E3ELASTIC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "e3elastic"


def default_cache_dir() -> Path:
    """``$E3ELASTIC_JAX_CACHE``, else ``$E3ELASTIC_CACHE/jax``, else ``~/.cache/e3elastic/jax``."""
    if os.environ.get("E3ELASTIC_JAX_CACHE"):
        return Path(os.environ["E3ELASTIC_JAX_CACHE"])
    return cache_root() / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Persist compiled XLA programs in ``path`` (default :func:`default_cache_dir`).

    Returns the folder, or None when it cannot be created (the cache is then left off;
    everything still works, only slower to start). ``E3ELASTIC_JAX_CACHE=off`` disables it.
    """
    global _enabled
    if os.environ.get("E3ELASTIC_JAX_CACHE", "").lower() in ("off", "0", "none"):
        return None
    folder = Path(path) if path is not None else default_cache_dir()
    if _enabled == str(folder):
        return _enabled
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _enabled = str(folder)
    return _enabled
