"""Initializers for tables too large to build in one piece.

``jax.random.normal(key, (N, d))`` needs several [N, d]-sized temporaries (random bits,
conversions) on the CPU: about 4x the table at N=1M, d=128. :func:`chunked` wraps any
``jax.nn.initializers`` initializer so the table is filled block by block, in place, and the
peak memory is the table plus one block.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jslide._checks import TABLE_DTYPES

Initializer = Callable[..., jax.Array]


# Tables at least this large are allocated on transparent huge pages (kernels.huge_page_zeros).
HUGE_PAGE_MIN_BYTES = 32 * 2**20


def zeros(shape, dtype=jnp.float32) -> jax.Array:
  """``jnp.zeros(shape, dtype)``; on transparent huge pages when it is at least
  ``HUGE_PAGE_MIN_BYTES`` (for tables and their optimizer state: see
  :func:`jslide.kernels.huge_page_zeros`)."""
  shape = tuple(shape)
  if math.prod(shape) * jnp.dtype(dtype).itemsize >= HUGE_PAGE_MIN_BYTES:
    from jslide import kernels  # the kernels module registers the FFI targets
    return kernels.huge_page_zeros(shape, dtype)
  return jnp.zeros(shape, dtype)


def _fill_blocks(init: Initializer, table, key, rows_per_chunk: int):
  """table with its rows replaced, block by block, by ``init(fold_in(key, i), block shape)``."""
  n, rest = table.shape[0], table.shape[1:]
  full = n // rows_per_chunk

  def fill(i, table):
    block = init(jax.random.fold_in(key, i), (rows_per_chunk, *rest), table.dtype)
    start = (i * rows_per_chunk,) + (0,) * len(rest)
    return jax.lax.dynamic_update_slice(table, block, start)

  table = jax.lax.fori_loop(0, full, fill, table)
  tail = n - full * rows_per_chunk
  if tail:
    block = init(jax.random.fold_in(key, full), (tail, *rest), table.dtype)
    table = jax.lax.dynamic_update_slice(table, block, (full * rows_per_chunk,) + (0,) * len(rest))
  return table


def _check_rows_per_chunk(rows_per_chunk) -> None:
  if not isinstance(rows_per_chunk, int) or rows_per_chunk <= 0:
    raise ValueError(f"chunked: rows_per_chunk must be a positive int, got {rows_per_chunk!r}")


def chunked(init: Initializer, rows_per_chunk: int = 65536) -> Initializer:
  """``init`` applied to blocks of ``rows_per_chunk`` rows, each with its own folded key.

  The result has the same signature ``(key, shape, dtype=float32)`` and the same
  distribution as ``init`` for initializers whose rows are independent (normal, uniform,
  truncated normal, zeros; not orthogonal, nor fan-based ones over the row axis: the shape
  given to ``init`` is ``(rows_per_chunk, *shape[1:])``).
  """
  _check_rows_per_chunk(rows_per_chunk)

  def chunked_init(key, shape, dtype=jnp.float32):
    shape = tuple(shape)
    if len(shape) < 1:
      raise ValueError(f"chunked: shape must have at least one axis, got {shape}")
    if shape[0] <= rows_per_chunk:
      return init(key, shape, dtype)
    return _fill_blocks(init, jnp.zeros(shape, dtype), key, rows_per_chunk)

  return chunked_init


@functools.partial(jax.jit, static_argnums=(0, 3), donate_argnums=1)
def _fill_in_place(init, table, key, rows_per_chunk):
  return _fill_blocks(init, table, key, rows_per_chunk)


def init_table(init: Initializer, key, shape, dtype=jnp.float32,
               rows_per_chunk: int = 65536) -> jax.Array:
  """``init(key, shape, dtype)`` built block by block (:func:`chunked`), so the peak memory is
  the table plus one block. A large table (``HUGE_PAGE_MIN_BYTES``) is filled in place in
  :func:`zeros` on transparent huge pages."""
  shape = tuple(shape)
  _check_rows_per_chunk(rows_per_chunk)
  if len(shape) < 1:
    raise ValueError(f"init_table: shape must have at least one axis, got {shape}")
  if shape[0] <= rows_per_chunk:
    return jax.jit(init, static_argnums=(1, 2))(key, shape, dtype)
  return _fill_in_place(init, zeros(shape, dtype), key, rows_per_chunk)


def normal_table(key, num_rows: int, dim: int, stddev: float = 0.01,
                 dtype=jnp.float32) -> jax.Array:
  """A [num_rows, dim] table (dtype, default float32) of N(0, stddev^2) entries, built block
  by block."""
  return init_table(jax.nn.initializers.normal(stddev), key, (num_rows, dim), dtype)


def check_param_dtype(module: str, param_dtype) -> None:
  """The kernels take float32 and bfloat16 tables; other dtypes are refused."""
  if jnp.dtype(param_dtype) not in TABLE_DTYPES:
    raise TypeError(f"{module}: param_dtype must be float32 or bfloat16 (the kernels' table "
                    f"dtypes), got {jnp.dtype(param_dtype)}")


__all__ = ["chunked", "init_table", "normal_table", "zeros"]
