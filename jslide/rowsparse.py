"""The row-sparse gradient of a table, kept in factored form."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jslide import kernels


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RowSparseGrad:
  """The gradient of a table ``f32[num_rows, *row_shape]`` that only some rows receive.

  Every table gradient that jslide's ops produce is a sum of outer products: row n of the
  gradient is ``sum(coef[r, j] * vecs[r] for (r, j) with ids[r, j] == n)``. For
  ``sparse_linear`` the rows r are examples, ``coef`` is the gradient of the active logits
  and ``vecs`` the inputs; for ``embedding_bag`` ``coef`` is the feature values and ``vecs``
  the gradient of the output. Storing (ids, coef, vecs) costs O(R*A + R*D) instead of the
  O(R*A*D) of gathered per-row gradients or the O(N*D) of a dense one.

  Attributes:
    ids: int32[R, A], table rows; -1 is padding. Duplicates are summed.
    coef: f32[R, A].
    vecs: f32[R, *row_shape].
    num_rows: N, the table's number of rows (static).
  """

  ids: jax.Array
  coef: jax.Array
  vecs: jax.Array
  num_rows: int = dataclasses.field(metadata=dict(static=True))

  @property
  def row_shape(self) -> tuple[int, ...]:
    return tuple(self.vecs.shape[1:])

  @property
  def shape(self) -> tuple[int, ...]:
    """Shape of the table (and of the dense gradient)."""
    return (self.num_rows, *self.row_shape)

  @property
  def dtype(self):
    return self.vecs.dtype

  def flat_vecs(self) -> jax.Array:
    """vecs as f32[R, D] with D = prod(row_shape), the layout the kernels take."""
    return jnp.reshape(self.vecs, (self.vecs.shape[0], math.prod(self.row_shape)))

  def todense(self) -> jax.Array:
    """The dense gradient, f32[num_rows, *row_shape]. Costs O(num_rows * D)."""
    dense = kernels.scatter_outer(self.ids, self.coef, self.flat_vecs(), self.num_rows)
    return jnp.reshape(dense, self.shape)

  def scale(self, factor) -> "RowSparseGrad":
    """This gradient times a scalar."""
    return dataclasses.replace(self, coef=self.coef * jnp.asarray(factor, self.coef.dtype))

  def __mul__(self, factor):
    return self.scale(factor)

  __rmul__ = __mul__

  @classmethod
  def zeros(cls, shape: Sequence[int], dtype=jnp.float32) -> "RowSparseGrad":
    """A gradient with no rows (for a table the function did not use)."""
    return cls(ids=jnp.zeros((0, 1), jnp.int32), coef=jnp.zeros((0, 1), dtype),
               vecs=jnp.zeros((0, *shape[1:]), dtype), num_rows=int(shape[0]))

  @classmethod
  def concatenate(cls, grads: Sequence["RowSparseGrad"]) -> "RowSparseGrad":
    """The sum of several gradients of one table (rows stacked, A padded with -1)."""
    if not grads:
      raise ValueError("RowSparseGrad.concatenate: need at least one gradient")
    if len(grads) == 1:
      return grads[0]
    shape = grads[0].shape
    for g in grads[1:]:
      if g.shape != shape:
        raise ValueError(f"RowSparseGrad.concatenate: shapes differ: {shape} vs {g.shape}")
    width = max(g.ids.shape[1] for g in grads)
    pad = lambda a, value: jnp.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=value)
    return cls(ids=jnp.concatenate([pad(g.ids, -1) for g in grads]),
               coef=jnp.concatenate([pad(g.coef, 0) for g in grads]),
               vecs=jnp.concatenate([g.vecs for g in grads]),
               num_rows=shape[0])


def is_row_sparse(x) -> bool:
  return isinstance(x, RowSparseGrad)
