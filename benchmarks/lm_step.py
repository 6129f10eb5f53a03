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
3. The FFN: the whole model (lsh head) with FFNs of width ``--ffn-hidden``, dense against
   sparse with 5% of the neurons active per token.

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
  from jslide.nn.training import dense_gradient_step

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
  batch = {"tokens": h, "targets": targets, "labels": targets.reshape(-1, 1),
           "mask": jnp.ones(TOKENS, bool)}
  model = HeadOnly()
  if kind == "lsh":
    forward = lambda m, b, key: m.head(b["tokens"].reshape(-1, D), b["targets"].reshape(-1),
                                       key=key)
    _, state, step = jslide.nn.make_train_step(
        model, table_tx=jslide.optim.sparse_adam(1e-3, catch_up=True), forward=forward,
        schedule=jslide.lsh.RebuildSchedule(50, 1.3, 2000))
  elif kind == "full":
    _, state, step = dense_gradient_step(model, heads.full_softmax_loss, optax.adam(1e-3))
  else:
    loss = lambda m, b, key: heads.sampled_softmax_loss(m, b, key, num_sampled=1024,
                                                        proposal="log-uniform")
    _, state, step = dense_gradient_step(model, loss, optax.adam(1e-3))
  return median_step_ms(step, state, batch, steps)


def model_ms(cfg, vocab: int, steps: int) -> float:
  import numpy as np
  from jslide.lm.trainer import RunConfig, batch_of, make_step
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
  from jslide.lm.trainer import LMConfig
  rows = []

  def add(part, kind, ms, **extra):
    rows.append({"part": part, "kind": kind, "vocab": args.vocab, "step_ms": round(ms, 1),
                 **extra})
    print(rows[-1], flush=True)

  for kind in ("full", "sampled", "lsh"):
    add("head", kind, head_only_ms(kind, args.vocab, args.steps))
  base = LMConfig(vocab_size=args.vocab, hidden=1024, ffn="dense")
  for kind in ("full", "sampled", "lsh"):
    add("model", kind, model_ms(dataclasses.replace(base, head=kind), args.vocab, args.steps),
        hidden=1024)
  active = max(1, args.ffn_hidden // 20)
  for ffn in ("dense", "sparse"):
    cfg = dataclasses.replace(base, hidden=args.ffn_hidden, ffn=ffn, ffn_active=active)
    add("ffn", ffn, model_ms(cfg, args.vocab, args.steps), hidden=args.ffn_hidden,
        active=active if ffn == "sparse" else args.ffn_hidden)

  def ms(part, kind):
    return next(r["step_ms"] for r in rows if r["part"] == part and r["kind"] == kind)

  print(f"\nvocabulary {args.vocab:,}, d={D}, {TOKENS:,} tokens a step\n")
  print("| head | head alone, ms/step | full / this | whole model, ms/step | full / this |")
  print("|---|---:|---:|---:|---:|")
  for kind in ("full", "sampled", "lsh"):
    print(f"| {kind} | {ms('head', kind):.1f} | {ms('head', 'full') / ms('head', kind):.1f}x | "
          f"{ms('model', kind):.1f} | {ms('model', 'full') / ms('model', kind):.1f}x |")
  print(f"\n| FFN width {args.ffn_hidden:,} (lsh head) | ms/step |\n|---|---:|")
  print(f"| dense | {ms('ffn', 'dense'):.1f} |")
  print(f"| sparse, {active} active per token | {ms('ffn', 'sparse'):.1f} |")
  print(f"dense / sparse: {ms('ffn', 'dense') / ms('ffn', 'sparse'):.2f}x")
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
