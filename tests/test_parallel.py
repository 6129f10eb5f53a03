"""Data parallelism (jslide.parallel, make_train_step(mesh=...)): on 4 forced host devices in
a process of its own (tests/parallel_worker.py), a data-parallel step computes what the
one-device step computes, exchanging row-sparse gradients in factored form."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

import jslide
from jslide import parallel

WORKER = os.path.join(os.path.dirname(__file__), "parallel_worker.py")


@pytest.fixture(scope="module")
def measured():
  out = subprocess.run([sys.executable, WORKER], capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_row_sparse_gradients_are_gathered_factored_and_sum_like_dense(measured):
  assert measured["exchange_table_diff"] < 1e-5
  assert measured["exchange_bias_diff"] < 1e-5
  assert measured["exchange_rows"] == 8  # 4 devices x 2 rows each, never [N, D]


@pytest.mark.slow
def test_a_data_parallel_xc_run_equals_the_one_device_run(measured):
  """Six WordNet steps (an index rebuild among them, batch negatives, a shared random fill)
  on 4 devices with 16 examples each against one device with all 64: the same parameters to
  float rounding, the same rebuilt index, the same losses, and every replica identical."""
  assert measured["xc_param_diff"] <= 1e-5 * max(1.0, measured["xc_param_scale"])
  assert measured["xc_index_equal"]
  assert measured["xc_losses_dp"] == pytest.approx(measured["xc_losses_one"], rel=1e-5)
  assert measured["xc_losses_one"][-1] < measured["xc_losses_one"][0]  # it trains
  assert measured["xc_replicated"] and measured["xc_replica_spread"] == 0.0
  # catch-up and an index rebuild (what fit does before evaluating) on the replicated state
  assert measured["xc_ready_diff"] <= 1e-5 * max(1.0, measured["xc_param_scale"])
  assert measured["xc_ready_index_equal"]


@pytest.mark.slow
def test_the_exchange_sends_a_fraction_of_the_dense_all_reduce(measured):
  b = measured["xc_bytes"]
  assert 0 < b["row_sparse"] < b["dense"] / 4


@pytest.mark.slow
def test_data_parallel_steps_refuse_bad_meshes_and_batches(measured):
  assert "must be a multiple of 4" in measured["indivisible"]
  assert "data_axis 'model' is not an axis of the mesh" in measured["axis"]
  assert "mesh must be a jax.sharding.Mesh" in measured["mesh"]


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost_train_like_one(tmp_path):
  """The same data-parallel XC steps on 2 processes (jax.distributed, gloo collectives, one
  device each, every process building global batches of its own rows) and on 1: the same
  parameters to float rounding and the same loss."""
  import numpy as np
  worker = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, worker, str(i), "2", port, str(tmp_path / "two.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  one = subprocess.run([sys.executable, worker, "0", "1", "0", str(tmp_path / "one.npz")],
                       capture_output=True, text=True, env=env, timeout=600)
  assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
  a, b = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
  assert len(a.files) == len(b.files) > 3
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_exchange_bytes_follow_the_ring_and_gather_formulas():
  table = jslide.RowSparseGrad(jnp.zeros((8, 5), jnp.int32), jnp.zeros((8, 5)),
                               jnp.zeros((8, 16)), 1000)
  dense = jnp.zeros((16,))
  got = parallel.exchange_bytes({"t": table, "b": dense}, 4)
  factors = 8 * 5 * 4 + 8 * 5 * 4 + 8 * 16 * 4
  assert got["row_sparse_factors"] == factors
  assert got["row_sparse"] == int(3 * factors + 1.5 * 16 * 4)
  assert got["dense"] == int(1.5 * (1000 * 16 * 4 + 16 * 4))
  assert parallel.exchange_bytes({"t": table}, 1)["row_sparse"] == 0
  with pytest.raises(ValueError, match="devices must be >= 1"):
    parallel.exchange_bytes({}, 0)


def test_outside_a_data_parallel_step_the_batch_is_the_whole_batch():
  assert parallel.current_shard() is None
  assert int(parallel.first_example(7)[0]) == 0 and parallel.whole_batch(7) == 7
  x = jnp.arange(6)
  assert parallel.gather_examples(x) is x
  with parallel.data_sharded("data", 4):
    assert parallel.current_shard() == parallel.DataShard("data", 4)
    assert parallel.whole_batch(7) == 28
  assert parallel.current_shard() is None
