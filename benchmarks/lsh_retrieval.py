"""LSH index build, batch query and recall, against brute-force top-k in JAX, same run.

Weights are "trained-like": rows in clusters of 100 (a unit center plus noise, within-cluster
cosine about 0.9), queries near cluster centers. For each N: time to build the index of the
whole table, time to query a batch (hash + retrieve), and recall of each query's exact
top-10 rows by inner product within the returned active set; brute force is
``jax.lax.top_k(x @ w.T, k)`` (k = 10 and k = active), jitted, on the same data.

    python benchmarks/lsh_retrieval.py --json results/lsh_retrieval.json
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import jslide
from _report import median_ms, write_json
from jslide import lsh

D, B, PER_CLUSTER = 128, 128, 100


def clustered(n, seed=0):
  rng = np.random.default_rng(seed)
  c = n // PER_CLUSTER
  centers = rng.normal(size=(c, D)).astype(np.float32)
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  w = np.repeat(centers, PER_CLUSTER, axis=0)
  w += (0.35 / np.sqrt(D)) * rng.standard_normal(size=w.shape, dtype=np.float32)
  pick = rng.choice(c, size=B, replace=False)
  x = centers[pick] + (0.35 / np.sqrt(D)) * rng.standard_normal(size=(B, D), dtype=np.float32)
  return jnp.asarray(w), jnp.asarray(x.astype(np.float32))


def recall_at_10(active, exact10):
  a, e = np.asarray(active), np.asarray(exact10)
  return float(np.mean([len(set(e[i]) & set(a[i])) / 10 for i in range(len(e))]))


def make_family(name, key, k, l):
  if name == "dwta":
    return lsh.DWTA.init(key, D, k, l, bin_size=8)
  return lsh.SimHash.init(key, D, k, l)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
  p.add_argument("--family", choices=["dwta", "simhash"], default="dwta")
  p.add_argument("--k", type=int, default=4, help="hashes per table (DWTA: 3 bits each)")
  p.add_argument("--l", type=int, default=50)
  p.add_argument("--active", type=int, default=2048)
  p.add_argument("--strategy", default="topk", choices=sorted(lsh.STRATEGIES))
  p.add_argument("--json")
  args = p.parse_args()

  key = jax.random.PRNGKey(0)
  print(f"d={D} B={B} family={args.family} K={args.k} L={args.l} strategy={args.strategy} "
        f"cores={os.cpu_count()} isa={jslide.kernel_isa()}")
  print(f"{'N':>10} {'active':>7} {'build ms':>9} {'index MB':>9} {'query ms':>9} "
        f"{'top10 ms':>9} {'topB ms':>9} {'x top10':>8} {'x topB':>7} {'recall@10':>9}")
  rows = []
  for n in args.n:
    w, x = clustered(n)
    hasher = make_family(args.family, key, args.k, args.l)
    build = jax.jit(lsh.build)
    build_ms = median_ms(build, hasher, w, repeats=3)
    index = build(hasher, w)
    brute10 = jax.jit(lambda x, w: jax.lax.top_k(x @ w.T, 10)[1])
    exact10 = brute10(x, w)
    top10_ms = median_ms(brute10, x, w, repeats=5)
    for active in sorted({args.active, max(1, n // 100)}):
      q = jax.jit(lambda index, x, key: lsh.query(index, x, active=active, key=key,
                                                  strategy=args.strategy))
      query_ms = median_ms(q, index, x, key, repeats=5)
      bruteb = jax.jit(lambda x, w: jax.lax.top_k(x @ w.T, active)[1])
      topb_ms = median_ms(bruteb, x, w, repeats=3)
      row = {"n": n, "d": D, "batch": B, "family": args.family, "k": args.k, "l": args.l,
             "strategy": args.strategy, "active": active, "build_ms": build_ms,
             "index_mb": index.nbytes() / 2**20, "query_ms": query_ms,
             "brute_top10_ms": top10_ms, "brute_topbudget_ms": topb_ms,
             "speedup_vs_top10": top10_ms / query_ms, "speedup_vs_topbudget": topb_ms / query_ms,
             "recall_at_10": recall_at_10(q(index, x, key), exact10)}
      rows.append(row)
      print(f"{n:>10,} {active:>7} {build_ms:>9.0f} {row['index_mb']:>9.0f} {query_ms:>9.2f} "
            f"{top10_ms:>9.1f} {topb_ms:>9.1f} {row['speedup_vs_top10']:>7.0f}x "
            f"{row['speedup_vs_topbudget']:>6.0f}x {row['recall_at_10']:>9.3f}", flush=True)
  # SLIDE's Amazon-670K output layer: N=670,091, DWTA K=6 (bin 8: 2^18 buckets), L=50.
  n = 670_091
  w, _ = clustered(n)
  hasher = lsh.DWTA.init(key, D, 6, 50, bin_size=8)
  build_ms = median_ms(jax.jit(lsh.build), hasher, w, repeats=2)
  index = lsh.build(hasher, w)
  slide_mb = 50 * 2**18 * 128 * 4 / 2**20  # 128 int32 slots per bucket
  amazon = {"n": n, "family": "dwta", "k": 6, "l": 50, "num_buckets": index.num_buckets,
            "build_ms": build_ms, "index_mb": index.nbytes() / 2**20,
            "slide_fixed_bucket_mb": slide_mb}
  rows.append(amazon)
  print(f"Amazon-670K shape (N={n:,}, DWTA K=6, L=50, {index.num_buckets:,} buckets): index "
        f"{amazon['index_mb']:.0f} MB (SLIDE's 128-slot buckets: {slide_mb:,.0f} MB), "
        f"built in {build_ms:.0f} ms")
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
