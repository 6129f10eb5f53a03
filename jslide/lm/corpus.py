"""A text corpus as a file of token ids: read line by line, never as one string or a list of
words, so its size is bounded by the disk, not by memory.

``paragraph_tokens(path)`` yields the tokens of each paragraph of a UTF-8 file exactly as
``tokenize(read_text(path))`` would give them, without holding the text. ``token_ids(path,
vocab)`` encodes the file once into a cached ``int32`` file and returns it memory-mapped;
``window_rows(ids, rows, context)`` reads training windows from it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from typing import Iterator

import numpy as np

from jslide.lm.vocab import EOS, _TOKEN, Vocabulary

_CHUNK = 1 << 16  # ids written per block


def _lines(path: str) -> Iterator[bytes]:
  """The file's lines, split on ``\\n`` only (as the paragraph rule of ``tokenize`` reads
  them), read in blocks."""
  with open(path, "rb") as f:
    rest = b""
    for block in iter(lambda: f.read(1 << 20), b""):
      lines = (rest + block).split(b"\n")
      rest = lines.pop()
      yield from lines
    yield rest


def paragraph_tokens(path: str) -> Iterator[list[str]]:
  """The lowercased word-level tokens of each paragraph of a UTF-8 file, ``<eos>`` last
  (blank lines end a paragraph; one without tokens yields nothing). The same tokens as
  :func:`jslide.lm.tokenize` of the whole text. ValueError naming the file when it is not
  UTF-8 or has no text."""
  offset, words, any_text = 0, [], False
  for raw in _lines(path):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      at = offset + e.start
      raise ValueError(f"{path}: not UTF-8 text (byte {at}: {raw[e.start:e.start + 1]!r})"
                       ) from None
    offset += len(raw) + 1
    if line.strip():
      any_text = True
      words.extend(_TOKEN.findall(line.lower()))
    elif words:
      yield words + [EOS]
      words = []
  if words:
    yield words + [EOS]
  if not any_text:
    raise ValueError(f"{path}: the file has no text")


def _cache_dir() -> str:
  root = os.environ.get("JSLIDE_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jslide")
  return os.path.join(root, "tokens")


def _file_key(path: str, *extra) -> str:
  st = os.stat(path)
  h = hashlib.sha256(json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns,
                                 *extra]).encode())
  return h.hexdigest()[:24]


def vocabulary(path: str, size: int) -> Vocabulary:
  """The ``size`` - 1 most frequent tokens of the file plus ``<unk>``
  (:meth:`Vocabulary.from_tokens`), counted in one streaming pass and cached (keyed by the
  file's path, size and modification time)."""
  cache = os.path.join(_cache_dir(), f"vocab-{_file_key(path, size)}.json")
  if os.path.exists(cache):
    with open(cache) as f:
      return Vocabulary(json.load(f))
  counts: collections.Counter = collections.Counter()
  for words in paragraph_tokens(path):
    counts.update(words)
  vocab = Vocabulary.from_counts(counts, size)
  _write_atomically(cache, lambda f: f.write(json.dumps(vocab.words).encode()))
  return vocab


def token_ids(path: str, vocab: Vocabulary) -> np.ndarray:
  """int32[tokens]: the file's tokens as ids of ``vocab``, memory-mapped from a cached file
  (written once, in blocks, by :func:`paragraph_tokens`; keyed by the file and the
  vocabulary)."""
  digest = hashlib.sha256("\n".join(vocab.words).encode()).hexdigest()[:16]
  cache = os.path.join(_cache_dir(), f"ids-{_file_key(path, digest)}.int32")

  def write(f):
    block: list[int] = []
    for words in paragraph_tokens(path):
      block.extend(vocab.encode(words).tolist())
      if len(block) >= _CHUNK:
        f.write(np.asarray(block, np.int32).tobytes())
        block = []
    f.write(np.asarray(block, np.int32).tobytes())

  if not os.path.exists(cache):
    _write_atomically(cache, write)
  if os.path.getsize(cache) == 0:
    return np.zeros(0, np.int32)
  return np.memmap(cache, dtype=np.int32, mode="r")


def _write_atomically(path: str, write) -> None:
  """``write(f)`` into a file beside ``path``, renamed over it once whole: an interrupted
  run leaves no half cache."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.partial"
  try:
    with open(tmp, "wb") as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def digest(ids) -> str:
  """A SHA-256 of a token stream (the same ids, the same digest)."""
  h = hashlib.sha256()
  flat = np.asarray(ids).reshape(-1)
  for i in range(0, flat.size, 1 << 24):  # a memory-mapped stream is read in blocks
    h.update(np.ascontiguousarray(flat[i:i + (1 << 24)]).view(np.uint8).data)
  return h.hexdigest()


def num_windows(ids, context: int, path: str = "the text") -> int:
  """The windows of ``context + 1`` tokens (stride ``context``) in ``ids``; ValueError when
  there is not one."""
  count = (len(ids) - 1) // context
  if count < 1:
    raise ValueError(f"{path}: {len(ids)} tokens, too few for one window of context "
                     f"{context} plus its next word")
  return count


def window_rows(ids, rows, context: int) -> np.ndarray:
  """int32[len(rows), context + 1]: windows ``rows`` of ids (window r is ``ids[r * context
  : r * context + context + 1]``), read from a memory map page by page."""
  rows = np.asarray(rows, np.int64)
  return np.asarray(ids[rows[:, None] * context + np.arange(context + 1)[None, :]], np.int32)

