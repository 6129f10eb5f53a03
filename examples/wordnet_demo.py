"""jslide's demo: extreme classification on real data, jslide against the two programs a JAX
user would write instead (dense, and sampled softmax), same trainer, same run.

The data ship with jslide (``jslide.datasets.bundled``): by default WordNet 3.0 synsets mapped
from the words of their glosses to their direct hypernyms (20,472 labels, long-tailed; see
``jslide/datasets/build_wordnet.py``); ``--dataset debian`` maps Debian packages from their
descriptions to their dependencies (18,160 labels, 4.9 per example). The model is SLIDE's:
sparse input -> 128 ReLU -> output layer over all labels. Three ways to train its output
layer, each scoring about 1,024 labels per example:

- jslide: the example's labels, 256 other labels of the batch, 256 labels the k-means index
  retrieves as the highest scoring (hard negatives), random fill; row-sparse gradients and
  catch-up Adam in place;
- sampled softmax: the batch's labels plus uniform labels shared by the batch, plain
  ``jnp.take`` gathers, ``optax.adam`` over everything;
- dense: every label scored, ``optax.adam``.

10% of the training set is held out to select each run's best epoch; the table shows the test
numbers of that epoch (exact ranking over all labels) and, for jslide, ranking through its
inference index (labels retrieved, then rescored exactly) with the recall of the exact top
label, and that recall for the one-table index its training steps query.

    python examples/wordnet_demo.py              # 3 epochs each, about 5 minutes on 2 cores
    python examples/wordnet_demo.py --dataset debian --epochs 5 --json results/debian.json
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from jslide import datasets as D
from jslide.xc import ModelConfig, RunConfig, train


def shared_samples(data: D.XCData, active: int, batch_size: int) -> int:
  """Uniform labels for the sampled baseline so that, with a batch's distinct labels, it
  scores about ``active`` labels per example, as jslide does."""
  distinct = [np.unique(b.labels[b.labels >= 0]).size
              for _, b in zip(range(20), D.batches(data, batch_size, max_features=64,
                                                   max_labels=8, seed=0, epoch=0))]
  return max(1, active - int(round(np.mean(distinct))))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", choices=sorted(D.bundled.NAMES), default="wordnet")
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--active", type=int, default=1024, help="labels scored per example")
  p.add_argument("--skip-dense", action="store_true")
  p.add_argument("--json")
  args = p.parse_args()

  train_all = D.bundled.load(args.dataset, "train").normalized()
  test_data = D.bundled.load(args.dataset, "test").normalized()
  train_data, valid_data = train_all.split(0.1, seed=0)
  print(f"{args.dataset}:", train_all.stats())
  model = ModelConfig(train_data.num_features, train_data.num_labels, active=args.active)
  base = RunConfig(epochs=args.epochs)
  sampled = shared_samples(train_data, args.active, base.batch_size)
  configs = {"jslide": base, f"sampled ({sampled} shared)": RunConfig(epochs=args.epochs,
                                                                       sampled=sampled)}
  if not args.skip_dense:
    configs["dense JAX"] = RunConfig(epochs=args.epochs, dense=True)
  runs = {}
  for name, cfg in configs.items():
    print(f"\n== {name} ==")
    runs[name] = train(train_data, test_data, model, cfg, valid_data=valid_data,
                       progress=False)

  print(f"\n{args.dataset}, test set at each run's selected epoch (exact ranking over all "
        f"{train_all.num_labels:,} labels):")
  print(f"{'':22} {'epoch':>5} {'P@1':>7} {'P@3':>7} {'P@5':>7} {'nDCG@5':>7} {'s/epoch':>8}")
  for name, rec in runs.items():
    sel, t = rec["selected"], rec["test"]
    sec = sum(e["seconds"] for e in rec["evals"]) / len(rec["evals"])
    print(f"{name:22} {sel['epoch']:>5} {t['P@1']:7.4f} {t['P@3']:7.4f} {t['P@5']:7.4f} "
          f"{t['nDCG@5']:7.4f} {sec:8.1f}")
  t = runs["jslide"]["test"]
  print(f"jslide through its inference index: P@1 {t['lsh_P@1']:.4f}, "
        f"{t['labels_scored']:.0f} labels scored per example "
        f"({t['labels_scored'] / train_all.num_labels:.1%}), recall of the exact top 1 "
        f"{t['recall@1']:.3f} (training index: {t.get('training_recall@1', t['recall@1']):.3f})")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)) or ".", exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(runs, f, indent=2)


if __name__ == "__main__":
  main()
