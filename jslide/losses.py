"""Losses over an active set of output neurons."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jslide._checks import float32_array, int32_ids


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
  1/|labels| on each label present in the active set (SLIDE's multi-label loss). Examples
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
