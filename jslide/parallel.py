"""Data parallelism over one axis of a device mesh, with row-sparse gradient exchange.

Each device of the axis takes an equal share of every batch (its rows, in order), computes
the loss and gradients of its share, and the shares' gradients are summed: dense ones by an
all-reduce (``psum``), row-sparse ones (:class:`jslide.RowSparseGrad`) by gathering their
factors (ids, coefficients, vectors) from every device and stacking them, O(devices x rows x
(active + D)) numbers instead of the all-reduce of an [N, D] table a plain ``pjit`` program
would do. Every device then applies the same update to its replica of the parameters, so the
replicas stay identical without sending them.

A training step is the same computation on any number of devices (to float rounding):
while a data-parallel step is traced (:func:`data_sharded`), jslide's random choices that
depend on an example's place in the batch (LSH queries' random fill, a shared fill group)
use its place in the *whole* batch (:func:`first_example`), and the batch's label sample
that every example shares (``SparseDense(batch_negatives=...)``) is drawn from the whole
batch's labels (:func:`gather_examples`).

The mesh may span processes (``jax.distributed.initialize``): the collectives are XLA's.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jslide.rowsparse import RowSparseGrad, is_row_sparse

__all__ = ["DataShard", "current_shard", "data_sharded", "exchange_bytes", "first_example",
           "gather_examples", "gather_rows", "global_batch", "placed", "replicated", "sum_gradients",
           "whole_batch"]


@dataclasses.dataclass(frozen=True)
class DataShard:
  """The mesh axis a data-parallel step splits its batch over, and its size."""

  axis: str
  size: int


_SHARD: contextvars.ContextVar[DataShard | None] = contextvars.ContextVar("jslide_data_shard",
                                                                         default=None)


@contextlib.contextmanager
def data_sharded(axis: str, size: int):
  """While tracing a function that ``shard_map`` runs on ``size`` devices of mesh axis
  ``axis``, each with its share of the batch: jslide's batch-dependent choices use the whole
  batch (:func:`first_example`, :func:`gather_examples`)."""
  token = _SHARD.set(DataShard(axis, int(size)))
  try:
    yield
  finally:
    _SHARD.reset(token)


def current_shard() -> DataShard | None:
  """The data-parallel axis being traced (:func:`data_sharded`), or None."""
  return _SHARD.get()


def first_example(local_batch: int) -> jax.Array:
  """int32[1]: the number, in the whole batch, of this device's first example (its share is
  ``local_batch`` rows); 0 outside a data-parallel step."""
  shard = current_shard()
  if shard is None:
    return jnp.zeros((1,), jnp.int32)
  return jnp.reshape(jax.lax.axis_index(shard.axis) * local_batch, (1,)).astype(jnp.int32)


def whole_batch(local_batch: int) -> int:
  """The whole batch's size: ``local_batch`` times the data-parallel axis's size (1 outside
  a data-parallel step)."""
  shard = current_shard()
  return local_batch * (shard.size if shard else 1)


def gather_examples(x: jax.Array) -> jax.Array:
  """``x`` [local_batch, ...] of every device of the data-parallel axis, stacked in batch
  order ([whole batch, ...]); ``x`` itself outside a data-parallel step."""
  shard = current_shard()
  return x if shard is None else jax.lax.all_gather(x, shard.axis, tiled=True)


def global_batch(batch, mesh: jax.sharding.Mesh, axis: str = "data"):
  """``batch`` (a pytree of host arrays: the whole batch, the same on every process) as
  global arrays split over mesh axis ``axis`` by their first dimension: each process keeps
  only the rows of its own devices. What a data-parallel step takes when its mesh spans
  processes (``jax.distributed.initialize``); on one process it only places the rows."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, batch)


def replicated(tree, mesh: jax.sharding.Mesh):
  """``tree`` (host values, the same on every process, e.g. a key or a state) as global
  arrays held whole by every device of ``mesh``."""
  return placed(tree, mesh, jax.sharding.PartitionSpec())


