"""The data of a training run: crystal graphs, head targets and padded shapes, by split part.

:func:`prepare_data` loads the dataset of ``config.data`` (:func:`e3elastic.data.load_for_config`),
keeps the crystals the model's head can learn, builds their graphs (cached on disk, see
:func:`graphs_for_records`), turns each tensor into the irreps the head learns
(:func:`e3elastic.network.interface.targets_from_voigt`), keeps every crystal's ln K_VRH and ln
G_VRH (the only label of a K/G-only crystal, which enters training when ``train.moduli_weight`` > 0)
and chooses padded batch shapes from the training graphs' sizes. It needs neither JAX nor the
optimizer, so evaluation can share it.

Messages (a crystal left out, and why) go to ``logging.getLogger("e3elastic.training.prepare")``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import data as data_mod
from .. import graph as graph_mod
from .. import tensors
from ..config import Config, theory_index
from ..errors import E3ElasticError
from ..inference.domain import contact_table
from ..tensors import N_IRREPS

__all__ = [
    "Prepared",
    "TrainingError",
    "graphs_for_records",
    "learns_moduli",
    "prepare_data",
    "theory_indices",
    "training_set_counts",
    "merged_training_sets",
]

logger = logging.getLogger(__name__)


class TrainingError(E3ElasticError, RuntimeError):
    """Training cannot go on (bad data, non-finite loss); the message says why."""


@dataclasses.dataclass
class Prepared:
    """Graphs and targets of one dataset, by split part."""

    dataset: Any
    graphs: dict[str, list]  # part -> [CrystalGraph]
    records: dict[str, list]  # part -> [Record]
    irreps: dict[str, np.ndarray]  # part -> (n, 21) head targets (GPa, or log units)
    buckets: tuple
    dropped: list[tuple[str, str]]
    theory: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # part -> (n,) int
    # part -> (n, 2) ln K_VRH, ln G_VRH (GPa): the label of a K/G-only crystal, else from C
    log_kg: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # part -> (n,) bool: the crystal has a full tensor (its ``irreps`` row is a target);
    # absent parts count as all True
    has_tensor: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # part -> (n,) float: the weight of each crystal's tensor terms in the loss: 1 for a
    # tensor, ``train.pseudo_weight`` for a K/G-only crystal trained on a pseudo-tensor (its
    # ``irreps`` row is then that tensor's), 0 otherwise; absent parts follow ``tensor_mask``
    tensor_weight: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # part -> (n, 21): the targets training uses where they differ from ``irreps``: tensor rows
    # blended with a teacher's (``train.soft_weight``); absent parts train on ``irreps``
    soft_irreps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def training_irreps(self, part: str) -> np.ndarray:
        """``(n, 21)`` the head targets training fits for ``part`` (see ``soft_irreps``)."""
        return np.asarray(self.soft_irreps.get(part, self.irreps[part]))

    def target_weight(self, part: str) -> np.ndarray:
        """``(n,)`` float: the weight of each crystal's tensor terms (see ``tensor_weight``)."""
        if part in self.tensor_weight:
            return np.asarray(self.tensor_weight[part], np.float64)
        return self.tensor_mask(part).astype(np.float64)

    def tensor_mask(self, part: str) -> np.ndarray:
        """``(n,)`` bool: which crystals of ``part`` have a full tensor."""
        if part in self.has_tensor:
            return np.asarray(self.has_tensor[part], bool)
        return np.ones(len(self.records[part]), bool)


@contextlib.contextmanager
def messages_to(log: Callable[[str], Any] | None) -> Iterator[None]:
    """Also hand every ``e3elastic`` log message to ``log`` while the block runs (nothing when
    ``log`` is None). Kept for callers that pass a ``log=`` callable; an exception it raises
    propagates to the code that logged."""
    if log is None:
        yield
        return
    package = logging.getLogger("e3elastic")

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log(record.getMessage())

    handler, level = Forward(logging.INFO), package.level
    package.addHandler(handler)
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


def theory_indices(records, config: Config) -> np.ndarray:
    """``(n,)`` level-of-theory inputs of records (all 0 for a model without that input)."""
    if not config.model.n_theories:
        return np.zeros(len(records), np.int32)
    out = []
    for r in records:
        try:
            out.append(theory_index(r.theory))
        except ValueError as e:
            raise TrainingError(f"{r.id}: {e}") from None
    return np.asarray(out, np.int32)


