"""Transformer modules: SparseFFN, the chunked exact softmax, causal masking, the LM's sparse
head, each equal to a dense reference when the active set covers every neuron."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jslide
from jslide.nn import BlockSparseFFN, DenseFFN, SparseFFN, SparseTransformerLM
from jslide.lm.heads import lsh_softmax_loss
from jslide.nn.block_ffn import block_sparse_ffn, route_to_blocks

from helpers import assert_close

TABLES_FIRST = (True, False)


def _densify(tree):
  return jax.tree.map(lambda x: x.todense() if jslide.is_row_sparse(x) else x, tree,
                      is_leaf=jslide.is_row_sparse)


def _ffn_reference(up, up_bias, down, down_bias, x):
  return jax.nn.relu(x @ up.T + up_bias) @ down + down_bias


def test_sparse_ffn_with_every_neuron_active_equals_the_dense_block_values_and_gradients(rng):
  ffn = SparseFFN(8, 24, active=24, num_hashes=2, rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  key = jax.random.key(3)
  graphdef, tables, params, rest = jslide.train.split_model(ffn)

  def sparse_loss(trainable, x):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, *trainable, rest)(x, key=key)))

  def dense_loss(trainable, x):
    m = nnx.merge(graphdef, *trainable, rest)
    return jnp.sum(jnp.sin(_ffn_reference(m.up.get_value(), m.up_bias.get_value(),
                                          m.down.get_value(), m.down_bias.get_value(), x)))

  value, grads = jslide.value_and_grad(sparse_loss, tables=TABLES_FIRST)((tables, params), x)
  ref_value, ref_grads = jax.value_and_grad(dense_loss)((tables, params), x)
  assert_close(value, ref_value, atol=1e-4)
  assert all(jslide.is_row_sparse(g) for g in jax.tree.leaves(grads[0], is_leaf=jslide.is_row_sparse))
  for a, b in zip(jax.tree.leaves(_densify(grads)), jax.tree.leaves(ref_grads)):
    assert_close(a, b, atol=1e-4)
  # d/dx through the sparse path equals the dense one too, and exact() is the reference
  dx = jax.grad(sparse_loss, argnums=1)((tables, params), x)
  assert_close(dx, jax.grad(dense_loss, argnums=1)((tables, params), x), atol=1e-4)
  assert_close(ffn.exact(x), ffn(x, key=key), atol=1e-4)


def test_sparse_ffn_computes_only_the_retrieved_neurons(rng):
  ffn = SparseFFN(8, 64, active=6, num_hashes=3, rngs=nnx.Rngs(1))
  x = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  key = jax.random.key(0)
  ids = np.asarray(ffn.active_ids(x, key=key))
  assert ids.shape == (4, 6) and all(len(set(r)) == 6 for r in ids)
  up, down = np.asarray(ffn.up.get_value()), np.asarray(ffn.down.get_value())
  want = np.stack([np.maximum(up[r] @ xi, 0) @ down[r] for r, xi in zip(ids, np.asarray(x))])
  np.testing.assert_allclose(np.asarray(ffn(x, key=key)), want, atol=1e-5)


def test_sparse_ffn_rejects_bad_sizes():
  with pytest.raises(ValueError, match="active=9 must be at most hidden=8"):
    SparseFFN(4, 8, active=9, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="hidden"):
    DenseFFN(4, 0, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_block_ffn_with_every_block_equals_the_dense_block_values_and_gradients(rng):
  ffn = BlockSparseFFN(8, 24, active=24, num_blocks=4, rngs=nnx.Rngs(0))
  assert ffn.blocks_per_token == 4 and ffn.capacity(15) == 15  # all blocks, nothing dropped
  x = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  graphdef, tables, params, rest = jslide.train.split_model(ffn)
  assert not jax.tree.leaves(tables)  # dense parameters: every block is used by a batch

  def loss(params, x, rest, exact):  # a call moves the route bias: fresh Variables for it
    m = nnx.merge(graphdef, tables, params, jax.tree.map(lambda a: a, rest))
    return jnp.sum(jnp.sin(m.exact(x) if exact else m(x)))

  vg = jax.value_and_grad(loss, argnums=(0, 1))
  value, grads = vg(params, x, rest, False)
  ref_value, ref_grads = vg(params, x, rest, True)
  assert_close(value, ref_value, atol=1e-4)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert_close(a, b, atol=1e-4)


def _block_ffn_reference(ffn, x):
  """Per token in order: its best blocks by mean pre-activation, each computed exactly if the
  block still has room (numpy, one token at a time)."""
  up, ub = np.asarray(ffn.up.get_value()), np.asarray(ffn.up_bias.get_value())
  down, db = np.asarray(ffn.down.get_value()), np.asarray(ffn.down_bias.get_value())
  c, s = ffn.num_blocks, ffn.block
  cap = ffn.capacity(len(x))
  scores = (x @ up.reshape(c, s, -1).mean(1).T + ub.reshape(c, s).mean(1)
            + np.asarray(ffn.route_bias.get_value()))
  used = np.zeros(c, int)
  out = np.tile(db, (len(x), 1))
  for t, xt in enumerate(x):
    best = np.argsort(-scores[t], kind="stable")[:ffn.blocks_per_token]
    for blk in best:
      if used[blk] < cap:
        used[blk] += 1
        rows = slice(blk * s, (blk + 1) * s)
        out[t] += np.maximum(up[rows] @ xt + ub[rows], 0) @ down[rows]
  return out


@settings(max_examples=12, deadline=None)  # each example compiles new shapes
@given(t=st.integers(1, 12), blocks=st.integers(1, 6), block=st.integers(1, 5),
       per_token=st.integers(1, 6), factor=st.sampled_from([0.3, 0.7, 1.0, 2.0]),
       seed=st.integers(0, 999))
@pytest.mark.slow
def test_block_ffn_computes_each_tokens_best_blocks_while_they_have_room(t, blocks, block,
                                                                         per_token, factor,
                                                                         seed):
  per_token = min(per_token, blocks)
  ffn = BlockSparseFFN(4, blocks * block, active=per_token * block, num_blocks=blocks,
                       capacity_factor=factor, rngs=nnx.Rngs(seed))
  ffn.up_bias.set_value(jnp.asarray(np.random.default_rng(seed).normal(size=blocks * block),
                                    jnp.float32))
  ffn.route_bias.set_value(jnp.asarray(np.random.default_rng(seed + 2).normal(size=blocks),
                                       jnp.float32))
  x = np.random.default_rng(seed + 1).normal(size=(t, 4)).astype(np.float32)
  want = _block_ffn_reference(ffn, x)
  slots, tokens = (np.asarray(a) for a in ffn.routing(jnp.asarray(x)))
  dropped = float(ffn.dropped_fraction(jnp.asarray(x)))
  np.testing.assert_allclose(np.asarray(ffn(jnp.asarray(x))), want, atol=1e-4)
  kept = slots[slots >= 0]
  assert len(set(kept)) == kept.size  # a slot holds one token ...
  assert all(tokens[s] == i for i, row in enumerate(slots) for s in row if s >= 0)  # ... its own
  assert (tokens >= 0).sum() == kept.size
  assert np.isclose(dropped, np.mean(slots < 0))


def test_block_ffn_route_bias_balances_loads_that_the_scores_skew(rng):
  """Block 0's neurons have a large bias, so every token prefers it: at first most choices
  find it full; the route bias that each call moves spreads them until few do, and the
  outputs stay those of the blocks chosen (the bias moves choices only)."""
  ffn = BlockSparseFFN(8, 64, active=8, num_blocks=8, capacity_factor=1.5, balance_rate=0.05,
                       rngs=nnx.Rngs(0))
  centroids = rng.normal(size=(8, 1, 8))  # distinct directions: tokens differ in taste
  ffn.up.set_value(jnp.asarray(np.repeat(centroids, 8, axis=1).reshape(64, 8), jnp.float32))
  ffn.up_bias.set_value(ffn.up_bias.get_value().at[:8].set(20.0))
  x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
  first = float(ffn.dropped_fraction(x))
  for _ in range(200):
    ffn(x)
  last = float(ffn.dropped_fraction(x))
  assert first > 0.5 and last < 0.1, (first, last)
  want = _block_ffn_reference(ffn, np.asarray(x))  # with the bias before the call moves it
  np.testing.assert_allclose(np.asarray(ffn(x)), want, atol=1e-4)
  still = BlockSparseFFN(8, 64, active=8, num_blocks=8, balance_rate=0, rngs=nnx.Rngs(0))
  still(x)
  assert not np.asarray(still.route_bias.get_value()).any()
  bias = np.asarray(ffn.route_bias.get_value())
  ffn.eval()  # use_running_average, as nnx.BatchNorm: the bias stays
  ffn(x)
  np.testing.assert_array_equal(np.asarray(ffn.route_bias.get_value()), bias)
  ffn.train()
  ffn(x)
  assert not np.array_equal(np.asarray(ffn.route_bias.get_value()), bias)


def test_block_routing_fills_blocks_in_token_order():
  scores = jnp.asarray([[3., 1.], [2., 0.], [5., 4.], [0., 9.]])
  slots, tokens = route_to_blocks(scores, 1, capacity=2)
  # block 0 holds tokens 0 and 1; token 2 finds it full; token 3 takes block 1's first slot
  np.testing.assert_array_equal(np.asarray(slots)[:, 0], [0, 1, -1, 2])
  np.testing.assert_array_equal(np.asarray(tokens), [0, 1, 3, -1])


def test_block_ffn_rejects_bad_sizes():
  with pytest.raises(ValueError, match="hidden=30 must be a multiple of num_blocks=4"):
    BlockSparseFFN(4, 30, num_blocks=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="active=33 must be at most hidden=32"):
    BlockSparseFFN(4, 32, active=33, num_blocks=4, rngs=nnx.Rngs(0))
  for bad in (0, -1.0, float("nan"), "2"):
    with pytest.raises(ValueError, match="capacity_factor must be a positive number"):
      BlockSparseFFN(4, 32, num_blocks=4, capacity_factor=bad, rngs=nnx.Rngs(0))
  for bad in (-0.1, float("inf"), None):
    with pytest.raises(ValueError, match="balance_rate must be a number >= 0"):
      BlockSparseFFN(4, 32, num_blocks=4, balance_rate=bad, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="blocks_per_token=5 lie in"):
    block_sparse_ffn(jnp.zeros((2, 4)), jnp.zeros((8, 4)), jnp.zeros(8),
                     jnp.zeros((8, 4)), jnp.zeros(4), num_blocks=4, blocks_per_token=5,
                     capacity=2)


@settings(max_examples=10)  # each example compiles new shapes
@given(t=st.integers(1, 9), n=st.integers(1, 40), chunk=st.integers(1, 50),
       seed=st.integers(0, 2**16))
@pytest.mark.slow
def test_chunked_softmax_cross_entropy_equals_the_plain_one(t, n, chunk, seed):
  r = np.random.default_rng(seed)
  x = jnp.asarray(r.normal(size=(t, 5)), jnp.float32)
  w = jnp.asarray(r.normal(size=(n, 5)), jnp.float32)
  b = jnp.asarray(r.normal(size=(n,)), jnp.float32)
  targets = jnp.asarray(r.integers(0, n, size=t), jnp.int32)
  got = jslide.losses.chunked_softmax_cross_entropy(x, w, b, targets, chunk_size=chunk)
  want = optax.softmax_cross_entropy_with_integer_labels(x @ w.T + b, targets)
  assert_close(got, want, atol=1e-4)


def test_chunked_softmax_cross_entropy_padding_and_bad_input():
  x, w, b = jnp.ones((2, 3)), jnp.ones((4, 3)), jnp.zeros(4)
  got = jslide.losses.chunked_softmax_cross_entropy(x, w, b, jnp.array([-1, 2], jnp.int32))
  assert_close(got, jnp.array([0.0, np.log(4.0)]), atol=1e-6)
  with pytest.raises(ValueError, match="targets holds 4"):
    jslide.losses.chunked_softmax_cross_entropy(x, w, b, jnp.array([0, 4], jnp.int32))
  with pytest.raises(ValueError, match="chunk_size"):
    jslide.losses.chunked_softmax_cross_entropy(x, w, b, jnp.array([0, 1], jnp.int32),
                                                chunk_size=0)


def _tiny_lm(vocab=50, ffn="sparse", retrieved=49, sampled=8, active=32, context=8, seed=0):
  return SparseTransformerLM(vocab, context=context, features=16, heads=2, layers=2, hidden=32,
                             ffn=ffn, ffn_active=active, head_retrieved=retrieved,
                             head_sampled=sampled, rngs=nnx.Rngs(seed))


@pytest.mark.slow
@settings(max_examples=10)  # each example compiles new shapes
@given(t=st.integers(1, 6), s=st.integers(1, 7), n=st.integers(1, 30), seed=st.integers(0, 999))
def test_shared_linear_equals_a_gather_and_matmul_values_and_row_sparse_gradients(t, s, n, seed):
  r = np.random.default_rng(seed)
  x = jnp.asarray(r.normal(size=(t, 4)), jnp.float32)
  w = jnp.asarray(r.normal(size=(n, 4)), jnp.float32)
  b = jnp.asarray(r.normal(size=(n,)), jnp.float32)
  ids = jnp.asarray(r.integers(-1, n, size=s), jnp.int32)  # duplicates and padding
  coef = jnp.asarray(r.normal(size=(t, s)), jnp.float32)

  def reference(tables, x):
    w, b = tables
    y = x @ w[jnp.maximum(ids, 0)].T + b[jnp.maximum(ids, 0)]
    return jnp.sum(coef * jnp.where(ids >= 0, y, 0.0))

  def loss(tables, x):
    return jnp.sum(coef * jslide.shared_linear(x, tables[0], tables[1], ids))

  value, grads = jslide.value_and_grad(loss, tables=(True, True))((w, b), x)
  ref_value, ref_grads = jax.value_and_grad(reference)((w, b), x)
  assert_close(value, ref_value, atol=1e-4)
  for a, c in zip(_densify(grads), ref_grads):
    assert_close(a, c, atol=1e-4)
  assert_close(jax.grad(loss, argnums=1)((w, b), x), jax.grad(reference, argnums=1)((w, b), x),
               atol=1e-4)
  assert_close(jax.grad(loss)((w, b), x)[0], ref_grads[0], atol=1e-4)  # plain jax.grad too


def test_sparse_head_scores_target_retrieved_and_corrected_sample(rng):
  head = jslide.nn.SparseSoftmaxHead(8, 300, retrieved=5, sampled=40, rngs=nnx.Rngs(0))
  h = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 300, size=6), jnp.int32)
  logits, ids = head(h, targets, key=jax.random.key(1))
  assert logits.shape == ids.shape == (6, 1 + 5 + 40)
  ids, logits = np.asarray(ids), np.asarray(logits)
  np.testing.assert_array_equal(ids[:, 0], np.asarray(targets))
  w, b = np.asarray(head.kernel.get_value()), np.asarray(head.bias.get_value())
  exact = np.asarray(h) @ w.T + b
  for t in range(6):
    near = ids[t, :6][ids[t, :6] >= 0]
    assert len(set(near)) == len(near)
    np.testing.assert_allclose(logits[t, :len(near)], exact[t, near], atol=1e-5)
    far = ids[t, 6:]
    assert not set(far[far >= 0]) & set(near)  # accidental hits removed
    word = np.maximum(far, 0)
    q = np.log(np.log((word + 2.0) / (word + 1.0)) / np.log(301.0))
    ok = far >= 0
    np.testing.assert_allclose(logits[t, 6:][ok], (exact[t, far] - np.log(40) - q)[ok], atol=1e-4)


def test_log_uniform_sampling_follows_its_proposal():
  from jslide.nn.softmax_head import log_proposal, sample_words
  v, s = 50, 200_000
  words = np.asarray(sample_words(jax.random.key(0), s, v, "log-uniform"))
  freq = np.bincount(words, minlength=v) / s
  q = np.exp(np.asarray(log_proposal(jnp.arange(v), v, "log-uniform")))
  assert abs(q.sum() - 1) < 1e-5
  np.testing.assert_allclose(freq, q, atol=4 * np.sqrt(q * (1 - q) / s).max())


@pytest.mark.slow
@pytest.mark.parametrize("ffn", ["sparse", "block"])
def test_no_position_sees_the_future(rng, ffn):
  model = _tiny_lm(active=8, ffn=ffn)
  model.eval()  # the block FFN's route bias stays as it is between the two calls
  tokens = jnp.asarray(rng.integers(0, 50, size=(2, 8)), jnp.int32)
  changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % 50)
  for exact in (True, False):
    key = jax.random.key(0)
    a = model.hidden_states(tokens, key=key, exact_ffn=exact)
    b = model.hidden_states(changed, key=key, exact_ffn=exact)
    assert_close(a[:, :5], b[:, :5], atol=1e-6)
    assert not np.allclose(np.asarray(a[:, 5:]), np.asarray(b[:, 5:]))


@pytest.mark.slow
def test_lm_with_full_active_sets_equals_the_exact_model_values_and_gradients(rng):
  """Every word retrieved by the head (so every sampled word is an accidental hit, removed)
  and every FFN neuron active: the sparse training loss is the full-softmax loss, and its
  row-sparse gradients (embedding, FFN tables, head) equal jax.grad of the exact model."""
  model = _tiny_lm()
  tokens = jnp.asarray(rng.integers(0, 50, size=(3, 8)), jnp.int32)
  targets = jnp.asarray(rng.integers(0, 50, size=(3, 8)), jnp.int32)
  graphdef, tables, params, rest = jslide.train.split_model(model)
  key = jax.random.key(2)

  def sparse_loss(trainable):
    m = nnx.merge(graphdef, *trainable, rest)
    logits, ids = m(tokens, targets, key=key)
    return jslide.losses.active_softmax_cross_entropy(logits, ids, targets.reshape(-1, 1)).mean()

  def exact_loss(trainable):
    m = nnx.merge(graphdef, *trainable, rest)
    return m.token_nll(tokens, targets, exact_ffn=True, chunk_size=16).mean()

  value, grads = jslide.value_and_grad(sparse_loss, tables=TABLES_FIRST)((tables, params))
  ref_value, ref_grads = jax.value_and_grad(exact_loss)((tables, params))
  assert_close(value, ref_value, atol=1e-4)
  n_tables = len(jax.tree.leaves(grads[0], is_leaf=jslide.is_row_sparse))
  assert n_tables == 3 + 2 * 3  # embedding, head kernel and bias; each FFN: up, up_bias, down
  for a, b in zip(jax.tree.leaves(_densify(grads)), jax.tree.leaves(ref_grads)):
    assert_close(a, b, atol=1e-4)


@pytest.mark.slow
def test_lm_train_step_never_builds_a_tokens_by_vocabulary_array():
  vocab, b, t = 3001, 3, 7
  model = _tiny_lm(vocab=vocab, retrieved=32, sampled=64, active=8)

  _, state, step = jslide.train.make_train_step(model, lsh_softmax_loss)
  tokens = jnp.zeros((b, t), jnp.int32)
  batch = {"tokens": tokens, "targets": tokens}  # no other keys: the loss reads these
  hlo = step.lower(state, batch, jax.random.key(0)).compile().as_text()
  shapes = [s.split(",") for s in re.findall(r"[a-z]+[0-9]*\[([0-9,]+)\]", hlo)]
  assert [str(vocab), "16"] in shapes  # the tables are there ...
  big = [s for s in shapes if str(vocab) in s and (str(b * t) in s or str(t) in s)]
  assert not big, big  # ... but nothing [tokens, vocab]


def test_lm_refuses_bad_tokens_and_sizes():
  model = _tiny_lm(context=4)
  with pytest.raises(ValueError, match="5 positions, more than the model's context of 4"):
    model.hidden_states(jnp.zeros((1, 5), jnp.int32))
  with pytest.raises(ValueError, match="tokens holds 50"):
    model.hidden_states(jnp.full((1, 3), 50, jnp.int32))
  with pytest.raises(TypeError, match="integer dtype"):
    model.hidden_states(jnp.zeros((1, 3), jnp.float32))
  with pytest.raises(ValueError, match="sampled must be a positive int"):
    _tiny_lm(sampled=0)
  with pytest.raises(ValueError, match="ffn must be one of"):
    _tiny_lm(ffn="wide")


def test_an_ffn_constructor_stands_for_a_kind():
  """A block takes any ffn(features, hidden, *, rngs): a kind's module with settings of its
  own, or a module of one's own."""
  import functools
  model = SparseTransformerLM(50, context=8, features=16, heads=2, layers=1, hidden=64,
                              ffn=functools.partial(BlockSparseFFN, active=8,
                                                    capacity_factor=2.0),
                              head_retrieved=4, head_sampled=8, rngs=nnx.Rngs(0))
  ffn = model.blocks[0].ffn
  assert isinstance(ffn, BlockSparseFFN) and ffn.capacity_factor == 2.0
  tokens = jnp.zeros((2, 8), jnp.int32)
  assert model.token_nll(tokens, tokens, key=jax.random.key(0)).shape == (2, 8)


