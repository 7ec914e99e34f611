"""Training: data -> padded graph batches -> jitted Adam steps -> checkpoints and a bundle.

``train_and_evaluate(config, workdir)`` runs a whole job:

1. load the dataset and its split, build crystal graphs (cached on disk), and choose padded
   batch shapes from the training graphs' sizes (:func:`e3elastic.prepare.prepare_data`);
2. turn each tensor into the 21 irreps the model's head learns (:func:`model.targets_from_voigt`:
   C, or its matrix logarithm for the ``log`` head) and normalise them per irrep with
   training-split statistics (:func:`model.irrep_stats`), so the loss, a mean squared error over
   the 21 normalised coefficients, weighs the 0e, 2e and 4e parts alike (for the log head it is
   the log-Euclidean distance, a relative error);
3. train with optax Adam(W), linear warm-up then cosine decay, gradient clipping, jitted
   train/eval steps over the bucketed shapes (:mod:`e3elastic.steps`); with
   ``train.volume_strain`` > 0 part of every batch is isotropically scaled and its target
   follows Murnaghan's law (:func:`~e3elastic.steps.volume_augmentation`). The training
   crystals are packed into padded batches once per run (:func:`plan_steps`); each epoch runs
   the buckets in a shuffled order and, within a bucket, its steps in a shuffled order
   (:func:`epoch_order`). With ``train.loop = "scan"`` (the default) each bucket's batches are
   put on the device once and an epoch runs a bucket's steps in one ``jax.lax.scan``
   (:func:`~e3elastic.steps.make_scan`), bringing losses back to the host once per bucket;
   ``"python"`` runs one jitted step per batch fed from the host and reads the loss after each
   (for debugging). Both take the same steps and agree within float round-off;
4. after each epoch evaluate on the validation split, append one line to ``metrics.jsonl``
   (deterministic content only; wall times go to ``timing.jsonl``), save an orbax checkpoint
   of the :class:`~e3elastic.steps.TrainState`, and export the inference bundle ``best/`` when
   validation error improves;
5. stop early, at an evaluation, once ``patience`` epochs have passed since the best
   validation error, then evaluate the best weights on validation and test
   (``final_metrics.json``, :func:`e3elastic.evaluation.final_evaluation`).

``resume=True`` continues from the latest readable checkpoint; epochs are shuffled with a seed
derived from (seed, epoch), so a resumed run follows the same path as an uninterrupted one.

A non-finite loss stops training with :class:`TrainingError` naming the crystals whose loss
was not finite, and nothing of that epoch is saved. The python loop stops at the bad step
itself. The scan loop finds out only when the bucket's results come back, by which time the
weights in memory have been updated past the bad step: they are dropped, never saved or
exported, and the last good checkpoint on disk stays as it was; fix the data and resume from
it (``--resume``), or rerun with ``train.loop=python`` to stop at the step.

Progress messages go to ``logging.getLogger("e3elastic.train")`` (the command line shows them
on stderr); a progress bar (tqdm) is drawn on stderr when it is a terminal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import graph as graph_mod
from .config import Config, theory_index
from .evaluation import (
    baselines,
    evaluate_model,
    evaluate_part,
    final_evaluation,
    predict_irreps,
)
from .parallel import DataParallel, maybe_initialize_distributed
from .plan import (
    BucketSteps,
    Step,
    epoch_order,
    epoch_seed,
    flagged_ids,
    plan_steps,
    stack_inputs,
)
from .prepare import (
    Prepared,
    TrainingError,
    graphs_for_records,
    learns_moduli,
    messages_to,
    prepare_data,
    theory_indices,
    training_set_counts,
)
from .rundir import (
    RESUMABLE_CHANGES,
    append_jsonl,
    config_changes,
    take_lock,
    truncate_jsonl,
    write_config,
)
from .steps import (
    TrainState,
    cast_params,
    create_model,
    create_optimizer,
    init_params,
    loss_terms,
    make_predict_step,
    make_scan,
    make_steps,
    training_targets,
    volume_augmentation,
)

__all__ = [
    "Prepared",
    "TrainState",
    "TrainingError",
    "prepare_data",
    "train_and_evaluate",
    # kept importable from here; they live in prepare, plan, steps, parallel, rundir
    # and evaluation
    "RESUMABLE_CHANGES",
    "BucketSteps",
    "Step",
    "config_changes",
    "epoch_order",
    "epoch_seed",
    "plan_steps",
    "stack_inputs",
    "take_lock",
    "DataParallel",
    "baselines",
    "cast_params",
    "create_model",
    "create_optimizer",
    "evaluate_part",
    "final_evaluation",
    "graphs_for_records",
    "init_params",
    "make_predict_step",
    "make_scan",
    "make_steps",
    "maybe_initialize_distributed",
    "predict_irreps",
    "theory_indices",
    "training_set_counts",
    "volume_augmentation",
]

logger = logging.getLogger(__name__)


def _fetch(tree):
    """Bring device results to the host: the scan loop's one transfer per bucket."""
    return jax.device_get(tree)


