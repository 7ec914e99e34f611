"""Inference: predict elastic tensors of structures with a shipped or trained model.

* :mod:`~e3elastic.inference.predictor` - :func:`predict`; its public names are re-exported
  here, so ``e3elastic.inference.predict`` is ``e3elastic.predict``;
* :mod:`~e3elastic.inference.models` - :func:`load_model` and the :class:`Model` (one network,
  or an ensemble of one or several architectures);
* :mod:`~e3elastic.inference.prediction` - the :class:`Prediction` result and its intervals;
* :mod:`~e3elastic.inference.structures` - reading and checking the input structures;
* :mod:`~e3elastic.inference.domain` - warnings for inputs outside the model's domain;
* :mod:`~e3elastic.inference.bundle` - reading and writing model bundles (config, weights);
* :mod:`~e3elastic.inference.programs` - the network as compiled programs kept on disk.

No module here imports optax or anything of :mod:`e3elastic.training`.
"""

from .predictor import (
    MAX_EDGES,
    MAX_FRACTIONAL,
    STRUCTURE_SUFFIXES,
    SYMPREC,
    Model,
    PredictError,
    Prediction,
    expand_paths,
    load_model,
    predict,
    read_structure,
    symmetry,
    to_json_ready,
)

__all__ = [
    "MAX_EDGES",
    "MAX_FRACTIONAL",
    "STRUCTURE_SUFFIXES",
    "SYMPREC",
    "Model",
    "PredictError",
    "Prediction",
    "expand_paths",
    "load_model",
    "predict",
    "read_structure",
    "symmetry",
    "to_json_ready",
]