def placed(tree, mesh: jax.sharding.Mesh, spec: jax.sharding.PartitionSpec):
  """``tree`` (host values, the same on every process) as global arrays laid out on ``mesh``
  as ``spec`` says (each process making only its own devices' parts)."""
  sharding = jax.sharding.NamedSharding(mesh, spec)

  def place(x):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(place(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    if isinstance(x, jax.core.Tracer):  # traced (e.g. jax.eval_shape of a step builder)
      if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return jax.sharding.reshard(x, sharding)
      return jax.lax.with_sharding_constraint(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, tree)


def gather_rows(g: RowSparseGrad, axis: str, gathered: dict | None = None) -> RowSparseGrad:
  """The sum over the devices of ``axis`` of their row-sparse gradients, kept factored: each
  device's (ids, coefficients, vectors) gathered and stacked. A zero gradient
  (``optax.tree.zeros_like``, unit 0 and zero coefficients) stays valid beside real ones.
  ``gathered``: factors already gathered, by ``id`` of the array (a layer's kernel and bias
  gradients share their ids and coefficients: sent once)."""
  gathered = {} if gathered is None else gathered

  def gather(x):
    if id(x) not in gathered:
      gathered[id(x)] = (x, jax.lax.all_gather(x, axis, tiled=True))  # x kept: its id stays
    return gathered[id(x)][1]

  return RowSparseGrad(gather(g.ids), gather(g.coef), gather(g.vecs), g.num_rows,
                       unit=jax.lax.pmax(g.unit, axis), window=g.window)


def _gather_packed(arrays: list, axis: str) -> list:
  """``all_gather(x, axis, tiled=True)`` of every array of ``arrays`` (32-bit dtypes, a
  leading dimension each) in one collective: their bits packed into one flat buffer, gathered,
  and unpacked. One all-gather instead of one per array: across processes each collective
  costs a round trip (gloo over TCP), whatever its size."""
  if not arrays:
    return []
  flat = [jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1) for x in arrays]
  whole = jax.lax.all_gather(jnp.concatenate(flat), axis)  # [devices, total]
  out, start = [], 0
  for x, f in zip(arrays, flat):
    part = whole[:, start:start + f.size].reshape(whole.shape[0], *x.shape)
    part = part.reshape(whole.shape[0] * x.shape[0], *x.shape[1:])
    out.append(jax.lax.bitcast_convert_type(part, x.dtype))
    start += f.size
  return out


def sum_gradients(grads, axis: str):
  """``grads`` (a pytree of arrays and :class:`jslide.RowSparseGrad`) summed over the devices
  of mesh axis ``axis``: arrays by ``psum``, row-sparse gradients as :func:`gather_rows` sums
  them (each factor array once, however many gradients share it), every 32-bit factor of
  every gradient gathered in one all-gather."""
  leaves = jax.tree.leaves(grads, is_leaf=is_row_sparse)
  factors: dict = {}
  for g in leaves:
    if is_row_sparse(g):
      for x in (g.ids, g.coef, g.vecs):
        if jnp.dtype(x.dtype).itemsize == 4 and jnp.ndim(x) >= 1:
          factors.setdefault(id(x), x)
  packed = _gather_packed(list(factors.values()), axis)
  gathered = {k: (x, y) for (k, x), y in zip(factors.items(), packed)}  # x kept: its id stays
  return jax.tree.map(lambda g: gather_rows(g, axis, gathered) if is_row_sparse(g)
                      else jax.lax.psum(g, axis), grads, is_leaf=is_row_sparse)


def exchange_bytes(grads, devices: int) -> dict:
  """What each device sends per step to sum ``grads`` (one device's gradients, or their
  shapes) over ``devices`` devices, in bytes, and what the same sum would send with every
  gradient dense. A ring all-reduce of B bytes sends ``2 (devices - 1) / devices * B`` per
  device; an all-gather of a device's B bytes sends ``(devices - 1) * B``.

  Returns ``{"row_sparse": sent by :func:`sum_gradients`, "dense": sent by an all-reduce of
  every gradient as an array, "row_sparse_factors": the bytes of the factors}``. A factor
  array that several gradients share (the same object: a layer's kernel and bias share ids
  and coefficients, as traced) counts once, as :func:`sum_gradients` sends it once.
  """
  if devices < 1:
    raise ValueError(f"exchange_bytes: devices must be >= 1, got {devices}")
  ring = 2 * (devices - 1) / devices
  factors = reduced = dense = 0
  seen: set[int] = set()
  for g in jax.tree.leaves(grads, is_leaf=is_row_sparse):
    if is_row_sparse(g):
      for x in (g.ids, g.coef, g.vecs):
        if id(x) not in seen:
          seen.add(id(x))
          factors += math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
      dense += math.prod(g.shape) * jnp.dtype(jnp.float32).itemsize
    else:
      size = math.prod(jnp.shape(g)) * jnp.dtype(g.dtype).itemsize
      reduced += size
      dense += size
  return {"row_sparse": int((devices - 1) * factors + ring * reduced),
          "dense": int(ring * dense), "row_sparse_factors": int(factors)}
