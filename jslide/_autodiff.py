"""``jslide.value_and_grad`` / ``jslide.grad``: row-sparse gradients for tables, dense ones for
everything else."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import jax
import jax.numpy as jnp

from jslide._tape import TableRef, Tape
from jslide.rowsparse import RowSparseGrad, is_row_sparse
from jslide.tables import TableSpec, table_mask


def value_and_grad(fun: Callable, argnums: int = 0, *, tables: TableSpec,
                   has_aux: bool = False) -> Callable:
  """Like :func:`jax.value_and_grad`, but tables come back as :class:`RowSparseGrad`.

  The leaves of ``args[argnums]`` that ``tables`` selects (a predicate ``(path, leaf) ->
  bool`` such as :func:`jslide.tables.min_rows`, or a tree of bools) are passed to ``fun``
  as :class:`jslide.TableRef` handles that only jslide ops accept. Their gradients are
  returned in factored row-sparse form, whose size is independent of the table's row
  count; all other leaves get ordinary dense gradients. No [N, d] array is built.

  Each table gradient depends (through an added zero) on every other gradient, so an
  in-place update of a table that uses it runs after every read of the tables in ``fun`` and
  its backward pass; XLA would otherwise copy a whole table each step to protect a read it
  cannot order before the update.

  Limitations: a table must be used outside ``lax.scan``/``vmap``/``cond`` bodies of
  ``fun``, and how ``fun`` uses its tables must depend only on shapes.

  Returns:
    A function with ``fun``'s arguments returning ``(value, grads)`` (or
    ``((value, aux), grads)`` with ``has_aux``), grads shaped like ``args[argnums]``.
  """
  if not isinstance(argnums, int):
    raise TypeError(f"value_and_grad: argnums must be an int, got {argnums!r}")

  def wrapped(*args, **kwargs):
    if not -len(args) <= argnums < len(args):
      raise ValueError(f"value_and_grad: argnums={argnums} but only {len(args)} arguments")
    pos = argnums % len(args)
    params = args[pos]
    leaves, treedef = jax.tree.flatten(params)
    mask = treedef.flatten_up_to(table_mask(tables, params))
    table_leaves = [x for x, m in zip(leaves, mask) if m]
    dense_leaves = [x for x, m in zip(leaves, mask) if not m]

    def call(tape: Tape, dense):
      refs = iter(TableRef(x, slot, tape) for slot, x in enumerate(table_leaves))
      dense_it = iter(dense)
      merged = [next(refs) if m else next(dense_it) for m in mask]
      new_args = list(args)
      new_args[pos] = treedef.unflatten(merged)
      out = fun(*new_args, **kwargs)
      value, aux = out if has_aux else (out, None)
      if not (hasattr(value, "shape") and jnp.shape(value) == ()):
        raise TypeError("value_and_grad: fun must return a scalar "
                        f"(got {getattr(value, 'shape', type(value))})")
      return value, (aux, tape.saved)

    recorder = Tape()
    jax.eval_shape(lambda d: call(recorder, d), dense_leaves)
    taps = [jnp.zeros(s.shape, s.dtype) for s in recorder.tap_shapes]

    def differentiated(taps, dense):
      tape = Tape(taps)
      return call(tape, dense)

    (value, (aux, saved)), (tap_grads, dense_grads) = jax.value_and_grad(
        differentiated, argnums=(0, 1), has_aux=True)(taps, dense_leaves)
    table_grads = _row_sparse_grads(table_leaves, recorder.entries, saved, tap_grads)
    tables_it, dense_it = iter(table_grads), iter(dense_grads)
    grads = treedef.unflatten([next(tables_it) if m else next(dense_it) for m in mask])
    grads = _after_every_gradient(grads)
    return ((value, aux), grads) if has_aux else (value, grads)

  return wrapped


def grad(fun: Callable, argnums: int = 0, *, tables: TableSpec, has_aux: bool = False):
  """Like :func:`jax.grad`, with row-sparse table gradients (see :func:`value_and_grad`)."""
  vg = value_and_grad(fun, argnums, tables=tables, has_aux=has_aux)

  def wrapped(*args, **kwargs):
    out, g = vg(*args, **kwargs)
    return (g, out[1]) if has_aux else g

  return wrapped


def _after_every_gradient(grads):
  """grads, each RowSparseGrad's vecs plus a zero computed from every gradient leaf.

  A backward read of a table whose result does not feed that table's own update (the output
  layer's d/dx feeds the layers below) is not ordered before the update by data, and XLA
  copies the table (the whole [N, d]) to keep the read safe. ``optimization_barrier`` does
  not order it; an arithmetic dependency does, at the cost of one element of each gradient.
  The zero is ``nan_to_num(0 * x)``: XLA cannot fold it away, and a NaN in one gradient
  stays in that gradient instead of showing up in every table.
  """
  if not any(map(is_row_sparse, jax.tree.leaves(grads, is_leaf=is_row_sparse))):
    return grads
  floats = [x for x in jax.tree.leaves(grads)
            if jnp.issubdtype(x.dtype, jnp.floating) and x.size]
  zero = jnp.nan_to_num(0.0 * sum(x.reshape(-1)[0].astype(jnp.float32) for x in floats),
                        nan=0.0, posinf=0.0, neginf=0.0)

  def depend(g):
    if not is_row_sparse(g):
      return g
    return RowSparseGrad(g.ids, g.coef, g.vecs + zero.astype(g.vecs.dtype), g.num_rows, g.unit,
                         g.window)

  return jax.tree.map(depend, grads, is_leaf=is_row_sparse)


def _row_sparse_grads(tables, entries, saved, tap_grads) -> list[RowSparseGrad]:
  """Each table's gradient: the sum of what every op that read it reports (its own
  factorization, next to its forward in jslide.ops)."""
  parts: dict[int, list[RowSparseGrad]] = defaultdict(list)
  for table_grads, values, g in zip(entries, saved, tap_grads):
    for slot, grad in table_grads(values, g):
      parts[slot].append(grad)
  return [RowSparseGrad.concatenate(parts[slot]) if parts[slot]
          else RowSparseGrad.zeros(t.shape, t.dtype) for slot, t in enumerate(tables)]
