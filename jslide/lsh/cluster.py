"""A learned hash family for maximum inner product search: k-means buckets, ranked probes.

Measured on trained output layers (docs/lsh.md), random-projection hashing of the MIPS keys
(:class:`MIPSHash`) finds a fifth of the exact top-1 labels within 5% of the labels: trained
rows are far from isotropic, so most of them share a few buckets. Partitioning the keys by
spherical k-means (as IVF indices for MIPS, and MONGOOSE's learned hashes, do) adapts the
buckets to the rows, and probing the buckets whose centroids score highest for the query
reads the rows most likely to score highest first.

Each of the L tables has C = 2^K centroids (unit vectors in the MIPS key space of
:func:`mips_keys`, d + 2 coordinates). A row's code is its nearest centroid; a query's codes
are the P centroids with the highest ``q . c`` for ``q = [x, 1, 0]``, best first, so
:func:`jslide.lsh.query` with ``strategy="ranked"`` takes rows bucket by bucket in that order.
Centroids are refitted from the current rows each time the index is built (``iters`` Lloyd
iterations, 3 by default, from the previous centroids: the iterations add up over the
rebuilds of a training run), so the buckets follow the weights as they train. On a large
table the Lloyd iterations read an evenly spaced sample of ``sample_per_bucket`` rows per
centroid (32 by default, within FAISS's advice of 30-256 training points per centroid) and
only the final assignment reads every row: at 524,288 rows and 4,096 buckets a refit costs
a third of one over every row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jslide import _ffi
from jslide._checks import float32_array, positive_int, table_array
from jslide.lsh._common import check_kl, check_vectors, concat_row_blocks, map_row_blocks
from jslide.lsh.mips import mips_key_stats, mips_keys, mips_queries


def top_indices(scores, k: int) -> jax.Array:
  """int32[R, k]: the positions of the k highest scores of each row of f32[R, C], highest
  first (ties: lower position first). ``jax.lax.top_k`` gives the same (NaN aside, which
  ranks last here); this C++ selection is 4x (k = 1) to 12x (k ~ 160 of 1,024) faster on the
  CPU."""
  scores = float32_array("top_indices", "scores", scores, ndim=2)
  k = positive_int("top_indices", "k", k)
  if k > scores.shape[1]:
    raise ValueError(f"top_indices: k={k} exceeds the {scores.shape[1]} scores of a row")
  return _ffi.top_indices(scores, k)


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


_CHUNK = 4096  # rows scored against the centroids at once: a [4096, L, C] block, not [N, L, C]


def _nearest(keys, centroids):
  """int32[n, L]: each key's nearest centroid (highest cosine) in each table."""
  c = centroids.shape[1]
  # top_indices(., 1) is jnp.argmax on finite scores (the first of equal ones), 4x faster on
  # the CPU.
  best = top_indices(jnp.einsum("nd,lcd->nlc", keys, centroids).reshape(-1, c), 1)
  return best.reshape(-1, centroids.shape[0]).astype(jnp.int32)


def _assign(rows, centroids, keys_of=lambda r: r):
  """int32[N, L]: the nearest centroid of each row's key ``keys_of(part)``, ``rows`` a pytree
  of arrays with N leading rows, _CHUNK rows at a time: neither the [N, L, C] scores nor,
  when ``keys_of`` makes the keys, the [N, d + 2] keys exist at once."""
  n = jax.tree.leaves(rows)[0].shape[0]
  return concat_row_blocks(
      map_row_blocks(lambda part, _: _nearest(keys_of(part), centroids), rows, _CHUNK), n)


