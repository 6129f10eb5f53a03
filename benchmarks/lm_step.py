"""Training-step time of a transformer language model's parts: the sparse softmax head against
the full softmax and plain-JAX sampled softmax, and the sparse FFN against the dense one.

All on one random batch (speed does not depend on the text): 16 sequences x 64 positions =
1,024 tokens, d = 256, vocabulary ``--vocab``; every step is one ``jax.jit`` with the state
donated, median of ``--steps`` after 3 warm-up steps.

1. The head alone, on fixed hidden states f32[1024, 256]: ``full`` (logits over the whole
   vocabulary, ``jax.value_and_grad``, ``optax.adam``); ``sampled`` (the target plus 1,024
   shared log-uniform words with the logQ correction, ``jnp.take`` gathers, dense gradients,
   ``optax.adam``: what a JAX user writes); ``lsh`` (jslide's ``SparseSoftmaxHead``: the same
   sample plus 256 words per token from the LSH index, row-sparse gradients, ``sparse_adam``
   with catch-up, index rebuilds on the trainer's schedule).
2. The whole model (2 layers, 4 heads, dense FFN of width 1,024) with each head: the
   trainer's own step (``jslide.lm.trainer.make_step``).
3. The FFN alone, one block of width ``--ffn-hidden`` on fixed inputs f32[1024, 256] (loss: the
   mean squared distance of its outputs to fixed random targets), dense against the two
   sparse kinds with 5% of the neurons active per token: ``sparse`` (``SparseFFN``: neurons
   retrieved one by one from its LSH index, row-sparse gradients, ``sparse_adam`` with
   catch-up, index rebuilds on the trainer's schedule) and ``block`` (``BlockSparseFFN``: 3
   of 64 blocks per token, dense matrix products per block, ``optax.adam``); ``dense`` is
   ``DenseFFN`` with ``optax.adam``.
4. The same FFNs in the whole model (lsh head, 2 layers).

    python benchmarks/lm_step.py --json results/lm_step.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from _report import write_json

TOKENS, D = 1024, 256


def median_step_ms(step, state, batch, steps: int) -> float:
  import jax
  times = []
  for i in range(steps + 3):  # 3 warm-up steps (compilation)
    t = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(i))
    float(metrics["loss"])
    times.append(time.perf_counter() - t)
  return 1000 * statistics.median(times[3:])


def head_only_ms(kind: str, vocab: int, steps: int) -> float:
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx
  import jslide
  from jslide.lm import heads

  class HeadOnly(nnx.Module):
    def __init__(self):
      self.features = D
      self.head = jslide.nn.SparseSoftmaxHead(D, vocab, retrieved=256, sampled=1024,
                                              rngs=nnx.Rngs(0))

    def hidden_states(self, h, *, key=None):  # the trunk is the fixed input
      return h

  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(16, 64, D)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, size=(16, 64)), jnp.int32)
  batch = {"tokens": h, "targets": targets}
  model = HeadOnly()
  if kind == "lsh":
    def loss(m, b, key):
      logits, ids = m.head(b["tokens"].reshape(-1, D), b["targets"].reshape(-1), key=key)
      values = jslide.losses.active_softmax_cross_entropy(logits, ids,
                                                          b["targets"].reshape(-1, 1))
      return values, jnp.ones(values.shape, bool)

    _, state, step = jslide.train.make_train_step(
        model, loss, table_tx=jslide.optim.sparse_adam(1e-3, catch_up=True),
        schedule=jslide.lsh.RebuildSchedule(50, 1.3, 2000))
  elif kind == "full":
    _, state, step = jslide.train.make_dense_train_step(model, heads.full_softmax_loss,
                                                        tx=optax.adam(1e-3))
  else:
    loss = lambda m, b, key: heads.sampled_softmax_loss(m, b, key, num_sampled=1024,
                                                        proposal="log-uniform")
    _, state, step = jslide.train.make_dense_train_step(model, loss, tx=optax.adam(1e-3))
  return median_step_ms(step, state, batch, steps)


def ffn_only_ms(kind: str, hidden: int, steps: int) -> float:
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx
  import jslide

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(TOKENS, D)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(TOKENS, D)), jnp.float32)
  batch = {"tokens": x, "targets": target}
  active = max(1, hidden // 20)
  rngs = nnx.Rngs(0)
  model = {"dense": lambda: jslide.nn.DenseFFN(D, hidden, rngs=rngs),
           "sparse": lambda: jslide.nn.SparseFFN(D, hidden, active=active, rngs=rngs),
           "block": lambda: jslide.nn.BlockSparseFFN(D, hidden, active=active, rngs=rngs)}[kind]()

  def loss(m, b, key):
    values = jnp.mean((m(b["tokens"], key=key) - b["targets"]) ** 2, axis=-1)
    return values, jnp.ones(values.shape, bool)

  if kind == "sparse":
    _, state, step = jslide.train.make_train_step(
        model, loss, table_tx=jslide.optim.sparse_adam(1e-3, catch_up=True),
        dense_tx=optax.adam(1e-3), schedule=jslide.lsh.RebuildSchedule(50, 1.3, 2000))
  else:
    _, state, step = jslide.train.make_dense_train_step(model, loss, tx=optax.adam(1e-3))
  return median_step_ms(step, state, batch, steps)


def model_ms(cfg, vocab: int, steps: int) -> float:
  import numpy as np
  from jslide.lm import RunConfig
  from jslide.lm.trainer import batch_of, make_step
  run = RunConfig()
  _, state, step = make_step(cfg.build(vocab, 0), cfg, run)
  win = np.random.default_rng(0).integers(0, vocab, size=(run.batch_size, cfg.context + 1))
  return median_step_ms(step, state, batch_of(win.astype(np.int32)), steps)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocab", type=int, default=50_000)
  p.add_argument("--ffn-hidden", type=int, default=16_384)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--json")
  args = p.parse_args(argv)
  from jslide.lm import ModelConfig
  rows = []

  def add(part, kind, ms, **extra):
    rows.append({"part": part, "kind": kind, "vocab": args.vocab, "step_ms": round(ms, 1),
                 **extra})
    print(rows[-1], flush=True)

  for kind in ("full", "sampled", "lsh"):
    add("head", kind, head_only_ms(kind, args.vocab, args.steps))
  base = ModelConfig(vocab_size=args.vocab, hidden=1024, ffn="dense")
  for kind in ("full", "sampled", "lsh"):
    add("model", kind, model_ms(dataclasses.replace(base, head=kind), args.vocab, args.steps),
        hidden=1024)
  active = max(1, args.ffn_hidden // 20)
  ffns = ("dense", "sparse", "block")
  for ffn in ffns:
    add("ffn alone", ffn, ffn_only_ms(ffn, args.ffn_hidden, args.steps), hidden=args.ffn_hidden)
  for ffn in ffns:
    cfg = dataclasses.replace(base, hidden=args.ffn_hidden, ffn=ffn, ffn_active=active)
    add("ffn", ffn, model_ms(cfg, args.vocab, args.steps), hidden=args.ffn_hidden)

  def ms(part, kind):
    return next(r["step_ms"] for r in rows if r["part"] == part and r["kind"] == kind)

  print(f"\nvocabulary {args.vocab:,}, d={D}, {TOKENS:,} tokens a step\n")
  print("| head | head alone, ms/step | full / this | whole model, ms/step | full / this |")
  print("|---|---:|---:|---:|---:|")
  for kind in ("full", "sampled", "lsh"):
    print(f"| {kind} | {ms('head', kind):.1f} | {ms('head', 'full') / ms('head', kind):.1f}x | "
          f"{ms('model', kind):.1f} | {ms('model', 'full') / ms('model', kind):.1f}x |")
  print(f"\n| FFN width {args.ffn_hidden:,} | FFN alone, ms/step | dense / this | "
        f"whole model (lsh head), ms/step | dense / this |\n|---|---:|---:|---:|---:|")
  from flax import nnx
  import jslide
  block = jslide.nn.BlockSparseFFN(D, args.ffn_hidden, active=active, rngs=nnx.Rngs(0))
  names = {"dense": "dense", "sparse": f"sparse ({active} retrieved neurons per token)",
           "block": f"block ({block.blocks_per_token} of {block.num_blocks} blocks per token)"}
  for ffn in ffns:
    print(f"| {names[ffn]} | {ms('ffn alone', ffn):.1f} | "
          f"{ms('ffn alone', 'dense') / ms('ffn alone', ffn):.2f}x | {ms('ffn', ffn):.1f} | "
          f"{ms('ffn', 'dense') / ms('ffn', ffn):.2f}x |")
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
