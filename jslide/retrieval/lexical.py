"""The lexical half of a retrieval index: the cosine of a query's features and each
passage's (:class:`jslide.retrieval.features.Featurizer`: IDF-weighted hashed word and
character n-grams, unit rows), read through an inverted index (the passages' feature matrix
by columns, so a query touches only its own features' passages), and its fusion with the
model's scores.

Why both: the model maps a query's words to passages through a 256-wide embedding learned
from the passages' own sentences and spans; it generalizes across words, but it blurs the
exact rare words that short, written-apart queries (manual-page NAME lines, package
synopses) share with their passage. The cosine keeps them. Each score is standardized over a
query's candidates (the model's best and the cosine's best) before they are added, so neither
needs calibrating against the other.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class LexicalIndex:
  """The passages' features (CSR float32[num_passages, num_features], unit rows) kept by
  column: ``scores`` of a batch of queries against every passage cost the length of their
  features' posting lists."""

  def __init__(self, passage_features):
    features = sp.csr_matrix(passage_features, dtype=np.float32)
    self.num_passages, self.num_features = features.shape
    self._by_feature = features.T.tocsr()  # num_features x num_passages: posting lists

  @property
  def passage_features(self):
    """CSR float32[num_passages, num_features]."""
    return self._by_feature.T.tocsr()

  def scores(self, query_features) -> np.ndarray:
    """float32[B, num_passages]: the cosine of each query (CSR rows, unit or empty) with each
    passage."""
    if query_features.shape[1] != self.num_features:
      raise ValueError(f"LexicalIndex.scores: queries have {query_features.shape[1]} "
                       f"features, the index {self.num_features}")
    return np.asarray((sp.csr_matrix(query_features) @ self._by_feature).todense(), np.float32)

  def grown(self, passage_features) -> "LexicalIndex":
    """A new index with the rows of ``passage_features`` appended as passages."""
    return LexicalIndex(sp.vstack([self.passage_features, passage_features]).tocsr())

  def save(self, path: str) -> None:
    sp.save_npz(path, self.passage_features, compressed=False)

  @classmethod
  def load(cls, path: str) -> "LexicalIndex":
    return cls(sp.load_npz(path))


def top(scores: np.ndarray, k: int) -> np.ndarray:
  """int32[B, min(k, N)]: the passages of the ``k`` best ``scores`` float32[B, N] per row,
  best first (a zero score, no shared feature, is never taken: -1 instead)."""
  k = min(k, scores.shape[1])
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
  ids = np.take_along_axis(part, order, 1).astype(np.int32)
  return np.where(np.take_along_axis(scores, ids, 1) > 0, ids, -1)


def standardized(x: np.ndarray) -> np.ndarray:
  """``(x - mean) / std`` over x (all of it); zeros where x is constant."""
  sd = x.std()
  return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def fuse(ids: np.ndarray, model_scores: np.ndarray, lexical_scores: np.ndarray,
         weight: float) -> tuple[np.ndarray, np.ndarray]:
  """(passages, fused scores), best first, of one query's candidates ``ids`` int[M] (-1 and
  repeats ignored) with their ``model_scores`` and ``lexical_scores`` float[M]: each score
  standardized over the distinct candidates, then ``model + weight * lexical``."""
  ok = (ids >= 0) & np.isfinite(model_scores)
  ids, first = np.unique(ids[ok], return_index=True)
  if not ids.size:
    return ids.astype(np.int32), np.zeros(0, np.float32)
  fused = (standardized(model_scores[ok][first].astype(np.float64))
           + weight * standardized(lexical_scores[ok][first].astype(np.float64)))
  order = np.argsort(-fused, kind="stable")
  return ids[order].astype(np.int32), fused[order].astype(np.float32)
