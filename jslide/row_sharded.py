"""Tables split by rows over one axis of a device mesh (vocabulary parallelism), for tables
bigger than one device's memory: device i of the axis holds rows ``[i * rows, (i + 1) *
rows)`` of an [N, d] table (``rows = N / devices``), and every device holds the same batch.

A model's layers are split by :func:`split_rows` (every variable stacked, entry i being
device i's) and trained by :func:`jslide.train.make_train_step` with ``row_axis``; a split
:class:`jslide.nn.SparseDense` or :class:`jslide.nn.SparseSoftmaxHead` reads its input
through :func:`shared_input` and is trained with :func:`active_softmax_cross_entropy`; a
split token embedding (:class:`jslide.nn.SparseTransformerLM`) sums its parts with
:func:`sum_over_shards`. :func:`each_shard` runs any function of a device's entry (an index
rebuild, an evaluation).

What crosses devices is O(batch) per example, never a table nor [batch, N] scores:

- :func:`embedding_bag`: each device sums the features whose rows it holds; the partial sums
  are all-reduced, O(batch x d).
- :func:`active_softmax_cross_entropy`: each device scores its own part of every example's
  active set (the active ids in its rows, :func:`local_ids`); the softmax over the union is
  formed from a max and a sum of exponentials per example (all-reduced, O(batch)), as
  Megatron's vocabulary-parallel cross-entropy forms the full softmax.
- :func:`shared_input`: the gradient of a split layer's input, all-reduced, O(batch x d).
- :func:`top_k`: each device's k best of its rows, gathered (O(batch x k x devices)) and
  merged.

The gradients of a device's rows come from its own scores only: a table's gradient and its
optimizer state stay on their shard. Every function is the unsharded one to float rounding
(``tests/test_row_sharded.py``, 4 devices against 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jslide import ops
from jslide.lsh.index import build as lsh_build
from jslide.losses import _check_active, chunked_log_partition

__all__ = ["active_softmax_cross_entropy", "chunked_softmax_cross_entropy", "each_shard", "embedding_bag", "global_ids",
           "check_local", "keep_layer_rows", "local_ids", "local_state", "shard_start", "shared_input", "split_rows", "sum_over_shards",
           "stacked_state", "top_k"]


def shard_start(rows: int, axis: str) -> jax.Array:
  """int32 scalar: the first row this device holds, of ``rows`` per device of ``axis``."""
  return (jax.lax.axis_index(axis) * rows).astype(jnp.int32)


def local_ids(ids, rows: int, axis: str) -> jax.Array:
  """int32, shaped as ``ids``: each global row id (-1 padding) as a row of this device's
  shard (``rows`` rows per device of ``axis``), -1 where another device holds it."""
  ids = jnp.asarray(ids, jnp.int32)
  local = ids - shard_start(rows, axis)
  return jnp.where((ids >= 0) & (local >= 0) & (local < rows), local, -1)


def global_ids(local, rows: int, axis: str) -> jax.Array:
  """int32, shaped as ``local``: rows of this device's shard (-1 padding) as global ids."""
  local = jnp.asarray(local, jnp.int32)
  return jnp.where(local >= 0, local + shard_start(rows, axis), -1)


