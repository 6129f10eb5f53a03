"""A causal transformer language model with sparse feed-forward blocks and a sparse softmax
head over a large vocabulary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jslide import lsh, row_sharded
from jslide._checks import int32_ids, positive_int
from jslide.initializers import check_param_dtype, normal_table
from jslide.nn.block_ffn import BlockSparseFFN
from jslide.nn.softmax_head import SparseSoftmaxHead
from jslide.nn.sparse_ffn import DenseFFN, SparseFFN
from jslide.nn.variables import Table
from jslide.ops import embedding_bag

# The FFN kinds by name: constructors ``(features, hidden, *, active, hash_family,
# capacity_factor, table_dtype, rngs)`` carrying each kind's defaults (a sparse FFN computes a
# twentieth of its neurons unless told otherwise). ``table_dtype`` is the dtype of the
# row-sparse tables, so only the sparse FFN (whose kernels are tables) takes it; the others'
# kernels are plain parameters that Optax trains, in float32.
FFN_KINDS = {
    "sparse": lambda features, hidden, *, active, hash_family, capacity_factor, table_dtype,
    rngs: SparseFFN(features, hidden, active=active or max(1, hidden // 20),
                    hash_family=hash_family, param_dtype=table_dtype, rngs=rngs),
    "block": lambda features, hidden, *, active, hash_family, capacity_factor, table_dtype,
    rngs: BlockSparseFFN(features, hidden, active=active, capacity_factor=capacity_factor,
                         rngs=rngs),
    "dense": lambda features, hidden, *, active, hash_family, capacity_factor, table_dtype,
    rngs: DenseFFN(features, hidden, rngs=rngs),
}


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention (``jax.nn.dot_product_attention``, dense)."""

  def __init__(self, features: int, heads: int, *, rngs: nnx.Rngs):
    positive_int("CausalSelfAttention", "heads", heads)
    if features % heads:
      raise ValueError(f"CausalSelfAttention: features={features} must be a multiple of "
                       f"heads={heads}")
    self.heads = heads
    self.qkv = nnx.Linear(features, 3 * features, rngs=rngs)
    self.out = nnx.Linear(features, features, rngs=rngs)

  def __call__(self, x):
    """f32[B, T, features] -> f32[B, T, features]; token t sees tokens 0..t only."""
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.heads, d // self.heads), 3, axis=2)
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.out(y.reshape(b, t, d))


class SparseTransformerBlock(nnx.Module):
  """Pre-norm block: ``x + attention(norm(x))``, then ``x + ffn(norm(x))`` with a
  :class:`SparseFFN` (``ffn="sparse"``, ``active`` neurons of ``hidden`` per token, retrieved
  one by one), a :class:`BlockSparseFFN` (``ffn="block"``, the same share of neurons in
  whole blocks), their dense baseline :class:`DenseFFN` (``ffn="dense"``), or any
  ``ffn(features, hidden, *, rngs) -> module`` (a module with ``__call__(x, *, key)`` and
  ``exact(x)``)."""

  def __init__(self, features: int, heads: int, hidden: int, *, ffn="sparse",
               active: int | None = None, hash_family: str | lsh.HashFamily = "cluster",
               capacity_factor: float = 1.5, table_dtype=jnp.float32, rngs: nnx.Rngs):
    if callable(ffn):
      make = lambda features, hidden, *, rngs, **_: ffn(features, hidden, rngs=rngs)
    elif ffn in FFN_KINDS:
      make = FFN_KINDS[ffn]
    else:
      raise ValueError(f"SparseTransformerBlock: ffn must be one of {tuple(FFN_KINDS)} or a "
                       f"constructor ffn(features, hidden, *, rngs), got {ffn!r}")
    self.attention_norm = nnx.LayerNorm(features, rngs=rngs)
    self.attention = CausalSelfAttention(features, heads, rngs=rngs)
    self.ffn_norm = nnx.LayerNorm(features, rngs=rngs)
    self.ffn = make(features, hidden, active=active, hash_family=hash_family,
                    capacity_factor=capacity_factor, table_dtype=table_dtype, rngs=rngs)

  def __call__(self, x, *, key=None, exact_ffn: bool = False, ffn_inputs: list | None = None):
    """f32[B, T, features] -> f32[B, T, features]. ``key`` seeds the sparse FFN's random
    fill; ``exact_ffn`` computes every FFN neuron instead; the FFN's input is appended to
    ``ffn_inputs`` when given (diagnostics)."""
    x = x + self.attention(self.attention_norm(x))
    h = self.ffn_norm(x)
    if ffn_inputs is not None:
      ffn_inputs.append(h)
    return x + (self.ffn.exact(h) if exact_ffn else self.ffn(h, key=key))


