"""Neuron lists: an associative memory from regions of the input space to the neurons that
fire there, for sparse inference of a trained output layer.

Hashing the rows (``ClusterHash``, ``MIPSHash``) buckets neurons by what they look like;
inference wants the neurons that score highest for inputs like this one. On the trained
WordNet layer (docs/lsh.md), one table of 256 k-means buckets of the rows' MIPS keys holds
the exact top label for 0.69 of the test inputs in the buckets probed first (8% of the
labels), where these lists hold it for 0.91 in 5%: the buckets are regions of the *input*
space (k-means centroids of the layer's
inputs over the training set, C of them), and list c holds the S neurons that the training
examples landing in region c are labelled with (most frequent first), topped up with the
neurons that score highest at the centroid, ``c . w_n + b_n``. A query probes its P nearest
regions, and its candidates are rescored exactly.

The rescoring kernel (``jslide_list_topk``) scores the examples that probe one list
together, row by row, so a row read from memory serves every example of the batch that needs
it: a product of dense blocks rather than one gather per example and candidate.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jslide import _ffi
from jslide._checks import float32_array, int32_ids, positive_int
from jslide.lsh.cluster import top_indices

_CHUNK = 4096  # queries (or regions) scored against the centroids (or rows) at once


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NeuronLists:
  """Regions of the input space and the neurons each one lists.

  Attributes:
    centroids: f32[C, d], the regions (k-means centroids of the layer's inputs).
    lists: int32[C, S], each region's neurons, most relevant first (-1: none).
    probes: P, the regions a query reads (static).
  """

  centroids: jax.Array
  lists: jax.Array
  probes: int = dataclasses.field(metadata=dict(static=True))

  @property
  def num_lists(self) -> int:
    return self.lists.shape[0]

  @property
  def list_size(self) -> int:
    return self.lists.shape[1]

  @property
  def candidates(self) -> int:
    """Neurons scored per query: P lists of S (a neuron in two of them is scored twice)."""
    return self.probes * self.list_size

  @property
  def nbytes(self) -> int:
    return self.centroids.nbytes + self.lists.nbytes


_MAX_NEAREST = 64  # p up to this: the kernel keeps each query's best p as it goes


def nearest_centroids(x, centroids, p: int) -> jax.Array:
  """int32[B, p]: the p centroids f32[C, d] nearest to each x f32[B, d] (Euclidean), nearest
  first, ties by lower index, NaN distances last.

  For p <= 64 one kernel (``jslide_nearest_centroids``) scores ``x . c - |c|^2 / 2`` as a
  register-blocked matrix product and keeps each query's best p as the scores come out,
  with no [B, C] array (the probes of a batch of 1,024 against 1,024 regions: 1.6 ms
  against 1.7-2.4 for the product and ``top_indices``); beyond, the scores are ranked in
  blocks of 4,096 queries."""
  fn = "nearest_centroids"
  x = float32_array(fn, "x", x, ndim=2)
  centroids = float32_array(fn, "centroids", centroids, ndim=2)
  p = positive_int(fn, "p", p)
  if centroids.shape[1] != x.shape[1]:
    raise ValueError(f"{fn}: centroids must be [C, {x.shape[1]}] for x {x.shape}, got "
                     f"{centroids.shape}")
  if p > centroids.shape[0]:
    raise ValueError(f"{fn}: p={p} exceeds the {centroids.shape[0]} centroids")
  return _nearest(x, centroids, p)


def _nearest(x, centroids, p: int):
  """nearest_centroids without the checks (shapes already checked by the caller)."""
  if p <= _MAX_NEAREST:
    return _ffi.nearest_centroids(x, centroids, p)
  half_norms = 0.5 * jnp.sum(centroids * centroids, axis=1)
  near = lambda q: top_indices(q @ centroids.T - half_norms, p)
  n = x.shape[0]
  if n <= _CHUNK:
    return near(x)
  blocks = jnp.pad(x, ((0, -n % _CHUNK), (0, 0))).reshape(-1, _CHUNK, x.shape[1])
  return jax.lax.map(near, blocks).reshape(-1, p)[:n]


def fit_query_centroids(key, queries, num_lists: int, *, iters: int = 10, init=None) -> jax.Array:
  """f32[C, d]: k-means centroids of queries f32[Q, d] (``iters`` Lloyd steps, Euclidean).

  ``init``: centroids to start from (e.g. the last epoch's: the steps add up over a
  training run); without it, C distinct random queries. An empty region restarts at a
  query spread over the set."""
  fn = "fit_query_centroids"
  queries = float32_array(fn, "queries", queries, ndim=2)
  c = positive_int(fn, "num_lists", num_lists)
  iters = positive_int(fn, "iters", iters)
  q = queries.shape[0]
  if c > q:
    raise ValueError(f"{fn}: num_lists={c} exceeds the {q} queries")
  if init is None:
    init = queries[jax.random.choice(key, q, (c,), replace=False)]
  else:
    init = float32_array(fn, "init", init, ndim=2)
    if init.shape != (c, queries.shape[1]):
      raise ValueError(f"{fn}: init must be [{c}, {queries.shape[1]}], got {init.shape}")
  spread = (jnp.arange(c) * (q // c)) % q

  def step(_, cent):
    codes = _nearest(queries, cent, 1)[:, 0]
    sums = jax.ops.segment_sum(queries, codes, c)
    counts = jax.ops.segment_sum(jnp.ones(q, queries.dtype), codes, c)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None],
                     queries[spread])

  return jax.lax.fori_loop(0, iters, step, init)


def build_neuron_lists(centroids, queries, labels, w, b=None, *, list_size: int, probes: int) -> NeuronLists:
  """The lists of a layer w f32[N, d] (bias b f32[N]) for regions ``centroids`` f32[C, d]:
  list c holds the neurons that label the queries f32[Q, d] nearest to centroid c (labels
  int[Q, L], -1 padding; most frequent first, ties by id), then the neurons with the highest
  score at the centroid, ``list_size`` in all. ``probes``: regions a query reads."""
  fn = "build_neuron_lists"
  centroids = float32_array(fn, "centroids", centroids, ndim=2)
  queries = float32_array(fn, "queries", queries, ndim=2)
  w = float32_array(fn, "w", w, ndim=2)
  n, d = w.shape
  b = jnp.zeros((n,), jnp.float32) if b is None else float32_array(fn, "b", b, ndim=1)
  c = centroids.shape[0]
  if centroids.shape[1] != d or queries.shape[1] != d or b.shape != (n,):
    raise ValueError(f"{fn}: centroids [C, {d}], queries [Q, {d}] and b [{n}] expected for w "
                     f"{w.shape}, got {centroids.shape}, {queries.shape}, {b.shape}")
  labels = int32_ids(fn, "labels", labels, num_rows=n, ndim=2)
  if labels.shape[0] != queries.shape[0]:
    raise ValueError(f"{fn}: labels has {labels.shape[0]} rows, queries {queries.shape[0]}")
  s = positive_int(fn, "list_size", list_size)
  if s > n:
    raise ValueError(f"{fn}: list_size={s} exceeds the layer's {n} neurons")
  p = positive_int(fn, "probes", probes)
  if p > c:
    raise ValueError(f"{fn}: probes={p} exceeds the {c} regions")
  codes = _nearest(queries, centroids, 1)[:, 0]
  region = jnp.broadcast_to(codes[:, None], labels.shape).reshape(-1)
  label = labels.reshape(-1)
  chunk = max(1, min(c, 2**24 // n))  # regions at a time: a [chunk, N] block of 64 MiB
  pad = -c % chunk
  starts = jnp.arange(0, c + pad, chunk)
  cent = jnp.pad(centroids, ((0, pad), (0, 0)))

  def lists_of(start):
    local = region - start
    hit = (label >= 0) & (local >= 0) & (local < chunk)
    flat = jnp.where(hit, local * n + label, chunk * n)  # misses land past the end
    counts = jnp.zeros(chunk * n + 1, jnp.float32).at[flat].add(1.0)[:-1].reshape(chunk, n)
    score = jax.lax.dynamic_slice_in_dim(cent, start, chunk) @ w.T + b
    # Labelled neurons (count >= 1) first, then the rest by score (shifted below 0).
    rank = jnp.where(counts > 0, counts, score - jnp.max(score, axis=1, keepdims=True) - 1.0)
    return top_indices(rank, s)

  lists = jax.lax.map(lists_of, starts).reshape(-1, s)[:c]
  return NeuronLists(centroids, lists, p)


def neuron_list_candidates(index: NeuronLists, x) -> jax.Array:
  """int32[B, P * S]: the neurons a query x f32[B, d] is scored against (its P lists, in
  probe order; a neuron may appear twice, -1 none)."""
  x = float32_array("neuron_list_candidates", "x", x, ndim=2)
  probes = _nearest(x, index.centroids, index.probes)
  return index.lists[probes].reshape(x.shape[0], -1)


def neuron_list_topk(index: NeuronLists, x, w, b, k: int) -> tuple[jax.Array, jax.Array]:
  """(scores f32[B, k], ids int32[B, k]): the k best distinct neurons of a query's lists by
  exact score ``x @ w_n + b_n``, best first (ties: lower id first; -inf and -1 where fewer
  than k were found). x f32[B, d], w f32[N, d] or bf16[N, d] (a bfloat16 table is read as
  it is, each row widened exactly in the kernel, with no float32 copy), b f32[N]."""
  fn = "neuron_list_topk"
  x = float32_array(fn, "x", x, ndim=2)
  w = jnp.asarray(w)
  if w.dtype != jnp.bfloat16:
    w = float32_array(fn, "w", w, ndim=2)
  elif w.ndim != 2:
    raise ValueError(f"{fn}: w must be 2-D [N, d], got shape {w.shape}")
  b = float32_array(fn, "b", b, ndim=1)
  k = positive_int(fn, "k", k)
  if x.shape[1] != w.shape[1] or index.centroids.shape[1] != w.shape[1] or b.shape[0] != w.shape[0]:
    raise ValueError(f"{fn}: x [B, {w.shape[1]}], centroids [C, {w.shape[1]}] and b "
                     f"[{w.shape[0]}] expected for w {w.shape}, got {x.shape}, "
                     f"{index.centroids.shape}, {b.shape}")
  probes = _nearest(x, index.centroids, index.probes)
  return _ffi.list_topk(x, w, b, index.lists, probes, k)