def split_rows(model, shards: int, axis: str = "rows"):
  """``model`` with every layer that can be split by rows (a module with a ``keep_rows``
  method: :class:`jslide.nn.SparseDense`) split into ``shards`` blocks of rows, in the
  layout a row-sharded training step takes (:func:`jslide.train.make_train_step` with
  ``row_axis=axis``): every variable gets a leading axis of ``shards``, device i of mesh
  axis ``axis`` holding entry i. A split layer's entry i holds rows ``[i * rows, (i + 1) *
  rows)``, an index over them and ``1 / shards`` of the active set; every other variable
  is the same in every entry (a replica per device, as a replicated array would be).

  The whole model is built on the host first: a model whose table does not fit one host
  would build each shard on its own devices (not done here).
  """
  from flax import nnx  # here: jslide.nn imports this module

  if not isinstance(shards, int) or shards < 1:
    raise ValueError(f"row_sharded.split_rows: shards must be an int >= 1, got {shards!r}")
  parts, split = [], 0
  for shard in range(shards):
    part = nnx.clone(model)  # new Variables (the arrays shared until a layer keeps its rows)
    split = 0
    for _, module in nnx.iter_modules(part):
      if callable(getattr(module, "keep_rows", None)):
        module.keep_rows(shard, shards, axis)
        split += 1
    parts.append(nnx.split(part))
  if not split:
    raise ValueError("row_sharded.split_rows: the model has no layer that can be split by rows "
                     "(a module with a keep_rows method, as jslide.nn.SparseDense)")
  return nnx.merge(parts[0][0], stacked_state([state for _, state in parts]))


def keep_layer_rows(layer, fn: str, name: str, shard: int, shards: int, axis: str) -> int:
  """Keeps rows ``[shard * rows, (shard + 1) * rows)`` of ``layer.kernel`` and ``layer.bias``
  (``rows``: the ``layer.<name>`` rows over ``shards``, returned) and rebuilds
  ``layer.index`` over them with the same hash functions; ``layer.row_axis`` becomes
  ``axis``. The common part of the layers' ``keep_rows`` (:func:`split_rows`); ValueError
  naming ``fn`` for a layer already split or rows that do not divide."""
  if layer.row_axis is not None:
    raise ValueError(f"{fn}: the layer is already split over {layer.row_axis!r}")
  total = getattr(layer, name)
  if total % shards:
    raise ValueError(f"{fn}: {name}={total} must be a multiple of shards={shards}")
  rows = total // shards
  kernel = layer.kernel.get_value()[shard * rows:(shard + 1) * rows]
  bias = layer.bias.get_value()[shard * rows:(shard + 1) * rows]
  layer.kernel.set_value(kernel)
  layer.bias.set_value(bias)
  layer.index.set_value(lsh_build(layer.index.get_value().hasher, kernel, bias))
  layer.row_axis = axis
  return rows


def check_local(fn: str, axis: str, table) -> None:
  """ValueError unless ``table`` (a split layer's kernel) is one device's rows: a stacked
  state's layer is called inside ``shard_map`` over ``axis``."""
  if table.ndim != 2:
    raise ValueError(f"{fn}: the layer is split over {axis!r} and holds every shard (kernel "
                     f"{table.shape}); call it inside shard_map over that axis "
                     "(jslide.train.make_train_step(row_axis=...), "
                     "jslide.row_sharded.each_shard)")


def stacked_state(states):
  """The pytrees ``states`` (one per device, the same structure) stacked on a new leading
  axis: the layout of a row-sharded state (:func:`split_rows`)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def local_state(tree):
  """Inside ``shard_map`` over the row axis: this device's entry of a stacked state (every
  leaf's leading axis, of size 1 here, dropped)."""
  return jax.tree.map(lambda x: x[0], tree)


def _restack(tree):
  return jax.tree.map(lambda x: x[None], tree)


def each_shard(fn, mesh, axis: str = "rows", *, returns_state: bool = False):
  """``fn(state, *args)`` of every device's own entry of a stacked state (:func:`split_rows`)
  over mesh axis ``axis``, jitted: ``args`` replicated; the result the same on every device
  (``returns_state=False``: e.g. metrics, scores merged with :func:`top_k`), or a new stacked
  state (``returns_state=True``: e.g. an index rebuild; the state is donated)."""
  P = jax.sharding.PartitionSpec

  def local(state, *args):
    out = fn(local_state(state), *args)
    return _restack(out) if returns_state else out

  def run(state, *args):
    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis),) + (P(),) * len(args),
                         out_specs=P(axis) if returns_state else P(),
                         check_vma=False)(state, *args)

  return jax.jit(run, donate_argnums=(0,) if returns_state else ())


