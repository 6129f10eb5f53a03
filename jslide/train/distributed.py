"""A training run on several processes and hosts, with JAX's own runtime.

The trainers (``python -m jslide.xc train``, ``python -m jslide.lm train``) run the same
program in every process (``jax.distributed.initialize``; on CPU the collectives are gloo's).
The step is data-parallel over a mesh of every process's devices
(``make_train_step(mesh=...)``, :mod:`jslide.parallel`): every process builds the same
batches from the same data and seed and keeps its own devices' rows of each, the row-sparse
gradients are exchanged in factored form, and every process ends each step with the same
replica of the state. So a run computes what one process computes with the same global
batch, whatever the number of processes, and may be resumed with another number.

- :func:`add_arguments` and :func:`start`: the command-line options (``--processes N``
  launches N local processes; ``--coordinator``, ``--num-processes``, ``--process-id``, or
  ``--cluster`` for SLURM and the other launchers ``jax.distributed.initialize`` reads) and
  what they start.
- :func:`check_same`: a setting or data that differs between processes is refused at start,
  by every process.
- Process 0 writes the checkpoints (its replica of the state) and the records; a resumed run
  reads them on process 0 and broadcasts them (:func:`broadcast_tree`), so no shared file
  system is needed to resume. Evaluation runs in every process on its own replica
  (:func:`local_replica`), so every process selects the same state.
- What depends on a process's clock or signals is decided together every
  ``DECISION_STEPS`` steps (:func:`agree`): the time limit and evaluations by time follow
  process 0's clock, and a SIGINT (Ctrl-C) reaching any process stops all of them at the
  same step, process 0 saving the state.
- A process that dies stops the others: JAX's coordination service misses its heartbeats
  and ends them (exit status 134) within ``--heartbeat-timeout`` seconds; the local launcher
  (:func:`launch`) ends the others as soon as one exits with an error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback

import jax
import numpy as np

__all__ = ["add_arguments", "agree", "broadcast_json", "broadcast_tree", "check_same",
           "command_status", "compiled_step", "data_mesh", "exit_status",
           "gather_split", "initialize", "is_primary", "is_split", "launch", "local_replica",
           "place_like", "row_mesh",
           "rows_held", "start"]

# Seconds without a heartbeat after which the coordination service declares a process dead
# and stops the others (JAX's default is 100).
HEARTBEAT_TIMEOUT_S = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of a run on several processes (a group of ``parser``)."""
  g = parser.add_argument_group(
      "processes", "data-parallel training over several processes (docs/distributed.md)")
  g.add_argument("--processes", type=int, default=1,
                 help="launch this many processes on this machine (default: 1)")
  g.add_argument("--coordinator", metavar="HOST:PORT",
                 help="this process is one of --num-processes; process 0 listens here")
  g.add_argument("--num-processes", type=int, help="processes in the run (with --coordinator)")
  g.add_argument("--process-id", type=int, help="this process's number, 0 to --num-processes"
                                                " - 1 (with --coordinator)")
  g.add_argument("--cluster", action="store_true",
                 help="take the processes from the cluster's environment (SLURM, Open MPI, "
                      "...: what jax.distributed.initialize() reads)")
  g.add_argument("--heartbeat-timeout", type=int, default=HEARTBEAT_TIMEOUT_S,
                 help="seconds of silence after which a process counts as dead and the "
                      f"others stop (default: {HEARTBEAT_TIMEOUT_S})")


