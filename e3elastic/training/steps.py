"""The model, the optimizer and the jitted steps that train it; the state they change.

* :func:`create_model`, :func:`init_params`, :func:`cast_params`: the network of a config and
  its weights in the training dtype;
* :func:`create_optimizer`: optax Adam(W), linear warm-up then cosine decay, gradient clipping,
  and with ``train.ema_decay`` a moving average of the weights (:func:`params_ema`,
  :func:`evaluation_params`);
* :func:`volume_augmentation`: isotropic scaling of part of every batch, targets following
  Murnaghan's law;
* :func:`per_graph_loss`: the mean squared error over the 21 normalised irreps coefficients
  of each crystal (for the log head, the log-Euclidean distance: a relative error), plus, with
  ``train.frobenius_weight``, the squared relative Frobenius error of C itself
  (:func:`frobenius_term`), and with ``train.moduli_weight`` the squared log error of the
  predicted K_VRH and G_VRH (:func:`moduli_term`), the only loss of a crystal whose label is
  K/G alone. Target rows are the 21 normalised irreps, or (:func:`training_targets`) those
  followed by ``ln K_VRH, ln G_VRH, has_tensor``;
* :func:`make_steps` (one jitted step per batch, and the prediction step), :func:`make_scan`
  (a bucket's steps in one ``jax.lax.scan``), both built on :func:`train_step_function`;
* :class:`TrainState`: params, optimizer state, the last finished epoch and the best
  validation score so far, saved and restored whole.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from .. import tensors
from ..config import Config
from ..tensors import N_IRREPS
from .prepare import TrainingError

__all__ = [
    "TrainState",
    "cast_params",
    "create_model",
    "create_optimizer",
    "evaluation_params",
    "ParamsEMAState",
    "params_ema",
    "frobenius_term",
    "init_params",
    "loss_terms",
    "moduli_term",
    "N_TARGET",
    "training_targets",
    "vrh_log_moduli_jax",
    "make_predict_step",
    "make_scan",
    "make_steps",
    "per_graph_loss",
    "train_step_function",
    "volume_augmentation",
]


#: Width of a wide target row: the 21 normalised irreps, ln K_VRH, ln G_VRH (GPa) and 1 for a
#: crystal with a full tensor (0: K/G only, its irreps are zeros and carry no loss; in between:
#: a pseudo-tensor's weight).
N_TARGET = N_IRREPS + 3


def training_targets(
    irreps: np.ndarray, stats: dict[str, np.ndarray], log_kg=None, has_tensor=None
) -> np.ndarray:
    """Target rows of a training run: ``(n, 21)`` normalised irreps, or, given ``log_kg``
    ``(n, 2)`` and ``has_tensor`` ``(n,)``, ``(n, N_TARGET)`` wide rows (see
    :data:`N_TARGET`); rows without a tensor get zero irreps. ``has_tensor`` may also be a
    weight in [0, 1] per row (a pseudo-tensor's, see ``train.pseudo_weight``): it multiplies
    the row's irreps and Frobenius terms and mixes its two moduli weights."""
    norm = (np.asarray(irreps, np.float64) - stats["shift"]) / stats["scale"]
    if log_kg is None:
        return norm
    has = np.asarray(has_tensor, np.float64)
    if has.min(initial=0.0) < 0 or has.max(initial=0.0) > 1:
        raise ValueError("tensor weights must be in [0, 1]")
    norm = np.where(has[:, None] > 0, norm, 0.0)
    return np.concatenate([norm, np.asarray(log_kg, np.float64), has[:, None]], axis=1)


def _split_targets(targets):
    """``(irreps (G, 21), log_kg (G, 2) or None, has_tensor (G,) or 1.0)`` of target rows."""
    if targets.shape[-1] == N_IRREPS:
        return targets, None, 1.0
    return targets[..., :N_IRREPS], targets[..., N_IRREPS : N_IRREPS + 2], targets[..., -1]


def create_model(config: Config):
    from ..network.model import ElasticityNet

    return ElasticityNet(config.model)


def init_params(config: Config, example_inputs: dict, seed: int):
    net = create_model(config)
    params = jax.jit(net.init)(jax.random.PRNGKey(seed), example_inputs)
    return cast_params(params, config)


def cast_params(params, config: Config):
    dtype = jnp.float64 if config.train.dtype == "float64" else jnp.float32
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def create_optimizer(config: Config, steps_per_epoch: int):
    """``(optax transformation, learning-rate schedule)`` of ``config.train``."""
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
    parts = [
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(schedule, weight_decay=tc.weight_decay),
    ]
    if tc.ema_decay > 0:
        parts.append(params_ema(tc.ema_decay))
    return optax.chain(*parts), schedule


class ParamsEMAState(NamedTuple):
    """State of :func:`params_ema`: the number of steps averaged and the running average
    before its bias correction."""

    count: jax.Array
    ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
    """The last link of an optax chain that keeps a moving average of the weights.

    It leaves the updates as they are and records the weights they lead to:
    ``ema <- decay * ema + (1 - decay) * (params + updates)``, starting from zeros, so that
    ``ema / (1 - decay**count)`` (:func:`evaluation_params`) is an average with weights
    summing to one from the first step. Living in the optimizer state, it is saved, restored
    and sharded with it.
    """
    if not 0 < decay < 1:
        raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")

    def init(params):
        return ParamsEMAState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("params_ema needs the params (call tx.update(grads, state, params))")
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, new)
        return updates, ParamsEMAState(state.count + 1, ema)

    return optax.GradientTransformation(init, update)


