"""Training throughput at SLIDE's Amazon-670K shape: jslide against dense JAX + Optax.

Architecture (SLIDE's): 135,909 sparse input features (about 75 non-zeros an example) ->
128 ReLU -> 670,091 outputs; batch 128. jslide: DWTA K=6 (2^18 buckets), L=50, 0.5% of the
outputs active per example (3,351), labels forced in, index rebuilt on a schedule (first
after 50 steps, periods growing 1.1x); catch-up Adam in place (``--lazy-adam``: lazy
Adam). Dense: the same network with every output scored, ``jax.grad`` and ``optax.adam``,
jitted with donation. Sampled (``--sampled S``, the program a JAX user writes instead): the
batch's labels plus S uniform labels shared by the batch, ``jnp.take`` gathers,
``optax.adam`` over every parameter (:func:`jslide.xc.objectives.sampled_softmax_loss`). Data are
generated at that shape (power-law labels, 1 to 5 per example; the real Amazon-670K cannot
be downloaded here). Each mode runs in its own subprocess so peak resident memory is its
own. On these random weights the index returns about 2.5% of the active set (the ``index
share`` column: ids retrieved / active, with no labels forced and no fill), so nearly all
of each active set is random fill: ``--fill-groups 1`` draws it per example
(SLIDE's padding), ``G`` once per G consecutive examples (shared negatives), which cuts the
rows the optimizer touches a step from ~400K to ~400K / G.

    python benchmarks/amazon_shape.py --json results/amazon_shape.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from _report import run_worker, write_json

N_IN, N_OUT, HIDDEN, BATCH, NNZ = 135_909, 670_091, 128, 128, 75


def make_batches(count, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    feat_ids = rng.integers(0, N_IN, size=(BATCH, NNZ)).astype(np.int32)
    feat_vals = rng.random((BATCH, NNZ)).astype(np.float32) / np.sqrt(NNZ)
    n_lab = rng.integers(1, 6, size=BATCH)
    labels = np.minimum(rng.zipf(1.3, size=(BATCH, 5)) - 1, N_OUT - 1).astype(np.int32)
    labels = np.where(np.arange(5)[None, :] < n_lab[:, None], labels, -1)
    out.append({"feat_ids": feat_ids, "feat_vals": feat_vals, "labels": labels,
                "mask": np.ones(BATCH, bool)})
  return out


def worker(mode: str, seconds: float, fill_group: int, rebuild_initial: int,
           catch_up: bool, sampled: int = 0) -> dict:
  import jax
  import optax
  from flax import nnx

  import jslide
  from jslide.xc import objectives

  active = int(round(0.005 * N_OUT))
  model = jslide.nn.SparseMLP(N_IN, N_OUT, hidden=(HIDDEN,), active=active, hash_family="dwta",
                              num_hashes=6, num_hash_tables=50, bin_size=8, fill_group=fill_group,
                              rngs=nnx.Rngs(0))
  if mode == "dense":
    graphdef, state, step = jslide.train.make_dense_train_step(
        model, objectives.full_softmax_loss, tx=optax.adam(1e-3))
  elif mode == "sampled":
    graphdef, state, step = jslide.train.make_dense_train_step(
        model, objectives.sampled_softmax_loss(model, sampled), tx=optax.adam(1e-3))
  else:
    graphdef, state, step = jslide.train.make_train_step(
        model, objectives.active_set_loss(),
        table_tx=jslide.optim.sparse_adam(1e-3, catch_up=catch_up),
        dense_tx=optax.adam(1e-3),
        schedule=jslide.lsh.RebuildSchedule(rebuild_initial, 1.1, max(1000, rebuild_initial)))
  del model
  batches = [jax.tree.map(jax.numpy.asarray, b) for b in make_batches(8)]
  key = jax.random.PRNGKey(0)
  for i in range(2):  # compile
    state, m = step(state, batches[i], jax.random.fold_in(key, i))
    m["loss"].block_until_ready()
  t0, n, rebuilds = time.perf_counter(), 0, 0
  while time.perf_counter() - t0 < seconds or n < 3:
    state, m = step(state, batches[n % len(batches)], jax.random.fold_in(key, n + 2))
    m["loss"].block_until_ready()
    rebuilds += int(m["rebuilt"])
    n += 1
  elapsed = time.perf_counter() - t0
  share = None
  if mode == "sparse":  # what the index supplies of the active set (no labels, no fill)
    net = state.model(graphdef)
    b = batches[0]
    found = net.output.retrieve(net.encode(b["feat_ids"], b["feat_vals"]), key=key) >= 0
    share = float(found.sum(1).mean()) / active
  return {"mode": mode, "index_share": share, "steps": n, "seconds": elapsed,
          "examples_per_second": n * BATCH / elapsed,
          "ms_per_step": 1e3 * elapsed / n, "index_rebuilds": rebuilds, "active": active,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "last_loss": float(m["loss"])}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seconds", type=float, default=60.0, help="timed seconds per run")
  p.add_argument("--rebuild-initial", type=int, default=50,
                 help="first index rebuild after this many steps (then periods grow 1.1x)")
  p.add_argument("--fill-groups", type=int, nargs="*", default=[1, 8, BATCH],
                 help="jslide runs: examples sharing one random fill (1: SLIDE's per-example)")
  p.add_argument("--no-dense", dest="dense", action="store_false")
  p.add_argument("--sampled", type=int, default=2048, metavar="S",
                 help="the plain-JAX sampled-softmax baseline with S shared uniform labels "
                      "(0: skip it)")
  p.add_argument("--lazy-adam", action="store_true",
                 help="lazy Adam for the tables (default: catch-up Adam, equal to dense Adam)")
  p.add_argument("--json")
  p.add_argument("--worker", help=argparse.SUPPRESS)  # "dense" or a fill group
  args = p.parse_args()
  if args.worker:
    baseline = args.worker in ("dense", "sampled")
    row = worker(args.worker if baseline else "sparse", args.seconds,
                 fill_group=1 if baseline else int(args.worker),
                 rebuild_initial=args.rebuild_initial, catch_up=not args.lazy_adam,
                 sampled=args.sampled)
    row["mode"] = ({"dense": "dense", "sampled": f"sampled {args.sampled}"}[args.worker]
                   if baseline else f"jslide, fill group {args.worker}")
    row["fill_group"] = None if baseline else int(args.worker)
    print(json.dumps(row))
    return
  rows = []
  print(f"Amazon-670K shape: {N_IN:,} inputs (~{NNZ} non-zeros) -> {HIDDEN} -> {N_OUT:,}, "
        f"batch {BATCH}, {os.cpu_count()} cores")
  print(f"{'mode':>22} {'examples/s':>11} {'ms/step':>9} {'peak RSS MB':>12} {'rebuilds':>9} "
        f"{'index share':>12}")
  workers = [*map(str, args.fill_groups), *(["sampled"] if args.sampled else []),
             *(["dense"] if args.dense else [])]
  for worker_arg in workers:
    row = run_worker(__file__, "--worker", worker_arg, "--seconds", str(args.seconds),
                     "--rebuild-initial", str(args.rebuild_initial), "--sampled",
                     str(args.sampled), *(["--lazy-adam"] if args.lazy_adam else []))
    rows.append(row)
    share = "" if row["index_share"] is None else f"{row['index_share']:.1%}"
    print(f"{row['mode']:>22} {row['examples_per_second']:>11.0f} {row['ms_per_step']:>9.1f} "
          f"{row['peak_rss_mb']:>12.0f} {row['index_rebuilds']:>9} {share:>12}", flush=True)
  for base in ("sampled", "dense"):
    ref = [r for r in rows if r["mode"].startswith(base)]
    for row in rows:
      if ref and row["mode"].startswith("jslide"):
        print(f"{row['mode']}: {row['examples_per_second'] / ref[0]['examples_per_second']:.1f}x "
              f"the {ref[0]['mode']} throughput")
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