def start(args: argparse.Namespace, module: str, argv: list[str]) -> int | None:
  """What the options of :func:`add_arguments` ask, before anything of JAX runs: with
  ``--processes N`` (N > 1, no ``--coordinator``), launches N processes of ``python -m
  module argv`` on this machine and returns the exit status for the caller to exit with;
  with ``--coordinator`` or ``--cluster``, joins the run (:func:`initialize`) and returns
  None; otherwise returns None (one process)."""
  if args.processes < 1:
    raise ValueError(f"--processes must be >= 1, got {args.processes}")
  if args.heartbeat_timeout < 1:
    raise ValueError(f"--heartbeat-timeout must be >= 1, got {args.heartbeat_timeout}")
  if args.coordinator or args.cluster:
    initialize(args.coordinator, args.num_processes, args.process_id,
               heartbeat_timeout=args.heartbeat_timeout)
    return None
  if args.num_processes is not None or args.process_id is not None:
    raise ValueError("--num-processes and --process-id go with --coordinator")
  if args.processes > 1:
    return launch(args.processes, module, argv, heartbeat_timeout=args.heartbeat_timeout)
  return None


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None,
               *, heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S,
               initialization_timeout: int = 300) -> None:
  """Joins a run of several processes (``jax.distributed.initialize``, gloo collectives on
  CPU). ``coordinator`` None: the cluster's environment says (SLURM, Open MPI, ...)."""
  if coordinator is not None:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator needs --num-processes and --process-id")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process-id must be in [0, {num_processes - 1}] and "
                       f"--num-processes >= 1, got {process_id} of {num_processes}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes, process_id,
                             initialization_timeout=initialization_timeout,
                             heartbeat_timeout_seconds=heartbeat_timeout)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _without(argv: list[str], flag: str) -> list[str]:
  """``argv`` without ``flag`` and its value (``--flag V`` or ``--flag=V``)."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a == flag:
      skip = True
    elif not a.startswith(flag + "="):
      out.append(a)
  return out


def launch(n: int, module: str, argv: list[str], *,
           heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S, grace_s: float = 10.0) -> int:
  """Runs ``python -m module argv`` as processes 0..n-1 of one run on this machine (a free
  port on localhost as the coordinator) and waits for them. Process 0 prints; the others'
  output goes to stderr only on failure. When one exits with an error, the others are
  stopped (SIGTERM, then SIGKILL after ``grace_s``) and its status is returned; a SIGINT
  (Ctrl-C) is passed on to every process (they stop together within
  ``DECISION_STEPS`` steps, process 0 saves) and 130 is returned."""
  port = _free_port()
  argv = _without(argv, "--processes")
  procs = []
  for i in range(n):
    cmd = [sys.executable, "-m", module, *argv, "--coordinator", f"localhost:{port}",
           "--num-processes", str(n), "--process-id", str(i),
           "--heartbeat-timeout", str(heartbeat_timeout)]
    if i:
      cmd.append("--no-progress")
    procs.append(subprocess.Popen(
        cmd, stdout=None if i == 0 else subprocess.DEVNULL,
        stderr=None if i == 0 else subprocess.PIPE, text=True,
        start_new_session=True))  # Ctrl-C reaches them through this process only
  status = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.returncode not in (None, 0)]
      if failed:
        status = failed[0].returncode
        break
      time.sleep(0.2)
  except KeyboardInterrupt:  # every process stops at the same step; process 0 saves
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGINT)
    for p in procs:
      p.wait()
    return 130
  if not status:
    status = next((p.returncode for p in procs if p.returncode), 0)
  if status:
    bad = next(i for i, p in enumerate(procs) if p.returncode == status)
    print(f"jslide: process {bad} of {n} exited with status {status}; stopping the others",
          file=sys.stderr)
    deadline = time.monotonic() + grace_s
    for p in procs:
      if p.poll() is None:
        p.terminate()
    for p in procs:
      try:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    if bad and procs[bad].stderr is not None:
      sys.stderr.write(procs[bad].stderr.read()[-4000:])
  return status


def exit_status(status: int) -> int:
  """``status``, for a command to exit with. In a run of several processes, a process that
  fails (non-zero ``status``) ends at once, skipping JAX's shutdown barrier, where it would
  wait minutes for processes that wait for it; the others then stop within the heartbeat
  timeout (or at once, under :func:`launch`)."""
  if status and jax.process_count() > 1:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
  return status


# A run of several processes decides what depends on a process's clock or signals (the time
# limit, evaluations by time, a SIGINT) every this many steps (jslide.train.fit).
DECISION_STEPS = 8


def agree(first: list[bool], anyone: list[bool]) -> tuple[list[bool], list[bool]]:
  """Decisions every process takes alike: ``first``'s values as process 0 has them (its clock
  decides), ``anyone``'s true where any process's is (a SIGINT reaching one stops all). One
  small all-gather; every process must call it at the same point."""
  if jax.process_count() == 1:
    return [bool(v) for v in first], [bool(v) for v in anyone]
  from jax.experimental import multihost_utils
  mine = np.asarray([*first, *anyone], np.int32)
  rows = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, mine.size)
  return ([bool(v) for v in rows[0, :len(first)]],
          [bool(v) for v in rows[:, len(first):].any(axis=0)])


def command_status(run) -> int:
  """The status a command exits with: ``run()``'s, through :func:`exit_status`. In a run of
  several processes an exception escaping ``run`` is printed and ends the process at once
  (status 1), rather than waiting in JAX's shutdown barrier for processes that wait for it."""
  try:
    status = run()
  except BaseException:
    if jax.process_count() > 1:
      traceback.print_exc()
      exit_status(1)
    raise
  return exit_status(status)


