"""Every FFI kernel against its jax.numpy reference, edge cases, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import jslide
from jslide import kernels
from jslide import reference as ref

from helpers import KERNEL_ERROR, assert_close, normal, random_ids

shapes = st.tuples(st.integers(1, 9),    # R
                   st.integers(1, 40),   # A
                   st.integers(1, 50),   # N
                   st.integers(1, 70))   # D


@given(shapes, st.integers(0, 2**31 - 1), st.booleans())
def test_gather_dot_matches_reference(shape, seed, with_bias):
  r, a, n, d = shape
  rng = np.random.default_rng(seed)
  x, w = normal(rng, r, d), normal(rng, n, d)
  b = normal(rng, n) if with_bias else None
  ids = random_ids(rng, n, (r, a))
  assert_close(kernels.gather_dot(x, w, b, ids), ref.gather_dot(x, w, b, ids))


@given(shapes, st.integers(0, 2**31 - 1))
def test_gather_weighted_sum_matches_reference(shape, seed):
  r, a, n, d = shape
  rng = np.random.default_rng(seed)
  ids, coef, w = random_ids(rng, n, (r, a)), normal(rng, r, a), normal(rng, n, d)
  assert_close(kernels.gather_weighted_sum(ids, coef, w), ref.gather_weighted_sum(ids, coef, w))


@given(shapes, st.integers(0, 2**31 - 1))
def test_scatter_outer_matches_reference(shape, seed):
  r, a, n, d = shape
  rng = np.random.default_rng(seed)
  ids, coef, vecs = random_ids(rng, n, (r, a)), normal(rng, r, a), normal(rng, r, d)
  assert_close(kernels.scatter_outer(ids, coef, vecs, n), ref.scatter_outer(ids, coef, vecs, n),
               atol=1e-4)


def test_duplicate_ids_are_summed(rng):
  n, d = 4, 3
  ids = jnp.array([[2, 2, 2], [2, -1, 0]], jnp.int32)
  coef, vecs = normal(rng, 2, 3), normal(rng, 2, d)
  dense = kernels.scatter_outer(ids, coef, vecs, n)
  expect_row2 = (coef[0, 0] + coef[0, 1] + coef[0, 2]) * vecs[0] + coef[1, 0] * vecs[1]
  assert_close(dense[2], expect_row2)
  assert_close(dense[0], coef[1, 2] * vecs[1])
  assert_close(dense[1], jnp.zeros(d))
  assert_close(dense[3], jnp.zeros(d))


def test_all_padding_gives_zeros(rng):
  x, w, b = normal(rng, 3, 5), normal(rng, 7, 5), normal(rng, 7)
  ids = -jnp.ones((3, 4), jnp.int32)
  assert_close(kernels.gather_dot(x, w, b, ids), jnp.zeros((3, 4)))
  assert_close(kernels.gather_weighted_sum(ids, normal(rng, 3, 4), w), jnp.zeros((3, 5)))
  assert_close(kernels.scatter_outer(ids, normal(rng, 3, 4), x, 7), jnp.zeros((7, 5)))


def test_active_set_larger_than_table(rng):
  # A = 10 active slots over a table of N = 3 rows: ids repeat within a row.
  n, d, a = 3, 4, 10
  x, w, b = normal(rng, 1, d), normal(rng, n, d), normal(rng, n)
  ids = jnp.asarray(rng.integers(0, n, size=(1, a)), jnp.int32)
  assert_close(kernels.gather_dot(x, w, b, ids), ref.gather_dot(x, w, b, ids))
  g = normal(rng, 1, a)
  assert_close(kernels.scatter_outer(ids, g, x, n), ref.scatter_outer(ids, g, x, n))


def test_empty_batch(rng):
  w = normal(rng, 6, 4)
  x, ids = jnp.zeros((0, 4), jnp.float32), jnp.zeros((0, 3), jnp.int32)
  assert kernels.gather_dot(x, w, None, ids).shape == (0, 3)
  assert kernels.gather_weighted_sum(ids, jnp.zeros((0, 3)), w).shape == (0, 4)
  assert_close(kernels.scatter_outer(ids, jnp.zeros((0, 3)), x, 6), jnp.zeros((6, 4)))


def test_large_batch_threaded_matches_single_thread(rng):
  r, a, n, d = 512, 64, 5000, 96
  x, w, b = normal(rng, r, d), normal(rng, n, d), normal(rng, n)
  ids = random_ids(rng, n, (r, a))
  many = jax.jit(kernels.gather_dot)(x, w, b, ids)
  jslide.set_num_threads(1)
  try:
    one = kernels.gather_dot(x, w, b, ids)
  finally:
    jslide.set_num_threads(0)
  np.testing.assert_array_equal(np.asarray(many), np.asarray(one))
  assert_close(many, ref.gather_dot(x, w, b, ids), atol=1e-4)


@pytest.mark.parametrize("lr", [0.1, 1e-3])
def test_sparse_adam_rows_matches_lazy_adam_reference(rng, lr):
  r, a, n, d = 6, 5, 9, 7
  w, m, v = normal(rng, n, d), normal(rng, n, d, scale=0.1), jnp.abs(normal(rng, n, d))
  hyper = dict(learning_rate=lr, bias_correction1=1 - 0.9**3, bias_correction2=1 - 0.999**3,
               b1=0.9, b2=0.999, eps=1e-8)
  ids, coef, vecs = random_ids(rng, n, (r, a)), normal(rng, r, a), normal(rng, r, d)
  got = kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, **hyper)
  want = ref.sparse_adam_rows(w, m, v, ids, coef, vecs, **hyper)
  for g_, w_ in zip(got, want):
    assert_close(g_, w_, rtol=1e-5, atol=1e-5)
  untouched = ~np.asarray(ref.touched_rows(ids, n))
  if untouched.any():  # rows not in ids are bit-for-bit unchanged
    np.testing.assert_array_equal(np.asarray(got[0])[untouched], np.asarray(w)[untouched])
    np.testing.assert_array_equal(np.asarray(got[1])[untouched], np.asarray(m)[untouched])


def test_one_dimensional_tables_update_as_tables_of_one_column(rng):
  """A bias f32[N] goes to the Adam, catch-up and SGD kernels as it is (no reshape, which
  would copy it around the in-place call) and is updated as the table f32[N, 1]."""
  r, a, n = 4, 6, 11
  w, m, v = normal(rng, n), normal(rng, n, scale=0.1), jnp.abs(normal(rng, n))
  ids, coef, ones = random_ids(rng, n, (r, a)), normal(rng, r, a), jnp.ones((r, 1))
  hyper = dict(learning_rate=0.1, bias_correction1=1 - 0.9**4, bias_correction2=1 - 0.999**4,
               b1=0.9, b2=0.999, eps=1e-8)
  last = jnp.asarray(rng.integers(0, 4, size=n), jnp.int32)
  col = lambda x: x.reshape(n, 1)
  for kw in (dict(), dict(last=last, step=4)):
    flat = kernels.sparse_adam_rows(w, m, v, ids, coef, ones, **hyper, **kw)
    table = kernels.sparse_adam_rows(col(w), col(m), col(v), ids, coef, ones, **hyper, **kw)
    for f, t in zip(flat, table):
      assert f.shape == (n,)
      np.testing.assert_array_equal(np.asarray(f), np.asarray(t).reshape(-1))
  caught = kernels.adam_catch_up_rows(w, m, v, last, step=5, learning_rate=0.1, b1=0.9,
                                      b2=0.999, eps=1e-8)
  want = kernels.adam_catch_up_rows(col(w), col(m), col(v), last, step=5, learning_rate=0.1,
                                    b1=0.9, b2=0.999, eps=1e-8)
  for f, t in zip(caught, want):
    np.testing.assert_array_equal(np.asarray(f), np.asarray(t).reshape(f.shape))
  np.testing.assert_array_equal(
      np.asarray(kernels.sparse_sgd_rows(w, ids, coef, ones, learning_rate=0.5)),
      np.asarray(kernels.sparse_sgd_rows(col(w), ids, coef, ones, learning_rate=0.5))[:, 0])
  with pytest.raises(ValueError, match=r"w must be a table f32\[N\] or f32\[N, D\]"):
    kernels.sparse_sgd_rows(jnp.zeros((2, 2, 2)), ids, coef, ones, learning_rate=0.5)


def _adam_state(rng, n, d, step):
  """Moments and last-update steps as training leaves them: never-updated rows (last 0) have
  zero moments; some rows idle for over 64 steps (the catch-up's tail)."""
  m, v = normal(rng, n, d, scale=0.1), jnp.abs(normal(rng, n, d, scale=0.1)) + 1e-4
  last = rng.integers(0, step, size=n).astype(np.int32)
  last[: max(n // 4, 1)] = 0
  never = jnp.asarray(last == 0)[:, None]
  return jnp.where(never, 0.0, m), jnp.where(never, 0.0, v), jnp.asarray(last)


@given(st.integers(1, 30), st.integers(1, 9), st.integers(2, 200), st.integers(0, 2**31 - 1))
def test_adam_catch_up_rows_matches_dense_adam_steps(n, d, step, seed):
  rng = np.random.default_rng(seed)
  w = normal(rng, n, d)
  m, v, last = _adam_state(rng, n, d, step)
  hyper = dict(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8)
  got = kernels.adam_catch_up_rows(w, m, v, last, step=step, **hyper)
  want = ref.adam_catch_up_rows(w, m, v, last, step=step, **hyper)
  for g_, w_ in zip(got, want):
    assert_close(g_, w_, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(got[3]) == step)


def test_catch_up_adam_keeps_counting_past_2_to_the_24_steps(rng):
  """Step counts reach the kernels exactly (not as one float32, exact only to 2^24): late in
  a run, where b^t is 0 in float32, the same gaps since each row's last update give the same
  update at step 100,070 as at 2^24 + 100,070 and at 2^31 - 2."""
  r, a, n, d = 6, 5, 30, 7
  w = normal(rng, n, d)
  m, v, gap_last = _adam_state(rng, n, d, 70)
  ids, coef, vecs = random_ids(rng, n, (r, a)), normal(rng, r, a), normal(rng, r, d)
  hyper = dict(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8, bias_correction1=1.0,
               bias_correction2=1.0)
  outs = []
  for base in (100_000, 2**24, 2**31 - 2 - 70):
    last = jnp.where(gap_last > 0, gap_last + base, 0).astype(jnp.int32)
    step = base + 70
    out = kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, last=last, step=step, **hyper)
    assert np.all(np.asarray(out[3])[np.asarray(ref.touched_rows(ids, n))] == step)
    caught = kernels.adam_catch_up_rows(*out[:4], step=step + 1, **{
        k: hyper[k] for k in ("learning_rate", "b1", "b2", "eps")})
    outs.append(caught)
  for other in outs[1:]:
    for x, y in zip(outs[0][:3], other[:3]):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("step", [2, 70, 500])
def test_sparse_adam_rows_with_catch_up_matches_reference(rng, step):
  r, a, n, d = 6, 5, 30, 7
  w = normal(rng, n, d)
  m, v, last = _adam_state(rng, n, d, step - 1)
  ids, coef, vecs = random_ids(rng, n, (r, a)), normal(rng, r, a), normal(rng, r, d)
  hyper = dict(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8)
  got = kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, bias_correction1=1 - 0.9**step,
                                 bias_correction2=1 - 0.999**step, last=last, step=step,
                                 **hyper)
  want = ref.sparse_adam_catch_up_rows(w, m, v, last, ids, coef, vecs, step=step, **hyper)
  for g_, w_ in zip(got, want):
    assert_close(g_, w_, rtol=1e-4, atol=1e-5)
  untouched = ~np.asarray(ref.touched_rows(ids, n))
  np.testing.assert_array_equal(np.asarray(got[0])[untouched], np.asarray(w)[untouched])
  np.testing.assert_array_equal(np.asarray(got[3])[untouched], np.asarray(last)[untouched])


def test_catch_up_state_errors(rng):
  n, d = 5, 3
  w, m, v = normal(rng, n, d), jnp.zeros((n, d)), jnp.zeros((n, d))
  ids, coef, vecs = jnp.array([[0, 1]], jnp.int32), normal(rng, 1, 2), normal(rng, 1, d)
  hyper = dict(learning_rate=0.1, bias_correction1=0.1, bias_correction2=0.1, b1=0.9,
               b2=0.999, eps=1e-8)
  with pytest.raises(ValueError, match="step .* is required with last"):
    kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, last=jnp.zeros(n, jnp.int32), **hyper)
  with pytest.raises(TypeError, match="last must be int32"):
    kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, last=jnp.zeros(n), step=1, **hyper)
  with pytest.raises(ValueError, match=r"last shape \(4,\) must be \(5,\)"):
    kernels.adam_catch_up_rows(w, m, v, jnp.zeros(4, jnp.int32), step=3, learning_rate=0.1,
                               b1=0.9, b2=0.999, eps=1e-8)
  # A `last` ahead of the step (or negative) at a touched row is a corrupt state: refused by
  # the kernel before it indexes anything with it.
  f = jax.jit(lambda w, m, v, last: kernels.sparse_adam_rows(
      w, m, v, ids, coef, vecs, last=last, step=3, **hyper))
  with pytest.raises(KERNEL_ERROR, match=r"last\[1\] = 3 must lie in \[0, 2\]"):
    jax.block_until_ready(f(w, m, v, jnp.array([0, 3, 0, 0, 0], jnp.int32)))
  with pytest.raises(KERNEL_ERROR, match=r"last\[0\] = -7 must lie in \[0, 2\]"):
    jax.block_until_ready(f(w, m, v, jnp.array([-7, 1, 0, 0, 0], jnp.int32)))
  # A step reads only the touched rows' entries (no O(N) pass): an untouched corrupt entry
  # leaves the step as it would be, and the catch-up of every row, which reads it, refuses it.
  corrupt = jnp.array([0, 1, 2**30, 0, 0], jnp.int32)
  got = f(w, m, v, corrupt)
  want = f(w, m, v, jnp.array([0, 1, 0, 0, 0], jnp.int32))
  for g_, w_ in zip(got[:3], want[:3]):
    np.testing.assert_array_equal(np.asarray(g_), np.asarray(w_))
  with pytest.raises(KERNEL_ERROR, match=r"last\[2\] = 1073741824 must lie"):
    jax.block_until_ready(jax.jit(lambda: kernels.adam_catch_up_rows(
        w, m, v, corrupt, step=3, learning_rate=0.1, b1=0.9, b2=0.999, eps=1e-8))())
  with pytest.raises(KERNEL_ERROR, match="step t >= 1"):
    jax.block_until_ready(jax.jit(lambda: kernels.sparse_adam_rows(
        w, m, v, ids, coef, vecs, last=jnp.zeros(n, jnp.int32), step=0, **hyper))())


