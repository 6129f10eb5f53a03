"""Run by tests/test_row_sharded.py in a process of its own, with 4 forced host devices: the
row-sharded functions (jslide.row_sharded) inside shard_map against the unsharded ones.
Prints one JSON object of measured differences on its last line."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jslide  # noqa: E402
from jslide import row_sharded  # noqa: E402

DEVICES, AXIS = 4, "rows"
P = jax.sharding.PartitionSpec


def _diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _collectives(hlo: str) -> list[tuple[str, int]]:
  """(op, result bytes) of every all-gather / all-reduce / all-to-all in an HLO text (but
  those whose every group is one device: an axis of size 1)."""
  out = []
  for line in hlo.splitlines():
    m = re.search(r"=\s*(.*?)\s(all-gather|all-reduce|all-to-all|collective-permute)"
                  r"(?:-start)?\(", line)
    if m and not re.search(r"replica_groups=\{(\{\d+\},?)+\}", line):  # not among 1s
      for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", re.sub(r"/\*.*?\*/", "", m.group(1))):
        size = int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
        out.append((m.group(2), size * (2 if dtype in ("bf16", "f16") else 4)))
  return out


def output_layer(mesh, rng) -> dict:
  """Scores of each example's active set (sparse_linear), the softmax cross-entropy over it,
  and the gradients of the table, bias and inputs: the table split by rows over 4 devices
  (each device scoring the active ids in its rows) against one device."""
  n, d, b, a, l = 64, 8, 6, 24, 3
  x = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(n, d)) * 0.5, jnp.float32)
  bias = jnp.asarray(rng.normal(size=(n,)) * 0.1, jnp.float32)
  labels = rng.integers(0, n, size=(b, l))
  labels[0, 1:] = -1  # one label
  labels[1, 2] = labels[1, 0]  # a repeated label
  ids = rng.integers(-1, n, size=(b, a))
  ids[:, :l] = labels  # the labels in the active set (SLIDE forces them in)
  ids[2, 5] = ids[2, 6]  # a duplicate active id
  ids[3, :l] = -1  # an example with no label in its active set: loss 0
  ids, labels = jnp.asarray(ids, jnp.int32), jnp.asarray(labels, jnp.int32)

  def one_device(x, w, bias):
    scores = jslide.sparse_linear(x, w, bias, ids)
    return jnp.mean(jslide.losses.active_softmax_cross_entropy(scores, ids, labels))

  def shard(x, w_shard, b_shard, ids, labels):
    # differentiated on each device, as a training step inside shard_map does: the input's
    # gradient summed over the devices (shared_input), the table's from its own rows
    def loss(x, w_shard, b_shard):
      x = row_sharded.shared_input(x, AXIS)
      local = row_sharded.local_ids(ids, w_shard.shape[0], AXIS)
      scores = jslide.sparse_linear(x, w_shard, b_shard, local)
      mine = jnp.where(local >= 0, ids, -1)
      return jnp.mean(row_sharded.active_softmax_cross_entropy(scores, mine, labels, AXIS))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w_shard, b_shard)

  sharded = jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(), P()),
                          out_specs=(P(), (P(), P(AXIS), P(AXIS))), check_vma=False)
  row_spec = jax.sharding.NamedSharding(mesh, P(AXIS))
  w_s, b_s = jax.device_put(w, row_spec), jax.device_put(bias, row_spec)
  fn = jax.jit(lambda x, w, b: sharded(x, w, b, ids, labels))
  loss, (gx, gw, gb) = fn(x, w_s, b_s)
  ref_loss, (rx, rw, rb) = jax.value_and_grad(one_device, argnums=(0, 1, 2))(x, w, bias)
  table_bytes = w.size * 4
  coll = _collectives(fn.lower(x, w_s, b_s).compile().as_text())
  return {"loss_diff": _diff(loss, ref_loss), "loss": float(ref_loss),
          "grad_w_diff": _diff(gw, rw), "grad_b_diff": _diff(gb, rb), "grad_x_diff": _diff(gx, rx),
          "grad_w_scale": float(jnp.max(jnp.abs(rw))),
          "grad_w_shard_rows": [int(s.data.shape[0]) for s in gw.addressable_shards],
          "shard_bytes": int(w_s.addressable_shards[0].data.nbytes), "table_bytes": table_bytes,
          "largest_collective": max((s for _, s in coll), default=0),
          "collectives": sorted({op for op, _ in coll})}


def embedding(mesh, rng) -> dict:
  n, d, b, f = 40, 6, 5, 7
  ids = rng.integers(-1, n, size=(b, f))
  ids[0] = -1  # an empty bag
  ids[1, :2] = 3  # a repeated feature
  ids = jnp.asarray(ids, jnp.int32)
  vals = jnp.asarray(rng.normal(size=(b, f)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)

  def loss_one(w):
    h = jslide.embedding_bag(ids, vals, w)
    return jnp.sum(jnp.tanh(h) * jnp.arange(d)), h

  def shard(ids, vals, w_shard):  # differentiated on each device, as a training step is
    def loss(w_shard):
      h = row_sharded.embedding_bag(ids, vals, w_shard, AXIS)
      return jnp.sum(jnp.tanh(h) * jnp.arange(d)), h
    return jax.value_and_grad(loss, has_aux=True)(w_shard)

  sharded = jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(), P(AXIS)),
                          out_specs=((P(), P()), P(AXIS)), check_vma=False)
  w_s = jax.device_put(w, jax.sharding.NamedSharding(mesh, P(AXIS)))
  fn = jax.jit(lambda w: sharded(ids, vals, w))
  (_, h), g = fn(w_s)
  (_, rh), rg = jax.value_and_grad(loss_one, has_aux=True)(w)
  coll = _collectives(fn.lower(w_s).compile().as_text())
  return {"bag_diff": _diff(h, rh), "bag_grad_diff": _diff(g, rg),
          "bag_largest_collective": max((s for _, s in coll), default=0),
          "bag_output_bytes": b * d * 4, "bag_table_bytes": n * d * 4}


def ranking(mesh, rng) -> dict:
  n, d, b, k = 64, 8, 5, 7
  x = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)

  def shard(x, w_shard):
    rows = w_shard.shape[0]
    ids = row_sharded.shard_start(rows, AXIS) + jnp.arange(rows, dtype=jnp.int32)
    ids = jnp.broadcast_to(ids, (x.shape[0], rows))
    ids = jnp.where(ids % 5 == 0, -1, ids)  # some rows not retrieved
    return row_sharded.top_k(x @ w_shard.T, ids, k, AXIS)

  top, ids = jax.jit(jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(AXIS)),
                                   out_specs=(P(), P()), check_vma=False))(
      x, jax.device_put(w, jax.sharding.NamedSharding(mesh, P(AXIS))))
  full = jnp.where(jnp.arange(n) % 5 == 0, -jnp.inf, x @ w.T)
  ref_top, ref_ids = jax.lax.top_k(full, k)
  return {"topk_diff": _diff(top, ref_top),
          "topk_ids_equal": bool(np.array_equal(np.asarray(ids), np.asarray(ref_ids)))}


def training(rng) -> dict:
  """Three training steps of a SparseMLP whose active set covers every label: its output
  layer split by rows over 4 devices (and over 2 rows x 2 data devices) against one device,
  from the same weights: losses and updated tables."""
  from flax import nnx
  from jslide.xc import objectives

  n, f, b = 64, 50, 8
  def model():
    return jslide.nn.SparseMLP(f, n, hidden=(16,), active=n, rngs=nnx.Rngs(0))
  labels = rng.integers(-1, n, (b, 3))
  labels[:, 0] = rng.integers(0, n, b)
  labels[1, 1] = labels[1, 0]  # a repeated label
  batch = {"feat_ids": jnp.asarray(rng.integers(-1, f, (b, 6)), jnp.int32),
           "feat_vals": jnp.asarray(rng.random((b, 6)), jnp.float32),
           "labels": jnp.asarray(labels, jnp.int32), "mask": jnp.asarray(np.arange(b) < b - 1)}
  loss = objectives.active_set_loss()
  _, state, step = jslide.train.make_train_step(model(), loss)
  keys = [jax.random.fold_in(jax.random.PRNGKey(1), i) for i in range(3)]
  ref_losses = []
  for key in keys:
    state, m = step(state, batch, key)
    ref_losses.append(float(m["loss"]))
  out = {"train_loss": ref_losses}
  for name, shape in (("rows", (1, DEVICES)), ("rows_data", (2, DEVICES // 2))):
    mesh = jax.make_mesh(shape, ("data", AXIS))
    split = row_sharded.split_rows(model(), shape[1], AXIS)
    _, sharded, sharded_step = jslide.train.make_train_step(split, loss, mesh=mesh,
                                                            row_axis=AXIS)
    losses = []
    for key in keys:
      sharded, m = sharded_step(sharded, batch, key)
      losses.append(float(m["loss"]))
    w = sharded.tables["output"]["kernel"].get_value()
    out[f"{name}_loss_diff"] = max(abs(a - c) for a, c in zip(losses, ref_losses))
    out[f"{name}_output_diff"] = _diff(
        w.reshape(n, -1), state.tables["output"]["kernel"].get_value())
    out[f"{name}_bias_diff"] = _diff(sharded.tables["output"]["bias"].get_value().reshape(n),
                                     state.tables["output"]["bias"].get_value())
    replicas = sharded.tables["input"]["kernel"].get_value()
    out[f"{name}_input_diff"] = _diff(replicas, state.tables["input"]["kernel"].get_value()[None])
    out[f"{name}_shard_bytes"] = sorted({int(s.data.nbytes) for s in w.addressable_shards})
    out[f"{name}_table_bytes"] = n * 16 * 4
    hlo = sharded_step.lower(sharded, batch, keys[0]).compile().as_text()
    coll = _collectives(hlo)
    out[f"{name}_largest_gather"] = max((s for op, s in coll if op == "all-gather"), default=0)
    out[f"{name}_largest_collective"] = max((s for _, s in coll), default=0)
  return out


def lm_training(rng) -> dict:
  """Three training steps of a small SparseTransformerLM whose lsh head retrieves every word
  (so its loss is the exact softmax), the token embedding and the head split by rows over 4
  devices, against one device from the same weights; and the exact evaluation loss."""
  from flax import nnx
  from jslide.lm.heads import lsh_softmax_loss

  v, t = 32, 8
  def model():
    return jslide.nn.SparseTransformerLM(v, context=t, features=16, heads=2, layers=1,
                                         hidden=32, ffn="dense", head_retrieved=v,
                                         head_sampled=8, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(rng.integers(0, v, (4, t + 1)), jnp.int32)
  batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}
  graphdef, state, step = jslide.train.make_train_step(model(), lsh_softmax_loss, schedule=None)
  keys = [jax.random.fold_in(jax.random.PRNGKey(2), i) for i in range(3)]
  ref = []
  for key in keys:
    state, m = step(state, batch, key)
    ref.append(float(m["loss"]))
  ref_nll = state.model(graphdef).token_nll(batch["tokens"], batch["targets"])
  mesh = jax.make_mesh((1, DEVICES), ("data", AXIS))
  split_graphdef, split, split_step = jslide.train.make_train_step(
      row_sharded.split_rows(model(), DEVICES, AXIS), lsh_softmax_loss, schedule=None,
      mesh=mesh, row_axis=AXIS)
  losses = []
  for key in keys:
    split, m = split_step(split, batch, key)
    losses.append(float(m["loss"]))
  nll = row_sharded.each_shard(
      lambda s, x, y: s.model(split_graphdef).token_nll(x, y), mesh, AXIS)(
          split, batch["tokens"], batch["targets"])
  head = split.tables["head"]["kernel"].get_value()
  embed = split.tables["embed"].get_value()
  return {"lm_loss": ref, "lm_loss_diff": max(abs(a - c) for a, c in zip(losses, ref)),
          "lm_head_diff": _diff(head.reshape(v, -1), state.tables["head"]["kernel"].get_value()),
          "lm_embed_diff": _diff(embed.reshape(v, -1), state.tables["embed"].get_value()),
          # The keys' bias has a zero gradient (softmax over positions ignores a shift of
          # every score), so Adam scales rounding noise into steps of the learning rate:
          # left out here.
          "lm_block_diff": max(_diff(np.asarray(a)[0], b) for (path, a), b in zip(
              jax.tree_util.tree_leaves_with_path(split.params), jax.tree.leaves(state.params))
              if "qkv" not in jax.tree_util.keystr(path) or "kernel" in jax.tree_util.keystr(path)),
          "lm_nll_diff": _diff(nll, ref_nll),
          "lm_shard_rows": sorted({int(s.data.shape[1]) for s in head.addressable_shards})}


def plain_jit(mesh, rng) -> dict:
  """``jslide.sparse_linear`` under plain ``jit`` with its table split by rows, no
  shard_map: XLA cannot split a custom call by the rows its ids point to (a batch-
  partitionable FFI target splits only operands that all share the batch dimension, and
  the table does not), so it gathers the table first. What shard_map avoids."""
  n, d, b, a = 64, 8, 4, 5
  w = jax.device_put(jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
                     jax.sharding.NamedSharding(mesh, P(AXIS)))
  x = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, n, size=(b, a)), jnp.int32)
  fn = jax.jit(lambda x, w, ids: jslide.sparse_linear(x, w, None, ids))
  coll = _collectives(fn.lower(x, w, ids).compile().as_text())
  return {"plain_jit_largest_gather": max((s for op, s in coll if op == "all-gather"), default=0),
          "plain_jit_table_bytes": n * d * 4}


def main() -> None:
  mesh = jax.make_mesh((DEVICES,), (AXIS,))
  rng = np.random.default_rng(0)
  out = {**output_layer(mesh, rng), **embedding(mesh, rng), **ranking(mesh, rng),
         **training(rng), **lm_training(rng), **plain_jit(mesh, rng)}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
