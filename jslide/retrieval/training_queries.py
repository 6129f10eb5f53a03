"""Training queries made from the passages themselves (no labelled queries needed), as
NeuralDB does: a passage's title, its sentences and random spans of its words, each
labelled with the passage."""

from __future__ import annotations

import re

import numpy as np

from jslide.retrieval.documents import Passage

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
SPAN_WORDS = (4, 16)  # a random span's length in words, inclusive


def training_queries(passages: list[Passage], *, sentences: int, spans: int,
                     seed: int) -> tuple[list[str], np.ndarray]:
  """(texts, passage numbers int32[n]): for each passage (numbered in order) its whole
  text, its title (when it has one), up to ``sentences`` of its sentences of 3 or more
  words (evenly spaced), and ``spans`` random spans of 4-16 of its words."""
  rng = np.random.default_rng(seed)
  texts: list[str] = []
  labels: list[int] = []
  for i, p in enumerate(passages):
    own = [p.text]
    if p.title:
      own.append(p.title)
    found = [s for s in _SENTENCE_END.split(p.text) if len(s.split()) >= 3]
    if len(found) > 1 and sentences:
      pick = np.unique(np.linspace(0, len(found) - 1, min(sentences, len(found))).astype(int))
      own.extend(found[j] for j in pick)
    words = p.text.split()
    for _ in range(spans):
      n = int(rng.integers(SPAN_WORDS[0], SPAN_WORDS[1] + 1))
      if len(words) <= n:
        own.append(" ".join(words))
        continue
      start = int(rng.integers(0, len(words) - n + 1))
      own.append(" ".join(words[start:start + n]))
    texts.extend(own)
    labels.extend([i] * len(own))
  return texts, np.asarray(labels, np.int32)