def embedding_bag(feat_ids, feat_vals, w_shard, axis: str):
  """:func:`jslide.embedding_bag` of a table split by rows over ``axis``: f32[..., d].

  Args:
    feat_ids: int[..., F], global feature ids in [-1, N) (the same on every device).
    feat_vals: f32[..., F].
    w_shard: f32[rows, d] (or bf16), this device's rows of the [N, d] table.
  """
  rows = w_shard.shape[0]
  partial = ops.embedding_bag(local_ids(feat_ids, rows, axis), feat_vals, w_shard)
  return sum_over_shards(partial, axis)


def sum_over_shards(x, axis: str):
  """``psum(x, axis)`` whose gradient is the output's, unsummed: each device's ``x`` is its
  rows' part of a result every device then uses alike (an embedding bag), so the output's
  gradient, the same on every device, is already the gradient of each part (Megatron's
  reduce from a tensor-parallel region). For a step differentiated inside ``shard_map``."""
  return _sum_over_shards(x, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sum_over_shards(x, axis):
  return jax.lax.psum(x, axis)


def _sum_over_shards_fwd(x, axis):
  return jax.lax.psum(x, axis), None


def _sum_over_shards_bwd(axis, _, g):
  del axis
  return (g,)


_sum_over_shards.defvjp(_sum_over_shards_fwd, _sum_over_shards_bwd)


def shared_input(x, axis: str):
  """``x`` (the same on every device of ``axis``: what a row-sharded layer reads), whose
  gradient is summed over ``axis``: each device's gradient of ``x`` comes from its own rows
  only, and the sum is the whole layer's (Megatron's copy into a tensor-parallel region).
  Whatever computed ``x`` then gets the same, complete gradient on every device."""
  return _shared_input(x, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _shared_input(x, axis):
  return x


def _shared_input_fwd(x, axis):
  return x, None


def _shared_input_bwd(axis, _, g):
  return (jax.lax.psum(g, axis),)


_shared_input.defvjp(_shared_input_fwd, _shared_input_bwd)


def active_softmax_cross_entropy(logits, active_ids, labels, axis: str):
  """:func:`jslide.losses.active_softmax_cross_entropy` over the union of every device's
  part of each example's active set, f32[B] (the same on every device).

  Args:
    logits: f32[B, A], this device's scores of its active ids.
    active_ids: int[B, A], this device's part of each example's active set, as global ids
      (-1 padding: the ids another device holds, or none).
    labels: int[B, L], global label ids (-1 padding), the same on every device.

  The softmax's normalizer is ``m + log(sum over devices of sum exp(logits - m))`` with ``m``
  the largest valid logit of the example over the devices; the target spreads ``1 / (labels
  found in the union)`` over them. Two collectives, O(B) each: a max, and one sum of the
  exponentials, the labels found and their logits. The gradient of ``logits`` is this
  device's part of ``softmax - target``, computed here with no collective (the losses being
  the same on every device, each device differentiates its own rows' share).
  """
  logits, active_ids, labels = _check_active("row_sharded.active_softmax_cross_entropy",
                                             logits, active_ids, labels)
  return _sharded_cross_entropy(logits, jnp.asarray(active_ids, jnp.int32),
                                jnp.asarray(labels, jnp.int32), axis)


def _cross_entropy_parts(logits, active_ids, labels, axis):
  """(loss f32[B], softmax f32[B, A], target f32[B, A]) of this device's active ids."""
  valid = active_ids >= 0
  masked = jnp.where(valid, logits, -jnp.inf)
  m = jax.lax.pmax(jnp.max(masked, axis=-1), axis)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  exp = jnp.where(valid, jnp.exp(logits - m[:, None]), 0.0)
  hit = (active_ids[..., :, None] == labels[..., None, :]) & (labels[..., None, :] >= 0)
  hit = jnp.any(hit, axis=-1) & valid
  # one all-reduce for the three per-example sums
  sums = jax.lax.psum(jnp.stack([jnp.sum(exp, axis=-1),
                                 jnp.sum(hit, axis=-1).astype(jnp.float32),
                                 jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)]), axis)
  total = jnp.maximum(sums[0], jnp.finfo(jnp.float32).tiny)
  hits = sums[1]
  log_z = m + jnp.log(total)
  loss = jnp.where(hits > 0, log_z - sums[2] / jnp.maximum(hits, 1.0), 0.0)
  softmax = exp / total[:, None]
  target = hit.astype(jnp.float32) / jnp.maximum(hits, 1.0)[:, None]
  return loss, jnp.where((hits > 0)[:, None], softmax, 0.0), target


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sharded_cross_entropy(logits, active_ids, labels, axis):
  return _cross_entropy_parts(logits, active_ids, labels, axis)[0]


def _sharded_cross_entropy_fwd(logits, active_ids, labels, axis):
  loss, softmax, target = _cross_entropy_parts(logits, active_ids, labels, axis)
  return loss, (softmax - target, active_ids, labels)


def _sharded_cross_entropy_bwd(axis, res, g):
  del axis
  delta, active_ids, labels = res
  zero = lambda x: np.zeros(x.shape, jax.dtypes.float0)  # noqa: E731 (integer inputs)
  return g[:, None] * delta, zero(active_ids), zero(labels)


_sharded_cross_entropy.defvjp(_sharded_cross_entropy_fwd, _sharded_cross_entropy_bwd)


def chunked_softmax_cross_entropy(x, w_shard, b_shard, targets, axis: str, *,
                                  chunk_size: int = 8192):
  """:func:`jslide.losses.chunked_softmax_cross_entropy` over a table split by rows, f32[T]
  (the same on every device; for evaluation: no gradient is defined through it).

  Args:
    x: f32[T, d], the same on every device. w_shard: [rows, d], b_shard: f32[rows], this
      device's rows. targets: int[T], global ids (-1: padding, loss 0).

  Each device accumulates the log-partition of its rows; the maxima (one all-reduce) and the
  rescaled sums and the target logits (one of [2, T]) combine them: O(T) numbers."""
  targets = jnp.asarray(targets, jnp.int32)
  rows = w_shard.shape[0]
  top, total = chunked_log_partition(x, w_shard, b_shard, chunk_size)
  m = jax.lax.pmax(top, axis)
  local = local_ids(targets, rows, axis)
  target = jnp.where(local >= 0, ops.sparse_linear(x, w_shard, b_shard, local[:, None])[:, 0],
                     0.0)
  sums = jax.lax.psum(jnp.stack([total * jnp.exp(top - m), target]), axis)
  return jnp.where(targets >= 0, m + jnp.log(sums[0]) - sums[1], 0.0)


def top_k(scores, ids, k: int, axis: str):
  """The k best of every device's scored ids, (f32[B, k], int32[B, k]), best first, the same
  on every device: each device's k best, gathered over ``axis`` and merged.

  Args:
    scores: f32[B, A], this device's scores. ids: int[B, A], their global ids (-1: none,
      never chosen before a real id).
    k: at most A.
  """
  if not 1 <= k <= scores.shape[-1]:
    raise ValueError(f"row_sharded.top_k: k must be in [1, {scores.shape[-1]}], got {k}")
  scores = jnp.where(ids >= 0, scores, -jnp.inf)
  best, pos = jax.lax.top_k(scores, k)
  best_ids = jnp.take_along_axis(jnp.asarray(ids, jnp.int32), pos, axis=-1)
  # [devices, B, k] -> [B, devices * k]: every device's candidates of each example
  all_best = jnp.moveaxis(jax.lax.all_gather(best, axis), 0, 1).reshape(best.shape[0], -1)
  all_ids = jnp.moveaxis(jax.lax.all_gather(best_ids, axis), 0, 1).reshape(best.shape[0], -1)
  top, where = jax.lax.top_k(all_best, k)
  return top, jnp.where(jnp.isfinite(top), jnp.take_along_axis(all_ids, where, axis=-1), -1)