def _head_ready(records, config: Config) -> tuple[list, list[tuple[str, str]]]:
    """Records the head can learn: the log head needs a positive-definite C (K/G-only records
    always pass)."""
    if config.model.head != "log":
        return list(records), []
    good, bad = [], []
    for r in records:
        if not r.has_tensor or np.linalg.eigvalsh(tensors.voigt_to_mandel(r.voigt)).min() > 0:
            good.append(r)
        else:
            bad.append((r.id, "not positive-definite; the log head cannot learn it"))
    return good, bad


def graphs_for_records(records, cutoff: float, cache_dir=None):
    """``(records kept, their graphs, [(id, reason) left out])``: a record whose graph fails is
    logged and left out."""
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
            logger.info(f"skipping {r.id}: {e}")
    graphs = graph_mod.build_graphs_cached([(r.id, r.structure) for r in good], cutoff, cache_dir)
    return good, graphs, bad


def graph_cache_dir():
    """Where built graphs are kept between runs."""
    from ..runtime import cache_root

    return cache_root() / "graphs"


#: The setting to change when validation drops crystals for a reason.
_REASON_SETTINGS = {
    "too many sites": "data.max_sites",
    "isolated atom": "model.cutoff",
    "not positive definite": "data.keep_unstable",
    "frame mismatch": "data.tolerance",
}


def _empty_split_message(dataset, dropped: list[tuple[str, str]], config: Config) -> str:
    """Why nothing is left to train on: entries read, and what each filter removed."""
    report = dataset.report
    settings = config.to_dict()
    read = sum(s["read"] for s in report["sources"].values())
    parts = [f"{read} entries read"]
    for kind, n in Counter(d.kind for d in dataset.dropped).most_common():
        text = f"{n} dropped as {kind!r}"
        if kind in _REASON_SETTINGS:
            key = _REASON_SETTINGS[kind]
            section, name = key.split(".")
            text += f" (change {key}, now {json.dumps(settings[section][name])})"
        parts.append(text)
    removed = report.get("subset_removed", {})
    if removed.get("total"):
        by = ", ".join(f"{k} {v}" for k, v in removed["by_theory"].items())
        parts.append(
            f"data.subset {config.data.subset!r} removed {removed['total']} ({by}); keep them "
            "with --subset all"
        )
    if dropped:
        first_id, reason = dropped[0]
        parts.append(f"{len(dropped)} left out by the model (first {first_id}: {reason})")
    sizes = ", ".join(f"{p} {len(dataset.split[p])}" for p in ("train", "val", "test"))
    parts.append(f"{len(dataset.records)} crystals left ({sizes})")
    train_ids = set(dataset.split["train"])
    moduli_only = sum(1 for r in dataset.records if r.id in train_ids and not r.has_tensor)
    if moduli_only:
        return (
            f"the training split has no crystal with a full tensor, only {moduli_only} with K "
            "and G alone: training needs full tensors (K/G-only crystals add a loss on the "
            "moduli beside them); " + "; ".join(parts)
        )
    return "the training split is empty: " + "; ".join(parts)


def prepare_data(config: Config, dataset=None, log=None) -> Prepared:
    """Load the dataset of ``config.data`` (unless given), build graphs and buckets.

    ``log``: a callable also given every message (for older callers; prefer ``logging``).
    """
    with messages_to(log):
        return _prepare(config, dataset)


