"""Evaluate a trained model (shipped name, bundle, run folder or ensemble) on a dataset.

>>> from e3elastic.training import evaluation
>>> m = evaluation.evaluate("default", split="test")            # doctest: +SKIP
>>> m["metrics"]["rel_frobenius"], len(m["crystals"])            # doctest: +SKIP

The metrics are those of :mod:`e3elastic.training.metrics`; ``mae_voigt_GPa`` is the mean absolute
error over all 36 entries of the 6x6 Voigt matrix (:data:`MAE_DEFINITION`), the one definition
used by ``evaluate``, training logs and the parity plot. An ensemble is scored on its mean
tensor; its per-crystal standard deviations (calibrated when the ensemble folder has a
``calibration.json``, see :func:`fit_sigma_scale`) are reported alongside.

For training: :func:`evaluate_model` scores weights on one split part of a
:class:`~e3elastic.training.prepare.Prepared` dataset (:func:`evaluate_part` from head outputs),
:func:`final_evaluation` scores a run's exported best bundle on every part and writes
``final_metrics.json``, and :func:`baselines` gives the metrics of two trivial predictors.
Messages go to ``logging.getLogger("e3elastic.training.evaluation")``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import data as data_mod
from .. import tensors
from ..config import Config
from ..inference import Model, PredictError, load_model
from ..network import interface
from . import metrics
from .calibration import (
    SIGMA_QUANTITIES,
    Evaluated,
    EvaluationError,
    coverage,
    fit_interval_scale,
    fit_sigma_scale,
    interval_coverage,
    reference_moduli,
)
from .prepare import Prepared, graph_cache_dir, graphs_for_records

__all__ = [
    "MAE_DEFINITION",
    "EvaluationError",
    "Evaluated",
    "SIGMA_QUANTITIES",
    "baselines",
    "coverage",
    "evaluate",
    "evaluate_model",
    "evaluate_part",
    "final_evaluation",
    "fit_interval_scale",
    "fit_sigma_scale",
    "interval_coverage",
    "predict_irreps",
    "predict_records",
    "reference_moduli",
]

logger = logging.getLogger(__name__)

MAE_DEFINITION = "MAE Voigt: mean |C_pred - C| over the 36 entries of the 6x6 Voigt matrix (GPa)"


def load_records(model: Model, data=None, split: str = "test") -> tuple[list[Any], str, list]:
    """The records of ``data`` (default: the model's training data folder) to evaluate on:
    those of the model's own ``split`` part, or all of them (``split="all"``, or a dataset that
    shares no crystal with that part); a note saying which; and the entries of ``data`` that
    were dropped on reading (:class:`e3elastic.data.Dropped`)."""
    dc = model.config.data
    dataset = data_mod.load_dataset(
        data if data is not None else dc.data,
        subset="all",
        tolerance=dc.tolerance,
        keep_unstable=dc.keep_unstable,
        max_sites=dc.max_sites,
        cutoff=model.config.model.cutoff,
        seed=dc.seed,
        holdout=dc.holdout,
    )
    records = list(dataset.records)
    if split == "all":
        chosen, note = records, "all crystals"
    else:
        ids = set((model.info.get("split") or {}).get(split, []))
        chosen, note = [r for r in records if r.id in ids], f"the model's {split} split"
        if not chosen:
            chosen, note = records, f"all crystals (none is in the model's {split} split)"
    if not chosen:
        raise EvaluationError(
            "the dataset holds no usable crystal"
            + "".join(f"\n  {line}" for line in data_mod.describe_dropped(dataset.dropped))
        )
    return chosen, note, list(dataset.dropped)


def predict_records(model: Model, records, batch_size: int = 8) -> Evaluated:
    """Every member's Voigt tensors for records (each at its own level of theory)."""
    from ..config import theory_index

    good, graphs, bad = graphs_for_records(records, model.config.model.cutoff, graph_cache_dir())
    if model.config.model.n_theories:
        try:
            theory = np.array([theory_index(r.theory) for r in good], np.int32)
        except ValueError as e:
            raise EvaluationError(str(e)) from None
        if np.any(theory >= model.config.model.n_theories):
            raise EvaluationError("the dataset has a level of theory the model was not trained on")
    else:
        theory = np.zeros(len(good), np.int32)
    irreps = model.predict_irreps(graphs, batch_size, theory)  # (M, n, 21)
    return Evaluated(list(good), model.voigt(irreps), [str(b) for b in bad])


def _scalar(x: Any) -> float:
    return float(x) if x is not None and np.isfinite(x) else float("nan")