def test_sparse_sgd_rows_matches_reference(rng):
  r, a, n, d = 5, 8, 6, 3
  w = normal(rng, n, d)
  ids, coef, vecs = random_ids(rng, n, (r, a)), normal(rng, r, a), normal(rng, r, d)
  assert_close(kernels.sparse_sgd_rows(w, ids, coef, vecs, learning_rate=0.5),
               ref.sparse_sgd_rows(w, ids, coef, vecs, learning_rate=0.5), atol=1e-5)


def test_in_place_update_with_donation(rng):
  n, d = 1000, 16
  w, m, v = normal(rng, n, d), jnp.zeros((n, d)), jnp.zeros((n, d))
  ids = random_ids(rng, n, (4, 8))
  coef, vecs = normal(rng, 4, 8), normal(rng, 4, d)

  @jax.jit
  def expected(w, m, v):
    return ref.sparse_adam_rows(w, m, v, ids, coef, vecs, learning_rate=0.1,
                                bias_correction1=0.1, bias_correction2=0.001, b1=0.9,
                                b2=0.999, eps=1e-8)

  want = expected(w, m, v)
  pointers = [x.unsafe_buffer_pointer() for x in (w, m, v)]
  step = jax.jit(lambda w, m, v: kernels.sparse_adam_rows(
      w, m, v, ids, coef, vecs, learning_rate=0.1, bias_correction1=0.1,
      bias_correction2=0.001, b1=0.9, b2=0.999, eps=1e-8), donate_argnums=(0, 1, 2))
  got = step(w, m, v)
  assert [x.unsafe_buffer_pointer() for x in got] == pointers
  for g_, w_ in zip(got, want):
    assert_close(g_, w_)


