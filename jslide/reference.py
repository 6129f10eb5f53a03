"""Plain ``jax.numpy`` implementations of every kernel's maths, for tests and for checking.

They materialise [R, A, D] gathers and dense [N, D] matrices, so they are for small shapes.
They compute in float32; a bfloat16 table is read widened (exactly). What the kernels write
to bfloat16 is the float32 result rounded stochastically (:func:`stochastic_round_bf16`)
with the bits of :func:`rounding_bits`, written here in numpy.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jslide.lsh.reference import mix32

# Salts of the rounding seeds (ffi/kernels.cc, StepSeed): a step's catch-up of the rows it
# touches, its update, and the catch-up of every row.
CATCH_UP_SALT, UPDATE_SALT, CATCH_UP_ALL_SALT = 2, 1, 3


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


def scatter_outer(ids, coef, vecs, num_rows, window=0):
  valid, safe = _valid(ids)
  contrib = jnp.where(valid, coef, 0.0)[:, :, None] * vecs[:, None, :]
  if window:  # a 1-D table: window j of id n adds to element n + j
    elems = safe[:, :, None] + jnp.arange(window)
    return jnp.zeros((num_rows,), vecs.dtype).at[elems.reshape(-1)].add(contrib.reshape(-1))
  return jnp.zeros((num_rows, vecs.shape[1]), vecs.dtype).at[safe.reshape(-1)].add(
      contrib.reshape(-1, vecs.shape[1]))


def windows(w, ids, window):
  """[..., window]: the windows ``w[ids + j]`` of a 1-D table (0 where ids is -1)."""
  valid, safe = _valid(ids)
  return jnp.where(valid[..., None], w[safe[..., None] + jnp.arange(window)], 0.0)


def sparse_linear(x, w, b, ids):
  return gather_dot(x, w, b, ids)


def embedding_bag(feat_ids, feat_vals, w):
  return gather_weighted_sum(feat_ids, feat_vals, w)


def touched_rows(ids, num_rows, window=0):
  """bool[num_rows]: which rows occur in ids (padding excluded); with a window, which
  elements a window covers."""
  valid, safe = _valid(ids)
  if window:
    valid = jnp.broadcast_to(valid[..., None], (*ids.shape, window))
    safe = safe[..., None] + jnp.arange(window)
  return jnp.zeros((num_rows,), bool).at[safe.reshape(-1)].max(valid.reshape(-1))


def sparse_adam_rows(w, m, v, ids, coef, vecs, *, learning_rate, bias_correction1,
                     bias_correction2, b1, b2, eps, window=0):
  """Lazy Adam: the dense Adam step applied only to rows that occur in ids (with a window:
  the elements a window covers)."""
  g = scatter_outer(ids, coef, vecs, w.shape[0], window)
  hit = touched_rows(ids, w.shape[0], window)
  hit = hit if w.ndim == 1 else hit[:, None]
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


def sparse_sgd_rows(w, ids, coef, vecs, *, learning_rate, window=0):
  return w - learning_rate * scatter_outer(ids, coef, vecs, w.shape[0], window)


# ------------------------------------------------------------------ bfloat16 rounding


def step_seed(step: int, salt: int) -> np.uint32:
  """The rounding seed of an Adam step (StepSeed in ffi/kernels.cc)."""
  with np.errstate(over="ignore"):
    return mix32(np.uint32(step % 2**32) * np.uint32(0x27D4EB2F) + np.uint32(salt))


def rounding_bits(seed, rows, d: int):
  """uint32[len(rows), d]: the random bits of element (row, k) (RowKey, ElementBits)."""
  rows = np.asarray(rows, np.int64)
  with np.errstate(over="ignore"):
    key = mix32(np.uint32(seed) + (rows & 0xFFFFFFFF).astype(np.uint32) * np.uint32(0x85EBCA6B)
                + (rows >> 32).astype(np.uint32) * np.uint32(0xC2B2AE35))
    k = np.arange(d, dtype=np.uint32) * np.uint32(0x9E3779B9)
    return mix32(key[:, None] ^ k[None, :])


def stochastic_round_bf16(x, random):
  """float32 x rounded to bfloat16 with the low 16 bits of ``random`` (uint32, x's shape):
  away from zero with probability equal to the dropped fraction (StoreRounded). Inf and NaN
  pass unchanged. Returns the bfloat16 values as float32."""
  u = np.asarray(x, np.float32).view(np.uint32)
  finite = (u & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
  dither = np.where(finite, np.asarray(random, np.uint32) & np.uint32(0xFFFF), np.uint32(0))
  with np.errstate(over="ignore"):
    return (((u + dither) >> np.uint32(16)) << np.uint32(16)).astype(np.uint32).view(np.float32)


def adam_rounding_bits(seed, rows, d: int):
  """The bits the Adam kernels round (w, m, v) of these rows with: ElementBits for w, its
  upper half for m, the upper half of a multiple for v."""
  bits = rounding_bits(seed, rows, d)
  with np.errstate(over="ignore"):
    return bits, bits >> np.uint32(16), (bits * np.uint32(0x2C1B3C6D)) >> np.uint32(16)


def sgd_rounding_seed(coef) -> np.uint32:
  """The rounding seed of an SGD step on a bfloat16 table, from its coefficients
  (GradientSeed in ffi/jslide_ffi.cc)."""
  bits = np.asarray(coef, np.float32).reshape(-1).view(np.uint32)
  with np.errstate(over="ignore"):
    mixed = mix32(bits + np.arange(bits.size, dtype=np.uint32) * np.uint32(0x9E3779B9))
  return np.uint32(0x5BD1E995) ^ np.bitwise_xor.reduce(mixed, initial=np.uint32(0))


# ------------------------------------------------------------------ ROBE


ROBE_PRIME = 2038074743


def robe_hash(seed: int, memory: int, block: int) -> tuple[int, int, int, int]:
  """(a, b, c0, span) of ROBE's slot hash for a 32-bit seed (MakeRobeHash in ffi/kernels.cc)."""
  with np.errstate(over="ignore"):
    mixed = [int(mix32(np.uint32(seed) + np.uint32(c))) for c in
             (0x9E3779B9, 0x3C6EF372, 0xDAA66D2B)]
  return (1 + mixed[0] % (ROBE_PRIME - 1), mixed[1] % ROBE_PRIME, mixed[2] % ROBE_PRIME,
          memory - block + 1)


def robe_slots(ids, *, offset, memory, block, blocks, seed):
  """int[R, blocks, K]: ``((a * (offset + id) + b * c + c0) mod P) mod (memory - block + 1)``
  (-1 for padding ids), in Python integers (exact)."""
  a, b, c0, span = robe_hash(seed, memory, block)
  ids = np.asarray(ids, np.int64)
  g = (offset + ids)[:, None, :].astype(object)
  c = np.arange(blocks, dtype=np.int64)[None, :, None].astype(object)
  slots = ((a * g + b * c + c0) % ROBE_PRIME) % span
  return np.where(ids[:, None, :] < 0, -1, slots).astype(np.int64)


def robe_embedding_bag(ids, weights, memory, *, offset, features, block, seed):
  """``sum_k weights[r, k] * e(ids[r, k])`` with ``e(i)[j] = memory[slot(offset + i, j // block)
  + j % block]``: f32[R, features] for ids, weights [R, K]."""
  blocks = features // block
  slots = jnp.asarray(robe_slots(ids, offset=offset, memory=memory.shape[0], block=block,
                                 blocks=blocks, seed=seed), jnp.int32)  # [R, C, K]
  rows = windows(memory.astype(jnp.float32), slots, block)  # [R, C, K, Z]
  w = jnp.where(jnp.asarray(ids) >= 0, weights, 0.0)[:, None, :, None]
  return jnp.sum(w * rows, axis=2).reshape(len(ids), features)