def evaluation_params(params, opt_state, decay: float):
    """The weights to evaluate and export: the bias-corrected moving average kept by
    :func:`params_ema` in ``opt_state`` when ``decay`` > 0 and at least one step has been
    taken, else ``params``."""
    if decay <= 0:
        return params
    found = [s for s in opt_state if isinstance(s, ParamsEMAState)]
    if not found:
        raise TrainingError("ema_decay is set but the optimizer state holds no moving average")
    state = found[0]
    count = int(state.count)
    if count == 0:
        return params
    norm = 1.0 - decay**count
    return jax.tree.map(lambda e, p: (e / norm).astype(p.dtype), state.ema, params)


def volume_augmentation(config: Config, stats: dict[str, np.ndarray]):
    """``augment(key, inputs, targets) -> (inputs, targets)`` for one padded batch, or None.

    With ``train.volume_strain = a`` > 0, each real crystal is, with probability
    ``train.volume_fraction``, scaled isotropically by ``s ~ U[1 - a, 1 + a]`` (lattice and
    positions; the neighbour list is kept and edges that leave the cutoff fade out through the
    envelope). Its target becomes ``C' = C (V0/V)^K'`` with ``V/V0 = s^3`` and
    ``K' = train.volume_exponent``: Murnaghan's ``K(V) = K0 (V0/V)^K'`` for every component.
    For the log head that only adds ``-3 K' ln(s)`` times the Mandel identity to L. Targets
    are in the normalised units of ``stats``.
    """
    tc, head = config.train, config.model.head
    if tc.volume_strain <= 0:
        return None
    if not 0 < tc.volume_strain < 0.5:
        raise TrainingError(f"train.volume_strain must be in (0, 0.5), got {tc.volume_strain}")
    shift = np.asarray(stats["shift"], np.float64)
    scale = np.asarray(stats["scale"], np.float64)
    unit = tensors.voigt_to_irreps(tensors.MANDEL_IDENTITY_VOIGT) / scale  # (21,) normalised
    a, fraction, exponent = tc.volume_strain, tc.volume_fraction, tc.volume_exponent

    def augment(key, inputs, targets):
        dtype = inputs["positions"].dtype
        n_graph = inputs["lattice"].shape[0]
        k_scale, k_pick = jax.random.split(key)
        s = jax.random.uniform(k_scale, (n_graph,), dtype, 1.0 - a, 1.0 + a)
        picked = (jax.random.uniform(k_pick, (n_graph,), dtype) < fraction) & inputs["graph_mask"]
        s = jnp.where(picked, s, 1.0)  # (G,)
        inputs = dict(
            inputs,
            positions=inputs["positions"] * s[inputs["node_graph"]][:, None],
            lattice=inputs["lattice"] * s[:, None, None],
        )
        log_factor = (-3.0 * exponent) * jnp.log(s)  # ln(C'/C), (G,)
        irreps, rest = targets[..., :N_IRREPS], targets[..., N_IRREPS:]
        if head == "log":
            irreps = irreps + log_factor[:, None] * jnp.asarray(unit, dtype)[None, :]
        else:
            f = jnp.exp(log_factor)[:, None]
            sh, sc = jnp.asarray(shift, dtype), jnp.asarray(scale, dtype)
            irreps = (f * (sh + sc * irreps) - sh) / sc
        if rest.shape[-1] == 0:
            return inputs, irreps
        # K and G scale as C does: ln K' = ln K + ln(C'/C); the tensor flag stays
        shift_kg = jnp.concatenate([jnp.stack([log_factor, log_factor], -1), 0 * rest[:, 2:]], -1)
        return inputs, jnp.concatenate([irreps, rest + shift_kg], axis=-1)

    return augment


