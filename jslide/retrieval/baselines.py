"""The searches a user would otherwise run on the same passages: BM25 (``bm25s``) and a
vector search (TF-IDF, truncated SVD embeddings, an exact inner-product FAISS index). Each
ranks passages and keeps the best per document, as :class:`jslide.retrieval.Index` does."""

from __future__ import annotations

import time

import numpy as np

from jslide.retrieval.documents import RANKED, Passage, best_per_document



def _best_documents(passages: list[Passage], order, k: int) -> list[str]:
  return [passages[i].doc for i in best_per_document(passages, order, k)]


class BM25:
  """Okapi BM25 over the passages (``bm25s``, English stopwords removed)."""

  name = "BM25 (bm25s)"

  def __init__(self, passages: list[Passage]):
    import bm25s
    t = time.perf_counter()
    self._bm25s, self.passages = bm25s, passages
    self.retriever = bm25s.BM25()
    self.retriever.index(bm25s.tokenize([p.text for p in passages], stopwords="en",
                                        show_progress=False), show_progress=False)
    self.build_s = time.perf_counter() - t

  def memory_bytes(self) -> int:
    scores = self.retriever.scores
    return int(sum(np.asarray(v).nbytes for v in scores.values() if hasattr(v, "nbytes")))

  def search(self, query: str, k: int = 10) -> list[str]:
    tokens = self._bm25s.tokenize([query], stopwords="en", return_ids=False,
                                  show_progress=False)
    if not any(t in self.retriever.vocab_dict for t in tokens[0]):
      return []  # no word of the passages (bm25s would raise)
    n = min(RANKED, len(self.passages))
    ids, _ = self.retriever.retrieve(tokens, k=n, show_progress=False, n_threads=1)
    return _best_documents(self.passages, ids[0], k)


class VectorSearch:
  """TF-IDF (word 1-2-grams, sublinear) reduced by truncated SVD to ``dim`` dimensions,
  unit vectors, searched exactly by inner product in FAISS (``IndexFlatIP``)."""

  name = "TF-IDF + SVD + FAISS"

  def __init__(self, passages: list[Passage], dim: int = 256, seed: int = 0):
    import faiss
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize
    t = time.perf_counter()
    self.passages, self._normalize = passages, normalize
    self.tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2,
                                 max_features=500_000, dtype=np.float32)
    x = self.tfidf.fit_transform([p.text for p in passages])
    dim = max(1, min(dim, x.shape[1] - 1, x.shape[0] - 1))
    self.svd = TruncatedSVD(dim, random_state=seed)
    emb = normalize(self.svd.fit_transform(x)).astype(np.float32)
    self.index = faiss.IndexFlatIP(emb.shape[1])
    self.index.add(emb)
    self.build_s = time.perf_counter() - t

  def memory_bytes(self) -> int:
    return int(self.index.ntotal * self.index.d * 4 + self.svd.components_.nbytes)

  def search(self, query: str, k: int = 10) -> list[str]:
    q = self.tfidf.transform([query])
    if not q.nnz:
      return []
    e = self._normalize(self.svd.transform(q)).astype(np.float32)
    _, ids = self.index.search(e, min(RANKED, len(self.passages)))
    return _best_documents(self.passages, ids[0], k)