def _prepare(config: Config, dataset) -> Prepared:
    from ..network.interface import targets_from_voigt

    dc, mc = config.data, config.model
    if dataset is None:
        dataset = data_mod.load_for_config(config)
    graphs, records, irreps, theory, log_kg, has_tensor, dropped = {}, {}, {}, {}, {}, {}, []
    for part in ("train", "val", "test"):
        recs = dataset.part(part)
        if part == "train" and not learns_moduli(config):
            recs = [r for r in recs if r.has_tensor]  # nothing to learn from K/G alone
        recs, bad = _head_ready(recs, config)
        dropped += bad
        good, gs, bad = graphs_for_records(recs, mc.cutoff, graph_cache_dir())
        dropped += bad
        graphs[part], records[part] = gs, good
        has_tensor[part] = np.array([r.has_tensor for r in good], bool)
        irreps[part] = np.zeros((len(good), N_IRREPS))
        if has_tensor[part].any():
            irreps[part][has_tensor[part]] = targets_from_voigt(
                np.stack([r.voigt for r in good if r.has_tensor]), mc
            )
        log_kg[part] = np.log(np.array([r.kg for r in good], np.float64).reshape(-1, 2))
        theory[part] = theory_indices(good, config)
    if not has_tensor["train"].any():
        raise TrainingError(_empty_split_message(dataset, dropped, config))
    weight, soft = {}, {}
    if config.train.pseudo_tensors:
        weight["train"] = _pseudo_targets(config, records["train"], irreps["train"])
    if config.train.soft_weight > 0:
        soft["train"] = _soft_targets(config, records["train"], irreps["train"])
    buckets = graph_mod.make_buckets(graphs["train"], dc.batch_size, dc.n_buckets, seed=dc.seed)
    return Prepared(
        dataset, graphs, records, irreps, buckets, dropped, theory, log_kg, has_tensor, weight, soft
    )


#: ``format`` of a pseudo-tensor file (``scripts/pseudo_tensors.py``).
PSEUDO_FORMAT = "e3elastic-pseudo-tensors"


