"""Training: data -> padded graph batches -> jitted Adam steps -> checkpoints and a bundle.

``train_and_evaluate(config, workdir)`` runs a whole job:

1. load the dataset (:func:`e3elastic.data.load_dataset`) and its split, build crystal graphs
   (cached on disk), and choose padded batch shapes from the training graphs' sizes;
2. normalise targets per irrep with training-split statistics (:func:`model.irrep_stats`), so
   the loss, a mean squared error over the 21 normalised irreps coefficients, weighs the 0e,
   2e and 4e parts alike;
3. train with optax Adam(W), linear warm-up then cosine decay, gradient clipping, jitted
   train/eval steps over the bucketed shapes;
4. after each epoch evaluate on the validation split, append one line to ``metrics.jsonl``
   (deterministic content only; wall times go to ``timing.jsonl``), save an orbax checkpoint,
   and export the inference bundle ``best/`` when validation error improves;
5. stop early after ``patience`` epochs without improvement, then evaluate the best weights on
   validation and test (``final_metrics.json``).

``resume=True`` continues from the latest readable checkpoint; epochs are shuffled with a seed
derived from (seed, epoch), so a resumed run follows the same path as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from . import graph as graph_mod
from . import metrics as metrics_mod
from . import tensors
from .config import Config

__all__ = ["Prepared", "TrainingError", "prepare_data", "train_and_evaluate"]


class TrainingError(RuntimeError):
    """Training cannot go on (bad data, non-finite loss); the message says why."""


# --------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """Graphs and targets of one dataset, by split part."""

    dataset: Any
    graphs: dict[str, list]  # part -> [CrystalGraph]
    records: dict[str, list]  # part -> [Record]
    irreps: dict[str, np.ndarray]  # part -> (n, 21) GPa
    buckets: tuple
    dropped: list[tuple[str, str]]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def graphs_for_records(records, cutoff: float, cache_dir=None, log=_log):
    """Graphs of records; a record whose graph fails is reported and left out."""
    items = [(r.id, r.structure) for r in records]
    try:
        return list(records), graph_mod.build_graphs_cached(items, cutoff, cache_dir), []
    except graph_mod.GraphError:
        pass
    good, bad = [], []
    for r in records:
        try:
            graph_mod.structure_to_graph(r.structure, cutoff, id=r.id)
            good.append(r)
        except graph_mod.GraphError as e:
            bad.append((r.id, str(e)))
            log(f"skipping {r.id}: {e}")
    graphs = graph_mod.build_graphs_cached([(r.id, r.structure) for r in good], cutoff, cache_dir)
    return good, graphs, bad


def prepare_data(config: Config, dataset=None, log=_log) -> Prepared:
    """Load the dataset of ``config.data`` (unless given), build graphs and buckets."""
    dc, mc = config.data, config.model
    if dataset is None:
        dataset = data_mod.load_dataset(
            dc.data,
            subset=dc.subset,
            tolerance=dc.tolerance,
            keep_unstable=dc.keep_unstable,
            max_sites=dc.max_sites,
            cutoff=mc.cutoff,
            seed=dc.seed,
            holdout=dc.holdout,
        )
    cache_dir = None
    try:
        cache_dir = data_mod._cache_dir(None) / "graphs"
    except Exception:  # no writable cache: build in memory
        cache_dir = None
    graphs, records, irreps, dropped = {}, {}, {}, []
    for part in ("train", "val", "test"):
        recs = dataset.part(part)
        good, gs, bad = graphs_for_records(recs, mc.cutoff, cache_dir, log)
        dropped += bad
        graphs[part], records[part] = gs, good
        irreps[part] = (
            tensors.voigt_to_irreps(np.stack([r.voigt for r in good]))
            if good
            else np.zeros((0, 21))
        )
    if not graphs["train"]:
        raise TrainingError("the training split is empty; nothing to train on")
    buckets = graph_mod.make_buckets(graphs["train"], dc.batch_size, dc.n_buckets, seed=dc.seed)
    return Prepared(dataset, graphs, records, irreps, buckets, dropped)


# --------------------------------------------------------------------------------------------
# Model, optimiser, steps
# --------------------------------------------------------------------------------------------


def _jax():
    import jax

    return jax


def create_model(config: Config):
    from .model import ElasticityNet

    return ElasticityNet(config.model)


def init_params(config: Config, example_inputs: dict, seed: int):
    jax = _jax()
    net = create_model(config)
    params = jax.jit(net.init)(jax.random.PRNGKey(seed), example_inputs)
    return cast_params(params, config)


def cast_params(params, config: Config):
    jax = _jax()
    import jax.numpy as jnp

    dtype = jnp.float64 if config.train.dtype == "float64" else jnp.float32
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def create_optimizer(config: Config, steps_per_epoch: int):
    import optax

    tc = config.train
    total = max(1, tc.epochs * steps_per_epoch)
    warmup = min(total - 1, max(1, round(tc.warmup_epochs * steps_per_epoch)))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=tc.learning_rate * 0.01,
        peak_value=tc.learning_rate,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=tc.learning_rate * tc.final_lr_fraction,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(schedule, weight_decay=tc.weight_decay),
    )
    return tx, schedule


def make_steps(net, tx):
    """Jitted ``train_step(params, opt_state, inputs, targets)`` and ``predict_step``."""
    jax = _jax()
    import jax.numpy as jnp
    import optax

    def loss_fn(params, inputs, targets):
        y = net.apply(params, inputs)  # (G, 21) normalised
        per_graph = jnp.mean((y - targets) ** 2, axis=-1)  # (G,)
        mask = inputs["graph_mask"].astype(y.dtype)
        loss = jnp.sum(per_graph * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, per_graph

    @jax.jit
    def train_step(params, opt_state, inputs, targets):
        (loss, per_graph), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, inputs, targets
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, per_graph

    @jax.jit
    def predict_step(params, inputs):
        return net.apply(params, inputs)

    return train_step, predict_step


def _np_dtype(config: Config):
    return np.float64 if config.train.dtype == "float64" else np.float32


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31)


def predict_irreps(predict_step, params, graphs, buckets, batch_size, stats, dtype) -> np.ndarray:
    """Denormalised irreps ``(n, 21)`` (GPa, float64) for graphs, in input order."""
    from .model import batch_inputs

    out = np.zeros((len(graphs), 21))
    if not graphs:
        return out
    for b in graph_mod.batches(graphs, batch_size=batch_size, buckets=buckets):
        y = np.asarray(predict_step(params, batch_inputs(b, dtype)), np.float64)
        real = b.graph_index >= 0
        out[b.graph_index[real]] = y[real]
    return stats["shift"] + stats["scale"] * out


def evaluate_part(pred_irreps, records, groups=("theory", "source")) -> dict[str, Any]:
    if len(records) == 0:
        return {"n": 0}
    pred = tensors.irreps_to_voigt(pred_irreps)
    true = np.stack([r.voigt for r in records])
    return metrics_mod.tensor_metrics(
        pred,
        true,
        [r.crystal_system or "unknown" for r in records],
        {g: [getattr(r, g) for r in records] for g in groups},
    )


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int, label: str, enabled: bool | None = None):
        self.total, self.label = total, label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self.n = 0
        self.crystals = 0

    def update(self, crystals: int, loss: float) -> None:
        self.n += 1
        self.crystals += crystals
        if not self.enabled:
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        width = 24
        done = int(width * self.n / max(self.total, 1))
        sys.stderr.write(
            f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} "
            f"loss {loss:.4f} {self.crystals / dt:.1f} crystals/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _score(m: dict[str, Any]) -> float:
    return float(m.get("rel_frobenius", math.inf))


def _truncate_jsonl(path: Path, last_epoch: int) -> None:
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


def _append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    prepared: Prepared | None = None,
    log=_log,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``config`` in ``workdir``; returns the final metrics (see module docstring)."""
    jax = _jax()
    if config.train.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    elif config.train.dtype != "float32":
        raise TrainingError(f"train.dtype must be float32 or float64, got {config.train.dtype}")
    from .checkpoint import TrainCheckpoints, export_bundle
    from .model import batch_inputs, irrep_stats

    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "config.json"
    if resume and cfg_path.exists():
        saved = Config.from_json(cfg_path.read_text())
        if saved != config:
            log(f"resuming with the config saved in {cfg_path}")
            config = saved
    cfg_path.write_text(config.to_json())
    tc, dc = config.train, config.data
    dtype = _np_dtype(config)

    t_start = time.perf_counter()
    prep = prepared if prepared is not None else prepare_data(config, log=log)
    log(
        f"data: train {len(prep.graphs['train'])}, val {len(prep.graphs['val'])}, "
        f"test {len(prep.graphs['test'])} crystals; buckets {list(map(tuple, prep.buckets))}"
    )
    stats = irrep_stats(prep.irreps["train"])
    targets = {p: (prep.irreps[p] - stats["shift"]) / stats["scale"] for p in prep.irreps}
    train_graphs = prep.graphs["train"]
    steps_per_epoch = sum(
        1
        for _ in graph_mod.batches(
            train_graphs,
            batch_size=dc.batch_size,
            buckets=prep.buckets,
            shuffle=True,
            seed=epoch_seed(tc.seed, 0),
        )
    )

    net = create_model(config)
    first = graph_mod.pad_batch(train_graphs[:1], prep.buckets[0])
    params = init_params(config, batch_inputs(first, dtype), tc.seed)
    tx, schedule = create_optimizer(config, steps_per_epoch)
    opt_state = tx.init(params)
    train_step, predict_step = make_steps(net, tx)

    split_ids = {p: [r.id for r in prep.records[p]] for p in ("train", "val", "test")}
    ckpts = TrainCheckpoints(workdir, max_to_keep=tc.max_to_keep)
    metrics_path, timing_path = workdir / "metrics.jsonl", workdir / "timing.jsonl"
    start_epoch, best = 0, {"score": math.inf, "epoch": -1}
    if resume:
        state = {"params": params, "opt_state": opt_state, "epoch": np.int64(0)}
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), state)
        restored = ckpts.restore(abstract, log=log)
        if restored is not None:
            step, st, meta = restored
            params, opt_state = st["params"], st["opt_state"]
            start_epoch = int(st["epoch"]) + 1
            best = meta.get("best", best)
            if meta.get("split") and meta["split"] != split_ids:
                raise TrainingError(
                    "the data split differs from the one this run started with; "
                    "resume with the same data and settings, or use a new --workdir"
                )
            log(f"resumed from step {step} (epoch {start_epoch - 1})")
            _truncate_jsonl(metrics_path, start_epoch - 1)
            _truncate_jsonl(timing_path, start_epoch - 1)
        else:
            log("no checkpoint to resume from; starting fresh")
    if start_epoch == 0:
        for p in (metrics_path, timing_path):
            p.unlink(missing_ok=True)
    elif ckpts.steps() and not resume:
        pass

    def meta_for(epoch: int) -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "stats": {k: v.tolist() for k, v in stats.items()},
            "split": split_ids,
            "best": best,
            "epoch": epoch,
        }

    def export_best(epoch: int, val_metrics: dict) -> None:
        export_bundle(
            workdir / "best",
            config,
            params,
            stats,
            {
                "epoch": epoch,
                "val": val_metrics,
                "split": split_ids,
                "trained": time.strftime("%Y-%m-%d"),
                "data": {k: v for k, v in dataclasses.asdict(dc).items()},
            },
        )

    eval_bs = dc.batch_size
    bad_epochs = 0 if best["epoch"] < 0 else max(0, start_epoch - 1 - best["epoch"])
    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        shapes, losses, n_seen = set(), [], 0
        bar = Progress(steps_per_epoch, f"epoch {epoch}", progress)
        for b in graph_mod.batches(
            train_graphs,
            targets["train"],
            batch_size=dc.batch_size,
            buckets=prep.buckets,
            shuffle=True,
            seed=epoch_seed(tc.seed, epoch),
        ):
            shapes.add(tuple(b.bucket))
            new_params, new_opt, loss, per_graph = train_step(
                params, opt_state, batch_inputs(b, dtype), b.targets.astype(dtype)
            )
            loss = float(loss)
            if not math.isfinite(loss):
                pg = np.asarray(per_graph)[: b.n_real]
                bad = [b.ids[i] for i in np.flatnonzero(~np.isfinite(pg))] or list(b.ids)
                raise TrainingError(
                    f"non-finite loss at epoch {epoch} in a batch with {', '.join(bad[:5])}"
                    f"{' ...' if len(bad) > 5 else ''}; stopped without saving this step "
                    f"(the last good checkpoint in {ckpts.directory} is intact)"
                )
            params, opt_state = new_params, new_opt
            losses.append((loss, b.n_real))
            n_seen += b.n_real
            bar.update(b.n_real, loss)
        bar.close()
        t_train = time.perf_counter() - t0
        train_loss = sum(l * n for l, n in losses) / max(1, sum(n for _, n in losses))
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": (epoch + 1) * steps_per_epoch,
            "lr": float(schedule((epoch + 1) * steps_per_epoch)),
            "train_loss": train_loss,
            "n_shapes": len(shapes),
        }
        improved = False
        if prep.graphs["val"] and (epoch + 1) % tc.eval_every == 0:
            pred = predict_irreps(
                predict_step, params, prep.graphs["val"], prep.buckets, eval_bs, stats, dtype
            )
            vm = evaluate_part(pred, prep.records["val"])
            record["val"] = {k: v for k, v in vm.items() if not k.startswith("by_")}
            if _score(vm) < best["score"]:
                best = {"score": _score(vm), "epoch": epoch}
                improved = True
                bad_epochs = 0
            else:
                bad_epochs += 1
        elif not prep.graphs["val"]:
            best = {"score": train_loss, "epoch": epoch}
            improved = True
        _append_jsonl(metrics_path, record)
        if improved:
            export_best(epoch, record.get("val", {}))
        if (epoch + 1) % tc.checkpoint_every == 0 or epoch + 1 == tc.epochs:
            ckpts.save(
                epoch,
                {"params": params, "opt_state": opt_state, "epoch": np.int64(epoch)},
                meta_for(epoch),
            )
        dt = time.perf_counter() - t0
        _append_jsonl(
            timing_path,
            {
                "epoch": epoch,
                "seconds": dt,
                "train_seconds": t_train,
                "crystals_per_s": n_seen / max(t_train, 1e-9),
            },
        )
        val_txt = ""
        if "val" in record:
            v = record["val"]
            val_txt = f" val rel {v['rel_frobenius']:.4f} MAE {v['mae_voigt_GPa']:.2f}"
        log(
            f"epoch {epoch}: loss {train_loss:.4f}{val_txt} ({dt:.1f} s, "
            f"{n_seen / max(t_train, 1e-9):.1f} crystals/s){' *' if improved else ''}"
        )
        if bad_epochs >= tc.patience:
            log(f"early stop: no better validation error for {tc.patience} epochs")
            break
        if tc.max_minutes and (time.perf_counter() - t_start) > 60 * tc.max_minutes:
            log(f"stopping: reached max_minutes={tc.max_minutes}")
            break
    ckpts.close()
    return final_evaluation(workdir, prep, log=log)


