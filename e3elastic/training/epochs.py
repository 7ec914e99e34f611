"""One epoch of a training run, and what the run keeps between epochs.

:class:`Run` holds what :func:`e3elastic.training.train.train_and_evaluate` sets up once (data,
plan, steps, checkpoint manager); :func:`run_epoch` then trains one epoch with the python or
the scan loop, evaluates on the validation split when due, appends the epoch's lines to
``metrics.jsonl`` and ``timing.jsonl``, saves a checkpoint, exports the best weights as the
inference bundle ``best/`` and says whether to stop early.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..config import Config
from .evaluation import evaluate_model
from .parallel import DataParallel
from .plan import BucketSteps, Step, epoch_order, flagged_ids
from .prepare import Prepared, TrainingError
from .rundir import append_jsonl
from .steps import TrainState, evaluation_params

__all__ = ["Run", "np_dtype", "run_epoch", "upload_steps"]

logger = logging.getLogger(__name__)


def np_dtype(config: Config):
    return np.float64 if config.train.dtype == "float64" else np.float32


@dataclasses.dataclass
class Run:
    """What a run sets up once and every epoch reads."""

    config: Config
    workdir: Path
    prep: Prepared
    stats: dict[str, np.ndarray]  # irreps normalisation (shift, scale), from training targets
    plan: list[BucketSteps]
    schedule: Any  # step -> learning rate
    dp: DataParallel
    train_step: Any  # make_scan's run, or make_steps' train_step (train.loop)
    predict_step: Any
    ckpts: Any  # TrainCheckpoints
    split_ids: dict[str, list[str]]
    training_set: dict[str, Any]  # what the bundle says it was trained on
    t_start: float
    on_device: list | None = None  # the scan loop's stacked steps, per bucket

    @property
    def steps_per_epoch(self) -> int:
        return sum(len(bs.steps) for bs in self.plan)

    @property
    def dtype(self):
        return np_dtype(self.config)

    @property
    def metrics_path(self) -> Path:
        return self.workdir / "metrics.jsonl"

    @property
    def timing_path(self) -> Path:
        return self.workdir / "timing.jsonl"


def _fetch(tree):
    """Bring device results to the host: the scan loop's one transfer per bucket."""
    return jax.device_get(tree)


def upload_steps(run: Run) -> list:
    """Each bucket's steps, stacked, on the device once for the whole run (the scan loop)."""
    return [
        run.dp.shard_steps(
            (
                {k: np.stack([st.inputs[k] for st in bs.steps]) for k in bs.steps[0].inputs},
                np.stack([st.targets for st in bs.steps]),
            )
        )
        for bs in run.plan
    ]


def run_epoch(run: Run, state: TrainState, epoch: int, progress) -> tuple[TrainState, bool]:
    """Train one epoch, evaluate, write its JSONL lines, checkpoint and export; returns the
    new state and whether to stop."""
    tc = run.config.train
    t0 = time.perf_counter()
    state, losses, n_seen = _train_epoch(run, state, epoch, progress)
    state = state.replace(epoch=epoch)
    t_train = time.perf_counter() - t0
    train_loss = sum(l * n for l, n in losses) / max(1, sum(n for _, n in losses))
    end = (epoch + 1) * run.steps_per_epoch
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": end,
        "lr": float(run.schedule(end)),
        "train_loss": train_loss,
        "n_shapes": len(run.plan),
    }
    state, improved = _validate(run, state, record)
    append_jsonl(run.metrics_path, record)
    if improved:
        _export_best(run, state, record.get("val", {}))
    if (epoch + 1) % tc.checkpoint_every == 0 or epoch + 1 == tc.epochs:
        run.ckpts.save(epoch, state.arrays(), _meta(run, state))
    dt = time.perf_counter() - t0
    rate = n_seen / max(t_train, 1e-9)
    append_jsonl(
        run.timing_path,
        {
            "epoch": epoch,
            "seconds": dt,
            "train_seconds": t_train,
            "crystals_per_s": rate,
            "n_shapes": len(run.plan),
            # programs compiled for the train step in this process so far
            "n_compiled": int(getattr(run.train_step, "_cache_size", lambda: -1)()),
        },
    )
    v = record.get("val")
    val_txt = f" val rel {v['rel_frobenius']:.4f} MAE {v['mae_voigt_GPa']:.2f}" if v else ""
    logger.info(
        f"epoch {epoch}: loss {train_loss:.4f}{val_txt} ({dt:.1f} s, "
        f"{rate:.1f} crystals/s){' *' if improved else ''}"
    )
    return state, _should_stop(run, state, epoch, "val" in record)


def _train_epoch(run: Run, state: TrainState, epoch: int, progress):
    """One pass over the plan in :func:`epoch_order`; returns ``(state, [(loss, n_real) per
    step], crystals seen)``. A non-finite loss raises :class:`TrainingError`."""
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(
        total=run.steps_per_epoch,
        desc=f"epoch {epoch}",
        unit="step",
        file=sys.stderr,
        disable=not enabled,
    )
    t0, losses = time.perf_counter(), []

    def done(step_losses: list[tuple[float, int]]) -> None:
        """Count finished steps: their losses, and the bar (loss, crystals/s)."""
        losses.extend(step_losses)
        rate = sum(n for _, n in losses) / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"loss {losses[-1][0]:.4f} {rate:.1f} crystals/s", refresh=False)
        bar.update(len(step_losses))

    k = epoch * run.steps_per_epoch  # global step index: the augmentation key
    run_steps = _python_steps if run.config.train.loop == "python" else _scan_steps
    for b, order in epoch_order(run.plan, run.config.train.seed, epoch):
        state = run_steps(run, state, epoch, b, order, k, done)
        k += len(order)
    bar.close()
    return state, losses, sum(n for _, n in losses)


