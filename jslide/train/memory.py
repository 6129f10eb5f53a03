"""Out of memory predicted, not suffered: what a compiled training step will hold at its
peak, from XLA's own accounting of the compiled program, against what the machine has free,
checked before any of the state is allocated."""

from __future__ import annotations

import os


class NotEnoughMemoryError(ValueError):
  """The run would need more memory than the machine has available."""


def available_bytes() -> int:
  """The memory the machine can give this process now without swapping: Linux's
  MemAvailable, else the free physical pages."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def step_peak_bytes(compiled) -> int:
  """The bytes a compiled step holds at its peak: its arguments (the state and the batch),
  its temporaries, and the outputs that do not reuse a donated argument's buffer
  (``compiled``: ``jax.jit(step).lower(...).compile()``)."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes)


def check_fits(needed: int, what: str, available: int | None = None) -> None:
  """NotEnoughMemoryError, with both figures, when ``needed`` bytes exceed what is available
  (default: :func:`available_bytes`)."""
  available = available_bytes() if available is None else available
  if needed > available:
    gib = 1 << 30
    raise NotEnoughMemoryError(
        f"{what} needs about {needed / gib:.1f} GiB at its peak, and this machine has "
        f"{available / gib:.1f} GiB available: use a smaller model (fewer or narrower layers, "
        "a smaller vocabulary), bfloat16 tables, or a smaller batch")
