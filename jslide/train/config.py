"""Run settings as frozen dataclasses whose fields are also their command-line options.

Each field of a config is declared once, with :func:`option` (default, help, flag); the
command line is generated from the fields (:func:`add_arguments`) and read back into the
class (:func:`from_args`), so no default is written twice. :class:`RunConfig` holds what
every application's training run shares; an application subclasses it, adding its own
fields and changing defaults by redeclaring a field.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any


def option(default: Any, help: str, *, flag: str | None = None, choices=None,
           resumable: bool = False, metavar: str | None = None, cli: bool = True):
  """A dataclass field that is also a command-line option.

  Args:
    default: the default value (immutable).
    help: the option's help text.
    flag: the option string (default ``--`` + the name with dashes); for a bool field that
      defaults to True, the flag that turns it off.
    choices: allowed values.
    resumable: whether a resumed run may change the value (how long or how often to do
      things; never what a step computes or the order of the batches).
    metavar: the option's metavar.
    cli: False for a field the command line does not set.
  """
  return dataclasses.field(default=default, metadata={
      "help": help, "flag": flag, "choices": choices, "resumable": resumable,
      "metavar": metavar, "cli": cli})


def _bad(cls, name: str, expected: str, value) -> ValueError:
  return ValueError(f"{cls.__name__}: {name} must be {expected}, got {value!r}")


def check_int(cfg, name: str, lo: int, hi: int | None = None) -> None:
  """ValueError naming the field unless ``cfg.name`` is an int in [lo, hi]."""
  value = getattr(cfg, name)
  if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
      hi is not None and value > hi):
    raise _bad(type(cfg), name, f"an int in [{lo}, {hi}]" if hi is not None
               else f"an int >= {lo}", value)


def check_float(cfg, name: str, lo: float, *, strict: bool = False) -> None:
  """ValueError naming the field unless ``cfg.name`` is a finite number >= lo (> lo when
  ``strict``)."""
  value = getattr(cfg, name)
  ok = (not isinstance(value, bool) and isinstance(value, (int, float))
        and math.isfinite(value) and (value > lo if strict else value >= lo))
  if not ok:
    raise _bad(type(cfg), name, f"a finite number {'>' if strict else '>='} {lo}", value)


def check_choice(cfg, name: str, choices) -> None:
  value = getattr(cfg, name)
  if value not in choices:
    raise _bad(type(cfg), name, f"one of {tuple(choices)}", value)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What every training run shares: how long, how fast, when to evaluate and save.

  A run ends after ``epochs`` passes over the training data, or earlier at ``max_steps``
  steps or ``time_limit`` seconds of training. It is evaluated at the end of every epoch,
  every ``eval_every`` steps and every ``eval_seconds`` seconds of training, and at its end;
  with a checkpoint directory the state is saved at every evaluation and every
  ``checkpoint_every`` steps. Indices are rebuilt at steps that grow geometrically
  (:class:`jslide.lsh.RebuildSchedule`).
  """

  epochs: int = option(1, "passes over the training data", resumable=True)
  batch_size: int = option(16, "examples per step")
  learning_rate: float = option(1e-3, "Adam's learning rate", flag="--lr", resumable=True)
  seed: int = option(0, "seed of the parameters, batches and sampling")
  max_steps: int = option(0, "stop after this many steps (0: no limit)", resumable=True)
  time_limit: float = option(0.0, "stop after this many seconds of training (0: no limit)",
                             resumable=True)
  # Not resumable: an evaluation catches up and rebuilds the indices, which moves the run.
  eval_every: int = option(0, "also evaluate every this many steps (0: at the end of each "
                           "epoch only)")
  eval_seconds: float = option(0.0, "also evaluate after every this many seconds of training")
  checkpoint_every: int = option(0, "also checkpoint every this many steps",
                                 flag="--ckpt-every", resumable=True)
  rebuild_initial: int = option(50, "steps before the first index rebuild")
  rebuild_growth: float = option(1.3, "each rebuild period is this many times the last")
  rebuild_max: int = option(2000, "the longest rebuild period, in steps")

  def __post_init__(self):
    check_int(self, "batch_size", 1)
    for name in ("epochs", "max_steps", "eval_every", "checkpoint_every"):
      check_int(self, name, 0)
    check_int(self, "seed", 0)
    check_float(self, "learning_rate", 0.0, strict=True)
    for name in ("time_limit", "eval_seconds"):
      check_float(self, name, 0.0)
    check_int(self, "rebuild_initial", 1)
    check_float(self, "rebuild_growth", 1.0)
    check_int(self, "rebuild_max", self.rebuild_initial)

  def rebuild_schedule(self):
    from jslide.lsh import RebuildSchedule
    return RebuildSchedule(self.rebuild_initial, self.rebuild_growth, self.rebuild_max)

  def to_json(self) -> dict:
    return to_json(self)