def is_primary() -> bool:
  """Whether this is process 0 (the one that writes checkpoints and records, and prints)."""
  return jax.process_index() == 0


def data_mesh(axis: str = "data", *,
              batch_size: int | None = None) -> jax.sharding.Mesh | None:
  """A one-axis mesh over every device of every process, for a run of several processes;
  None for a run of one (the step then runs on one device, as without a mesh). With
  ``batch_size``, ValueError unless every device can take an equal share of it."""
  if jax.process_count() == 1:
    return None
  if batch_size is not None and batch_size % jax.device_count():
    raise ValueError(f"train: batch_size={batch_size} must be a multiple of the "
                     f"{jax.device_count()} devices of the {jax.process_count()} processes "
                     "(each takes an equal share of every batch)")
  return jax.make_mesh((jax.device_count(),), (axis,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def row_mesh(row_shards: int, *, batch_size: int | None = None) -> jax.sharding.Mesh:
  """A 2-D mesh ``("data", "rows")`` over every device of every process: ``row_shards``
  devices along ``"rows"`` (a table split by rows over them, :mod:`jslide.row_sharded`), the
  batch split over the rest. ValueError unless ``row_shards`` divides the devices (and the
  data axis divides ``batch_size``)."""
  devices = jax.device_count()
  if row_shards < 1 or devices % row_shards:
    raise ValueError(f"train: row_shards={row_shards} must divide the {devices} devices of the "
                     f"{jax.process_count()} process(es)")
  data = devices // row_shards
  if batch_size is not None and batch_size % data:
    raise ValueError(f"train: batch_size={batch_size} must be a multiple of the {data} "
                     f"data-parallel groups ({devices} devices / row_shards={row_shards})")
  return jax.make_mesh((data, row_shards), ("data", "rows"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def rows_held(table) -> list[int]:
  """The rows of ``table`` (a stacked state's leaf split by rows: [shards, rows, ...]) held
  by each process's devices, in process order (a replica counted once)."""
  blocks = {tuple((i.start, i.stop) for i in s.index) for s in table.addressable_shards}
  mine = np.int32(len(blocks) * table.shape[1])
  if jax.process_count() == 1:
    return [int(mine)]
  from jax.experimental import multihost_utils
  return [int(v) for v in np.ravel(multihost_utils.process_allgather(mine))]


def broadcast_tree(tree, *, is_source: bool | None = None):
  """Process 0's ``tree`` of arrays (every process passes arrays of the same shapes and
  dtypes; the others' values are ignored), as host arrays in every process; one leaf at a
  time, so at most one leaf is held twice."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils
  return jax.tree.map(lambda x: np.asarray(multihost_utils.broadcast_one_to_all(
      np.asarray(x), is_source=is_source)), tree)


def broadcast_json(value):
  """Process 0's ``value`` (JSON-ready) in every process."""
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_primary() else None
  size = int(broadcast_tree(np.int64(0 if data is None else data.size)))
  data = broadcast_tree(data if data is not None else np.zeros(size, np.uint8))
  return json.loads(bytes(data).decode())


def _differences(mine, first, path: str = "") -> list[str]:
  if isinstance(mine, dict) and isinstance(first, dict):
    out = []
    for k in sorted(set(mine) | set(first)):
      out += _differences(mine.get(k), first.get(k), f"{path}.{k}" if path else str(k))
    return out
  return [] if mine == first else [f"{path or 'value'}: {first!r} in process 0, {mine!r} here"]


def check_same(what: str, value) -> None:
  """Refuses a run whose processes were given different ``value`` (JSON-ready: settings, a
  digest of the data; or a function that makes it, called only in a run of several
  processes, so one process never hashes its data for nothing): every process raises the
  same ValueError (naming the processes that differ), so none starts training alone and
  waits for the others forever."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  mine = json.loads(json.dumps(value() if callable(value) else value))
  first = broadcast_json(mine)
  differs = np.asarray(multihost_utils.process_allgather(np.int32(mine != first)))
  if differs.any():
    bad = [int(i) for i in np.flatnonzero(differs)]
    here = "; ".join(_differences(mine, first))
    raise ValueError(f"{what} differs between the processes: processes {bad} were not "
                     f"started like process 0" + (f" ({here})" if here else "") +
                     "; start every process with the same settings and data")


def is_split(x) -> bool:
  """Whether ``x`` is an array split over the processes (each holding only its part: a
  row-sharded state's tables), not replicated."""
  return (isinstance(x, jax.Array) and not x.is_fully_addressable
          and not x.is_fully_replicated)


def gather_split(x) -> np.ndarray:
  """``x`` (an array split over the processes) whole, as a host array, in every process (a
  collective: every process calls it). Memory: the whole array in every process."""
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_replica(tree):
  """``tree`` with every array that spans several processes replaced by this process's own
  copy (on its first device): what evaluation and checkpoints read. Only replicated arrays
  have one (ValueError otherwise)."""
  def local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError(f"local_replica: an array of shape {x.shape} is split over the "
                         "processes, not replicated")
      return x.addressable_shards[0].data
    return x
  return jax.tree.map(local, tree)


def place_like(tree, like):
  """``tree`` (host arrays, the same in every process) placed as ``like``'s arrays are
  (their shardings); leaves of ``like`` that are not ``jax.Array`` keep ``tree``'s."""
  def place(x, ref):
    if not isinstance(ref, jax.Array):
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, ref.sharding, lambda index: x[index])
  return jax.tree.map(place, tree, like)


def compiled_step(step, state, batch_spec, key, mesh: jax.sharding.Mesh | None = None,
                  axis: str = "data"):
  """``step`` (jitted: ``step(state, batch, key)``) compiled ahead for ``state``, a batch
  shaped ``batch_spec`` (``jax.ShapeDtypeStruct`` leaves: the whole batch) and ``key``.
  Without a mesh, the compiled step itself. With one (the step's, from
  ``make_train_step(mesh=...)``), a function of the same signature that takes the whole
  batch and the key as host values, the same in every process, and gives the compiled step
  this process's rows of the batch (:func:`jslide.parallel.global_batch`) and the key
  replicated."""
  if mesh is None:
    return step.lower(state, batch_spec, key).compile()
  from jslide import parallel
  P = jax.sharding.PartitionSpec
  rows = jax.sharding.NamedSharding(mesh, P(axis))
  whole = jax.sharding.NamedSharding(mesh, P())
  batch_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rows),
                            batch_spec)
  key_spec = jax.tree.map(lambda k: jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=whole),
                          key)
  compiled = step.lower(state, batch_spec, key_spec).compile()

  def run(state, batch, key):
    return compiled(state, parallel.global_batch(batch, mesh, axis),
                    parallel.replicated(key, mesh))

  run.compiled = compiled
  return run
