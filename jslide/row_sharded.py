"""Tables split by rows over one axis of a device mesh (vocabulary parallelism), for tables
bigger than one device's memory. Used inside ``shard_map`` over the axis: device i of the
axis holds rows ``[i * rows, (i + 1) * rows)`` of an [N, d] table (``rows = N / devices``),
and every device holds the same batch.

What crosses devices is O(batch) per example, never a table nor [batch, N] scores:

- :func:`embedding_bag`: each device sums the features whose rows it holds; the partial sums
  are all-reduced, O(batch x d).
- :func:`active_softmax_cross_entropy`: each device scores its own part of every example's
  active set (the active ids in its rows, :func:`local_ids`); the softmax over the union is
  formed from a max and a sum of exponentials per example (all-reduced, O(batch)), as
  Megatron's vocabulary-parallel cross-entropy forms the full softmax.
- :func:`top_k`: each device's k best of its rows, gathered (O(batch x k x devices)) and
  merged.

The gradients of a device's rows come from its own scores only: a table's gradient and its
optimizer state stay on their shard. Every function is the unsharded one to float rounding
(``tests/test_row_sharded.py``, 4 devices against 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jslide import ops
from jslide.losses import _check_active

__all__ = ["active_softmax_cross_entropy", "embedding_bag", "local_ids", "shard_start",
           "top_k"]


def shard_start(rows: int, axis: str) -> jax.Array:
  """int32 scalar: the first row this device holds, of ``rows`` per device of ``axis``."""
  return (jax.lax.axis_index(axis) * rows).astype(jnp.int32)


def local_ids(ids, rows: int, axis: str) -> jax.Array:
  """int32, shaped as ``ids``: each global row id (-1 padding) as a row of this device's
  shard (``rows`` rows per device of ``axis``), -1 where another device holds it."""
  ids = jnp.asarray(ids, jnp.int32)
  local = ids - shard_start(rows, axis)
  return jnp.where((ids >= 0) & (local >= 0) & (local < rows), local, -1)


def embedding_bag(feat_ids, feat_vals, w_shard, axis: str):
  """:func:`jslide.embedding_bag` of a table split by rows over ``axis``: f32[..., d].

  Args:
    feat_ids: int[..., F], global feature ids in [-1, N) (the same on every device).
    feat_vals: f32[..., F].
    w_shard: f32[rows, d] (or bf16), this device's rows of the [N, d] table.
  """
  rows = w_shard.shape[0]
  partial = ops.embedding_bag(local_ids(feat_ids, rows, axis), feat_vals, w_shard)
  return jax.lax.psum(partial, axis)


def active_softmax_cross_entropy(logits, active_ids, labels, axis: str):
  """:func:`jslide.losses.active_softmax_cross_entropy` over the union of every device's
  part of each example's active set, f32[B] (the same on every device).

  Args:
    logits: f32[B, A], this device's scores of its active ids.
    active_ids: int[B, A], this device's part of each example's active set, as global ids
      (-1 padding: the ids another device holds, or none).
    labels: int[B, L], global label ids (-1 padding), the same on every device.

  The softmax's normalizer is ``m + log(sum over devices of sum exp(logits - m))`` with ``m``
  the largest valid logit of the example over the devices (its gradient is zero, so ``m``
  is held constant); the target spreads ``1 / (labels found in the union)`` over them.
  """
  logits, active_ids, labels = _check_active("row_sharded.active_softmax_cross_entropy",
                                             logits, active_ids, labels)
  valid = active_ids >= 0
  masked = jnp.where(valid, logits, -jnp.inf)
  m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(masked, axis=-1)), axis)
  m = jnp.where(jnp.isfinite(m), m, 0.0)[:, None]
  total = jax.lax.psum(jnp.sum(jnp.where(valid, jnp.exp(logits - m), 0.0), axis=-1), axis)
  log_z = m[:, 0] + jnp.log(jnp.maximum(total, jnp.finfo(jnp.float32).tiny))
  hit = (active_ids[..., :, None] == labels[..., None, :]) & (labels[..., None, :] >= 0)
  hit = jnp.any(hit, axis=-1) & valid
  hits = jax.lax.psum(jnp.sum(hit, axis=-1).astype(jnp.float32), axis)
  label_logits = jax.lax.psum(jnp.sum(jnp.where(hit, logits, 0.0), axis=-1), axis)
  return jnp.where(hits > 0, log_z - label_logits / jnp.maximum(hits, 1.0), 0.0)


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
