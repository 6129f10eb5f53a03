"""The training loop every application shares: epochs of batches through a jitted step,
evaluation when the run config says, checkpoints, best-evaluation selection, limits,
progress, and a stop with the state intact on a non-finite loss."""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jslide.train import checkpoint, distributed
from jslide.train.config import RunConfig
from jslide.train.step import TrainState


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss or gradient (the step was skipped)."""


@dataclasses.dataclass
class Position:
  """Where a run stands: epochs finished, the next batch of the current epoch, the training
  seconds so far. Saved with every checkpoint; a resumed run starts from it."""

  epoch: int = 0
  next_batch: int = 0
  train_s: float = 0.0


class Checkpoints:
  """A run's checkpoint directory (and, for a run that selects its best evaluation, the
  ``<directory>-best`` beside it), opened for writing before any training: a directory that
  cannot be written fails now, a directory another run is writing is refused (a lock), and a
  new run refuses to delete another run's checkpoints unless ``overwrite``.

  In a run of several processes (:mod:`jslide.train.distributed`) only process 0 touches the
  directory: it saves its replica of the state, and a restored state is read there and
  broadcast to the others; an error opening the directory is raised in every process.
  """

  def __init__(self, directory: str, *, resume: bool, overwrite: bool, best: bool):
    self.directory = directory
    self.best_directory = directory.rstrip("/") + "-best" if best else None
    self.mgr = self.best_mgr = self._lock = None
    self.writer = distributed.is_primary()
    failure = None
    if self.writer:
      try:
        self._open(resume, overwrite)
      except (checkpoint.CheckpointError, OSError) as e:
        failure = e
    said = distributed.broadcast_json(None if failure is None else str(failure))
    if failure is not None:
      self.close()
      raise failure
    if said is not None:
      raise checkpoint.CheckpointError(f"process 0: {said}")

  def _open(self, resume: bool, overwrite: bool) -> None:
    directory = self.directory
    self.mgr = checkpoint.writable_manager(directory)
    self._lock = checkpoint.lock(directory)  # held while this object lives
    if self.best_directory:
      self.best_mgr = checkpoint.writable_manager(self.best_directory)
    if not resume:
      checkpoint.refuse_to_overwrite(self.mgr, directory, overwrite)
      if self.best_mgr:  # goes with the run
        checkpoint.refuse_to_overwrite(self.best_mgr, self.best_directory, overwrite=True)

  def close(self) -> None:
    """Releases the directory (its lock); the checkpoints stay."""
    if getattr(self, "_lock", None) is not None:
      self._lock.close()
      self._lock = None

  __del__ = close  # a run that failed before closing it releases the directory too

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  @staticmethod
  def _fitted(mgr, directory: str, state):
    # The save window must hold the largest array: a manager with a wider one for a state
    # with an array over SAVE_WINDOW_BYTES (known only at the first save).
    window = checkpoint.save_window(state)
    if window <= mgr.jslide_save_window:
      return mgr
    mgr.close()
    return checkpoint.manager(directory, window=window)

  def _host(self, state):
    """The state to save: itself in a run of one process; else host copies (orbax refuses a
    process's own arrays in a run of several processes), an array split over the processes
    (a row-sharded state) gathered whole first. Called in every process (the gather is a
    collective); None outside process 0."""
    if jax.process_count() == 1:
      return state
    state = jax.tree.map(lambda x: distributed.gather_split(x) if distributed.is_split(x)
                         else x, state)
    if not self.writer:
      return None
    return jax.tree.map(np.asarray, distributed.local_replica(state))

  def save(self, state, meta: dict) -> None:
    state = self._host(state)
    if self.writer:
      self.mgr = self._fitted(self.mgr, self.directory, state)
      checkpoint.save(self.mgr, state, meta)

  def save_best(self, state, meta: dict) -> None:
    state = self._host(state)
    if self.writer:
      self.best_mgr = self._fitted(self.best_mgr, self.best_directory, state)
      checkpoint.save(self.best_mgr, state, meta)

  def _restored(self, directory: str, state_like, check_meta):
    """(state placed like ``state_like``, meta): read by process 0, broadcast to the others
    (a CheckpointError raised in every process)."""
    if jax.process_count() == 1:
      return checkpoint.restore_checked(directory, state_like, check_meta)
    # a split array restored whole on process 0 (then each process keeps its part)
    local_like = distributed.local_replica(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
            jax.local_devices()[0])) if distributed.is_split(x) else x, state_like))
    state = meta = failure = None
    if self.writer:
      try:
        state, meta = checkpoint.restore_checked(directory, local_like, check_meta)
      except checkpoint.CheckpointError as e:
        failure = e
    said = distributed.broadcast_json({"meta": meta, "error": None if failure is None
                                       else str(failure)})
    if failure is not None:
      raise failure
    if said["error"] is not None:
      raise checkpoint.CheckpointError(f"process 0: {said['error']}")
    if state is None:
      state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), local_like)
    state = jax.tree.map(np.asarray, state)
    state = distributed.broadcast_tree(state)
    return distributed.place_like(state, state_like), said["meta"]

  def restore(self, state_like, wanted: dict, run_cls):
    """(state, meta) of the newest intact checkpoint, refused (CheckpointError) unless it
    continues the run ``wanted`` (:func:`jslide.train.checkpoint.check_same_run`)."""
    return self._restored(
        self.directory, state_like,
        lambda meta: checkpoint.check_same_run(self.directory, meta, wanted, run_cls))

  def restore_best(self, state_like):
    return self._restored(self.best_directory, state_like, lambda meta: None)[0]


@dataclasses.dataclass
class FitResult:
  state: TrainState     # the final state (prepared: caught up, indices rebuilt)
  best: Any             # the selected evaluation's (tables, params, rest), or the final's
  record: dict
  interrupted: bool = False  # stopped by SIGINT: the state saved, not evaluated


class _StopOnSigint:
  """While training: the first SIGINT (Ctrl-C) asks the loop to stop after the step in
  flight, with the state saved; a second one interrupts at once (KeyboardInterrupt). Only
  in the main thread, where Python delivers signals."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True
    signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def _evaluated_part(state: TrainState):
  """What evaluation reads of a state (no optimizer state), copied: the training steps
  donate, and so overwrite, the state's own buffers."""
  return jax.tree.map(jnp.copy, state._replace(opt_state=None))



def steps_taken(state) -> int:
  """``state.step`` as an int, whatever its layout: a scalar, or one per device of a
  row-sharded state (all equal; this process's first is read)."""
  step = state.step
  if isinstance(step, jax.Array) and not step.is_fully_addressable:
    step = step.addressable_shards[0].data
  return int(np.ravel(np.asarray(step))[0])

def fit(state: TrainState, step: Callable, *, run: RunConfig, key, num_batches: int,
        batches: Callable[[int, int], Iterable[tuple[Any, int]]],
        evaluate: Callable[[TrainState, dict], dict], prepare: Callable | None = None,
        meta: dict, record: dict, store: Checkpoints | None = None,
        select: Callable[[dict], float] | None = None, resume: bool = False,
        progress: bool = True, log: Callable[[dict], None] = print,
        unit: str = "ex") -> FitResult:
  """Trains ``state`` by ``step`` as ``run`` says; returns the final and the selected state.

  Args:
    step: ``step(state, batch, key) -> (state, metrics)`` (:func:`make_train_step`); step i
      (counted over the run) gets ``fold_in(key, i)``.
    num_batches: steps per epoch.
    batches: ``batches(epoch, start)`` yields ``(batch, examples in it)`` for the epoch's
      batches from ``start`` on, in the same order on every call.
    evaluate: ``evaluate(state, entry)``, the metrics of a prepared state (its optimizer
      state left out), merged into the evaluation's ``entry`` (given so far: epoch, step,
      train_s, ...).
    prepare: the state ready for evaluation and saving (catch-up Adam, index rebuilds);
      timed as training. Training continues from the prepared state.
    meta: ``{"model": ..., "run": ..., "data": ...}`` saved with every checkpoint, and
      checked when resuming (:func:`jslide.train.checkpoint.check_same_run`).
    record: the run's record; each evaluation appends its entry to ``record["evals"]``
      (epoch, step, train_s, seconds and train_loss since the last evaluation, examples per
      second, then what ``evaluate`` returned).
    store: the checkpoint directories; with ``resume``, training continues from the newest
      intact checkpoint, exactly (same batches, keys and rebuilds).
    select: a score of an entry (higher is better): the best evaluation is
      ``record["selected"]``, its state kept (``<store>-best``) and returned as ``best``.
    log: called with every entry.

  Raises NonFiniteLossError at the first step whose loss or gradient is not finite; the
  step is skipped, so the state and the last checkpoint are the last good ones. A SIGINT
  (Ctrl-C) stops the run after the step in flight: the state is saved where it stands,
  ``record["interrupted"]`` says so, and the result has ``interrupted`` set (a second
  SIGINT interrupts at once).
  """
  prepare = prepare or (lambda s: s)
  record.setdefault("evals", [])
  position = Position()
  if resume:
    if store is None:
      raise ValueError("fit: resume needs a checkpoint directory")
    t_restore = time.perf_counter()
    state, saved = store.restore(state, meta, type(run))
    position = Position(**saved["position"])
    record.update(saved["record"])
    record.setdefault("restores", []).append(
        {"step": steps_taken(state), "restore_s": round(time.perf_counter() - t_restore, 2)})
  best = None
  if record.get("selected") and store is not None and store.best_mgr is not None:
    best = store.restore_best  # read when needed: the run may select a later evaluation

  steps_done = steps_taken(state)
  run_key = key
  t_start = time.perf_counter()   # training time since the last pause
  since = {"examples": 0, "loss_sum": 0.0, "seconds": 0.0}
  step_seconds: list[float] = []
  last_eval_step = record["evals"][-1]["step"] if record["evals"] else -1
  next_eval_s = (math.floor(position.train_s / run.eval_seconds) + 1) * run.eval_seconds \
      if run.eval_seconds else math.inf

  def position_meta(epoch, next_batch, train_s):
    return {**meta, "position": dataclasses.asdict(Position(epoch, next_batch, train_s)),
            "record": record}

  def train_seconds():
    return position.train_s + (time.perf_counter() - t_start)

  # In a run of several processes, what depends on each process's clock or signals (the time
  # limit, evaluations by time, a SIGINT) is decided together, at the same steps everywhere
  # (every DECISION_STEPS steps and at epochs' ends): one process stopping or evaluating
  # alone would leave the others waiting in the next step's collectives.
  together = jax.process_count() > 1

  def out_of_time() -> bool:
    return bool(run.time_limit and train_seconds() >= run.time_limit)

  def finished():
    """Whether the run is over (decided with the other processes)."""
    late = out_of_time()
    if together:
      (late,), _ = distributed.agree([late], [])
    return bool((run.max_steps and steps_done >= run.max_steps) or late)

  total = num_batches * run.epochs
  if run.max_steps:
    total = min(total, run.max_steps)
  bar = tqdm(total=total, initial=min(steps_done, total), unit="step", disable=not progress,
             dynamic_ncols=True)
  pending = None  # the last step's (metrics, examples, step index), not yet read back

  def check(pending):
    """Reads one step's metrics back (waiting for it); stops on a non-finite loss."""
    m, n, i = pending
    where = (f"at step {i + 1} (epoch {i // num_batches + 1}, batch {i % num_batches}); "
             "stopping. The last good checkpoint (if any) is kept. Try a lower learning rate.")
    loss = float(m["loss"])
    if not bool(m["finite"]):  # the step was skipped: the state is the last good one
      raise NonFiniteLossError(f"non-finite loss or gradient {where}")
    if not math.isfinite(loss):
      raise NonFiniteLossError(f"loss became {loss} {where}")
    since["examples"] += n
    since["loss_sum"] += loss * n
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")

  def evaluation(state, epoch_done: int, next_batch: int):
    """Prepares, evaluates, records, selects and saves; returns the prepared state."""
    nonlocal t_start, best, last_eval_step, next_eval_s
    state = prepare(state)
    jax.block_until_ready(state)
    train_s = train_seconds()
    seconds = train_s - since["seconds"]
    entry = {"epoch": epoch_done + (next_batch / num_batches if next_batch else 0),
             "step": steps_done, "train_s": round(train_s, 3), "seconds": round(seconds, 3),
             "train_loss": since["loss_sum"] / max(since["examples"], 1),
             "examples_per_s": round(since["examples"] / seconds, 1) if seconds > 0 else 0.0}
    entry.update(evaluate(state._replace(opt_state=None), dict(entry)))
    record["evals"].append(entry)
    log(entry)
    m = position_meta(epoch_done, next_batch, train_s)
    if select is not None and (record.get("selected") is None or
                               select(entry) > select(record["selected"])):
      record["selected"] = entry
      best = _evaluated_part(state)
      if store is not None and store.best_mgr is not None:
        store.save_best(state, m)
    if store is not None:
      t_save = time.perf_counter()
      store.save(state, m)
      entry["checkpoint_s"] = round(time.perf_counter() - t_save, 2)  # in the final record
    since.update(examples=0, loss_sum=0.0, seconds=train_s)
    last_eval_step = steps_done
    if run.eval_seconds:
      next_eval_s = (math.floor(train_s / run.eval_seconds) + 1) * run.eval_seconds
    position.train_s, t_start = train_s, time.perf_counter()  # evaluation is not training
    return state

  since["seconds"] = position.train_s
  epoch, start = position.epoch, position.next_batch
  done = finished()
  interrupted = False
  with _StopOnSigint() as sigint:
    while epoch < run.epochs and not done:
      bar.set_description(f"epoch {epoch + 1}/{run.epochs}")
      i = start
      for i, (batch, n) in enumerate(batches(epoch, start), start=start):
        t0 = time.perf_counter()
        state, m = step(state, batch, jax.random.fold_in(run_key, steps_done))
        # The previous step's loss is read while this one runs (dispatch is asynchronous),
        # so the host's batch building and bookkeeping overlap the computation.
        if pending is not None:
          check(pending)
        pending = (m, n, steps_done)
        steps_done += 1
        at_end = i + 1 == num_batches
        timed_eval, late, interrupted = (train_seconds() >= next_eval_s, out_of_time(),
                                         sigint.requested)
        if together:  # process 0's clock, anyone's SIGINT, at agreed steps only
          if steps_done % distributed.DECISION_STEPS == 0:
            (timed_eval, late), (interrupted,) = distributed.agree([timed_eval, late],
                                                                   [interrupted])
          else:
            timed_eval = late = interrupted = False
        due = bool((run.eval_every and steps_done % run.eval_every == 0) or timed_eval)
        save_due = store is not None and run.checkpoint_every and \
            steps_done % run.checkpoint_every == 0
        done = bool((run.max_steps and steps_done >= run.max_steps) or late)
        if due or save_due or done or at_end or interrupted:
          check(pending)  # a step is evaluated or saved only once known to be good
          pending = None
        step_seconds.append(time.perf_counter() - t0)
        if at_end or (interrupted and not due):
          break
        if due or done:
          state = evaluation(state, epoch, i + 1)
          if done or interrupted:
            break
        elif save_due:
          paused = time.perf_counter()
          store.save(state, position_meta(epoch, i + 1, train_seconds()))
          t_start += time.perf_counter() - paused  # saving is not training
      else:
        if pending is not None:
          check(pending)
          pending = None
      if interrupted:
        # Saved where it stands (an epoch's last step without its evaluation: the resumed
        # run evaluates first).
        start = i + 1
        if store is not None and last_eval_step != steps_done:
          store.save(state, position_meta(epoch, start, train_seconds()))
        break
      if i + 1 >= num_batches:  # the epoch is complete
        epoch, start = epoch + 1, 0
        if last_eval_step != steps_done:
          state = evaluation(state, epoch, 0)
      else:
        start = i + 1
      done = done or finished()
  bar.close()
  if interrupted:
    record["interrupted"] = {"step": steps_done, "train_s": round(train_seconds(), 3)}
  elif last_eval_step != steps_done or not record["evals"]:
    state = evaluation(state, epoch, start)
  if step_seconds:  # the first steps compile; the median is the steady state
    record["step_ms"] = round(1e3 * float(np.median(step_seconds[min(5, len(step_seconds) - 1):])),
                              3)
  if callable(best):
    best = _evaluated_part(best(state))
  return FitResult(state, best if best is not None else _evaluated_part(state), record,
                   interrupted)
