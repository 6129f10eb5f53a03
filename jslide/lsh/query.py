"""Active-set retrieval: the neurons likely to fire for each input."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jslide import _ffi, parallel
from jslide._checks import int32_ids, positive_int
from jslide.lsh.index import LSHIndex

#: The retrieval strategies of :func:`query` and the code the kernel takes for each.
STRATEGIES = {"vanilla": 0, "topk": 1, "threshold": 2, "ranked": 3}


def _retrieve(index: LSHIndex, codes, *, active, strategy, key, force_ids, threshold,
              max_per_bucket, fill_group, fill, retrieved):
  fn = "lsh.query"
  active = positive_int(fn, "active", active)
  if strategy not in STRATEGIES:
    raise ValueError(f"{fn}: strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
  if strategy == "threshold":
    threshold = positive_int(fn, "threshold", threshold)
    if threshold > index.num_hash_tables:
      raise ValueError(f"{fn}: threshold={threshold} exceeds the number of tables "
                       f"{index.num_hash_tables}")
  b = codes.shape[0]
  if codes.shape[1] % index.num_hash_tables:
    raise ValueError(f"{fn}: {codes.shape[1]} codes per query are not a whole number of "
                     f"probes of the index's {index.num_hash_tables} tables")
  if force_ids is None:
    force_ids = jnp.zeros((b, 0), jnp.int32)
  force_ids = int32_ids(fn, "force_ids", force_ids, index.num_rows, ndim=2)
  if force_ids.shape[0] != b:
    raise ValueError(f"{fn}: force_ids has {force_ids.shape[0]} rows for {b} queries")
  if force_ids.shape[1] > active:
    raise ValueError(f"{fn}: active={active} is smaller than the {force_ids.shape[1]} forced "
                     "ids per example")
  max_per_bucket = positive_int(fn, "max_per_bucket", max_per_bucket or 4 * active)
  if retrieved is None:
    retrieved = active
  if isinstance(retrieved, bool) or not isinstance(retrieved, int) or retrieved < 0:
    raise ValueError(f"{fn}: retrieved must be an int >= 0, got {retrieved!r}")
  # Random choices follow an example's place in the whole batch, on any number of
  # data-parallel shards (jslide.parallel).
  fill_group = (parallel.whole_batch(b) if fill_group is None
                else positive_int(fn, "fill_group", fill_group))
  if key is None:
    raise ValueError(f"{fn}: key (a jax.random key) is required")
  seed = jax.random.bits(key, (2,), jnp.uint32)
  return _ffi.lsh_query(codes, index.offsets, index.ids, force_ids, seed,
                        parallel.first_example(b), active=active,
                        strategy=STRATEGIES[strategy], threshold=threshold or 1,
                        max_per_bucket=max_per_bucket, fill_group=max(fill_group, 1),
                        fill=bool(fill), retrieved=retrieved)


def query(index: LSHIndex, x, *, active: int, key, strategy: str = "vanilla",
          force_ids=None, threshold: int = 2, max_per_bucket: int | None = None,
          fill_group: int | None = 1, fill: bool = True,
          retrieved: int | None = None) -> jax.Array:
  """Active ids int32[B, active] for queries x: f32[B, d].

  Each row holds, all distinct: the ``force_ids`` of that example (e.g. its true labels;
  -1 entries ignored), then ids retrieved from the x's buckets in the L tables per the
  strategy, then uniform random ids to fill the active set (so a softmax over it
  always has negatives). -1 pads the end only when the table has fewer than ``active`` rows.

  Strategies (SLIDE's): ``vanilla``, a uniform sample of the union of the L buckets;
  ``topk``, the ids found in the most tables (random order among ties); ``threshold``, a
  uniform sample of the ids found in at least ``threshold`` tables; and ``ranked``, the ids
  in the order the buckets come (for families whose codes are ranked, best first, such as
  :class:`ClusterHash`'s probes), cut at ``active``. A family may give P probes per table
  (codes [B, P * L], column t probing table t % L). At most
  ``max_per_bucket`` ids (default ``4 * active``) are read from any one bucket, a window
  from a random start, so a query costs O(L * max_per_bucket) even with skewed buckets;
  choose K so that typical buckets are smaller (counts for ``topk``/``threshold`` are exact
  only for buckets within the cap). ``fill_group`` consecutive examples draw their random
  fill from one sequence (shared negatives, as TensorFlow's sampled softmax shares them
  over the batch; ``None``: the whole batch), so a batch touches about ``B / fill_group *
  active`` fill rows rather than ``B * active``: less optimizer work when the buckets return
  few ids, at some cost in accuracy (fewer distinct negatives a step). ``fill=False``: no
  random fill, -1 after the retrieved ids (inference, and measuring what the index supplies).
  ``retrieved`` caps the ids taken from the buckets (default: the active), leaving the
  rest of the active set to random fill: a mix of hard and random negatives.
  Deterministic for a given ``key``.
  """
  return _retrieve(index, index.hasher.hash(x), active=active, strategy=strategy, key=key,
                   force_ids=force_ids, threshold=threshold, max_per_bucket=max_per_bucket,
                   fill_group=fill_group, fill=fill, retrieved=retrieved)


def query_sparse(index: LSHIndex, feat_ids, feat_vals, *, active: int, key,
                 strategy: str = "vanilla", force_ids=None, threshold: int = 2,
                 max_per_bucket: int | None = None, fill_group: int | None = 1,
                 fill: bool = True, retrieved: int | None = None) -> jax.Array:
  """:func:`query` for sparse inputs, with an index built from a :class:`SparseSimHash`."""
  if not hasattr(index.hasher, "hash_sparse"):
    raise TypeError("lsh.query_sparse: the index's hash family does not hash sparse inputs "
                    "(use SparseSimHash)")
  return _retrieve(index, index.hasher.hash_sparse(feat_ids, feat_vals), active=active,
                   strategy=strategy, key=key, force_ids=force_ids, threshold=threshold,
                   max_per_bucket=max_per_bucket, fill_group=fill_group, fill=fill,
                   retrieved=retrieved)
