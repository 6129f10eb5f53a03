"""Loads the C++ extension and registers its handlers as XLA FFI targets for the CPU."""

from __future__ import annotations

import os

import jax

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
