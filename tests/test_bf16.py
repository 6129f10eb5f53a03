"""bfloat16 tables and moments: float32 maths on the widened values, stochastic rounding of
what is written back (exactly the bits of jslide.reference), unbiasedness, and the modules and
optimizers end to end. Also the huge-page allocation of large tables."""

import os
import re

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
from jslide.xc import objectives

from helpers import assert_close, normal, random_ids

BF16 = jnp.bfloat16
HYPER = dict(learning_rate=1e-2, bias_correction1=1 - 0.9**3, bias_correction2=1 - 0.999**3,
             b1=0.9, b2=0.999, eps=1e-8)

shapes = st.tuples(st.integers(1, 9), st.integers(1, 40), st.integers(1, 50),
                   st.integers(1, 70))


def f32(x):
  return np.asarray(jnp.asarray(x).astype(jnp.float32))


def bf16_table(rng, *shape, scale=1.0):
  return normal(rng, *shape, scale=scale).astype(BF16)


@pytest.mark.slow
@given(shapes, st.integers(0, 2**31 - 1))
def test_gathers_of_bf16_tables_are_float32_maths_on_the_widened_rows(shape, seed):
  r, a, n, d = shape
  rng = np.random.default_rng(seed)
  x, w, b = normal(rng, r, d), bf16_table(rng, n, d), normal(rng, n)
  ids, coef = random_ids(rng, n, (r, a)), normal(rng, r, a)
  wide = w.astype(jnp.float32)  # exact: bfloat16 is float32's upper half
  assert_close(kernels.gather_dot(x, w, b, ids), ref.gather_dot(x, wide, b, ids), atol=1e-4)
  assert_close(kernels.gather_weighted_sum(ids, coef, w),
               ref.gather_weighted_sum(ids, coef, wide), atol=1e-4)


@pytest.mark.parametrize("table_dtype, moment_dtype",
                         [(BF16, jnp.float32), (BF16, BF16), (jnp.float32, BF16)])
def test_lazy_adam_rounds_the_float32_update_with_the_reference_bits(rng, table_dtype,
                                                                     moment_dtype):
  """The bfloat16 outputs are the float32 kernel's results (same inputs, widened) rounded by
  stochastic_round_bf16 with the bits of reference.adam_rounding_bits, bit for bit; float32
  outputs equal the float32 kernel's; untouched rows are untouched."""
  r, a, n, d = 5, 7, 23, 40
  w = normal(rng, n, d).astype(table_dtype)
  m = normal(rng, n, d, scale=0.1).astype(moment_dtype)
  v = jnp.abs(normal(rng, n, d, scale=0.1)).astype(moment_dtype)
  ids, coef, vecs = random_ids(rng, n, (r, a)), normal(rng, r, a), normal(rng, r, d)
  got = kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, **HYPER)
  wide = [x.astype(jnp.float32) for x in (w, m, v)]
  exact = kernels.sparse_adam_rows(*wide, ids, coef, vecs, **HYPER)
  assert_close(exact[0], ref.sparse_adam_rows(*wide, ids, coef, vecs, **HYPER)[0], atol=1e-5)
  rows = np.arange(n)
  seed = ref.step_seed(1, ref.UPDATE_SALT)  # the lazy kernel's step is 1
  bits = ref.adam_rounding_bits(seed, rows, d)
  touched = np.asarray(ref.touched_rows(ids, n))
  for out, want, before, b in zip(got, exact, (w, m, v), bits):
    assert out.dtype == before.dtype
    if out.dtype == BF16:
      want = np.where(touched[:, None], ref.stochastic_round_bf16(np.asarray(want), b),
                      f32(before))
    np.testing.assert_array_equal(f32(out), np.asarray(want))
    np.testing.assert_array_equal(f32(out)[~touched], f32(before)[~touched])


