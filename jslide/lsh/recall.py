"""How well an index retrieves: recall of the exact top-k within the retrieved set."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jslide._checks import int32_ids


def recall_of_top_k(retrieved_ids, exact_top_ids) -> jax.Array:
  """f32[B]: for each example, the fraction of its exact top-k ids found among its retrieved ids.

  Args:
    retrieved_ids: int[B, A], what the index returned (-1 padding).
    exact_top_ids: int[B, k], the ids of the k highest exact scores (e.g. ``jax.lax.top_k``
      of the layer's full scores).
  """
  fn = "recall_of_top_k"
  retrieved_ids = int32_ids(fn, "retrieved_ids", retrieved_ids, ndim=2)
  exact_top_ids = int32_ids(fn, "exact_top_ids", exact_top_ids, ndim=2)
  if retrieved_ids.shape[0] != exact_top_ids.shape[0]:
    raise ValueError(f"{fn}: retrieved_ids has {retrieved_ids.shape[0]} rows, exact_top_ids "
                     f"{exact_top_ids.shape[0]}")
  # Sorted membership: O(B (A + k) log A) rather than a [B, k, A] comparison.
  ordered = jnp.sort(retrieved_ids, axis=1)
  pos = jax.vmap(jnp.searchsorted)(ordered, exact_top_ids)
  found = jnp.take_along_axis(ordered, jnp.minimum(pos, ordered.shape[1] - 1), axis=1)
  return jnp.mean((found == exact_top_ids) & (exact_top_ids >= 0), axis=1)
