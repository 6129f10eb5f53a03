"""When to rebuild an index during training: periods that grow geometrically, as in SLIDE."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RebuildState(NamedTuple):
  next_step: jax.Array  # int32: the step at which the next rebuild happens
  period: jax.Array     # float32: the current period


class RebuildSchedule(NamedTuple):
  """Rebuild at steps p0, p0 + p0 g, p0 + p0 g + p0 g^2, ... (periods capped at max_period).

  Weights move fast early in training and slowly later, so the index is rebuilt often at
  first and rarely later (SLIDE: "exponentially decaying" rebuild frequency). A pure helper
  for jitted loops: the state is two scalars and rebuilds go through ``lax.cond``, so a
  rebuild never retraces.

      sched = RebuildSchedule(initial_period=50, growth=1.2)
      state = sched.init()
      # inside a jitted step:
      rebuild_now, state = sched.update(state, step)
      index = jax.lax.cond(rebuild_now, lambda: lsh.rebuild(index, w), lambda: index)
  """

  initial_period: int = 50
  growth: float = 1.2
  max_period: int = 10_000

  def _check(self):
    if self.initial_period < 1 or self.growth < 1 or self.max_period < self.initial_period:
      raise ValueError("RebuildSchedule: need initial_period >= 1, growth >= 1 and "
                       f"max_period >= initial_period, got {self}")

  def init(self) -> RebuildState:
    self._check()
    return RebuildState(jnp.asarray(self.initial_period, jnp.int32),
                        jnp.asarray(self.initial_period, jnp.float32))

  def update(self, state: RebuildState, step) -> tuple[jax.Array, RebuildState]:
    """(whether to rebuild after ``step`` (0-based, so at step + 1 == next_step), new state)."""
    due = jnp.asarray(step, jnp.int32) + 1 >= state.next_step
    period = jnp.minimum(state.period * self.growth, float(self.max_period))
    next_step = state.next_step + jnp.maximum(1, jnp.round(period)).astype(jnp.int32)
    new = RebuildState(jnp.where(due, next_step, state.next_step),
                       jnp.where(due, period, state.period))
    return due, new

  def steps(self, total_steps: int) -> list[int]:
    """The 0-based steps after which rebuilds happen in the first ``total_steps`` (host side)."""
    self._check()
    out, nxt, period = [], self.initial_period, float(self.initial_period)
    while nxt <= total_steps:
      out.append(nxt - 1)
      period = min(period * self.growth, float(self.max_period))
      nxt += max(1, round(period))
    return out
