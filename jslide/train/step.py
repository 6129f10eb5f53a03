"""Jitted training steps for Flax NNX models with row-sparse tables and LSH indices.

A step is built from a model and a loss ``loss(model, batch, key) -> (values, mask)``: the
per-example losses f32[...] and which of them count, bool[...] of the same shape (padding
rows False). The step minimizes their masked mean; the batch is whatever the loss reads.
Every module of the model that holds an :class:`jslide.nn.Index` is rebuilt on the step's
:class:`jslide.lsh.RebuildSchedule`, whatever its class.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jslide import losses, lsh, optim, parallel, row_sharded
from jslide import tree as jtree
from jslide._autodiff import value_and_grad
from jslide.nn.variables import Index, Table
from jslide.rowsparse import is_row_sparse

# (tables, dense params): tables get row-sparse gradients, the rest dense ones.
TABLES_FIRST = (True, False)

Loss = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, jax.Array]]


class TrainState(NamedTuple):
  """A model split for training, with its optimizer and rebuild state."""

  tables: nnx.State        # every Table
  params: nnx.State        # every other nnx.Param
  rest: nnx.State          # everything else (LSH indices, counters)
  opt_state: Any
  rebuild: lsh.RebuildState
  step: jax.Array          # int32 steps taken

  def model(self, graphdef) -> nnx.Module:
    """The model this state holds (``graphdef`` from the step builder)."""
    return nnx.merge(graphdef, self.tables, self.params, self.rest)


def split_model(model: nnx.Module):
  """(graphdef, tables, params, rest) of a model."""
  return nnx.split(model, Table, nnx.Param, ...)


def _holds_index(module: nnx.Module) -> bool:
  return any(isinstance(v, Index) for v in vars(module).values())


def rebuild_indices(model: nnx.Module) -> None:
  """Rebuilds the index of every module of ``model`` that holds an :class:`jslide.nn.Index`
  (its ``rebuild_index()``, from its current weights). A module holding an index without a
  ``rebuild_index`` method is refused (TypeError), so no index silently goes stale."""
  for _, module in nnx.iter_modules(model):
    if _holds_index(module):
      rebuild = getattr(module, "rebuild_index", None)
      if not callable(rebuild):
        raise TypeError(f"{type(module).__name__} holds an Index but has no rebuild_index() "
                        "method: training cannot keep its index up to date")
      rebuild()


def masked_mean(values, mask):
  """The mean of ``values`` f32[...] where ``mask`` (bool, same shape) is True (0 when none
  is)."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def active_set_loss(forward: Callable, per_example: Callable = losses.active_softmax_cross_entropy,
                    *, labels: str = "labels", mask: str = "mask") -> Loss:
  """The loss of a model that scores an active set per example.

  ``forward(model, batch, key) -> (logits f32[B, A], active ids int32[B, A])``;
  ``per_example(logits, ids, batch[labels])`` gives f32[B] (default
  :func:`jslide.losses.active_softmax_cross_entropy`; or
  :func:`jslide.losses.active_binary_cross_entropy`), counted where ``batch[mask]``.
  """

  def loss(model, batch, key):
    logits, ids = forward(model, batch, key)
    return per_example(logits, ids, batch[labels]), batch[mask]

  return loss


def _check_loss(fn: str, loss) -> None:
  if not callable(loss):
    raise TypeError(f"{fn}: loss must be a callable loss(model, batch, key) -> (values, mask), "
                    f"got {loss!r}")


def _loss_and_state(graphdef, loss: Loss) -> Callable:
  """``loss_fn(trainable, rest, batch, key) -> (loss, (count, rest))``, for
  ``has_aux=True``: the masked mean of ``loss(model, batch, key)``, how many values counted,
  and the state the forward moved (a :class:`jslide.nn.RouteBias`). In a data-parallel step
  (:func:`jslide.parallel.current_shard`) the loss is the masked *sum* of the device's share,
  divided once the shares' counts are summed."""

  def loss_fn(trainable, rest, batch, key):
    # Fresh Variables: NNX lets a forward pass move a Variable only at the trace level it
    # was made at, and a non-differentiated argument of jax.grad keeps the outer one.
    model = nnx.merge(graphdef, *trainable, jax.tree.map(lambda x: x, rest))
    values, mask = loss(model, batch, key)
    if jnp.shape(values) != jnp.shape(mask):
      raise ValueError(f"the loss returned values of shape {jnp.shape(values)} and a mask of "
                       f"shape {jnp.shape(mask)}; they must match")
    count = jnp.sum(mask.astype(jnp.float32))
    if parallel.current_shard() is not None:
      value = jnp.sum(values * mask.astype(values.dtype))
    else:
      value = masked_mean(values, mask)
    return value, (count, split_model(model)[3])

  return loss_fn


