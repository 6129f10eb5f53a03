"""Variable types that let users and jslide filter a model's state."""

from __future__ import annotations

from flax import nnx


class Table(nnx.Param):
  """A large trainable table (rows = neurons or features) that gets row-sparse gradients.

  Filter with ``nnx.state(model, Table)`` / ``nnx.split(model, Table, nnx.Param, ...)``; a
  ``Table`` is also an ``nnx.Param``, so put it first when splitting.
  """


class Index(nnx.Variable):
  """Non-trainable state holding an :class:`jslide.lsh.LSHIndex` (checkpointed with the model)."""


class RouteBias(nnx.Variable):
  """Non-trainable per-block offsets of a router's scores, moved by the forward pass toward
  balanced loads (:class:`jslide.nn.BlockSparseFFN`); carried through training steps as
  state, like batch statistics."""
