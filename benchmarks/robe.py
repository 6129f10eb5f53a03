"""ROBE against full embedding tables at a Criteo-like shape: step time and peak memory.

The shape is the Criteo Kaggle display-advertising data's (made up here, no data read): 26
categorical fields with its published cardinalities (33.8 million rows in all, the largest
10.1 million), ids drawn from a power law within each field (Zipf, exponent 1.1, so a few
values dominate as in real logs), 13 dense features, batch 1,024; a DLRM with 32-wide
embeddings, a 64-wide bottom MLP and a 256-128 top MLP. Modes, each in its own process so
its peak resident memory is its own:

- ``full``: a ``TableEmbed`` per field (33.8M x 32 floats, 4.3 GB, and Adam's two moments),
  row-sparse catch-up Adam on the rows a batch reads, in place;
- ``robe-100`` / ``robe-1000``: one ``RobeMemory`` of 1/100 or 1/1000 of those floats shared
  by all fields (block 32, as in the authors' Criteo Terabyte runs), the same optimizer on
  the windows a batch reads;
- ``hash-1000``: the hashing trick at the same memory (a shared table of 1/1000 of the rows).

    python benchmarks/robe.py --json results/robe.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

from _report import run_worker, write_json

CRITEO_SIZES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593,
                3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105,
                142572)
D, BATCH, DENSE, BLOCK = 32, 1024, 13, 32


def make_batches(count: int, seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    ids = np.stack([(rng.zipf(1.1, size=BATCH) - 1) % n for n in CRITEO_SIZES], axis=1)
    out.append({"ids": ids.astype(np.int32),
                "dense": rng.normal(size=(BATCH, DENSE)).astype(np.float32),
                "labels": (rng.random(BATCH) < 0.25).astype(np.float32),
                "mask": np.ones(BATCH, bool)})
  return out


def build(mode: str):
  from flax import nnx

  import jslide
  rngs = nnx.Rngs(0)
  total = sum(CRITEO_SIZES)
  if mode == "full":
    embeds = [jslide.nn.TableEmbed(n, D, rngs=rngs) for n in CRITEO_SIZES]
  elif mode.startswith("robe-"):
    memory = jslide.nn.RobeMemory(total * D // int(mode.split("-")[1]), rngs=rngs)
    embeds = [jslide.nn.RobeEmbed(n, D, memory=memory, block=BLOCK, rngs=rngs)
              for n in CRITEO_SIZES]
  elif mode.startswith("hash-"):
    table = jslide.nn.HashedTable(total // int(mode.split("-")[1]), D, rngs=rngs)
    embeds = [jslide.nn.HashEmbed(n, D, table=table, rngs=rngs) for n in CRITEO_SIZES]
  else:
    raise ValueError(mode)
  return jslide.nn.DLRM(embeds, num_dense=DENSE, bottom=(64,), top=(256, 128), rngs=rngs)


def worker(mode: str, seconds: float) -> dict:
  import jax
  import numpy as np
  import optax

  import jslide

  t0 = time.perf_counter()
  model = build(mode)

  def bce(model, batch, key):
    del key
    values = optax.sigmoid_binary_cross_entropy(model(batch["ids"], batch["dense"]),
                                                batch["labels"])
    return values, batch["mask"]

  graphdef, state, step = jslide.train.make_train_step(
      model, bce, table_tx=jslide.optim.sparse_adam(1e-3, catch_up=True),
      dense_tx=optax.adam(1e-3))
  del model
  embedding_bytes = sum(x.nbytes for x in jax.tree.leaves(state.tables))
  build_seconds = time.perf_counter() - t0
  batches = [jax.tree.map(jax.numpy.asarray, b) for b in make_batches(8)]
  key = jax.random.PRNGKey(0)
  for i in range(2):  # compile
    state, m = step(state, batches[i], jax.random.fold_in(key, i))
    m["loss"].block_until_ready()
  times, losses = [], []
  start = time.perf_counter()
  while time.perf_counter() - start < seconds or len(times) < 5:
    t = time.perf_counter()
    state, m = step(state, batches[len(times) % len(batches)], key)
    m["loss"].block_until_ready()
    times.append(time.perf_counter() - t)
    losses.append(float(m["loss"]))
  return {"mode": mode, "ms_per_step": 1e3 * statistics.median(times), "steps": len(times),
          "examples_per_second": BATCH / statistics.median(times),
          "embedding_mb": embedding_bytes / 2**20, "build_seconds": build_seconds,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "loss": [losses[0], losses[-1]], "finite": bool(np.isfinite(losses[-1]))}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--modes", nargs="+", default=["full", "robe-100", "robe-1000", "hash-1000"])
  p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per mode")
  p.add_argument("--json")
  p.add_argument("--worker", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.seconds)))
    return
  print(f"Criteo-like: {len(CRITEO_SIZES)} fields, {sum(CRITEO_SIZES):,} rows, d={D}, "
        f"batch {BATCH}, {os.cpu_count()} cores")
  print(f"{'mode':>10} {'embedding MB':>13} {'ms/step':>8} {'examples/s':>11} "
        f"{'peak RSS MB':>12}")
  rows = []
  for mode in args.modes:
    row = run_worker(__file__, "--worker", mode, "--seconds", str(args.seconds))
    rows.append(row)
    print(f"{mode:>10} {row['embedding_mb']:>13.1f} {row['ms_per_step']:>8.2f} "
          f"{row['examples_per_second']:>11.0f} {row['peak_rss_mb']:>12.0f}", flush=True)
  full = next((r for r in rows if r["mode"] == "full"), None)
  if full:
    for r in rows:
      if r is not full:
        print(f"{r['mode']}: {full['ms_per_step'] / r['ms_per_step']:.2f}x the full tables' "
              f"speed in {r['peak_rss_mb'] / full['peak_rss_mb']:.3f} of their peak memory")
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