def frobenius_term(config: Config, stats: dict[str, np.ndarray]):
    """``term(y, targets) -> (G,)`` or None: ``train.frobenius_weight`` times the squared
    relative Frobenius error ``||C_pred - C||^2 / ||C||^2`` of each crystal, from normalised
    outputs and targets (the accuracy metric itself, squared).

    For the log head this is a loss on C = expm(L), not on L: the log-Euclidean distance
    weighs a soft eigenvalue's relative error like a stiff one's, while the Frobenius error is
    dominated by the stiff components. Both C come from ``jax.scipy.linalg.expm``
    (:func:`e3elastic.network.model.mandel_from_outputs_jax`), whose gradient stays finite at the
    degenerate eigenvalues of cubic and hexagonal crystals. The Mandel 6x6 is an isometry of
    the 3x3x3x3 tensor, so its Frobenius norm is the metric's.
    """
    from ..network.model import mandel_from_outputs_jax

    weight = float(config.train.frobenius_weight)  # >= 0, checked by TrainConfig
    if weight == 0:
        return None
    shift = np.asarray(stats["shift"], np.float64)
    scale = np.asarray(stats["scale"], np.float64)

    def term(y, targets):
        targets, _, has = _split_targets(targets)
        sh, sc = jnp.asarray(shift, y.dtype), jnp.asarray(scale, y.dtype)
        pred = mandel_from_outputs_jax(sh + sc * y, config.model)  # (G, 6, 6)
        true = jax.lax.stop_gradient(mandel_from_outputs_jax(sh + sc * targets, config.model))
        num = jnp.sum((pred - true) ** 2, axis=(-2, -1))
        den = jnp.maximum(jnp.sum(true**2, axis=(-2, -1)), 1e-12)
        return has * weight * num / den

    return term


def vrh_log_moduli_jax(irreps, model_config) -> jax.Array:
    """``(G, 2)`` ln K_VRH and ln G_VRH (GPa) of the tensors whose head irreps (in GPa or log
    units, not normalised) are ``irreps`` ``(G, 21)``, differentiable in JAX.

    Voigt bounds come from C, Reuss bounds from the compliance S = C^-1, and each Hill value
    is their mean. For the log head C = r expm(L) and S = expm(-L) / r exactly
    (``jax.scipy.linalg.expm``, finite gradients at degenerate eigenvalues), so nothing is
    inverted; the linear head inverts C.
    """
    import dataclasses

    from ..network.model import mandel_from_outputs_jax

    w = jnp.asarray(tensors.MANDEL_WEIGHTS, irreps.dtype)
    ww = w[:, None] * w[None, :]
    m = mandel_from_outputs_jax(irreps, dataclasses.replace(model_config, head="linear"))
    if model_config.head == "log":
        ref = model_config.log_reference
        c_mandel = ref * jax.vmap(jax.scipy.linalg.expm)(m)
        s_mandel = jax.vmap(jax.scipy.linalg.expm)(-m) / ref
    else:
        c_mandel, s_mandel = m, jnp.linalg.inv(m)
    c, s = c_mandel / ww, s_mandel * ww  # Voigt stiffness and Voigt compliance (factors 2, 4)

    def sums(a):
        d = jnp.diagonal(a, axis1=-2, axis2=-1)
        off = a[..., 0, 1] + a[..., 0, 2] + a[..., 1, 2]
        return d[..., :3].sum(-1), off, d[..., 3:].sum(-1)

    normal, off, shear = sums(c)
    s_normal, s_off, s_shear = sums(s)
    kv = (normal + 2.0 * off) / 9.0
    gv = (normal - off + 3.0 * shear) / 15.0
    kr = 1.0 / (s_normal + 2.0 * s_off)
    gr = 15.0 / (4.0 * s_normal - 4.0 * s_off + 3.0 * s_shear)
    tiny = jnp.asarray(1e-6, irreps.dtype)  # a linear head can predict a non-positive modulus
    k = jnp.maximum(0.5 * (kv + kr), tiny)
    g = jnp.maximum(0.5 * (gv + gr), tiny)
    return jnp.log(jnp.stack([k, g], axis=-1))


