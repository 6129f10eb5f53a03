"""jslide's row-sparse gradients and optimizers under Optax transformations and tree maths.

Each case runs the same training loop twice: jslide (row-sparse table gradients, sparse
optimizer) and plain JAX (dense gradients of the reference ops, Optax's own optimizer). The
two must end with equal parameters, or jslide must refuse with the documented error; never a
silently different table.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import jslide
from jslide import reference as ref

from helpers import assert_close, normal, random_ids

N, D, B, A, STEPS = 40, 6, 5, 10, 4
TABLES = {"w": True, "b": True, "h": False}


def _params(rng):
  return {"w": normal(rng, N, D, scale=0.5), "b": normal(rng, N, scale=0.1),
          "h": normal(rng, D, D, scale=0.5)}


def _batches(rng, count=STEPS):
  """Each step's ids hold every table row at least once (plus duplicates and padding), so
  sparse Adam with catch-up reads no stale row and must equal optax.adam exactly."""
  def ids():
    extra = np.asarray(random_ids(rng, N, (B * A - N,), pad_frac=0.3))
    return jnp.asarray(rng.permutation(np.concatenate([np.arange(N), extra])).reshape(B, A),
                       jnp.int32)
  return [(normal(rng, B, D), ids()) for _ in range(count)]


def _loss(ops):
  def loss(p, x, ids):
    logits = ops.sparse_linear(0.5 + jax.nn.softplus(x @ p["h"]), p["w"], p["b"], ids)
    return jnp.sum(jnp.where(ids >= 0, jnp.exp(0.3 * logits), 0.0))
  return loss


def _sparse_grads(p, x, ids):
  return jslide.value_and_grad(_loss(jslide), tables=TABLES)(p, x, ids)[1]


def _dense_grads(p, x, ids):
  return jax.grad(_loss(ref))(p, x, ids)


def _run(tx, params, batches, grads_fn, *, finish=None):
  state = tx.init(params)

  @jax.jit
  def step(p, s, x, ids):
    u, s = tx.update(grads_fn(p, x, ids), s, p)
    return optax.apply_updates(p, u), s

  for x, ids in batches:
    params, state = step(params, state, x, ids)
  if finish is not None:
    params, state = finish(params, state)
  return params


def _assert_same(a, b, atol=2e-5):

  for k in a:
    assert_close(a[k], b[k], atol=atol, rtol=2e-4)


EPS = 1e-8


def _sparse_adam():
  return jslide.optim.sparse_adam(1e-2, eps=EPS, catch_up=True)


def _adam():
  return optax.adam(1e-2, eps=EPS)


CATCH_UP = jslide.optim.catch_up


# ------------------------------------------------------------------ transformations that work


def test_sparse_adam_alone_equals_optax_adam(rng):
  p, batches = _params(rng), _batches(rng)
  got = _run(_sparse_adam(), p, batches, _sparse_grads, finish=CATCH_UP)
  _assert_same(got, _run(_adam(), p, batches, _dense_grads))


def test_clip_before_the_sparse_optimizer_equals_optax_clip(rng):
  p, batches = _params(rng), _batches(rng)
  tx = optax.chain(jslide.optim.clip_by_global_norm(0.5), _sparse_adam())
  got = _run(tx, p, batches, _sparse_grads, finish=CATCH_UP)
  want = _run(optax.chain(optax.clip_by_global_norm(0.5), _adam()), p, batches,
              _dense_grads)
  _assert_same(got, want)


def test_masked_sparse_adam_equals_masked_optax_adam(rng):
  p, batches = _params(rng), _batches(rng)
  mask = {"w": True, "b": False, "h": True}
  got = _run(optax.masked(_sparse_adam(), mask), p, batches, _sparse_grads,
             finish=lambda p, s: (CATCH_UP(p, s)[0], s))
  want = _run(optax.masked(_adam(), mask), p, batches, _dense_grads)
  _assert_same(got, want)


def test_partition_with_optax_for_dense_leaves_equals_optax_adam(rng):
  p, batches = _params(rng), _batches(rng)
  tx = jslide.optim.partition(_sparse_adam(), _adam(), TABLES)
  got = _run(tx, p, batches, _sparse_grads, finish=CATCH_UP)
  _assert_same(got, _run(_adam(), p, batches, _dense_grads))


def test_multi_transform_with_a_schedule_equals_optax(rng):
  p, batches = _params(rng), _batches(rng)
  sched = optax.linear_schedule(1e-2, 2e-3, STEPS)
  labels = {"w": "tables", "b": "tables", "h": "dense"}
  tx = optax.multi_transform({"tables": jslide.optim.sparse_sgd(sched),
                              "dense": optax.sgd(sched)}, labels)
  got = _run(tx, p, batches, _sparse_grads)
  _assert_same(got, _run(optax.sgd(sched), p, batches, _dense_grads))


def test_accumulating_with_jslide_tree_equals_dense_accumulation(rng):
  p, batches = _params(rng), _batches(rng, 2 * STEPS)

  def sparse_acc(p, x, ids):  # two micro-batches per step, averaged
    g1, g2 = _sparse_grads(p, x[0], ids[0]), _sparse_grads(p, x[1], ids[1])
    return jslide.tree.scale(jslide.tree.add(g1, g2), 0.5)

  def dense_acc(p, x, ids):
    g1, g2 = _dense_grads(p, x[0], ids[0]), _dense_grads(p, x[1], ids[1])
    return jax.tree.map(lambda a, b: 0.5 * (a + b), g1, g2)

  pairs = [tuple(jnp.stack(z) for z in zip(*batches[i:i + 2]))
           for i in range(0, len(batches), 2)]
  got = _run(_sparse_adam(), p, pairs, sparse_acc, finish=CATCH_UP)
  _assert_same(got, _run(_adam(), p, pairs, dense_acc))


def test_tree_map_add_onto_zeros_like_is_the_gradient(rng):
  """A zeros_like accumulator plus one gradient, leaf by leaf, is still that gradient."""
  p, batches = _params(rng), _batches(rng)

  def acc(p, x, ids):
    g = _sparse_grads(p, x, ids)
    return jax.tree.map(jnp.add, optax.tree.zeros_like(g), g)

  got = _run(_sparse_adam(), p, batches, acc, finish=CATCH_UP)
  _assert_same(got, _run(_adam(), p, batches, _dense_grads))


# ------------------------------------------------------------------ transformations refused


@pytest.mark.parametrize("after", [optax.scale(-1.0), optax.scale_by_schedule(lambda c: 0.5),
                                   optax.clip_by_global_norm(1.0)],
                         ids=["scale", "scale_by_schedule", "clip_by_global_norm"])
def test_arithmetic_after_the_sparse_optimizer_is_refused(rng, after):
  """Float maths fails at trace time; scale_by_schedule casts its factor to each leaf's dtype
  (0.5 -> 0 for the int32 unit), which the update refuses when it is applied."""
  p, batches = _params(rng), _batches(rng)
  with pytest.raises(Exception, match="TableUpdate|same dtypes|unit is 0, not 1"):
    jax.block_until_ready(_run(optax.chain(_sparse_adam(), after), p, batches, _sparse_grads))


def test_integer_scaling_after_the_sparse_optimizer_is_refused_when_applied(rng):
  p, batches = _params(rng), _batches(rng)
  with pytest.raises(Exception, match="unit is -1, not 1"):
    jax.block_until_ready(_run(optax.chain(_sparse_adam(), optax.scale(-1)), p, batches,
                               _sparse_grads))


def test_tree_map_add_of_two_gradients_is_refused(rng):
  """The issue's case: adding ids leaf by leaf must not reach a table."""
  p, batches = _params(rng), _batches(rng)

  def doubled(p, x, ids):
    g = _sparse_grads(p, x, ids)
    return jax.tree.map(jnp.add, g, g)

  with pytest.raises(Exception, match="unit is 2, not 1"):
    jax.block_until_ready(_run(_sparse_adam(), p, batches, doubled))


