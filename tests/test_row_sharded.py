"""Tables split by rows over a mesh axis (jslide.row_sharded): on 4 forced host devices in a
process of its own (tests/row_sharded_worker.py), the sharded output layer's loss and
gradients, the sharded embedding bag and the merged top-k equal the one-device results, each
device holds a quarter of the table, and no collective carries a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from jslide import row_sharded

WORKER = os.path.join(os.path.dirname(__file__), "row_sharded_worker.py")


@pytest.fixture(scope="module")
def measured():
  out = subprocess.run([sys.executable, WORKER], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_row_sharded_output_layer_equals_one_device(measured):
  """Each device scores the active ids in its rows; the softmax cross-entropy over the union
  (a max and a sum per example) and its gradients equal the one-device layer's, with
  repeated labels, a duplicate active id and an example whose labels were not retrieved."""
  assert measured["loss"] > 0
  assert measured["loss_diff"] < 1e-5
  assert measured["grad_w_diff"] < 1e-5 * max(1.0, measured["grad_w_scale"])
  assert measured["grad_b_diff"] < 1e-5 and measured["grad_x_diff"] < 1e-5
  # the table and its gradient a quarter per device; only per-example sums all-reduced
  assert measured["shard_bytes"] * 4 == measured["table_bytes"]
  assert measured["grad_w_shard_rows"] == [16] * 4
  assert measured["collectives"] == ["all-reduce"]
  assert measured["largest_collective"] < measured["shard_bytes"]


@pytest.mark.slow
def test_the_row_sharded_embedding_bag_sends_one_output(measured):
  assert measured["bag_diff"] < 1e-5 and measured["bag_grad_diff"] < 1e-5
  assert measured["bag_largest_collective"] == measured["bag_output_bytes"]
  assert measured["bag_output_bytes"] < measured["bag_table_bytes"]


@pytest.mark.slow
def test_per_shard_top_k_merges_to_the_global_top_k(measured):
  assert measured["topk_ids_equal"] and measured["topk_diff"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["rows", "rows_data"])
def test_a_row_sharded_training_step_equals_one_device(measured, mesh):
  """Three steps of a SparseMLP whose active set covers every label, its output layer split
  over 4 devices (``rows``) or over 2 row x 2 data devices (``rows_data``), against one
  device from the same weights: the losses, the updated output table and bias and the
  replicated input table agree to 1e-5; each device holds its share of the table."""
  m = {k[len(mesh) + 1:]: v for k, v in measured.items() if k.startswith(mesh + "_")}
  assert min(measured["train_loss"]) > 0
  assert m["loss_diff"] < 1e-5
  assert m["output_diff"] < 1e-5 and m["bias_diff"] < 1e-5 and m["input_diff"] < 1e-5
  shards = 4 if mesh == "rows" else 2
  assert m["shard_bytes"] == [m["table_bytes"] // shards]
  if mesh == "rows":  # no all-gather; the largest all-reduce is the [B, d] input gradient
    assert m["largest_gather"] == 0
    assert m["largest_collective"] < m["shard_bytes"][0]


@pytest.mark.slow
def test_under_plain_jit_a_table_split_by_rows_is_gathered_whole(measured):
  """Why the split layers run inside shard_map: under plain jit, XLA gathers a row-split
  table before a jslide kernel reads it (a custom call cannot be split by the rows its ids
  point to; a batch-partitionable FFI target splits only operands that all share the batch
  dimension, and a table does not)."""
  assert measured["plain_jit_largest_gather"] == measured["plain_jit_table_bytes"]


def test_top_k_refuses_a_k_beyond_the_scored_ids():
  with pytest.raises(ValueError, match=r"k must be in \[1, 3\], got 4"):
    row_sharded.top_k(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32), 4, "rows")


def test_the_loss_checks_its_arguments():
  with pytest.raises(ValueError, match="logits shape"):
    row_sharded.active_softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4), jnp.int32),
                                             jnp.zeros((2, 1), jnp.int32), "rows")


def _mlp(**kw):
  from flax import nnx
  import jslide
  return jslide.nn.SparseMLP(20, 12, hidden=(8,), active=kw.pop("active", 6),
                             rngs=nnx.Rngs(0), **kw)


def test_split_rows_checks_its_arguments():
  from flax import nnx
  with pytest.raises(ValueError, match="shards must be an int >= 1"):
    row_sharded.split_rows(_mlp(), 0)
  with pytest.raises(ValueError, match="out_features=12 must be a multiple of shards=5"):
    row_sharded.split_rows(_mlp(), 5)
  with pytest.raises(ValueError, match="active=16 over 4 shards is more than a shard's 3 rows"):
    row_sharded.split_rows(_mlp(active=16), 4)
  with pytest.raises(ValueError, match="no layer that can be split by rows"):
    row_sharded.split_rows(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), 2)


def test_a_split_layer_is_stacked_and_refuses_a_call_outside_shard_map():
  import jax
  split = row_sharded.split_rows(_mlp(), 2)
  assert split.output.kernel.get_value().shape == (2, 6, 8)  # shards x rows x d
  assert split.output.active == 3 and split.output.row_axis == "rows"
  assert split.input.kernel.get_value().shape == (2, 20, 8)  # a replica per device
  with pytest.raises(ValueError, match="call it inside shard_map"):
    split.output(jnp.zeros((1, 8)), key=jax.random.PRNGKey(0))


def test_a_row_sharded_step_needs_a_split_model_and_its_axis():
  import jax
  import jslide
  from jslide.xc import objectives
  loss = objectives.active_set_loss()
  mesh = jax.make_mesh((1,), ("rows",))
  with pytest.raises(ValueError, match="needs a mesh"):
    jslide.train.make_train_step(_mlp(), loss, row_axis="rows")
  with pytest.raises(ValueError, match="row_axis 'shards' is not an axis of the mesh"):
    jslide.train.make_train_step(row_sharded.split_rows(_mlp(), 1), loss, mesh=mesh,
                                 row_axis="shards")
  with pytest.raises(ValueError, match=r"split by jslide.row_sharded.split_rows\(model, 1"):
    jslide.train.make_train_step(_mlp(), loss, mesh=mesh, row_axis="rows")


@pytest.mark.slow
def test_a_language_model_split_by_rows_trains_as_on_one_device(measured):
  """Three steps of a small SparseTransformerLM whose lsh head retrieves every word (its
  loss the exact softmax), the token embedding and head split over 4 devices, against one
  device: losses, head, embedding and the replicated blocks agree to 1e-5, and so does the
  exact evaluation loss (each device's log-partition combined); each device holds 8 of the
  32 words."""
  assert min(measured["lm_loss"]) > 0
  assert measured["lm_loss_diff"] < 1e-5
  assert measured["lm_head_diff"] < 1e-5 and measured["lm_embed_diff"] < 1e-5
  assert measured["lm_block_diff"] < 1e-5 and measured["lm_nll_diff"] < 1e-5
  assert measured["lm_shard_rows"] == [8]
