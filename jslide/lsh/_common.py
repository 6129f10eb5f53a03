"""Helpers shared by the hash families."""

from __future__ import annotations

from jslide._checks import float32_array


def check_vectors(fn: str, x, dim: int):
  x = float32_array(fn, "x", x, ndim=2)
  if x.shape[1] != dim:
    raise ValueError(f"{fn}: x has {x.shape[1]} features but the hash family was built for "
                     f"dim={dim}")
  return x


# The same limits as ffi/ffi_checks.h (kMaxHashesTimesBits, kMaxTables).
MAX_CODE_BITS = 24  # bits of a bucket code: 2^24 buckets per table
MAX_TABLES = 512


def check_kl(fn: str, num_hashes: int, num_hash_tables: int, bits_per_hash: int = 1, dim=1):
  """ValueError unless K, L (and the vector length ``dim``) are positive ints within the
  kernels' limits."""
  for name, v in (("num_hashes", num_hashes), ("num_hash_tables", num_hash_tables), ("dim", dim)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{fn}: {name} must be a positive int, got {v!r}")
  if num_hashes * bits_per_hash > MAX_CODE_BITS:
    raise ValueError(f"{fn}: K * bits per hash = {num_hashes * bits_per_hash} exceeds "
                     f"{MAX_CODE_BITS} (2^{MAX_CODE_BITS} buckets per table); lower num_hashes (K)")
  if num_hash_tables > MAX_TABLES:
    raise ValueError(f"{fn}: num_hash_tables={num_hash_tables} is above the supported {MAX_TABLES}")
