"""The sampled-softmax baseline: what a JAX user writes instead of an LSH index.

Each step scores, for every example, the batch's own labels plus ``num_sampled`` labels drawn
uniformly at random and shared by the batch (TensorFlow's ``sampled_softmax_loss`` with a
uniform proposal and accidental hits removed; with a uniform proposal the logQ correction
is a constant and drops out). Plain ``jnp.take`` gathers, ``jax.value_and_grad`` and an
Optax optimizer over every parameter: no index, no custom kernel, no row-sparse gradients.
It trains the same :class:`jslide.nn.SparseMLP` so that the three runs (dense, sampled,
jslide) differ only in how the output layer is trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jslide import losses
from jslide._checks import positive_int
from jslide.nn.training import dense_gradient_step


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


def make_sampled_train_step(model: nnx.Module, *, num_sampled: int,
                            tx: optax.GradientTransformation | None = None):
  """``(graphdef, state, step)`` like :func:`jslide.nn.make_dense_train_step`, training with
  the sampled softmax over the batch's labels plus ``num_sampled`` shared uniform labels.

  ``step(state, batch, key)`` is one jit with the state donated; ``tx`` (default
  ``optax.adam(1e-3)``) updates every parameter from dense gradients. The LSH index is left
  as it is.
  """
  num_sampled = positive_int("make_sampled_train_step", "num_sampled", num_sampled)
  num_labels = model.output.out_features

  def per_example(m, batch, key):
    h = plain_encode(m, batch["feat_ids"], batch["feat_vals"])
    cand = sampled_candidates(batch["labels"], num_sampled, num_labels, key)
    safe = jnp.maximum(cand, 0)
    logits = (h @ jnp.take(m.output.kernel.get_value(), safe, axis=0).T
              + jnp.take(m.output.bias.get_value(), safe))
    ids = jnp.broadcast_to(cand, logits.shape)
    return losses.active_softmax_cross_entropy(logits, ids, batch["labels"])

  return dense_gradient_step(model, per_example, tx)
