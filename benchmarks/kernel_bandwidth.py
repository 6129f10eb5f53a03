"""Memory bandwidth of the table kernels, as a fraction of a STREAM-style copy in the same run.

A sparse step reads and writes rows scattered over tables far larger than the caches, so its
kernels should be limited by memory bandwidth, not by latency. The yardstick is a copy of a
512 MiB buffer into another (libc ``memmove``, one thread per core, ``2 * bytes`` counted as
STREAM does), measured in the same process. Each kernel then runs on uniformly random rows
of a table ``[N, D]``; the ids cycle through ``--sets`` different batches whose rows (about
128 MiB at N = 1M) do not fit in the caches, and each timed call runs every set inside one
jitted ``lax.scan`` so dispatch costs nothing. Bytes moved count each gathered row once per
occurrence (a gather reads it) and each row the optimizer touches twice per array (read and
written): the traffic a kernel cannot avoid.

- ``gather_dot`` (the forward of ``sparse_linear``): ``B * A`` rows of ``w`` (and the bias).
- ``gather_weighted_sum`` (the backward d/dx of ``sparse_linear``; the forward of
  ``embedding_bag``): ``B * A`` rows of ``w``.
- ``sparse_adam_rows`` (lazy Adam, in place, donated): the distinct rows of each batch, read
  and written in ``w``, ``m`` and ``v``.

``--dtype bfloat16`` (repeatable with ``float32``) runs the same kernels on BF16 tables.

    python benchmarks/kernel_bandwidth.py --json results/kernel_bandwidth.json
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

import jslide
from _report import write_json
from jslide import kernels

D, B, A = 128, 128, 256
COPY_BYTES = 512 * 2**20


def copy_bandwidth(repeats: int = 7) -> float:
  """GB/s of a STREAM-style copy: a 512 MiB buffer memmoved into another, one thread per core
  (ctypes releases the GIL), counting the bytes read and the bytes written."""
  src = np.ones(COPY_BYTES // 4, np.float32)
  dst = np.zeros_like(src)  # both written once first, so no page faults are timed
  workers = max(1, os.cpu_count() or 1)
  bounds = np.linspace(0, src.nbytes, workers + 1).astype(np.int64) // 64 * 64

  def part(i):
    ctypes.memmove(dst.ctypes.data + int(bounds[i]), src.ctypes.data + int(bounds[i]),
                   int(bounds[i + 1] - bounds[i]))

  times = []
  for _ in range(repeats):
    threads = [threading.Thread(target=part, args=(i,)) for i in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    times.append(time.perf_counter() - t0)
  assert dst[-1] == 1.0
  return 2 * src.nbytes / min(times) / 1e9


def median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def run(n: int, dtype, sets: int, repeats: int) -> list[dict]:
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(n, D)).astype(np.float32) * 0.01).astype(dtype)
  b = jnp.zeros((n,), jnp.float32)
  ids = jnp.asarray(rng.integers(0, n, size=(sets, B, A)), jnp.int32)
  x = jnp.asarray(rng.normal(size=(sets, B, D)), jnp.float32)
  coef = jnp.asarray(rng.normal(size=(sets, B, A)) * 1e-3, jnp.float32)
  item = jnp.dtype(dtype).itemsize
  distinct = sum(np.unique(np.asarray(i)).size for i in ids)

  @jax.jit
  def forward(w, b, x, ids):
    return jax.lax.scan(lambda c, xi: (c + kernels.gather_dot(xi[0], w, b, xi[1]).sum(), None),
                        jnp.zeros([]), (x, ids))[0]

  @jax.jit
  def backward(w, coef, ids):
    return jax.lax.scan(
        lambda c, xi: (c + kernels.gather_weighted_sum(xi[1], xi[0], w).sum(), None),
        jnp.zeros([]), (coef, ids))[0]

  @jax.jit
  def adam(state, coef, x, ids):
    def one(state, xi):
      c, v, i = xi
      return tuple(kernels.sparse_adam_rows(*state, i, c, v, learning_rate=1e-3,
                                            bias_correction1=0.1, bias_correction2=0.001,
                                            b1=0.9, b2=0.999, eps=1e-8)), None
    return jax.lax.scan(one, state, (coef, x, ids))[0]

  adam = jax.jit(adam, donate_argnums=0)
  state = (w, jnp.zeros((n, D), jnp.float32), jnp.zeros((n, D), jnp.float32))

  def adam_call():
    nonlocal state
    state = adam(state, coef, x, ids)
    return state

  rows = []
  calls = [("gather_dot", lambda: forward(w, b, x, ids), sets * B * A * (D * item + 4)),
           ("gather_weighted_sum", lambda: backward(w, coef, ids), sets * B * A * D * item),
           ("sparse_adam_rows", adam_call, distinct * D * 2 * (item + 8))]
  for name, fn, nbytes in calls:
    sec = median_seconds(fn, repeats) / sets
    rows.append({"kernel": name, "n": n, "dtype": jnp.dtype(dtype).name, "ms": 1e3 * sec,
                 "gb_per_s": nbytes / sets / sec / 1e9})
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
  p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
  p.add_argument("--sets", type=int, default=16, help="distinct id batches per timed call")
  p.add_argument("--repeats", type=int, default=9)
  p.add_argument("--json")
  args = p.parse_args()
  copy = copy_bandwidth()
  print(f"d={D} B={B} A={A} cores={os.cpu_count()} isa={jslide.kernel_isa()}; "
        f"STREAM-style copy: {copy:.1f} GB/s")
  print(f"{'kernel':>20} {'dtype':>9} {'N':>10} {'ms':>8} {'GB/s':>7} {'of copy':>8}")
  rows = []
  for dtype in args.dtype:
    for n in args.n:
      for row in run(n, getattr(jnp, dtype), args.sets, args.repeats):
        row["copy_gb_per_s"] = copy
        row["fraction_of_copy"] = row["gb_per_s"] / copy
        rows.append(row)
        print(f"{row['kernel']:>20} {row['dtype']:>9} {n:>10,} {row['ms']:>8.3f} "
              f"{row['gb_per_s']:>7.1f} {row['fraction_of_copy']:>8.0%}", flush=True)
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
