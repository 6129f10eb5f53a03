"""Which leaves of a parameter tree are large tables that get row-sparse gradients."""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp

from jslide.rowsparse import is_row_sparse

#: Which leaves are tables: a predicate ``(path, leaf) -> bool``, or a tree of booleans that is
#: a prefix of the parameters.
TableSpec = Union[Callable[[Any, Any], bool], Any]


def min_rows(n: int) -> Callable[[Any, Any], bool]:
  """A spec selecting every float array with at least ``n`` rows (tables and their biases)."""
  if not isinstance(n, int) or n <= 0:
    raise ValueError(f"min_rows: n must be a positive int, got {n!r}")

  def is_table(path, leaf) -> bool:
    shape = getattr(leaf, "shape", ())
    dtype = getattr(leaf, "dtype", None)
    return (len(shape) >= 1 and shape[0] >= n and dtype is not None
            and jnp.issubdtype(dtype, jnp.floating))

  return is_table


def table_mask(tables: TableSpec, tree) -> Any:
  """A tree of bools shaped like ``tree`` (cut at RowSparseGrad leaves): True for tables.

  ``tree`` may be parameters or updates; a RowSparseGrad leaf is always a table.
  """
  if not callable(tables) and not all(isinstance(f, bool) for f in jax.tree.leaves(tables)):
    raise TypeError("tables must be a callable (path, leaf) -> bool or a prefix tree of "
                    f"bools, got {tables!r}")
  if callable(tables):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: True if is_row_sparse(x) else bool(tables(path, x)), tree,
        is_leaf=is_row_sparse)
  # A prefix tree of bools, broadcast over the leaves below each entry.
  return jax.tree.map(
      lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub, is_leaf=is_row_sparse),
      tables, tree, is_leaf=lambda x: isinstance(x, bool))


__all__ = ["TableSpec", "min_rows", "table_mask"]
