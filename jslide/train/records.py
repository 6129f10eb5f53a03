"""A run's JSON record: its path checked before any training, written atomically after."""

from __future__ import annotations

import json
import os


def check_writable(path: str, what: str = "--json") -> None:
  """ValueError now, naming ``what``, if a file cannot be written at ``path`` (a directory,
  a missing or read-only folder), instead of losing the run's output after the work."""
  if os.path.isdir(path):
    raise ValueError(f"{what} {path}: is a directory, not a file")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"{what} {path}: the folder {folder} does not exist")
  if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    raise ValueError(f"{what} {path}: cannot write there (permission denied)")


def write_json(path: str, record: dict) -> None:
  """Writes ``record`` to ``path`` through a temporary file beside it, so a failure leaves
  the old file or the new one, never half of one."""
  tmp = f"{path}.partial"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)
