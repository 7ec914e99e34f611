"""Training: data -> padded graph batches -> jitted Adam steps -> checkpoints and a bundle.

``train_and_evaluate(config, workdir)`` runs a whole job:

1. load the dataset and its split, build crystal graphs (cached on disk), and choose padded
   batch shapes from the training graphs' sizes (:func:`e3elastic.training.prepare.prepare_data`);
2. turn each tensor into the 21 irreps the model's head learns (:func:`model.targets_from_voigt`:
   C, or its matrix logarithm for the ``log`` head) and normalise them per irrep with
   training-split statistics (:func:`model.irrep_stats`), so the loss, a mean squared error over
   the 21 normalised coefficients, weighs the 0e, 2e and 4e parts alike (for the log head it is
   the log-Euclidean distance, a relative error);
3. train with optax Adam(W), linear warm-up then cosine decay, gradient clipping, jitted
   train/eval steps over the bucketed shapes (:mod:`e3elastic.training.steps`); with
   ``train.volume_strain`` > 0 part of every batch is isotropically scaled and its target
   follows Murnaghan's law (:func:`~e3elastic.training.steps.volume_augmentation`). The training
   crystals are packed into padded batches once per run (:func:`plan_steps`); each epoch runs
   the buckets in a shuffled order and, within a bucket, its steps in a shuffled order
   (:func:`epoch_order`). With ``train.loop = "scan"`` (the default) each bucket's batches are
   put on the device once and an epoch runs a bucket's steps in one ``jax.lax.scan``
   (:func:`~e3elastic.training.steps.make_scan`), bringing losses back to the host once per bucket;
   ``"python"`` runs one jitted step per batch fed from the host and reads the loss after each
   (for debugging). Both take the same steps and agree within float round-off;
4. after each epoch evaluate on the validation split, append one line to ``metrics.jsonl``
   (deterministic content only; wall times go to ``timing.jsonl``), save an orbax checkpoint
   of the :class:`~e3elastic.training.steps.TrainState`, and export the inference bundle ``best/``
   when validation error improves;
5. stop early, at an evaluation, once ``patience`` epochs have passed since the best
   validation error, then evaluate the best weights on validation and test
   (``final_metrics.json``, :func:`e3elastic.training.evaluation.final_evaluation`).

``resume=True`` continues from the latest readable checkpoint; epochs are shuffled with a seed
derived from (seed, epoch), so a resumed run follows the same path as an uninterrupted one.

A non-finite loss stops training with :class:`TrainingError` naming the crystals whose loss
was not finite, and nothing of that epoch is saved. The python loop stops at the bad step
itself. The scan loop finds out only when the bucket's results come back, by which time the
weights in memory have been updated past the bad step: they are dropped, never saved or
exported, and the last good checkpoint on disk stays as it was; fix the data and resume from
it (``--resume``), or rerun with ``train.loop=python`` to stop at the step.

Progress messages go to ``logging.getLogger("e3elastic.training.train")`` (the command line shows
them on stderr); a progress bar (tqdm) is drawn on stderr when it is a terminal.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .. import graph as graph_mod
from ..config import Config, theory_index
from ..data import describe_dropped
from .epochs import Run, np_dtype, run_epoch, upload_steps
from .evaluation import (
    baselines,
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
    plan_steps,
    stack_inputs,
)
from .prepare import (
    Prepared,
    TrainingError,
    graphs_for_records,
    learns_moduli,
    merged_training_sets,
    messages_to,
    prepare_data,
    theory_indices,
    training_set_counts,
)
from .rundir import (
    RESUMABLE_CHANGES,
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


def _train(config: Config, workdir: Path, resume: bool, prepared, progress) -> dict[str, Any]:
    _set_precision(config)
    held = sorted(int(p.name) for p in (workdir / "ckpt").glob("[0-9]*")) if not resume else []
    if held:  # before config.json is written or the data loaded: the run there stays intact
        raise TrainingError(
            f"{workdir} already holds checkpoints (steps {held}); pass --resume to continue "
            "that run, or use a new --workdir"
        )
    write_config(config, workdir, resume)
    run, state = _setup(config, workdir, prepared)
    state = _restore_or_start(run, state, resume)
    state = run.dp.replicate(state)
    if run.dp.n_sub > 1:
        logger.info(
            f"data parallel: {run.dp.n_sub} sub-batches per step on {run.dp.n_devices} device(s)"
        )
    if config.train.loop == "scan":
        run.on_device = upload_steps(run)
    for epoch in range(state.epoch + 1, config.train.epochs):
        state, stop = run_epoch(run, state, epoch, progress)
        if stop:
            break
    run.ckpts.close()
    return final_evaluation(workdir, run.prep)


#: Above this learning rate a fine-tuning run (``train.init_from``) warns.
FINE_TUNE_RATE_WARNING = 1e-3


def _set_precision(config: Config) -> None:
    if config.train.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    elif config.train.dtype != "float32":
        raise TrainingError(f"train.dtype must be float32 or float64, got {config.train.dtype}")


def _setup(config: Config, workdir: Path, prepared) -> tuple[Run, TrainState]:
    """Data, the plan of steps, the model, optimizer and steps, the checkpoint manager; and
    the fresh training state."""
    from ..network.model import batch_inputs, irrep_stats  # looked up per run: tests replace them
    from .checkpoint import TrainCheckpoints

    tc, dtype = config.train, np_dtype(config)
    t_start = time.perf_counter()
    prep = prepared if prepared is not None else prepare_data(config)
    sizes = ", ".join(f"{p} {len(prep.graphs[p])}" for p in ("train", "val", "test"))
    logger.info(f"data: {sizes} crystals; buckets {list(map(tuple, prep.buckets))}")
    for line in describe_dropped(prep.dataset.dropped):
        logger.info(line)
    if not len(prep.graphs["val"]):
        logger.warning(
            "warning: no validation crystals (too few for a split), so every epoch counts as "
            "the best, early stopping is off and the last epoch is exported; score the model "
            "on crystals of your own with `e3elastic evaluate --data`"
        )
    stats = irrep_stats(np.asarray(prep.irreps["train"])[prep.tensor_mask("train")])
    start = _start_bundle(config, tc.init_from) if tc.init_from else None
    if start is not None:
        stats = start[1]  # the bundle's output units, so the run starts from its predictions
        if tc.learning_rate > FINE_TUNE_RATE_WARNING:
            logger.warning(
                f"warning: fine-tuning at learning rate {tc.learning_rate:g}, a rate for training "
                "from scratch: the first Adam steps move every weight by about that much and can "
                "undo what the model knows (a short run has almost no warm-up); fine-tune at "
                "3e-4 or lower (--set train.learning_rate=3e-4)"
            )
    dp = DataParallel(tc.data_parallel)
    wide = learns_moduli(config) or tc.moduli_weight_tensor > 0
    irreps = prep.training_irreps("train")  # the DFT targets, or blended with a teacher's
    if wide:  # ln K, ln G and the tensor flag follow the irreps
        weight = prep.target_weight("train")  # 1 tensor, 0 K/G only, else a pseudo-tensor
        targets = training_targets(irreps, stats, prep.log_kg["train"], weight)
    else:
        targets = training_targets(irreps, stats)
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
    run = Run(
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
        training_set=_training_set(prep, start, tc.init_from),
        t_start=t_start,
    )
    return run, TrainState.create(params, tx)


def _training_set(prep, start, init_from: str) -> dict[str, Any]:
    """What the bundle will say it was trained on: this run's training crystals, and for a
    fine-tuning run also those of the bundle it started from."""
    counts = training_set_counts(prep.records["train"], prep.graphs["train"])
    base = (start[2] or {}).get("training_set") if start is not None else None
    if not base:
        return counts
    return merged_training_sets(base, counts) | {"fine_tuned_from": str(init_from)}


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
    if len(keep):
        logger.info(
            f"oversampling: {len(keep)} {tc.oversample_theory} training crystals x{tc.oversample}"
        )
    return (
        list(graphs) + [graphs[i] for i in extra],
        np.concatenate([irreps, irreps[extra]]),
        np.concatenate([theory, theory[extra]]),
    )


def _start_bundle(config: Config, name: str) -> tuple[Any, dict, dict]:
    """``(params, stats, info)`` of the bundle ``name`` for a fine-tuning run of ``config``;
    :class:`TrainingError` when it cannot be read or is another architecture."""
    from ..inference.bundle import CheckpointError, load_bundle, model_folder

    try:
        b_config, b_params, b_stats, b_info = load_bundle(model_folder(name))
    except CheckpointError as e:
        raise TrainingError(f"train.init_from: {e}") from None
    if b_config.model != config.model:
        raise TrainingError(
            f"train.init_from: {name} is a different architecture than this run's model"
        )
    logger.info(f"starting from the parameters and normalisation of {name}")
    return b_params, b_stats, b_info


def _start_params(name: str, params, b_params) -> Any:
    """``b_params`` in the structure and dtypes of freshly initialised ``params``."""
    from ..inference.bundle import flatten_params as flat

    want, got = flat(params), flat(b_params)
    if {k: v.shape for k, v in want.items()} != {k: v.shape for k, v in got.items()}:
        raise TrainingError(f"train.init_from: {name} parameter names or shapes differ")
    return jax.tree.map(lambda a, b: np.asarray(b, np.asarray(a).dtype), params, b_params)


def _restore_or_start(run: Run, state: TrainState, resume: bool) -> TrainState:
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
