"""Optax-compatible optimizers for row-sparse table gradients.

``sparse_adam`` and ``sparse_sgd`` are ``optax.GradientTransformation``s. For a leaf whose
gradient is a :class:`jslide.RowSparseGrad` they update the table (and its moments) only at
the rows that occur, in place when the caller donates parameters and optimizer state, and
return a :class:`TableUpdate` that ``optax.apply_updates`` (or :func:`apply_updates`)
turns into the new table without touching other rows. Dense leaves get the ordinary
(``optax.adam`` / ``optax.sgd``) update. :func:`partition` pairs a table optimizer with any
Optax transformation for the dense parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from jslide import kernels
from jslide.rowsparse import RowSparseGrad, is_row_sparse
from jslide.tables import TableSpec, table_mask

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TableUpdate:
  """The update of a table whose new value was already computed in place.

  ``params + update`` (which ``optax.apply_updates`` evaluates) is the new table, so the
  step never forms a dense delta of the table.
  """

  new_value: jax.Array

  def __radd__(self, param):
    if jnp.shape(param) != self.new_value.shape:
      raise ValueError(f"TableUpdate of shape {self.new_value.shape} applied to a parameter "
                       f"of shape {jnp.shape(param)}")
    return self.new_value

  __add__ = __radd__


def apply_updates(params, updates):
  """``optax.apply_updates`` that also accepts :class:`TableUpdate` leaves."""
  return optax.apply_updates(params, updates)


def _learning_rate(learning_rate: ScalarOrSchedule, count):
  return learning_rate(count) if callable(learning_rate) else learning_rate


def _flatten(name, updates, params, *trees):
  """Updates flattened with RowSparseGrad as a leaf, each tree to the same leaves, and the
  params' leaves (Nones when no gradient is row-sparse, the only case that needs params)."""
  grads, treedef = jax.tree.flatten(updates, is_leaf=is_row_sparse)
  if any(is_row_sparse(g) for g in grads):
    if params is None:
      raise ValueError(f"{name}: row-sparse gradients need `params` in update(updates, state, "
                       "params)")
    param_leaves = treedef.flatten_up_to(params)
  else:
    param_leaves = [None] * len(grads)
  return treedef, grads, [treedef.flatten_up_to(t) for t in trees], param_leaves


class SparseAdamState(NamedTuple):
  count: jax.Array  # int32 steps taken
  mu: Any
  nu: Any


def sparse_adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
                eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam with *lazy* updates for row-sparse gradients.

  Dense leaves: exactly ``optax.adam(learning_rate, b1, b2, eps)``.
  RowSparseGrad leaves: for each row n that occurs in the gradient's ids (whatever its
  value, even 0), with g the row's summed gradient and t the global step (1, 2, ...):
  ``m = b1 m + (1-b1) g; v = b2 v + (1-b2) g**2;
  w -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``. Rows that do not occur
  are not touched: their moments do not decay and their weights do not move (as in
  PyTorch's SparseAdam and TensorFlow's LazyAdam). When every row occurs at every step this
  equals dense Adam.

  Args:
    learning_rate: a float or an Optax schedule (evaluated at the step count 0, 1, ...).
    b1, b2, eps: as in ``optax.adam``.
  """

  def init(params):
    zeros = lambda p: jnp.zeros_like(p)
    return SparseAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                           jax.tree.map(zeros, params))

  def update(updates, state, params=None):
    count = optax.safe_increment(state.count)
    lr = _learning_rate(learning_rate, state.count)
    bc1 = 1 - jnp.asarray(b1, jnp.float32) ** count
    bc2 = 1 - jnp.asarray(b2, jnp.float32) ** count
    treedef, grads, (mus, nus), ps = _flatten("sparse_adam", updates, params, state.mu, state.nu)
    new_u, new_m, new_v = [], [], []
    for g, m, v, p in zip(grads, mus, nus, ps):
      if is_row_sparse(g):
        d = g.flat_vecs().shape[1]
        w2, m2, v2 = kernels.sparse_adam_rows(
            p.reshape(p.shape[0], d), m.reshape(p.shape[0], d), v.reshape(p.shape[0], d),
            g.ids, g.coef, g.flat_vecs(), learning_rate=lr, bias_correction1=bc1,
            bias_correction2=bc2, b1=b1, b2=b2, eps=eps)
        new_u.append(TableUpdate(w2.reshape(p.shape)))
        new_m.append(m2.reshape(p.shape))
        new_v.append(v2.reshape(p.shape))
      else:
        m2 = b1 * m + (1 - b1) * g
        v2 = b2 * v + (1 - b2) * g * g
        step = (m2 / bc1.astype(m2.dtype)) / (jnp.sqrt(v2 / bc2.astype(v2.dtype)) + eps)
        new_u.append(-lr * step)
        new_m.append(m2)
        new_v.append(v2)
    return treedef.unflatten(new_u), SparseAdamState(
        count, treedef.unflatten(new_m), treedef.unflatten(new_v))

  return optax.GradientTransformation(init, update)


class SparseSgdState(NamedTuple):
  count: jax.Array


def sparse_sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
  """SGD that updates only the rows occurring in row-sparse gradients, in place.

  Dense leaves: ``-learning_rate * g`` as ``optax.sgd``. RowSparseGrad leaves:
  ``w[n] -= learning_rate * g[n]`` for rows n that occur.
  """

  def init(params):
    del params
    return SparseSgdState(jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    lr = _learning_rate(learning_rate, state.count)
    treedef, grads, _, ps = _flatten("sparse_sgd", updates, params)
    new_u = []
    for g, p in zip(grads, ps):
      if is_row_sparse(g):
        d = g.flat_vecs().shape[1]
        w2 = kernels.sparse_sgd_rows(p.reshape(p.shape[0], d), g.ids, g.coef, g.flat_vecs(),
                                     learning_rate=lr)
        new_u.append(TableUpdate(w2.reshape(p.shape)))
      else:
        new_u.append(-lr * g)
    return treedef.unflatten(new_u), SparseSgdState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def partition(table_tx: optax.GradientTransformation,
              dense_tx: optax.GradientTransformation,
              tables: TableSpec) -> optax.GradientTransformation:
  """``table_tx`` (e.g. :func:`sparse_adam`) for tables, ``dense_tx`` for everything else.

  ``tables`` is the same spec given to :func:`jslide.value_and_grad`. Built on
  ``optax.partition``; learning-rate schedules work in both.
  """

  def labels(tree):
    return jax.tree.map(lambda is_table: "tables" if is_table else "dense",
                        table_mask(tables, tree))

  return optax.partition({"tables": table_tx, "dense": dense_tx}, labels)
