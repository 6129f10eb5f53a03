"""Shared by the benchmark scripts: writing their JSON results."""

from __future__ import annotations

import json
import os


def write_json(path: str | None, rows) -> None:
  """Writes rows to path as JSON (creating folders); does nothing without a path."""
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(rows, f, indent=2)
  print(f"wrote {path}")
