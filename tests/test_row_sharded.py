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


def test_top_k_refuses_a_k_beyond_the_scored_ids():
  with pytest.raises(ValueError, match=r"k must be in \[1, 3\], got 4"):
    row_sharded.top_k(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32), 4, "rows")


def test_the_loss_checks_its_arguments():
  with pytest.raises(ValueError, match="logits shape"):
    row_sharded.active_softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4), jnp.int32),
                                             jnp.zeros((2, 1), jnp.int32), "rows")
