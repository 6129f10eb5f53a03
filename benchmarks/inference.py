"""Sparse inference on a trained output layer: exact ranking against the k-means inference
index and neuron lists, same run, same model.

Trains the XC trainer's default model on a bundled dataset (``--epochs``, default 5), then
ranks the test split's hidden vectors (the model's input encoding, computed once, so only
the output layer is timed) by

- exact ranking: ``x @ W.T + b`` and ``lax.top_k`` (what a JAX user writes);
- the k-means inference index (``SparseDense.build_inference_index``, 6 tables) and
  ``SparseDense.topk``: retrieve 5% of the labels, rescore them;
- neuron lists (``jslide.lsh.NeuronLists``, ``--lists`` regions and ``--probes`` probes,
  fitted to the training set's hidden vectors): ``neuron_list_topk`` at 5% of the labels.

For each, at each ``--batch`` size: the median ms per batch over ``--repeats`` calls (after
one warm-up), and over the test split the share of examples whose exact top label it ranks
first (recall of the exact top 1 within what it retrieved, for a ranker that rescores
exactly) and P@1. The trainer reports the same per epoch, with the encoding timed in.

    python benchmarks/inference.py --json results/inference.json
    python benchmarks/inference.py --dataset debian
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jslide
from _report import median_ms, write_json
from jslide import datasets as D
from jslide.xc import trainer
from jslide.xc.config import ModelConfig, RunConfig


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dataset", choices=sorted(D.bundled.NAMES), default="wordnet")
  p.add_argument("--epochs", type=int, default=5)
  p.add_argument("--lists", type=int, default=1024)
  p.add_argument("--probes", type=int, default=4)
  p.add_argument("--batch", type=int, nargs="+", default=[1024, 4096])
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--json")
  args = p.parse_args()

  train, test = (D.bundled.load(args.dataset, s).normalized() for s in ("train", "test"))
  model_cfg = ModelConfig(train.num_features, train.num_labels, inference_lists=args.lists,
                          inference_probes=args.probes)
  cfg = RunConfig(epochs=args.epochs)
  with tempfile.TemporaryDirectory() as ckpt:
    trainer.train(train, None, model_cfg, cfg, checkpoint_dir=ckpt, progress=False,
                  log=lambda *a: None)
    graphdef, state, model_cfg, _ = trainer.load_model(ckpt)
  model_cfg = dataclasses.replace(model_cfg, inference_lists=args.lists,
                                  inference_probes=args.probes)
  layer = state.model(graphdef).output
  w, b = layer.kernel.get_value().astype(jnp.float32), layer.bias.get_value()
  candidates = model_cfg.inference_candidates()
  kmeans = trainer.inference_index(graphdef, state, model_cfg)
  lists = trainer.neuron_lists(graphdef, state, model_cfg, train, max_features=cfg.max_features,
                               max_labels=cfg.max_labels)
  h, labels = trainer.hidden_vectors(graphdef, state, test, max_features=cfg.max_features,
                                     max_labels=cfg.max_labels)
  h = jnp.asarray(h)
  key = jax.random.PRNGKey(0)
  rankers = {
      "exact": jax.jit(lambda x: jax.lax.top_k(x @ w.T + b, 5)),
      "k-means index": jax.jit(lambda x: layer.topk(x, 5, key=key, candidates=candidates,
                                                    index=kmeans)),
      "neuron lists": jax.jit(lambda x: jslide.lsh.neuron_list_topk(lists, x, w, b, 5)),
  }
  exact_top = np.asarray(rankers["exact"](h)[1][:, 0])
  rows = []
  for name, rank in rankers.items():
    top = np.asarray(rank(h)[1][:, 0])
    row = {"ranking": name, "recall@1": float(np.mean(top == exact_top)),
           "P@1": float(np.mean((labels == top[:, None]).any(axis=1))),
           "labels_scored": (train.num_labels if name == "exact" else
                             candidates if name == "k-means index" else lists.candidates)}
    for batch in args.batch:
      row[f"ms@{batch}"] = median_ms(rank, h[:batch], repeats=args.repeats)
    rows.append(row)
  print(f"{args.dataset}: {train.num_labels:,} labels, {args.epochs} epochs; neuron lists "
        f"{lists.num_lists} x {lists.list_size}, {lists.probes} probes")
  head = f"{'ranking':>14} {'labels scored':>14} {'recall@1':>9} {'P@1':>7}"
  print(head + "".join(f" {'ms/' + str(bt):>9} {'speed-up':>9}" for bt in args.batch))
  for r in rows:
    line = (f"{r['ranking']:>14} {r['labels_scored']:>14,} {r['recall@1']:>9.3f} "
            f"{r['P@1']:>7.4f}")
    for bt in args.batch:
      line += f" {r[f'ms@{bt}']:>9.2f} {rows[0][f'ms@{bt}'] / r[f'ms@{bt}']:>8.1f}x"
    print(line)
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
