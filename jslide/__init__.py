"""jslide: dynamic sparsity (SLIDE-style) for JAX on the CPU.

XLA FFI kernels for sparse gathered matmuls and row-sparse optimizer updates, row-sparse
gradients for large tables, and Optax-compatible lazy optimizers.
"""

from jslide import (datasets, initializers, kernels, losses, lsh, metrics, nn, ops, optim,
                    reference, tables)
from jslide._ffi import kernel_isa, num_threads, set_num_threads
from jslide._tape import TableRef
from jslide.grad import grad, value_and_grad
from jslide.ops import embedding_bag, sparse_linear
from jslide.rowsparse import RowSparseGrad

__version__ = "0.1.0"

__all__ = [
    "RowSparseGrad", "TableRef", "datasets", "embedding_bag", "grad", "initializers",
    "kernel_isa", "metrics", "nn", "kernels", "losses", "lsh",
    "num_threads", "ops", "optim", "reference", "set_num_threads", "sparse_linear", "tables",
    "value_and_grad",
]
