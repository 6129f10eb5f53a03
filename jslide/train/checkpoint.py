"""Checkpoints of a training run with orbax: the full TrainState plus where the run stood.

Every saved step gets a SHA-256 of each of its files (``checksums/<step>.json`` beside the
steps). Reading a run (meta or state) takes the newest step whose files still match and that
orbax can restore; a damaged newer step is skipped with a message on stderr naming it, so a
flipped byte or a truncated file never restores silently and never ends a run that has an
intact earlier step.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import TYPE_CHECKING

import jax
import numpy as np

if TYPE_CHECKING:
  import orbax.checkpoint as ocp


def _ocp():
  import orbax.checkpoint as ocp  # 1.6 s to import: only when checkpoints are used
  return ocp


class CheckpointError(ValueError):
  """A checkpoint that does not fit the requested run."""


# Orbax hands every array of a state to tensorstore at once, whose write buffers then hold
# most of the state a second time (a 1 GB state peaked 0.7 GB above itself); a window of 1 GB
# in flight bounds them at the same speed. The window must hold the largest array.
SAVE_WINDOW_BYTES = 1 << 30


def save_window(state) -> int:
  """The bytes a save of ``state`` keeps in flight: SAVE_WINDOW_BYTES, or its largest array
  when that is larger."""
  return max([SAVE_WINDOW_BYTES] + [int(x.nbytes) for x in jax.tree.leaves(state)
                                    if hasattr(x, "nbytes")])


def manager(directory: str, *, window: int | None = None) -> ocp.CheckpointManager:
  """A manager of ``directory`` (two newest steps kept) whose saves keep at most ``window``
  bytes in flight (default SAVE_WINDOW_BYTES; :func:`save_window`)."""
  ocp = _ocp()
  window = SAVE_WINDOW_BYTES if window is None else window
  mgr = ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
          max_to_keep=2, multiprocessing_options=_this_process_only(),
          create=jax.process_count() == 1),  # (orbax refuses to with active_processes)
      # (+1 KB: orbax compares bytes with its limit in float GB, rounded)
      item_handlers={"state": ocp.StandardCheckpointHandler(
          save_concurrent_gb=(window + 1024) / 1e9),
                     "meta": ocp.JsonCheckpointHandler()})
  mgr.jslide_save_window = window  # read by save()
  return mgr


def _this_process_only():
  """Orbax's options for a manager that this process uses alone: in a run of several
  processes, process 0 writes its replica of the (replicated) state and the others never
  touch the directory (jslide.train.distributed), so no barrier waits for them."""
  ocp = _ocp()
  if jax.process_count() == 1:
    return ocp.options.MultiprocessingOptions()
  return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                            active_processes={jax.process_index()})


def _release_freed_memory() -> None:
  # glibc keeps what the writer threads freed in their arenas (1.8 GB after saving a 7 GB
  # state): hand it back, so the process's RSS is its live data again.
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


def writable_manager(directory: str, *, window: int | None = None) -> ocp.CheckpointManager:
  """A manager for a run that will save: the directory is created and tried with a probe
  file first, so a path that is a file or cannot be written fails now with a
  CheckpointError, not in orbax's background threads after an epoch of training (where the
  failure left the process hanging)."""
  path = os.path.abspath(directory)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, ".jslide_write_probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise CheckpointError(f"{directory}: cannot write checkpoints there ({e.strerror})") from None
  return manager(path, window=window)


def lock(directory: str):
  """An exclusive lock on the checkpoint directory (``.jslide.lock`` in it), held until the
  returned file is closed (or the process ends): CheckpointError if another run holds it,
  since two runs saving into one directory would delete each other's steps."""
  import fcntl
  f = open(os.path.join(os.path.abspath(directory), ".jslide.lock"), "w")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.close()
    raise CheckpointError(f"{directory}: another run is saving checkpoints there; wait for it "
                          "to finish or use another directory") from None
  return f


def refuse_to_overwrite(mgr: ocp.CheckpointManager, directory: str, overwrite: bool) -> None:
  """A new run (not ``--resume``) in a directory that holds checkpoints deletes them only with
  ``overwrite``; otherwise CheckpointError, so one run never silently erases another."""
  steps = list(mgr.all_steps())
  if steps and not overwrite:
    raise CheckpointError(f"{directory} holds checkpoints of another run (latest step "
                          f"{max(steps)}): pass --resume to continue it, or --overwrite to "
                          "delete them and start over")
  for step in steps:
    mgr.delete(step)


def save(mgr: ocp.CheckpointManager, state, meta: dict) -> None:
  """Saves state at its step with meta (model config, epoch, next batch, flags). ``mgr``'s
  window (:func:`manager`) must hold the state's largest array (:func:`save_window`).

  A checkpoint already at that step is replaced: a step checkpoint that falls on an epoch's
  last step is followed by the end-of-epoch one (whose meta says the epoch is done), and a
  resumed run may reach a step its best-epoch checkpoint already holds.
  """
  need = save_window(state)
  if need > getattr(mgr, "jslide_save_window", need):  # orbax would fail in its threads
    raise ValueError(f"checkpoint.save: the state has an array of {need:,} bytes, over the "
                     f"manager's save window of {mgr.jslide_save_window:,}; open the "
                     f"manager with manager(directory, window=save_window(state))")
  step = int(np.ravel(np.asarray(state.step))[0])  # a scalar, or one per row shard (equal)
  if step in mgr.all_steps():
    mgr.delete(step)
  args = _ocp().args
  mgr.save(step, args=args.Composite(state=args.StandardSave(state), meta=args.JsonSave(meta)),
           force=True)
  mgr.wait_until_finished()
  _release_freed_memory()
  _write_checksums(str(mgr.directory), step)


