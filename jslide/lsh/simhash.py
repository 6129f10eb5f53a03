"""Signed random projections (SimHash) with sparse projections."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jslide import _ffi
from jslide.lsh._common import check_kl, check_vectors


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SimHash:
  """K sign bits per table, each the sign of a sparse random projection.

  Bit (l, k) of x is ``[sum_i sign[l, k, i] * x[idx[l, k, i]] >= 0]``: a projection on
  ``nnz`` random coordinates (about a third of d, as in SLIDE) with random signs, so hashing
  costs O(d K L / 3). Two vectors at angle theta agree on a bit with probability close to
  ``1 - theta / pi`` (exactly so for dense Gaussian projections); a table's code agrees with
  probability ``(1 - theta/pi)^K``.

  Attributes:
    idx: int32[L, K, nnz], coordinates. sign: f32[L, K, nnz], +-1. dim: d (static).
  """

  idx: jax.Array
  sign: jax.Array
  dim: int = dataclasses.field(metadata=dict(static=True))

  @classmethod
  def init(cls, key, dim: int, num_hashes: int, num_hash_tables: int,
           density: float = 1 / 3) -> "SimHash":
    """Random projections for vectors of length ``dim``: K=num_hashes, L=num_hash_tables."""
    check_kl("SimHash.init", num_hashes, num_hash_tables, dim=dim)
    if not 0 < density <= 1:
      raise ValueError(f"SimHash.init: density must be in (0, 1], got {density}")
    nnz = max(1, round(dim * density))
    k_idx, k_sign = jax.random.split(key)
    scores = jax.random.uniform(k_idx, (num_hash_tables, num_hashes, dim))
    idx = jnp.argsort(scores, axis=-1)[..., :nnz].astype(jnp.int32)
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, idx.shape), 1.0, -1.0).astype(jnp.float32)
    return cls(idx=idx, sign=sign, dim=int(dim))

  @property
  def num_hash_tables(self) -> int:
    return self.idx.shape[0]

  @property
  def num_hashes(self) -> int:
    return self.idx.shape[1]

  @property
  def num_buckets(self) -> int:
    return 2 ** self.num_hashes

  def hash(self, x) -> jax.Array:
    """Codes int32[B, L] in [0, 2^K) of vectors x: f32[B, d]."""
    x = check_vectors("SimHash.hash", x, self.dim)
    return _ffi.simhash(x, self.idx, self.sign)