class SparseTransformerLM(nnx.Module):
  """Token embedding (a :class:`Table` with row-sparse gradients) plus learned positions,
  ``layers`` :class:`SparseTransformerBlock`, a final LayerNorm, and a
  :class:`SparseSoftmaxHead` over the vocabulary.

  Training: ``logits, ids = model(tokens, targets, key=key)`` scores, for each of the B*T
  positions, its target, up to ``head_retrieved`` words the head's LSH index retrieves for
  its hidden state, and ``head_sampled`` words sampled from ``proposal`` and shared by the
  batch (with the sampled-softmax correction); feed them to
  :func:`jslide.losses.active_softmax_cross_entropy` with ``targets.reshape(-1, 1)``.
  Evaluation: :meth:`token_nll` is the exact full-softmax loss, chunked over the vocabulary.
  Decoding: :meth:`next_word_candidates` retrieves and rescores exactly.

  ``table_dtype`` (float32 or bfloat16) is the dtype of the row-sparse tables: the token
  embedding, the head's kernel and the sparse FFNs' kernels (:func:`jslide.optim.sparse_adam`
  rounds their bfloat16 updates stochastically); every other parameter is float32.
  """

  def __init__(self, vocab_size: int, *, context: int, features: int = 256, heads: int = 4,
               layers: int = 2, hidden: int = 1024, ffn="sparse",
               ffn_active: int | None = None, ffn_capacity: float = 1.5,
               head_retrieved: int = 256,
               head_sampled: int = 1024, proposal: str = "log-uniform",
               hash_family: str | lsh.HashFamily = "cluster",
               head_bias_init=nnx.initializers.zeros_init(),
               table_dtype=jnp.float32, rngs: nnx.Rngs):
    fn = "SparseTransformerLM"
    for name, value in (("vocab_size", vocab_size), ("context", context),
                        ("features", features), ("layers", layers), ("hidden", hidden)):
      positive_int(fn, name, value)
    check_param_dtype(fn, table_dtype)
    self.vocab_size, self.context, self.features = vocab_size, context, features
    self.embed = Table(normal_table(rngs.params(), vocab_size, features, 0.02, table_dtype))
    self.positions = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, features)))
    self.blocks = nnx.List([
        SparseTransformerBlock(features, heads, hidden, ffn=ffn, active=ffn_active,
                               hash_family=hash_family, capacity_factor=ffn_capacity,
                               table_dtype=table_dtype, rngs=rngs) for _ in range(layers)])
    self.norm = nnx.LayerNorm(features, rngs=rngs)
    self.head = SparseSoftmaxHead(features, vocab_size, retrieved=head_retrieved,
                                  sampled=head_sampled, proposal=proposal,
                                  hash_family=hash_family, bias_init=head_bias_init,
                                  param_dtype=table_dtype, rngs=rngs)
    self.embed_axis: str | None = None

  def keep_rows(self, shard: int, shards: int, axis: str) -> None:
    """Keeps the token embedding's rows ``[shard * rows, (shard + 1) * rows)`` (``rows =
    vocab_size / shards``): the model of device ``shard`` of mesh axis ``axis``
    (:func:`jslide.row_sharded.split_rows`, which splits the head by its own
    ``keep_rows``). Each device then looks up the tokens in its rows and the partial
    embeddings are summed over the axis (O(tokens x features))."""
    if self.embed_axis is not None:
      raise ValueError(f"SparseTransformerLM.keep_rows: already split over {self.embed_axis!r}")
    if self.vocab_size % shards:
      raise ValueError(f"SparseTransformerLM.keep_rows: vocab_size={self.vocab_size} must be a "
                       f"multiple of shards={shards}")
    rows = self.vocab_size // shards
    self.embed.set_value(self.embed.get_value()[shard * rows:(shard + 1) * rows])
    self.embed_axis = axis

  def check_tokens(self, tokens, name: str = "tokens"):
    """tokens as int32[B, T], T <= context, ids in [0, vocab_size) (checked when concrete)."""
    fn = "SparseTransformerLM"
    tokens = int32_ids(fn, name, tokens, num_rows=self.vocab_size, ndim=2)
    if tokens.shape[1] > self.context:
      raise ValueError(f"{fn}: {name} has {tokens.shape[1]} positions, more than the model's "
                       f"context of {self.context}")
    return tokens

  def hidden_states(self, tokens, *, key=None, exact_ffn: bool = False,
                    ffn_inputs: list | None = None):
    """f32[B, T, features]: the final normalized hidden state at each position (each
    block's FFN input appended to ``ffn_inputs`` when given)."""
    tokens = self.check_tokens(tokens)
    b, t = tokens.shape
    ones = jnp.ones((b, t, 1), jnp.float32)
    if self.embed_axis is None:
      h = embedding_bag(tokens[..., None], ones, self.embed.get_value())
    else:  # split by rows: this device's tokens, summed over the devices
      h = row_sharded.embedding_bag(tokens[..., None], ones, self.embed.get_value(),
                                    self.embed_axis)
    h = h + self.positions.get_value()[:t]
    keys = (jax.random.split(key, len(self.blocks)) if key is not None
            else [None] * len(self.blocks))
    for block, block_key in zip(self.blocks, keys):
      h = block(h, key=block_key, exact_ffn=exact_ffn, ffn_inputs=ffn_inputs)
    return self.norm(h)

  def ffn_dropped_fractions(self, tokens):
    """f32[layers]: for block FFNs (``ffn="block"``), the share of each layer's (token,
    chosen block) pairs that found the block full on this batch (0 for other FFNs)."""
    inputs = []
    self.hidden_states(tokens, key=jax.random.key(0), ffn_inputs=inputs)
    return jnp.stack([block.ffn.dropped_fraction(h) if isinstance(block.ffn, BlockSparseFFN)
                      else jnp.zeros([]) for block, h in zip(self.blocks, inputs)])

  def __call__(self, tokens, targets, *, key):
    """(logits, word ids) f32/int32[B*T, 1 + head_retrieved + head_sampled] (see
    :class:`SparseSoftmaxHead`)."""
    targets = self.check_tokens(targets, "targets")
    trunk_key, head_key = jax.random.split(key)
    h = self.hidden_states(tokens, key=trunk_key)
    return self.head(h.reshape(-1, self.features), targets.reshape(-1), key=head_key)

  def token_nll(self, tokens, targets, *, key=None, exact_ffn: bool = False,
                chunk_size: int = 8192):
    """f32[B, T]: ``-log p(target | tokens up to t)`` with the exact softmax over the whole
    vocabulary (never a [B*T, vocab] array). The FFNs run as in training (retrieved neurons,
    fill from ``key``) unless ``exact_ffn``."""
    targets = self.check_tokens(targets, "targets")
    h = self.hidden_states(tokens, key=key, exact_ffn=exact_ffn).reshape(-1, self.features)
    return self.head.nll(h, targets.reshape(-1), chunk_size=chunk_size).reshape(targets.shape)

  def next_word_candidates(self, tokens, k: int, *, key, exact_ffn: bool = False,
                           candidates: int | None = None):
    """(scores f32[B, k], word ids int32[B, k]): the k best next words after each sequence of
    tokens int[B, T], from ``candidates`` (default head_retrieved) words the head's index
    retrieves, rescored exactly."""
    trunk_key, head_key = jax.random.split(key)
    h = self.hidden_states(tokens, key=trunk_key, exact_ffn=exact_ffn)[:, -1]
    return self.head.topk(h, k, key=head_key, candidates=candidates)
