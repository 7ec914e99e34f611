"""Training checkpoints: full training state saved and restored with orbax, checked by sha256.

Training state lives in ``<workdir>/ckpt/<step>/`` through an orbax ``CheckpointManager``:
params, optimizer state, step, epoch and RNG as arrays (``StandardSave``), plus a JSON ``meta``
part with the config, normalisation statistics, split ids and the early-stopping record. orbax
writes each step to a temporary folder and renames it when complete, so a killed run never
leaves a step that looks finished (temporary folders left by a kill are removed when the
manager starts). Old steps (beyond ``max_to_keep``) are pruned here, not by orbax: each leaves
``ckpt/`` in one rename into ``ckpt_discarded/`` before it is deleted, because orbax deletes
file by file and a kill in the middle left a listed step with files missing.

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

Inference bundles (plain files for prediction) are in :mod:`e3elastic.inference.bundle`; their names
are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import short_error
from ..files import atomic_write
from ..inference.bundle import (
    BUNDLE_FILES,
    CheckpointError,
    _json_default,
    _sha256,
    architecture_key,
    bundle_dirs,
    expected_param_shapes,
    export_bundle,
    flatten_params,
    load_bundle,
    unflatten_params,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FILES",
    "CheckpointError",
    "TrainCheckpoints",
    "architecture_key",
    "bundle_dirs",
    "expected_param_shapes",
    "export_bundle",
    "flatten_params",
    "load_bundle",
    "unflatten_params",
]


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
        # Old steps are pruned here, not by orbax: orbax deletes a step file by file, and a
        # kill in the middle left a listed step without some of its files. A step is first
        # moved out of ``ckpt/`` in one rename, then deleted.
        self.max_to_keep = max_to_keep
        self.discarded_dir = workdir / "ckpt_discarded"
        shutil.rmtree(self.discarded_dir, ignore_errors=True)  # left by a kill mid-delete
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None, create=True, cleanup_tmp_directories=True
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
        self._prune()
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

    def restore(self, abstract_state: Any, log=None) -> tuple[int, Any, dict] | None:
        """Latest readable ``(step, state, meta)``, or None when there is no checkpoint.

        Each step is checked against its sha256 manifest, then loaded. A step that fails is
        reported (naming the step and the file) as a warning of this module's logger, or
        through ``log(message)`` when given, and the previous one is
        tried; the failed steps are then moved to ``<workdir>/ckpt_damaged/`` so training can
        write them again. Raises :class:`CheckpointError` when steps exist but none can be
        read (nothing is moved then).
        """
        log = log or logger.warning
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

    def _prune(self) -> None:
        """Keep the newest ``max_to_keep`` steps: each older one leaves ``ckpt/`` in a single
        rename (so a kill never leaves a listed step half-deleted), then is deleted."""
        if not self.max_to_keep:
            return
        old = self.steps()[: -self.max_to_keep]
        if not old:
            return
        self.discarded_dir.mkdir(parents=True, exist_ok=True)
        for step in old:
            dest = self.discarded_dir / str(step)
            if dest.exists():  # an earlier deletion that failed: os.replace cannot overwrite it
                shutil.rmtree(dest, ignore_errors=True)
            os.replace(self.step_dir(step), dest)
            self.manifest_path(step).unlink(missing_ok=True)
        self.manager.reload()
        shutil.rmtree(self.discarded_dir, ignore_errors=True)

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
