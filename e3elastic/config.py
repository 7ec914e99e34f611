"""Run settings as frozen dataclasses: model, data and training, with a JSON round trip.

Three presets: :func:`default` (sized for a 2-core CPU: the full PBE set trains to its best
validation error in well under 90 minutes), :func:`tiny` (tests, seconds to compile) and
:func:`large` (accelerators). ``Config.replace("train.learning_rate", 1e-3)``-style overrides come
from the command line (``--set train.learning_rate=1e-3``). A run's config is saved beside every
checkpoint, so a run folder is enough to rebuild its model.

>>> cfg = tiny()
>>> Config.from_json(cfg.to_json()) == cfg
True
>>> cfg.override(["train.epochs=3"]).train.epochs
3
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "default",
    "large",
    "THEORIES",
    "HEADS",
    "NORMS",
    "LOOPS",
    "preset",
    "theory_index",
    "tiny",
]

#: Levels of theory a model can be told about (``predict --theory``), in input-index order.
THEORIES = ("PBE", "B3LYP-D2")
#: Output heads of the network (see :class:`ModelConfig`).
HEADS = ("linear", "log")
NORMS = ("none", "layer")
#: Training loops (see :class:`TrainConfig`).
LOOPS = ("scan", "python")


def theory_index(name: str) -> int:
    """Index of a level of theory in :data:`THEORIES` (case-insensitive); ``ValueError`` if
    unknown."""
    key = str(name).strip().upper()
    for i, t in enumerate(THEORIES):
        if t == key:
            return i
    raise ValueError(
        f"unknown level of theory {name!r}; "
        f"the model knows {', '.join(t.lower() for t in THEORIES)}"
    )


_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
_PLURALS = {float: "numbers", int: "integers", bool: "booleans", str: "strings"}
_BAD = object()


def _checked(key: str, value: Any, hint: Any) -> Any:
    """``value`` for a setting of type ``hint`` (ints become floats, lists tuples), or
    ``ValueError`` naming the setting, the type it expects and the value."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    out = _convert(value, hint)
    if out is _BAD:
        if typing.get_origin(hint) is tuple:
            expected = f"a list of {_PLURALS[typing.get_args(hint)[0]]}"
        else:
            expected = _NAMES[hint]
        raise ValueError(f"{key} expects {expected}{' or null' if optional else ''}, got {value!r}")
    return out


