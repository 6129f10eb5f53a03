"""Embedding tables with row-sparse gradients: a full table, and the hashing trick."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jslide import kernels
from jslide._checks import int32_ids, positive_int, uint32_seed
from jslide.initializers import check_param_dtype, init_table
from jslide.nn.variables import Table
from jslide.ops import embedding_bag


def lookup_bags(inputs):
  """(ids, weights) that make ``bag(ids, weights)`` the rows of int ``inputs[...]``: each a
  bag of one row with weight 1 (how the embeddings here serve as ``nnx.Embed``)."""
  ids = jnp.asarray(inputs)[..., None]
  return ids, jnp.ones(ids.shape, jnp.float32)


def claim_rows(owner: str, taken: int, num_rows: int) -> int:
  """The first row number of a table of ``num_rows`` rows registered with a store that
  ``taken`` rows of other tables already use (so no two tables share a hash input); the
  slot hash takes at most ``kernels.ROBE_PRIME`` rows in all."""
  if taken + num_rows > kernels.ROBE_PRIME:
    raise ValueError(f"{owner}: the tables sharing it may hold at most {kernels.ROBE_PRIME} "
                     f"rows together (the slot hash's prime); {taken + num_rows} asked")
  return taken


class TableEmbed(nnx.Module):
  """``nnx.Embed(num_embeddings, features)`` with the rows in a :class:`Table`: under
  :func:`jslide.value_and_grad` its gradient is row-sparse (the rows a batch read), and
  ``jslide.optim.sparse_adam`` updates those rows in place. ``embed(inputs)``: int
  ``inputs[...]`` -> f32 ``[..., features]``; ``embed.bag(ids, weights)`` sums rows."""

  def __init__(self, num_embeddings: int, features: int, *,
               embedding_init: nnx.Initializer = nnx.initializers.normal(0.05),
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    positive_int("TableEmbed", "num_embeddings", num_embeddings)
    positive_int("TableEmbed", "features", features)
    check_param_dtype("TableEmbed", param_dtype)
    self.num_embeddings, self.features = num_embeddings, features
    self.embedding = Table(init_table(embedding_init, rngs.params(),
                                      (num_embeddings, features), param_dtype))

  def bag(self, ids, weights):
    return embedding_bag(ids, weights, self.embedding.get_value())

  def __call__(self, inputs):
    return self.bag(*lookup_bags(inputs))


class HashedTable(nnx.Module):
  """One table of ``rows`` rows shared by :class:`HashEmbed` tables (the hashing trick: each
  logical row is one whole hashed row of this table, where ROBE reads blocks at hashed
  offsets of one array). Each table registers its rows for a distinct hash input."""

  def __init__(self, rows: int, features: int, *, seed: int = 0,
               embedding_init: nnx.Initializer = nnx.initializers.normal(0.05),
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    positive_int("HashedTable", "rows", rows)
    positive_int("HashedTable", "features", features)
    uint32_seed("HashedTable", "seed", seed)
    check_param_dtype("HashedTable", param_dtype)
    self.num_rows, self.features, self.seed = rows, features, seed
    self.logical_rows = 0
    self.embedding = Table(init_table(embedding_init, rngs.params(), (rows, features),
                                      param_dtype))

  def register(self, num_rows: int) -> int:
    """The row offset of a new table of ``num_rows`` logical rows in this table's hashing."""
    offset = claim_rows("HashedTable", self.logical_rows, num_rows)
    self.logical_rows = offset + num_rows
    return offset


class HashEmbed(nnx.Module):
  """The hashing trick, a drop-in for ``nnx.Embed``: logical row r of this table is row
  ``((a * (offset + r) + c0) mod P) mod rows`` of a :class:`HashedTable` (ROBE's hash with one
  block of the whole row, :func:`jslide.kernels.robe_slots`), shared with the other tables
  built on it (or a table of its own: ``table`` an int of rows)."""

  def __init__(self, num_embeddings: int, features: int, *, table: HashedTable | int,
               seed: int = 0, rngs: nnx.Rngs):
    positive_int("HashEmbed", "num_embeddings", num_embeddings)
    if not isinstance(table, HashedTable):
      table = HashedTable(table, features, seed=seed, rngs=rngs)
    if table.features != features:
      raise ValueError(f"HashEmbed: features={features} but the shared table's rows have "
                       f"{table.features}")
    self.num_embeddings, self.features = num_embeddings, features
    self.table = table
    self.offset = table.register(num_embeddings)

  def rows(self, ids):
    """int32[...]: the shared table's rows of logical rows ids int[...] (-1 stays -1)."""
    ids = int32_ids("HashEmbed", "ids", ids, self.num_embeddings)
    flat = ids.reshape(-1, 1)
    slots = kernels.robe_slots(flat, offset=self.offset, num_rows=self.num_embeddings,
                               memory=self.table.num_rows, block=1, blocks=1,
                               seed=self.table.seed)
    return slots.reshape(ids.shape)

  def bag(self, ids, weights):
    return embedding_bag(self.rows(ids), weights, self.table.embedding.get_value())

  def __call__(self, inputs):
    return self.bag(*lookup_bags(inputs))
