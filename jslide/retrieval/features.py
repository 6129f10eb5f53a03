"""Text to the model's sparse input: hashed word and character n-grams.

scikit-learn's ``HashingVectorizer`` hashes words and word bigrams, and the character
4-grams within words (``char_wb``, which match a word's other forms: "descriptor" and
"descriptors"), into ``num_features`` buckets with no vocabulary to keep, so text added
later featurizes the same way. Each part's counts are sublinear (``1 + log tf``), weighted
by the bucket's inverse document frequency over the indexed passages once :meth:`Featurizer.fit`
has seen them (so a query's rare words, not "a" and "the", carry it, and a long text's largest
features, the ones kept, are its telling ones), each part has unit norm, and the character
part is weighted ``char_weight`` before the whole is normalized again.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jslide.datasets.xc_format import XCData


@dataclasses.dataclass(frozen=True)
class Featurizer:
  """Hashed word 1-2-grams and in-word character 4-grams, ``num_features`` buckets;
  ``idf``: (word, character) float32[num_features] inverse document frequencies
  (:meth:`fit`), or None for none."""

  num_features: int = 1 << 18
  char_weight: float = 0.5
  idf: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(default=None, compare=False,
                                                                repr=False)

  def __post_init__(self):
    if not isinstance(self.num_features, int) or not 16 <= self.num_features <= 1 << 26:
      raise ValueError(f"Featurizer: num_features must be an int in [16, 2**26], got "
                       f"{self.num_features!r}")
    if not 0.0 <= self.char_weight <= 10.0:
      raise ValueError(f"Featurizer: char_weight must be in [0, 10], got {self.char_weight!r}")
    if self.idf is not None:
      if len(self.idf) != 2 or any(np.shape(a) != (self.num_features,) for a in self.idf):
        raise ValueError(f"Featurizer: idf must be two arrays of shape ({self.num_features},)")
      if not all(np.all(np.isfinite(a)) and np.all(a > 0) for a in self.idf):
        raise ValueError("Featurizer: idf must be finite and positive")

  def _vectorizers(self):
    from sklearn.feature_extraction.text import HashingVectorizer
    common = dict(n_features=self.num_features, alternate_sign=False, norm=None,
                  dtype=np.float32)
    return (HashingVectorizer(analyzer="word", ngram_range=(1, 2), **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=(4, 4), **common))

  def fit(self, texts: list[str]) -> "Featurizer":
    """This featurizer with the smoothed inverse document frequency of each bucket over
    ``texts`` (scikit-learn's ``TfidfTransformer``: ``ln((1 + n) / (1 + df)) + 1``)."""
    from sklearn.feature_extraction.text import TfidfTransformer
    idf = tuple(TfidfTransformer().fit(v.transform(texts)).idf_.astype(np.float32)
                for v in self._vectorizers())
    return dataclasses.replace(self, idf=idf)

  def featurize(self, texts: list[str], max_features: int | None = None):
    """(the features of :meth:`transform`, each row cut to its ``max_features`` largest
    (:func:`keep_largest`; None: all), and the word 1-2-gram counts alone, which say what
    words a text has): one pass of the vectorizers for both."""
    from sklearn.preprocessing import normalize
    words, chars = (v.transform(texts).tocsr() for v in self._vectorizers())
    parts = []
    idf = self.idf or (None, None)
    for m, weight, part_idf in ((words, 1.0, idf[0]), (chars, self.char_weight, idf[1])):
      m = m.copy()  # the word counts are returned as they are
      m.data = 1.0 + np.log(m.data)  # sublinear term frequency
      if part_idf is not None:
        m.data *= part_idf[m.indices]
      parts.append(normalize(m) * weight)
    out = normalize((parts[0] + parts[1]).tocsr()).astype(np.float32)
    out.sort_indices()
    return (out if max_features is None else keep_largest(out, max_features)), words

  def transform(self, texts: list[str]):
    """scipy CSR float32[len(texts), num_features], unit rows (empty text: an empty row)."""
    return self.featurize(texts)[0]


def to_xc(features, labels: np.ndarray | None, num_labels: int) -> XCData:
  """:class:`jslide.datasets.XCData` of a CSR feature matrix and one label per row
  (``labels`` int[n]; None: no labels)."""
  n = features.shape[0]
  label_ids = (np.zeros(0, np.int32) if labels is None else np.asarray(labels, np.int32))
  label_indptr = (np.zeros(n + 1, np.int64) if labels is None else np.arange(n + 1, dtype=np.int64))
  return XCData(feat_indptr=features.indptr.astype(np.int64),
                feat_ids=features.indices.astype(np.int32),
                feat_vals=features.data.astype(np.float32),
                label_indptr=label_indptr, label_ids=label_ids,
                num_features=features.shape[1], num_labels=num_labels)


def keep_largest(features, max_features: int):
  """The CSR matrix with each row cut to its ``max_features`` largest entries (in index
  order), so a batch of ``max_features`` columns drops nothing."""
  features = features.tocsr(copy=True)
  counts = np.diff(features.indptr)
  if counts.max(initial=0) <= max_features:
    return features
  keep = np.ones(features.nnz, bool)
  for i in np.flatnonzero(counts > max_features):
    a, b = features.indptr[i], features.indptr[i + 1]
    order = np.argsort(-features.data[a:b], kind="stable")
    keep[a + order[max_features:]] = False
  rows = np.repeat(np.arange(features.shape[0]), counts)[keep]
  import scipy.sparse as sp
  out = sp.csr_matrix((features.data[keep], (rows, features.indices[keep])),
                      shape=features.shape, dtype=np.float32)
  out.sort_indices()
  return out