# ----------------------------------------------------------------------------- bad input


def test_static_errors_name_the_argument(rng):
  x, w, b = normal(rng, 2, 3), normal(rng, 5, 3), normal(rng, 5)
  ids = jnp.array([[0, 1], [2, 3]], jnp.int32)
  with pytest.raises(TypeError, match="x must be float32"):
    kernels.gather_dot(x.astype(jnp.int32), w, b, ids)
  with pytest.raises(TypeError, match="ids must have an integer dtype"):
    kernels.gather_dot(x, w, b, ids.astype(jnp.float32))
  with pytest.raises(ValueError, match="differ in D"):
    kernels.gather_dot(x, normal(rng, 5, 4), b, ids)
  with pytest.raises(ValueError, match="b shape"):
    kernels.gather_dot(x, w, normal(rng, 4), ids)
  with pytest.raises(ValueError, match="ids shape"):
    kernels.gather_dot(x, w, b, ids[:1])
  with pytest.raises(ValueError, match=r"ids holds 5; ids must lie in \[-1, 5\)"):
    kernels.gather_dot(x, w, b, jnp.array([[0, 5], [1, 1]]))
  with pytest.raises(ValueError, match=r"ids holds -2"):
    kernels.gather_weighted_sum(jnp.array([[0, -2]]), normal(rng, 1, 2), w)
  with pytest.raises(ValueError, match="coef shape"):
    kernels.scatter_outer(ids, normal(rng, 2, 3), x, 5)
  with pytest.raises(ValueError, match="vecs shape"):
    kernels.scatter_outer(ids, normal(rng, 2, 2), normal(rng, 3, 3), 5)
  with pytest.raises(ValueError, match="m shape"):
    kernels.sparse_adam_rows(w, jnp.zeros((4, 3)), jnp.zeros((5, 3)), ids, normal(rng, 2, 2),
                             x, learning_rate=0.1, bias_correction1=0.1,
                             bias_correction2=0.1, b1=0.9, b2=0.999, eps=1e-8)


