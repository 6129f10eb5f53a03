"""The selection behind the k-means index: ``jslide_top_indices`` against ``lax.top_k`` and
``jnp.argmax``, same run, at the shapes the index uses.

- ``[256, 1024]``, k = 162: the probes of a training batch (WordNet: 1,024 buckets, one table);
- ``[6144, 1024]``, k = 69: the probes of 1,024 queries of the inference index (6 tables);
- ``[20480, 1024]``, k = 1: the nearest centroid of every row, at each step of a rebuild.

Scores are standard normal; the median of ``--repeats`` jitted calls after one warm-up.

    python benchmarks/top_indices.py --json results/top_indices.json
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from _report import median_ms, write_json
from jslide.lsh.cluster import top_indices

SHAPES = [(256, 1024, 162), (6144, 1024, 69), (20480, 1024, 1)]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=50)
  p.add_argument("--json")
  args = p.parse_args()
  rows = []
  print(f"{'scores':>16} {'k':>5} {'top_indices ms':>15} {'lax.top_k ms':>13} "
        f"{'argmax ms':>10} {'speedup':>8}")
  for r, c, k in SHAPES:
    x = jax.random.normal(jax.random.PRNGKey(0), (r, c), jnp.float32)
    row = {"rows": r, "columns": c, "k": k,
           "top_indices_ms": median_ms(jax.jit(lambda s: top_indices(s, k)), x,
                                       repeats=args.repeats),
           "lax_top_k_ms": median_ms(jax.jit(lambda s: jax.lax.top_k(s, k)[1]), x,
                                     repeats=args.repeats)}
    if k == 1:
      row["argmax_ms"] = median_ms(jax.jit(lambda s: jnp.argmax(s, axis=1)), x,
                                   repeats=args.repeats)
    rows.append(row)
    argmax = f"{row['argmax_ms']:>10.2f}" if k == 1 else f"{'':>10}"
    print(f"{f'[{r}, {c}]':>16} {k:>5} {row['top_indices_ms']:>15.2f} "
          f"{row['lax_top_k_ms']:>13.2f} {argmax} "
          f"{row['lax_top_k_ms'] / row['top_indices_ms']:>7.1f}x", flush=True)
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
