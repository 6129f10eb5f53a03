"""Word-level tokenization and the vocabulary of a language-model run."""

from __future__ import annotations

import collections
import re
from typing import Iterable, Sequence

import numpy as np

UNK, EOS = "<unk>", "<eos>"
# Words (with inner apostrophes and hyphens), numbers, and single punctuation marks.
_TOKEN = re.compile(r"[^\W\d_]+(?:['\-][^\W\d_]+)*|\d+(?:[.,]\d+)*|[^\w\s]")


def read_text(path: str) -> str:
  """The text of a UTF-8 file; ValueError naming the file when it is empty or not UTF-8."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})"
                     ) from None
  if not text.strip():
    raise ValueError(f"{path}: the file has no text")
  return text


def tokenize(text: str) -> list[str]:
  """Lowercased word-level tokens; each blank-line-separated paragraph ends with ``<eos>``."""
  words: list[str] = []
  for paragraph in re.split(r"\n\s*\n", text):
    tokens = _TOKEN.findall(paragraph.lower())
    if tokens:
      words.extend(tokens)
      words.append(EOS)
  return words


class Vocabulary:
  """Words by decreasing training-set frequency: id 0 is ``<unk>`` (every word outside the
  vocabulary), then ``<eos>`` and the most frequent words, so a word's id is its frequency
  rank (what a log-uniform sampling proposal assumes)."""

  def __init__(self, words: Sequence[str]):
    if len(words) < 2 or words[0] != UNK or len(set(words)) != len(words):
      raise ValueError("Vocabulary: words must be distinct and start with <unk>")
    self.words = list(words)
    self.ids = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def from_tokens(cls, tokens: Iterable[str], size: int) -> "Vocabulary":
    """The ``size`` - 1 most frequent tokens plus ``<unk>`` (ties broken alphabetically)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 3:
      raise ValueError(f"Vocabulary: size must be an int >= 3, got {size!r}")
    counts = collections.Counter(t for t in tokens if t != UNK)
    counts.setdefault(EOS, 0)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return cls([UNK] + [w for w, _ in ranked[:size - 1]])

  def __len__(self) -> int:
    return len(self.words)

  def encode(self, tokens: Iterable[str]) -> np.ndarray:
    """int32 ids, 0 for unknown words."""
    get = self.ids.get
    return np.fromiter((get(t, 0) for t in tokens), np.int32)

  def decode(self, ids: Iterable[int]) -> list[str]:
    return [self.words[int(i)] for i in ids]
