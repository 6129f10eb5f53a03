"""What every jslide application shares: training steps, the training loop, run settings
and their command line, checkpoints and records.

- steps: :func:`make_train_step` (row-sparse tables, sparse Adam in place),
  :func:`make_dense_train_step` (the dense-gradient baselines), :class:`TrainState`,
  :func:`catch_up_train_state`, :func:`rebuild_train_state`, :func:`rebuild_indices`,
  :func:`split_model`, :func:`active_set_loss`, :func:`masked_mean`;
- the loop: :func:`fit` (evaluation, selection, limits, checkpoints, exact resume),
  :class:`Checkpoints`, :class:`Position`, :class:`NonFiniteLossError`;
- settings: :class:`RunConfig`, :func:`option`, :func:`add_arguments`, :func:`from_args`
  (a config's fields are its command-line options);
- :mod:`jslide.train.checkpoint` (orbax, with checksums and fallback to the newest intact
  step), :func:`write_json`, :func:`check_writable`;
- :mod:`jslide.train.distributed`: a run on several processes and hosts (the trainers'
  ``--processes``, ``--coordinator``, ``--cluster``);
- memory: :func:`step_peak_bytes` (a compiled step's peak, from XLA), :func:`check_fits`,
  :func:`available_bytes`, :class:`NotEnoughMemoryError`.

The applications (:mod:`jslide.xc`, :mod:`jslide.lm`) are built on it; it imports none of
them.
"""

from jslide.train import checkpoint, distributed
from jslide.train.checkpoint import CheckpointError
from jslide.train.config import RunConfig, add_arguments, from_args, option
from jslide.train.loop import Checkpoints, FitResult, NonFiniteLossError, Position, fit
from jslide.train.memory import NotEnoughMemoryError, available_bytes, check_fits, step_peak_bytes
from jslide.train.records import check_writable, write_json
from jslide.train.step import (TrainState, active_set_loss, catch_up_train_state,
                               make_dense_train_step, make_train_step, masked_mean,
                               rebuild_indices, rebuild_train_state, split_model,
                               state_updates)

__all__ = ["CheckpointError", "Checkpoints", "FitResult", "NonFiniteLossError",
           "NotEnoughMemoryError", "Position", "available_bytes", "check_fits",
           "step_peak_bytes",
           "RunConfig", "TrainState", "active_set_loss", "add_arguments", "catch_up_train_state",
           "check_writable", "checkpoint", "distributed", "fit", "from_args",
           "make_dense_train_step", "make_train_step", "masked_mean", "option", "rebuild_indices",
           "rebuild_train_state", "split_model", "state_updates", "write_json"]
