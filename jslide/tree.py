"""Tree helpers for gradients that mix dense arrays and :class:`jslide.RowSparseGrad` leaves.

``jax.tree.map`` sees a RowSparseGrad's ids as a leaf like any other, so leafwise maths on
such trees is refused (see :mod:`jslide.rowsparse`). These helpers treat each RowSparseGrad
as the one value it stands for, at the cost of its rows, never of the table:

- :func:`add`: the sum of two gradient trees (row-sparse leaves: the union of their rows),
  e.g. to accumulate gradients over micro-batches;
- :func:`scale`: a tree times a scalar (e.g. to average accumulated gradients);
- :func:`global_norm`: ``optax.global_norm`` of the dense gradients, e.g. for clipping
  (:func:`jslide.optim.clip_by_global_norm` uses it);
- :func:`all_finite`: whether every value is finite (row-sparse leaves: their factors), e.g.
  to skip a step (:func:`jslide.optim.apply_if_finite` uses it);
- :func:`todense`: every row-sparse leaf as its dense array (O(table size): for checks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jslide.rowsparse import is_row_sparse


def _map(fn, *trees):
  return jax.tree.map(fn, *trees, is_leaf=is_row_sparse)


def add(a, b):
  """a + b, leaf by leaf; a row-sparse leaf of a and b gives the union of their rows.

  The row-sparse leaves of the result hold as many rows as a's and b's together, so a loop
  that accumulates grows them: accumulate inside one ``jit`` over a fixed number of
  micro-batches (or Python-unrolled), not in a ``lax.scan`` carry.
  """

  def add_leaf(x, y):
    if is_row_sparse(x) != is_row_sparse(y):
      raise TypeError("jslide.tree.add: a leaf is row-sparse in one tree and dense in the "
                      f"other ({type(x).__name__} vs {type(y).__name__})")
    return x + y

  return _map(add_leaf, a, b)


def scale(tree, factor):
  """Every leaf times the scalar ``factor`` (row-sparse leaves scale their coefficients)."""
  return _map(lambda x: x.scale(factor) if is_row_sparse(x)
              else x * jnp.asarray(factor, x.dtype), tree)


def global_norm(tree) -> jax.Array:
  """f32[]: sqrt of the sum of squares of every leaf, row-sparse leaves counted as their dense
  gradient (duplicate ids summed first), as ``optax.global_norm`` of the dense tree."""
  leaves = jax.tree.leaves(tree, is_leaf=is_row_sparse)
  sparse = sum((x.sq_norm() for x in leaves if is_row_sparse(x)), jnp.zeros([], jnp.float32))
  dense = optax.tree.norm([x for x in leaves if not is_row_sparse(x)], squared=True)
  return jnp.sqrt(sparse + dense.astype(jnp.float32))


# A summed gradient entry below this has a square (Adam's second moment) finite in float32.
_SAFE_ENTRY = 1e18


def _row_sparse_finite(g) -> jax.Array:
  """Whether g's factors are finite and the rows they sum to are too: rows of finite factors
  that share an id can overflow when summed (two rows of 3e38), and a sum below 1.8e19 can
  still overflow Adam's squared moment. A cheap bound, sum|coef| * max|vecs|, settles the
  usual case; only above it are the summed rows' squares added up (``sq_norm``, the cost of
  the rows)."""
  factors_ok = jnp.all(jnp.isfinite(g.coef)) & jnp.all(jnp.isfinite(g.vecs))
  bound = jnp.sum(jnp.abs(g.coef)) * jnp.max(jnp.abs(g.vecs), initial=0.0)
  return factors_ok & jax.lax.cond(bound < _SAFE_ENTRY, lambda: jnp.asarray(True),
                                   lambda: jnp.isfinite(g.sq_norm()))


def all_finite(tree) -> jax.Array:
  """bool[]: every float value of the tree is finite. A row-sparse leaf is checked through
  its coefficients and vectors (not its ids) and, when they are large enough for it to
  matter, through the rows they sum to (see :func:`_row_sparse_finite`), at the cost of its
  rows."""
  def leaf_ok(x):
    if is_row_sparse(x):
      return _row_sparse_finite(x)
    return jnp.all(jnp.isfinite(x))
  leaves = jax.tree.leaves(tree, is_leaf=is_row_sparse)
  return jnp.all(jnp.asarray([leaf_ok(x) for x in leaves] or [True]))


def todense(tree):
  """The tree with every RowSparseGrad as its dense array. O(table size) per leaf."""
  return _map(lambda x: x.todense() if is_row_sparse(x) else x, tree)


__all__ = ["add", "scale", "global_norm", "all_finite", "todense"]
