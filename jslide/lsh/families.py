"""Hash families as objects that carry their defaults: how many hashes and tables an index
over a layer's rows takes, and which retrieval strategy suits their probes.

Every module with an index (:class:`jslide.nn.SparseDense`, :class:`jslide.nn.SparseFFN`,
:class:`jslide.nn.SparseSoftmaxHead`) and the XC trainer take a family by name or as one of
these objects, and leave K and L to it unless told otherwise, so each default is written
once, here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from jslide.lsh.cluster import ClusterHash
from jslide.lsh.dwta import DWTA
from jslide.lsh.mips import MIPSHash
from jslide.lsh.simhash import SimHash


def rows_per_bucket_hashes(num_rows: int, rows_per_bucket: int = 20) -> int:
  """K for k-means buckets of about ``rows_per_bucket`` rows each, clamped to 4..12
  (docs/lsh.md: small buckets work best)."""
  return min(12, max(4, round(math.log2(max(num_rows, 1) / rows_per_bucket))))


@dataclasses.dataclass(frozen=True)
class HashFamily:
  """A hash family with its defaults.

  Attributes:
    name: what the command line and configs call it.
    strategy: the retrieval strategy its probes suit (:data:`jslide.lsh.STRATEGIES`).
    num_hash_tables: L by default.
    fixed_hashes: K by default; None: K from the number of rows
      (:func:`rows_per_bucket_hashes`).
    make: ``make(key, dim, num_hashes, num_hash_tables, *, bin_size, num_rows, active)``, the
      hasher (a pytree for :func:`jslide.lsh.build`).
  """

  name: str
  strategy: str
  num_hash_tables: int
  fixed_hashes: int | None
  make: Callable = dataclasses.field(repr=False, compare=False)

  def num_hashes(self, num_rows: int) -> int:
    """K by default for an index over ``num_rows`` rows."""
    return self.fixed_hashes if self.fixed_hashes is not None else \
        rows_per_bucket_hashes(num_rows)

  def hasher(self, key, dim: int, *, num_rows: int, active: int,
             num_hashes: int | None = None, num_hash_tables: int | None = None,
             bin_size: int = 8):
    """The hasher for rows of length ``dim`` of a layer of ``num_rows`` rows of which a
    query asks for ``active``; K and L default to the family's."""
    k = num_hashes or self.num_hashes(num_rows)
    l = num_hash_tables or self.num_hash_tables
    return self.make(key, dim, k, l, bin_size=bin_size, num_rows=num_rows, active=active)


def _cluster(key, dim, k, l, *, bin_size, num_rows, active):
  del bin_size
  # Probe about three times as many buckets per table as hold the active ids on average.
  per_bucket = max(num_rows, 1) / 2 ** k
  probes = max(1, 3 * -(-active // max(int(per_bucket), 1)))
  return ClusterHash.init(key, dim, k, l, probes=probes)


#: Every hash family by name (:class:`HashFamily`: its default K, L and strategy).
FAMILIES = {f.name: f for f in (
    HashFamily("cluster", "ranked", 1, None, _cluster),
    HashFamily("dwta", "vanilla", 16, 5,
               lambda key, dim, k, l, *, bin_size, num_rows, active:
               DWTA.init(key, dim, k, l, bin_size=bin_size)),
    HashFamily("mips", "vanilla", 16, 5,
               lambda key, dim, k, l, *, bin_size, num_rows, active:
               MIPSHash.init(key, dim, k, l)),
    HashFamily("simhash", "vanilla", 16, 5,
               lambda key, dim, k, l, *, bin_size, num_rows, active:
               SimHash.init(key, dim, k, l)),
)}


def hash_family(family: str | HashFamily) -> HashFamily:
  """The family named ``family`` (one of ``FAMILIES``), or ``family`` itself."""
  if isinstance(family, HashFamily):
    return family
  if family not in FAMILIES:
    raise ValueError(f"hash family must be one of {tuple(FAMILIES)} or a "
                     f"jslide.lsh.HashFamily, got {family!r}")
  return FAMILIES[family]
