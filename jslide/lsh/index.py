"""The LSH index over the rows of a table: L hash tables in CSR layout."""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import jax.numpy as jnp

from jslide import _ffi
from jslide._checks import float32_array, table_array
from jslide.lsh.cluster import ClusterHash
from jslide.lsh.dwta import DWTA
from jslide.lsh.mips import MIPSHash
from jslide.lsh.simhash import SimHash
from jslide.lsh.sparse_simhash import SparseSimHash

HashFamily = Union[SimHash, DWTA, SparseSimHash, MIPSHash, ClusterHash]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LSHIndex:
  """Rows of a table f32[N, d] bucketed by their hash codes, in each of L tables.

  Table l's bucket c holds ``ids[l, offsets[l, c]:offsets[l, c + 1]]`` (rows in increasing
  order). Memory: O(L (N + buckets)) int32, and nothing overflows, unlike fixed-capacity
  buckets (SLIDE's 128 slots: 6.7 GB for N=670,091, L=50, 2^18 buckets; this layout: 178 MiB, i.e. 186 MB).
  An immutable pytree: keep it in your training state and :func:`rebuild` it on a schedule.

  Attributes:
    hasher: the hash family (a pytree of arrays).
    offsets: int32[L, num_buckets + 1].
    ids: int32[L, N].
  """

  hasher: HashFamily
  offsets: jax.Array
  ids: jax.Array

  @property
  def num_rows(self) -> int:
    return self.ids.shape[1]

  @property
  def num_hash_tables(self) -> int:
    return self.ids.shape[0]

  @property
  def num_buckets(self) -> int:
    return self.offsets.shape[1] - 1

  @property
  def dim(self) -> int:
    return self.hasher.dim

  def nbytes(self) -> int:
    return int(self.offsets.size * 4 + self.ids.size * 4)

  def check_table(self, w, fn: str = "LSHIndex") -> None:
    """ValueError unless w is f32[N, d] with this index's N and d."""
    if tuple(w.shape) != (self.num_rows, self.dim):
      raise ValueError(f"{fn}: the index was built for a table of shape "
                       f"({self.num_rows}, {self.dim}), got {tuple(w.shape)}")


def _csr(codes, num_buckets: int):
  return _ffi.build_index(codes, num_buckets)


def build(hasher: HashFamily, w, b=None) -> LSHIndex:
  """Hashes every row of w: f32[N, d] (or bf16) and buckets them by counting sort, tables in parallel.

  ``b`` (f32[N], the layer's bias) is read by hash families that score ``x . w_n + b_n``
  (:class:`MIPSHash`, :class:`ClusterHash`: rows are hashed by ``hash_keys(w, b)``); the
  others hash the rows as vectors and ignore it. A learned family (one with ``refit``,
  :class:`ClusterHash`) is first refitted to the rows; the index holds the refitted family.
  """
  w = table_array("lsh.build", "w", w, ndim=2)
  learned = hasattr(hasher, "refit")
  if not learned:  # a learned family converts a bfloat16 table a block of rows at a time
    w = w.astype(jnp.float32)
  if w.shape[1] != hasher.dim:
    raise ValueError(f"lsh.build: w has d={w.shape[1]} but the hash family was built for "
                     f"dim={hasher.dim}")
  if b is not None:
    b = float32_array("lsh.build", "b", b, ndim=1)
    if b.shape[0] != w.shape[0]:
      raise ValueError(f"lsh.build: b shape {b.shape} must be ({w.shape[0]},), one per row")
  if learned:  # a learned family fits its buckets to the current rows
    hasher = hasher.refit(w, b)
  codes = hasher.hash_keys(w, b) if hasattr(hasher, "hash_keys") else hasher.hash(w)
  offsets, ids = _csr(codes, hasher.num_buckets)
  return LSHIndex(hasher=hasher, offsets=offsets, ids=ids)


def rebuild(index: LSHIndex, w, b=None) -> LSHIndex:
  """A new index over the current rows of w (and bias b) with the same hash functions
  (jit-friendly)."""
  w = table_array("lsh.rebuild", "w", w, ndim=2)
  index.check_table(w, "lsh.rebuild")
  return build(index.hasher, w, b)
