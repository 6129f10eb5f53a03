"""Checkpoints of a language-model run: the xc trainer's orbax layout (state + JSON meta)."""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from jslide.xc.checkpoint import (CheckpointError, read_meta, refuse_to_overwrite,
                                  restore_newest_intact, save, writable_manager)

__all__ = ["CheckpointError", "read_meta", "refuse_to_overwrite", "restore_state", "save",
           "writable_manager"]


def restore_state(directory: str, state_like):
  """(state, meta) of the newest intact checkpoint, the state shaped like ``state_like``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
  restored, _ = restore_newest_intact(directory, lambda: ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta
