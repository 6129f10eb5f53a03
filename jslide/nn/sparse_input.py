"""The input layer for sparse bag-of-features data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jslide.initializers import chunked
from jslide.nn.variables import Table
from jslide.ops import embedding_bag


class SparseInput(nnx.Module):
  """``h = sum_k feat_vals[k] * kernel[feat_ids[k]] + bias``: f32[B, features].

  The table ``kernel: Table[num_features, features]`` receives a row-sparse gradient under
  :func:`jslide.value_and_grad`; the bias is an ordinary ``nnx.Param``.
  """

  def __init__(self, num_features: int, features: int, *, rngs: nnx.Rngs,
               stddev: float | None = None):
    stddev = stddev if stddev is not None else 1.0 / jnp.sqrt(features)
    init = jax.jit(chunked(jax.nn.initializers.normal(stddev)), static_argnums=(1, 2))
    self.num_features, self.features = num_features, features
    self.kernel = Table(init(rngs.params(), (num_features, features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))

  def __call__(self, feat_ids, feat_vals):
    """feat_ids int[..., F] (-1 padding), feat_vals f32[..., F] -> f32[..., features]."""
    return embedding_bag(feat_ids, feat_vals, self.kernel.get_value()) + self.bias.get_value()
