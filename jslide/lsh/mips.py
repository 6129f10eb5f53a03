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

from jslide._checks import table_array
from jslide.lsh._common import check_vectors, map_row_blocks
from jslide.lsh.simhash import SimHash


_BLOCK = 4096  # rows per block of a pass over a table (jslide.lsh._common.map_row_blocks)


def mips_key_stats(w, b=None):
  """(mu f32[d], m2 f32[]) of rows w f32/bf16[N, d] with biases b f32[N] (or 0): the row mean
  :func:`mips_keys` centres on and the largest squared norm of ``[w_n - mu, b_n]`` it scales
  by. Two passes over w a block of rows at a time: no float32 copy of a bfloat16 table."""
  w = table_array("mips_key_stats", "w", w, ndim=2)
  b = _bias("mips_key_stats", w, b)
  sums = map_row_blocks(
      lambda p, fresh: jnp.sum(jnp.where(fresh[:, None], p.astype(jnp.float32), 0.0), axis=0),
      w, _BLOCK)
  mu = jnp.sum(sums, axis=0) / w.shape[0]
  sq = map_row_blocks(
      lambda p, _: jnp.max(jnp.sum(jnp.square(p[0].astype(jnp.float32) - mu), axis=1) +
                           p[1] * p[1]), (w, b), _BLOCK)
  return mu, jnp.maximum(jnp.max(sq), 1e-30)


def _bias(fn, w, b):
  b = jnp.zeros(w.shape[:1], jnp.float32) if b is None else jnp.asarray(b, jnp.float32)
  if b.shape != w.shape[:1]:
    raise ValueError(f"{fn}: b shape {b.shape} must be ({w.shape[0]},), one per row")
  return b


def mips_keys(w, b=None, stats=None):
  """f32[N, d + 2]: the unit-norm keys of rows w f32[N, d] (or bf16) with biases b f32[N] (or
  0). ``stats``: :func:`mips_key_stats` of the whole table when w is some of its rows (the
  keys of a table computed a block of rows at a time, without [N, d + 2] keys at once)."""
  w = table_array("mips_keys", "w", w, ndim=2)
  b = _bias("mips_keys", w, b)
  # x . mu is the same for every row: centring leaves the ranking unchanged.
  mu, m2 = mips_key_stats(w, b) if stats is None else stats
  w = w.astype(jnp.float32) - mu
  rest = jnp.sqrt(jnp.maximum(m2 - (jnp.sum(w * w, axis=1) + b * b), 0.0))
  return jnp.concatenate([w, b[:, None], rest[:, None]], axis=1) / jnp.sqrt(m2)


def mips_queries(x):
  """f32[B, d + 2]: ``[x, 1, 0]`` for queries x f32[B, d]."""
  ones = jnp.ones(x.shape[:1] + (1,), x.dtype)
  return jnp.concatenate([x, ones, jnp.zeros_like(ones)], axis=1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MIPSHash:
  """SimHash over the MIPS transform: queries are hashed as ``[x, 1, 0]``, rows (with their
  bias) as unit keys (:func:`mips_keys`), so collisions follow ``x @ w_n + b_n``.

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
