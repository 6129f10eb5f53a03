"""The files of a retrieval set: ``docs.jsonl`` (``{"id": ..., "text": ...}`` per document)
and ``queries.jsonl`` (``{"query": ..., "relevant": [document ids]}`` per query), the
formats ``python -m jslide.retrieval`` reads."""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator


def write_retrieval_set(out_dir: str, docs: list[dict], queries: list[dict]) -> None:
  """Writes ``docs`` and ``queries`` as ``docs.jsonl`` and ``queries.jsonl`` in ``out_dir``
  (created if missing), one JSON object per line, UTF-8."""
  os.makedirs(out_dir, exist_ok=True)
  for name, rows in (("docs", docs), ("queries", queries)):
    with open(os.path.join(out_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def json_lines(path: str, lines: Iterable[str]) -> Iterator[tuple[int, object]]:
  """``(line number, parsed value)`` of each non-blank line of a JSON-lines file ``path``
  (``lines`` its text, line by line); ValueError naming ``path:line`` for one that is not
  JSON."""
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      yield number, json.loads(line)
    except ValueError:
      raise ValueError(f"{path}:{number}: not a JSON object") from None
