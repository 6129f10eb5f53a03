"""Checkpoints of a training run with orbax: the full TrainState plus where the run stood."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from jslide.xc.config import ModelConfig


class CheckpointError(ValueError):
  """A checkpoint that does not fit the requested run."""


def manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(os.path.abspath(directory),
                               options=ocp.CheckpointManagerOptions(max_to_keep=2))


def writable_manager(directory: str) -> ocp.CheckpointManager:
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
  return manager(path)


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


def check_data_order(directory: str, saved: dict | None, current: dict) -> None:
  """CheckpointError when what fixes the order of the batches (batch size, seed, examples,
  features and labels kept) differs from the run being resumed: resuming would skip or
  repeat examples."""
  if saved is None:
    return
  diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
  if diff:
    listed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(diff.items()))
    raise CheckpointError(f"{directory}: the checkpoint's run read its data in another order "
                          f"({listed}); resume with the same settings")


def save(mgr: ocp.CheckpointManager, state, meta: dict) -> None:
  """Saves state at its step with meta (model config, epoch, next batch, flags).

  A checkpoint already at that step is replaced: a step checkpoint that falls on an epoch's
  last step is followed by the end-of-epoch one (whose meta says the epoch is done), and a
  resumed run may reach a step its best-epoch checkpoint already holds.
  """
  step = int(state.step)
  if step in mgr.all_steps():
    mgr.delete(step)
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         meta=ocp.args.JsonSave(meta)), force=True)
  mgr.wait_until_finished()


def read_meta(directory: str) -> dict:
  mgr = manager(directory)
  step = mgr.latest_step()
  if step is None:
    raise CheckpointError(f"{directory}: no checkpoint found")
  return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore(directory: str, state_like, config: ModelConfig, dense: bool,
            catch_up: bool = False, sampled: int = 0):
  """(state, meta) of the latest checkpoint, after checking it was made by this architecture
  and optimizer."""
  mgr = manager(directory)
  step = mgr.latest_step()
  if step is None:
    raise CheckpointError(f"{directory}: no checkpoint found")
  meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  saved = ModelConfig.from_json(meta["model"])
  if saved != config:
    raise CheckpointError(f"{directory}: checkpoint is for another architecture:\n"
                          f"  saved:     {saved}\n  requested: {config}")
  if bool(meta.get("dense")) != dense:
    raise CheckpointError(f"{directory}: checkpoint was trained with dense={meta.get('dense')}")
  if int(meta.get("sampled", 0)) != sampled:
    raise CheckpointError(f"{directory}: checkpoint was trained with "
                          f"sampled={meta.get('sampled', 0)}")
  if not (dense or sampled) and bool(meta.get("catch_up", False)) != catch_up:
    raise CheckpointError(f"{directory}: checkpoint was trained with "
                          f"catch_up={meta.get('catch_up', False)} (its optimizer state differs)")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
  restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  return restored.state, meta
