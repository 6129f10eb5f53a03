"""Which index finds a trained output layer's top labels: hash families on real weights.

Loads a checkpoint of ``python -m jslide.xc train --ckpt DIR`` (any hash family: only its
weights are used), encodes the first ``--examples`` test examples of its dataset, and for
each hash family builds an index over the trained output rows (with their biases) and
retrieves at most ``--active`` labels per example (no labels forced, no random fill). The
k-means indices are fitted fresh, 6 Lloyd steps from random centroids. It
reports the recall of the exact top-1 and top-5 labels within what was retrieved, the labels
retrieved per example, and build and query time; exact scoring of every label (``h @ W.T +
b`` and ``jax.lax.top_k``) is timed on the same batch as the baseline.

    python -m jslide.xc train --epochs 3 --hash dwta --ckpt /tmp/wn_ck
    python benchmarks/lsh_trained.py --ckpt /tmp/wn_ck --json results/lsh_trained.json
"""

from __future__ import annotations

import argparse
import time

import jax

from _report import write_json
from jslide import datasets as D, lsh
from jslide.xc import trainer

def _kmeans(k: int, l: int, probes: int):
  return lambda key, d: lsh.ClusterHash.init(key, d, k, l, probes=probes, iters=6)


# (name, family constructor (key, d) -> hasher, query strategy)
FAMILIES = [
    ("DWTA K=5 L=16 (old default)", lambda k, d: lsh.DWTA.init(k, d, 5, 16), "vanilla"),
    ("DWTA K=6 L=50 (SLIDE)", lambda k, d: lsh.DWTA.init(k, d, 6, 50), "vanilla"),
    ("SimHash K=8 L=50", lambda k, d: lsh.SimHash.init(k, d, 8, 50), "topk"),
    ("MIPS SimHash K=6 L=32", lambda k, d: lsh.MIPSHash.init(k, d, 6, 32), "topk"),
    ("MIPS SimHash K=8 L=50", lambda k, d: lsh.MIPSHash.init(k, d, 8, 50), "topk"),
    ("cluster K=8 L=1 P=64", _kmeans(8, 1, 64), "ranked"),
    ("cluster K=10 L=1 P=160", _kmeans(10, 1, 160), "ranked"),
    ("cluster K=8 L=2 P=32", _kmeans(8, 2, 32), "ranked"),
    ("cluster K=10 L=2 P=80", _kmeans(10, 2, 80), "ranked"),
    ("cluster K=11 L=1 P=320", _kmeans(11, 1, 320), "ranked"),
    ("cluster K=11 L=3 P=309", _kmeans(11, 3, 309), "ranked"),
    ("cluster K=10 L=6 P=69 (the inference index's shape)", _kmeans(10, 6, 69), "ranked"),
]


def _timed(fn, *args):
  jax.block_until_ready(fn(*args))  # compile
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ckpt", required=True)
  p.add_argument("--dataset", choices=sorted(D.bundled.NAMES), default="wordnet")
  p.add_argument("--active", type=int, default=1024, help="labels retrieved per example at most")
  p.add_argument("--examples", type=int, default=4096)
  p.add_argument("--json")
  args = p.parse_args()
  graphdef, state, _, _ = trainer.load_model(args.ckpt)
  model = state.model(graphdef)
  test = D.bundled.load(args.dataset, "test").normalized()
  b = next(iter(D.batches(test, args.examples, max_features=64, max_labels=8, shuffle=False)))
  h = jax.jit(model.encode)(b.feat_ids, b.feat_vals)
  w, bias = model.output.kernel.get_value(), model.output.bias.get_value()
  top, t_exact = _timed(jax.jit(lambda h: jax.lax.top_k(h @ w.T + bias, 5)[1]), h)
  n = w.shape[0]
  print(f"{args.dataset}: {n:,} labels, {h.shape[0]:,} test examples, active {args.active} "
        f"({args.active / n:.1%} of the labels); exact scoring {1e3 * t_exact:.1f} ms")
  print(f"{'family':>30} {'strategy':>8} {'recall@1':>9} {'recall@5':>9} {'retrieved':>10} "
        f"{'build s':>8} {'query ms':>9}")
  key = jax.random.PRNGKey(1)
  rows = [{"family": "exact", "recall@1": 1.0, "recall@5": 1.0, "retrieved": n,
           "query_ms": 1e3 * t_exact}]
  for name, make, strategy in FAMILIES:
    index, t_build = _timed(jax.jit(lsh.build), make(key, w.shape[1]), w, bias)
    query = jax.jit(lambda index, h, strategy=strategy: lsh.query(
        index, h, active=args.active, key=key, strategy=strategy, fill=False))
    ids, t_query = _timed(query, index, h)
    row = {"family": name, "strategy": strategy,
           "recall@1": float(lsh.recall_of_top_k(ids, top[:, :1]).mean()),
           "recall@5": float(lsh.recall_of_top_k(ids, top).mean()),
           "retrieved": float((ids >= 0).sum(1).mean()), "build_s": t_build,
           "query_ms": 1e3 * t_query}
    rows.append(row)
    print(f"{name:>30} {strategy:>8} {row['recall@1']:>9.3f} {row['recall@5']:>9.3f} "
          f"{row['retrieved']:>10.0f} {t_build:>8.2f} {row['query_ms']:>9.1f}", flush=True)
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
