"""The run folder of a training job: its settings, its lock, its JSONL logs.

``config.json`` holds the settings a run started with (a resumed run must keep them, except
:data:`RESUMABLE_CHANGES`); ``.lock`` the PID and host of the trainer working there
(:func:`take_lock`); ``metrics.jsonl`` and ``timing.jsonl`` one line per epoch, appended and
fsynced (:func:`append_jsonl`), cut back to a restored checkpoint's epoch on resume
(:func:`truncate_jsonl`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from ..config import Config
from .prepare import TrainingError

__all__ = [
    "RESUMABLE_CHANGES",
    "append_jsonl",
    "config_changes",
    "take_lock",
    "truncate_jsonl",
    "write_config",
]

logger = logging.getLogger(__name__)

#: Settings a resumed run may change: they do not alter what it computes.
RESUMABLE_CHANGES = ("train.max_minutes", "train.loop")


def config_changes(saved: Config, config: Config) -> list[str]:
    """``section.key old -> new`` (values as JSON) for each setting that differs."""

    def flat(c: Config) -> dict[str, Any]:
        return {
            f"{section}.{k}": v
            for section, values in c.to_dict().items()
            if isinstance(values, dict)
            for k, v in values.items()
        }

    a, b = flat(saved), flat(config)
    return [
        f"{k} {json.dumps(a[k])} -> {json.dumps(b[k])}"
        for k in a
        if a[k] != b[k] and k not in RESUMABLE_CHANGES
    ]


def write_config(config: Config, workdir: Path, resume: bool) -> None:
    """Save ``config.json``; a resumed run must keep the settings it started with."""
    path = workdir / "config.json"
    if resume and path.exists():
        changes = config_changes(Config.from_json(path.read_text()), config)
        if changes:
            raise TrainingError(
                f"{workdir} holds a run started with other settings: {', '.join(changes)}. "
                "A run resumes with the settings it started with (its learning-rate schedule "
                "follows train.epochs): resume with the same options, or start a new run "
                "with another --workdir"
            )
    path.write_text(config.to_json())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def take_lock(workdir: Path) -> Path:
    """Create ``workdir/.lock`` holding this process's PID and host; ``TrainingError`` while
    a live process (or one on another host) holds it. A lock whose process is gone is taken
    over with a note."""
    path = workdir / ".lock"
    host = socket.gethostname()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
                pid, other = int(holder["pid"]), str(holder["host"])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                pid, other = None, None
            if pid is not None and (other != host or _pid_alive(pid)):
                raise TrainingError(
                    f"{workdir} is in use by process {pid} on {other} (lock file {path}); wait "
                    "for it to finish or use another --workdir (delete the lock file only if "
                    "that process is not training there)"
                ) from None
            gone = f"process {pid} on {other} is gone" if pid is not None else "empty or garbled"
            logger.info(f"note: taking over the stale lock {path} ({gone})")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": host}, f)
        return path
    raise TrainingError(f"cannot take the lock {path}; another trainer keeps taking it")


def truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Keep lines with epoch <= last_epoch (what the restored checkpoint has seen)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", -1) <= last_epoch:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill
    path.write_text("".join(k + "\n" for k in keep))


def append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