def _checksum_file(directory: str, step: int) -> str:
  return os.path.join(directory, "checksums", f"{step}.json")


def _digests(step_dir: str) -> dict[str, str]:
  """SHA-256 of every file under a step's directory, by relative path."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      out[os.path.relpath(path, step_dir)] = h.hexdigest()
  return out


def _write_checksums(directory: str, step: int) -> None:
  os.makedirs(os.path.join(directory, "checksums"), exist_ok=True)
  path = _checksum_file(directory, step)
  with open(path + ".tmp", "w") as f:
    json.dump(_digests(os.path.join(directory, str(step))), f)
  os.replace(path + ".tmp", path)  # atomic: a crash leaves the old file or the new one
  kept = {str(s) for s in _ocp().CheckpointManager(
      directory, options=_ocp().CheckpointManagerOptions(
          multiprocessing_options=_this_process_only(), create=False)).all_steps()}
  for name in os.listdir(os.path.join(directory, "checksums")):
    if name.endswith(".json") and name[:-5] not in kept:
      os.remove(os.path.join(directory, "checksums", name))


def _damage(directory: str, step: int) -> str | None:
  """Why step's files differ from their checksums (None when they match, or when the step
  predates checksums)."""
  path = _checksum_file(directory, step)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      want = json.load(f)
  except (OSError, ValueError):
    return "its checksum file is unreadable"
  have = _digests(os.path.join(directory, str(step)))
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      return f"{name} is {'missing' if name not in have else 'changed'}"
  return None


_REPORTED: set[tuple[str, int]] = set()


def restore_newest_intact(directory: str, load):
  """``(load(mgr, step), step)`` for the newest step whose files match their checksums and
  that ``load`` restores. A CheckpointError from ``load`` (a checkpoint of another run) is
  raised as it is; any other exception marks the step damaged, and the next older one is
  tried. Each file is hashed once per call. Reading never creates ``directory``."""
  if not os.path.isdir(directory):
    raise CheckpointError(f"{directory}: no checkpoint found (no such directory)")
  mgr = manager(directory)
  steps = sorted(mgr.all_steps(), reverse=True)
  if not steps:
    raise CheckpointError(f"{directory}: no checkpoint found")
  skipped = []
  for step in steps:
    reason = _damage(str(mgr.directory), step)
    if reason is None:
      try:
        loaded = load(mgr, step)
      except CheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types
        reason = f"orbax cannot restore it ({type(e).__name__})"
    if reason is None:
      for bad, why in skipped:
        if (directory, bad) not in _REPORTED:
          _REPORTED.add((directory, bad))
          print(f"jslide: checkpoint step {bad} in {directory} is damaged ({why}); using "
                f"step {step}", file=sys.stderr)
      return loaded, step
    skipped.append((step, reason))
  raise CheckpointError(f"{directory}: no intact checkpoint (" +
                        "; ".join(f"step {s}: {why}" for s, why in skipped) + ")")


def _load_meta(mgr: ocp.CheckpointManager, step: int) -> dict:
  args = _ocp().args
  return mgr.restore(step, args=args.Composite(meta=args.JsonRestore())).meta


def read_meta(directory: str) -> dict:
  """The meta of the newest intact checkpoint."""
  return restore_newest_intact(directory, _load_meta)[0]


def restore_checked(directory: str, state_like, check_meta):
  """(state, meta) of the newest intact checkpoint, the state shaped like ``state_like``.
  ``check_meta(meta)`` raises CheckpointError for a checkpoint this run cannot continue, and
  runs before the state is read."""
  abstract = jax.tree.map(_ocp().utils.to_shape_dtype_struct, state_like)

  def load(mgr, step):
    meta = _load_meta(mgr, step)
    check_meta(meta)
    args = _ocp().args
    restored = mgr.restore(step, args=args.Composite(state=args.StandardRestore(abstract)))
    return restored.state, meta

  return restore_newest_intact(directory, load)[0]


def check_same_run(directory: str, meta: dict, wanted: dict, run_cls) -> None:
  """CheckpointError unless the checkpoint's ``meta`` continues the run ``wanted``
  (``{"model": ..., "run": ..., "data": ...}``, as :func:`jslide.train.fit` saves them):
  the same model and data, and the same run settings but those a resumed run may change
  (``resumable`` in :func:`jslide.train.option`: epochs, limits, how often to evaluate)."""
  from jslide.train.config import changed_on_resume
  for section, what in (("model", "another model"), ("data", "other data"),
                        ("run", "other run settings")):
    saved, want = meta.get(section) or {}, wanted.get(section) or {}
    if section == "run":
      diff = changed_on_resume(run_cls, saved, want)
    else:
      diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if diff:
      listed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(diff.items()))
      raise CheckpointError(f"{directory}: the checkpoint is of a run with {what} ({listed}); "
                            "resume with the same settings, or start over with --overwrite")
