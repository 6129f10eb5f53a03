"""One training step of a large output layer: jslide (sparse) against dense JAX + Optax.

The model is the output layer of an extreme classifier: inputs x f32[B, d] (stand-ins for a
hidden layer's activations), a table w f32[N, d] and bias b f32[N], softmax cross-entropy
against one label per example.

- dense: logits over all N neurons, ``jax.grad``, ``optax.adam``; params and state donated.
- sparse: logits over A active neurons per example (the label plus A-1 others) with
  ``jslide.sparse_linear``, ``jslide.value_and_grad`` (row-sparse table gradients),
  ``jslide.optim.sparse_adam`` (lazy, in place); params and state donated.

Active sets (``--active``): ``pool`` (default) draws each step's ids from 8,192 distinct rows,
the setting of the developers' guide (what an LSH index retrieving similar neurons for
similar inputs gives); ``uniform`` draws every id uniformly from all N rows (up to B*A =
32,768 distinct rows a step, the worst case for the sparse step).

Table precision (``--precision``, several allowed; jslide only, dense stays float32):
``f32``; ``bf16``, a bfloat16 table ``w`` with float32 Adam moments; ``bf16-moments``, the
table and both moments in bfloat16 (the bias stays float32). Each is compared with ``f32``
in the same run.

Every (mode, N) runs in a fresh subprocess, so the peak resident memory of the sparse run is
its own (its `sparse_peak_rss_mb`).

    python benchmarks/step_scaling.py --json results/step_scaling.json
    python benchmarks/step_scaling.py --precision f32 bf16 bf16-moments --n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import _report
from _report import write_json

D, B, A, POOL = 128, 128, 256, 8192


def make_batches(n: int, active: str, count: int, seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    x = rng.normal(size=(B, D)).astype(np.float32)
    if active == "pool":
      pool = rng.choice(n, size=min(POOL, n), replace=False).astype(np.int32)
      labels = pool[rng.integers(0, pool.size, size=B)]
      others = pool[np.argsort(rng.random((B, pool.size)), axis=1)[:, :A - 1]]
    else:
      labels = rng.integers(0, n, size=B).astype(np.int32)
      others = rng.integers(0, n, size=(B, A - 1)).astype(np.int32)
    ids = np.concatenate([labels[:, None], others], axis=1).astype(np.int32)
    batches.append((x, labels[:, None].astype(np.int32), ids))
  return batches


PRECISIONS = {"f32": ("float32", None), "bf16": ("bfloat16", None),
              "bf16-moments": ("bfloat16", "bfloat16")}  # (table dtype, moment dtype)


def worker(mode: str, n: int, active: str, steps: int, budget_s: float,
           precision: str = "f32", huge_pages: bool = True) -> dict:
  import jax
  import jax.numpy as jnp
  import optax

  import jslide

  if not huge_pages:  # tables and moments on 4 KiB pages
    jslide.initializers.HUGE_PAGE_MIN_BYTES = 2**62

  key = jax.random.PRNGKey(0)
  table_dtype, moment_dtype = PRECISIONS[precision]
  params = {"w": jslide.initializers.normal_table(key, n, D, 0.01, getattr(jnp, table_dtype)),
            "b": jnp.zeros((n,), jnp.float32)}
  batches = [tuple(jnp.asarray(a) for a in bt) for bt in make_batches(n, active, 4)]

  if mode == "dense":
    tx = optax.adam(1e-3)

    def loss_fn(p, x, labels, ids):
      logits = x @ p["w"].T + p["b"]
      return jslide.losses.softmax_cross_entropy(logits, labels).mean()

    def step(p, state, x, labels, ids):
      loss, g = jax.value_and_grad(loss_fn)(p, x, labels, ids)
      u, state = tx.update(g, state, p)
      return optax.apply_updates(p, u), state, loss
  else:
    tables = jslide.tables.min_rows(n)
    tx = jslide.optim.sparse_adam(
        1e-3, moment_dtype=moment_dtype and getattr(jnp, moment_dtype))

    def loss_fn(p, x, labels, ids):
      logits = jslide.sparse_linear(x, p["w"], p["b"], ids)
      return jslide.losses.active_softmax_cross_entropy(logits, ids, labels).mean()

    def step(p, state, x, labels, ids):
      loss, g = jslide.value_and_grad(loss_fn, tables=tables)(p, x, labels, ids)
      u, state = tx.update(g, state, p)
      return optax.apply_updates(p, u), state, loss

  state = tx.init(params)
  step = jax.jit(step, donate_argnums=(0, 1))
  times, losses = [], []
  start = time.perf_counter()
  for i in range(steps + 2):
    t0 = time.perf_counter()
    params, state, loss = step(params, state, *batches[i % len(batches)])
    loss.block_until_ready()
    if i >= 2:  # the first two include compilation
      times.append(time.perf_counter() - t0)
    losses.append(float(loss))
    if i >= 4 and time.perf_counter() - start > budget_s:
      break
  table_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  return {"ms": 1e3 * statistics.median(times), "steps_timed": len(times),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "params_and_state_mb": (table_bytes + state_bytes) / 2**20,
          "first_loss": losses[0], "last_loss": losses[-1]}


def run_worker(mode, n, active, steps, budget_s, precision="f32", huge_pages=True) -> dict:
  return _report.run_worker(__file__, "--worker", mode, "--n", str(n), "--active", active,
                            "--steps", str(steps), "--budget", str(budget_s), "--precision",
                            precision, *([] if huge_pages else ["--no-huge-pages"]))


def fastest_of(repeats, *args, **kwargs) -> dict:
  """The run with the lowest median step time of ``repeats`` fresh processes, with every
  run's median in ``all_ms``."""
  runs = [run_worker(*args, **kwargs) for _ in range(max(1, repeats))]
  best = min(runs, key=lambda r: r["ms"])
  return {**best, "all_ms": [r["ms"] for r in runs]}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
  p.add_argument("--active", choices=["pool", "uniform"], default="pool")
  p.add_argument("--steps", type=int, default=200, help="timed steps per run (at most)")
  p.add_argument("--repeats", type=int, default=3,
                 help="jslide runs per (N, precision), each in a fresh process: the table "
                      "reports the fastest (the process's thread placement swings a step "
                      "by up to 1.7x here) and the JSON every run")
  p.add_argument("--budget", type=float, default=20.0, help="seconds per run for timed steps")
  p.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=["f32"],
                 help="jslide table precisions to run (the first is the reference)")
  p.add_argument("--no-huge-pages", dest="huge_pages", action="store_false",
                 help="keep jslide's tables and moments on 4 KiB pages (to measure what "
                      "transparent huge pages are worth; docs/design.md)")
  p.add_argument("--json", help="write the results to this file")
  p.add_argument("--worker", choices=["dense", "sparse"], help=argparse.SUPPRESS)
  args = p.parse_args()

  if args.worker:
    print(json.dumps(worker(args.worker, args.n[0], args.active, args.steps, args.budget,
                            args.precision[0], args.huge_pages)))
    return

  import jslide
  rows = []
  print(f"d={D} B={B} A={A} active={args.active} cores={os.cpu_count()} isa={jslide.kernel_isa()}")
  others = args.precision[1:]
  header = (f"{'N':>10} {'dense ms':>10} {'sparse ms':>10} {'speedup':>8} "
            f"{'sparse RSS MB':>14} {'params+state MB':>16} {'RSS ratio':>9}"
            + "".join(f" {p + ' ms':>16} {'x faster':>8}" for p in others))
  print(header)
  for n in args.n:
    dense = run_worker("dense", n, args.active, args.steps, args.budget,
                       huge_pages=args.huge_pages)
    sparse = fastest_of(args.repeats, "sparse", n, args.active, args.steps, args.budget,
                        args.precision[0], huge_pages=args.huge_pages)
    extra = {p: fastest_of(args.repeats, "sparse", n, args.active, args.steps, args.budget, p,
                           huge_pages=args.huge_pages)
             for p in others}
    row = {"n": n, "d": D, "batch": B, "active": A, "active_sets": args.active,
           "precision": args.precision[0],
           "other_precisions": {p: {"sparse_ms": e["ms"], "sparse_ms_runs": e["all_ms"],
                                    "faster": sparse["ms"] / e["ms"],
                                    "sparse_peak_rss_mb": e["peak_rss_mb"],
                                    "params_and_state_mb": e["params_and_state_mb"],
                                    "sparse_loss": [e["first_loss"], e["last_loss"]]}
                                for p, e in extra.items()},
           "dense_ms": dense["ms"], "sparse_ms": sparse["ms"], "sparse_ms_runs": sparse["all_ms"],
           "speedup": dense["ms"] / sparse["ms"],
           "sparse_peak_rss_mb": sparse["peak_rss_mb"],
           "dense_peak_rss_mb": dense["peak_rss_mb"],
           "params_and_state_mb": sparse["params_and_state_mb"],
           "sparse_rss_over_state": sparse["peak_rss_mb"] / sparse["params_and_state_mb"],
           "sparse_loss": [sparse["first_loss"], sparse["last_loss"]],
           "dense_loss": [dense["first_loss"], dense["last_loss"]]}
    rows.append(row)
    print(f"{n:>10,} {row['dense_ms']:>10.2f} {row['sparse_ms']:>10.3f} {row['speedup']:>7.0f}x "
          f"{row['sparse_peak_rss_mb']:>14.0f} {row['params_and_state_mb']:>16.0f} "
          f"{row['sparse_rss_over_state']:>9.2f}"
          + "".join(f" {e['sparse_ms']:>16.3f} {e['faster']:>7.2f}x"
                    for e in row["other_precisions"].values()), flush=True)
  base = rows[0]["sparse_ms"]
  for row in rows:
    row["sparse_ms_over_smallest_n"] = row["sparse_ms"] / base
  print("sparse step time relative to N=%s: %s" % (
      f"{rows[0]['n']:,}", ", ".join(f"{r['sparse_ms_over_smallest_n']:.2f}" for r in rows)))
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
