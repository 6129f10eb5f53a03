"""A large output (or hidden) layer whose active neurons come from an LSH index."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jslide import lsh, parallel, row_sharded
from jslide.initializers import check_param_dtype, init_table
from jslide._checks import positive_int
from jslide.nn.variables import Index, Table
from jslide.ops import sparse_linear


def batch_label_sample(labels, count: int, key):
  """int32[count]: distinct labels of the batch labels int[B, L] (-1 padding) in random
  order, -1 padded when the batch has fewer."""
  flat = labels.reshape(-1).astype(jnp.int32)
  distinct = jnp.unique(flat, size=max(flat.shape[0], count), fill_value=-1)
  priority = jnp.where(distinct >= 0, jax.random.uniform(key, distinct.shape), 2.0)
  return distinct[jnp.argsort(priority)][:count]


class SparseDense(nnx.Module):
  """``out_features`` neurons, of which each input computes only ``active``.

  Training: ``logits, ids = layer(x, labels, key=key)`` gives scores f32[B, active] over the
  active ids int32[B, active] that the LSH index retrieves for x, with the example's labels
  always included (and random fill, so negatives are always there). Inference:
  ``layer.topk(x, k, key=key)`` retrieves candidates with the index and rescores them
  exactly; ``layer.exact(x)`` scores all neurons (for evaluation and for checking the index).

  ``fill_group``: that many consecutive examples share their random fill (``None``: the
  whole batch; see :func:`jslide.lsh.query`): fewer distinct rows to update when the index
  returns fewer ids than the active, but fewer distinct negatives per step.

  ``retrieved``: in training, at most this many ids of the active set come from the index
  (default: all the room left), the rest being random fill: hard negatives mixed with
  uniform ones, which keep pushing down labels the index does not return.

  ``batch_negatives``: in training, up to this many labels of the whole batch (a random
  subset when there are more) join every example's active set, after its own labels and
  before the retrieved ids. A label appears in a batch about as often as it is frequent, so
  these are negatives sampled by label frequency; without them a frequent label is pushed
  down only when the index happens to retrieve it, and the model over-predicts frequent
  labels (on the WordNet demo, P@1 0.243 -> 0.287 with 256 of 512 slots). No log-frequency
  correction is applied: the extra push on frequent labels is what helps precision.

  Call :meth:`rebuild_index` (or let :func:`jslide.nn.training` do it on a schedule) after
  the weights have moved.

  Split by rows over a mesh axis (:func:`jslide.row_sharded.split_rows`, for a table bigger
  than one device), each device's layer holds ``out_features / shards`` rows, an index of its
  own over them and ``active / shards`` of each example's active set, and runs inside the
  training step's ``shard_map``: it takes global label ids and returns the global ids of the
  active rows it holds (``row_axis`` names the axis; None when whole).

  Parameters follow ``nnx.Linear`` (``kernel_init``, ``bias_init``, ``param_dtype``,
  ``rngs``), with one difference of layout: ``kernel`` is ``Table[out_features,
  in_features]``, one row per output neuron (``nnx.Linear`` keeps ``[in, out]``), because a
  neuron's weights are what the kernels gather and the index hashes; ``bias`` is
  ``Table[out_features]``. ``param_dtype`` (float32 or bfloat16) is the kernel's dtype: a
  bfloat16 table halves the memory traffic of every gather and update (the kernels compute in
  float32 and round updates stochastically, docs/concepts/bfloat16.md); the bias, 1/in_features of the
  table, stays float32.
  """

  def __init__(self, in_features: int, out_features: int, *, active: int,
               hash_family: str | lsh.HashFamily = "dwta", num_hashes: int | None = None,
               num_hash_tables: int | None = None,
               bin_size: int = 8, strategy: str | None = None, fill_group: int | None = 1,
               batch_negatives: int = 0, retrieved: int | None = None,
               kernel_init: nnx.Initializer = nnx.initializers.normal(0.01),
               bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    family = lsh.hash_family(hash_family)
    strategy = family.strategy if strategy is None else strategy
    if strategy not in lsh.STRATEGIES:
      raise ValueError(f"SparseDense: strategy must be one of {sorted(lsh.STRATEGIES)}, "
                       f"got {strategy!r}")
    positive_int("SparseDense", "in_features", in_features)
    positive_int("SparseDense", "out_features", out_features)
    positive_int("SparseDense", "active", active)
    if not isinstance(batch_negatives, int) or not 0 <= batch_negatives < active:
      raise ValueError(f"SparseDense: batch_negatives must be an int in [0, active={active}), "
                       f"got {batch_negatives!r}")
    self.batch_negatives = batch_negatives
    if retrieved is not None and (not isinstance(retrieved, int) or retrieved < 0):
      raise ValueError(f"SparseDense: retrieved must be an int >= 0 or None, got "
                       f"{retrieved!r}")
    self.retrieved = retrieved
    self.in_features, self.out_features = in_features, out_features
    self.active, self.strategy, self.fill_group = active, strategy, fill_group
    check_param_dtype("SparseDense", param_dtype)
    self.kernel = Table(init_table(kernel_init, rngs.params(), (out_features, in_features),
                                   param_dtype))
    self.bias = Table(init_table(bias_init, rngs.params(), (out_features,), jnp.float32))
    hasher = family.hasher(rngs.params(), in_features, num_rows=out_features, active=active,
                           num_hashes=num_hashes, num_hash_tables=num_hash_tables,
                           bin_size=bin_size)
    self.index = Index(jax.jit(lsh.build)(hasher, self.kernel.get_value(),
                                          self.bias.get_value()))
    self.row_axis: str | None = None

  def keep_rows(self, shard: int, shards: int, axis: str) -> None:
    """Keeps rows ``[shard * rows, (shard + 1) * rows)`` (``rows = out_features / shards``),
    an index over them with the same hash functions, and ``1 / shards`` of the active set
    and of its parts: the layer of device ``shard`` of mesh axis ``axis``
    (:func:`jslide.row_sharded.split_rows`)."""
    part = lambda n: -(-n // shards)  # noqa: E731 (a share, rounded up)
    if self.row_axis is None and not self.out_features % shards and (
        part(self.active) > self.out_features // shards):
      raise ValueError(f"SparseDense.keep_rows: active={self.active} over {shards} shards is "
                       f"more than a shard's {self.out_features // shards} rows")
    self.out_features = row_sharded.keep_layer_rows(self, "SparseDense.keep_rows",
                                                    "out_features", shard, shards, axis)
    self.active = part(self.active)
    self.batch_negatives = min(part(self.batch_negatives), max(self.active - 1, 0))
    if self.retrieved is not None:
      self.retrieved = part(self.retrieved)

  def active_ids(self, x, labels=None, *, key):
    """Active ids int32[B, active] for inputs x f32[B, in_features] (labels int[B, L])."""
    x = jax.lax.stop_gradient(x)
    if labels is not None and self.row_axis is not None:  # the labels among this shard's rows
      labels = row_sharded.local_ids(labels, self.out_features, self.row_axis)
    force = labels
    if labels is not None and self.batch_negatives:
      key, sample_key = jax.random.split(key)
      room = max(0, min(self.batch_negatives, self.active - labels.shape[-1]))
      # drawn from the whole batch's labels, however many data-parallel shards hold it
      shared = batch_label_sample(parallel.gather_examples(labels), room, sample_key)
      force = jnp.concatenate(
          [labels.astype(jnp.int32), jnp.broadcast_to(shared, (labels.shape[0], room))], axis=-1)
    return lsh.query(self.index.get_value(), x, active=self.active, key=key,
                     strategy=self.strategy, force_ids=force, fill_group=self.fill_group,
                     retrieved=self.retrieved)

  def __call__(self, x, labels=None, *, key):
    """(logits f32[B, active], active ids int32[B, active]); split by rows, the ids are
    global (this device's rows; -1 padding)."""
    if self.row_axis is not None:
      row_sharded.check_local("SparseDense.__call__", self.row_axis, self.kernel.get_value())
      x = row_sharded.shared_input(x, self.row_axis)
    ids = self.active_ids(x, labels, key=key)
    logits = sparse_linear(x, self.kernel.get_value(), self.bias.get_value(), ids)
    if self.row_axis is not None:
      ids = row_sharded.global_ids(ids, self.out_features, self.row_axis)
    return logits, ids


  def scores(self, x, ids):
    """Exact scores of given ids int32[B, A] (-1 padding scores -inf)."""
    y = sparse_linear(x, self.kernel.get_value(), self.bias.get_value(), ids)
    return jnp.where(ids >= 0, y, -jnp.inf)

  def retrieve(self, x, *, key, candidates: int | None = None, index=None):
    """The ids int32[B, candidates] (default active) the index retrieves for x, no labels
    and no random fill (-1 after the retrieved ids). ``index``: an index over this layer's
    rows other than its own (:meth:`build_inference_index`); its buckets are taken best
    first (``ranked``)."""
    if index is None:
      index, strategy = self.index.get_value(), self.strategy
    else:
      strategy = "ranked"
    return lsh.query(index, x, active=candidates or self.active, key=key, strategy=strategy,
                     fill=False)

  def topk(self, x, k: int, *, key, candidates: int | None = None, index=None):
    """(scores, ids) of the k best of ``candidates`` (default active) retrieved neurons,
    rescored exactly (-inf and -1 where fewer than k were retrieved); ``index`` as in
    :meth:`retrieve`."""
    ids = self.retrieve(x, key=key, candidates=candidates, index=index)
    top, pos = jax.lax.top_k(self.scores(x, ids), k)
    return top, jnp.take_along_axis(ids, pos, axis=-1)

  def list_topk(self, x, k: int, lists: lsh.NeuronLists):
    """(scores, ids) of the k best neurons of x's neuron lists (:class:`jslide.lsh.NeuronLists`
    over this layer), rescored exactly (-inf and -1 where fewer than k were listed)."""
    return lsh.neuron_list_topk(lists, x, self.kernel.get_value(), self.bias.get_value(), k)

  def build_inference_index(self, key, *, num_hash_tables: int = 6, num_hashes: int | None = None,
                            candidates: int | None = None, iters: int = 10,
                            previous: lsh.LSHIndex | None = None) -> lsh.LSHIndex:
    """A k-means index (:class:`jslide.lsh.ClusterHash`) over the layer's current rows for
    inference, apart from the one training queries.

    Training needs an index that is cheap to query every step and to rebuild every few
    hundred steps, and takes only part of its active set from it; inference wants recall of
    the top neurons, and its index is built once per model. More tables of independent
    k-means partitions give that: on the trained WordNet layer, the exact top label is
    within the 5% retrieved for 0.77 of the examples with one fresh table of 1,024 buckets,
    0.90 with six, and 0.945 with six built after every epoch of the run (docs/lsh.md). Pass
    the index to :meth:`topk` / :meth:`retrieve`.

    ``num_hashes``: K, 2^K buckets a table (default: the training index's count, or about 20
    rows a bucket). ``candidates`` (default active): the ids a query will ask for; each table
    is probed in about 8 / num_hash_tables times the buckets that hold them on average (tables
    overlap, so their union is smaller than their sum). ``previous``: an index this call
    returned for earlier weights, whose centroids start ``iters`` Lloyd steps (a warm start,
    as the training index's rebuilds do; its tables, buckets and probes are kept).
    """
    candidates = positive_int("SparseDense.build_inference_index", "candidates",
                              candidates or self.active)
    if previous is not None:
      if not isinstance(previous.hasher, lsh.ClusterHash):
        raise TypeError("SparseDense.build_inference_index: previous must be an index this "
                        f"method built (k-means), got one over {type(previous.hasher).__name__}")
      hasher = dataclasses.replace(previous.hasher, iters=iters)
    else:
      num_hash_tables = positive_int("SparseDense.build_inference_index", "num_hash_tables", num_hash_tables)
      if num_hashes is None:
        own = self.index.get_value()
        num_hashes = (int(round(math.log2(own.num_buckets)))
                      if isinstance(own.hasher, lsh.ClusterHash)
                      else lsh.rows_per_bucket_hashes(self.out_features))
      per_bucket = max(self.out_features // 2 ** num_hashes, 1)
      probes = max(1, -(-8 * candidates // (per_bucket * num_hash_tables)))
      hasher = lsh.ClusterHash.from_rows(key, self.kernel.get_value().astype(jnp.float32),
                                         self.bias.get_value(), num_hashes=num_hashes,
                                         num_hash_tables=num_hash_tables, probes=probes, iters=iters)
    return lsh.build(hasher, self.kernel.get_value(), self.bias.get_value())

  def exact(self, x):
    """Scores of all neurons, f32[B, out_features] (O(B N d): for evaluation)."""
    return x @ self.kernel.get_value().T + self.bias.get_value()

  def rebuild_index(self):
    self.index.set_value(lsh.rebuild(self.index.get_value(), self.kernel.get_value(),
                                     self.bias.get_value()))
