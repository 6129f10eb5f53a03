"""sparse_linear and embedding_bag: values, every gradient, vmap, jit, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

import jslide
from jslide import reference as ref

from helpers import assert_close, normal, random_ids


def _linear_case(rng, r=5, a=7, n=11, d=6):
  return normal(rng, r, d), normal(rng, n, d), normal(rng, n), random_ids(rng, n, (r, a))


def test_reference_gradients_are_right(rng):
  x, w, b, ids = _linear_case(rng)
  check_grads(lambda x, w, b: ref.gather_dot(x, w, b, ids), (x, w, b), order=1,
              modes=["rev"], atol=1e-2, rtol=1e-2)
  vals = normal(rng, *ids.shape)
  check_grads(lambda v, w: ref.embedding_bag(ids, v, w), (vals, w), order=1, modes=["rev"],
              atol=1e-2, rtol=1e-2)


def test_kernel_gradients_agree_with_finite_differences(rng):
  x, w, b, ids = _linear_case(rng)
  check_grads(lambda x, w, b: jslide.sparse_linear(x, w, b, ids), (x, w, b), order=1,
              modes=["rev"], atol=1e-2, rtol=1e-2)
  vals = normal(rng, *ids.shape)
  check_grads(lambda v, w: jslide.embedding_bag(ids, v, w), (vals, w), order=1,
              modes=["rev"], atol=1e-2, rtol=1e-2)


@given(st.tuples(st.integers(1, 6), st.integers(1, 20), st.integers(1, 30), st.integers(1, 33)),
       st.integers(0, 2**31 - 1), st.booleans())
@pytest.mark.slow
def test_sparse_linear_values_and_all_gradients_match_reference(shape, seed, with_bias):
  r, a, n, d = shape
  rng = np.random.default_rng(seed)
  x, w = normal(rng, r, d), normal(rng, n, d)
  b = normal(rng, n) if with_bias else None
  ids = random_ids(rng, n, (r, a))
  ct = normal(rng, r, a)
  loss = lambda f: (lambda x, w, b: jnp.sum(ct * f(x, w, b, ids)))
  assert_close(jslide.sparse_linear(x, w, b, ids), ref.sparse_linear(x, w, b, ids))
  got = jax.grad(loss(jslide.sparse_linear), argnums=(0, 1, 2))(x, w, b)
  want = jax.grad(loss(ref.sparse_linear), argnums=(0, 1, 2))(x, w, b)
  for g_, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert_close(g_, w_, atol=1e-4)


@given(st.tuples(st.integers(1, 6), st.integers(1, 20), st.integers(1, 30), st.integers(1, 33)),
       st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_embedding_bag_values_and_all_gradients_match_reference(shape, seed):
  r, f, n, d = shape
  rng = np.random.default_rng(seed)
  ids, vals, w = random_ids(rng, n, (r, f)), normal(rng, r, f), normal(rng, n, d)
  ct = normal(rng, r, d)
  loss = lambda op: (lambda v, w: jnp.sum(ct * op(ids, v, w)))
  assert_close(jslide.embedding_bag(ids, vals, w), ref.embedding_bag(ids, vals, w))
  got = jax.grad(loss(jslide.embedding_bag), argnums=(0, 1))(vals, w)
  want = jax.grad(loss(ref.embedding_bag), argnums=(0, 1))(vals, w)
  for g_, w_ in zip(got, want):
    assert_close(g_, w_, atol=1e-4)


def test_batch_of_one_and_leading_dims(rng):
  x, w, b, ids = _linear_case(rng, r=1)
  assert_close(jslide.sparse_linear(x, w, b, ids), ref.sparse_linear(x, w, b, ids))
  x3, ids3 = normal(rng, 2, 3, 6), random_ids(rng, 11, (2, 3, 4))
  y = jslide.sparse_linear(x3, w, b, ids3)
  assert y.shape == (2, 3, 4)
  assert_close(y.reshape(6, 4), ref.sparse_linear(x3.reshape(6, 6), w, b, ids3.reshape(6, 4)))
  h = jslide.embedding_bag(ids3, normal(rng, 2, 3, 4), w)
  assert h.shape == (2, 3, 6)


def test_vmap_and_vmap_of_grad(rng):
  x, w, b, ids = _linear_case(rng)
  xs, idss = normal(rng, 3, 5, 6), random_ids(rng, 11, (3, 5, 7))
  got = jax.vmap(jslide.sparse_linear, in_axes=(0, None, None, 0))(xs, w, b, idss)
  want = jax.vmap(ref.sparse_linear, in_axes=(0, None, None, 0))(xs, w, b, idss)
  assert_close(got, want)
  # Per-batch gradients of the table: vmap over a grad that includes the table.
  per = lambda f: jax.vmap(jax.grad(lambda w, x, i: jnp.sum(f(x, w, b, i) ** 2)),
                           in_axes=(None, 0, 0))
  assert_close(per(jslide.sparse_linear)(w, xs, idss), per(ref.sparse_linear)(w, xs, idss),
               atol=1e-4)


def test_jit_matches_eager(rng):
  x, w, b, ids = _linear_case(rng)
  assert_close(jax.jit(jslide.sparse_linear)(x, w, b, ids), jslide.sparse_linear(x, w, b, ids))


def test_ops_bad_input(rng):
  x, w, b, ids = _linear_case(rng)
  with pytest.raises(ValueError, match="x shape"):
    jslide.sparse_linear(normal(rng, 5, 4), w, b, ids)
  with pytest.raises(ValueError, match="ids shape"):
    jslide.sparse_linear(x, w, b, ids[:, None])
  with pytest.raises(TypeError, match="w must be float32"):
    jslide.sparse_linear(x, np.asarray(w, np.float64), b, ids)
  with pytest.raises(ValueError, match=r"ids holds 11"):
    jslide.sparse_linear(x, w, b, jnp.full(ids.shape, 11))
  with pytest.raises(ValueError, match=r"feat_ids holds 99"):
    jslide.embedding_bag(jnp.array([[99]]), jnp.ones((1, 1)), w)
  with pytest.raises(ValueError, match="feat_vals shape"):
    jslide.embedding_bag(ids, jnp.ones((5, 2)), w)
  with pytest.raises(TypeError, match="feat_ids must have an integer dtype"):
    jslide.embedding_bag(jnp.ones((5, 7)), jnp.ones((5, 7)), w)