def _python_steps(run: Run, state: TrainState, epoch: int, b: int, order, k: int, done):
    """The steps ``order`` of bucket ``b``, one jitted step each, the loss read after each."""
    steps, dp = run.plan[b].steps, run.dp
    for j in order:
        st = steps[j]
        params, opt_state, loss, per_graph = run.train_step(
            state.params, state.opt_state, dp.shard(st.inputs), dp.shard(st.targets), np.int32(k)
        )
        loss = float(loss)
        if not math.isfinite(loss):
            raise _non_finite(run, epoch, st, ~np.isfinite(np.asarray(per_graph)))
        state = state.replace(params=params, opt_state=opt_state)
        done([(loss, st.n_real)])
        k += 1
    return state


def _scan_steps(run: Run, state: TrainState, epoch: int, b: int, order, k: int, done):
    """The steps ``order`` of bucket ``b`` in one scan; losses come back once, at the end."""
    steps = run.plan[b].steps
    ids = np.arange(k, k + len(order), dtype=np.int32)
    with jax.transfer_guard_device_to_host("disallow"):
        params, opt_state, dev_losses, dev_bad = run.train_step(
            state.params, state.opt_state, *run.on_device[b], order, ids
        )
        step_losses, bad = _fetch((dev_losses, dev_bad))
    losses = []
    for i, j in enumerate(order):
        loss = float(step_losses[i])
        if not math.isfinite(loss):
            # params went on past this step inside the scan: never kept or saved
            raise _non_finite(run, epoch, steps[j], bad[i])
        losses.append((loss, steps[j].n_real))
    done(losses)
    return state.replace(params=params, opt_state=opt_state)


def _non_finite(run: Run, epoch: int, step: Step, bad) -> TrainingError:
    ids = flagged_ids(step, bad)
    where = f"non-finite loss at epoch {epoch} in a batch with {', '.join(ids[:5])}"
    where += " ..." if len(ids) > 5 else ""
    directory = run.ckpts.directory
    if run.config.train.loop == "python":
        return TrainingError(
            f"{where}; stopped without saving this step "
            f"(the last good checkpoint in {directory} is intact)"
        )
    return TrainingError(
        f"{where}; stopped without saving: the weights in memory had already gone on past "
        f"that step on the device and are dropped. The last good checkpoint in "
        f"{directory} is intact; resume from it with --resume once the data is fixed "
        "(train.loop=python stops at the step itself)"
    )


def _weights(run: Run, state: TrainState):
    """The weights to validate and export: the moving average with ``train.ema_decay``."""
    return evaluation_params(state.params, state.opt_state, run.config.train.ema_decay)


def _score(m: dict[str, Any]) -> float:
    return float(m.get("rel_frobenius", math.inf))


def _validate(run: Run, state: TrainState, record: dict) -> tuple[TrainState, bool]:
    """Evaluate on the validation split when due (into ``record["val"]``); returns the state
    with the best-so-far updated and whether this epoch improved on it. Without a validation
    split every epoch counts as the best (scored by its training loss)."""
    prep, epoch = run.prep, record["epoch"]
    if not prep.graphs["val"]:
        return state.replace(best_score=record["train_loss"], best_epoch=epoch), True
    if (epoch + 1) % run.config.train.eval_every != 0:
        return state, False
    vm = evaluate_model(
        run.predict_step, _weights(run, state), run.stats, prep, "val", run.config, run.dtype
    )
    record["val"] = {k: v for k, v in vm.items() if not k.startswith("by_")}
    if _score(vm) < state.best_score:
        return state.replace(best_score=_score(vm), best_epoch=epoch), True
    return state, False


def _should_stop(run: Run, state: TrainState, epoch: int, evaluated: bool) -> bool:
    tc = run.config.train
    if evaluated and epoch - state.best_epoch >= tc.patience:
        logger.info(
            f"early stop: no better validation error for {epoch - state.best_epoch} epochs "
            f"(patience {tc.patience})"
        )
        return True
    if tc.max_minutes and (time.perf_counter() - run.t_start) > 60 * tc.max_minutes:
        logger.info(f"stopping: reached max_minutes={tc.max_minutes}")
        return True
    return False


def _meta(run: Run, state: TrainState) -> dict[str, Any]:
    """The JSON part of a checkpoint."""
    return {
        "config": run.config.to_dict(),
        "stats": {k: v.tolist() for k, v in run.stats.items()},
        "split": run.split_ids,
        "best": state.best(),
        "epoch": state.epoch,
    }


def _export_best(run: Run, state: TrainState, val_metrics: dict) -> None:
    from .checkpoint import export_bundle

    export_bundle(
        run.workdir / "best",
        run.config,
        _weights(run, state),
        run.stats,
        {
            "epoch": state.epoch,
            "val": val_metrics,
            "split": run.split_ids,
            "trained": time.strftime("%Y-%m-%d"),
            "data": dataclasses.asdict(run.config.data),
            "training_set": run.training_set,
        },
    )