def test_sgd_on_a_bf16_table_rounds_with_the_gradient_seed(rng):
  r, a, n, d = 4, 6, 17, 33
  w = bf16_table(rng, n, d)
  ids, coef, vecs = random_ids(rng, n, (r, a)), normal(rng, r, a), normal(rng, r, d)
  got = kernels.sparse_sgd_rows(w, ids, coef, vecs, learning_rate=0.01)
  exact = np.asarray(kernels.sparse_sgd_rows(w.astype(jnp.float32), ids, coef, vecs,
                                             learning_rate=0.01))
  bits = ref.rounding_bits(ref.sgd_rounding_seed(coef), np.arange(n), d)
  touched = np.asarray(ref.touched_rows(ids, n))[:, None]
  want = np.where(touched, ref.stochastic_round_bf16(exact, bits), f32(w))
  np.testing.assert_array_equal(f32(got), want)
  # A RowSparseGrad delta added to a bfloat16 table (optax.apply_updates) is the same kernel
  # with a learning rate of -1 and the delta's coefficients (and so their seed).
  delta = jslide.RowSparseGrad(ids, coef, vecs, n).scale(-0.01)
  exact = np.asarray(kernels.sparse_sgd_rows(w.astype(jnp.float32), ids, delta.coef, vecs,
                                             learning_rate=-1.0))
  bits = ref.rounding_bits(ref.sgd_rounding_seed(delta.coef), np.arange(n), d)
  want = np.where(touched, ref.stochastic_round_bf16(exact, bits), f32(w))
  np.testing.assert_array_equal(f32(w + delta), want)


def _within_roundings(out, want, before, count):
  """|out - want| at most ``count`` bfloat16 spacings of the larger of |want| and |before|
  (a rounded input moves a result by its own spacing, which may exceed the result's)."""
  scale = np.maximum(np.abs(np.asarray(want, np.float32)), np.abs(f32(before)))
  spacing = 2.0 ** (np.floor(np.log2(np.maximum(scale, 1e-30))) - 7)
  assert np.all(np.abs(f32(out) - np.asarray(want, np.float32)) <= count * spacing + 1e-30)


@pytest.mark.parametrize("moment_dtype", [jnp.float32, BF16])
def test_catch_up_on_bf16_is_within_two_roundings_of_float32(rng, moment_dtype):
  """With catch-up the kernels round twice (the catch-up, then the update), so the result is
  within two bfloat16 spacings of the float32 kernel's; the same call gives the same bits."""
  n, d, step = 19, 24, 9
  w = bf16_table(rng, n, d)
  m = normal(rng, n, d, scale=0.1).astype(moment_dtype)
  v = (jnp.abs(normal(rng, n, d, scale=0.1)) + 1e-3).astype(moment_dtype)
  last = jnp.asarray(rng.integers(0, step, size=n), jnp.int32)
  ids, coef, vecs = random_ids(rng, n, (3, 5)), normal(rng, 3, 5), normal(rng, 3, d)
  hyper = dict(HYPER, bias_correction1=1 - 0.9**step, bias_correction2=1 - 0.999**step)
  got = kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, last=last, step=step, **hyper)
  again = kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, last=last, step=step, **hyper)
  wide = [x.astype(jnp.float32) for x in (w, m, v)]
  exact = kernels.sparse_adam_rows(*wide, ids, coef, vecs, last=last, step=step, **hyper)
  for out, twin, want, before in zip(got, again, exact, (w, m, v, last)):
    np.testing.assert_array_equal(np.asarray(out), np.asarray(twin))
    if out.dtype == BF16:
      _within_roundings(out, want, before, 2)
  caught = kernels.adam_catch_up_rows(w, m, v, last, step=step, learning_rate=0.01, b1=0.9,
                                      b2=0.999, eps=1e-8)
  wanted = kernels.adam_catch_up_rows(*wide, last, step=step, learning_rate=0.01, b1=0.9,
                                      b2=0.999, eps=1e-8)
  for out, want, before in zip(caught[:3], wanted[:3], (w, m, v)):
    _within_roundings(out, want, before, 1)


