"""Run by tests/test_parallel.py in a process of its own, with 4 forced host devices (XLA
reads the flag once, at start): data-parallel steps against one-device steps. Prints one JSON
object of measured differences on its last line."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import jslide  # noqa: E402
from jslide import datasets as D  # noqa: E402
from jslide import parallel  # noqa: E402

DEVICES = 4


def _max_diff(a, b) -> float:
  return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.size(x)),
             default=0.0)


def gradient_exchange(mesh) -> dict:
  """Each device's row-sparse and dense gradients, summed by sum_gradients, against the sum
  of their dense forms."""
  P = jax.sharding.PartitionSpec
  rng = np.random.default_rng(0)
  n, d, r, a = 50, 3, 2, 5
  ids = jnp.asarray(rng.integers(-1, n, size=(DEVICES * r, a)), jnp.int32)
  coef = jnp.asarray(rng.normal(size=(DEVICES * r, a)), jnp.float32)
  vecs = jnp.asarray(rng.normal(size=(DEVICES * r, d)), jnp.float32)
  dense = jnp.asarray(rng.normal(size=(DEVICES, 4)), jnp.float32)

  def local(ids, coef, vecs, dense):
    g = {"table": jslide.RowSparseGrad(ids, coef, vecs, n), "bias": dense[0]}
    summed = parallel.sum_gradients(g, "data")
    return summed["table"].todense(), summed["bias"], summed["table"].ids.shape[0]

  args = jax.device_put((ids, coef, vecs, dense), jax.sharding.NamedSharding(mesh, P("data")))
  table, bias, rows = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"),
                                            out_specs=P(), check_vma=False))(*args)
  want = jslide.RowSparseGrad(ids, coef, vecs, n).todense()
  return {"exchange_table_diff": _max_diff(table, want),
          "exchange_bias_diff": _max_diff(bias, jnp.sum(dense, 0)),
          "exchange_rows": int(rows)}


def _xc_model(data: D.XCData, seed: int):
  return jslide.nn.SparseMLP(data.num_features, data.num_labels, hidden=(32,), active=64,
                             num_hashes=2, num_hash_tables=4, batch_negatives=16,
                             fill_group=None, rngs=nnx.Rngs(seed))


def _xc_loss():
  return jslide.train.active_set_loss(
      lambda m, b, key: m(b["feat_ids"], b["feat_vals"], b["labels"], key=key))


def _batches(data: D.XCData, count: int, size: int):
  out = []
  for i in range(count):
    b = D.make_batch(data, np.arange(i * size, (i + 1) * size), size, 32, 4)
    out.append({"feat_ids": b.feat_ids, "feat_vals": b.feat_vals, "labels": b.labels,
                "mask": b.mask})
  return out


def xc_steps(mesh, steps: int = 6, size: int = 64) -> dict:
  """The same XC steps (WordNet, sparse Adam with catch-up, an index rebuild after 3) on one
  device and on 4: the parameters after them, the losses, and whether the replicas agree."""
  data = D.bundled.load("wordnet", "train")
  batches = _batches(data, steps, size)
  schedule = jslide.lsh.RebuildSchedule(initial_period=3)
  tx = dict(table_tx=jslide.optim.sparse_adam(1e-2, catch_up=True), dense_tx=optax.adam(1e-2))
  results = {}
  for name, kw in (("one", {}), ("dp", {"mesh": mesh})):
    graphdef, state, step = jslide.train.make_train_step(_xc_model(data, 0), _xc_loss(),
                                                         schedule=schedule, **tx, **kw)
    losses = []
    for i, batch in enumerate(batches):
      state, metrics = step(state, batch, jax.random.key(i))
      losses.append(float(metrics["loss"]))
    results[name] = (state, losses)
  (one, one_losses), (dp, dp_losses) = results["one"], results["dp"]

  trainable = lambda s: (s.tables, s.params)  # noqa: E731
  replicas = [[np.asarray(shard.data) for shard in leaf.addressable_shards]
              for leaf in jax.tree.leaves(trainable(dp))]
  spread = max(float(np.max(np.abs(r[0] - x))) for r in replicas for x in r[1:] if r[0].size)
  out = {"xc_param_diff": _max_diff(trainable(one), trainable(dp)),
          "xc_param_scale": max(float(np.max(np.abs(np.asarray(x))))
                                for x in jax.tree.leaves(trainable(one)) if np.size(x)),
          "xc_index_equal": all(np.array_equal(np.asarray(x), np.asarray(y))
                                for x, y in zip(jax.tree.leaves(one.rest),
                                                jax.tree.leaves(dp.rest))),
          "xc_losses_one": one_losses, "xc_losses_dp": dp_losses,

          "xc_replica_spread": spread,
          "xc_replicated": all(leaf.sharding.is_fully_replicated
                               for leaf in jax.tree.leaves(trainable(dp))),
          "xc_bytes": _exchange_bytes(data, batches[0])}
  # What fit does before evaluating or saving (the states are donated: measured last), on
  # the replicated state as on the other.
  ready = [jslide.train.rebuild_train_state(graphdef, jslide.train.catch_up_train_state(s))
           for s in (one, dp)]
  out["xc_ready_diff"] = _max_diff(trainable(ready[0]), trainable(ready[1]))
  out["xc_ready_index_equal"] = all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(jax.tree.leaves(ready[0].rest),
                                                    jax.tree.leaves(ready[1].rest)))
  return out


def _exchange_bytes(data, batch) -> dict:
  """exchange_bytes of one device's gradients, traced (so the arrays that gradients share
  are the same object and count once)."""
  out = {}

  def traced():
    out.update(parallel.exchange_bytes(_grads_of(data, batch), DEVICES))
    return 0.0

  jax.eval_shape(traced)
  return out


def _grads_of(data, batch):
  """One device's gradients of a quarter of ``batch``: their shapes, for exchange_bytes."""
  model = _xc_model(data, 0)
  graphdef, tables, params, rest = jslide.train.split_model(model)
  quarter = jax.tree.map(lambda x: x[:x.shape[0] // DEVICES], batch)

  def loss(trainable):
    m = nnx.merge(graphdef, *trainable, rest)
    values, mask = _xc_loss()(m, quarter, jax.random.key(0))
    return jslide.train.masked_mean(values, mask)

  return jslide.value_and_grad(loss, tables=(True, False))((tables, params))[1]


def bad_input(mesh) -> dict:
  data = D.bundled.load("wordnet", "train")
  _, state, step = jslide.train.make_train_step(_xc_model(data, 0), _xc_loss(), mesh=mesh)
  messages = {}
  try:
    step(state, _batches(data, 1, 62)[0], jax.random.key(0))
  except ValueError as e:
    messages["indivisible"] = str(e)
  try:
    jslide.train.make_train_step(_xc_model(data, 0), _xc_loss(), mesh=mesh, data_axis="model")
  except ValueError as e:
    messages["axis"] = str(e)
  try:
    jslide.train.make_train_step(_xc_model(data, 0), _xc_loss(), mesh="data")
  except TypeError as e:
    messages["mesh"] = str(e)
  return messages


def main() -> None:
  assert len(jax.devices()) == DEVICES, jax.devices()
  mesh = jax.make_mesh((DEVICES,), ("data",))
  out = {}
  for check in sys.argv[1:] or ("exchange", "xc", "bad"):
    out.update({"exchange": gradient_exchange, "xc": xc_steps, "bad": bad_input}[check](mesh))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
