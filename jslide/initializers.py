"""Initializers for tables too large to build in one piece.

``jax.random.normal(key, (N, d))`` needs several [N, d]-sized temporaries (random bits,
conversions) on the CPU: about 4x the table at N=1M, d=128. :func:`chunked` wraps any
``jax.nn.initializers`` initializer so the table is filled block by block, in place, and the
peak memory is the table plus one block.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def chunked(init: Initializer, rows_per_chunk: int = 65536) -> Initializer:
  """``init`` applied to blocks of ``rows_per_chunk`` rows, each with its own folded key.

  The result has the same signature ``(key, shape, dtype=float32)`` and the same
  distribution as ``init`` for initializers whose rows are independent (normal, uniform,
  truncated normal, zeros; not orthogonal, nor fan-based ones over the row axis: the shape
  given to ``init`` is ``(rows_per_chunk, *shape[1:])``).
  """
  if not isinstance(rows_per_chunk, int) or rows_per_chunk <= 0:
    raise ValueError(f"chunked: rows_per_chunk must be a positive int, got {rows_per_chunk!r}")

  def chunked_init(key, shape, dtype=jnp.float32):
    shape = tuple(shape)
    if len(shape) < 1:
      raise ValueError(f"chunked: shape must have at least one axis, got {shape}")
    n, rest = shape[0], shape[1:]
    if n <= rows_per_chunk:
      return init(key, shape, dtype)
    full = n // rows_per_chunk

    def fill(i, table):
      block = init(jax.random.fold_in(key, i), (rows_per_chunk, *rest), dtype)
      start = (i * rows_per_chunk,) + (0,) * len(rest)
      return jax.lax.dynamic_update_slice(table, block, start)

    table = jax.lax.fori_loop(0, full, fill, jnp.zeros(shape, dtype))
    tail = n - full * rows_per_chunk
    if tail:
      block = init(jax.random.fold_in(key, full), (tail, *rest), dtype)
      table = jax.lax.dynamic_update_slice(table, block, (full * rows_per_chunk,) + (0,) * len(rest))
    return table

  return chunked_init


def init_table(init: Initializer, key, shape, dtype=jnp.float32) -> jax.Array:
  """``init(key, shape, dtype)`` built block by block (:func:`chunked`) under one ``jit``."""
  return jax.jit(chunked(init), static_argnums=(1, 2))(key, tuple(shape), dtype)


def normal_table(key, num_rows: int, dim: int, stddev: float = 0.01,
                 dtype=jnp.float32) -> jax.Array:
  """A f32[num_rows, dim] table of N(0, stddev^2) entries, built block by block."""
  return init_table(jax.nn.initializers.normal(stddev), key, (num_rows, dim), dtype)


def check_param_dtype(module: str, param_dtype) -> None:
  """The kernels take float32 tables; other dtypes are refused until they are supported."""
  if jnp.dtype(param_dtype) != jnp.float32:
    raise TypeError(f"{module}: param_dtype must be float32 (the kernels' table dtype), got "
                    f"{jnp.dtype(param_dtype)}")


__all__ = ["chunked", "init_table", "normal_table"]
