"""Shared test data builders."""

import jax
import jax.numpy as jnp
import numpy as np


def normal(rng, *shape, scale=1.0):
  return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)


def random_ids(rng, n, shape, pad_frac=0.2):
  """int32 ids in [0, n) with about pad_frac of them -1, duplicates allowed."""
  ids = rng.integers(0, n, size=shape)
  ids = np.where(rng.random(shape) < pad_frac, -1, ids)
  return jnp.asarray(ids, jnp.int32)


def assert_close(a, b, rtol=2e-5, atol=2e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# What a kernel's error is under jit: JaxRuntimeError, or ValueError when the jitted function
# already ran once successfully (its C++ fast path then types a failed status as ValueError,
# jax-ml/jax#34083). The message is the kernel's either way; tests match it.
KERNEL_ERROR = (jax.errors.JaxRuntimeError, ValueError)
