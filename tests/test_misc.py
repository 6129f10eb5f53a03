"""Losses, chunked initializers, thread settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jslide

from helpers import assert_close, normal


def test_active_softmax_equals_dense_softmax_when_all_neurons_active(rng):
  b, n = 5, 12
  logits = normal(rng, b, n)
  labels = jnp.asarray(np.stack([rng.choice(n, 2, replace=False) for _ in range(b)]), jnp.int32)
  labels = labels.at[0, 1].set(-1)  # one example with a single label
  ids = jnp.tile(jnp.arange(n, dtype=jnp.int32), (b, 1))
  assert_close(jslide.losses.active_softmax_cross_entropy(logits, ids, labels),
               jslide.losses.softmax_cross_entropy(logits, labels))


def test_active_softmax_ignores_padding(rng):
  logits = normal(rng, 1, 4)
  ids = jnp.array([[3, 1, -1, -1]], jnp.int32)
  labels = jnp.array([[1]], jnp.int32)
  want = -jax.nn.log_softmax(logits[0, :2])[1]
  assert_close(jslide.losses.active_softmax_cross_entropy(logits, ids, labels)[0], want)


def test_chunked_initializer_fills_every_row_with_the_right_distribution():
  init = jslide.initializers.chunked(jax.nn.initializers.normal(2.0), rows_per_chunk=1000)
  t = np.asarray(jax.jit(init, static_argnums=1)(jax.random.PRNGKey(0), (4500, 40)))
  assert t.shape == (4500, 40)
  assert np.all(t.std(axis=1) > 0.5)  # no row left at zero, the 500-row tail included
  assert abs(t.std() - 2.0) < 0.05 and abs(t.mean()) < 0.05
  # blocks are independent draws, not copies
  assert not np.allclose(t[:1000], t[1000:2000])
  with pytest.raises(ValueError, match="rows_per_chunk"):
    jslide.initializers.chunked(jax.nn.initializers.normal(), rows_per_chunk=0)


def test_set_num_threads_validates():
  with pytest.raises(ValueError, match="n must be an int >= 0"):
    jslide.set_num_threads(-1)
  jslide.set_num_threads(1)
  assert jslide.num_threads() == 1
  jslide.set_num_threads(0)
  assert jslide.kernel_isa() in ("x86-64-v4", "x86-64-v3", "default")
