"""The Python side of the FFI binding: loads the C++ extension, registers its handlers as XLA
FFI targets for the CPU, sets their threads, and owns every call of them (below)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jslide import _jslide_ffi

for _name, _capsule in _jslide_ffi.registrations().items():
  jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")


def set_num_threads(n: int) -> None:
  """Caps the threads each jslide kernel call uses; 0 means all of XLA's intra-op pool.

  The kernels run on XLA's own CPU thread pool (so they share cores with XLA rather than
  oversubscribing them); this only lowers how many of its threads one call takes. The
  environment variable ``JSLIDE_NUM_THREADS`` sets the initial value.
  """
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise ValueError(f"set_num_threads: n must be an int >= 0, got {n!r}")
  _jslide_ffi.set_max_threads(n)


def num_threads() -> int:
  """The current cap set by :func:`set_num_threads` (0: no cap)."""
  return int(_jslide_ffi.max_threads())


def kernel_isa() -> str:
  """The instruction set the kernels dispatched to on this machine: ``x86-64-v4`` (AVX-512),
  ``x86-64-v3`` (AVX2 and FMA) or ``default``."""
  return str(_jslide_ffi.kernel_isa())


_env_threads = os.environ.get("JSLIDE_NUM_THREADS")
if _env_threads:
  try:
    set_num_threads(int(_env_threads))
  except ValueError as e:
    raise ValueError(f"JSLIDE_NUM_THREADS must be an int >= 0, got {_env_threads!r}") from e


# ------------------------------------------------------------------------------------------
# Every call of a jslide FFI target, one function each, named after it. Raw: the arguments
# are checked once, by the public function that calls these (jslide.kernels, jslide.ops,
# jslide.lsh), and again by the C++ handler, which returns an error rather than read out of
# bounds. ``vmap_method="sequential"``: under vmap each call runs once per mapped element.

def _call(target: str, out, *args, aliases=None, vmap_method="sequential", **attrs):
  return jax.ffi.ffi_call(target, out, vmap_method=vmap_method,
                          input_output_aliases=aliases)(*args, **attrs)


def gather_dot(x, w, b, ids, window: int):
  """f32[R, A]: x f32[R, D] . rows ids int32[R, A] of w, plus b f32[rows] (or [0])."""
  return _call("jslide_gather_dot", jax.ShapeDtypeStruct(ids.shape, jnp.float32),
               x, w, b, ids, window=np.int64(window))


def gather_weighted_sum(ids, coef, w, d: int, window: int):
  """f32[R, d]: sum_j coef[r, j] w[ids[r, j]]."""
  return _call("jslide_gather_weighted_sum", jax.ShapeDtypeStruct((ids.shape[0], d), jnp.float32),
               ids, coef, w, window=np.int64(window))


def scatter_outer(ids, coef, vecs, shape, window: int):
  """f32[shape]: the dense form of the factored (ids, coef, vecs)."""
  return _call("jslide_scatter_outer", jax.ShapeDtypeStruct(tuple(shape), jnp.float32),
               ids, coef, vecs, window=np.int64(window))


def sparse_adam(w, m, v, ids, coef, vecs, hyper, *, b1, b2, eps, window: int):
  """(w, m, v) after lazy Adam on the rows in ids, aliased to the inputs."""
  shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (w, m, v))
  return _call("jslide_sparse_adam", shapes, w, m, v, ids, coef, vecs, hyper,
               aliases={0: 0, 1: 1, 2: 2}, b1=b1, b2=b2, eps=eps, window=np.int64(window))


def sparse_adam_catch_up(w, m, v, last, ids, coef, vecs, hyper, *, b1, b2, eps, window: int):
  """(w, m, v, last) after catch-up Adam on the rows in ids, aliased to the inputs."""
  shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (w, m, v, last))
  return _call("jslide_sparse_adam_catch_up", shapes, w, m, v, last, ids, coef, vecs, hyper,
               aliases={0: 0, 1: 1, 2: 2, 3: 3}, b1=b1, b2=b2, eps=eps,
               window=np.int64(window))


def adam_catch_up(w, m, v, last, hyper, *, b1, b2, eps):
  """(w, m, v, last) with every row brought up to the step in hyper, aliased."""
  shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (w, m, v, last))
  return _call("jslide_adam_catch_up", shapes, w, m, v, last, hyper,
               aliases={0: 0, 1: 1, 2: 2, 3: 3}, b1=b1, b2=b2, eps=eps)


def sparse_sgd(w, ids, coef, vecs, hyper, window: int):
  """w after SGD on the rows in ids, aliased."""
  return _call("jslide_sparse_sgd", jax.ShapeDtypeStruct(w.shape, w.dtype),
               w, ids, coef, vecs, hyper, aliases={0: 0}, window=np.int64(window))


def check_unit(unit, x, what: str, allow_zero: bool):
  """x (aliased) once unit is 1 (or 0 with x all zero); an error carrying ``what`` else."""
  return _call("jslide_check_unit", jax.ShapeDtypeStruct(x.shape, x.dtype), unit, x,
               aliases={1: 0}, what=str(what), allow_zero=bool(allow_zero))


def row_sparse_sq_norm(ids, coef, vecs, num_rows: int, window: int):
  """f32[]: the squared norm of the dense form of (ids, coef, vecs)."""
  return _call("jslide_row_sparse_sq_norm", jax.ShapeDtypeStruct((), jnp.float32),
               ids, coef, vecs, num_rows=np.int64(num_rows), window=np.int64(window))


def robe_slots(ids, *, offset, num_rows, memory, block, blocks, seed):
  """int32[R, blocks, K]: ROBE window starts of the rows ids int32[R, K]."""
  out = jax.ShapeDtypeStruct((ids.shape[0], blocks, ids.shape[1]), jnp.int32)
  return _call("jslide_robe_slots", out, ids, offset=np.int64(offset),
               num_rows=np.int64(num_rows), memory=np.int64(memory), block=np.int64(block),
               blocks=np.int64(blocks), seed=np.int64(seed))


def huge_page_zeros(shape, dtype):
  """Zeros on transparent huge pages where the kernel allows them."""
  return _call("jslide_huge_page_zeros", jax.ShapeDtypeStruct(tuple(shape), dtype),
               vmap_method="broadcast_all")


def simhash(x, idx, sign):
  """int32[B, L]: SimHash codes of x f32[B, d] (idx, sign: [L, K, nnz])."""
  out = jax.ShapeDtypeStruct((x.shape[0], idx.shape[0]), jnp.int32)
  return _call("jslide_simhash", out, x, idx, sign)


def dwta(x, bins):
  """int32[B, L]: DWTA codes of x f32[B, d] (bins: [L, K, bin_size])."""
  return _call("jslide_dwta", jax.ShapeDtypeStruct((x.shape[0], bins.shape[0]), jnp.int32),
               x, bins)


def sparse_simhash(feat_ids, feat_vals, seeds, dim: int):
  """int32[B, L]: SimHash codes of sparse inputs (seeds: uint32[L, K])."""
  out = jax.ShapeDtypeStruct((feat_ids.shape[0], seeds.shape[0]), jnp.int32)
  return _call("jslide_sparse_simhash", out, feat_ids, feat_vals, seeds, dim=np.int64(dim))


def build_index(codes, num_buckets: int):
  """(offsets int32[L, num_buckets + 1], ids int32[L, N]): the CSR index of codes [N, L]."""
  n, l = codes.shape
  out = (jax.ShapeDtypeStruct((l, num_buckets + 1), jnp.int32),
         jax.ShapeDtypeStruct((l, n), jnp.int32))
  return _call("jslide_build_index", out, codes)


def top_indices(scores, k: int):
  """int32[R, k]: the positions of the k highest of each row of scores f32[R, C]."""
  return _call("jslide_top_indices", jax.ShapeDtypeStruct((scores.shape[0], k), jnp.int32),
               scores)


def nearest_centroids(x, centroids, p: int):
  """int32[B, p]: the p centroids nearest each x, nearest first."""
  return _call("jslide_nearest_centroids", jax.ShapeDtypeStruct((x.shape[0], p), jnp.int32),
               x, centroids)


def list_topk(x, w, b, lists, probes, k: int):
  """(f32[B, k], int32[B, k]): each x's k best neurons of its probed lists."""
  out = (jax.ShapeDtypeStruct((x.shape[0], k), jnp.float32),
         jax.ShapeDtypeStruct((x.shape[0], k), jnp.int32))
  return _call("jslide_list_topk", out, x, w, b, lists, probes)


def lsh_query(codes, offsets, ids, force, seed, first, *, active, strategy, threshold,
              max_per_bucket, fill_group, fill, retrieved):
  """int32[B, active]: the active ids of each query (jslide.lsh.query); ``first`` int32[1]
  numbers row 0 in the whole batch (a data-parallel shard's offset)."""
  return _call("jslide_lsh_query", jax.ShapeDtypeStruct((codes.shape[0], active), jnp.int32),
               codes, offsets, ids, force, seed, first, active=np.int64(active),
               strategy=np.int64(strategy), threshold=np.int64(threshold),
               max_per_bucket=np.int64(max_per_bucket), fill_group=np.int64(fill_group),
               fill=np.int64(fill), retrieved=np.int64(retrieved))