def read_pseudo_tensors(path, key: str = "tensors") -> dict[str, np.ndarray]:
    """``{crystal id: Voigt 6x6 (GPa)}`` of a pseudo-tensor file (``key`` "tensors": the
    K/G-only crystals' pseudo-tensors; "soft": the teacher's raw tensors of the tensor
    crystals); a clear error when the file is missing, not one, or holds a tensor that is not a
    finite, symmetric, positive-definite 6x6."""
    from pathlib import Path

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainingError(f"train.pseudo_tensors: no file {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"train.pseudo_tensors: cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != PSEUDO_FORMAT:
        raise TrainingError(
            f"train.pseudo_tensors: {path} is not a pseudo-tensor file (format {PSEUDO_FORMAT!r};"
            " write one with scripts/pseudo_tensors.py)"
        )
    out = {}
    for cid, voigt in doc.get(key, {}).items():
        c = np.asarray(voigt, np.float64)
        ok = c.shape == (6, 6) and np.isfinite(c).all() and np.allclose(c, c.T, atol=1e-6)
        if not ok or np.linalg.eigvalsh(tensors.voigt_to_mandel(c)).min() <= 0:
            raise TrainingError(
                f"train.pseudo_tensors: {path}: the tensor of {cid} is not a symmetric "
                "positive-definite 6x6"
            )
        out[str(cid)] = c
    return out


def _pseudo_targets(config: Config, records, irreps: np.ndarray) -> np.ndarray:
    """Fill ``irreps`` rows of the K/G-only training records that the pseudo-tensor file of
    ``config`` covers (in place); return the ``(n,)`` tensor weights of all records."""
    from ..network.interface import targets_from_voigt

    pseudo = read_pseudo_tensors(config.train.pseudo_tensors)
    weight = np.array([1.0 if r.has_tensor else 0.0 for r in records])
    rows = [i for i, r in enumerate(records) if not r.has_tensor and r.id in pseudo]
    if rows:
        irreps[rows] = targets_from_voigt(
            np.stack([pseudo[records[i].id] for i in rows]), config.model
        )
        weight[rows] = config.train.pseudo_weight
    n_kg = sum(not r.has_tensor for r in records)
    logger.info(
        f"pseudo-tensors: {len(rows)} of the {n_kg} K/G-only training crystals trained on "
        f"{config.train.pseudo_tensors} (weight {config.train.pseudo_weight})"
    )
    if not rows:
        raise TrainingError(
            f"train.pseudo_tensors: none of the {len(pseudo)} crystals of "
            f"{config.train.pseudo_tensors} is a K/G-only crystal of this training split"
        )
    return weight


def _soft_targets(config: Config, records, irreps: np.ndarray) -> np.ndarray:
    """A copy of ``irreps`` whose rows of tensor crystals in the file's ``soft`` tensors are
    ``(1 - w) * DFT + w * teacher`` (``w`` = ``train.soft_weight``), in the head's targets."""
    from ..network.interface import targets_from_voigt

    teacher = read_pseudo_tensors(config.train.pseudo_tensors, key="soft")
    rows = [i for i, r in enumerate(records) if r.has_tensor and r.id in teacher]
    n_tensor = sum(r.has_tensor for r in records)
    if not rows:
        raise TrainingError(
            f"train.soft_weight: {config.train.pseudo_tensors} holds no teacher tensor of a "
            "tensor crystal of this training split (write it with scripts/pseudo_tensors.py "
            "from an evaluation of the same split)"
        )
    w = config.train.soft_weight
    out = np.array(irreps, copy=True)
    t = targets_from_voigt(np.stack([teacher[records[i].id] for i in rows]), config.model)
    out[rows] = (1.0 - w) * out[rows] + w * t
    logger.info(
        f"soft targets: {len(rows)} of the {n_tensor} training tensors blended with the "
        f"teacher's (weight {w})"
    )
    return out


def learns_moduli(config: Config) -> bool:
    """Whether a run of ``config`` trains on K/G-only crystals (``train.moduli_weight`` > 0);
    otherwise they stay out of its training part (they are still scored in val and test)."""
    return config.train.moduli_weight > 0 or bool(config.train.pseudo_tensors)


def training_set_counts(records, graphs=None) -> dict[str, Any]:
    """What a model was trained on, for its bundle: crystals per element (a crystal counts
    once per element it contains) and per level of theory, the range of volume per atom
    (Angstrom^3) and, from the crystals' ``graphs`` when given, the range of each element
    pair's nearest-neighbour distance (:func:`e3elastic.inference.domain.contact_table`), for
    the domain checks at prediction."""
    elements: Counter = Counter()
    theory: Counter = Counter()
    volume_per_atom = []
    for r in records:
        elements.update({str(el) for el in r.structure.composition.elements})
        theory[r.theory] += 1
        volume_per_atom.append(r.structure.volume / max(len(r.structure), 1))
    v = np.asarray(volume_per_atom) if volume_per_atom else np.zeros(1)
    return {
        "n_crystals": len(records),
        "elements": dict(sorted(elements.items())),
        "theory": dict(sorted(theory.items())),
        "volume_per_atom_A3": {
            "min": float(v.min()),
            "p01": float(np.quantile(v, 0.01)),
            "median": float(np.median(v)),
            "p99": float(np.quantile(v, 0.99)),
            "max": float(v.max()),
        },
    } | ({"contacts": contact_table(graphs)} if graphs is not None else {})


def merged_training_sets(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The training set of a model fine-tuned from a bundle trained on ``base``: the crystals
    of both (per element and level of theory) and the wider of the two volume ranges (the
    median stays the larger set's). The prediction warnings then speak of every crystal the
    weights have seen, not only the fine-tuning ones."""
    out = dict(new)
    for key in ("elements", "theory"):
        counts = Counter(base.get(key) or {})
        counts.update(new.get(key) or {})
        out[key] = dict(sorted(counts.items()))
    out["n_crystals"] = int(base.get("n_crystals", 0)) + int(new.get("n_crystals", 0))
    a, b = base.get("volume_per_atom_A3") or {}, new.get("volume_per_atom_A3") or {}
    if a and b:
        larger = a if base.get("n_crystals", 0) >= new.get("n_crystals", 0) else b
        out["volume_per_atom_A3"] = {
            "min": min(a["min"], b["min"]),
            "p01": min(a["p01"], b["p01"]),
            "median": larger["median"],
            "p99": max(a["p99"], b["p99"]),
            "max": max(a["max"], b["max"]),
        }
    contacts = dict(base.get("contacts") or {})
    for key, (low, high, n) in (new.get("contacts") or {}).items():
        if key in contacts:
            b_low, b_high, b_n = contacts[key]
            low, high, n = min(low, b_low), max(high, b_high), n + b_n
        contacts[key] = [low, high, n]
    if contacts:
        out["contacts"] = dict(sorted(contacts.items()))
    return out
