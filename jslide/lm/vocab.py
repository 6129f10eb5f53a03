"""Word-level tokenization and the vocabulary of a language-model run."""

from __future__ import annotations

import collections
import re
from typing import Iterable, Sequence

import jax.numpy as jnp
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
    return cls.from_counts(collections.Counter(tokens), size)

  @classmethod
  def from_counts(cls, counts: dict, size: int) -> "Vocabulary":
    """:meth:`from_tokens` of tokens counted already ({token: count})."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 3:
      raise ValueError(f"Vocabulary: size must be an int >= 3, got {size!r}")
    counts = collections.Counter({t: c for t, c in counts.items() if t != UNK})
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


def unigram_log_prior(ids: np.ndarray, vocab_size: int):
  """A Flax initializer ``(key, shape, dtype) -> [vocab_size]`` of the words' log frequencies
  in ``ids`` (add-one smoothed): ``log((count + 1) / (len(ids) + vocab_size))``.

  Starting the output biases there (the softmax then predicts the unigram distribution
  before training, as a classifier's last bias starts at the log class prior) spares every
  head the first steps of learning word frequencies; sampled heads, which move only the
  biases of the words they score, learn them slowest.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise TypeError(f"unigram_log_prior: ids must be a 1-d integer array, got {ids.dtype}"
                    f"{list(ids.shape)}")
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(f"unigram_log_prior: ids must lie in [0, {vocab_size})")
  counts = np.bincount(ids, minlength=vocab_size).astype(np.float64)
  prior = np.log((counts + 1.0) / (ids.size + vocab_size)).astype(np.float32)

  def init(key, shape, dtype=np.float32):
    del key
    if tuple(shape) != (vocab_size,):
      raise ValueError(f"unigram_log_prior: asked for shape {tuple(shape)}, the prior has "
                       f"({vocab_size},)")
    return jnp.asarray(prior, dtype)

  return init
