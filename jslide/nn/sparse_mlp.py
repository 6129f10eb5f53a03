"""SLIDE's architecture as one module: sparse input -> ReLU layers -> sparse output."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jslide import lsh
from jslide._checks import positive_int
from jslide.nn.sparse_dense import SparseDense
from jslide.nn.sparse_input import SparseInput


class SparseMLP(nnx.Module):
  """``SparseInput(num_features, hidden[0])``, ReLU, further ``nnx.Linear`` + ReLU layers,
  then ``SparseDense(hidden[-1], num_labels)`` with an LSH index over its rows.

  ``param_dtype`` (float32 or bfloat16) is the dtype of the two tables (the input and output
  kernels); biases and the hidden ``nnx.Linear`` layers stay float32."""

  def __init__(self, num_features: int, num_labels: int, *, hidden: Sequence[int] = (128,),
               active: int, hash_family: str | lsh.HashFamily = "dwta",
               num_hashes: int | None = None, num_hash_tables: int | None = None,
               bin_size: int = 8, strategy: str | None = None,
               fill_group: int | None = 1, batch_negatives: int = 0,
               retrieved: int | None = None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if not hidden:
      raise ValueError("SparseMLP: hidden must name at least one layer width")
    for width in hidden:
      positive_int("SparseMLP", "each hidden width", width)
    self.input = SparseInput(num_features, hidden[0], param_dtype=param_dtype, rngs=rngs)
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(hidden, hidden[1:])])
    self.output = SparseDense(hidden[-1], num_labels, active=active, hash_family=hash_family,
                              num_hashes=num_hashes, num_hash_tables=num_hash_tables, bin_size=bin_size,
                              strategy=strategy, fill_group=fill_group,
                              batch_negatives=batch_negatives, retrieved=retrieved,
                              param_dtype=param_dtype, rngs=rngs)

  def encode(self, feat_ids, feat_vals):
    """The last hidden layer's activations, f32[B, hidden[-1]]."""
    h = jax.nn.relu(self.input(feat_ids, feat_vals))
    for layer in self.hidden:
      h = jax.nn.relu(layer(h))
    return h

  def __call__(self, feat_ids, feat_vals, labels=None, *, key):
    """(logits f32[B, active], active ids int32[B, active]) over the retrieved neurons."""
    return self.output(self.encode(feat_ids, feat_vals), labels, key=key)