def _mean_move(new, old, axis: str):
  """``old`` moved by the mean over ``axis`` of ``new - old``, where any device moved it
  (elsewhere ``old`` as it was, an infinity included), the same on every device."""
  same = new == old
  delta = jnp.where(same, jnp.zeros_like(new), new - old)
  moved = jax.lax.pmax(jnp.logical_not(same).astype(jnp.int32), axis) > 0
  return jnp.where(moved, old + jax.lax.pmean(delta, axis), old)


def _data_parallel_gradient(gradient, axis: str, size: int):
  """``gradient`` (``value_and_grad`` of a :func:`_loss_and_state` loss) over a share of the
  batch on each of ``size`` devices of mesh axis ``axis``, summed over them
  (:func:`jslide.parallel.sum_gradients`): the masked mean and gradients of the whole batch,
  and the moved state averaged over the devices."""

  def run(loss_fn):
    def value_and_grads(trainable, rest, batch, key):
      with parallel.data_sharded(axis, size):
        (total, (count, moved)), grads = gradient(loss_fn)(trainable, rest, batch, key)
      count = jnp.maximum(jax.lax.psum(count, axis), 1.0)
      grads = jtree.scale(parallel.sum_gradients(grads, axis), 1.0 / count)
      # What the forward moved, by the mean of the devices' moves: a leaf no device moved
      # keeps its bits (a mean of equal values might round them apart).
      moved = jax.tree.map(lambda new, old: _mean_move(new, old, axis)
                           if jnp.issubdtype(new.dtype, jnp.floating) else new, moved, rest)
      return (jax.lax.psum(total, axis) / count, (count, moved)), grads

    return value_and_grads

  return run


# Optax's wrappers see a RowSparseGrad (ids, coefficients, vectors) or a TableUpdate (a new
# table, not a delta) as plain leaves, and fail with JAX's generic errors; say what works.
_SPARSE_TX_HINT = (
    "the optimizer failed on the row-sparse table gradients (jslide.RowSparseGrad) or on the "
    "sparse optimizer's TableUpdates. Optax transformations that clip, scale, accumulate or "
    "skip updates (optax.clip_by_global_norm, optax.MultiSteps, optax.apply_if_finite, "
    "optax.scale...) treat them as plain arrays. Use jslide.optim.clip_by_global_norm before "
    "jslide.optim.sparse_adam, jslide.optim.apply_if_finite, jslide.tree.add / "
    "jslide.tree.scale to accumulate gradients, and a schedule as the learning rate "
    "(jslide.optim's docstring)")


def _skip_nonfinite(tx) -> optim.FiniteStep:
  # A step with a NaN or inf gradient changes nothing (metrics["finite"] is False), so the
  # caller can stop with the state intact; the kernels would refuse it with an error.
  return optim.apply_updates_if_finite(tx, max_consecutive_errors=jnp.iinfo(jnp.int32).max - 1)


def _rebuilding(graphdef, schedule: lsh.RebuildSchedule | None):
  """``rebuild(state_before, tables, params, rest) -> (due, rebuild_state, rest)``."""

  def rebuild_all(tables, params, rest):
    model = nnx.merge(graphdef, tables, params, rest)
    rebuild_indices(model)
    return split_model(model)[3]

  def rebuild(state, tables, params, rest):
    if schedule is None:
      return jnp.zeros([], bool), state.rebuild, rest
    due, rebuild_state = schedule.update(state.rebuild, state.step)
    rest = jax.lax.cond(due, rebuild_all, lambda t, p, r: r, tables, params, rest)
    return due, rebuild_state, rest

  return rebuild


def _check_mesh(fn: str, mesh, axis: str, name: str = "data_axis") -> int:
  """The size of ``mesh``'s axis ``axis`` (TypeError / ValueError naming them)."""
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"{fn}: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
  if axis not in mesh.axis_names:
    raise ValueError(f"{fn}: {name} {axis!r} is not an axis of the mesh "
                     f"{tuple(mesh.axis_names)}")
  return int(mesh.shape[axis])


def _check_batch(fn: str, batch, axis: str, size: int) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
    shape = jnp.shape(leaf)
    if not shape or shape[0] % size:
      raise ValueError(f"{fn}: batch{jax.tree_util.keystr(path)} has shape {shape}; a "
                       f"data-parallel step splits every batch array's first dimension over "
                       f"the {size} devices of mesh axis {axis!r}, so it must be a multiple "
                       f"of {size}")


