"""A scaling model of data-parallel training on 1-64 hosts: the predicted step time and
throughput of jslide and of the dense way, at 10 and 100 Gbit/s, from what is measured here
on one host and the bytes each host sends (jslide.parallel.exchange_bytes, checked against
the compiled programs by benchmarks/exchange.py).

Weak scaling: every host keeps its batch (XC at SLIDE's Amazon-670K shape: 128 examples;
the default language model: 16 windows of 64 tokens), so p hosts train on p times the
examples per step. A host's step on p hosts is modelled as

- jslide: its one-host step, measured, plus what applying the gathered row-sparse gradients
  of p hosts costs over applying its own (measured: sparse Adam on the p-fold factors), plus
  the bytes it sends at the link's rate;
- dense: its one-host step (every gradient dense, ``optax.adam``), measured, plus its ring
  all-reduce of every gradient at the link's rate (the update does not grow with p).

Not modelled: latency per collective, overlap of sending with computing, stragglers, the
index rebuilds (every few hundred steps, the same on every host). Each host here is this
machine (2 cores); a bigger host shortens the compute terms alike.

    python benchmarks/scaling.py --json results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from _report import write_json
from lm_step import median_step_ms
import jslide
from jslide import parallel
from jslide.rowsparse import RowSparseGrad, is_row_sparse
from jslide.train.step import TABLES_FIRST, _skip_nonfinite

HOSTS = (1, 2, 4, 8, 16, 32, 64)
GBITS = (10, 100)


def _median_ms(fn, args_fn, repeats: int) -> float:
  """Median ms of ``fn(*args_fn())`` over ``repeats`` calls after 2 that compile and warm
  (``args_fn`` gives fresh arguments: the calls donate them)."""
  times = []
  for i in range(repeats + 2):
    args = args_fn()
    jax.block_until_ready(args)
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times[2:])


def xc_case():
  """SLIDE's Amazon-670K network, as benchmarks/amazon_shape.py trains it: 135,909 features
  (75 an example) -> 128 -> 670,091 labels, DWTA K=6 L=50, 0.5% active (3,351)."""
  from jslide.xc import objectives
  n_in, n_out, nnz, batch = 135_909, 670_091, 75, 128
  rng = np.random.default_rng(0)
  labels = np.minimum(rng.zipf(1.3, size=(batch, 5)) - 1, n_out - 1).astype(np.int32)
  labels = np.where(np.arange(5)[None] < rng.integers(1, 6, size=batch)[:, None], labels, -1)
  data = {"feat_ids": rng.integers(0, n_in, size=(batch, nnz)).astype(np.int32),
          "feat_vals": (rng.random((batch, nnz)) / np.sqrt(nnz)).astype(np.float32),
          "labels": labels, "mask": np.ones(batch, bool)}

  def model():
    return jslide.nn.SparseMLP(n_in, n_out, hidden=(128,), active=3_351, hash_family="dwta",
                               num_hashes=6, num_hash_tables=50, bin_size=8, rngs=nnx.Rngs(0))

  return {"case": "XC, Amazon-670K shape", "unit": "examples", "per_host": batch,
          "model": model, "batch": data, "loss": objectives.active_set_loss(),
          "dense_loss": objectives.full_softmax_loss}


def lm_case():
  """The default language model (``python -m jslide.lm train``'s: vocabulary 50,000, d=256,
  4 layers, sparse FFNs, lsh head) against the same model dense (dense FFNs, the full
  softmax); 16 windows of 64 tokens."""
  import dataclasses
  from jslide.lm.config import ModelConfig
  from jslide.lm.heads import full_softmax_loss, lsh_softmax_loss
  cfg = ModelConfig()
  win = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(16, cfg.context + 1))
  win = win.astype(np.int32)
  dense_cfg = dataclasses.replace(cfg, head="full", ffn="dense")
  return {"case": "LM, default model", "unit": "tokens", "per_host": 16 * cfg.context,
          "model": lambda: cfg.build(cfg.vocab_size, 0),
          "dense_model": lambda: dense_cfg.build(cfg.vocab_size, 0),
          "batch": {"tokens": win[:, :-1], "targets": win[:, 1:]}, "loss": lsh_softmax_loss,
          "dense_loss": full_softmax_loss}


def _tx():
  # The optimizer make_train_step builds (its defaults at this learning rate).
  return _skip_nonfinite(jslide.optim.partition(
      jslide.optim.sparse_adam(1e-3, catch_up=True), optax.adam(1e-3), TABLES_FIRST))


def _gathered(grads, hosts: int):
  """One host's gradients as the step holds them after gathering ``hosts`` hosts' (the
  factors stacked ``hosts`` times; dense gradients as they are, after their all-reduce)."""
  def tile(g):
    if not is_row_sparse(g):
      return g
    rep = lambda x: jnp.concatenate([x] * hosts, axis=0)  # noqa: E731
    return RowSparseGrad(rep(g.ids), rep(g.coef), rep(g.vecs), g.num_rows, unit=g.unit,
                         window=g.window)
  return jax.tree.map(tile, grads, is_leaf=is_row_sparse)


def measure(case, repeats: int) -> dict:
  batch = jax.tree.map(jnp.asarray, case["batch"])
  out = {"case": case["case"], "unit": case["unit"], "per_host": case["per_host"]}

  # The one-host steps (the trainers' steps, state donated).
  _, state, step = jslide.train.make_train_step(
      case["model"](), case["loss"], table_tx=jslide.optim.sparse_adam(1e-3, catch_up=True),
      dense_tx=optax.adam(1e-3), schedule=jslide.lsh.RebuildSchedule(50, 1.3, 2000))
  out["jslide_step_ms"] = median_step_ms(step, state, batch, repeats)
  del state, step
  _, state, step = jslide.train.make_dense_train_step(
      case.get("dense_model", case["model"])(), case["dense_loss"], tx=optax.adam(1e-3))
  out["dense_step_ms"] = median_step_ms(step, state, batch, repeats)
  del state, step

  # One host's gradients, and the bytes each host sends on p hosts.
  graphdef, tables, params, rest = jslide.train.split_model(case["model"]())
  key = jax.random.key(0)

  def gradients(trainable):
    def value(trainable):
      m = nnx.merge(graphdef, *trainable, rest)
      values, mask = case["loss"](m, batch, key)
      return jslide.train.masked_mean(values, mask)
    return jslide.value_and_grad(value, tables=TABLES_FIRST)(trainable)[1]

  def count(trainable):
    # Counted while traced, where a layer's kernel and bias gradients share their ids and
    # coefficients (sent once), as in the step.
    out["sent"] = {p: parallel.exchange_bytes(gradients(trainable), p) for p in HOSTS}
    return 0.0

  trainable = (tables, params)
  jax.eval_shape(count, trainable)
  grads = jax.jit(gradients)(trainable)

  # Applying p hosts' gathered gradients, against one host's.
  tx = _tx()
  apply = jax.jit(lambda g, s, t: tx.apply(g, s, t), donate_argnums=(1, 2))
  out["apply_ms"] = {}
  for p in HOSTS:
    g = _gathered(grads, p)
    out["apply_ms"][p] = _median_ms(
        apply, lambda: (g, tx.init(trainable), jax.tree.map(jnp.copy, trainable)),
        max(3, repeats // 2))
  return out


def predictions(m: dict) -> list[dict]:
  rows = []
  for p in HOSTS:
    sent = m["sent"][p]
    row = {"case": m["case"], "hosts": p, "jslide_MB": sent["row_sparse"] / 1e6,
           "dense_MB": sent["dense"] / 1e6,
           "jslide_compute_ms": m["jslide_step_ms"] + m["apply_ms"][p] - m["apply_ms"][1],
           "dense_compute_ms": m["dense_step_ms"]}
    for gbit in GBITS:
      for way, key in (("jslide", "row_sparse"), ("dense", "dense")):
        ms = row[f"{way}_compute_ms"] + (1e3 * sent[key] * 8 / (gbit * 1e9) if p > 1 else 0)
        row[f"{way}_ms_{gbit}"] = ms
        row[f"{way}_per_s_{gbit}"] = p * m["per_host"] / (ms / 1e3)
    rows.append(row)
  return rows


def table(m: dict, rows: list[dict]) -> str:
  unit = m["unit"]
  lines = [f"**{m['case']}**: one host's step {m['jslide_step_ms']:.1f} ms (jslide) and "
           f"{m['dense_step_ms']:.1f} ms (dense), {m['per_host']:,} {unit} a host.", "",
           f"| hosts | MB sent, jslide / dense | compute ms, jslide / dense | step ms at 10 "
           f"Gbit/s, jslide / dense | {unit}/s at 10 Gbit/s, jslide / dense | step ms at 100 "
           f"Gbit/s, jslide / dense | {unit}/s at 100 Gbit/s, jslide / dense |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
        f"| {r['hosts']} | {r['jslide_MB']:,.1f} / {r['dense_MB']:,.1f} | "
        f"{r['jslide_compute_ms']:,.0f} / {r['dense_compute_ms']:,.0f} | "
        f"{r['jslide_ms_10']:,.0f} / {r['dense_ms_10']:,.0f} | "
        f"{r['jslide_per_s_10']:,.0f} / {r['dense_per_s_10']:,.0f} | "
        f"{r['jslide_ms_100']:,.0f} / {r['dense_ms_100']:,.0f} | "
        f"{r['jslide_per_s_100']:,.0f} / {r['dense_per_s_100']:,.0f} |")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--table-of", metavar="JSON",
                 help="print the table of a record this command wrote (--json), and exit")
  args = p.parse_args()
  if args.table_of:
    with open(args.table_of) as f:
      print("\n\n".join(table(e["measured"], e["rows"]) for e in json.load(f)))
    return
  out = []
  for case in (xc_case(), lm_case()):
    m = measure(case, args.repeats)
    rows = predictions(m)
    print(table(m, rows) + "\n", flush=True)
    out.append({"measured": {k: v for k, v in m.items() if k != "sent"}, "rows": rows})
  write_json(args.json, out)


if __name__ == "__main__":
  main()