def test_float_maths_on_row_sparse_gradients_is_refused_at_trace_time(rng):
  p, (x, ids) = _params(rng), _batches(rng, 1)[0]
  g = _sparse_grads(p, x, ids)
  with pytest.raises(TypeError, match="RowSparseGrad: ids became float32"):
    jax.tree.map(lambda t: 0.5 * t, g)
  with pytest.raises(TypeError):
    optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())


@pytest.mark.parametrize("wrap", [lambda tx: optax.MultiSteps(tx, 2),
                                  lambda tx: optax.apply_if_finite(tx, 2)],
                         ids=["MultiSteps", "apply_if_finite"])
def test_wrappers_that_need_update_shaped_like_gradients_are_refused(rng, wrap):
  p, batches = _params(rng), _batches(rng)
  with pytest.raises((TypeError, ValueError), match="RowSparseGrad|TableUpdate"):
    _run(wrap(_sparse_adam()), p, batches, _sparse_grads)


def test_optax_apply_if_finite_works_around_sparse_sgd(rng):
  """sparse_sgd's update is a row-sparse delta shaped like its gradient, so Optax's own
  wrapper can return zeros of it on a skipped step."""
  p, batches = _params(rng), _batches(rng)
  x, ids = batches[1]
  batches[1] = (x.at[0, 0].set(jnp.nan), ids)
  got = _run(optax.apply_if_finite(jslide.optim.sparse_sgd(0.1), 3), p, batches, _sparse_grads)
  _assert_same(got, _run(optax.apply_if_finite(optax.sgd(0.1), 3), p, batches, _dense_grads))


