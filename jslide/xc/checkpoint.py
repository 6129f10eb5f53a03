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
