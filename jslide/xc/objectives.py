"""What the XC trainer minimizes: jslide's loss over an active set, and the two baselines a
JAX user writes instead. Each is an objective object (:class:`Sparse`, :class:`Dense`,
:class:`Sampled`) that carries its settings and builds its training step; its loss is a
``loss(model, batch, key) -> (values, mask)`` of a :class:`jslide.nn.SparseMLP` for
:func:`jslide.train.make_train_step` / :func:`jslide.train.make_dense_train_step`.

- jslide (:func:`active_set_loss`): the output layer's active set (the example's labels,
  labels of the batch, what the LSH index retrieves, random fill), row-sparse gradients;
- dense (:func:`full_softmax_loss`): every label scored;
- sampled softmax (:func:`sampled_softmax_loss`): the batch's own labels plus
  ``num_sampled`` labels drawn uniformly at random and shared by the batch (TensorFlow's
  ``sampled_softmax_loss`` with a uniform proposal and accidental hits removed; with a
  uniform proposal the logQ correction is a constant and drops out). Plain ``jnp.take``
  gathers, no index, no custom kernel.

The batch is a dict with ``feat_ids`` int32[B, F], ``feat_vals`` f32[B, F], ``labels``
int32[B, L] (-1 padding) and ``mask`` bool[B].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jslide import losses, lsh, optim, row_sharded
from jslide._checks import positive_int
from jslide.train.step import make_dense_train_step, make_train_step

LOSSES = {"softmax": losses.active_softmax_cross_entropy,
          "bce": losses.active_binary_cross_entropy}


def active_set_loss(loss: str = "softmax"):
  """jslide's loss: ``loss`` (``softmax`` or ``bce``) over the active set the model's output
  layer scores for each example."""
  if loss not in LOSSES:
    raise ValueError(f"active_set_loss: loss must be one of {sorted(LOSSES)}, got {loss!r}")

  def per_example(m, b, key):
    logits, ids = m(b["feat_ids"], b["feat_vals"], b["labels"], key=key)
    axis = m.output.row_axis
    if axis is None:
      return LOSSES[loss](logits, ids, b["labels"])
    if loss != "softmax":  # a per-id loss would need only a sum; not built
      raise ValueError(f"active_set_loss: a row-sharded output layer trains with loss "
                       f"'softmax', got {loss!r}")
    return row_sharded.active_softmax_cross_entropy(logits, ids, b["labels"], axis)

  return lambda m, b, key: (per_example(m, b, key), b["mask"])


def full_softmax_loss(model, batch, key):
  """The dense baseline's loss: the softmax cross-entropy over every label."""
  del key
  logits = model.output.exact(model.encode(batch["feat_ids"], batch["feat_vals"]))
  return losses.softmax_cross_entropy(logits, batch["labels"]), batch["mask"]


def plain_encode(model, feat_ids, feat_vals):
  """``model.encode`` (a :class:`jslide.nn.SparseMLP`) in plain JAX: the input layer as a
  ``jnp.take`` gather and a weighted sum."""
  rows = jnp.take(model.input.kernel.get_value(), jnp.maximum(feat_ids, 0), axis=0)
  vals = jnp.where(feat_ids >= 0, feat_vals, 0.0)
  h = jax.nn.relu(jnp.einsum("bf,bfd->bd", vals, rows) + model.input.bias.get_value())
  for layer in model.hidden:
    h = jax.nn.relu(layer(h))
  return h


def sampled_candidates(labels, num_sampled: int, num_labels: int, key):
  """int32[C]: the batch's distinct labels and ``num_sampled`` uniform labels, duplicates
  removed (-1 padding), C = B * L + num_sampled."""
  sampled = jax.random.randint(key, (num_sampled,), 0, num_labels, jnp.int32)
  both = jnp.concatenate([labels.reshape(-1).astype(jnp.int32), sampled])
  return jnp.unique(both, size=both.shape[0], fill_value=-1)


def sampled_softmax_loss(model, num_sampled: int):
  """The sampled-softmax baseline's loss for ``model``: the batch's labels plus
  ``num_sampled`` shared uniform labels, plain JAX throughout."""
  num_sampled = positive_int("sampled_softmax_loss", "num_sampled", num_sampled)
  num_labels = model.output.out_features

  def loss(m, batch, key):
    h = plain_encode(m, batch["feat_ids"], batch["feat_vals"])
    cand = sampled_candidates(batch["labels"], num_sampled, num_labels, key)
    safe = jnp.maximum(cand, 0)
    logits = (h @ jnp.take(m.output.kernel.get_value(), safe, axis=0).T
              + jnp.take(m.output.bias.get_value(), safe))
    ids = jnp.broadcast_to(cand, logits.shape)
    return losses.active_softmax_cross_entropy(logits, ids, batch["labels"]), batch["mask"]

  return loss


@dataclasses.dataclass(frozen=True)
class Sparse:
  """jslide: ``loss`` over the active set, row-sparse gradients, tables updated in place by
  sparse Adam (``catch_up``: the rows keep pace with dense Adam; ``moment_dtype``: its
  moments' dtype, None for float32), the rest by ``optax.adam``, the index rebuilt on the
  schedule."""

  loss: str = "softmax"
  catch_up: bool = True
  moment_dtype: str | None = None
  uses_index = True  # sparse inference through the index is evaluated

  def train_step(self, model, learning_rate: float, schedule: lsh.RebuildSchedule, *,
                 mesh=None, row_axis: str | None = None):
    moments = None if self.moment_dtype is None else jnp.dtype(self.moment_dtype)
    return make_train_step(
        model, active_set_loss(self.loss),
        table_tx=optim.sparse_adam(learning_rate, catch_up=self.catch_up,
                                   moment_dtype=moments),
        dense_tx=optax.adam(learning_rate), schedule=schedule, mesh=mesh, row_axis=row_axis)

  def __str__(self):
    return "jslide"


@dataclasses.dataclass(frozen=True)
class Dense:
  """The dense baseline: every label scored, dense gradients, ``optax.adam`` on every
  parameter."""

  uses_index = False

  def train_step(self, model, learning_rate: float, schedule: lsh.RebuildSchedule, *,
                 mesh=None):
    del schedule  # no index is read
    return make_dense_train_step(model, full_softmax_loss, tx=optax.adam(learning_rate),
                                 mesh=mesh)

  def __str__(self):
    return "dense output layer"


@dataclasses.dataclass(frozen=True)
class Sampled:
  """The sampled-softmax baseline: the batch's labels plus ``num_sampled`` uniform labels
  shared by the batch, plain JAX, ``optax.adam`` on every parameter."""

  num_sampled: int
  uses_index = False

  def train_step(self, model, learning_rate: float, schedule: lsh.RebuildSchedule, *,
                 mesh=None):
    del schedule  # no index is read
    return make_dense_train_step(model, sampled_softmax_loss(model, self.num_sampled),
                                 tx=optax.adam(learning_rate), mesh=mesh)

  def __str__(self):
    return f"sampled softmax, {self.num_sampled} shared labels"