def test_jslide_apply_if_finite_skips_a_nan_step_as_optax_apply_if_finite_does(rng):
  p0, batches = _params(rng), _batches(rng)
  x, ids = batches[1]
  batches[1] = (x.at[0, 0].set(jnp.nan), ids)  # NaN in h's gradient and in both tables'
  tx = jslide.optim.apply_if_finite(_sparse_adam(), max_consecutive_errors=3)
  p = p0
  state = tx.init(p)
  step = jax.jit(lambda p, s, x, ids: tx.update(_sparse_grads(p, x, ids), s, p))
  for i, (x, ids) in enumerate(batches):
    before = p
    u, state = step(p, state, x, ids)
    p = optax.apply_updates(p, u)
    if i == 1:  # skipped: no leaf moved, the tables included
      _assert_same(p, before, atol=0)
  assert int(state.total_notfinite) == 1 and int(state.inner_state.count) == STEPS - 1
  got, _ = CATCH_UP(p, state)
  want = _run(optax.apply_if_finite(_adam(), 3), p0, batches, _dense_grads)
  _assert_same(got, want)


def test_apply_updates_if_finite_is_apply_if_finite_then_apply_updates(rng):
  """The fused training-loop form gives the same parameters and state, step by step (to
  rounding),
  through a skipped NaN step; with max_consecutive_errors=0 the NaN step is applied, and the
  sparse kernels refuse it, as they do after apply_if_finite."""
  p0, batches = _params(rng), _batches(rng)
  x, ids = batches[1]
  batches[1] = (x.at[0, 0].set(jnp.nan), ids)
  wrapped = jslide.optim.apply_if_finite(_sparse_adam(), max_consecutive_errors=3)
  fused = jslide.optim.apply_updates_if_finite(_sparse_adam(), max_consecutive_errors=3)
  step = jax.jit(lambda p, s, x, ids: wrapped.update(_sparse_grads(p, x, ids), s, p))
  fused_step = jax.jit(lambda p, s, x, ids: fused.apply(_sparse_grads(p, x, ids), s, p))
  p, state, q, fused_state = p0, wrapped.init(p0), p0, fused.init(p0)
  for x, ids in batches:
    u, state = step(p, state, x, ids)
    p = optax.apply_updates(p, u)
    q, fused_state = fused_step(q, fused_state, x, ids)
    _assert_same(q, p, atol=1e-7)  # XLA may fuse the optimizer's arithmetic differently
    for a, b in zip(jax.tree.leaves(fused_state), jax.tree.leaves(state)):
      assert_close(a, b, atol=1e-7, rtol=1e-6)
  assert int(fused_state.total_notfinite) == 1
  applied = jslide.optim.apply_updates_if_finite(_sparse_adam(), max_consecutive_errors=0)
  with pytest.raises(Exception, match="non-finite value"):
    x, ids = batches[1]
    jax.block_until_ready(applied.apply(_sparse_grads(p0, x, ids), applied.init(p0), p0))