def _lloyd_step(keys, centroids):
  """One spherical k-means step per table. An empty cluster restarts at a key (spread over
  the rows, a different one per table): the keys fill a narrow cone of the sphere, so most
  random initial centroids start empty."""
  keys = jnp.asarray(keys)
  codes = _assign(keys, centroids)
  n, (l, c) = keys.shape[0], centroids.shape[:2]
  spread = (jnp.arange(l)[:, None] * 7919 + jnp.arange(c)[None, :] * (n // c + 1)) % n

  def per_table(codes_l, spread_l):
    sums = jax.ops.segment_sum(keys, codes_l, c)
    counts = jax.ops.segment_sum(jnp.ones(n, keys.dtype), codes_l, c)
    return jnp.where(counts[:, None] > 0, _normalize(sums), keys[spread_l])

  return jax.vmap(per_table, in_axes=(1, 0))(codes, spread)


def sample_rows(n: int, max_rows: int) -> np.ndarray | None:
  """int64[max_rows]: evenly spaced row numbers of an N-row table, or None (every row) when
  N <= max_rows. A table's rows are in no particular order, so a stride is as good a sample
  as a random one, and the same from one rebuild to the next."""
  if n <= max_rows:
    return None
  return np.arange(max_rows, dtype=np.int64) * n // max_rows


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClusterHash:
  """Spherical k-means buckets over MIPS keys, with P ranked probes per table.

  Attributes:
    centroids: f32[L, C, d + 2], unit rows. probes: P (static). iters: Lloyd iterations per
      refit (static). dim: d (static). sample_per_bucket: the Lloyd iterations of a refit
      read at most this many rows per centroid, evenly spaced (static).
  """

  centroids: jax.Array
  probes: int = dataclasses.field(metadata=dict(static=True))
  iters: int = dataclasses.field(metadata=dict(static=True))
  dim: int = dataclasses.field(metadata=dict(static=True))
  sample_per_bucket: int = dataclasses.field(default=32, metadata=dict(static=True))

  @classmethod
  def init(cls, key, dim: int, num_hashes: int, num_hash_tables: int, probes: int = 16,
           iters: int = 3) -> "ClusterHash":
    """C = 2^num_hashes random centroids per table (refitted to the rows by ``build``)."""
    check_kl("ClusterHash.init", num_hashes, num_hash_tables, dim=dim)
    c = 2 ** num_hashes
    probes = min(positive_int("ClusterHash.init", "probes", probes), c)
    iters = positive_int("ClusterHash.init", "iters", iters)
    cent = _normalize(jax.random.normal(key, (num_hash_tables, c, dim + 2), jnp.float32))
    return cls(cent, probes, iters, int(dim))

  @classmethod
  def from_rows(cls, key, w, b=None, *, num_hashes: int, num_hash_tables: int, probes: int = 16,
                iters: int = 3) -> "ClusterHash":
    """Like :meth:`init`, with each table's centroids started at the keys of 2^num_hashes
    random rows of w f32[N, d] (bias b), different rows per table (Forgy's start): on trained
    rows, whose keys fill a narrow cone, this fits better buckets in 10 Lloyd steps than
    random directions do in 25 (recall of the top label 0.924 against 0.910, six tables on
    the trained WordNet layer, docs/lsh.md)."""
    w = float32_array("ClusterHash.from_rows", "w", w, ndim=2)
    family = cls.init(key, w.shape[1], num_hashes, num_hash_tables, probes=probes, iters=iters)
    keys = mips_keys(w, b)
    n, c = w.shape[0], family.num_buckets
    rows = jax.vmap(lambda k: jax.random.choice(k, n, (c,), replace=n < c))(
        jax.random.split(jax.random.fold_in(key, 1), num_hash_tables))
    return dataclasses.replace(family, centroids=keys[rows])

  @property
  def num_hash_tables(self) -> int:
    return self.centroids.shape[0]

  @property
  def num_buckets(self) -> int:
    return self.centroids.shape[1]

  def hash(self, x) -> jax.Array:
    """Codes int32[B, P * L] of queries x f32[B, d]: probe p of table l in column p L + l,
    each table's P best centroids by ``q . c``, best first."""
    x = check_vectors("ClusterHash.hash", x, self.dim)
    scores = jnp.einsum("bd,lcd->blc", mips_queries(x), self.centroids)
    b, l, c = scores.shape
    best = top_indices(scores.reshape(b * l, c), self.probes).reshape(b, l, self.probes)
    return jnp.swapaxes(best, 1, 2).reshape(b, -1)

  def refit(self, w, b=None) -> "ClusterHash":
    """The family with its centroids moved to the rows w f32/bf16[N, d] (bias b) by ``iters``
    Lloyd steps, on at most ``sample_per_bucket`` rows per centroid."""
    w = table_array("ClusterHash.refit", "w", w, ndim=2)
    stats = mips_key_stats(w, b)  # of the whole table: the sample's keys are the table's
    rows = sample_rows(w.shape[0], self.sample_per_bucket * self.num_buckets)
    if rows is not None:
      w, b = w[rows], None if b is None else jnp.asarray(b)[rows]
    keys = mips_keys(w, b, stats)
    cent = jax.lax.fori_loop(0, self.iters, lambda _, c: _lloyd_step(keys, c), self.centroids)
    return dataclasses.replace(self, centroids=cent)

  def hash_keys(self, w, b=None) -> jax.Array:
    """Codes int32[N, L] of rows w f32/bf16[N, d] with biases b: their nearest centroids,
    computed a block of rows at a time (no float32 copy of w, no [N, d + 2] keys)."""
    w = table_array("ClusterHash.hash_keys", "w", w, ndim=2)
    if w.shape[1] != self.dim:
      raise ValueError(f"ClusterHash.hash_keys: w has {w.shape[1]} features but the hash "
                       f"family was built for dim={self.dim}")
    b = jnp.zeros(w.shape[:1], jnp.float32) if b is None else jnp.asarray(b, jnp.float32)
    stats = mips_key_stats(w, b)
    return _assign((w, b), self.centroids, lambda wb: mips_keys(*wb, stats=stats))
