"""Trains a large softmax output layer with jslide and, in the same run, densely with JAX.

The task (generated, deterministic): N classes, each with a hidden prototype in R^d; an
input is its class prototype plus noise. The sparse model scores, per example, its label
plus A-1 negatives sampled uniformly (there is no LSH index in this demo) with
``jslide.sparse_linear``, gets row-sparse gradients with ``jslide.value_and_grad`` and
updates only the touched rows with lazy Adam, in place. The dense model scores all N
classes and uses ``optax.adam``. Both are evaluated by exact top-1 accuracy over all N
classes on held-out inputs.

    python examples/train_output_layer.py                 # N = 200,000
    python examples/train_output_layer.py --classes 1000000 --steps 300
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jslide


def make_data(key, n, d, noise):
  proto = jax.random.normal(key, (n, d)) / np.sqrt(d)

  def sample(k, b):
    k1, k2 = jax.random.split(k)
    labels = jax.random.randint(k1, (b,), 0, n)
    x = proto[labels] + noise * jax.random.normal(k2, (b, d)) / np.sqrt(d)
    return x * 4.0, labels[:, None].astype(jnp.int32)

  return jax.jit(sample, static_argnums=1)


def top1(w, b, x, labels):
  return jnp.mean(jnp.argmax(x @ w.T + b, axis=-1) == labels[:, 0])


def train(kind, args, sample, eval_x, eval_y):
  n, d, a = args.classes, args.dim, args.active
  params = {"w": jslide.initializers.normal_table(jax.random.PRNGKey(1), n, d, 0.01),
            "b": jnp.zeros((n,), jnp.float32)}
  if kind == "sparse":
    tables = jslide.tables.min_rows(n)
    tx = jslide.optim.sparse_adam(args.lr)

    def step(p, s, k):
      x, labels = sample(k, args.batch)
      neg = jax.random.randint(jax.random.fold_in(k, 1), (args.batch, a - 1), 0, n)
      ids = jnp.concatenate([labels, neg], axis=1)

      def loss_fn(p):
        logits = jslide.sparse_linear(x, p["w"], p["b"], ids)
        return jslide.losses.active_softmax_cross_entropy(logits, ids, labels).mean()

      loss, g = jslide.value_and_grad(loss_fn, tables=tables)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss
  else:
    tx = optax.adam(args.lr)

    def step(p, s, k):
      x, labels = sample(k, args.batch)
      loss_fn = lambda p: jslide.losses.softmax_cross_entropy(x @ p["w"].T + p["b"], labels).mean()
      loss, g = jax.value_and_grad(loss_fn)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss

  state = tx.init(params)
  step = jax.jit(step, donate_argnums=(0, 1))
  steps = args.steps if kind == "sparse" else args.dense_steps
  key, losses, times = jax.random.PRNGKey(2), [], []
  for i in range(steps):
    t0 = time.perf_counter()
    params, state, loss = step(params, state, jax.random.fold_in(key, i))
    losses.append(float(loss))
    if i > 0:
      times.append(time.perf_counter() - t0)
    if i % max(1, steps // 8) == 0 or i == steps - 1:
      print(f"  [{kind}] step {i:5d}  loss {losses[-1]:.4f}", flush=True)
  acc = float(jax.jit(top1)(params["w"], params["b"], eval_x, eval_y))
  return {"ms": 1e3 * float(np.median(times)), "acc": acc, "loss": losses}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--classes", type=int, default=200_000)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--active", type=int, default=256, help="active neurons per example")
  p.add_argument("--steps", type=int, default=3000, help="sparse training steps")
  p.add_argument("--dense-steps", type=int, default=20, help="dense steps (for timing)")
  p.add_argument("--lr", type=float, default=0.02)
  p.add_argument("--noise", type=float, default=0.5)
  args = p.parse_args()

  print(f"jslide demo: {args.classes:,} classes, d={args.dim}, batch {args.batch}, "
        f"{args.active} active per example; kernels: {jslide.kernel_isa()}")
  sample = make_data(jax.random.PRNGKey(0), args.classes, args.dim, args.noise)
  eval_x, eval_y = sample(jax.random.PRNGKey(99), 2048)
  sparse = train("sparse", args, sample, eval_x, eval_y)
  dense = train("dense", args, sample, eval_x, eval_y)
  first, last = np.mean(sparse["loss"][:20]), np.mean(sparse["loss"][-20:])
  print(f"\nsparse: loss {first:.3f} -> {last:.3f} over {args.steps} steps; "
        f"held-out top-1 over all {args.classes:,} classes: {sparse['acc']:.3f}")
  print(f"step time: sparse {sparse['ms']:.2f} ms, dense {dense['ms']:.1f} ms "
        f"-> sparse is {dense['ms'] / sparse['ms']:.0f}x faster per step")
  if not last < first:
    raise SystemExit("loss did not go down")


if __name__ == "__main__":
  main()
