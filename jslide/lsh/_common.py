"""Helpers shared by the hash families."""

from __future__ import annotations

from jslide._checks import float32_array


def check_vectors(fn: str, x, dim: int):
  x = float32_array(fn, "x", x, ndim=2)
  if x.shape[1] != dim:
    raise ValueError(f"{fn}: x has {x.shape[1]} features but the hash family was built for "
                     f"dim={dim}")
  return x


def check_kl(fn: str, num_bits: int, num_tables: int, bits_per_hash: int = 1):
  for name, v in (("num_bits", num_bits), ("num_tables", num_tables)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{fn}: {name} must be a positive int, got {v!r}")
  if num_bits * bits_per_hash > 24:
    raise ValueError(f"{fn}: K * bits per hash = {num_bits * bits_per_hash} exceeds 24 "
                     "(2^24 buckets per table); lower num_bits")
  if num_tables > 512:
    raise ValueError(f"{fn}: num_tables={num_tables} is above the supported 512")