def _convert(value: Any, hint: Any) -> Any:
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            return _BAD
        items = tuple(_convert(v, typing.get_args(hint)[0]) for v in value)
        return _BAD if _BAD in items else items
    if isinstance(value, bool) != (hint is bool):
        return _BAD
    if hint is float and isinstance(value, int | float):
        return float(value)
    return value if isinstance(value, hint) else _BAD


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The equivariant network (lengths in Angstrom).

    Attributes:
        cutoff: neighbour cutoff; also the radius where the radial envelope reaches zero.
        n_radial: number of Bessel radial basis functions.
        radial_hidden: width of the radial MLP (one hidden layer per entry).
        sh_lmax: largest degree of the edge spherical harmonics (4 is needed for the 4e part).
        hidden_irreps: node features between interaction blocks.
        n_layers: number of interaction blocks (point convolutions).
        n_species: size of the species table (Z - 1 indexes it).
        avg_num_neighbors: messages are summed and divided by sqrt of this.
        envelope_p: exponent of the polynomial cutoff envelope.
        even_last_layer: the last block makes only the irreps the readout uses (0e, 2e, 4e),
            skipping tensor-product paths whose results would be discarded.
        head: what the 21 output irreps are. ``linear``: the irreps of C itself (GPa).
            ``log``: the irreps of the matrix logarithm ``L = logm(Mandel(C) / log_reference)``;
            the prediction is ``C = log_reference * expm(L)``, positive-definite for any
            output, and the loss is the log-Euclidean distance (relative errors).
        log_reference: the stiffness unit of the ``log`` head (GPa).
        element_descriptors: species enter through physical descriptors of the element
            (:mod:`e3elastic.network.elements`) plus a learned per-element correction that starts at
            zero, so an element never seen in training is placed by its chemistry.
        n_theories: number of levels of theory the model distinguishes (``THEORIES``; 0: no
            theory input). Each gets a learned vector added to every atom's scalars.
        density_input: the crystal's volume per atom enters as a per-crystal scalar: a small
            basis of ``log(V / N)`` is added (through a learned map that starts at zero) to every
            atom's initial scalars and to the two scalar outputs. It tells the network how
            densely the whole cell is packed, pores beyond the cutoff included.
        bond_basis: number of Gaussians of each edge's length over the sum of its two atoms'
            covalent radii (0: none), appended to the radial basis under the same envelope.
            They tell the radial weights whether a contact is a bond or a longer, weaker one
            (between layers or molecules), which the length alone does not across elements.
        norm: ``layer`` normalises each block's input to its messages and self-interaction
            per atom and per irrep (scalars to zero mean and unit variance, higher l to unit
            mean square norm, a learned gain per channel), while the block's skip connection
            sees the input as it is; ``none`` (default) does not normalise.
    """

    cutoff: float = 5.0
    n_radial: int = 8
    radial_hidden: tuple[int, ...] = (32,)
    sh_lmax: int = 4
    hidden_irreps: str = "32x0e+8x1o+8x2e+4x3o+4x4e"
    n_layers: int = 2
    n_species: int = 100
    avg_num_neighbors: float = 40.0
    envelope_p: int = 6
    even_last_layer: bool = True
    head: str = "linear"
    log_reference: float = 100.0
    element_descriptors: bool = False
    n_theories: int = 0
    norm: str = "none"
    density_input: bool = False
    bond_basis: int = 0

    def __post_init__(self) -> None:
        if not 0 <= int(self.bond_basis) <= 32:
            raise ValueError(f"model.bond_basis must be in 0..32, got {self.bond_basis}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if self.head not in HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {self.head!r}")
        if not 0 <= int(self.n_theories) <= len(THEORIES):
            raise ValueError(f"model.n_theories must be in 0..{len(THEORIES)}")
        if not float(self.log_reference) > 0:
            raise ValueError("model.log_reference must be a positive stiffness (GPa)")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which crystals, how they are checked and split, and how they are batched.

    ``data`` None means ``$E3ELASTIC_DATA`` or ``../shared/data``. ``subset`` is ``pbe``,
    ``sio2`` or ``all``. ``holdout`` is ``id``, ``composition`` or ``formula:<formula>``
    (every crystal of that reduced formula in test, e.g. ``formula:SiO2``).
    """

    data: str | None = None
    subset: str = "pbe"
    tolerance: float = 0.05
    keep_unstable: bool = False
    max_sites: int = 200
    seed: int = 0
    holdout: str = "id"
    batch_size: int = 16
    n_buckets: int = 4


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping.

    ``epochs`` is the most epochs to run; early stopping ends sooner after ``patience`` epochs
    without a better validation error. ``max_minutes`` bounds wall time (0: no bound).
    ``dtype`` is ``float32`` or ``float64``. ``data_parallel`` is the number of padded
    sub-batches per optimisation step, each on its own device when there are enough (0: one per
    local device, so a single device trains exactly as without it).

    Volume augmentation (``volume_strain`` > 0): in each step a share ``volume_fraction`` of the
    crystals has its lattice and positions scaled by a factor ``s`` drawn uniformly from
    ``[1 - volume_strain, 1 + volume_strain]`` (the neighbour list is kept; edges leaving the
    cutoff fade out through the envelope), and its target becomes ``C (V0/V)^volume_exponent``
    with ``V/V0 = s^3``: Murnaghan's law ``K(V) = K0 (V0/V)^K'`` with ``K' = volume_exponent``,
    applied to every component.

    ``loop`` is how the steps of an epoch run: ``scan`` (each bucket's padded batches are put on
    the device once, and each epoch runs a bucket's steps in one ``jax.lax.scan``, bringing
    losses back once per bucket) or ``python`` (one jitted step per batch fed from the host,
    the loss read after each step; for debugging). Both take the same steps in the same order
    and give the same metrics within float round-off.

    Fine-tuning: ``init_from`` names a model bundle (a shipped name such as ``default``, or a
    folder) whose parameters start the run instead of random ones, and whose normalisation
    of the outputs the run keeps (so it starts from the bundle's predictions); its
    architecture must be the config's. ``oversample`` > 1 puts every training crystal of the
    level of theory ``oversample_theory`` (e.g. ``B3LYP-D2``) that many times into each
    epoch; validation, test and the normalisation statistics still count each crystal once.

    ``frobenius_weight`` > 0 adds that weight times each crystal's squared relative Frobenius
    error of C (the accuracy metric) to its loss (:func:`e3elastic.training.steps.frobenius_term`).

    Moduli: ``moduli_weight`` > 0 trains on the crystals that have only K_VRH and G_VRH: each
    one's loss is that weight times ``(ln K_pred - ln K)^2 + (ln G_pred - ln G)^2``, with the
    Voigt-Reuss-Hill averages of the predicted C (:func:`e3elastic.training.steps.moduli_term`).
    With 0 they stay out of training. ``moduli_weight_tensor`` adds the same term, with its own
    weight, to the crystals that have a full tensor.

    Pseudo-tensors (distillation): ``pseudo_tensors`` names a JSON file of teacher tensors for
    K/G-only training crystals (``scripts/pseudo_tensors.py`` writes one from an ensemble's
    predictions, shifted isotropically to the crystal's DFT K_VRH and G_VRH). Each such crystal
    then also trains on that tensor, with the irreps and Frobenius terms of a tensor crystal
    times ``pseudo_weight`` in (0, 1], and its moduli weight becomes
    ``pseudo_weight * moduli_weight_tensor + (1 - pseudo_weight) * moduli_weight``; its own K
    and G stay the moduli label. Crystals of the validation and test parts never use them.
    ``soft_weight`` in [0, 1) also blends the tensor crystals of the training part with the
    teacher: each one's target becomes ``(1 - soft_weight) * t_DFT + soft_weight * t_teacher``
    in the head's target coefficients (the teacher's raw prediction, from the file's ``soft``
    tensors); its K and G labels stay DFT's, and the normalisation statistics come from the
    DFT tensors alone.

    ``ema_decay`` in (0, 1) keeps an exponential moving average of the weights, updated after
    every step (:func:`e3elastic.training.steps.params_ema`); validation, early stopping and the
    exported bundle then use the averaged weights, and training goes on from the raw ones.
    0 (the default) keeps no average.
    """

    seed: int = 0
    epochs: int = 50
    learning_rate: float = 3e-3
    warmup_epochs: float = 2.0
    final_lr_fraction: float = 0.02
    clip_norm: float = 1.0
    weight_decay: float = 0.0
    ema_decay: float = 0.0
    patience: int = 15
    eval_every: int = 1
    checkpoint_every: int = 1
    max_to_keep: int = 3
    max_minutes: float = 0.0
    dtype: str = "float32"
    data_parallel: int = 0
    volume_strain: float = 0.0
    volume_fraction: float = 0.5
    volume_exponent: float = 4.0
    loop: str = "scan"
    init_from: str = ""
    oversample: int = 1
    oversample_theory: str = ""
    frobenius_weight: float = 0.0
    moduli_weight: float = 0.0
    moduli_weight_tensor: float = 0.0
    pseudo_tensors: str = ""
    pseudo_weight: float = 0.5
    soft_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.pseudo_weight <= 1:
            raise ValueError(f"train.pseudo_weight must be in (0, 1], got {self.pseudo_weight}")
        if not 0 <= self.soft_weight < 1:
            raise ValueError(f"train.soft_weight must be in [0, 1), got {self.soft_weight}")
        if self.soft_weight > 0 and not self.pseudo_tensors:
            raise ValueError(
                "train.soft_weight needs train.pseudo_tensors: the file holding the teacher's "
                "tensors (scripts/pseudo_tensors.py)"
            )
        for name in ("frobenius_weight", "moduli_weight", "moduli_weight_tensor"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.loop not in LOOPS:
            raise ValueError(f"train.loop must be one of {LOOPS}, got {self.loop!r}")
        if self.oversample < 1:
            raise ValueError(f"train.oversample must be at least 1, got {self.oversample}")
        if self.oversample > 1:
            theory_index(self.oversample_theory)  # ValueError naming the known theories


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    name: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        parts = {}
        for field, klass in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            sub = d.get(field, {})
            names = {f.name: f for f in dataclasses.fields(klass)}
            unknown = set(sub) - set(names)
            if unknown:
                raise ValueError(f"unknown {field} settings in config: {sorted(unknown)}")
            hints = typing.get_type_hints(klass)
            kw = {k: _checked(f"{field}.{k}", v, hints[k]) for k, v in sub.items()}
            parts[field] = klass(**kw)
        return cls(**parts, name=str(d.get("name", "custom")))

    @classmethod
    def from_json(cls, text: str) -> Config:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config is not valid JSON: {e}") from e
        return cls.from_dict(d)

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.key=value`` strings (value parsed as JSON, else kept as a string);
        ``ValueError`` for an unknown setting or a value of the wrong type."""
        d = self.to_dict()
        for a in assignments:
            key, sep, raw = a.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot or section not in ("model", "data", "train"):
                raise ValueError(f"override {a!r} must look like model.n_layers=3{_hint(d, key)}")
            if name not in d[section]:
                import difflib

                close = difflib.get_close_matches(name, list(d[section]), n=1)
                hint = f" (did you mean {section}.{close[0]}?)" if close else ""
                raise ValueError(f"unknown setting {section}.{name}{hint}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            d[section][name] = value
        return Config.from_dict(d)


def _hint(d: dict[str, Any], key: str) -> str:
    """`` (did you mean train.epochs?)`` for a key with its section missing or misspelled."""
    import difflib

    name = key.strip().rpartition(".")[2]
    for section in ("model", "data", "train"):
        if name in d[section]:
            return f" (did you mean {section}.{name}?)"
    close = difflib.get_close_matches(key.strip().partition(".")[0], ["model", "data", "train"], 1)
    return f" (did you mean {close[0]}.{name}?)" if close and "." in key else ""


#: What every preset's network reads and predicts: the log head, element descriptors and the
#: level of theory (the dataclass defaults keep older saved configs loading unchanged).
_PHYSICS = {"head": "log", "element_descriptors": True, "n_theories": len(THEORIES)}


#: How the shipped models are trained: +-3 % volume augmentation, the squared relative
#: Frobenius error of C added to the log-space loss with weight 2, every B3LYP-D2 (zeolite)
#: training crystal five times per epoch, so the 82 zeolites weigh on the shared network
#: next to some 2,000 PBE tensors, and the crystals with only K_VRH and G_VRH trained on the
#: squared log error of those (weight 2), which the tensor crystals also add (weight 1).
_RECIPE = {
    "volume_strain": 0.03,
    "frobenius_weight": 2.0,
    "oversample": 5,
    "oversample_theory": "B3LYP-D2",
    "moduli_weight": 2.0,
    "moduli_weight_tensor": 1.0,
}


def default() -> Config:
    """The CPU-sized default: 2 interaction blocks, l_max 4, hidden irreps
    ``64x0e+16x1o+16x2e+8x3o+8x4e``, radial MLP [64] on the Bessel basis and 8 Gaussians of
    length over the sum of covalent radii (``bond_basis``), log head, trained on PBE and
    B3LYP-D2 data together (see ``_RECIPE``)."""
    return Config(
        model=ModelConfig(
            hidden_irreps="64x0e+16x1o+16x2e+8x3o+8x4e",
            radial_hidden=(64,),
            bond_basis=8,
            **_PHYSICS,
        ),
        data=DataConfig(subset="all", max_sites=420),
        train=TrainConfig(**_RECIPE),
        name="default",
    )


def tiny() -> Config:
    """A model that compiles in seconds, for tests and smoke runs."""
    return Config(
        model=ModelConfig(
            n_radial=6,
            radial_hidden=(16,),
            hidden_irreps="8x0e+2x1o+2x2e+2x4e",
            n_layers=2,
            **_PHYSICS,
        ),
        data=DataConfig(batch_size=8, n_buckets=2),
        train=TrainConfig(epochs=20, patience=10, warmup_epochs=1.0),
        name="tiny",
    )


def large() -> Config:
    """A wider, deeper model for accelerators."""
    return Config(
        model=ModelConfig(
            hidden_irreps="64x0e+16x1o+16x2e+8x3o+8x4e",
            n_layers=3,
            radial_hidden=(64, 64),
            **_PHYSICS,
        ),
        data=DataConfig(subset="all", max_sites=420, batch_size=32),
        train=TrainConfig(epochs=400, patience=50, **_RECIPE),
        name="large",
    )


def preset(name: str) -> Config:
    presets = {"default": default, "tiny": tiny, "large": large}
    if name not in presets:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(presets)}")
    return presets[name]()