def crystal_rows(ev: Evaluated, scale: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per crystal: ids, labels, reference and predicted moduli, errors, tensors."""
    errs = metrics.per_crystal_errors(ev.mean, ev.true)
    spread = ev.spread() if ev.member_voigt.shape[0] > 1 else None
    scale = scale or {}
    rows = []
    for i, r in enumerate(ev.records):
        row = {
            "id": r.id,
            "formula": r.formula,
            "source": r.source,
            "theory": r.theory,
            "crystal_system": r.crystal_system,
            "rel_frobenius": float(errs["rel_frobenius"][i]),
            "mae_voigt_GPa": float(errs["abs_voigt"][i]),
            "K_VRH_true_GPa": _scalar(errs["K_true"][i]),
            "K_VRH_pred_GPa": _scalar(errs["K_pred"][i]),
            "G_VRH_true_GPa": _scalar(errs["G_true"][i]),
            "G_VRH_pred_GPa": _scalar(errs["G_pred"][i]),
            "positive_definite": bool(errs["pd_pred"][i]),
            "true_voigt_GPa": ev.true[i].tolist(),
            "pred_voigt_GPa": ev.mean[i].tolist(),
        }
        rows.append(row | _spread_fields(spread, i, scale))
    return rows


def _spread_fields(spread: dict | None, i: int, scale: dict[str, float]) -> dict[str, Any]:
    """An ensemble's (calibrated) standard deviations of crystal ``i``: K, G and the 6x6."""
    if spread is None:
        return {}
    return {
        "K_VRH_std_GPa": float(spread["K_VRH"][i] * scale.get("K_VRH", 1.0)),
        "G_VRH_std_GPa": float(spread["G_VRH"][i] * scale.get("G_VRH", 1.0)),
        "voigt_std_GPa": (spread["voigt"][i] * scale.get("voigt", 1.0)).tolist(),
    }


def evaluate(
    model: Model | str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    split: str = "test",
    batch_size: int = 8,
) -> dict[str, Any]:
    """Metrics and per-crystal predictions of a model on a dataset.

    Returns ``{"model", "model_version", "evaluated", "mae_definition", "metrics",
    "coverage" (ensembles), "skipped", "crystals", "arrays"}``; ``arrays`` holds ``ids``,
    ``pred_voigt`` and ``true_voigt`` as numpy arrays (left out of JSON output).
    """
    if not isinstance(model, Model):
        try:
            model = load_model(model)
        except PredictError as e:
            raise EvaluationError(str(e)) from None
    records, note, dropped = load_records(model, data, split)
    moduli_records = [r for r in records if not r.has_tensor]
    records = [r for r in records if r.has_tensor]
    if not records and not moduli_records:
        raise EvaluationError(f"{note}: no crystal with a full tensor or K/G to evaluate on")
    out: dict[str, Any] = {
        "model": model.name,
        "model_version": model.version,
        "members": model.n_members,
        "evaluated": note,
        "mae_definition": MAE_DEFINITION,
        "metrics": {"n": 0},
        "skipped": [],
        "dropped": [d._asdict() for d in dropped],
        "crystals": [],
        "arrays": {"ids": [], "pred_voigt": np.zeros((0, 6, 6)), "true_voigt": np.zeros((0, 6, 6))},
    }
    if records:
        ev = predict_records(model, records, batch_size)
        scale = model.sigma_scale
        out["metrics"] = metrics.tensor_metrics(
            ev.mean,
            ev.true,
            [r.crystal_system or "unknown" for r in ev.records],
            {g: [getattr(r, g) for r in ev.records] for g in ("theory", "source")},
        )
        out["skipped"] = ev.skipped
        out["crystals"] = crystal_rows(ev, scale)
        out["arrays"] = {
            "ids": [r.id for r in ev.records],
            "pred_voigt": ev.mean,
            "true_voigt": ev.true,
        }
        if model.n_members > 1:
            out["coverage"] = coverage(ev, scale)
            out["sigma_scale"] = scale
    if moduli_records:
        out["moduli_only"] = _moduli_evaluation(model, moduli_records, batch_size)
    return out


def _moduli_evaluation(model: Model, records, batch_size: int) -> dict[str, Any]:
    """Predicted K_VRH, G_VRH against records that have only those: ``{"metrics",
    "skipped", "crystals"}``."""
    ev = predict_records(model, records, batch_size)
    kg = np.array([r.kg for r in ev.records], np.float64).reshape(-1, 2)
    pred = ev.mean
    spread = ev.spread() if ev.member_voigt.shape[0] > 1 else None
    k_pred = tensors.bulk_modulus(pred)["hill"]
    g_pred = tensors.shear_modulus(pred)["hill"]
    rows = [
        {
            "id": r.id,
            "formula": r.formula,
            "source": r.source,
            "theory": r.theory,
            "crystal_system": r.crystal_system,
            "K_VRH_true_GPa": float(kg[i, 0]),
            "K_VRH_pred_GPa": _scalar(k_pred[i]),
            "G_VRH_true_GPa": float(kg[i, 1]),
            "G_VRH_pred_GPa": _scalar(g_pred[i]),
            "pred_voigt_GPa": pred[i].tolist(),
        }
        | _spread_fields(spread, i, model.sigma_scale or {})
        for i, r in enumerate(ev.records)
    ]
    return {
        "metrics": metrics.moduli_metrics(pred, kg),
        "skipped": ev.skipped,
        "crystals": rows,
    }


# --------------------------------------------------------------------------------------------
# Training: weights on a prepared dataset, a run's best bundle, trivial baselines
# --------------------------------------------------------------------------------------------


def predict_irreps(
    predict_step, params, graphs, buckets, batch_size, stats, dtype, theory=None
) -> np.ndarray:
    """Denormalised head outputs ``(n, 21)`` (float64) of one set of weights over graphs, in
    input order (:func:`e3elastic.network.interface.predict_irreps` with one member)."""
    members = [(params, stats)]
    return interface.predict_irreps(
        predict_step, members, graphs, buckets, batch_size, dtype, theory
    )[0]


def evaluate_part(pred_irreps, records, config: Config, groups=("theory", "source")) -> dict:
    """Metrics of head outputs ``(n, 21)`` against records' labels: the tensor metrics of
    :func:`e3elastic.training.metrics.tensor_metrics` over the records with a full tensor, and, when
    there are records with K/G only, ``moduli_only``:
    :func:`e3elastic.training.metrics.moduli_metrics` over those."""
    from ..network.interface import voigt_from_outputs

    if len(records) == 0:
        return {"n": 0}
    pred = voigt_from_outputs(np.asarray(pred_irreps), config.model)
    full = np.array([r.has_tensor for r in records], bool)
    tensor_records = [r for r in records if r.has_tensor]
    out: dict[str, Any] = {"n": 0}
    if tensor_records:
        out = metrics.tensor_metrics(
            pred[full],
            np.stack([r.voigt for r in tensor_records]),
            [r.crystal_system or "unknown" for r in tensor_records],
            {g: [getattr(r, g) for r in tensor_records] for g in groups},
        )
    if not full.all():
        kg = np.array([r.kg for r in records if not r.has_tensor])
        out["moduli_only"] = metrics.moduli_metrics(pred[~full], kg)
    return out


def evaluate_model(
    predict_step, params, stats, prep: Prepared, part: str, config: Config, dtype
) -> dict[str, Any]:
    """Metrics of weights (``predict_step(params, inputs)``, normalised by ``stats``) on one
    split part of a prepared dataset, in batches of ``config.data.batch_size``."""
    pred = predict_irreps(
        predict_step,
        params,
        prep.graphs[part],
        prep.buckets,
        config.data.batch_size,
        stats,
        dtype,
        prep.theory[part],
    )
    return evaluate_part(pred, prep.records[part], config)


def final_evaluation(workdir: str | os.PathLike, prep: Prepared) -> dict[str, Any]:
    """Evaluate the exported best bundle on every part; writes ``final_metrics.json``."""
    from .checkpoint import load_bundle
    from .steps import cast_params, create_model, make_predict_step

    config, params, stats, info = load_bundle(Path(workdir) / "best")
    params = cast_params(params, config)
    predict_step = make_predict_step(create_model(config))
    dtype = np.float64 if config.train.dtype == "float64" else np.float32
    out: dict[str, Any] = {"best_epoch": info.get("epoch")}
    for part in ("train", "val", "test"):
        m = out[part] = evaluate_model(predict_step, params, stats, prep, part, config, dtype)
        if part != "train" and m.get("n"):
            logger.info(
                f"{part}: n={m['n']} rel {m['rel_frobenius']:.4f} "
                f"MAE {m['mae_voigt_GPa']:.2f} GPa, EwT25 {m['ewt_25']:.3f}"
            )
    out["baselines"] = baselines(prep)
    (Path(workdir) / "final_metrics.json").write_text(json.dumps(out, indent=2, sort_keys=True))
    return out


def baselines(prep: Prepared) -> dict[str, Any]:
    """Test metrics of two trivial predictors: the training-mean tensor, overall and per
    crystal system (falling back to the overall mean for a system unseen in training)."""
    train_records = [r for r in prep.records["train"] if r.has_tensor]
    train = np.stack([r.voigt for r in train_records])
    mean = train.mean(axis=0)
    by_system: dict[str, list] = {}
    for r in train_records:
        by_system.setdefault(r.crystal_system or "unknown", []).append(r.voigt)
    system_mean = {k: np.mean(v, axis=0) for k, v in by_system.items()}
    out = {}
    for part in ("val", "test"):
        recs = [r for r in prep.records[part] if r.has_tensor]
        if not recs:
            continue
        true = np.stack([r.voigt for r in recs])
        systems = [r.crystal_system or "unknown" for r in recs]
        overall = np.broadcast_to(mean, true.shape)
        per_system = np.stack([system_mean.get(s, mean) for s in systems])
        out[part] = {
            "train_mean": metrics.tensor_metrics(overall, true),
            "train_mean_per_crystal_system": metrics.tensor_metrics(per_system, true),
        }
    return out