def test_stochastic_rounding_is_unbiased_where_rounding_to_nearest_stalls():
  """Adam steps of about 1e-3 on weights near 1 (a bfloat16 spacing of 2^-7 there): each
  step is below half a spacing, so rounding to nearest would never move a weight; the
  rounded kernel moves them by the float32 amount on average."""
  n, d, steps = 64, 32, 200
  w = jnp.ones((n, d), BF16)
  m, v = jnp.zeros((n, d)), jnp.zeros((n, d))
  ids = jnp.arange(n, dtype=jnp.int32)[:, None]
  coef, vecs = jnp.ones((n, 1)), jnp.ones((n, d))
  exact = jnp.ones((n, d))
  em, ev = m, v
  for t in range(1, steps + 1):
    hyper = dict(learning_rate=1e-3, bias_correction1=1 - 0.9**t, bias_correction2=1 - 0.999**t,
                 b1=0.9, b2=0.999, eps=1e-8)
    last = jnp.full((n,), t - 1, jnp.int32)
    w, m, v, _ = kernels.sparse_adam_rows(w, m, v, ids, coef, vecs, last=last, step=t, **hyper)
    exact, em, ev = ref.sparse_adam_rows(exact, em, ev, ids, coef, vecs, **hyper)
  moved = 1.0 - f32(w)
  assert abs(float(moved.mean()) - float(1.0 - exact.mean())) < 0.01 * float(1 - exact.mean())
  assert float(1.0 - exact.mean()) > 0.15  # float32 moved 0.2; nearest rounding: 0
  assert len(np.unique(f32(w))) > 1  # different elements rounded differently


def test_stochastic_round_reference_is_unbiased():
  rng = np.random.default_rng(0)
  x = np.full(200_000, 1.0 + 3 * 2.0**-10, np.float32)  # 3/8 of a spacing above 1
  out = ref.stochastic_round_bf16(x, rng.integers(0, 2**32, size=x.shape, dtype=np.uint32))
  assert set(np.unique(out)) == {1.0, 1.0 + 2.0**-7}
  assert abs(float(out.mean()) - float(x[0])) < 2e-5
  special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
  got = ref.stochastic_round_bf16(special, np.full(5, 0xFFFF, np.uint32))
  np.testing.assert_array_equal(got[:2], special[:2])
  assert np.isnan(got[2]) and got[3] == 0.0


def test_grad_through_a_bf16_table_is_the_float32_gradient_in_bf16(rng):
  x, w, b = normal(rng, 3, 8), bf16_table(rng, 11, 8), normal(rng, 11)
  ids = random_ids(rng, 11, (3, 5))
  loss = lambda w: jnp.sum(jslide.sparse_linear(x, w, b, ids) ** 2)
  g = jax.grad(loss)(w)
  assert g.dtype == BF16
  want = jax.grad(lambda w: jnp.sum(ref.sparse_linear(x, w, b, ids) ** 2))(w.astype(jnp.float32))
  assert_close(g.astype(jnp.float32), want.astype(BF16).astype(jnp.float32), atol=2e-2,
               rtol=1e-2)
  _, rs = jslide.value_and_grad(lambda p: loss(p["w"]), tables=jslide.tables.min_rows(11))(
      {"w": w})
  assert rs["w"].dtype == jnp.float32  # a row-sparse gradient's factors stay float32
  assert_close(rs["w"].todense(), want, atol=1e-4)


def _batch(rng, n_in, n_out, b=8):
  feat_ids = random_ids(rng, n_in, (b, 7))
  feat_vals = jnp.asarray(rng.random((b, 7)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, n_out, size=(b, 1)), jnp.int32)
  return {"feat_ids": feat_ids, "feat_vals": feat_vals, "labels": labels,
          "mask": jnp.ones(b, bool)}


@pytest.mark.parametrize("moment_dtype", [None, BF16])
def test_a_bf16_model_trains_in_one_donated_step_keeping_its_dtypes(rng, moment_dtype):
  n_in, n_out = 300, 2_000
  model = jslide.nn.SparseMLP(n_in, n_out, hidden=(32,), active=64, hash_family="cluster",
                              num_hashes=6, num_hash_tables=1, param_dtype=BF16, rngs=nnx.Rngs(0))
  assert model.input.kernel.get_value().dtype == BF16
  assert model.output.kernel.get_value().dtype == BF16
  assert model.output.bias.get_value().dtype == jnp.float32
  _, state, step = jslide.train.make_train_step(
      model, objectives.active_set_loss(), table_tx=jslide.optim.sparse_adam(1e-2, catch_up=True, moment_dtype=moment_dtype))
  batch = _batch(rng, n_in, n_out)
  dtypes = jax.tree.map(lambda x: x.dtype, state)
  losses = []
  for i in range(40):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(metrics["loss"]))
  assert jax.tree.map(lambda x: x.dtype, state) == dtypes
  mu = state.opt_state.inner_state.inner_states["tables"].inner_state.mu
  assert {x.dtype for x in jax.tree.leaves(mu)} == {jnp.dtype(moment_dtype or jnp.float32)}
  assert losses[-1] < 0.2 * losses[0]  # one batch memorized


