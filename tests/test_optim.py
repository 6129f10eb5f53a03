"""sparse_adam / sparse_sgd against references and optax, in-place updates, partition."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jslide
from jslide import reference as ref

from helpers import assert_close, normal, random_ids


def _reference_lazy_adam(w, grads, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
  """Numpy lazy Adam over a list of RowSparseGrads."""
  w = np.asarray(w, np.float64).copy()
  m, v = np.zeros_like(w), np.zeros_like(w)
  for t, g in enumerate(grads, start=1):
    dense = np.asarray(g.todense(), np.float64).reshape(w.shape)
    hit = np.asarray(ref.touched_rows(g.ids, w.shape[0]))
    m[hit] = b1 * m[hit] + (1 - b1) * dense[hit]
    v[hit] = b2 * v[hit] + (1 - b2) * dense[hit] ** 2
    w[hit] -= lr * (m[hit] / (1 - b1**t)) / (np.sqrt(v[hit] / (1 - b2**t)) + eps)
  return w


def _grad(rng, n, d, r=4, a=6, pad=0.3):
  return jslide.RowSparseGrad(random_ids(rng, n, (r, a), pad), normal(rng, r, a),
                              normal(rng, r, d), n)


def test_sparse_adam_is_lazy_adam(rng):
  n, d = 20, 5
  params = {"w": normal(rng, n, d)}
  grads = [_grad(rng, n, d) for _ in range(4)]
  tx = jslide.optim.sparse_adam(1e-2)
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update({"w": g}, s, p)))
  p = params
  for g in grads:
    p, state = step(p, state, g)
  assert_close(p["w"], _reference_lazy_adam(params["w"], grads), atol=1e-5)
  assert int(state.count) == 4


def test_sparse_adam_equals_optax_adam_when_every_row_is_hit(rng):
  n, d = 6, 3
  params = {"w": normal(rng, n, d), "b": normal(rng, n)}
  ids = jnp.tile(jnp.arange(n, dtype=jnp.int32), (2, 1))  # every row, every step
  sparse, dense = jslide.optim.sparse_adam(0.05), optax.adam(0.05)
  s_state, d_state = sparse.init(params), dense.init(params)
  p_s = p_d = params
  for _ in range(3):
    coef, vecs = normal(rng, 2, n), normal(rng, 2, d)
    g_s = {"w": jslide.RowSparseGrad(ids, coef, vecs, n),
           "b": jslide.RowSparseGrad(ids, coef, jnp.ones(2), n)}
    g_d = {k: v.todense() for k, v in g_s.items()}
    u, s_state = sparse.update(g_s, s_state, p_s)
    p_s = optax.apply_updates(p_s, u)
    u, d_state = dense.update(g_d, d_state, p_d)
    p_d = optax.apply_updates(p_d, u)
  for k in params:
    assert_close(p_s[k], p_d[k], atol=1e-5)


def test_catch_up_adam_equals_optax_adam_on_the_same_gradients(rng):
  """Rows idle for short and long (> 64 step) stretches; a table, a 1-D table and a dense
  leaf; with jit. After jslide.optim.catch_up the result is optax.adam's on dense grads."""
  n, d, steps = 40, 4, 150
  params = {"w": normal(rng, n, d), "b": normal(rng, n), "dense": normal(rng, 3)}
  sparse, dense = jslide.optim.sparse_adam(1e-2, catch_up=True), optax.adam(1e-2)
  s_state, d_state = sparse.init(params), dense.init(params)

  @jax.jit
  def sparse_step(p, s, g):
    u, s = sparse.update(g, s, p)
    return optax.apply_updates(p, u), s

  p_s = p_d = params
  for t in range(steps):
    # rows < 10 are hit only at steps 0 and 100: idle for 99 and 49 steps
    hi = n if t in (0, 100) else n - 10
    ids = jnp.asarray(rng.integers(n - hi, n, size=(3, 5)), jnp.int32)
    coef, vecs = normal(rng, 3, 5), normal(rng, 3, d)
    g_s = {"w": jslide.RowSparseGrad(ids, coef, vecs, n),
           "b": jslide.RowSparseGrad(ids, coef, jnp.ones(3), n), "dense": normal(rng, 3)}
    g_d = {k: (v.todense() if isinstance(v, jslide.RowSparseGrad) else v)
           for k, v in g_s.items()}
    p_s, s_state = sparse_step(p_s, s_state, g_s)
    u, d_state = dense.update(g_d, d_state, p_d)
    p_d = optax.apply_updates(p_d, u)
  lagging = np.abs(np.asarray(p_s["w"]) - np.asarray(p_d["w"])).max()
  p_c, c_state = jax.jit(jslide.optim.catch_up)(p_s, s_state)
  for k in params:
    assert_close(p_c[k], p_d[k], rtol=1e-4, atol=1e-5)
  assert_close(c_state.mu["w"], d_state[0].mu["w"], atol=1e-6)
  assert_close(c_state.nu["w"], d_state[0].nu["w"], atol=1e-7)
  assert lagging > 1e-3  # without the final catch-up, idle rows lag behind
  # catching up twice changes nothing; training on from the caught-up state still matches
  p_c2, _ = jslide.optim.catch_up(p_c, c_state)
  np.testing.assert_array_equal(np.asarray(p_c2["w"]), np.asarray(p_c["w"]))


