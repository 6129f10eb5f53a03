"""Plain ``jax.numpy`` implementations of every kernel's maths, for tests and for checking.

They materialise [R, A, D] gathers and dense [N, D] matrices, so they are for small shapes.
"""

from __future__ import annotations

import jax.numpy as jnp


def _valid(ids):
  return ids >= 0, jnp.where(ids >= 0, ids, 0)


def gather_dot(x, w, b, ids):
  valid, safe = _valid(ids)
  y = jnp.einsum("rd,rad->ra", x, w[safe])
  if b is not None:
    y = y + b[safe]
  return jnp.where(valid, y, 0.0)


def gather_weighted_sum(ids, coef, w):
  valid, safe = _valid(ids)
  return jnp.einsum("ra,rad->rd", jnp.where(valid, coef, 0.0), w[safe])


def scatter_outer(ids, coef, vecs, num_rows):
  valid, safe = _valid(ids)
  contrib = jnp.where(valid, coef, 0.0)[:, :, None] * vecs[:, None, :]
  return jnp.zeros((num_rows, vecs.shape[1]), vecs.dtype).at[safe.reshape(-1)].add(
      contrib.reshape(-1, vecs.shape[1]))


def sparse_linear(x, w, b, ids):
  return gather_dot(x, w, b, ids)


def embedding_bag(feat_ids, feat_vals, w):
  return gather_weighted_sum(feat_ids, feat_vals, w)


def touched_rows(ids, num_rows):
  """bool[num_rows]: which rows occur in ids (padding excluded)."""
  valid, safe = _valid(ids)
  return jnp.zeros((num_rows,), bool).at[safe.reshape(-1)].max(valid.reshape(-1))


def sparse_adam_rows(w, m, v, ids, coef, vecs, *, learning_rate, bias_correction1,
                     bias_correction2, b1, b2, eps):
  """Lazy Adam: the dense Adam step applied only to rows that occur in ids."""
  g = scatter_outer(ids, coef, vecs, w.shape[0])
  hit = touched_rows(ids, w.shape[0])[:, None]
  m_new = b1 * m + (1 - b1) * g
  v_new = b2 * v + (1 - b2) * g * g
  step = learning_rate * (m_new / bias_correction1) / (jnp.sqrt(v_new / bias_correction2) + eps)
  return (jnp.where(hit, w - step, w), jnp.where(hit, m_new, m), jnp.where(hit, v_new, v))


def adam_catch_up_rows(w, m, v, last, *, step, learning_rate, b1, b2, eps):
  """Dense Adam's zero-gradient steps ``last[n] + 1 .. step`` on every row, one at a time."""
  for t in range(1, int(step) + 1):
    missed = ((last < t) & (last > 0))[:, None]
    m2, v2 = b1 * m, b2 * v
    upd = learning_rate * (m2 / (1 - b1**t)) / (jnp.sqrt(v2 / (1 - b2**t)) + eps)
    w, m, v = jnp.where(missed, w - upd, w), jnp.where(missed, m2, m), jnp.where(missed, v2, v)
  return w, m, v, jnp.full_like(last, step)


def sparse_adam_catch_up_rows(w, m, v, last, ids, coef, vecs, *, step, learning_rate, b1,
                              b2, eps):
  """Catch-up to step - 1 on the rows that occur, then a lazy Adam step at ``step``."""
  hit = touched_rows(ids, w.shape[0])
  cw, cm, cv, _ = adam_catch_up_rows(w, m, v, last, step=step - 1, learning_rate=learning_rate,
                                     b1=b1, b2=b2, eps=eps)
  w, m, v = (jnp.where(hit[:, None], c, x) for c, x in ((cw, w), (cm, m), (cv, v)))
  w, m, v = sparse_adam_rows(w, m, v, ids, coef, vecs, learning_rate=learning_rate,
                             bias_correction1=1 - b1**step, bias_correction2=1 - b2**step,
                             b1=b1, b2=b2, eps=eps)
  return w, m, v, jnp.where(hit, step, last)


def sparse_sgd_rows(w, ids, coef, vecs, *, learning_rate):
  return w - learning_rate * scatter_outer(ids, coef, vecs, w.shape[0])
