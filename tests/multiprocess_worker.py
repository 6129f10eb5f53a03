"""Run by tests/test_parallel.py as N processes on localhost (JAX's distributed runtime, gloo
collectives on CPU, one device each): the data-parallel XC steps of parallel_worker.py over a
mesh of every process's device. Process 0 writes the parameters to OUT (.npz).

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT
"""

from __future__ import annotations

import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
import optax  # noqa: E402

import jslide  # noqa: E402
from jslide import datasets as D  # noqa: E402
from jslide import parallel  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import parallel_worker as W  # noqa: E402


def main() -> None:
  process_id, processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
  if processes > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes=processes,
                               process_id=process_id, initialization_timeout=120)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  data = D.bundled.load("wordnet", "train")
  graphdef, state, step = jslide.train.make_train_step(
      W._xc_model(data, 0), W._xc_loss(), schedule=jslide.lsh.RebuildSchedule(initial_period=3),
      table_tx=jslide.optim.sparse_adam(1e-2, catch_up=True),
      dense_tx=optax.adam(1e-2), mesh=mesh)
  for i, batch in enumerate(W._batches(data, 6, 64)):
    state, metrics = step(state, parallel.global_batch(batch, mesh),
                          parallel.replicated(jax.random.key(i), mesh))
  leaves = [np.asarray(leaf.addressable_shards[0].data)
            for leaf in jax.tree.leaves((state.tables, state.params))]
  if process_id == 0:
    np.savez(out, *leaves, loss=float(np.asarray(metrics["loss"].addressable_shards[0].data)))
  if processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
