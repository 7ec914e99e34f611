"""e3elastic: full elasticity tensors of crystals.

* :func:`e3elastic.predict` / :func:`e3elastic.load_model` - C_ijkl (GPa) of structures from a
  trained E(3)-equivariant network (:mod:`e3elastic.inference`);
* :mod:`e3elastic.tensors` - pure-numpy elasticity tensor algebra (Voigt, Mandel, Cartesian,
  irreducible 2x0e+2x2e+1x4e form, rotations, symmetrisation, derived moduli);
* :mod:`e3elastic.data`, :mod:`e3elastic.graph`, :mod:`e3elastic.network`,
  :mod:`e3elastic.training` - datasets, crystal graphs, the network, training and checkpoints.

Importing the package is cheap: JAX and pymatgen load only in the modules that need them, and
``predict``/``load_model`` load on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "predict"]


def __getattr__(name: str):
    if name in ("predict", "load_model"):
        from . import inference as _inference

        return getattr(_inference, name)
    raise AttributeError(f"module 'e3elastic' has no attribute {name!r}")
