"""ROBE embeddings: many embedding tables read from one small shared array."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jslide._checks import positive_int, uint32_seed
from jslide.initializers import check_param_dtype, init_table
from jslide.nn.embed import claim_rows, lookup_bags
from jslide.nn.variables import Table
from jslide.ops import robe_embedding_bag


class RobeMemory(nnx.Module):
  """One ROBE array, ``array: Table[size]``, shared by the :class:`RobeEmbed` tables built on
  it (Desai, Chou and Shrivastava, MLSys 2022). Each table registers its rows when it is
  built and gets the row offset its slots are hashed from, so tables never share hash inputs.

  Its gradient under :func:`jslide.value_and_grad` touches only the windows a batch read
  (a windowed :class:`jslide.RowSparseGrad`), and ``jslide.optim.sparse_adam`` updates only
  those elements, in place.

  Args:
    size: elements in the array (the model's whole embedding memory).
    seed: the slot hash's uint32 seed; part of the model (a checkpoint is read with it).
    embedding_init: the elements' initializer (default: normal with stddev 0.05).
    param_dtype: float32 or bfloat16.
  """

  def __init__(self, size: int, *, seed: int = 0,
               embedding_init: nnx.Initializer = nnx.initializers.normal(0.05),
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    positive_int("RobeMemory", "size", size)
    uint32_seed("RobeMemory", "seed", seed)
    check_param_dtype("RobeMemory", param_dtype)
    self.size, self.seed = size, seed
    self.rows = 0  # rows of the tables registered so far
    self.array = Table(init_table(embedding_init, rngs.params(), (size,), param_dtype))

  def register(self, num_rows: int) -> int:
    """The row offset of a new table of ``num_rows`` rows in this array's numbering."""
    offset = claim_rows("RobeMemory", self.rows, num_rows)
    self.rows = offset + num_rows
    return offset


class RobeEmbed(nnx.Module):
  """A drop-in for ``nnx.Embed(num_embeddings, features)`` whose rows live in a ROBE array.

  ``embed(inputs)``: int ``inputs[...]`` -> f32 ``[..., features]``; ``embed.bag(ids,
  weights)``: the weighted sum of the rows of ids int[..., K] (padding -1), as
  :func:`jslide.embedding_bag`. Block c of row r (``block`` elements) is read from the array
  at a hashed offset (:func:`jslide.robe_embedding_bag`), so nearby elements stay contiguous.

  Args:
    num_embeddings, features: the logical table's shape.
    memory: a :class:`RobeMemory` to share with other tables (the paper's setting), or an int:
      the size of an array of this table's own.
    block: the block length Z, dividing ``features`` (default: ``features`` up to 32, else 32).
    seed, embedding_init, param_dtype: for an array of its own (see :class:`RobeMemory`).
  """

  def __init__(self, num_embeddings: int, features: int, *, memory: RobeMemory | int,
               block: int | None = None, seed: int = 0,
               embedding_init: nnx.Initializer = nnx.initializers.normal(0.05),
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    positive_int("RobeEmbed", "num_embeddings", num_embeddings)
    positive_int("RobeEmbed", "features", features)
    block = min(features, 32) if block is None else positive_int("RobeEmbed", "block", block)
    if features % block:
      raise ValueError(f"RobeEmbed: block={block} must divide features={features}")
    if not isinstance(memory, RobeMemory):
      memory = RobeMemory(memory, seed=seed, embedding_init=embedding_init,
                          param_dtype=param_dtype, rngs=rngs)
    if block > memory.size:
      raise ValueError(f"RobeEmbed: block={block} is longer than the memory ({memory.size})")
    self.num_embeddings, self.features, self.block = num_embeddings, features, block
    self.memory = memory
    self.offset = memory.register(num_embeddings)

  def bag(self, ids, weights):
    """f32[..., features]: ``sum_k weights[..., k] * row(ids[..., k])``."""
    return robe_embedding_bag(ids, weights, self.memory.array.get_value(),
                              num_rows=self.num_embeddings, features=self.features,
                              block=self.block, seed=self.memory.seed, offset=self.offset)

  def __call__(self, inputs):
    """The rows of int ``inputs[...]``: f32[..., features]."""
    return self.bag(*lookup_bags(inputs))