# ------------------------------------------------------------------ helpers


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 30), r=st.integers(0, 6), a=st.integers(1, 5), d=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_global_norm_equals_optax_global_norm_of_the_dense_tree(n, r, a, d, seed):
  rng = np.random.default_rng(seed)
  g = jslide.RowSparseGrad(random_ids(rng, n, (r, a), pad_frac=0.3), normal(rng, r, a),
                           normal(rng, r, d), n)
  tree = {"table": g, "dense": normal(rng, 3)}
  want = optax.tree.norm({"table": ref.scatter_outer(g.ids, g.coef, g.vecs, n),
                            "dense": tree["dense"]})
  assert_close(jslide.tree.global_norm(tree), want, rtol=1e-5, atol=1e-5)


def test_tree_add_is_the_union_and_scale_scales_once(rng):
  g1 = jslide.RowSparseGrad(jnp.array([[1, 2], [3, 4]], jnp.int32), normal(rng, 2, 2),
                            normal(rng, 2, 3), 6)
  total = jslide.tree.add({"t": g1}, {"t": g1})["t"]
  assert total.ids.shape == (4, 2)
  assert_close(total.todense(), 2 * g1.todense())
  assert_close(jslide.tree.scale({"t": g1}, 3.0)["t"].todense(), 3 * g1.todense())
  with pytest.raises(TypeError, match="row-sparse in one tree"):
    jslide.tree.add({"t": g1}, {"t": g1.todense()})


