"""Device and version fields written into every benchmark's JSON."""

from __future__ import annotations

import os
import platform
import time


def environment() -> dict:
    import jax

    return {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