def moduli_term(config: Config, stats: dict[str, np.ndarray]):
    """``term(y, targets) -> (G,)`` or None: the squared log error of the predicted K_VRH and
    G_VRH, ``(ln K_pred - ln K)^2 + (ln G_pred - ln G)^2`` (:func:`vrh_log_moduli_jax`), times
    ``train.moduli_weight`` for a crystal with K/G only and ``train.moduli_weight_tensor`` for
    one with a full tensor. Needs wide targets (:func:`training_targets`); None when both
    weights are 0."""
    w_kg, w_tensor = float(config.train.moduli_weight), float(config.train.moduli_weight_tensor)
    if w_kg == 0 and w_tensor == 0:
        return None
    shift = np.asarray(stats["shift"], np.float64)
    scale = np.asarray(stats["scale"], np.float64)

    def term(y, targets):
        _, log_kg, has = _split_targets(targets)
        if log_kg is None:
            raise TrainingError("the moduli loss needs wide targets (see training_targets)")
        sh, sc = jnp.asarray(shift, y.dtype), jnp.asarray(scale, y.dtype)
        pred = vrh_log_moduli_jax(sh + sc * y, config.model)  # (G, 2)
        weight = w_tensor * has + w_kg * (1.0 - has)
        return weight * jnp.sum((pred - log_kg) ** 2, axis=-1)

    return term


def loss_terms(config: Config, stats: dict[str, np.ndarray]):
    """``extra(y, targets) -> (G,)`` of :func:`per_graph_loss`: the sum of
    :func:`frobenius_term` and :func:`moduli_term` where they are on, or None."""
    terms = [t for t in (frobenius_term(config, stats), moduli_term(config, stats)) if t]
    if not terms:
        return None
    if len(terms) == 1:
        return terms[0]

    def extra(y, targets):
        return sum(t(y, targets) for t in terms)

    return extra


def per_graph_loss(net, params, inputs, targets, key=None, augment=None, extra=None):
    """``(loss (G,), mask (G,))``: each graph slot's mean squared error over the normalised
    irreps (after ``augment`` with ``key``, when given; zero for a K/G-only row of wide
    targets), plus ``extra(y, targets)`` (see :func:`loss_terms`) when given, and 1 for real
    graphs, 0 for padding."""
    if augment is not None:
        inputs, targets = augment(key, inputs, targets)
    y = net.apply(params, inputs)  # (G, 21) normalised
    irreps, _, has = _split_targets(targets)
    loss = has * jnp.mean((y - irreps) ** 2, axis=-1)
    if extra is not None:
        loss = loss + extra(y, targets)
    return loss, inputs["graph_mask"].astype(y.dtype)