def _build(model, loss, tx, schedule, gradient, mesh=None, axis: str | None = "data",
           fn: str = "make_train_step", row_axis: str | None = None):
  graphdef, tables, params, rest = split_model(model)

  def init(tables, params, rest):
    return TrainState(tables, params, rest, tx.init((tables, params)),
                      (schedule or lsh.RebuildSchedule()).init(), jnp.zeros([], jnp.int32))

  loss_fn = _loss_and_state(graphdef, loss)
  rebuild = _rebuilding(graphdef, schedule)

  if row_axis is not None:
    if mesh is None:
      raise ValueError(f"{fn}: row_axis={row_axis!r} needs a mesh with that axis")
    shards = _check_mesh(fn, mesh, row_axis, "row_axis")
    _check_stacked(fn, (tables, params, rest), shards, row_axis)
    state = jax.vmap(init)(tables, params, rest)  # one optimizer state per shard
    if axis is not None and axis not in mesh.axis_names:
      axis = None  # row-sharded only
  else:
    if mesh is not None and axis is None:
      raise ValueError(f"{fn}: a mesh needs data_axis (data parallelism) or row_axis (tables "
                       "split by rows)")
    state = init(tables, params, rest)
  if mesh is not None and axis is not None:
    size = _check_mesh(fn, mesh, axis)
    if row_axis is not None and size == 1:
      axis = None  # a data axis of one device: nothing to exchange
    else:
      gradient = _data_parallel_gradient(gradient, axis, size)

  def step(state: TrainState, batch, key):
    trainable = (state.tables, state.params)
    (value, (_, rest)), grads = gradient(loss_fn)(trainable, state.rest, batch, key)
    try:
      (tables, params), opt_state = tx.apply(grads, state.opt_state, trainable)
    except (TypeError, ValueError) as e:  # raised while tracing, from inside Optax
      if any(is_row_sparse(g) for g in jax.tree.leaves(grads, is_leaf=is_row_sparse)):
        raise ValueError(_SPARSE_TX_HINT + f" (the error: {type(e).__name__}: {e})") from e
      raise
    due, rebuild_state, rest = rebuild(state, tables, params, rest)
    new = TrainState(tables, params, rest, opt_state, rebuild_state, state.step + 1)
    return new, {"loss": value, "rebuilt": due, "finite": opt_state.last_finite}

  if mesh is None:
    return graphdef, state, jax.jit(step, donate_argnums=(0,))
  P = jax.sharding.PartitionSpec
  state_spec, batch_spec = P(row_axis) if row_axis else P(), P(axis) if axis else P()
  if row_axis is not None:
    # Each device steps its own entry of the stacked state (its rows of the split layers,
    # a replica of the rest); the split layers' custom gradients make the replicas' updates
    # equal (jslide.row_sharded.shared_input).
    def local_step(state, batch, key):
      new, metrics = step(row_sharded.local_state(state), batch, key)
      return jax.tree.map(lambda x: x[None], new), metrics
  else:
    # The whole step on every device: its share of the batch in, the summed gradients
    # applied to its replica of the state (the same update everywhere, so the replicas stay
    # equal).
    local_step = step
  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(state_spec, batch_spec, P()),
                          out_specs=(state_spec, P()), check_vma=False)

  def place(tree, spec):
    """``tree`` laid out as ``spec`` on the mesh, as shard_map takes it: with explicit axes
    the layout is part of the type (``reshard``), with automatic ones a constraint."""
    named = jax.sharding.NamedSharding(mesh, spec)
    if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
      return jax.sharding.reshard(tree, named)
    return jax.lax.with_sharding_constraint(tree, named)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def parallel_step(state: TrainState, batch, key):
    if axis is not None:
      _check_batch(fn, batch, axis, size)  # shapes: checked while tracing
    return sharded(place(state, state_spec), place(batch, batch_spec), place(key, P()))

  # (jax.device_put of a process's own arrays onto a mesh of several processes makes arrays
  # whose replicas cannot be read back one by one: placed from host copies instead.)
  return graphdef, parallel.placed(state, mesh, state_spec), parallel_step


def _check_stacked(fn: str, tree, shards: int, axis: str) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != shards:
      raise ValueError(f"{fn}: a row-sharded step takes a model split by "
                       f"jslide.row_sharded.split_rows(model, {shards}, {axis!r}), whose every "
                       f"variable has a leading axis of {shards} (the size of mesh axis "
                       f"{axis!r}); {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}")