def test_nan_in_a_dense_gradient_stays_out_of_table_gradients(rng):
  p, (x, ids) = _params(rng), _batches(rng, 1)[0]

  def loss(p, x, ids):
    return _loss(jslide)(p, x, ids) + jnp.sum(p["h"]) * jnp.float32(np.nan)

  g = jslide.grad(loss, tables=TABLES)(p, x, ids)
  assert not np.isfinite(np.asarray(g["h"])).all()
  for k in ("w", "b"):
    assert np.isfinite(np.asarray(g[k].vecs)).all(), k


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("make, match", [
    (lambda: jslide.optim.sparse_adam("fast"), "sparse_adam: learning_rate must be"),
    (lambda: jslide.optim.sparse_adam(1e-3, b1=1.0), "sparse_adam: b1 must be"),
    (lambda: jslide.optim.sparse_adam(1e-3, eps=-1.0), "sparse_adam: eps must be"),
    (lambda: jslide.optim.sparse_sgd(float("nan")), "sparse_sgd: learning_rate must be finite"),
    (lambda: jslide.optim.clip_by_global_norm(0.0), "max_norm must be"),
    (lambda: jslide.optim.apply_if_finite(jslide.optim.sparse_sgd(0.1), -1),
     "max_consecutive_errors must be"),
    (lambda: jslide.RowSparseGrad(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 4)), 5),
     "RowSparseGrad: ids must have an integer dtype"),
    (lambda: jslide.RowSparseGrad(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 2)),
                                  jnp.zeros((2, 4)), 5), "coef shape"),
    (lambda: jslide.RowSparseGrad(jnp.full((2, 3), 5, jnp.int32), jnp.zeros((2, 3)),
                                  jnp.zeros((2, 4)), 5), "ids holds 5"),
    (lambda: jslide.metrics.precision_at_k(jnp.zeros((2, 3), jnp.int32),
                                           jnp.zeros((2, 1), jnp.int32), 4), "k=4 exceeds"),
    (lambda: jslide.losses.softmax_cross_entropy(jnp.zeros((2, 5)), jnp.zeros((2, 1))),
     "labels must have an integer dtype"),
    (lambda: jslide.lsh.SimHash.init(jax.random.PRNGKey(0), 0, 4, 8), "dim must be"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_arguments_are_named_before_any_kernel_runs(make, match):
  with pytest.raises((TypeError, ValueError), match=match):
    make()


def test_optimizer_state_from_another_mode_is_refused(rng):
  """Issue 11, item 12: a lazy update used to drop a catch-up state's `last` silently, and
  the reverse failed with an AttributeError."""
  p, (x, ids) = _params(rng), _batches(rng, 1)[0]
  g = _sparse_grads(p, x, ids)
  lazy, eager = jslide.optim.sparse_adam(1e-2), jslide.optim.sparse_adam(1e-2, catch_up=True)
  with pytest.raises(ValueError, match=r"catch_up=False\).update got a catch-up state"):
    lazy.update(g, eager.init(p), p)
  with pytest.raises(ValueError, match=r"catch_up=True\).update got a lazy state"):
    eager.update(g, lazy.init(p), p)


def test_ids_of_another_integer_type_are_refused_under_jit(rng):
  """Issue 11, item 10: under jit a uint32 0xFFFFFFFF used to become -1 (padding) and an
  out-of-range id a valid row; eager calls range-check and convert."""
  w, b, x = normal(rng, N, D), normal(rng, N), normal(rng, 2, D)
  ids = jnp.asarray([[1, 2], [3, 0xFFFFFFFF]], jnp.uint32)
  with pytest.raises(TypeError, match="ids must be int32 under jit, got uint32"):
    jax.jit(jslide.sparse_linear)(x, w, b, ids)
  with pytest.raises(ValueError, match="ids holds 4294967295"):
    jslide.sparse_linear(x, w, b, ids)
  ok = jnp.asarray([[1, 2], [3, 4]], jnp.uint32)
  assert_close(jslide.sparse_linear(x, w, b, ok), jax.jit(jslide.sparse_linear)(
      x, w, b, ok.astype(jnp.int32)))


@pytest.mark.parametrize("make_tx", [lambda: jslide.optim.sparse_adam(1e-2, catch_up=True),
                                     lambda: jslide.optim.sparse_adam(1e-2),
                                     lambda: jslide.optim.sparse_sgd(1e-2)],
                         ids=["catch-up adam", "lazy adam", "sgd"])
def test_finite_rows_whose_sum_overflows_are_a_skipped_step(make_tx):
  """Issue 11, item 5: two finite rows of 3e38 for one id used to write NaN into the table
  and inf into Adam's moments (sgd: -inf) with no error; so did a sum whose square overflows
  the second moment. The guard now checks what the rows sum to, and skips the step."""
  w = jnp.ones((6, 3), jnp.float32)
  tx = jslide.optim.apply_if_finite(make_tx(), max_consecutive_errors=5)
  for big in (3e38, 2e19):  # the sum overflows; the sum's square overflows
    grad = jslide.RowSparseGrad(jnp.asarray([[2], [2]], jnp.int32), jnp.ones((2, 1)),
                                jnp.full((2, 3), big, jnp.float32), 6)
    state = tx.init(w)
    updates, state = jax.jit(tx.update)(grad, state, w)
    assert not bool(state.last_finite)
    np.testing.assert_array_equal(np.asarray(optax.apply_updates(w, updates)), np.asarray(w))
  # A large but safe gradient still updates.
  grad = jslide.RowSparseGrad(jnp.asarray([[2], [2]], jnp.int32), jnp.ones((2, 1)),
                              jnp.full((2, 3), 1e6, jnp.float32), 6)
  updates, state = jax.jit(tx.update)(grad, tx.init(w), w)
  new = np.asarray(optax.apply_updates(w, updates))
  assert bool(state.last_finite) and np.all(np.isfinite(new)) and not np.allclose(new[2], 1.0)


def test_empty_active_sets_features_and_rows_give_zeros_not_errors(rng):
  """Issue 11, item 10: zero active ids, zero features, d=0 or no rows used to raise a
  ZeroDivisionError from a reshape."""
  w, b = normal(rng, N, D), normal(rng, N)
  x = normal(rng, 3, D)
  y = jslide.sparse_linear(x, w, b, jnp.zeros((3, 0), jnp.int32))
  assert y.shape == (3, 0)
  assert jslide.sparse_linear(jnp.zeros((0, D)), w, b, jnp.zeros((0, 4), jnp.int32)).shape == (0, 4)
  h = jslide.embedding_bag(jnp.zeros((3, 0), jnp.int32), jnp.zeros((3, 0)), w)
  assert_close(h, jnp.zeros((3, D)))
  h0 = jslide.embedding_bag(jnp.asarray([[1, 2]], jnp.int32), jnp.ones((1, 2)),
                            jnp.zeros((N, 0)))
  assert h0.shape == (1, 0)
  ids = random_ids(rng, N, (3, 4))
  y0 = jslide.sparse_linear(jnp.zeros((3, 0)), jnp.zeros((N, 0)), b, ids)
  assert_close(y0, jnp.where(ids >= 0, b[jnp.maximum(ids, 0)], 0.0))  # d=0: the bias alone
  # Gradients through the empty cases are zeros of the right shapes.
  gx = jax.grad(lambda x: jnp.sum(jslide.sparse_linear(x, w, b, jnp.zeros((3, 0), jnp.int32))))(x)
  assert_close(gx, jnp.zeros_like(x))
  loss = lambda t: jnp.sum(jslide.sparse_linear(x, t[0], t[1], jnp.zeros((3, 0), jnp.int32)))
  _, g = jslide.value_and_grad(loss, tables=(True, True))((w, b))
  assert_close(jslide.tree.todense(g)[0], jnp.zeros_like(w))


def test_inject_hyperparams_wraps_catch_up_adam_and_follows_the_injected_rate(rng):
  """Issue 11, item 12: optax.inject_hyperparams could not wrap sparse_adam(catch_up=True).
  Now, with b1, b2, eps static, the learning rate is injected and changed between steps, and
  the run equals inject_hyperparams(optax.adam) on dense gradients, catch_up included (rows
  idle at the end catch up at the latest injected rate)."""
  p = _params(rng)
  batches = _batches(rng, 3)
  # The last step touches only rows 0..4, so catch_up has idle rows to bring up to date.
  x, ids = batches[-1]
  batches[-1] = (x, jnp.where(ids < 5, ids, -1))
  static = ("b1", "b2", "eps", "catch_up")
  sparse = optax.inject_hyperparams(jslide.optim.sparse_adam, static_args=static)(
      learning_rate=1e-2, catch_up=True)
  dense = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)

  def run(tx, grads_fn, finish=None):
    params, state = p, tx.init(p)
    step = jax.jit(lambda p, s, x, ids: tx.update(grads_fn(p, x, ids), s, p))
    for i, (x, ids) in enumerate(batches):
      state.hyperparams["learning_rate"] = jnp.asarray([1e-2, 3e-2, 5e-3][i])
      u, state = step(params, state, x, ids)
      params = optax.apply_updates(params, u)
    return finish(params, state)[0] if finish else params

  got = run(sparse, _sparse_grads, finish=jslide.optim.catch_up)
  want = run(dense, _dense_grads)
  _assert_same(got, want)
  with pytest.raises(TypeError, match=r"b1 is compiled into the kernels.*static_args"):
    optax.inject_hyperparams(jslide.optim.sparse_adam)(learning_rate=1e-2).init(p)
