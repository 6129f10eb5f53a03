"""Documents in, passages out: what ``python -m jslide.retrieval index`` reads and indexes.

A document is ``{"id": str, "text": str}`` (optionally ``"title"``). Files are JSON lines of
such objects (``.jsonl``), or plain text and Markdown (any other name): one document each,
its id the file's path as given, its title the first line. A passage is a run of whole
paragraphs of a document, at most ``max_words`` words (a longer paragraph is cut at
sentence ends, a longer sentence at ``max_words``): the unit the model learns to retrieve.
"""

from __future__ import annotations

import dataclasses
import re

from jslide.datasets.retrieval_format import json_lines


RANKED = 100  # passages ranked per query, from which the best documents are taken


@dataclasses.dataclass(frozen=True)
class Document:
  id: str
  text: str
  title: str = ""


@dataclasses.dataclass(frozen=True)
class Passage:
  doc: str    # the id of its document
  text: str
  title: str  # its document's title


def _check_text(path: str, raw: bytes) -> str:
  if b"\x00" in raw[:8192]:
    raise ValueError(f"{path}: a binary file (NUL bytes), not text; give plain text, Markdown "
                     "or JSON lines of {\"id\": ..., \"text\": ...}")
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); give plain text, Markdown or "
                     "JSON lines") from None


def _jsonl(path: str, text: str) -> list[Document]:
  docs = []
  for number, row in json_lines(path, text.splitlines()):
    if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
      raise ValueError(f"{path}:{number}: expected {{\"id\": ..., \"text\": \"...\"}}")
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
      raise ValueError(f"{path}:{number}: the id must be a string or an integer, got "
                       f"{row['id']!r}")
    title = row.get("title", "")
    docs.append(Document(str(row["id"]), row["text"], title if isinstance(title, str) else ""))
  return docs


def read_documents(paths: list[str]) -> list[Document]:
  """The documents of ``paths`` (JSON lines, or one plain-text / Markdown document per file),
  in order. ValueError naming the file (and line) for a binary or non-UTF-8 file, a bad JSON
  line, a document with no words, a duplicate id, or no documents at all."""
  docs: list[Document] = []
  for path in paths:
    try:
      with open(path, "rb") as f:
        raw = f.read()
    except OSError as e:
      raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    text = _check_text(path, raw)
    if path.endswith(".jsonl"):
      docs.extend(_jsonl(path, text))
    else:
      first = next((line for line in text.splitlines() if line.strip()), "")
      docs.append(Document(path, text, first.lstrip("# ").strip()))
  seen: dict[str, int] = {}
  for i, doc in enumerate(docs):
    if doc.id in seen:
      raise ValueError(f"duplicate document id {doc.id!r} (documents {seen[doc.id] + 1} and "
                       f"{i + 1}); ids must be unique")
    seen[doc.id] = i
    if not doc.text.split():
      raise ValueError(f"document {doc.id!r} has no words")
  if not docs:
    raise ValueError("no documents: " + (", ".join(paths) if paths else "no files given") +
                     " hold none")
  return docs


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _pieces(paragraph: str, max_words: int) -> list[str]:
  """A paragraph as pieces of at most ``max_words`` words, cut at sentence ends."""
  words = paragraph.split()
  if len(words) <= max_words:
    return [" ".join(words)]
  out, current = [], []
  for sentence in _SENTENCE_END.split(paragraph):
    s = sentence.split()
    while len(s) > max_words:  # a sentence longer than a passage
      if current:
        out.append(" ".join(current))
        current = []
      out.append(" ".join(s[:max_words]))
      s = s[max_words:]
    if current and len(current) + len(s) > max_words:
      out.append(" ".join(current))
      current = []
    current.extend(s)
  if current:
    out.append(" ".join(current))
  return out


def split_passages(doc: Document, max_words: int = 128) -> list[Passage]:
  """``doc`` as passages of whole paragraphs (blank-line separated), each at most
  ``max_words`` words; every word of the document is in exactly one passage."""
  if max_words < 1:
    raise ValueError(f"split_passages: max_words must be at least 1, got {max_words}")
  out, current = [], []
  for paragraph in re.split(r"\n\s*\n", doc.text):
    for piece in _pieces(paragraph, max_words):
      if not piece:
        continue
      n = len(piece.split())
      if current and sum(len(p.split()) for p in current) + n > max_words:
        out.append(" ".join(current))
        current = []
      current.append(piece)
  if current:
    out.append(" ".join(current))
  return [Passage(doc.id, text, doc.title) for text in out]


def passages_of(docs: list[Document], max_words: int = 128) -> list[Passage]:
  """Every document's passages (:func:`split_passages`), in order."""
  return [p for doc in docs for p in split_passages(doc, max_words)]




def best_per_document(passages: list[Passage], order, k: int) -> list[int]:
  """The first passage of each document in ``order`` (passage numbers, best first; a negative
  number ends it), at most ``k``: a ranking of passages as one of documents."""
  out, seen = [], set()
  for i in order:
    if i < 0 or len(out) == k:
      break
    doc = passages[int(i)].doc
    if doc not in seen:
      seen.add(doc)
      out.append(int(i))
  return out
