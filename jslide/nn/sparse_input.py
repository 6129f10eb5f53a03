"""The input layer for sparse bag-of-features data."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jslide.initializers import check_param_dtype, init_table
from jslide.nn.variables import Table
from jslide.ops import embedding_bag


class SparseInput(nnx.Module):
  """``h = sum_k feat_vals[k] * kernel[feat_ids[k]] + bias``: f32[B, features].

  Parameters follow ``nnx.Embed`` / ``nnx.Linear`` (``kernel_init``, ``bias_init``,
  ``param_dtype``, ``rngs``). The table ``kernel: Table[num_features, features]`` (float32 or
  bfloat16, ``param_dtype``) receives a row-sparse gradient under
  :func:`jslide.value_and_grad`; the bias is an ordinary float32 ``nnx.Param``.
  """

  def __init__(self, num_features: int, features: int, *,
               kernel_init: nnx.Initializer | None = None,
               bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    check_param_dtype("SparseInput", param_dtype)
    if kernel_init is None:  # unit-variance outputs for unit-norm inputs
      kernel_init = nnx.initializers.normal(1.0 / float(features) ** 0.5)
    self.num_features, self.features = num_features, features
    self.kernel = Table(init_table(kernel_init, rngs.params(), (num_features, features),
                                   param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (features,), jnp.float32))

  def __call__(self, feat_ids, feat_vals):
    """feat_ids int[..., F] (-1 padding), feat_vals f32[..., F] -> f32[..., features]."""
    return embedding_bag(feat_ids, feat_vals, self.kernel.get_value()) + self.bias.get_value()