def final_evaluation(workdir: Path, prep: Prepared, log=_log) -> dict[str, Any]:
    """Evaluate the exported best bundle on val and test; writes ``final_metrics.json``."""
    from .checkpoint import load_bundle

    config, params, stats, info = load_bundle(Path(workdir) / "best")
    params = cast_params(params, config)
    net = create_model(config)
    _, predict_step = make_steps(net, _identity_tx())
    dtype = _np_dtype(config)
    out: dict[str, Any] = {"best_epoch": info.get("epoch")}
    for part in ("train", "val", "test"):
        pred = predict_irreps(
            predict_step,
            params,
            prep.graphs[part],
            prep.buckets,
            config.data.batch_size,
            stats,
            dtype,
        )
        out[part] = evaluate_part(pred, prep.records[part])
        if part != "train" and out[part].get("n"):
            log(
                f"{part}: n={out[part]['n']} rel {out[part]['rel_frobenius']:.4f} "
                f"MAE {out[part]['mae_voigt_GPa']:.2f} GPa, EwT25 {out[part]['ewt_25']:.3f}"
            )
    out["baselines"] = baselines(prep)
    (Path(workdir) / "final_metrics.json").write_text(json.dumps(out, indent=2, sort_keys=True))
    return out


def _identity_tx():
    import optax

    return optax.identity()


