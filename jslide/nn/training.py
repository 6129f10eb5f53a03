"""A jitted training step for models with LSH-sparse layers and row-sparse tables."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jslide import losses, lsh, optim
from jslide._autodiff import value_and_grad
from jslide.nn.sparse_dense import SparseDense
from jslide.nn.softmax_head import SparseSoftmaxHead
from jslide.nn.sparse_ffn import SparseFFN
from jslide.nn.variables import Table

# (tables, dense params): tables get row-sparse gradients, the rest dense ones.
TABLES_FIRST = (True, False)


class TrainState(NamedTuple):
  tables: nnx.State        # every Table
  params: nnx.State        # every other nnx.Param
  rest: nnx.State          # everything else (LSH indices, counters)
  opt_state: Any
  rebuild: lsh.RebuildState
  step: jax.Array          # int32 steps taken


def split_model(model: nnx.Module):
  """(graphdef, tables, params, rest) of a model."""
  return nnx.split(model, Table, nnx.Param, ...)


def default_forward(model, batch, key):
  """``model(feat_ids, feat_vals, labels, key=key)`` for :class:`jslide.nn.SparseMLP`."""
  return model(batch["feat_ids"], batch["feat_vals"], batch["labels"], key=key)


def rebuild_indices(model: nnx.Module) -> None:
  """Rebuilds the LSH index of every layer of model that has one (:class:`SparseDense`,
  :class:`SparseFFN`, :class:`SparseSoftmaxHead`) from its current weights."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, (SparseDense, SparseFFN, SparseSoftmaxHead)):
      module.rebuild_index()


def _loss_and_state(graphdef, per_example: Callable) -> Callable:
  """``loss_fn(trainable, rest, batch, key) -> (loss, rest)``, for ``has_aux=True``: the
  masked mean of ``per_example(model, batch, key)`` and the state the forward moved
  (a :class:`jslide.nn.RouteBias`)."""

  def loss_fn(trainable, rest, batch, key):
    # Fresh Variables: NNX lets a forward pass move a Variable only at the trace level it
    # was made at, and a non-differentiated argument of jax.grad keeps the outer one.
    model = nnx.merge(graphdef, *trainable, jax.tree.map(lambda x: x, rest))
    value = masked_mean(per_example(model, batch, key), batch["mask"])
    return value, split_model(model)[3]

  return loss_fn


LOSSES = {"softmax": losses.active_softmax_cross_entropy,
          "bce": losses.active_binary_cross_entropy}


def _skip_nonfinite(tx) -> optim.FiniteStep:
  # A step with a NaN or inf gradient changes nothing (metrics["finite"] is False), so the
  # caller can stop with the state intact; the kernels would refuse it with an error.
  return optim.apply_updates_if_finite(tx, max_consecutive_errors=jnp.iinfo(jnp.int32).max - 1)


def make_train_step(model: nnx.Module, *, table_tx: optax.GradientTransformation | None = None,
                    dense_tx: optax.GradientTransformation | None = None,
                    loss: str | Callable = "softmax", forward: Callable = default_forward,
                    schedule: lsh.RebuildSchedule = lsh.RebuildSchedule()):
  """Builds ``(graphdef, state, step)`` where ``step(state, batch, key) -> (state, metrics)``.

  ``loss`` is ``"softmax"`` or ``"bce"`` over the active set that ``forward`` scores, or any
  callable ``loss(model, batch, key) -> f32[B]`` (per-example losses; e.g. the binary
  cross-entropy of a :class:`jslide.nn.DLRM`'s logits), ``forward`` then unused.

  The step is one ``jax.jit`` with the whole state donated: tables are updated in place by
  ``table_tx`` (default ``sparse_adam(1e-3, catch_up=True)``, see docs/design.md for why) from
  row-sparse gradients, every other
  parameter by ``dense_tx`` (default ``optax.adam(1e-3)``), and the LSH indices are rebuilt
  when ``schedule`` says so (through ``lax.cond``: no retracing). ``forward(model, batch,
  key)`` returns (logits, active ids); ``batch`` is a dict with ``labels`` int32[B, L] and
  ``mask`` bool[B] (padding rows) besides what ``forward`` reads. Any nnx.Module encoder
  can sit below the sparse layer: its parameters train through ``dense_tx``.

  A step whose gradients are not all finite is skipped (:func:`jslide.optim.apply_if_finite`):
  the state comes back unchanged and ``metrics["finite"]`` is False.
  """
  if callable(loss):
    per_example = loss
  elif loss in LOSSES:
    def per_example(model, batch, key, active_loss=LOSSES[loss]):
      logits, ids = forward(model, batch, key)
      return active_loss(logits, ids, batch["labels"])
  else:
    raise ValueError(f"make_train_step: loss must be one of {sorted(LOSSES)} or a callable, "
                     f"got {loss!r}")
  graphdef, tables, params, rest = split_model(model)
  tx = _skip_nonfinite(optim.partition(table_tx or optim.sparse_adam(1e-3, catch_up=True),
                                       dense_tx or optax.adam(1e-3), TABLES_FIRST))
  state = TrainState(tables, params, rest, tx.init((tables, params)), schedule.init(),
                     jnp.zeros([], jnp.int32))

  loss_fn = _loss_and_state(graphdef, per_example)

  def rebuild(tables, params, rest):
    model = nnx.merge(graphdef, tables, params, rest)
    rebuild_indices(model)
    return split_model(model)[3]

  def step(state: TrainState, batch, key):
    trainable = (state.tables, state.params)
    (value, rest), grads = value_and_grad(loss_fn, tables=TABLES_FIRST, has_aux=True)(
        trainable, state.rest, batch, key)
    (tables, params), opt_state = tx.apply(grads, state.opt_state, trainable)
    due, rebuild_state = schedule.update(state.rebuild, state.step)
    rest = jax.lax.cond(due, rebuild, lambda t, p, r: r, tables, params, rest)
    new = TrainState(tables, params, rest, opt_state, rebuild_state, state.step + 1)
    return new, {"loss": value, "rebuilt": due, "finite": opt_state.last_finite}

  return graphdef, state, jax.jit(step, donate_argnums=(0,))


