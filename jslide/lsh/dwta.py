"""Densified winner-take-all hashing (DWTA), SLIDE's hash for hidden activations."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jslide import _ffi
from jslide.lsh._common import check_kl, check_vectors


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DWTA:
  """Winner-take-all hashes over random bins, densified for sparse inputs.

  Random permutations of the d coordinates are cut into bins of ``bin_size``; hash (l, k)
  is the position (0..bin_size-1) of the largest entry of x within bin (l, k). A bin whose
  entries are all zero (common for ReLU activations and sparse data) is *empty* and borrows
  the value of the first non-empty bin on a fixed pseudo-random probe sequence (Chen and
  Shrivastava's densification). Two vectors collide on a hash more often the more their
  orderings agree within bins. A table's code concatenates K hashes of log2(bin_size) bits:
  ``2^(K log2 bin_size)`` buckets (K=6, bin 8: 2^18, SLIDE's Amazon-670K setting).

  Attributes:
    bins: int32[L, K, bin_size], coordinates of each bin. dim: d (static).
  """

  bins: jax.Array
  dim: int = dataclasses.field(metadata=dict(static=True))

  @classmethod
  def init(cls, key, dim: int, num_hashes: int, num_hash_tables: int, bin_size: int = 8) -> "DWTA":
    """K=num_hashes hashes per table, L=num_hash_tables tables, over vectors of length ``dim``."""
    if not isinstance(bin_size, int) or bin_size < 2 or bin_size & (bin_size - 1):
      raise ValueError(f"DWTA.init: bin_size must be a power of two >= 2, got {bin_size!r}")
    check_kl("DWTA.init", num_hashes, num_hash_tables, int(math.log2(bin_size)), dim=dim)
    if bin_size > dim:
      raise ValueError(f"DWTA.init: bin_size={bin_size} exceeds dim={dim}")
    needed = num_hash_tables * num_hashes * bin_size
    perms = jax.vmap(lambda k: jax.random.permutation(k, dim))(
        jax.random.split(key, -(-needed // dim)))
    bins = perms.reshape(-1)[:needed].reshape(num_hash_tables, num_hashes, bin_size)
    return cls(bins=bins.astype(jnp.int32), dim=int(dim))

  @property
  def num_hash_tables(self) -> int:
    return self.bins.shape[0]

  @property
  def num_hashes(self) -> int:
    return self.bins.shape[1]

  @property
  def bin_size(self) -> int:
    return self.bins.shape[2]

  @property
  def num_buckets(self) -> int:
    return 2 ** (self.num_hashes * int(math.log2(self.bin_size)))

  def hash(self, x) -> jax.Array:
    """Codes int32[B, L] of vectors x: f32[B, d]."""
    x = check_vectors("DWTA.hash", x, self.dim)
    return _ffi.dwta(x, self.bins)
