"""Shared by the benchmark scripts: running a measurement in a fresh process, writing JSON."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import jax


def write_json(path: str | None, rows) -> None:
  """Writes rows to path as JSON (creating folders); does nothing without a path."""
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(rows, f, indent=2)
  print(f"wrote {path}")


def run_worker(script: str, *args: str) -> dict:
  """``python script *args`` in a fresh process (so its peak memory and its thread placement
  are its own): the JSON object on the last line it prints."""
  out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True,
                       text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def median_ms(fn, *args, repeats: int) -> float:
  """Median milliseconds of ``fn(*args)`` (a jitted function) over ``repeats`` calls, after
  one call that compiles and warms it."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)
