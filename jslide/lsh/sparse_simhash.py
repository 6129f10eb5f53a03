"""SimHash of sparse inputs (feature ids and values), for bag-of-features first layers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jslide import _ffi
from jslide._checks import float32_array, int32_ids
from jslide.lsh._common import check_kl, check_vectors


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseSimHash:
  """SimHash over a large feature space, with projections derived from a hash, not stored.

  Entry (bit b, feature f) of the projection is +1 or -1 with probability 1/6 each and 0
  otherwise, computed from ``seeds[b]`` and f by a fixed integer hash; so a sparse input with
  F non-zeros hashes in O(F K L), and a table over millions of features needs only L*K seeds.
  Dense vectors of the same space (e.g. rows of a first-layer table) hash to the same codes
  as their sparse form, in O(d K L).

  Attributes:
    seeds: uint32[L, K]. dim: number of features (static).
  """

  seeds: jax.Array
  dim: int = dataclasses.field(metadata=dict(static=True))

  @classmethod
  def init(cls, key, dim: int, num_hashes: int, num_hash_tables: int) -> "SparseSimHash":
    check_kl("SparseSimHash.init", num_hashes, num_hash_tables, dim=dim)
    seeds = jax.random.bits(key, (num_hash_tables, num_hashes), jnp.uint32)
    return cls(seeds=seeds, dim=int(dim))

  @property
  def num_hash_tables(self) -> int:
    return self.seeds.shape[0]

  @property
  def num_hashes(self) -> int:
    return self.seeds.shape[1]

  @property
  def num_buckets(self) -> int:
    return 2 ** self.num_hashes

  def hash_sparse(self, feat_ids, feat_vals) -> jax.Array:
    """Codes int32[B, L] of sparse inputs: feat_ids int[B, F] (-1 padding), feat_vals f32[B, F]."""
    fn = "SparseSimHash.hash_sparse"
    feat_ids = int32_ids(fn, "feat_ids", feat_ids, self.dim, ndim=2)
    feat_vals = float32_array(fn, "feat_vals", feat_vals, ndim=2)
    if feat_vals.shape != feat_ids.shape:
      raise ValueError(f"{fn}: feat_vals shape {feat_vals.shape} must equal feat_ids shape "
                       f"{feat_ids.shape}")
    return _ffi.sparse_simhash(feat_ids, feat_vals, self.seeds, self.dim)

  def hash(self, x) -> jax.Array:
    """Codes int32[B, L] of dense vectors x: f32[B, dim] of the same feature space."""
    x = check_vectors("SparseSimHash.hash", x, self.dim)
    ids = jnp.broadcast_to(jnp.arange(self.dim, dtype=jnp.int32), x.shape)
    return self.hash_sparse(ids, x)
