"""The network: E(3)-equivariant linen modules on e3nn-jax and the numpy interface to them.

* :mod:`~e3elastic.network.model` - the flax modules (species embedding, interaction blocks,
  readout) and the jax-side conversion of the outputs to tensors;
* :mod:`~e3elastic.network.kernels` - the equivariant kernels of a point convolution (edge
  vectors, cutoff envelope, tensor products with the edge harmonics) as plain functions;
* :mod:`~e3elastic.network.interface` - numpy side: model inputs from crystal graphs, targets
  and outputs in the irreducible layout, the batched prediction loop;
* :mod:`~e3elastic.network.elements` - the per-element descriptor table;
* :mod:`~e3elastic.network.architecture` - the keys naming a network (hashes of its config and
  source files), for caches and shipped programs.

Importing this package imports nothing: :mod:`~e3elastic.network.architecture` and
:mod:`~e3elastic.network.interface` load without flax or e3nn-jax.
"""