def test_catch_up_through_partition_and_without_catch_up_state(rng):
  n, d = 12, 3
  params = {"table": normal(rng, n, d), "dense": normal(rng, 2)}
  tx = jslide.optim.partition(jslide.optim.sparse_adam(0.1, catch_up=True), optax.sgd(0.1),
                              {"table": True, "dense": False})
  state = tx.init(params)
  ids = jnp.array([[0, 1]], jnp.int32)
  for _ in range(3):
    g = {"table": jslide.RowSparseGrad(ids, jnp.ones((1, 2)), jnp.ones((1, d)), n),
         "dense": jnp.ones(2)}
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  g = {"table": jslide.RowSparseGrad(jnp.array([[5]], jnp.int32), jnp.ones((1, 1)),
                                     jnp.ones((1, d)), n), "dense": jnp.ones(2)}
  u, state = tx.update(g, state, params)
  params = optax.apply_updates(params, u)
  caught, state2 = jslide.optim.catch_up(params, state)
  # rows 0 and 1 keep moving along their momentum for the step they missed; the rest stay
  assert np.all(np.asarray(caught["table"][:2]) < np.asarray(params["table"][:2]))
  np.testing.assert_array_equal(np.asarray(caught["table"][2:]), np.asarray(params["table"][2:]))
  np.testing.assert_array_equal(np.asarray(caught["dense"]), np.asarray(params["dense"]))
  # a lazy optimizer's state passes through unchanged
  lazy = jslide.optim.sparse_adam(0.1)
  same, lazy_state = jslide.optim.catch_up(params, lazy.init(params))
  assert same is params


def test_dense_leaves_follow_optax_adam_with_schedule(rng):
  params = {"a": normal(rng, 4, 3)}
  sched = optax.linear_schedule(0.1, 0.01, 5)
  sparse, dense = jslide.optim.sparse_adam(sched), optax.adam(sched)
  s1, s2 = sparse.init(params), dense.init(params)
  p1 = p2 = params
  for _ in range(4):
    g = {"a": normal(rng, 4, 3)}
    u1, s1 = sparse.update(g, s1, p1)
    u2, s2 = dense.update(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  assert_close(p1["a"], p2["a"], atol=1e-6)


def test_sparse_sgd(rng):
  n, d = 15, 4
  p = {"w": normal(rng, n, d), "x": normal(rng, 3)}
  g = {"w": _grad(rng, n, d), "x": normal(rng, 3)}
  tx = jslide.optim.sparse_sgd(0.3)
  u, _ = tx.update(g, tx.init(p), p)
  new = optax.apply_updates(p, u)
  assert_close(new["w"], p["w"] - 0.3 * g["w"].todense(), atol=1e-5)
  assert_close(new["x"], p["x"] - 0.3 * g["x"])


def test_row_sparse_update_needs_params(rng):
  tx = jslide.optim.sparse_adam(0.1)
  p = {"w": normal(rng, 5, 2)}
  with pytest.raises(ValueError, match="need `params`"):
    tx.update({"w": _grad(rng, 5, 2)}, tx.init(p))


def test_partition_trains_tables_sparse_and_the_rest_with_optax(rng):
  n, d = 50, 6
  params = {"w": normal(rng, n, d), "b": jnp.zeros(n), "proj": normal(rng, d, d, scale=0.3)}
  tables = jslide.tables.min_rows(n)
  tx = jslide.optim.partition(jslide.optim.sparse_adam(0.05), optax.sgd(0.05), tables)
  state = tx.init(params)
  x = normal(rng, 8, d)
  labels = jnp.asarray(rng.integers(0, n, size=(8, 1)), jnp.int32)
  ids = random_ids(rng, n, (8, 10), pad_frac=0.0).at[:, 0].set(labels[:, 0])

  def loss(p):
    logits = jslide.sparse_linear(jnp.tanh(x @ p["proj"]), p["w"], p["b"], ids)
    return jslide.losses.active_softmax_cross_entropy(logits, ids, labels).mean()

  @jax.jit
  def step(p, s):
    v, g = jslide.value_and_grad(loss, tables=tables)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, v

  p, losses = params, []
  for _ in range(30):
    p, state, v = step(p, state)
    losses.append(float(v))
  assert losses[-1] < 0.5 * losses[0]
  # Rows never active did not move; the dense projection did.
  never = ~np.asarray(ref.touched_rows(ids, n))
  assert never.any()
  np.testing.assert_array_equal(np.asarray(p["w"])[never], np.asarray(params["w"])[never])
  assert not np.allclose(p["proj"], params["proj"])
  # The SGD half agrees with optax.sgd on the dense leaf's own gradient.
  g = jax.grad(lambda proj: loss({**params, "proj": proj}))(params["proj"])
  p1, _ = jax.jit(lambda p, s: step(p, s)[:2])(params, tx.init(params))
  assert_close(p1["proj"], params["proj"] - 0.05 * g, atol=1e-5)


def test_table_update_shape_mismatch():
  u = jslide.optim.TableUpdate(jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="applied to a parameter"):
    jnp.zeros((4, 2)) + u