def to_json(cfg) -> dict:
  """The config as a JSON-ready dict (tuples as lists)."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def from_json(cls, d: dict, old: dict | None = None):
  """``cls`` from :func:`to_json`'s dict; fields it lacks take ``old`` (the values a config
  written before they existed meant), then the defaults. Unknown keys are refused."""
  names = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - set(names))
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown settings {unknown}")
  hints = typing.get_type_hints(cls)
  values = {**(old or {}), **d}
  return cls(**{k: tuple(v) if _is_tuple(hints[k]) and isinstance(v, list) else v
                for k, v in values.items() if k in names})


def changed_on_resume(cls, saved: dict, wanted: dict) -> dict:
  """{field: (saved, wanted)} for the fields of ``cls`` a resumed run may not change."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.metadata.get("resumable") or f.name not in wanted:
      continue
    if f.name in saved and saved[f.name] != wanted[f.name]:
      out[f.name] = (saved[f.name], wanted[f.name])
  return out


def _is_tuple(tp) -> bool:
  return typing.get_origin(tp) is tuple


def _base_type(tp):
  """(type, optional) of an annotation such as ``int | None``."""
  args = typing.get_args(tp)
  if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
    rest = [a for a in args if a is not type(None)]
    return rest[0], True
  return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls, *, skip=()) -> None:
  """Adds an option to ``parser`` for each field of the dataclass ``cls`` (but ``skip``),
  with the field's default, help and flag (:func:`option`)."""
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    meta = f.metadata
    if f.name in skip or not meta.get("cli", True):
      continue
    tp, _ = _base_type(hints[f.name])
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    kw: dict[str, Any] = {"dest": f.name, "help": meta.get("help", "")}
    if tp is bool:
      kw["action"] = "store_false" if f.default else "store_true"
      if f.default and not meta.get("flag"):
        flag = "--no-" + f.name.replace("_", "-")
      parser.add_argument(flag, **kw)
      continue
    if _is_tuple(tp):
      kw["nargs"] = "+"
      kw["type"] = typing.get_args(tp)[0]
      kw["default"] = list(f.default)
    else:
      kw["type"] = tp
      kw["default"] = f.default
    if f.default is not None and f.default != ():
      shown = " ".join(map(str, f.default)) if _is_tuple(tp) else f.default
      kw["help"] += f" (default: {shown})"
    if meta.get("choices") is not None:
      kw["choices"] = list(meta["choices"])
    if meta.get("metavar"):
      kw["metavar"] = meta["metavar"]
    parser.add_argument(flag, **kw)


def from_args(cls, args: argparse.Namespace, **overrides):
  """``cls`` from the options :func:`add_arguments` added (lists read as tuples); fields the
  namespace lacks keep their defaults; ``overrides`` win."""
  hints = typing.get_type_hints(cls)
  values = {}
  for f in dataclasses.fields(cls):
    if hasattr(args, f.name):
      v = getattr(args, f.name)
      values[f.name] = tuple(v) if _is_tuple(_base_type(hints[f.name])[0]) and v is not None \
          else v
  values.update(overrides)
  return cls(**values)
