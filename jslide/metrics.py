"""Extreme-classification metrics: precision@k and nDCG@k."""

from __future__ import annotations

import jax.numpy as jnp

from jslide._checks import positive_int


def hits(top_ids, labels):
  """bool[B, K]: whether each ranked prediction is one of the example's labels.

  top_ids: int[B, K] ranked predictions. labels: int[B, L] (-1 padding).
  """
  return jnp.any((top_ids[:, :, None] == labels[:, None, :]) & (labels[:, None, :] >= 0), -1)


def _check_k(fn, top_ids, k):
  positive_int(fn, "k", k)
  if k > jnp.shape(top_ids)[-1]:
    raise ValueError(f"{fn}: k={k} exceeds the {jnp.shape(top_ids)[-1]} predictions in top_ids")


def precision_at_k(top_ids, labels, k: int):
  """f32[B]: the fraction of the top k predictions that are labels."""
  _check_k("precision_at_k", top_ids, k)
  return jnp.mean(hits(top_ids[:, :k], labels), axis=-1)


def ndcg_at_k(top_ids, labels, k: int):
  """f32[B]: DCG@k / ideal DCG@k with binary relevance (0 for examples without labels)."""
  _check_k("ndcg_at_k", top_ids, k)
  discount = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
  dcg = jnp.sum(hits(top_ids[:, :k], labels) * discount, axis=-1)
  n_labels = jnp.minimum(jnp.sum(labels >= 0, axis=-1), k)
  ideal = jnp.sum(jnp.where(jnp.arange(k) < n_labels[:, None], discount, 0.0), axis=-1)
  return jnp.where(ideal > 0, dcg / jnp.maximum(ideal, 1e-12), 0.0)


def summarize(top_ids, labels, mask, ks=(1, 3, 5)) -> dict:
  """Sums (not means) of P@k and nDCG@k over the examples where mask is True."""
  out = {}
  for k in ks:
    out[f"P@{k}"] = jnp.sum(jnp.where(mask, precision_at_k(top_ids, labels, k), 0.0))
    out[f"nDCG@{k}"] = jnp.sum(jnp.where(mask, ndcg_at_k(top_ids, labels, k), 0.0))
  return out


__all__ = ["hits", "precision_at_k", "ndcg_at_k", "summarize"]
