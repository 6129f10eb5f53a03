"""A transformer feed-forward block whose hidden neurons come in blocks: each token computes
the few blocks its input scores highest, as dense matrix products over the tokens that chose
each block.

Why blocks: a token that gathers its own active neurons (:class:`jslide.nn.SparseFFN`) reads
every weight it uses once, for itself, so the step is bound by memory traffic and reaches a
fraction of the arithmetic the sparsity saves. When tokens choose among few blocks, the
tokens that chose a block share its weights: one [capacity, features] x [features, block]
product per block runs at the speed of a dense matrix product.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jslide._checks import features_last, positive_int
from jslide.initializers import check_param_dtype
from jslide.nn.sparse_ffn import ffn_parameters, relu_ffn
from jslide.nn.variables import RouteBias
from jslide.ops import embedding_bag


def route_to_blocks(scores, blocks_per_token: int, capacity: int):
  """Each token's ``blocks_per_token`` best blocks, and its places in the blocks' buffers.

  Args:
    scores: f32[T, C], token t's score for block c.
    blocks_per_token: how many blocks each token takes (at most C).
    capacity: the tokens a block's buffer holds.
  Returns:
    (slots int32[T, blocks_per_token], tokens int32[C * capacity]): ``slots[t, j]`` is
    ``block * capacity + position`` for token t's j-th best block, or -1 when that block's
    buffer was full (the token goes without it); ``tokens[s]`` is the token in slot s, or -1.

  Tokens take places in order (token 0's blocks first), so where a token lands depends only
  on the tokens before it (:class:`BlockSparseFFN` orders a batch of sequences by position).
  """
  _, blocks = jax.lax.top_k(scores, blocks_per_token)
  return _place_in_blocks(blocks, scores.shape[1], capacity)


def _place_in_blocks(blocks, num_blocks: int, capacity: int):
  """:func:`route_to_blocks` for the chosen blocks int32[T, k] of each token."""
  t, blocks_per_token = blocks.shape
  flat = blocks.reshape(-1)
  taken = (flat[:, None] == jnp.arange(num_blocks, dtype=flat.dtype)[None, :]).astype(jnp.int32)
  position = jnp.take_along_axis(jnp.cumsum(taken, axis=0), flat[:, None], axis=1)[:, 0] - 1
  keep = position < capacity
  slots = jnp.where(keep, flat * capacity + position, -1).astype(jnp.int32)
  token_of = jnp.repeat(jnp.arange(t, dtype=jnp.int32), blocks_per_token)
  tokens = jnp.full((num_blocks * capacity + 1,), -1, jnp.int32)
  tokens = tokens.at[jnp.where(keep, slots, num_blocks * capacity)].set(token_of)[:-1]
  return slots.reshape(t, blocks_per_token), tokens


def block_scores(x, up, up_bias, num_blocks: int):
  """f32[T, C]: ``x . mean(up[block]) + mean(up_bias[block])``, the mean pre-activation of
  each block's neurons (no gradient: routing is a choice, not a parameter)."""
  hidden, features = up.shape
  centroids = jnp.mean(up.reshape(num_blocks, hidden // num_blocks, features), axis=1)
  bias = jnp.mean(up_bias.reshape(num_blocks, -1), axis=1)
  return jax.lax.stop_gradient(x @ centroids.T.astype(x.dtype) + bias)


def block_sparse_ffn(x, up, up_bias, down, down_bias, *, num_blocks: int,
                     blocks_per_token: int, capacity: int, route_bias=None):
  """``relu(x @ up.T + up_bias) @ down + down_bias`` over each token's best blocks.

  Args:
    x: f32[T, features].
    up, down: [hidden, features], one row per hidden neuron; block c holds neurons
      ``c * hidden // num_blocks`` to ``(c + 1) * hidden // num_blocks - 1``.
    up_bias: f32[hidden]; down_bias: f32[features].
    num_blocks: C, a divisor of hidden.
    blocks_per_token: the blocks each token computes: the best by :func:`block_scores` plus
      ``route_bias`` (f32[C], default 0), which moves choices, not outputs.
    capacity: tokens per block buffer (:func:`route_to_blocks`); ``T`` never drops any.
  Returns:
    (y f32[T, features], routing statistics: ``load`` f32[C], the tokens that chose each
    block, full or not, and ``spread`` f32[], the mean over tokens of the standard deviation
    of their block scores). The
    cost is O(C * capacity * hidden / C * features): with ``capacity = factor * T *
    blocks_per_token / C``, ``factor * blocks_per_token / C`` of the dense block's.
  """
  t, features = x.shape
  if up.shape[0] % num_blocks or not 1 <= blocks_per_token <= num_blocks:
    raise ValueError(f"block_sparse_ffn: num_blocks={num_blocks} must divide hidden="
                     f"{up.shape[0]} and blocks_per_token={blocks_per_token} lie in "
                     f"[1, num_blocks]")
  block = up.shape[0] // num_blocks
  scores = block_scores(x, up, up_bias, num_blocks)
  if route_bias is not None:
    scores = scores + jax.lax.stop_gradient(route_bias)
  _, chosen = jax.lax.top_k(scores, blocks_per_token)
  slots, tokens = _place_in_blocks(chosen, num_blocks, capacity)
  # Dispatch and combine are gathers of rows (jslide.embedding_bag, -1 = nothing), so their
  # gradients are the C++ scatter kernels, not XLA's serial scatter.
  xs = embedding_bag(tokens[:, None], jnp.ones((tokens.size, 1), x.dtype), x)
  xs = xs.reshape(num_blocks, capacity, features)
  up3 = up.reshape(num_blocks, block, features).astype(x.dtype)
  down3 = down.reshape(num_blocks, block, features).astype(x.dtype)
  h = jax.nn.relu(jnp.einsum("cnd,csd->cns", xs, up3) + up_bias.reshape(num_blocks, 1, block))
  out = jnp.einsum("cns,csd->cnd", h, down3).reshape(num_blocks * capacity, features)
  y = embedding_bag(slots, jnp.ones(slots.shape, x.dtype), out) + down_bias
  load = jnp.zeros((num_blocks,), jnp.float32).at[chosen.reshape(-1)].add(1.0)
  return y, {"load": load, "spread": jnp.mean(jnp.std(scores, axis=1))}


class BlockSparseFFN(nnx.Module):
  """``y = relu(x @ up.T + up_bias) @ down + down_bias`` over the blocks of hidden neurons
  each token scores highest.

  The ``hidden`` neurons form ``num_blocks`` blocks of consecutive neurons. A token scores
  each block by its neurons' mean pre-activation (``x . mean(up[block]) +
  mean(up_bias[block])``, :func:`block_scores`) and computes the ``active // block`` best
  blocks exactly; a block computes all the tokens that chose it as one matrix product, up to
  ``capacity_factor`` times its fair share of the tokens (a token that finds a block full
  goes without it, as in mixture-of-experts layers; earlier positions come first).

  Loads are balanced as in DeepSeek-V3 (auxiliary-loss-free balancing): a per-block offset
  ``route_bias`` (a :class:`jslide.nn.RouteBias` variable) is added to the scores when
  blocks are chosen, and every call moves it by ``balance_rate`` times the scores' spread
  down for the blocks chosen more than a fair share and up for the others. Without it the
  blocks that many tokens train come to score high for every token (on GCIDE, 65-70% of
  the choices found their block full at a capacity factor of 2). As with ``nnx.BatchNorm``,
  ``use_running_average=True`` (which ``model.eval()`` sets; ``model.train()`` clears it)
  keeps the offsets as they are. Since the
  tokens of a batch choose every block, the gradients of ``up`` and ``down`` are dense
  (plain ``nnx.Param``, trained by Optax), and so is their update; the block's arithmetic
  is a fraction ``capacity_factor * active / hidden`` of the dense block's. :meth:`exact`
  computes every neuron.

  Layout as :class:`jslide.nn.DenseFFN`: ``up, down: Param[hidden, features]``,
  ``up_bias: Param[hidden]``, ``down_bias: Param[features]``; ``route_bias:
  RouteBias[num_blocks]``, state that training steps carry (``jslide.nn.make_train_step``).
  """

  def __init__(self, features: int, hidden: int, *, active: int | None = None,
               num_blocks: int = 64, capacity_factor: float = 1.5,
               balance_rate: float = 0.05, use_running_average: bool = False,
               kernel_init=None, bias_init=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    fn = "BlockSparseFFN"
    positive_int(fn, "features", features)
    positive_int(fn, "hidden", hidden)
    positive_int(fn, "num_blocks", num_blocks)
    check_param_dtype(fn, param_dtype)
    num_blocks = min(num_blocks, hidden)
    if hidden % num_blocks:
      raise ValueError(f"{fn}: hidden={hidden} must be a multiple of num_blocks={num_blocks}")
    block = hidden // num_blocks
    active = max(1, hidden // 20) if active is None else active
    positive_int(fn, "active", active)
    if active > hidden:
      raise ValueError(f"{fn}: active={active} must be at most hidden={hidden}")
    if not (isinstance(capacity_factor, (int, float)) and math.isfinite(capacity_factor)
            and capacity_factor > 0):
      raise ValueError(f"{fn}: capacity_factor must be a positive number, got "
                       f"{capacity_factor!r}")
    if not (isinstance(balance_rate, (int, float)) and math.isfinite(balance_rate)
            and balance_rate >= 0):
      raise ValueError(f"{fn}: balance_rate must be a number >= 0, got {balance_rate!r}")
    self.features, self.hidden, self.num_blocks, self.block = features, hidden, num_blocks, block
    self.balance_rate = float(balance_rate)
    self.use_running_average = use_running_average
    self.blocks_per_token = max(1, round(active / block))
    self.active = self.blocks_per_token * block  # neurons per token, a whole number of blocks
    self.capacity_factor = float(capacity_factor)
    self.up, self.up_bias, self.down, self.down_bias = ffn_parameters(
        features, hidden, kernel_init=kernel_init, bias_init=bias_init,
        param_dtype=param_dtype, rngs=rngs)
    self.route_bias = RouteBias(jnp.zeros((num_blocks,), jnp.float32))

  def fair_share(self, tokens: int) -> float:
    """The (token, block) choices per block of a batch of ``tokens``, were loads even."""
    return tokens * self.blocks_per_token / self.num_blocks

  def capacity(self, tokens: int) -> int:
    """Tokens per block buffer for a batch of ``tokens``: ``capacity_factor`` times a fair
    share, at most ``tokens`` (no token is ever dropped when every block can hold all)."""
    return max(1, min(tokens, math.ceil(self.capacity_factor * self.fair_share(tokens))))

  def _in_order(self, x):
    """x f32[..., features] as f32[tokens, features] in routing order: for x f32[B, T,
    features] (sequences of T positions) position by position (every sequence's first
    token, then every second token, ...), so no token's result depends on a later position
    of any sequence; other shapes row-major."""
    features_last("BlockSparseFFN", "x", x, self.features)
    xt = jnp.moveaxis(x, -2, 0) if x.ndim >= 3 else x
    return xt, xt.reshape(-1, self.features)

  def routing(self, x):
    """(slots int32[tokens, blocks_per_token], tokens int32[num_blocks * capacity]) of
    :func:`route_to_blocks` for x f32[..., features], its tokens in routing order."""
    _, x2 = self._in_order(x)
    scores = block_scores(x2, self.up.get_value(), self.up_bias.get_value(), self.num_blocks)
    scores = scores + self.route_bias.get_value()
    return route_to_blocks(scores, self.blocks_per_token, self.capacity(x2.shape[0]))

  def dropped_fraction(self, x):
    """f32[]: the share of (token, chosen block) pairs of x f32[..., features] that found
    the block full."""
    slots, _ = self.routing(x)
    return jnp.mean(slots < 0)

  def __call__(self, x, *, key=None):
    """f32[..., features] -> f32[..., features], ``active`` neurons per token, tokens routed
    in the order of :meth:`_in_order` (``key`` is unused: routing is deterministic). Moves
    ``route_bias`` toward balanced loads unless ``use_running_average`` (see the class)."""
    del key
    xt, x2 = self._in_order(x)
    bias = self.route_bias.get_value()
    y, stats = block_sparse_ffn(
        x2, self.up.get_value(), self.up_bias.get_value(), self.down.get_value(),
        self.down_bias.get_value(), num_blocks=self.num_blocks,
        blocks_per_token=self.blocks_per_token, capacity=self.capacity(x2.shape[0]),
        route_bias=bias)
    if self.balance_rate and not self.use_running_average:
      fair = self.fair_share(x2.shape[0])
      step = self.balance_rate * stats["spread"] * jnp.sign(stats["load"] - fair)
      self.route_bias.set_value(bias - step)
    y = y.reshape(xt.shape)
    return jnp.moveaxis(y, 0, -2) if x.ndim >= 3 else y

  def exact(self, x):
    """The same block with every hidden neuron computed, f32[..., features]."""
    features_last("BlockSparseFFN", "x", x, self.features)
    return relu_ffn(x, self.up.get_value().astype(x.dtype), self.up_bias.get_value(),
                    self.down.get_value().astype(x.dtype), self.down_bias.get_value())
