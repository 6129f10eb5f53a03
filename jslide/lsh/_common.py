"""Helpers shared by the hash families."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jslide._checks import float32_array


def check_vectors(fn: str, x, dim: int):
  x = float32_array(fn, "x", x, ndim=2)
  if x.shape[1] != dim:
    raise ValueError(f"{fn}: x has {x.shape[1]} features but the hash family was built for "
                     f"dim={dim}")
  return x


# The same limits as ffi/ffi_checks.h (kMaxHashesTimesBits, kMaxTables).
MAX_CODE_BITS = 24  # bits of a bucket code: 2^24 buckets per table
MAX_TABLES = 512


def check_kl(fn: str, num_hashes: int, num_hash_tables: int, bits_per_hash: int = 1, dim=1):
  """ValueError unless K, L (and the vector length ``dim``) are positive ints within the
  kernels' limits."""
  for name, v in (("num_hashes", num_hashes), ("num_hash_tables", num_hash_tables), ("dim", dim)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{fn}: {name} must be a positive int, got {v!r}")
  if num_hashes * bits_per_hash > MAX_CODE_BITS:
    raise ValueError(f"{fn}: K * bits per hash = {num_hashes * bits_per_hash} exceeds "
                     f"{MAX_CODE_BITS} (2^{MAX_CODE_BITS} buckets per table); lower num_hashes (K)")
  if num_hash_tables > MAX_TABLES:
    raise ValueError(f"{fn}: num_hash_tables={num_hash_tables} is above the supported {MAX_TABLES}")


def _as_bits(x):
  return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def _from_bits(x, like):
  if like.dtype != jnp.bfloat16:
    return x
  # bfloat16 is the top half of a float32: the exact conversion, by integer operations.
  return jax.lax.bitcast_convert_type(x.astype(jnp.uint32) << 16, jnp.float32)


def map_row_blocks(fn, rows, block: int):
  """``fn(part, fresh)`` over consecutive blocks of ``block`` rows of ``rows`` (a pytree of
  arrays with N leading rows), stacked over the blocks (``jax.lax.map``): ``part`` holds
  rows [s, s + block), bfloat16 leaves as float32, and ``fresh`` bool[block] marks those no
  earlier block held. The last block ends at row N and overlaps the one before, so no
  padded copy of the rows is made; N <= block gives one block of N rows. What a pass over a
  large table allocates is then O(block), not O(N): no float32 copy of a bfloat16 table, no
  [N, ...] intermediates."""
  n = jax.tree.leaves(rows)[0].shape[0]
  if n <= block:
    part = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x, rows)
    return jax.tree.map(lambda y: y[None], fn(part, jnp.ones(n, bool)))
  nominal = np.arange(-(-n // block)) * block
  starts = np.minimum(nominal, n - block)
  # XLA's CPU pipeline turns a bfloat16 slice converted to float32 into a slice of the whole
  # table converted, hoisted out of the loop: the copy this pass exists to avoid. Slicing the
  # bits (uint16) and converting them by integer operations keeps it in the loop.
  bits = jax.tree.map(_as_bits, rows)

  def one(start_skip):
    start, skip = start_skip
    part = jax.tree.map(
        lambda x, like: _from_bits(jax.lax.dynamic_slice_in_dim(x, start, block), like),
        bits, rows)
    return fn(part, jnp.arange(block) >= skip)

  return jax.lax.map(one, (jnp.asarray(starts, jnp.int32), jnp.asarray(nominal - starts, jnp.int32)))


def concat_row_blocks(out, n: int):
  """[N, ...]: the per-row results [blocks, block, ...] of :func:`map_row_blocks` over N rows,
  each row once."""
  block = out.shape[1]
  tail = n - (out.shape[0] - 1) * block  # rows of the last block that no earlier block held
  return jnp.concatenate([out[:-1].reshape(-1, *out.shape[2:]), out[-1, block - tail:]])