def baselines(prep: Prepared) -> dict[str, Any]:
    """Test metrics of two trivial predictors: the training-mean tensor, overall and per
    crystal system (falling back to the overall mean for a system unseen in training)."""
    train = np.stack([r.voigt for r in prep.records["train"]])
    mean = train.mean(axis=0)
    by_sys: dict[str, list] = {}
    for r in prep.records["train"]:
        by_sys.setdefault(r.crystal_system, []).append(r.voigt)
    sys_mean = {k: np.mean(v, axis=0) for k, v in by_sys.items()}
    out = {}
    for part in ("val", "test"):
        recs = prep.records[part]
        if not recs:
            continue
        true = np.stack([r.voigt for r in recs])
        systems = [r.crystal_system or "unknown" for r in recs]
        p1 = np.broadcast_to(mean, true.shape)
        p2 = np.stack([sys_mean.get(s, mean) for s in systems])
        out[part] = {
            "train_mean": metrics_mod.tensor_metrics(p1, true),
            "train_mean_per_crystal_system": metrics_mod.tensor_metrics(p2, true),
        }
    return out


# --------------------------------------------------------------------------------------------
# Evaluation of a saved model on any dataset
# --------------------------------------------------------------------------------------------


def resolve_bundle(path: str | os.PathLike) -> Path:
    """A bundle folder, or a run folder holding ``best/``."""
    p = Path(path)
    if (p / "MANIFEST.json").is_file():
        return p
    if (p / "best" / "MANIFEST.json").is_file():
        return p / "best"
    raise TrainingError(f"{p}: no model bundle here (expected MANIFEST.json or best/)")


