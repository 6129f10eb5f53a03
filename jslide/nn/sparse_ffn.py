"""A transformer feed-forward block in which each token computes only the hidden neurons its
input retrieves from an LSH index over the up-projection rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jslide import lsh
from jslide._checks import features_last, positive_int
from jslide.initializers import check_param_dtype, init_table
from jslide.nn.variables import Index, Table
from jslide.ops import embedding_bag, sparse_linear


def ffn_parameters(features: int, hidden: int, *, kernel_init, bias_init, param_dtype, rngs,
                   tables: tuple = (nnx.Param, nnx.Param, nnx.Param, nnx.Param)):
  """(up, up_bias, down, down_bias) of a feed-forward block, as the Variable types
  ``tables`` says. The rule of every FFN: the kernels [hidden, features], one row per hidden
  neuron, in ``param_dtype`` (float32 or bfloat16), from ``kernel_init(key, shape, dtype)``
  (default LeCun normal: standard deviation ``features ** -0.5`` for ``up``, ``hidden **
  -0.5`` for ``down``, their fan-ins); the biases float32, from ``bias_init`` (default
  zeros)."""
  up_init = kernel_init or nnx.initializers.normal(features ** -0.5)
  down_init = kernel_init or nnx.initializers.normal(hidden ** -0.5)
  # The kernels' keys first: default biases draw none, so models built before bias_init
  # existed keep their weights.
  up = init_table(up_init, rngs.params(), (hidden, features), param_dtype)
  down = init_table(down_init, rngs.params(), (hidden, features), param_dtype)
  if bias_init is None:
    up_bias, down_bias = jnp.zeros((hidden,), jnp.float32), jnp.zeros((features,), jnp.float32)
  else:
    up_bias = init_table(bias_init, rngs.params(), (hidden,), jnp.float32)
    down_bias = init_table(bias_init, rngs.params(), (features,), jnp.float32)
  up_t, up_bias_t, down_t, down_bias_t = tables
  return up_t(up), up_bias_t(up_bias), down_t(down), down_bias_t(down_bias)


def relu_ffn(x, up, up_bias, down, down_bias):
  """``relu(x @ up.T + up_bias) @ down + down_bias`` with every hidden neuron: up and down
  f32[hidden, features], one row per neuron."""
  return jax.nn.relu(x @ up.T + up_bias) @ down + down_bias


class SparseFFN(nnx.Module):
  """``y = relu(x @ up.T + up_bias) @ down + down_bias`` over the ``active`` hidden neurons
  each token retrieves.

  A token's hidden neuron n fires as much as ``x . up[n] + up_bias[n]`` is large, a maximum
  inner product: the LSH index over the rows of ``up`` (k-means buckets by default,
  :class:`jslide.lsh.ClusterHash`) returns the neurons likely to score highest, padded with
  random ones to ``active``. Only those are computed: the up-projection gathers their rows
  (:func:`jslide.sparse_linear`), the down-projection is the weighted sum of their rows of
  ``down`` (:func:`jslide.embedding_bag`), so the cost is O(tokens * active * features), and
  under :func:`jslide.value_and_grad` both tables (``up``, ``down``) and ``up_bias`` get
  row-sparse gradients. :meth:`exact` computes every neuron (evaluation, and measuring what
  sparsity costs).

  Layout: ``up: Table[hidden, features]`` and ``down: Table[hidden, features]``, one row per
  hidden neuron (what the kernels gather and the index hashes); ``up_bias: Table[hidden]``;
  ``down_bias: nnx.Param[features]`` (:func:`ffn_parameters`: ``kernel_init``,
  ``bias_init``, ``param_dtype``). Rebuild the index (:meth:`rebuild_index`, or the train
  step's schedule) as the weights move.
  """

  def __init__(self, features: int, hidden: int, *, active: int,
               hash_family: str | lsh.HashFamily = "cluster",
               num_hashes: int | None = None, num_hash_tables: int | None = None,
               strategy: str | None = None, fill_group: int | None = 1,
               kernel_init=None, bias_init=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    fn = "SparseFFN"
    positive_int(fn, "features", features)
    positive_int(fn, "hidden", hidden)
    positive_int(fn, "active", active)
    if active > hidden:
      raise ValueError(f"{fn}: active={active} must be at most hidden={hidden}")
    check_param_dtype(fn, param_dtype)
    family = lsh.hash_family(hash_family)
    strategy = family.strategy if strategy is None else strategy
    if strategy not in lsh.STRATEGIES:
      raise ValueError(f"{fn}: strategy must be one of {sorted(lsh.STRATEGIES)}, "
                       f"got {strategy!r}")
    self.features, self.hidden, self.active = features, hidden, active
    self.strategy, self.fill_group = strategy, fill_group
    self.up, self.up_bias, self.down, self.down_bias = ffn_parameters(
        features, hidden, kernel_init=kernel_init, bias_init=bias_init,
        param_dtype=param_dtype, rngs=rngs, tables=(Table, Table, Table, nnx.Param))
    hasher = family.hasher(rngs.params(), features, num_rows=hidden, active=active,
                           num_hashes=num_hashes, num_hash_tables=num_hash_tables)
    self.index = Index(jax.jit(lsh.build)(hasher, self.up.get_value(),
                                          self.up_bias.get_value()))

  def active_ids(self, x, *, key):
    """int32[T, active]: the hidden neurons retrieved for the tokens x f32[T, features]."""
    return lsh.query(self.index.get_value(), jax.lax.stop_gradient(x), active=self.active,
                     key=key, strategy=self.strategy, fill_group=self.fill_group)

  def __call__(self, x, *, key):
    """f32[..., features] -> f32[..., features], computing ``active`` neurons per token."""
    features_last("SparseFFN", "x", x, self.features)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, self.features)
    ids = self.active_ids(x2, key=key)
    h = jax.nn.relu(sparse_linear(x2, self.up.get_value(), self.up_bias.get_value(), ids))
    y = embedding_bag(ids, h, self.down.get_value()) + self.down_bias.get_value()
    return y.reshape(*lead, self.features)

  def exact(self, x):
    """The same block with every hidden neuron computed, f32[..., features]."""
    features_last("SparseFFN", "x", x, self.features)
    return relu_ffn(x, self.up.get_value(), self.up_bias.get_value(), self.down.get_value(),
                    self.down_bias.get_value())

  def rebuild_index(self):
    self.index.set_value(lsh.rebuild(self.index.get_value(), self.up.get_value(),
                                     self.up_bias.get_value()))


class DenseFFN(nnx.Module):
  """The dense baseline of :class:`SparseFFN`, the same parameters as plain ``nnx.Param``
  (:func:`ffn_parameters`): every hidden neuron computed, dense gradients."""

  def __init__(self, features: int, hidden: int, *, kernel_init=None, bias_init=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    positive_int("DenseFFN", "features", features)
    positive_int("DenseFFN", "hidden", hidden)
    check_param_dtype("DenseFFN", param_dtype)
    self.features, self.hidden = features, hidden
    self.up, self.up_bias, self.down, self.down_bias = ffn_parameters(
        features, hidden, kernel_init=kernel_init, bias_init=bias_init,
        param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, *, key=None):
    del key
    features_last("DenseFFN", "x", x, self.features)
    return relu_ffn(x, self.up.get_value().astype(x.dtype), self.up_bias.get_value(),
                    self.down.get_value().astype(x.dtype), self.down_bias.get_value())

  exact = __call__