def test_the_dense_baseline_trains_bf16_tables(rng):
  model = jslide.nn.SparseMLP(200, 300, hidden=(16,), active=32, param_dtype=BF16,
                              rngs=nnx.Rngs(0))
  _, state, step = jslide.train.make_dense_train_step(model, objectives.full_softmax_loss,
                                                      tx=optax.adam(1e-2))
  batch = _batch(rng, 200, 300)
  first = None
  for i in range(30):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    first = first or float(metrics["loss"])
  assert float(metrics["loss"]) < 0.5 * first
  assert state.tables["output"]["kernel"].get_value().dtype == BF16


def test_other_dtypes_are_refused_with_the_argument_named(rng):
  x, ids = normal(rng, 2, 4), jnp.zeros((2, 3), jnp.int32)
  with pytest.raises(TypeError, match="gather_dot: w must be float32 or bfloat16, got float16"):
    kernels.gather_dot(x, jnp.zeros((5, 4), jnp.float16), None, ids)
  with pytest.raises(TypeError, match="moments must share one dtype"):
    kernels.sparse_adam_rows(jnp.zeros((5, 4), BF16), jnp.zeros((5, 4)), jnp.zeros((5, 4), BF16),
                             ids, jnp.zeros((2, 3)), x, **HYPER)
  with pytest.raises(TypeError, match="param_dtype must be float32 or bfloat16"):
    jslide.nn.SparseDense(4, 8, active=4, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="moment_dtype must be float32 or bfloat16"):
    jslide.optim.sparse_adam(1e-3, moment_dtype=jnp.float16)


# ------------------------------------------------------------------ huge pages


def _anon_huge_kib(address: int, nbytes: int) -> int:
  """AnonHugePages (KiB) of the mappings overlapping [address, address + nbytes), from
  /proc/self/smaps (the advice splits a buffer's mapping: its unaligned ends stay apart)."""
  total, overlapping = 0, False
  with open("/proc/self/smaps") as f:
    for line in f:
      m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
      if m:
        overlapping = int(m.group(1), 16) < address + nbytes and address < int(m.group(2), 16)
      elif overlapping and line.startswith("AnonHugePages:"):
        total += int(line.split()[1])
  return total


def _thp_mode():
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return re.search(r"\[(\w+)\]", f.read()).group(1)
  except OSError:
    return None


def test_huge_page_zeros_are_zeros_on_huge_pages():
  small = kernels.huge_page_zeros((3, 5), jnp.int32)
  np.testing.assert_array_equal(np.asarray(small), np.zeros((3, 5), np.int32))
  assert kernels.huge_page_zeros((0, 4)).shape == (0, 4)
  big = jslide.initializers.zeros((64 * 2**20 // 4,), jnp.float32)
  assert float(jnp.abs(big).max()) == 0.0
  if _thp_mode() not in ("always", "madvise") or not os.path.exists("/proc/self/smaps"):
    pytest.skip("transparent huge pages are off on this machine")
  huge = _anon_huge_kib(big.unsafe_buffer_pointer(), big.nbytes)
  assert huge >= 48 * 1024, huge  # most of its 64 MiB (not the unaligned ends)


def test_init_table_fills_large_tables_in_place_with_the_chunked_values():
  """The in-place fill on huge pages gives the values of jslide.initializers.chunked."""
  init = jax.nn.initializers.normal(0.5)
  key = jax.random.PRNGKey(3)
  shape = (70_000, 130)  # above the 65,536-row chunk and the 32 MiB huge-page threshold
  got = jslide.initializers.init_table(init, key, shape)
  want = jax.jit(jslide.initializers.chunked(init), static_argnums=(1, 2))(key, shape,
                                                                          jnp.float32)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  small = jslide.initializers.init_table(init, key, (10, 3), BF16)
  assert small.dtype == BF16
  np.testing.assert_array_equal(f32(small), f32(init(key, (10, 3), BF16)))
