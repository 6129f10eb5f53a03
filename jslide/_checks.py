"""Argument checks shared by the public wrappers: clear errors raised before a kernel runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
  """True when x has values now (not an abstract tracer), so dynamic checks can run in Python."""
  return not isinstance(x, jax.core.Tracer)


def _array_of(fn: str, name: str, x, dtypes, expected: str, ndim: int | None):
  """x as an array of one of ``dtypes`` (TypeError naming ``expected`` otherwise), of rank
  ``ndim`` if given (ValueError otherwise)."""
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    x = jnp.asarray(x)
    dtype = x.dtype
  if dtype not in dtypes:
    raise TypeError(f"{fn}: {name} must be {expected}, got {dtype}")
  if ndim is not None and jnp.ndim(x) != ndim:
    raise ValueError(f"{fn}: {name} must have rank {ndim}, got shape {jnp.shape(x)}")
  return x


def float32_array(fn: str, name: str, x, ndim: int | None = None):
  """x as a float32 array; TypeError for other dtypes, ValueError for the wrong rank."""
  return _array_of(fn, name, x, (jnp.float32,), "float32", ndim)


TABLE_DTYPES = (jnp.float32, jnp.bfloat16)


def table_array(fn: str, name: str, x, ndim: int | None = None):
  """x as a table of the kernels: float32 or bfloat16 (TypeError for other dtypes; ValueError
  for the wrong rank)."""
  return _array_of(fn, name, x, TABLE_DTYPES, "float32 or bfloat16", ndim)


def uint32_seed(fn: str, name: str, value) -> int:
  """A hash seed: a Python int in [0, 2**32)."""
  if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
    raise ValueError(f"{fn}: {name} must be an int in [0, 2**32), got {value!r}")
  return value


def int32_ids(fn: str, name: str, ids, num_rows: int | None = None, ndim: int | None = None):
  """ids as int32; TypeError for non-integer dtypes. Concrete ids are range-checked here
  (each in [-1, num_rows)); traced ids are range-checked by the kernel."""
  dtype = getattr(ids, "dtype", None)
  if dtype is None:
    ids = jnp.asarray(ids)
    dtype = ids.dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{fn}: {name} must have an integer dtype (int32), got {dtype}")
  if ndim is not None and jnp.ndim(ids) != ndim:
    raise ValueError(f"{fn}: {name} must have rank {ndim}, got shape {jnp.shape(ids)}")
  if num_rows is not None and is_concrete(ids) and np.size(ids):
    arr = np.asarray(ids)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < -1 or hi >= num_rows:
      bad = lo if lo < -1 else hi
      raise ValueError(
          f"{fn}: {name} holds {bad}; ids must lie in [-1, {num_rows}) "
          f"(-1 is padding, {num_rows} is the number of table rows)")
  if dtype != jnp.int32 and not is_concrete(ids):
    # Under jit the values cannot be range-checked here, and converting would wrap them
    # (uint32 0xFFFFFFFF becomes -1, padding): refuse rather than read the wrong rows.
    raise TypeError(f"{fn}: {name} must be int32 under jit, got {dtype} (convert it, "
                    "checking its range, before the jitted function)")
  if dtype != jnp.int32:
    if num_rows is not None and num_rows > np.iinfo(np.int32).max:
      raise ValueError(f"{fn}: tables of more than 2**31 - 1 rows are not supported")
    ids = jnp.asarray(ids, jnp.int32)
  return ids


def features_last(fn: str, name: str, x, features: int):
  """x, after a ValueError unless its last axis has ``features`` entries (a wrong width
  would otherwise be read as more, shorter rows)."""
  if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != features:
    raise ValueError(f"{fn}: {name} must have {features} features on its last axis, got "
                     f"shape {tuple(jnp.shape(x))}")
  return x


def positive_int(fn: str, name: str, value) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}")
  return int(value)


def finite_scalar(fn: str, name: str, value):
  """value, after a ValueError if it is a concrete non-finite number (traced values, e.g. a
  schedule's output under jit, are checked by the kernel)."""
  if is_concrete(value) and not callable(value):
    arr = np.asarray(value, dtype=np.float64) if np.ndim(value) == 0 else None
    if arr is not None and not np.isfinite(arr):
      raise ValueError(f"{fn}: {name} must be finite, got {value!r}")
  return value


def _refuse_array_hyperparameter(fn: str, name: str, value) -> None:
  if isinstance(value, (jax.Array, np.ndarray)):
    raise TypeError(
        f"{fn}: {name} is compiled into the kernels and must be a Python float, got an array "
        f"({value!r}); with optax.inject_hyperparams, pass static_args=('b1', 'b2', 'eps') "
        "(the learning rate may stay injected)")


def unit_interval(fn: str, name: str, value) -> float:
  """value as a float in [0, 1) (Adam's b1 and b2)."""
  _refuse_array_hyperparameter(fn, name, value)
  if not isinstance(value, (int, float, np.floating, np.integer)) or not 0 <= value < 1:
    raise ValueError(f"{fn}: {name} must be a float in [0, 1), got {value!r}")
  return float(value)


def learning_rate(fn: str, value):
  """A float, a scalar array or a schedule (a callable of the step count)."""
  if callable(value):
    return value
  dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype  # tracers too
  if isinstance(value, (bool, str)) or np.ndim(value) != 0 or not np.issubdtype(dtype,
                                                                                 np.number):
    raise TypeError(f"{fn}: learning_rate must be a float, a scalar array or an Optax "
                    f"schedule, got {value!r}")
  return finite_scalar(fn, "learning_rate", value)


def adam_hyperparameters(fn: str, b1, b2, eps) -> None:
  """ValueError unless b1, b2 lie in [0, 1) and eps is a finite float >= 0."""
  unit_interval(fn, "b1", b1)
  unit_interval(fn, "b2", b2)
  _refuse_array_hyperparameter(fn, "eps", eps)
  if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) \
      or not 0 <= eps < np.inf:
    raise ValueError(f"{fn}: eps must be a finite float >= 0, got {eps!r}")
