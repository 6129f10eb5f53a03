"""Losses over an active set of output neurons."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jslide._checks import float32_array, int32_ids, table_array
from jslide.ops import sparse_linear


def _check_active(fn, logits, active_ids, labels):
  logits = float32_array(fn, "logits", logits)
  active_ids = int32_ids(fn, "active_ids", active_ids)
  labels = int32_ids(fn, "labels", labels)
  if logits.shape != active_ids.shape:
    raise ValueError(f"{fn}: logits shape {logits.shape} must equal active_ids shape "
                     f"{active_ids.shape}")
  if labels.shape[:-1] != active_ids.shape[:-1]:
    raise ValueError(f"{fn}: labels shape {labels.shape} must have active_ids' leading shape "
                     f"{active_ids.shape[:-1]}")
  return logits, active_ids, labels


def label_targets(active_ids, labels):
  """f32[B, A]: each example's target mass spread evenly over its labels in the active set.

  Args:
    active_ids: int[B, A] (-1 padding). labels: int[B, L] (-1 padding).
  """
  hit = (active_ids[..., :, None] == labels[..., None, :]) & (labels[..., None, :] >= 0)
  hit = jnp.any(hit, axis=-1) & (active_ids >= 0)
  count = jnp.sum(hit, axis=-1, keepdims=True)
  return jnp.where(hit, 1.0 / jnp.maximum(count, 1), 0.0).astype(jnp.float32)


def active_softmax_cross_entropy(logits, active_ids, labels):
  """Softmax cross-entropy over each example's active neurons, f32[B].

  The softmax runs over the non-padding entries of ``active_ids``; the target puts mass
  ``1 / len(labels)`` on each label present in the active set (SLIDE's multi-label loss). Examples
  with no label in their active set have loss 0.

  Args:
    logits: f32[B, A]. active_ids: int[B, A] (-1 padding). labels: int[B, L] (-1 padding).
  """
  logits, active_ids, labels = _check_active("active_softmax_cross_entropy", logits,
                                             active_ids, labels)
  valid = active_ids >= 0
  masked = jnp.where(valid, logits, -jnp.inf)
  log_z = jax.nn.logsumexp(masked, axis=-1, keepdims=True)
  log_p = jnp.where(valid, logits - log_z, 0.0)
  return -jnp.sum(label_targets(active_ids, labels) * log_p, axis=-1)


def softmax_cross_entropy(logits, labels):
  """The same loss over all N neurons (dense baseline), f32[B]. labels: int[B, L]."""
  logits = float32_array("softmax_cross_entropy", "logits", logits)
  labels = int32_ids("softmax_cross_entropy", "labels", labels, num_rows=logits.shape[-1])
  n = logits.shape[-1]
  onehot = jax.nn.one_hot(jnp.where(labels >= 0, labels, n), n + 1)[..., :n].sum(-2)
  target = onehot / jnp.maximum(onehot.sum(-1, keepdims=True), 1)
  return -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def active_binary_cross_entropy(logits, active_ids, labels):
  """Binary cross-entropy over each example's active neurons (labels 1, the rest 0), f32[B].

  Summed over the non-padding active neurons of each example.
  """
  logits, active_ids, labels = _check_active("active_binary_cross_entropy", logits,
                                             active_ids, labels)
  valid = active_ids >= 0
  target = (label_targets(active_ids, labels) > 0).astype(logits.dtype)
  per = optax.sigmoid_binary_cross_entropy(jnp.where(valid, logits, 0.0), target)
  return jnp.sum(jnp.where(valid, per, 0.0), axis=-1)


def chunked_log_partition(x, w, b, chunk_size: int):
  """(m f32[T], s f32[T]) with ``logsumexp_n(x @ w[n] + b[n]) = m + log(s)``, accumulated
  over blocks of ``chunk_size`` rows (a running max and sum, as in online softmax): O(T *
  chunk_size) memory. Arguments checked by the caller (x f32[T, d], w [N, d], b f32[N])."""
  n, d = w.shape
  c = min(chunk_size, n)
  blocks = -(-n // c)
  pad = blocks * c - n
  w_blocks = jnp.pad(w, ((0, pad), (0, 0))).reshape(blocks, c, d)
  b_blocks = jnp.pad(b, (0, pad), constant_values=-jnp.inf).reshape(blocks, c)

  def accumulate(carry, block):
    top, total = carry
    logits = x @ block[0].T.astype(x.dtype) + block[1]
    new_top = jnp.maximum(top, jnp.max(logits, axis=-1))
    total = total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(logits - new_top[:, None]), -1)
    return (new_top, total), None

  start = (jnp.full(x.shape[:1], -jnp.inf, x.dtype), jnp.zeros(x.shape[:1], x.dtype))
  return jax.lax.scan(accumulate, start, (w_blocks, b_blocks))[0]


def chunked_softmax_cross_entropy(x, w, b, targets, *, chunk_size: int = 8192):
  """The exact softmax cross-entropy over all N rows of a layer, f32[T], without a [T, N]
  array: ``logsumexp_n(x @ w[n] + b[n]) - (x @ w[t] + b[t])``.

  The log-partition is accumulated over blocks of ``chunk_size`` rows (a running max and
  sum, as in online softmax), so memory is O(T * chunk_size): honest perplexity of a
  large-vocabulary model.

  Args:
    x: f32[T, d]. w: f32 or bf16[N, d]. b: f32[N]. targets: int[T] in [-1, N) (-1: padding,
      loss 0). Out-of-range targets are an error under ``jit`` too: the target logit is a
      :func:`jslide.sparse_linear` gather, whose kernel checks the ids.
  """
  fn = "chunked_softmax_cross_entropy"
  x = float32_array(fn, "x", x, ndim=2)
  w = table_array(fn, "w", w, ndim=2)
  b = float32_array(fn, "b", b, ndim=1)
  n, d = w.shape
  if x.shape[1] != d or b.shape != (n,):
    raise ValueError(f"{fn}: x {x.shape}, w {w.shape} and b {b.shape} must be [T, d], [N, d] "
                     "and [N]")
  targets = int32_ids(fn, "targets", targets, num_rows=n, ndim=1)
  if targets.shape != x.shape[:1]:
    raise ValueError(f"{fn}: targets shape {targets.shape} must be ({x.shape[0]},)")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"{fn}: chunk_size must be a positive int, got {chunk_size!r}")
  top, total = chunked_log_partition(x, w, b, chunk_size)
  target_logit = sparse_linear(x, w, b, targets[:, None])[:, 0]
  return jnp.where(targets >= 0, top + jnp.log(total) - target_logit, 0.0)


__all__ = ["label_targets", "active_softmax_cross_entropy", "softmax_cross_entropy",
           "active_binary_cross_entropy", "chunked_softmax_cross_entropy", "chunked_log_partition"]
