"""The row-sparse gradient of a table, kept in factored form, guarded against leafwise maths.

A :class:`RowSparseGrad` is a pytree (it passes through ``jit``, ``lax.cond``, ``scan`` and
Optax's structural transformations), but its ``ids`` leaf is not a value: a function mapped
over every leaf (``jax.tree.map(jnp.add, g1, g2)``, an Optax transformation that scales or
accumulates) would corrupt it. Such misuse is refused loudly, never silently:

- a float result in ``ids`` (scaling by a float, clipping, averaging) is a ``TypeError`` the
  moment the pytree is rebuilt (at trace time);
- integer arithmetic (adding two gradients leaf by leaf, scaling by an int) changes the
  scalar ``unit`` leaf from 1, which every consumer checks before it reads the ids (a
  runtime error from the kernel). ``optax.tree.zeros_like(g)`` gives ``unit`` 0 and zero
  coefficients: a valid zero gradient, so ``zeros + g`` is still ``g``.

Combine them with :func:`jslide.tree.add` (the union of the rows), :func:`jslide.tree.scale`
and :func:`jslide.tree.global_norm`, or their operators: ``g1 + g2`` and ``s * g``.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.tree_util import GetAttrKey

from jslide import kernels
from jslide._checks import int32_ids, positive_int

_MISUSE = (
    "a function was applied to every leaf of a gradient or update tree holding a "
    "RowSparseGrad (e.g. an Optax transformation that scales, clips or accumulates, or "
    "jax.tree.map(jnp.add, g1, g2)), and it changed the row ids too. Combine row-sparse "
    "gradients with jslide.tree.add / jslide.tree.scale / jslide.tree.global_norm (or "
    "g1 + g2, s * g), and clip before the sparse optimizer with "
    "jslide.optim.clip_by_global_norm.")


def refuse_float_leaves(owner: str, misuse: str, **leaves) -> None:
  """A TypeError naming the first integer leaf (ids, unit) that leafwise float arithmetic
  turned into floats; called by the ``tree_unflatten`` of jslide's guarded pytrees. Leaves
  without a dtype (tree utilities rebuild pytrees from None, objects, ...) pass."""
  for name, leaf in leaves.items():
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and (jnp.issubdtype(dtype, jnp.floating)
                              or jnp.issubdtype(dtype, jnp.complexfloating)):
      raise TypeError(f"{owner}: {name} became {dtype}: {misuse}")


@jax.tree_util.register_pytree_with_keys_class
class RowSparseGrad:
  """The gradient of a table ``f32[num_rows, *row_shape]`` (or bf16) that only some rows
  receive; its factors are float32 either way.

  Every table gradient that jslide's ops produce is a sum of outer products: row n of the
  gradient is ``sum(coef[r, j] * vecs[r] for (r, j) with ids[r, j] == n)``. For
  ``sparse_linear`` the rows r are examples, ``coef`` is the gradient of the active logits
  and ``vecs`` the inputs; for ``embedding_bag`` ``coef`` is the feature values and ``vecs``
  the gradient of the output. Storing (ids, coef, vecs) costs O(R*A + R*D) instead of the
  O(R*A*D) of gathered per-row gradients or the O(N*D) of a dense one.

  With ``window=Z`` (the gradient of a ROBE array, :func:`jslide.robe_embedding_bag`) the
  table is 1-D, ``f32[num_rows]``, ``vecs`` is ``f32[R, Z]`` and ``ids`` are window starts:
  ``coef[r, j] * vecs[r]`` is added to elements ``ids[r, j] .. ids[r, j] + Z - 1``, and windows
  that overlap add up element by element.

  Attributes:
    ids: int32[R, A], table rows (window starts); -1 is padding. Duplicates are summed.
    coef: f32[R, A].
    vecs: ``f32[R, *row_shape]`` (``f32[R, window]`` with a window).
    unit: int32[], 1 (0 for the zero gradient ``optax.tree.zeros_like`` makes); anything
      else means leafwise arithmetic touched the ids, and consumers refuse it.
    num_rows: N, the table's number of rows (elements, with a window) (static).
    window: 0, or the window length Z (static).
  """

  __slots__ = ("ids", "coef", "vecs", "unit", "num_rows", "window")

  def __init__(self, ids, coef, vecs, num_rows: int, unit=None, window: int = 0):
    num_rows = positive_int("RowSparseGrad", "num_rows", num_rows)
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= num_rows:
      raise ValueError(f"RowSparseGrad: window must be an int in [0, num_rows={num_rows}], got "
                       f"{window!r}")
    ids = int32_ids("RowSparseGrad", "ids", ids,
                    num_rows=num_rows - window + 1 if window else num_rows, ndim=2)
    coef, vecs = jnp.asarray(coef), jnp.asarray(vecs)
    for name, x in (("coef", coef), ("vecs", vecs)):
      if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"RowSparseGrad: {name} must be a float array, got {x.dtype}")
    if coef.shape != ids.shape:
      raise ValueError(f"RowSparseGrad: coef shape {coef.shape} must equal ids shape {ids.shape}")
    if vecs.ndim < 1 or vecs.shape[0] != ids.shape[0]:
      raise ValueError(f"RowSparseGrad: vecs shape {vecs.shape} must start with ids' "
                       f"{ids.shape[0]} rows")
    if window and vecs.shape != (ids.shape[0], window):
      raise ValueError(f"RowSparseGrad: with window={window}, vecs shape {vecs.shape} must be "
                       f"({ids.shape[0]}, {window})")
    self.ids = ids
    self.coef = coef
    self.vecs = vecs
    self.unit = jnp.ones([], jnp.int32) if unit is None else unit
    self.num_rows = int(num_rows)
    self.window = window

  # ------------------------------------------------------------------ pytree protocol

  def tree_flatten_with_keys(self):
    children = tuple((GetAttrKey(k), getattr(self, k)) for k in ("ids", "coef", "vecs", "unit"))
    return children, (self.num_rows, self.window)

  @classmethod
  def tree_unflatten(cls, aux, children):
    ids, coef, vecs, unit = children
    refuse_float_leaves("RowSparseGrad", _MISUSE, ids=ids, unit=unit)
    obj = object.__new__(cls)
    obj.ids, obj.coef, obj.vecs, obj.unit = ids, coef, vecs, unit
    obj.num_rows, obj.window = aux
    return obj

  def __repr__(self):
    return (f"RowSparseGrad(shape={self.shape}, ids={getattr(self.ids, 'shape', self.ids)}, "
            f"dtype={self.dtype})")

  # ------------------------------------------------------------------ shape and values

  @property
  def row_shape(self) -> tuple[int, ...]:
    return () if self.window else tuple(self.vecs.shape[1:])

  @property
  def shape(self) -> tuple[int, ...]:
    """Shape of the table (and of the dense gradient)."""
    return (self.num_rows, *self.row_shape)

  @property
  def dtype(self):
    return self.vecs.dtype

  def factors(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(ids int32[R, A], coef f32[R, A], vecs f32[R, D]) with D = prod(row_shape), the
    layout the kernels take; ``coef`` passes a run-time check of ``unit`` first."""
    d = self.window or math.prod(self.row_shape)
    vecs = jnp.reshape(self.vecs, (self.vecs.shape[0], d))
    return self.ids, kernels.check_unit(self.unit, self.coef, what=_MISUSE), vecs

  def todense(self) -> jax.Array:
    """The dense gradient, ``f32[num_rows, *row_shape]``. Costs O(num_rows * D)."""
    ids, coef, vecs = self.factors()
    return jnp.reshape(kernels.scatter_outer(ids, coef, vecs, self.num_rows,
                                             window=self.window), self.shape)

  def sq_norm(self) -> jax.Array:
    """f32[]: the squared Frobenius norm of the dense gradient (duplicate ids summed first),
    at the cost of the rows that occur."""
    ids, coef, vecs = self.factors()
    return kernels.row_sparse_sq_norm(ids, coef, vecs, self.num_rows, window=self.window)

  # ------------------------------------------------------------------ algebra

  def scale(self, factor) -> "RowSparseGrad":
    """This gradient times a scalar (only ``coef`` is scaled)."""
    return RowSparseGrad(self.ids, self.coef * jnp.asarray(factor, self.coef.dtype), self.vecs,
                         self.num_rows, self.unit, self.window)

  def __mul__(self, factor):
    if isinstance(factor, RowSparseGrad):
      return NotImplemented
    return self.scale(factor)

  __rmul__ = __mul__

  def __neg__(self):
    return self.scale(-1.0)

  def __add__(self, other):
    if isinstance(other, RowSparseGrad):
      return RowSparseGrad.concatenate([self, other])
    return NotImplemented

  def __radd__(self, param):
    """``param + g``: g scattered into the table param, in place when param is donated (so
    a RowSparseGrad is also a row-sparse *update*, as ``optax.apply_updates`` takes it)."""
    if isinstance(param, RowSparseGrad):
      return RowSparseGrad.concatenate([param, self])
    if jnp.shape(param) != self.shape:
      raise ValueError(f"RowSparseGrad of shape {self.shape} added to an array of shape "
                       f"{jnp.shape(param)}")
    ids, coef, vecs = self.factors()
    return jnp.reshape(kernels.sparse_sgd_rows(kernels.as_rows(param), ids, coef, vecs,
                                               learning_rate=-1.0, window=self.window),
                       self.shape)

  @classmethod
  def zeros(cls, shape: Sequence[int], dtype=jnp.float32) -> "RowSparseGrad":
    """A gradient with no rows (for a table the function did not use). Its factors are at
    least float32, as the kernels compute (a bfloat16 table's gradient is float32)."""
    dtype = jnp.promote_types(dtype, jnp.float32)
    return cls(ids=jnp.full((0, 1), -1, jnp.int32), coef=jnp.zeros((0, 1), dtype),
               vecs=jnp.zeros((0, *shape[1:]), dtype), num_rows=int(shape[0]))

  @classmethod
  def concatenate(cls, grads: Sequence["RowSparseGrad"]) -> "RowSparseGrad":
    """The sum of several gradients of one table: the union of their rows (rows stacked,
    A padded with -1). The result's size is the sum of theirs."""
    if not grads:
      raise ValueError("RowSparseGrad.concatenate: need at least one gradient")
    shape, window = grads[0].shape, grads[0].window
    for g in grads[1:]:
      if not isinstance(g, RowSparseGrad):
        raise TypeError(f"RowSparseGrad.concatenate: got {type(g).__name__}")
      if g.shape != shape:
        raise ValueError(f"RowSparseGrad.concatenate: shapes differ: {shape} vs {g.shape}")
      if g.window != window:
        raise ValueError(f"RowSparseGrad.concatenate: windows differ: {window} vs {g.window} "
                         "(one ROBE array is read with one block size)")
    if len(grads) == 1:
      return grads[0]
    width = max(g.ids.shape[1] for g in grads)
    pad = lambda a, value: jnp.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=value)
    # Each part's coefficients go through its own unit check; the union is a fresh gradient.
    parts = [g.factors() for g in grads]
    return cls(ids=jnp.concatenate([pad(i, -1) for i, _, _ in parts]),
               coef=jnp.concatenate([pad(c, 0) for _, c, _ in parts]),
               vecs=jnp.concatenate([g.vecs for g in grads]),
               num_rows=shape[0], window=window)


def is_row_sparse(x) -> bool:
  return isinstance(x, RowSparseGrad)
