"""jslide: dynamic sparsity (SLIDE-style) for JAX on the CPU.

Public API (each name means one thing):

- ops: :func:`sparse_linear`, :func:`embedding_bag` (differentiable, XLA FFI kernels),
  :func:`shared_linear` (one gathered set of rows for a whole batch),
  :func:`robe_embedding_bag` (embeddings read from one shared ROBE array);
- differentiation: :func:`value_and_grad`, :func:`grad` (row-sparse table gradients),
  :class:`RowSparseGrad`, :func:`is_row_sparse`, :class:`TableRef`;
- modules: :mod:`jslide.kernels` (raw FFI kernels), :mod:`jslide.optim` (Optax optimizers for
  row-sparse tables), :mod:`jslide.tree` (tree helpers for mixed dense/row-sparse gradients),
  :mod:`jslide.tables` (which leaves are tables), :mod:`jslide.losses`, :mod:`jslide.metrics`,
  :mod:`jslide.initializers`, :mod:`jslide.lsh` (hashing, index, retrieval), :mod:`jslide.nn`
  (Flax NNX modules), :mod:`jslide.train` (training steps, the training loop, run settings,
  checkpoints: what every application shares), :mod:`jslide.parallel` (data parallelism over a
  device mesh, row-sparse gradient exchange), :mod:`jslide.row_sharded` (tables split by rows
  over a mesh axis), :mod:`jslide.datasets`; the applications
  :mod:`jslide.xc` (extreme classification, ``python -m jslide.xc``) and :mod:`jslide.lm`
  (language models, ``python -m jslide.lm``), imported explicitly;
- threads: :func:`set_num_threads`, :func:`num_threads`, :func:`kernel_isa`.

Plain ``jax.numpy`` versions of the kernels, for tests, live in ``jslide.reference``
(imported explicitly, not part of this namespace).
"""

from jslide import (datasets, initializers, kernels, losses, lsh, metrics, nn, optim, parallel,
                    row_sharded, tables, train, tree)
from jslide._autodiff import grad, value_and_grad
from jslide._ffi import kernel_isa, num_threads, set_num_threads
from jslide._tape import TableRef
from jslide.ops import embedding_bag, robe_embedding_bag, shared_linear, sparse_linear
from jslide.rowsparse import RowSparseGrad, is_row_sparse

__version__ = "0.1.0"

__all__ = [
    "RowSparseGrad", "TableRef", "datasets", "embedding_bag", "grad", "initializers",
    "is_row_sparse", "kernel_isa", "kernels", "losses", "lsh", "metrics", "nn", "num_threads",
    "optim", "parallel", "robe_embedding_bag", "row_sharded", "set_num_threads", "shared_linear",
    "sparse_linear",
    "tables", "train", "tree",
    "value_and_grad",
]
