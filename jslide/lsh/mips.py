"""Maximum inner product search through SimHash: an index that follows a layer's scores.

An output neuron's score is ``x . w_n + b_n``, an inner product, not a cosine: rows of large
norm score high for many inputs, and an angular hash of the raw rows ignores that. The
asymmetric transform of Neyshabur & Srebro (2015, "simple LSH"), with the bias folded in,
turns the scores into cosines:

- keys (rows): ``k_n = [v_n, b_n, sqrt(M^2 - |v_n|^2 - b_n^2)] / M`` with ``v_n = w_n - mu``
  the rows centred on their mean ``mu`` and M the largest norm of ``[v_n, b_n]``, so every
  key has norm 1. Centring changes every score of a query by the same ``x . mu``, so not
  their order, and it matters: trained output rows share a large common component, and
  without centring most of them fall into one bucket;
- queries: ``q = [x, 1, 0]``.

Then ``q . k_n = (x . w_n + b_n - x . mu) / M`` and ``|k_n| = 1``, so the angle between q and
k_n orders the rows by score exactly, and SimHash (sign random projections, dense here so the
last two coordinates count in every bit) collides a query with a row with probability
``1 - angle / pi`` per bit. Rows far below the largest norm get keys near the last axis,
which no query points to: they are retrieved rarely, as their scores are low.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jslide._checks import float32_array
from jslide.lsh._common import check_vectors
from jslide.lsh.simhash import SimHash


def mips_keys(w, b=None):
  """f32[N, d + 2]: the unit-norm keys of rows w f32[N, d] with biases b f32[N] (or 0)."""
  w = float32_array("mips_keys", "w", w, ndim=2)
  b = jnp.zeros(w.shape[:1], w.dtype) if b is None else jnp.asarray(b, w.dtype)
  if b.shape != w.shape[:1]:
    raise ValueError(f"mips_keys: b shape {b.shape} must be ({w.shape[0]},), one per row")
  w = w - jnp.mean(w, axis=0)  # x . mu is the same for every row: the ranking is unchanged
  sq = jnp.sum(w * w, axis=1) + b * b
  m2 = jnp.maximum(jnp.max(sq), 1e-30)
  rest = jnp.sqrt(jnp.maximum(m2 - sq, 0.0))
  return jnp.concatenate([w, b[:, None], rest[:, None]], axis=1) / jnp.sqrt(m2)


def mips_queries(x):
  """f32[B, d + 2]: ``[x, 1, 0]`` for queries x f32[B, d]."""
  ones = jnp.ones(x.shape[:1] + (1,), x.dtype)
  return jnp.concatenate([x, ones, jnp.zeros_like(ones)], axis=1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MIPSHash:
  """SimHash over the MIPS transform: queries are hashed as ``[x, 1, 0]``, rows (with their
  bias) as unit keys (:func:`mips_keys`), so collisions follow ``x . w_n + b_n``.

  Attributes:
    simhash: a dense :class:`SimHash` over d + 2 coordinates. dim: d (static).
  """

  simhash: SimHash
  dim: int = dataclasses.field(metadata=dict(static=True))

  @classmethod
  def init(cls, key, dim: int, num_hashes: int, num_hash_tables: int) -> "MIPSHash":
    """K=num_hashes sign bits per table, L=num_hash_tables tables, for vectors of length dim."""
    return cls(SimHash.init(key, dim + 2, num_hashes, num_hash_tables, density=1.0), int(dim))

  @property
  def num_hash_tables(self) -> int:
    return self.simhash.num_hash_tables

  @property
  def num_hashes(self) -> int:
    return self.simhash.num_hashes

  @property
  def num_buckets(self) -> int:
    return self.simhash.num_buckets

  def hash(self, x) -> jax.Array:
    """Codes int32[B, L] of queries x: f32[B, d]."""
    x = check_vectors("MIPSHash.hash", x, self.dim)
    return self.simhash.hash(mips_queries(x))

  def hash_keys(self, w, b=None) -> jax.Array:
    """Codes int32[N, L] of rows w: f32[N, d] with biases b: f32[N]."""
    w = check_vectors("MIPSHash.hash_keys", w, self.dim)
    return self.simhash.hash(mips_keys(w, b))
