"""How :func:`jslide.value_and_grad` sees table gradients without building them densely.

Inside a function differentiated by ``jslide.value_and_grad``, each table is replaced by a
:class:`TableRef`. A jslide op given a TableRef computes its output from the table as usual
but without a gradient path to the table, and adds a zero "tap" array to its output. The
gradient with respect to that tap is the gradient with respect to the op's output, which,
with the op's forward values (ids, inputs, feature values), is exactly the factored
row-sparse gradient of the table (:class:`jslide.RowSparseGrad`). Tap shapes are found by a
first abstract trace (``jax.eval_shape``); the tape records them and later holds the taps.
"""

from __future__ import annotations

from typing import Any, Callable

import jax


class TableRef:
  """A table inside a function differentiated by :func:`jslide.value_and_grad`.

  Only jslide ops (``sparse_linear``, ``embedding_bag``) accept it: any other use would give
  the table a gradient that the row-sparse path cannot see, so it is a TypeError.
  """

  __slots__ = ("value", "slot", "tape")

  def __init__(self, value, slot: int, tape: "Tape"):
    self.value = value
    self.slot = slot
    self.tape = tape

  shape = property(lambda self: self.value.shape)
  dtype = property(lambda self: self.value.dtype)
  ndim = property(lambda self: self.value.ndim)

  def _misuse(self, *args, **kwargs):
    raise TypeError(
        f"A table (shape {self.shape}) marked as row-sparse in jslide.value_and_grad can "
        "only be passed to jslide ops (sparse_linear, embedding_bag); using it any other way "
        "would hide part of its gradient. Unmark it in `tables=` to use it as a dense array.")

  __jax_array__ = _misuse
  __array__ = _misuse
  __getitem__ = _misuse

  def __repr__(self):
    return f"TableRef(shape={self.shape}, dtype={self.dtype}, slot={self.slot})"


class Tape:
  """The op calls that touched tables during one trace, and (on the second trace) the taps.

  Each entry is the op's ``table_grads(saved, g) -> [(slot, RowSparseGrad)]``: a function
  the op defines next to its forward, given the forward values it saved and the gradient g
  of its output. A new op needs nothing here or in :mod:`jslide._autodiff`.
  """

  def __init__(self, taps: list | None = None):
    self.taps = taps
    self.entries: list[Callable] = []
    self.tap_shapes: list[jax.ShapeDtypeStruct] = []
    self.saved: list[dict[str, Any]] = []

  def tap(self, y, table_grads: Callable, saved: dict[str, Any]):
    """Registers one op output y that depends on tables; returns y + tap."""
    k = len(self.entries)
    self.entries.append(table_grads)
    self.tap_shapes.append(jax.ShapeDtypeStruct(y.shape, y.dtype))
    self.saved.append(saved)
    if self.taps is None:
      return y
    if k >= len(self.taps) or self.taps[k].shape != y.shape:
      raise RuntimeError(
          "jslide.value_and_grad: the function used its tables differently on its second "
          "trace; table uses must not depend on anything but shapes.")
    return y + self.taps[k]


def unwrap_table(table):
  """(array, TableRef or None) for a table argument that may be a TableRef."""
  if isinstance(table, TableRef):
    return table.value, table
  return table, None


def common_tape(fn: str, *refs):
  tapes = {id(r.tape): r.tape for r in refs if r is not None}
  if len(tapes) > 1:
    raise ValueError(f"{fn}: tables come from different jslide.value_and_grad calls")
  return next(iter(tapes.values()), None)
