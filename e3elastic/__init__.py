"""e3elastic: full elasticity tensors of crystals.

* :mod:`e3elastic.tensors` - pure-numpy elasticity tensor algebra (Voigt, Mandel, Cartesian,
  irreducible 2x0e+2x2e+1x4e form, rotations, symmetrisation, derived moduli).

Importing the package is cheap: JAX and pymatgen load only in the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