def evaluate_model(
    model: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    split: str = "test",
    log=_log,
) -> dict[str, Any]:
    """Metrics of a saved model on a dataset the readers accept.

    With ``split`` ``train``/``val``/``test``, the crystals are those of the model's own saved
    split that the dataset holds; when the dataset shares no id with that split part (a new
    dataset), every crystal is evaluated. ``split="all"`` evaluates every crystal.
    """
    from .checkpoint import load_bundle

    bundle = resolve_bundle(model)
    config, params, stats, info = load_bundle(bundle)
    params = cast_params(params, config)
    dc = config.data
    dataset = data_mod.load_dataset(
        data if data is not None else dc.data,
        subset="all",
        tolerance=dc.tolerance,
        keep_unstable=dc.keep_unstable,
        max_sites=dc.max_sites,
        cutoff=config.model.cutoff,
        seed=dc.seed,
        holdout=dc.holdout,
    )
    records = list(dataset.records)
    chosen = records
    note = "all crystals"
    if split != "all":
        ids = set((info.get("split") or {}).get(split, []))
        chosen = [r for r in records if r.id in ids]
        note = f"the model's {split} split"
        if not chosen:
            chosen, note = records, f"all crystals (none is in the model's {split} split)"
    if not chosen:
        raise TrainingError("the dataset holds no usable crystal")
    cache_dir = data_mod._cache_dir(None) / "graphs"
    good, graphs, bad = graphs_for_records(chosen, config.model.cutoff, cache_dir, log)
    buckets = graph_mod.make_buckets(graphs, config.data.batch_size, config.data.n_buckets)
    _, predict_step = make_steps(create_model(config), _identity_tx())
    pred = predict_irreps(
        predict_step, params, graphs, buckets, config.data.batch_size, stats, _np_dtype(config)
    )
    out = evaluate_part(pred, good)
    out["evaluated"] = note
    out["skipped"] = bad
    out["model"] = str(bundle)
    return out
