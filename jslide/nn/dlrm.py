"""A click-through model over embedding tables: DLRM's dot-product interaction."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jslide._checks import float32_array, positive_int


def _mlp(sizes: Sequence[int], rngs: nnx.Rngs) -> nnx.List:
  return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])


def _run(layers, x, last_relu: bool):
  for i, layer in enumerate(layers):
    x = layer(x)
    if last_relu or i + 1 < len(layers):
      x = jax.nn.relu(x)
  return x


class DLRM(nnx.Module):
  """DLRM (Naumov et al., 2019): each categorical field embedded by its own module (any
  embedding with ``features`` and ``__call__(ids[B]) -> [B, features]``: ``nnx.Embed``,
  :class:`TableEmbed`, :class:`HashEmbed`, :class:`RobeEmbed`), dense features through a
  bottom MLP to the same width, the pairwise dot products of all these vectors, and a top
  MLP from them (and the bottom output) to one logit.

  ``model(ids, dense=None)``: ids int32[B, F] (one column per field), dense f32[B, num_dense]
  -> logits f32[B].
  """

  def __init__(self, embeddings: Sequence[nnx.Module], *, num_dense: int = 0,
               bottom: Sequence[int] = (64,), top: Sequence[int] = (256, 128),
               rngs: nnx.Rngs):
    if not embeddings:
      raise ValueError("DLRM: embeddings must name at least one field")
    d = embeddings[0].features
    if any(e.features != d for e in embeddings):
      raise ValueError("DLRM: every field's embedding must have the same features")
    if isinstance(num_dense, bool) or not isinstance(num_dense, int) or num_dense < 0:
      raise ValueError(f"DLRM: num_dense must be an int >= 0, got {num_dense!r}")
    for width in (*bottom, *top):
      positive_int("DLRM", "each MLP width", width)
    self.embeddings = nnx.List(embeddings)
    self.num_fields, self.num_dense, self.features = len(embeddings), num_dense, d
    self.bottom = _mlp((num_dense, *bottom, d), rngs) if num_dense else nnx.List([])
    vectors = len(embeddings) + (1 if num_dense else 0)
    pairs = vectors * (vectors - 1) // 2
    self.top = _mlp((pairs + (d if num_dense else 0), *top, 1), rngs)

  def __call__(self, ids, dense=None):
    if jnp.ndim(ids) != 2 or jnp.shape(ids)[1] != self.num_fields:
      raise ValueError(f"DLRM: ids must be [B, {self.num_fields}] (one column per field), "
                       f"got shape {jnp.shape(ids)}")
    vectors = [embed(ids[:, f]) for f, embed in enumerate(self.embeddings)]
    if self.num_dense:
      if dense is None:
        raise ValueError(f"DLRM: the model takes {self.num_dense} dense features")
      dense = float32_array("DLRM", "dense", dense, ndim=2)
      bottom = _run(self.bottom, dense, last_relu=True)
      vectors.append(bottom)
    e = jnp.stack(vectors, axis=1)  # [B, V, d]
    dots = jnp.einsum("bvd,bwd->bvw", e, e)
    i, j = jnp.triu_indices(e.shape[1], k=1)
    x = dots[:, i, j]
    if self.num_dense:
      x = jnp.concatenate([x, bottom], axis=1)
    return _run(self.top, x, last_relu=False)[:, 0]