def make_train_step(model: nnx.Module, loss: Loss, *,
                    table_tx: optax.GradientTransformation | None = None,
                    dense_tx: optax.GradientTransformation | None = None,
                    schedule: lsh.RebuildSchedule | None = lsh.RebuildSchedule(),
                    mesh: jax.sharding.Mesh | None = None, data_axis: str | None = "data",
                    row_axis: str | None = None):
  """``(graphdef, state, step)`` where ``step(state, batch, key) -> (state, metrics)``.

  ``loss(model, batch, key) -> (values, mask)``: per-example losses and the mask of those
  that count (:func:`active_set_loss` builds one for a model scoring an active set). The
  step is one ``jax.jit`` with the whole state donated: tables are updated in place by
  ``table_tx`` (default ``sparse_adam(1e-3, catch_up=True)``, docs/concepts/adam.md) from
  row-sparse gradients, every other parameter by ``dense_tx`` (default
  ``optax.adam(1e-3)``), and every index of the model is rebuilt when ``schedule`` says so
  (through ``lax.cond``: no retracing; None: never).

  A step whose gradients are not all finite is skipped (:func:`jslide.optim.apply_if_finite`):
  the state comes back unchanged and ``metrics["finite"]`` is False. ``metrics["loss"]`` is
  the masked mean, ``metrics["rebuilt"]`` whether the indices were rebuilt after the step.

  With a ``mesh``, the step is data-parallel over its axis ``data_axis``
  (:mod:`jslide.parallel`): each device takes an equal share of the batch (every batch
  array's first dimension, which must divide evenly), the shares' row-sparse gradients are
  exchanged in factored form and the dense ones all-reduced, and every device applies the
  same update to its replica of the state (returned placed on the mesh, replicated). The
  step computes what the one-device step computes on the whole batch, to float rounding.

  With ``row_axis`` (an axis of ``mesh``), the model is one that
  :func:`jslide.row_sharded.split_rows` split over that axis: each device holds and updates
  only its rows of the split layers (their tables, optimizer state and index: 1/size of
  each), and a replica of everything else; the state comes back stacked and placed on the
  mesh (every leaf's leading axis over ``row_axis``). The loss must form the softmax over
  the shards (:func:`jslide.row_sharded.active_softmax_cross_entropy`). The batch is
  split over ``data_axis`` too when the mesh has that axis (data and rows on a 2-D mesh),
  else every device takes the whole batch.
  """
  _check_loss("make_train_step", loss)
  tx = _skip_nonfinite(optim.partition(table_tx or optim.sparse_adam(1e-3, catch_up=True),
                                       dense_tx or optax.adam(1e-3), TABLES_FIRST))
  gradient = functools.partial(value_and_grad, tables=TABLES_FIRST, has_aux=True)
  return _build(model, loss, tx, schedule, gradient, mesh, data_axis, row_axis=row_axis)


def make_dense_train_step(model: nnx.Module, loss: Loss, *,
                          tx: optax.GradientTransformation | None = None,
                          schedule: lsh.RebuildSchedule | None = None,
                          mesh: jax.sharding.Mesh | None = None, data_axis: str = "data"):
  """:func:`make_train_step` with dense gradients: every parameter, tables included, is
  updated by ``tx`` (default ``optax.adam(1e-3)``) from ``jax.value_and_grad``; the
  baselines a JAX user writes. Indices are rebuilt on ``schedule`` (default None: never,
  for a baseline that does not read them). ``mesh`` and ``data_axis`` as there (the
  all-reduce of every gradient, dense tables included: the program a JAX user writes)."""
  _check_loss("make_dense_train_step", loss)
  gradient = functools.partial(jax.value_and_grad, has_aux=True)
  return _build(model, loss, _skip_nonfinite(tx or optax.adam(1e-3)), schedule, gradient,
                mesh, data_axis, "make_dense_train_step")


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
  model = state.model(graphdef)
  rebuild_indices(model)
  return state._replace(rest=split_model(model)[3])


def state_updates(graphdef, mesh: jax.sharding.Mesh | None = None, row_axis: str = "rows"):
  """``(catch_up, rebuild)``: :func:`catch_up_train_state` and :func:`rebuild_train_state`
  of a state, each jitted with the state donated (what a trainer runs before evaluating).
  With ``mesh``: of a state split by rows over its axis ``row_axis``
  (:func:`jslide.row_sharded.split_rows`), each device updating its own entry."""
  rebuild = jax.jit(functools.partial(rebuild_train_state, graphdef), donate_argnums=0)
  if mesh is None:
    return catch_up_train_state, rebuild
  return (row_sharded.each_shard(catch_up_train_state, mesh, row_axis, returns_state=True),
          row_sharded.each_shard(rebuild, mesh, row_axis, returns_state=True))