def _np_dtype(config: Config):
    return np.float64 if config.train.dtype == "float64" else np.float32


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    prepared: Prepared | None = None,
    log=None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``config`` in ``workdir``; returns the final metrics (see module docstring).

    While it runs, ``workdir/.lock`` holds the trainer's PID and host (see :func:`take_lock`).
    ``resume`` refuses settings that differ from those the run started with, except
    :data:`RESUMABLE_CHANGES`. ``progress``: draw a progress bar (default: when stderr is a
    terminal). ``log``: a callable also given every message (for older callers; prefer
    ``logging``).
    """
    maybe_initialize_distributed()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    x64 = jax.config.read("jax_enable_x64")  # a float64 run switches it on for its own time
    with messages_to(log):
        lock = take_lock(workdir) if jax.process_index() == 0 else None
        try:
            return _train(config, workdir, resume, prepared, progress)
        finally:
            if lock is not None:
                lock.unlink(missing_ok=True)
            jax.config.update("jax_enable_x64", x64)


@dataclasses.dataclass
class _Run:
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
        return _np_dtype(self.config)

    @property
    def metrics_path(self) -> Path:
        return self.workdir / "metrics.jsonl"

    @property
    def timing_path(self) -> Path:
        return self.workdir / "timing.jsonl"


def _train(config: Config, workdir: Path, resume: bool, prepared, progress) -> dict[str, Any]:
    _set_precision(config)
    write_config(config, workdir, resume)
    run, state = _setup(config, workdir, prepared)
    state = _restore_or_start(run, state, resume)
    state = run.dp.replicate(state)
    if run.dp.n_sub > 1:
        logger.info(
            f"data parallel: {run.dp.n_sub} sub-batches per step on {run.dp.n_devices} device(s)"
        )
    if config.train.loop == "scan":
        run.on_device = _upload_steps(run)
    for epoch in range(state.epoch + 1, config.train.epochs):
        state, stop = _epoch(run, state, epoch, progress)
        if stop:
            break
    run.ckpts.close()
    return final_evaluation(workdir, run.prep)


def _set_precision(config: Config) -> None:
    if config.train.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    elif config.train.dtype != "float32":
        raise TrainingError(f"train.dtype must be float32 or float64, got {config.train.dtype}")


def _setup(config: Config, workdir: Path, prepared) -> tuple[_Run, TrainState]:
    """Data, the plan of steps, the model, optimizer and steps, the checkpoint manager; and
    the fresh training state."""
    from .checkpoint import TrainCheckpoints
    from .model import batch_inputs, irrep_stats  # looked up per run: tests replace them

    tc, dtype = config.train, _np_dtype(config)
    t_start = time.perf_counter()
    prep = prepared if prepared is not None else prepare_data(config)
    sizes = ", ".join(f"{p} {len(prep.graphs[p])}" for p in ("train", "val", "test"))
    logger.info(f"data: {sizes} crystals; buckets {list(map(tuple, prep.buckets))}")
    stats = irrep_stats(np.asarray(prep.irreps["train"])[prep.tensor_mask("train")])
    start = _start_bundle(config, tc.init_from) if tc.init_from else None
    if start is not None:
        stats = start[1]  # the bundle's output units, so the run starts from its predictions
    dp = DataParallel(tc.data_parallel)
    wide = learns_moduli(config) or tc.moduli_weight_tensor > 0
    if wide:  # ln K, ln G and the tensor flag follow the irreps
        mask = prep.tensor_mask("train")
        targets = training_targets(prep.irreps["train"], stats, prep.log_kg["train"], mask)
    else:
        targets = training_targets(prep.irreps["train"], stats)
    graphs, targets, theory = _oversampled(prep, tc, targets)
    plan = plan_steps(
        graphs,
        targets,
        batch_size=config.data.batch_size,
        buckets=prep.buckets,
        n_sub=dp.n_sub,
        seed=epoch_seed(tc.seed, 0),
        dtype=dtype,
        theory=theory,
    )
    net = create_model(config)
    first = graph_mod.pad_batch(prep.graphs["train"][:1], prep.buckets[0])
    params = init_params(config, batch_inputs(first, dtype), tc.seed)
    if start is not None:
        params = _start_params(tc.init_from, params, start[0])
    tx, schedule = create_optimizer(config, sum(len(bs.steps) for bs in plan))
    augment = volume_augmentation(config, stats)
    extra = loss_terms(config, stats)
    if tc.loop == "scan":
        train_step = make_scan(
            net, tx, dp.n_sub, augment=augment, seed=tc.seed, mesh=dp.mesh, extra=extra
        )
    else:
        train_step, _ = make_steps(net, tx, dp.n_sub, augment=augment, seed=tc.seed, extra=extra)
    run = _Run(
        config=config,
        workdir=workdir,
        prep=prep,
        stats=stats,
        plan=plan,
        schedule=schedule,
        dp=dp,
        train_step=train_step,
        predict_step=make_steps(net, tx)[1],
        ckpts=TrainCheckpoints(workdir, max_to_keep=tc.max_to_keep),
        split_ids={p: [r.id for r in prep.records[p]] for p in ("train", "val", "test")},
        training_set=training_set_counts(prep.records["train"]),
        t_start=t_start,
    )
    return run, TrainState.create(params, tx)


def _oversampled(prep, tc, targets=None) -> tuple[list, np.ndarray, np.ndarray]:
    """Training graphs, target rows (``targets``, one per training crystal; default the
    irreps of ``prep``) and theory indices, with every crystal of ``tc.oversample_theory``
    repeated ``tc.oversample`` times."""
    graphs = prep.graphs["train"]
    irreps = np.asarray(prep.irreps["train"] if targets is None else targets)
    theory = np.asarray(prep.theory["train"])
    if tc.oversample <= 1:
        return graphs, irreps, theory
    keep = np.flatnonzero(theory == theory_index(tc.oversample_theory))
    extra = np.tile(keep, tc.oversample - 1)
    logger.info(
        f"oversampling: {len(keep)} {tc.oversample_theory} training crystals x{tc.oversample}"
    )
    return (
        list(graphs) + [graphs[i] for i in extra],
        np.concatenate([irreps, irreps[extra]]),
        np.concatenate([theory, theory[extra]]),
    )


def _start_bundle(config: Config, name: str) -> tuple[Any, dict]:
    """``(params, stats)`` of the bundle ``name`` for a fine-tuning run of ``config``;
    :class:`TrainingError` when it cannot be read or is another architecture."""
    from .bundle import CheckpointError, load_bundle, model_folder

    try:
        b_config, b_params, b_stats, _ = load_bundle(model_folder(name))
    except CheckpointError as e:
        raise TrainingError(f"train.init_from: {e}") from None
    if b_config.model != config.model:
        raise TrainingError(
            f"train.init_from: {name} is a different architecture than this run's model"
        )
    logger.info(f"starting from the parameters and normalisation of {name}")
    return b_params, b_stats


def _start_params(name: str, params, b_params) -> Any:
    """``b_params`` in the structure and dtypes of freshly initialised ``params``."""
    from .bundle import flatten_params as flat

    want, got = flat(params), flat(b_params)
    if {k: v.shape for k, v in want.items()} != {k: v.shape for k, v in got.items()}:
        raise TrainingError(f"train.init_from: {name} parameter names or shapes differ")
    return jax.tree.map(lambda a, b: np.asarray(b, np.asarray(a).dtype), params, b_params)


def _restore_or_start(run: _Run, state: TrainState, resume: bool) -> TrainState:
    """The latest checkpoint's state when resuming (JSONL logs cut back to its epoch), else
    ``state`` in a folder without checkpoints (old JSONL logs removed)."""
    if not resume and run.ckpts.steps():
        raise TrainingError(
            f"{run.workdir} already holds checkpoints (steps {run.ckpts.steps()}); pass --resume "
            "to continue that run, or use a new --workdir"
        )
    if resume:
        restored = run.ckpts.restore(state.abstract_arrays(), log=logger.info)
        if restored is not None:
            step, arrays, meta = restored
            state = TrainState.restored(arrays, meta)
            if meta.get("split") and meta["split"] != run.split_ids:
                raise TrainingError(
                    "the data split differs from the one this run started with; "
                    "resume with the same data and settings, or use a new --workdir"
                )
            logger.info(f"resumed from step {step} (epoch {state.epoch})")
            truncate_jsonl(run.metrics_path, state.epoch)
            truncate_jsonl(run.timing_path, state.epoch)
        else:
            logger.info("no checkpoint to resume from; starting fresh")
    if state.epoch < 0:
        for p in (run.metrics_path, run.timing_path):
            p.unlink(missing_ok=True)
    return state


def _upload_steps(run: _Run) -> list:
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


def _epoch(run: _Run, state: TrainState, epoch: int, progress) -> tuple[TrainState, bool]:
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


def _train_epoch(run: _Run, state: TrainState, epoch: int, progress):
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


def _python_steps(run: _Run, state: TrainState, epoch: int, b: int, order, k: int, done):
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


def _scan_steps(run: _Run, state: TrainState, epoch: int, b: int, order, k: int, done):
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


def _non_finite(run: _Run, epoch: int, step: Step, bad) -> TrainingError:
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


def _score(m: dict[str, Any]) -> float:
    return float(m.get("rel_frobenius", math.inf))


def _validate(run: _Run, state: TrainState, record: dict) -> tuple[TrainState, bool]:
    """Evaluate on the validation split when due (into ``record["val"]``); returns the state
    with the best-so-far updated and whether this epoch improved on it. Without a validation
    split every epoch counts as the best (scored by its training loss)."""
    prep, epoch = run.prep, record["epoch"]
    if not prep.graphs["val"]:
        return state.replace(best_score=record["train_loss"], best_epoch=epoch), True
    if (epoch + 1) % run.config.train.eval_every != 0:
        return state, False
    vm = evaluate_model(
        run.predict_step, state.params, run.stats, prep, "val", run.config, run.dtype
    )
    record["val"] = {k: v for k, v in vm.items() if not k.startswith("by_")}
    if _score(vm) < state.best_score:
        return state.replace(best_score=_score(vm), best_epoch=epoch), True
    return state, False


def _should_stop(run: _Run, state: TrainState, epoch: int, evaluated: bool) -> bool:
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


def _meta(run: _Run, state: TrainState) -> dict[str, Any]:
    """The JSON part of a checkpoint."""
    return {
        "config": run.config.to_dict(),
        "stats": {k: v.tolist() for k, v in run.stats.items()},
        "split": run.split_ids,
        "best": state.best(),
        "epoch": state.epoch,
    }


def _export_best(run: _Run, state: TrainState, val_metrics: dict) -> None:
    from .checkpoint import export_bundle

    export_bundle(
        run.workdir / "best",
        run.config,
        state.params,
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
