"""Direct wrappers of jslide's XLA FFI kernels (no autodiff rules; see :mod:`jslide.ops`).

Every kernel works on tables of rows, ``w: f32[N, D]`` or ``bf16[N, D]`` (computed in float32:
bfloat16 elements are widened exactly, and results written back to a bfloat16 table or
moment are rounded stochastically, see docs/concepts/bfloat16.md), and on *factored row-sparse*
matrices: ``ids: int32[R, A]`` (-1 is padding), ``coef: f32[R, A]`` and ``vecs: f32[R, D]``,
standing for the [N, D] matrix whose row n is the sum of ``coef[r, j] * vecs[r]`` over all
(r, j) with ``ids[r, j] == n``. Shapes and dtypes are checked here; the kernels check ids
against N again (their values are only known at run time) and report bad ones as errors.

``window=Z`` (ROBE's memory, :func:`jslide.robe_embedding_bag`): the table is a 1-D array of N
elements and row n is the window of Z elements from element n (windows overlap); ids are
window starts in ``[-1, N - Z + 1)``, ``vecs: f32[R, Z]``, and a factored matrix adds
``coef[r, j] * vecs[r]`` to elements ``ids[r, j] .. ids[r, j] + Z - 1``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jslide import _ffi
from jslide._checks import (adam_hyperparameters, finite_scalar, float32_array, int32_ids,
                            table_array)


def _window(fn, window, length) -> int:
  """window as an int in [0, length]: 0 (rows of a table) or a window of a 1-D table."""
  if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
    raise ValueError(f"{fn}: window must be an int >= 0, got {window!r}")
  if window > length:
    raise ValueError(f"{fn}: window={window} is longer than the table ({length} elements)")
  return int(window)


def _check_factored(fn, ids, coef, vecs, num_rows, d, window=0):
  """ids, coef, vecs checked against a table of num_rows rows of d elements, or (window > 0)
  against a 1-D table of num_rows elements read in windows of ``window`` (d = window)."""
  if window:
    num_rows = num_rows - window + 1  # the window starts
  ids = int32_ids(fn, "ids", ids, num_rows, ndim=2)
  coef = float32_array(fn, "coef", coef, ndim=2)
  vecs = float32_array(fn, "vecs", vecs, ndim=2)
  if coef.shape != ids.shape:
    raise ValueError(f"{fn}: coef shape {coef.shape} must equal ids shape {ids.shape}")
  if vecs.shape != (ids.shape[0], d):
    raise ValueError(f"{fn}: vecs shape {vecs.shape} must be ({ids.shape[0]}, {d})")
  return ids, coef, vecs


def _gathered_table(fn, w, window):
  """w checked as a gathered table: [N, D] (window 0) or 1-D (window Z); (rows, D)."""
  if not window:
    w = table_array(fn, "w", w, ndim=2)
    return w, w.shape[0], w.shape[1]
  w = table_array(fn, "w", w, ndim=1)
  window = _window(fn, window, w.shape[0])
  return w, w.shape[0] - window + 1, window


def gather_dot(x, w, b, ids, *, window: int = 0):
  """``y[r, j] = x[r] @ w[ids[r, j]] + b[ids[r, j]]``; 0 where ``ids[r, j] == -1``.

  Args:
    x: f32[R, D]. w: f32[N, D] or bf16[N, D] (or, with ``window=D``, a 1-D table whose row n
      is ``w[n:n + D]``). b: f32[rows of w], or None for no bias. ids: int32[R, A].
  Returns:
    f32[R, A].
  """
  fn = "gather_dot"
  x = float32_array(fn, "x", x, ndim=2)
  w, rows, d = _gathered_table(fn, w, window)
  if x.shape[1] != d:
    raise ValueError(f"{fn}: x shape {x.shape} and w's rows (of {d}) differ in D")
  if b is None:
    b = jnp.zeros((0,), jnp.float32)
  else:
    b = float32_array(fn, "b", b, ndim=1)
    if b.shape[0] != rows:
      raise ValueError(f"{fn}: b shape {b.shape} must be ({rows},) like w's rows")
  ids = int32_ids(fn, "ids", ids, rows, ndim=2)
  if ids.shape[0] != x.shape[0]:
    raise ValueError(f"{fn}: ids shape {ids.shape} must have {x.shape[0]} rows like x")
  return _ffi.gather_dot(x, w, b, ids, window)


def gather_weighted_sum(ids, coef, w, *, window: int = 0):
  """``out[r] = sum_j coef[r, j] * w[ids[r, j]]`` (padding ids contribute nothing).

  Args:
    ids: int32[R, A]. coef: f32[R, A]. w: f32[N, D] or bf16[N, D] (or, with ``window=D``, a
      1-D table whose row n is ``w[n:n + D]``).
  Returns:
    f32[R, D].
  """
  fn = "gather_weighted_sum"
  w, rows, d = _gathered_table(fn, w, window)
  ids = int32_ids(fn, "ids", ids, rows, ndim=2)
  coef = float32_array(fn, "coef", coef, ndim=2)
  if coef.shape != ids.shape:
    raise ValueError(f"{fn}: coef shape {coef.shape} must equal ids shape {ids.shape}")
  return _ffi.gather_weighted_sum(ids, coef, w, d, window)


def scatter_outer(ids, coef, vecs, num_rows: int, *, window: int = 0):
  """The dense f32[num_rows, D] form of the factored row-sparse matrix (ids, coef, vecs)
  (with ``window``: the f32[num_rows] array its windows add up to).

  This is the dense gradient of a table (what plain ``jax.grad`` returns); it costs
  O(num_rows * D) and exists for the dense path and for checking.
  """
  fn = "scatter_outer"
  d = jnp.shape(vecs)[1] if jnp.ndim(vecs) == 2 else -1
  window = _window(fn, window, num_rows)
  ids, coef, vecs = _check_factored(fn, ids, coef, vecs, num_rows, d, window)
  shape = (num_rows,) if window else (num_rows, vecs.shape[1])
  return _ffi.scatter_outer(ids, coef, vecs, shape, window)


def _check_table_state(fn, w, *states):
  """w (f32 or bf16 [N] or [N, D]: a table of rows, a bias being one value a row) and states
  of its shape (f32 or bf16, one dtype for all), checked. A 1-D table goes to the kernels as
  it is: reshaping it to [N, 1] around an in-place call makes XLA copy the whole table every
  step."""
  w = table_array(fn, "w", w)
  if w.ndim not in (1, 2):
    raise ValueError(f"{fn}: w must be a table f32[N] or f32[N, D], got shape {w.shape}")
  out = []
  for name, s in states:
    s = table_array(fn, name, s)
    if s.shape != w.shape:
      raise ValueError(f"{fn}: {name} shape {s.shape} must equal the table shape {w.shape}")
    if out and s.dtype != out[0].dtype:
      raise TypeError(f"{fn}: the Adam moments must share one dtype, got {out[0].dtype} and "
                      f"{s.dtype}")
    out.append(s)
  return w, out


def as_rows(table):
  """A table as the table kernels take it: f32[N] or f32[N, D] as it is (a reshape around an
  in-place call would make XLA copy the whole table), f32[N, ...] flattened to f32[N, D]."""
  return table if jnp.ndim(table) <= 2 else jnp.reshape(table, (jnp.shape(table)[0], -1))


def _table_window(fn, w, window) -> int:
  window = _window(fn, window, w.shape[0])
  if window and w.ndim != 1:
    raise ValueError(f"{fn}: a table read in windows must be 1-D, got shape {w.shape}")
  return window


def _row_length(w) -> int:
  return w.shape[1] if w.ndim == 2 else 1


def _adam_hyper(fn, learning_rate, bias_correction1, bias_correction2, step):
  """f32[5] = [lr, 1 - b1^t, 1 - b2^t, t // 65536, t % 65536]: traced scalars, so schedules
  do not recompile; the int32 step in two halves, each exact in float32 (one float32 holds
  integers exactly only up to 2^24)."""
  for name, x in [("learning_rate", learning_rate), ("bias_correction1", bias_correction1),
                  ("bias_correction2", bias_correction2)]:
    finite_scalar(fn, name, x)
  step = jnp.asarray(step)
  if not jnp.issubdtype(step.dtype, jnp.integer):
    raise TypeError(f"{fn}: step must be an integer (int32) count, got {step.dtype}")
  step = step.astype(jnp.int32)
  return jnp.stack([jnp.asarray(learning_rate, jnp.float32),
                    jnp.asarray(bias_correction1, jnp.float32),
                    jnp.asarray(bias_correction2, jnp.float32),
                    (step // 65536).astype(jnp.float32), (step % 65536).astype(jnp.float32)])


def _adam_attrs(fn, b1, b2, eps):
  """The static Adam hyperparameters as the kernels' float32 attributes, checked."""
  adam_hyperparameters(fn, b1, b2, eps)
  return dict(b1=np.float32(b1), b2=np.float32(b2), eps=np.float32(eps))


def _check_last(fn, last, num_rows):
  last = jnp.asarray(last)
  if last.dtype != jnp.int32:
    raise TypeError(f"{fn}: last must be int32, got {last.dtype}")
  if last.shape != (num_rows,):
    raise ValueError(f"{fn}: last shape {last.shape} must be ({num_rows},), one step per row")
  return last


def sparse_adam_rows(w, m, v, ids, coef, vecs, *, learning_rate, bias_correction1,
                     bias_correction2, b1: float, b2: float, eps: float, last=None,
                     step=None, window: int = 0):
  """Adam on the rows of ``w`` that occur in ``ids``, in place when w, m, v (, last) are donated.

  For every row n occurring in ids, with g the summed gradient of that row:
  ``m[n] = b1 m[n] + (1 - b1) g``, ``v[n] = b2 v[n] + (1 - b2) g**2``,
  ``w[n] -= learning_rate * (m[n] / bias_correction1) / (sqrt(v[n] / bias_correction2) + eps)``.
  Rows that do not occur are left as they are (lazy Adam). The learning rate and bias
  corrections are traced scalars (schedules do not recompile); b1, b2 and eps are static.

  With ``last`` (int32[N], the step each row was last updated at, 0 for never) and ``step``
  (this update's step t >= 1), each occurring row first catches up on the steps
  ``last[n] + 1 .. t - 1`` as dense Adam would have taken them with a zero gradient
  (moments decay, weights keep moving along the momentum; see :func:`adam_catch_up_rows`),
  and ``last[n]`` becomes t. Together with a final :func:`adam_catch_up_rows` this equals
  dense ``optax.adam`` on the same (row-sparse) gradients at the cost of the touched rows.

  With ``window=Z`` the table is 1-D and ids are window starts (see the module docstring):
  every element that a window covers is a row of its own (its own ``last``), its gradient
  the sum of the windows over it.

  Args:
    w, m, v: f32[N, D] (or f32[N], D = 1) table and Adam moments. ids, coef: [R, A];
      vecs: f32[R, D]. last: int32[N] or None. step: int scalar, required with ``last``.
  Returns:
    (w, m, v), or (w, m, v, last) with ``last``, aliased to the inputs.
  """
  fn = "sparse_adam_rows"
  w, (m, v) = _check_table_state(fn, w, ("m", m), ("v", v))
  window = _table_window(fn, w, window)
  ids, coef, vecs = _check_factored(fn, ids, coef, vecs, w.shape[0],
                                    window or _row_length(w), window)
  attrs = dict(_adam_attrs(fn, b1, b2, eps), window=window)
  if last is None:
    hyper = _adam_hyper(fn, learning_rate, bias_correction1, bias_correction2, 1)
    return _ffi.sparse_adam(w, m, v, ids, coef, vecs, hyper, **attrs)
  if step is None:
    raise ValueError(f"{fn}: step (this update's step count, >= 1) is required with last")
  last = _check_last(fn, last, w.shape[0])
  hyper = _adam_hyper(fn, learning_rate, bias_correction1, bias_correction2, step)
  return _ffi.sparse_adam_catch_up(w, m, v, last, ids, coef, vecs, hyper, **attrs)


def adam_catch_up_rows(w, m, v, last, *, step, learning_rate, b1: float, b2: float,
                       eps: float):
  """Every row brought up to ``step``: what dense Adam did to it since ``last[n]``.

  A row last updated at step s (``last[n]``, 0 for never) had a zero gradient for the
  ``step - s`` steps since, so dense Adam decayed its moments (``m *= b1**k``,
  ``v *= b2**k``) and kept moving its weights along them:
  ``w -= lr * sum_i (b1**i m / (1 - b1**(s+i))) / (sqrt(b2**i v / (1 - b2**(s+i))) + eps)``.
  This computes that sum with one scalar per row (exact except that eps is kept as
  ``sqrt(v) + eps`` and terms beyond the 64th, weight (b1/sqrt(b2))**64 ~ 1e-3 with Adam's
  defaults, use frozen bias corrections) and sets ``last[n] = step``. O(N D): call it before
  evaluating or exporting weights trained with catch-up, not every step.

  Args:
    w, m, v: f32[N, D] or f32[N]. last: int32[N] in [0, step]. step: int scalar >= 1.
  Returns:
    (w, m, v, last), aliased to the inputs.
  """
  fn = "adam_catch_up_rows"
  w, (m, v) = _check_table_state(fn, w, ("m", m), ("v", v))
  last = _check_last(fn, last, w.shape[0])
  step = jnp.asarray(step)
  hyper = _adam_hyper(fn, learning_rate, 1 - jnp.float32(b1) ** step, 1 - jnp.float32(b2) ** step,
                      step)
  return _ffi.adam_catch_up(w, m, v, last, hyper, **_adam_attrs(fn, b1, b2, eps))


def sparse_sgd_rows(w, ids, coef, vecs, *, learning_rate, window: int = 0):
  """``w[n] -= learning_rate * g[n]`` for the rows occurring in ids, in place when donated.

  w: f32[N, D] or f32[N] (D = 1); ids, coef: [R, A]; vecs: f32[R, D]. ``window``: as in
  :func:`sparse_adam_rows`.
  """
  fn = "sparse_sgd_rows"
  w, _ = _check_table_state(fn, w)
  window = _table_window(fn, w, window)
  ids, coef, vecs = _check_factored(fn, ids, coef, vecs, w.shape[0],
                                    window or _row_length(w), window)
  finite_scalar(fn, "learning_rate", learning_rate)
  hyper = jnp.reshape(jnp.asarray(learning_rate, jnp.float32), (1,))
  return _ffi.sparse_sgd(w, ids, coef, vecs, hyper, window)


def check_unit(unit, x, *, what: str, allow_zero: bool = True):
  """x, passed through once ``unit`` (int32[]) is 1, or 0 with x all zero (a zeros_like).

  A run-time guard for row-sparse values whose integer leaves leafwise arithmetic may have
  changed (see :mod:`jslide.rowsparse`): anything else is an error carrying ``what``. The
  result aliases x, so the guard costs no copy and orders every later reader after it.
  """
  fn = "check_unit"
  unit = jnp.asarray(unit)
  if unit.shape != () or not jnp.issubdtype(unit.dtype, jnp.integer):
    raise TypeError(f"{fn}: unit must be an integer scalar, got {unit.dtype}{unit.shape}")
  x = table_array(fn, "x", x)
  return _ffi.check_unit(unit.astype(jnp.int32), x, what, allow_zero)


def row_sparse_sq_norm(ids, coef, vecs, num_rows: int, *, window: int = 0):
  """f32[]: the squared Frobenius norm of the dense f32[num_rows, D] matrix that the
  factored (ids, coef, vecs) stands for (duplicate ids summed first; with ``window``, the
  f32[num_rows] array its windows add up to), at the cost of the rows that occur: O(R*A*D)
  work, O(D) memory per thread."""
  fn = "row_sparse_sq_norm"
  d = jnp.shape(vecs)[1] if jnp.ndim(vecs) == 2 else -1
  window = _window(fn, window, num_rows)
  ids, coef, vecs = _check_factored(fn, ids, coef, vecs, num_rows, d, window)
  return _ffi.row_sparse_sq_norm(ids, coef, vecs, num_rows, window)


#: The prime P of ROBE's hash (``ffi/kernels.h``), and the largest number of rows all the
#: tables that share one array may hold together.
ROBE_PRIME = 2038074743


def robe_slots(ids, *, offset: int, num_rows: int, memory: int, block: int, blocks: int,
               seed: int):
  """int32[R, blocks, K]: where block c of the embedding of row ``ids[r, k]`` of a table
  starts in a ROBE array of ``memory`` elements: ``((a * g + b * c + c0) mod P) mod (memory -
  block + 1)`` for the global row ``g = offset + ids[r, k]`` (the table's first row in the
  array's row numbering plus its own row), P = 2038074743, and (a, b, c0) drawn from the
  32-bit ``seed`` (``jslide.reference.robe_hash``); -1 where ``ids[r, k]`` is -1. Ids out of
  ``[-1, num_rows)`` are an error.

  Args:
    ids: int32[R, K].
  """
  fn = "robe_slots"
  for name, value in (("offset", offset), ("num_rows", num_rows), ("memory", memory),
                      ("block", block), ("blocks", blocks), ("seed", seed)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{fn}: {name} must be an int >= 0, got {value!r}")
  if not 1 <= block <= memory:
    raise ValueError(f"{fn}: block={block} must be in [1, memory={memory}]")
  if blocks < 1:
    raise ValueError(f"{fn}: blocks must be >= 1, got {blocks}")
  if offset + num_rows > ROBE_PRIME:
    raise ValueError(f"{fn}: the tables sharing one array hold {offset + num_rows} rows; the "
                     f"hash takes at most {ROBE_PRIME}")
  if seed >= 2**32:
    raise ValueError(f"{fn}: seed must be a uint32, got {seed}")
  ids = int32_ids(fn, "ids", ids, num_rows, ndim=2)
  return _ffi.robe_slots(ids, offset=offset, num_rows=num_rows, memory=memory, block=block,
                         blocks=blocks, seed=seed)


def huge_page_zeros(shape, dtype=jnp.float32):
  """A zero array of ``shape`` and ``dtype`` in memory the kernel backs with transparent huge
  pages (2 MiB) where it allows them (Linux, THP "always" or "madvise"); elsewhere plain
  zeros. Sparse steps read rows scattered over tables far larger than what the TLB covers
  with 4 KiB pages; on huge pages each row costs no page walk (a step at 1M rows: 18% less).
  Fill it in place (donated) to keep the pages: :func:`jslide.initializers.init_table` does.
  """
  shape = tuple(int(s) for s in shape)
  if any(s < 0 for s in shape):
    raise ValueError(f"huge_page_zeros: shape must have sizes >= 0, got {shape}")
  return _ffi.huge_page_zeros(shape, dtype)


__all__ = ["gather_dot", "gather_weighted_sum", "scatter_outer", "as_rows", "sparse_adam_rows",
           "adam_catch_up_rows", "sparse_sgd_rows", "check_unit", "row_sparse_sq_norm",
           "ROBE_PRIME", "robe_slots", "huge_page_zeros"]