@given(t=st.integers(1, 5), a=st.integers(1, 6), s=st.integers(1, 9), n=st.integers(1, 12),
       seed=st.integers(0, 999))
@pytest.mark.slow
def test_accidental_hit_mask_equals_a_plain_membership_test(t, a, s, n, seed):
  from jslide.nn.softmax_head import _is_in_rows
  r = np.random.default_rng(seed)
  words = r.integers(0, n, size=s).astype(np.int32)  # duplicates likely
  ids = r.integers(-1, n, size=(t, a)).astype(np.int32)  # padding too
  want = np.array([[w in set(row) for w in words] for row in ids])
  np.testing.assert_array_equal(np.asarray(_is_in_rows(jnp.asarray(words), jnp.asarray(ids))),
                                want)


@pytest.mark.parametrize("make", [
    lambda: BlockSparseFFN(8, 64, rngs=nnx.Rngs(0)),
    lambda: SparseFFN(8, 64, active=8, rngs=nnx.Rngs(0)),
    lambda: DenseFFN(8, 64, rngs=nnx.Rngs(0)),
])
def test_ffns_refuse_inputs_of_another_width(make):
  """Issue 33, item 2: BlockSparseFFN(8, 64) on inputs of width 16 returned (4, 16), each
  row taken as two tokens; SparseFFN failed with a reshape error."""
  ffn = make()
  x = jnp.ones((2, 16), jnp.float32)
  with pytest.raises(ValueError, match="x must have 8 features on its last axis, got shape "
                                       r"\(2, 16\)"):
    ffn(x, key=jax.random.key(0))
  with pytest.raises(ValueError, match="8 features on its last axis"):
    ffn.exact(x)
  assert ffn(jnp.ones((2, 3, 8)), key=jax.random.key(0)).shape == (2, 3, 8)


def test_an_out_of_range_target_is_an_error_under_jit_too(rng):
  """Issue 33, item 3: under jit an out-of-range target gave a NaN loss (eager calls raised)
  in chunked_softmax_cross_entropy, SparseSoftmaxHead.nll and token_nll."""
  w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  b, x = jnp.zeros(5), jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
  loss = jax.jit(lambda t: jslide.losses.chunked_softmax_cross_entropy(x, w, b, t,
                                                                       chunk_size=2))
  ok = loss(jnp.asarray([1, -1], jnp.int32))
  assert np.isfinite(np.asarray(ok)).all() and float(ok[1]) == 0.0
  for bad in (5, -2):
    with pytest.raises(Exception, match=r"holds .* expected \[-1, 5\)"):
      jax.block_until_ready(loss(jnp.asarray([1, bad], jnp.int32)))
  model = _tiny_lm(vocab=50)
  nll = jax.jit(lambda t: model.token_nll(t[:, :-1], t[:, 1:], key=jax.random.key(0)))
  with pytest.raises(Exception, match=r"holds 50 .* expected \[-1, 50\)"):
    jax.block_until_ready(nll(jnp.asarray([[1, 2, 50]], jnp.int32)))
