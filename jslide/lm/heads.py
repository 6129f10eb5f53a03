"""The per-token training losses of the three softmax heads a language-model run can use.

- ``lsh``: :class:`jslide.nn.SparseTransformerLM`'s own :class:`jslide.nn.SparseSoftmaxHead`
  (the target, the words the LSH index retrieves, and the same shared corrected sample as
  ``sampled``), trained by :func:`jslide.train.make_train_step` with row-sparse gradients;
- ``full``: the exact softmax over the whole vocabulary (the dense baseline);
- ``sampled``: sampled softmax as a JAX user writes it (Jean et al. 2015; TensorFlow's
  ``sampled_softmax_loss``): the target plus ``num_sampled`` words drawn from a proposal q
  and shared by the batch, each logit corrected by ``- log(num_sampled * q(word))``,
  accidental hits (a sample equal to the target) removed; plain ``jnp.take`` gathers.

The ``full`` and ``sampled`` losses train through :func:`jslide.train.make_dense_train_step`
(dense gradients, ``optax.adam`` on every parameter). Each loss is ``loss(model, batch, key)
-> (values f32[B*T], mask bool[B*T])`` for a batch ``{"tokens": int32[B, T], "targets":
int32[B, T]}``, every position counted.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from jslide import losses, lsh, optim, row_sharded
from jslide.nn.softmax_head import PROPOSALS, log_expected_count, sample_words
from jslide.train.step import make_dense_train_step, make_train_step

__all__ = ["FullHead", "HEADS", "LSHHead", "PROPOSALS", "SampledHead", "full_softmax_loss",
           "lsh_softmax_loss", "sampled_softmax_loss"]


def _every_position(values):
  return values, jnp.ones(values.shape, bool)


def lsh_softmax_loss(model, batch, key):
  """The lsh head's loss: the softmax over each position's target, retrieved words and the
  shared corrected sample (:class:`jslide.nn.SparseSoftmaxHead`)."""
  logits, ids = model(batch["tokens"], batch["targets"], key=key)
  targets = batch["targets"].reshape(-1, 1)
  if model.head.row_axis is not None:  # split by rows: the softmax over every device's words
    return _every_position(row_sharded.active_softmax_cross_entropy(
        logits, ids, targets, model.head.row_axis))
  return _every_position(losses.active_softmax_cross_entropy(logits, ids, targets))


def full_softmax_loss(model, batch, key):
  """The exact softmax cross-entropy over the vocabulary (builds [B*T, V] logits: the dense
  baseline)."""
  h = model.hidden_states(batch["tokens"], key=key).reshape(-1, model.features)
  return _every_position(optax.softmax_cross_entropy_with_integer_labels(
      model.head.exact(h), batch["targets"].reshape(-1)))


def sampled_softmax_loss(model, batch, key, *, num_sampled: int, proposal: str):
  """Sampled softmax with the logQ correction over ``num_sampled`` shared words."""
  trunk_key, sample_key = jax.random.split(key)
  h = model.hidden_states(batch["tokens"], key=trunk_key).reshape(-1, model.features)
  targets = batch["targets"].reshape(-1)
  w, b = model.head.kernel.get_value(), model.head.bias.get_value()
  v = w.shape[0]
  sampled = sample_words(sample_key, num_sampled, v, proposal)
  sampled_logits = (h @ jnp.take(w, sampled, axis=0).T + jnp.take(b, sampled)
                    - log_expected_count(sampled, num_sampled, v, proposal))
  sampled_logits = jnp.where(sampled[None, :] == targets[:, None], -jnp.inf, sampled_logits)
  true_logit = (jnp.sum(h * jnp.take(w, targets, axis=0), axis=-1) + jnp.take(b, targets)
                - log_expected_count(targets, num_sampled, v, proposal))
  logits = jnp.concatenate([true_logit[:, None], sampled_logits], axis=-1)
  return _every_position(optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.zeros_like(targets)))


@dataclasses.dataclass(frozen=True)
class LSHHead:
  """jslide's head: the model's :class:`jslide.nn.SparseSoftmaxHead` (its ``retrieved`` and
  ``sampled`` words set when the model is built), row-sparse gradients, sparse Adam with
  catch-up for the tables (moments in ``moment_dtype``), ``optax.adam`` for the rest."""

  moment_dtype: str = "float32"
  uses_head_index = True

  def train_step(self, model, learning_rate: float, schedule: lsh.RebuildSchedule | None, *,
                 mesh=None, row_axis: str | None = None):
    return make_train_step(model, lsh_softmax_loss,
                           table_tx=optim.sparse_adam(learning_rate, catch_up=True,
                                                      moment_dtype=jnp.dtype(self.moment_dtype)),
                           dense_tx=optax.adam(learning_rate), schedule=schedule, mesh=mesh,
                           row_axis=row_axis)


@dataclasses.dataclass(frozen=True)
class SampledHead:
  """Sampled softmax as a JAX user writes it: ``num_sampled`` words from ``proposal`` shared
  by the batch, dense gradients, ``optax.adam`` on every parameter."""

  num_sampled: int = 1024
  proposal: str = "log-uniform"
  uses_head_index = False

  def train_step(self, model, learning_rate: float, schedule: lsh.RebuildSchedule | None, *,
                 mesh=None):
    loss = functools.partial(sampled_softmax_loss, num_sampled=self.num_sampled,
                             proposal=self.proposal)
    return make_dense_train_step(model, loss, tx=optax.adam(learning_rate), schedule=schedule,
                                 mesh=mesh)


@dataclasses.dataclass(frozen=True)
class FullHead:
  """The exact softmax over the whole vocabulary: dense gradients, ``optax.adam``."""

  uses_head_index = False

  def train_step(self, model, learning_rate: float, schedule: lsh.RebuildSchedule | None, *,
                 mesh=None):
    return make_dense_train_step(model, full_softmax_loss, tx=optax.adam(learning_rate),
                                 schedule=schedule, mesh=mesh)


# The heads by the name the command line and the run config use.
HEADS = ("lsh", "sampled", "full")