def test_dynamic_id_errors_come_from_the_kernel(rng):
  x, w = normal(rng, 2, 3), normal(rng, 5, 3)
  bad = jnp.array([[0, 9], [1, 2]], jnp.int32)
  f = jax.jit(lambda x, w, ids: kernels.gather_dot(x, w, None, ids))
  with pytest.raises(KERNEL_ERROR, match=r"ids holds 9 .*\[-1, 5\)"):
    f(x, w, bad).block_until_ready()
  g = jax.jit(lambda ids, c, w: kernels.gather_weighted_sum(ids, c, w))
  with pytest.raises(KERNEL_ERROR, match=r"ids holds -3"):
    g(jnp.array([[-3, 0]]), normal(rng, 1, 2), w).block_until_ready()
  h = jax.jit(lambda ids, c, v: kernels.scatter_outer(ids, c, v, 5))
  with pytest.raises(KERNEL_ERROR, match=r"ids holds 5"):
    h(jnp.array([[5]]), normal(rng, 1, 1), normal(rng, 1, 3)).block_until_ready()


def test_kernel_error_after_a_good_call_keeps_its_message(rng):
  """A jitted call that already ran once raises the kernel's error through JAX's C++ fast
  path, typed ValueError there (jax-ml/jax#34083): the message still names the id."""
  x, w = normal(rng, 2, 3), normal(rng, 5, 3)
  f = jax.jit(lambda x, w, ids: kernels.gather_dot(x, w, None, ids))
  f(x, w, jnp.array([[0, 4], [1, -1]], jnp.int32)).block_until_ready()
  with pytest.raises(KERNEL_ERROR, match=r"ids holds 7 .*\[-1, 5\)"):
    f(x, w, jnp.array([[0, 7], [1, 2]], jnp.int32)).block_until_ready()


def test_non_finite_gradient_is_refused(rng):
  n, d = 6, 4
  w, m, v = normal(rng, n, d), jnp.zeros((n, d)), jnp.zeros((n, d))
  ids = jnp.array([[1, 2]], jnp.int32)
  coef = jnp.array([[1.0, jnp.nan]], jnp.float32)
  f = jax.jit(lambda w, m, v, c: kernels.sparse_adam_rows(
      w, m, v, ids, c, normal(rng, 1, d), learning_rate=0.1, bias_correction1=0.1,
      bias_correction2=0.1, b1=0.9, b2=0.999, eps=1e-8))
  with pytest.raises(KERNEL_ERROR, match="coef has a non-finite value"):
    jax.block_until_ready(f(w, m, v, coef))
  g = jax.jit(lambda w, c: kernels.sparse_sgd_rows(w, ids, c, jnp.full((1, d), jnp.inf),
                                                   learning_rate=0.1))
  with pytest.raises(KERNEL_ERROR, match="vecs has a non-finite value"):
    jax.block_until_ready(g(w, jnp.ones((1, 2))))
