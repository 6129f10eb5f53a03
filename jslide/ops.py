"""Differentiable sparse ops built on jslide's kernels.

Both ops are pure functions that work under ``jit``, ``grad`` (every float argument,
the table included) and ``vmap``. Plain ``jax.grad`` with respect to a table returns the
exact *dense* gradient, so the ops are drop-in correct; :func:`jslide.value_and_grad`
returns it row-sparse instead, at a cost independent of the table's size.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from jslide import _ffi, kernels
from jslide._checks import float32_array, int32_ids, table_array
from jslide._tape import common_tape, unwrap_table
from jslide.rowsparse import RowSparseGrad


def _linear_args(fn: str, x, w, b):
  """(x, w, w_ref, b, b_ref) of a linear op on table rows, checked: x f32[..., d], w f32[N, d]
  or bf16[N, d] (or its TableRef), b f32[N] (or its TableRef) or None."""
  w_val, w_ref = unwrap_table(w)
  b_val, b_ref = unwrap_table(b)
  x = float32_array(fn, "x", x)
  w_val = table_array(fn, "w", w_val, ndim=2)
  n, d = w_val.shape
  if x.ndim < 1 or x.shape[-1] != d:
    raise ValueError(f"{fn}: x shape {x.shape} must end in d={d} like w shape {w_val.shape}")
  if b_val is not None:
    b_val = float32_array(fn, "b", b_val, ndim=1)
    if b_val.shape != (n,):
      raise ValueError(f"{fn}: b shape {b_val.shape} must be ({n},) like w's rows")
  return x, w_val, w_ref, b_val, b_ref


def _tap_table_grads(fn, y, w_ref, b_ref, table_grads, n, saved):
  """y, tapped for the row-sparse gradients of whichever of w, b are tables."""
  tape = common_tape(fn, w_ref, b_ref)
  if tape is None:
    return y
  slots = (getattr(w_ref, "slot", None), getattr(b_ref, "slot", None))
  return tape.tap(y, partial(table_grads, *slots, n), saved)


# ------------------------------------------------------------------------ sparse_linear


# The kernels are called raw (jslide._ffi) inside the custom_vjp rules: the public function
# checked every argument once, on the way in.

def _bias(b):
  return jnp.zeros((0,), jnp.float32) if b is None else b  # [0]: no bias, for the kernel


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _sparse_linear(x, w, b, ids, grad_w: bool, grad_b: bool):
  return _ffi.gather_dot(x, w, _bias(b), ids, 0)


def _sparse_linear_fwd(x, w, b, ids, grad_w, grad_b):
  return _ffi.gather_dot(x, w, _bias(b), ids, 0), (x, w, b, ids)


def _sparse_linear_bwd(grad_w, grad_b, res, g):
  x, w, b, ids = res
  n, d = w.shape
  dx = _ffi.gather_weighted_sum(ids, g, w, d, 0)
  dw = _ffi.scatter_outer(ids, g, x, (n, d), 0).astype(w.dtype) if grad_w else None
  db = None
  if b is not None and grad_b:
    db = _ffi.scatter_outer(ids, g, jnp.ones((x.shape[0], 1), x.dtype), (n, 1), 0).reshape(n)
  return dx, dw, db, None


_sparse_linear.defvjp(_sparse_linear_fwd, _sparse_linear_bwd)


def sparse_linear(x, w, b, ids):
  """Scores of selected output neurons: ``y[..., j] = x[...] @ w[ids[..., j]] + b[ids[..., j]]``.

  Only the A neurons named in ``ids`` are computed per example, so the cost is O(B*A*d),
  not O(B*N*d). Padding ids (-1) give 0.

  Args:
    x: f32[..., d], the inputs.
    w: f32[N, d] or bf16[N, d] (read in float32), one row per output neuron.
    b: f32[N] bias, or None.
    ids: int[..., A], active neurons per example, in [-1, N); leading dims as x's.
  Returns:
    f32[..., A].
  """
  fn = "sparse_linear"
  x, w_val, w_ref, b_val, b_ref = _linear_args(fn, x, w, b)
  n, d = w_val.shape
  ids = int32_ids(fn, "ids", ids, n)
  if ids.ndim != x.ndim or ids.shape[:-1] != x.shape[:-1]:
    raise ValueError(f"{fn}: ids shape {ids.shape} must be x's leading shape {x.shape[:-1]} "
                     "plus the number of active neurons")
  lead, a = x.shape[:-1], ids.shape[-1]
  rows = math.prod(lead)
  if rows == 0 or a == 0:  # nothing to score (explicit: reshape(-1, 0) cannot infer -1)
    return jnp.zeros((*lead, a), x.dtype)
  x2, ids2 = x.reshape(rows, d), ids.reshape(rows, a)
  y = _sparse_linear(x2, w_val, b_val, ids2, w_ref is None, b_ref is None)
  y = _tap_table_grads(fn, y, w_ref, b_ref, _sparse_linear_table_grads, n,
                       dict(ids=ids2, x=x2))
  return y.reshape(*lead, a)


def _sparse_linear_table_grads(w_slot, b_slot, n, saved, g):
  """Row-sparse gradients of w (coef: g, vecs: x) and b (coef: g, vecs: 1) from g = dL/dy."""
  ids, x = saved["ids"], saved["x"]
  out = []
  if w_slot is not None:
    out.append((w_slot, RowSparseGrad(ids, g, x, n)))
  if b_slot is not None:
    out.append((b_slot, RowSparseGrad(ids, g, jnp.ones((x.shape[0],), x.dtype), n)))
  return out


# ------------------------------------------------------------------------ embedding_bag


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _embedding_bag(ids, vals, w, grad_w: bool):
  return _ffi.gather_weighted_sum(ids, vals, w, w.shape[1], 0)


def _embedding_bag_fwd(ids, vals, w, grad_w):
  return _ffi.gather_weighted_sum(ids, vals, w, w.shape[1], 0), (ids, vals, w)


def _embedding_bag_bwd(grad_w, res, g):
  ids, vals, w = res
  dvals = _ffi.gather_dot(g, w, _bias(None), ids, 0)
  dw = _ffi.scatter_outer(ids, vals, g, w.shape, 0).astype(w.dtype) if grad_w else None
  return None, dvals, dw


_embedding_bag.defvjp(_embedding_bag_fwd, _embedding_bag_bwd)


def embedding_bag(feat_ids, feat_vals, w):
  """A sparse input batch times a table: ``h[...] = sum_k feat_vals[..., k] * w[feat_ids[..., k]]``.

  The input layer for bag-of-words / libsvm data with many features: cost O(B*F*d).

  Args:
    feat_ids: int[..., F], feature ids in [-1, N_in); -1 is padding.
    feat_vals: f32[..., F], the feature values.
    w: f32[N_in, d] or bf16[N_in, d] (read in float32).
  Returns:
    f32[..., d].
  """
  fn = "embedding_bag"
  w_val, w_ref = unwrap_table(w)
  w_val = table_array(fn, "w", w_val, ndim=2)
  n, d = w_val.shape
  feat_ids = int32_ids(fn, "feat_ids", feat_ids, n)
  feat_vals = float32_array(fn, "feat_vals", feat_vals)
  if feat_vals.shape != feat_ids.shape or feat_ids.ndim < 1:
    raise ValueError(f"{fn}: feat_vals shape {feat_vals.shape} must equal feat_ids shape "
                     f"{feat_ids.shape}")
  lead, f = feat_ids.shape[:-1], feat_ids.shape[-1]
  rows = math.prod(lead)
  if rows == 0 or f == 0 or d == 0:  # an empty bag sums to zero
    return jnp.zeros((*lead, d), feat_vals.dtype)
  ids2, vals2 = feat_ids.reshape(rows, f), feat_vals.reshape(rows, f)
  h = _embedding_bag(ids2, vals2, w_val, w_ref is None)
  if w_ref is not None:
    h = w_ref.tape.tap(h, partial(_embedding_bag_table_grads, w_ref.slot, n),
                       dict(ids=ids2, vals=vals2))
  return h.reshape(*lead, d)


def _embedding_bag_table_grads(w_slot, n, saved, g):
  """The row-sparse gradient of w (coef: the feature values, vecs: g = dL/dh)."""
  return [(w_slot, RowSparseGrad(saved["ids"], saved["vals"], g, n))]


# ------------------------------------------------------------------------ shared_linear


def shared_linear(x, w, b, ids):
  """Scores of one set of neurons shared by every input: ``y[t, j] = x[t] @ w[ids[j]] +
  b[ids[j]]``, a gather of S rows and one matmul (what sampled softmax does with its shared
  negatives).

  Under :func:`jslide.value_and_grad` the gradient of ``w`` is row-sparse with S rows
  (``g.T @ x``), never [N, d]. Padding ids (-1) give 0.

  Args:
    x: f32[T, d]. w: f32[N, d]. b: f32[N] or None. ids: int[S] in [-1, N).
  Returns:
    f32[T, S].
  """
  fn = "shared_linear"
  x, w_val, w_ref, b_val, b_ref = _linear_args(fn, float32_array(fn, "x", x, ndim=2), w, b)
  n = w_val.shape[0]
  ids = int32_ids(fn, "ids", ids, n, ndim=1)
  valid = ids >= 0
  safe = jnp.where(valid, ids, 0)
  # A table marked row-sparse is read without a gradient path; its gradient comes from the tap.
  rows = jnp.take(jax.lax.stop_gradient(w_val) if w_ref is not None else w_val, safe, axis=0)
  y = x @ rows.astype(jnp.float32).T
  if b_val is not None:
    y = y + jnp.take(jax.lax.stop_gradient(b_val) if b_ref is not None else b_val, safe)
  y = jnp.where(valid, y, 0.0)
  return _tap_table_grads(fn, y, w_ref, b_ref, _shared_linear_table_grads, n,
                          dict(ids=ids, x=x))


def _shared_linear_table_grads(w_slot, b_slot, n, saved, g):
  """Row-sparse gradients of w (row ids[j]: (g.T @ x)[j]) and b (row ids[j]: sum_t g[t, j])."""
  ids = saved["ids"][:, None]
  ones = jnp.ones(ids.shape, g.dtype)
  out = []
  if w_slot is not None:
    out.append((w_slot, RowSparseGrad(ids, ones, g.T @ saved["x"], n)))
  if b_slot is not None:
    out.append((b_slot, RowSparseGrad(ids, jnp.sum(g, axis=0)[:, None],
                                      jnp.ones((ids.shape[0],), g.dtype), n)))
  return out


# ------------------------------------------------------------------ robe_embedding_bag


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _robe_windows(slots, coef, memory, block: int, grad_memory: bool):
  return _ffi.gather_weighted_sum(slots, coef, memory, block, block)


def _robe_windows_fwd(slots, coef, memory, block, grad_memory):
  return _ffi.gather_weighted_sum(slots, coef, memory, block, block), (slots, coef, memory)


def _robe_windows_bwd(block, grad_memory, res, g):
  slots, coef, memory = res
  dcoef = _ffi.gather_dot(g, memory, _bias(None), slots, block)
  dmem = None
  if grad_memory:
    dmem = _ffi.scatter_outer(slots, coef, g, memory.shape, block).astype(memory.dtype)
  return None, dcoef, dmem


_robe_windows.defvjp(_robe_windows_fwd, _robe_windows_bwd)


def robe_embedding_bag(ids, weights, memory, *, num_rows: int, features: int, block: int,
                       seed: int = 0, offset: int = 0):
  """Embedding bags of a table stored in a ROBE array (Desai et al., MLSys 2022).

  Row r of the table (``num_rows`` rows, ``features`` wide) is not stored: its block c, the
  elements ``c * block .. (c + 1) * block - 1``, is the window of ``block`` elements of the
  shared 1-D ``memory`` that starts at ``((a * (offset + r) + b * c + c0) mod P) mod
  (len(memory) - block + 1)`` (P = 2038074743; a, b, c0 from ``seed``, see
  :func:`jslide.kernels.robe_slots`). Several tables share one array with their own
  ``offset`` (the rows of the tables before them). ``h[...] = sum_k weights[..., k] *
  row(ids[..., k])``, as :func:`embedding_bag`.

  Under :func:`jslide.value_and_grad` the gradient of ``memory`` is a windowed
  :class:`jslide.RowSparseGrad` (the windows the batch read, overlaps summed element by
  element), which ``jslide.optim.sparse_adam`` / ``sparse_sgd`` apply in place to the elements
  it touches; plain ``jax.grad`` gives the dense gradient.

  Args:
    ids: int[..., K] rows in [-1, num_rows); -1 is padding.
    weights: f32[..., K].
    memory: f32[M] or bf16[M], M >= block.
    num_rows, features, block (dividing features), seed (uint32), offset: static ints.
  Returns:
    f32[..., features].
  """
  fn = "robe_embedding_bag"
  m_val, m_ref = unwrap_table(memory)
  m_val = table_array(fn, "memory", m_val, ndim=1)
  for name, value in (("num_rows", num_rows), ("features", features), ("block", block)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}")
  if features % block:
    raise ValueError(f"{fn}: block={block} must divide features={features}")
  if block > m_val.shape[0]:
    raise ValueError(f"{fn}: block={block} is longer than the memory ({m_val.shape[0]} "
                     "elements)")
  ids = int32_ids(fn, "ids", ids, num_rows)
  weights = float32_array(fn, "weights", weights)
  if weights.shape != ids.shape or ids.ndim < 1:
    raise ValueError(f"{fn}: weights shape {weights.shape} must equal ids shape {ids.shape}")
  lead, k = ids.shape[:-1], ids.shape[-1]
  rows = math.prod(lead)
  if rows == 0 or k == 0:
    return jnp.zeros((*lead, features), jnp.float32)
  blocks = features // block
  ids2 = ids.reshape(rows, k)
  slots = kernels.robe_slots(ids2, offset=offset, num_rows=num_rows, memory=m_val.shape[0],
                             block=block, blocks=blocks, seed=seed).reshape(rows * blocks, k)
  coef = jnp.broadcast_to(weights.reshape(rows, 1, k), (rows, blocks, k)).reshape(-1, k)
  h = _robe_windows(slots, coef, m_val, block, m_ref is None)
  if m_ref is not None:
    h = m_ref.tape.tap(h, partial(_robe_table_grads, m_ref.slot, m_val.shape[0], block),
                       dict(slots=slots, coef=coef))
  return h.reshape(*lead, features)


def _robe_table_grads(m_slot, size, block, saved, g):
  """The windowed row-sparse gradient of the memory (coef: the weights, vecs: g's blocks)."""
  return [(m_slot, RowSparseGrad(saved["slots"], saved["coef"], g, size, window=block))]