def train_step_function(net, tx, n_sub: int = 1, augment=None, seed: int = 0, extra=None):
    """The un-jitted ``step(params, opt_state, inputs, targets, step)`` of :func:`make_steps`:
    returns ``(params, opt_state, loss, per-graph losses)``."""

    def graph_losses(params, inputs, targets, key):
        return per_graph_loss(net, params, inputs, targets, key, augment, extra)

    def batch_loss(params, inputs, targets, step):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0 if step is None else step)
        if n_sub == 1:
            per_graph, mask = graph_losses(params, inputs, targets, key)  # (G,)
        else:
            keys = jax.random.split(key, n_sub)
            per_graph, mask = jax.vmap(graph_losses, in_axes=(None, 0, 0, 0))(
                params, inputs, targets, keys
            )  # (n_sub, G)
        loss = jnp.sum(per_graph * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, per_graph

    def train_step(params, opt_state, inputs, targets, step=None):
        (loss, per_graph), grads = jax.value_and_grad(batch_loss, has_aux=True)(
            params, inputs, targets, step
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, per_graph

    return train_step


def make_predict_step(net):
    """Jitted ``predict_step(params, inputs) -> (G, 21)`` normalised head outputs."""

    @jax.jit
    def predict_step(params, inputs):
        return net.apply(params, inputs)

    return predict_step


def make_steps(net, tx, n_sub: int = 1, augment=None, seed: int = 0, extra=None):
    """Jitted ``train_step(params, opt_state, inputs, targets, step)`` and ``predict_step``.

    With ``n_sub > 1`` the inputs and targets of ``train_step`` carry a leading axis of
    ``n_sub`` padded sub-batches (one per device when sharded, see
    :class:`e3elastic.training.parallel.DataParallel`); the loss is the mean over every real crystal
    of all sub-batches, so the result does not depend on how the sub-batches are spread over
    devices. ``augment`` (see :func:`volume_augmentation`) is applied with a key derived from
    ``(seed, step)``, so a resumed run draws the same scalings as an uninterrupted one; ``step`` is
    unused without it. ``extra`` is added to each crystal's loss (see :func:`per_graph_loss`).
    """
    train_step = jax.jit(train_step_function(net, tx, n_sub, augment, seed, extra))
    return train_step, make_predict_step(net)


def make_scan(net, tx, n_sub: int = 1, augment=None, seed: int = 0, mesh=None, extra=None):
    """Jitted ``run(params, opt_state, inputs, targets, order, steps)``: several train steps of
    one bucket in a single ``jax.lax.scan``.

    ``inputs`` and ``targets`` hold a bucket's steps stacked on a leading axis (as
    :meth:`e3elastic.training.parallel.DataParallel.shard_steps` places them); step ``i`` of the
    scan trains on the stacked entry ``order[i]`` with the augmentation key of global step
    ``steps[i]``, exactly as :func:`make_steps`' ``train_step(params, opt_state, inputs[order[i]],
    targets[order[i]], steps[i])`` would. Params and optimizer state are donated. Returns ``(params,
    opt_state, losses, bad)``: ``losses (n,)`` the loss of each step, ``bad (n, [n_sub,] G)`` True
    where a graph slot's loss was not finite (replicated over ``mesh``, so every process can read
    it).
    """
    step = train_step_function(net, tx, n_sub, augment, seed, extra)

    def run(params, opt_state, inputs, targets, order, steps):
        def body(carry, x):
            j, k = x

            def take(a):
                return jax.lax.dynamic_index_in_dim(a, j, 0, keepdims=False)

            p, o, loss, per_graph = step(*carry, jax.tree.map(take, inputs), take(targets), k)
            return (p, o), (loss, ~jnp.isfinite(per_graph))

        (params, opt_state), (losses, bad) = jax.lax.scan(body, (params, opt_state), (order, steps))
        if mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec

            bad = jax.lax.with_sharding_constraint(bad, NamedSharding(mesh, PartitionSpec()))
        return params, opt_state, losses, bad

    return jax.jit(run, donate_argnums=(0, 1))


@struct.dataclass
class TrainState:
    """Everything a run carries from one epoch to the next, saved and restored whole.

    ``params`` and ``opt_state`` are the pytree's leaves; ``epoch`` (the last finished epoch,
    -1 before the first), ``best_score`` and ``best_epoch`` (the best validation score so far
    and its epoch) ride along as static fields.

    On disk (:class:`e3elastic.training.checkpoint.TrainCheckpoints`) the arrays are
    ``{"params", "opt_state", "epoch"}`` (:meth:`arrays`) and the best-so-far record is the
    JSON ``meta["best"] = {"score", "epoch"}`` (:meth:`best`).
    """

    params: Any
    opt_state: Any
    epoch: int = struct.field(pytree_node=False, default=-1)
    best_score: float = struct.field(pytree_node=False, default=math.inf)
    best_epoch: int = struct.field(pytree_node=False, default=-1)

    @classmethod
    def create(cls, params, tx) -> TrainState:
        return cls(params=params, opt_state=tx.init(params))

    def arrays(self) -> dict[str, Any]:
        """The checkpoint's array part."""
        return {"params": self.params, "opt_state": self.opt_state, "epoch": np.int64(self.epoch)}

    def best(self) -> dict[str, Any]:
        """The checkpoint's early-stopping record."""
        return {"score": self.best_score, "epoch": self.best_epoch}

    def abstract_arrays(self) -> dict[str, Any]:
        """Shapes and dtypes of :meth:`arrays`, to restore a checkpoint into."""
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), self.arrays())

    @classmethod
    def restored(cls, arrays: dict[str, Any], meta: dict[str, Any]) -> TrainState:
        """The state of a checkpoint: its :meth:`arrays` and ``meta``."""
        best = meta.get("best", {"score": math.inf, "epoch": -1})
        return cls(
            params=arrays["params"],
            opt_state=arrays["opt_state"],
            epoch=int(arrays["epoch"]),
            best_score=best["score"],
            best_epoch=best["epoch"],
        )