def make_dense_train_step(model: nnx.Module, *, tx: optax.GradientTransformation | None = None):
  """The dense baseline for an encoder + ``SparseDense`` model (e.g. :class:`SparseMLP`).

  The same model and batches, but every output neuron is scored (``model.output.exact``),
  the loss is the softmax cross-entropy over all labels, gradients are dense
  (``jax.value_and_grad``) and every parameter, tables included, is updated by ``tx``
  (default ``optax.adam(1e-3)``). Returns ``(graphdef, state, step)`` like
  :func:`make_train_step` (non-finite steps skipped the same way); the LSH index is left as
  it is.
  """

  def per_example(model, batch, key):
    del key
    logits = model.output.exact(model.encode(batch["feat_ids"], batch["feat_vals"]))
    return losses.softmax_cross_entropy(logits, batch["labels"])

  return dense_gradient_step(model, per_example, tx)


def masked_mean(per_example, mask):
  """The mean of f32[B] over the examples where mask (bool[B]) is True (0 when none is)."""
  mask = mask.astype(per_example.dtype)
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def dense_gradient_step(model: nnx.Module, per_example: Callable,
                        tx: optax.GradientTransformation | None = None):
  """``(graphdef, state, step)`` for the baselines: every parameter, tables included, is
  updated by ``tx`` (default ``optax.adam(1e-3)``, non-finite steps skipped) from dense
  ``jax.value_and_grad`` gradients of the masked mean of ``per_example(model, batch, key)``
  (f32[B]); one jit with the state donated; the LSH index is left as it is."""
  graphdef, tables, params, rest = split_model(model)
  tx = _skip_nonfinite(tx or optax.adam(1e-3))
  state = TrainState(tables, params, rest, tx.init((tables, params)),
                     lsh.RebuildSchedule().init(), jnp.zeros([], jnp.int32))

  loss_fn = _loss_and_state(graphdef, per_example)

  def step(state: TrainState, batch, key):
    trainable = (state.tables, state.params)
    (value, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, state.rest, batch, key)
    (tables, params), opt_state = tx.apply(grads, state.opt_state, trainable)
    new = state._replace(tables=tables, params=params, rest=rest, opt_state=opt_state,
                         step=state.step + 1)
    return new, {"loss": value, "rebuilt": jnp.zeros([], bool),
                 "finite": opt_state.last_finite}

  return graphdef, state, jax.jit(step, donate_argnums=(0,))


@functools.partial(jax.jit, donate_argnums=(0,))
def catch_up_train_state(state: TrainState) -> TrainState:
  """The state with every table row brought up to date by :func:`jslide.optim.catch_up`
  (a no-op without ``sparse_adam(..., catch_up=True)``).

  O(N D): call it before evaluating or saving, not every step. ``state`` is donated.
  """
  (tables, params), opt_state = optim.catch_up((state.tables, state.params), state.opt_state)
  return state._replace(tables=tables, params=params, opt_state=opt_state)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def rebuild_train_state(graphdef, state: TrainState) -> TrainState:
  """The state with every LSH index rebuilt from the current weights (``state`` donated):
  before evaluating or serving, so retrieval sees the weights it scores."""
  model = merge(graphdef, state)
  rebuild_indices(model)
  return state._replace(rest=split_model(model)[3])


def merge(graphdef, state: TrainState) -> nnx.Module:
  """The model that a TrainState holds."""
  return nnx.merge(graphdef, state.tables, state.params, state.rest)
