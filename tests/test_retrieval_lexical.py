"""The lexical half of a retrieval index (jslide.retrieval.lexical) against plain NumPy, and
the inverse document frequencies of the featurizer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, strategies as st

from jslide.retrieval.features import Featurizer
from jslide.retrieval.lexical import LexicalIndex, fuse, standardized, top


def _unit_rows(rng, n, f, density=0.3):
  m = sp.random(n, f, density=density, format="csr", dtype=np.float32,
                random_state=np.random.RandomState(int(rng.integers(2**31))))
  norms = np.sqrt(np.asarray(m.multiply(m).sum(1))).ravel()
  return sp.diags(np.where(norms > 0, 1 / np.maximum(norms, 1e-30), 0)) @ m


@given(st.integers(1, 30), st.integers(0, 6), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_scores_are_the_cosine_with_every_passage_and_grow_with_added_rows(n, b, f, seed):
  rng = np.random.default_rng(seed)
  passages, queries = _unit_rows(rng, n, f), _unit_rows(rng, b, f)
  index = LexicalIndex(passages)
  want = (queries @ passages.T).toarray()
  np.testing.assert_allclose(index.scores(queries), want, rtol=1e-5, atol=1e-6)
  more = _unit_rows(rng, 3, f)
  np.testing.assert_allclose(index.grown(more).scores(queries),
                             (queries @ sp.vstack([passages, more]).T).toarray(),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="features"):
    index.scores(sp.csr_matrix((1, f + 1), dtype=np.float32))


def test_a_saved_lexical_index_loads_to_the_same_scores(tmp_path, rng):
  passages, queries = _unit_rows(rng, 20, 50), _unit_rows(rng, 4, 50)
  index = LexicalIndex(passages)
  index.save(str(tmp_path / "lexical.npz"))
  np.testing.assert_array_equal(LexicalIndex.load(str(tmp_path / "lexical.npz")).scores(queries),
                                index.scores(queries))


@given(st.integers(1, 5), st.integers(1, 30), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_top_takes_the_best_positive_scores_best_first(b, n, k, seed):
  rng = np.random.default_rng(seed)
  scores = np.where(rng.random((b, n)) < 0.3, 0.0, rng.random((b, n))).astype(np.float32)
  got = top(scores, k)
  assert got.shape == (b, min(k, n))
  for row, ids in zip(scores, got):
    want = [i for i in np.argsort(-row, kind="stable")[:min(k, n)] if row[i] > 0]
    assert ids[:len(want)].tolist() == want  # scores are distinct: one right order
    assert (ids[len(want):] == -1).all()


def _fuse_reference(ids, model, lexical, weight):
  """The same fusion written plainly: the first occurrence of each valid id, each score
  standardized over them."""
  first = {}
  for i, m, x in zip(ids.tolist(), model.tolist(), lexical.tolist()):
    if i >= 0 and np.isfinite(m) and i not in first:
      first[i] = (m, x)
  if not first:
    return {}
  ms, xs = (np.array([v[j] for v in first.values()]) for j in (0, 1))
  z = lambda a: (a - a.mean()) / a.std() if a.std() > 0 else 0 * a  # noqa: E731
  return dict(zip(first, z(ms) + weight * z(xs)))


@given(st.integers(0, 20), st.floats(0, 4), st.integers(0, 2**31 - 1))
def test_fuse_standardizes_each_score_over_the_distinct_candidates(m, weight, seed):
  rng = np.random.default_rng(seed)
  ids = rng.integers(-1, 8, size=m)
  model = np.where(rng.random(m) < 0.1, -np.inf, rng.normal(size=m))
  lexical = rng.random(m)
  # a repeated id carries the same scores (it is one passage)
  for i in np.unique(ids):
    model[ids == i], lexical[ids == i] = model[ids == i][:1], lexical[ids == i][:1]
  got_ids, got = fuse(ids, model, lexical, weight)
  want = _fuse_reference(ids, model, lexical, weight)
  assert sorted(got_ids.tolist()) == sorted(want)
  np.testing.assert_allclose(got, [want[i] for i in got_ids.tolist()], rtol=1e-5, atol=1e-5)
  assert (np.diff(got) <= 1e-6).all()  # best first


def test_fuse_with_no_lexical_weight_keeps_the_model_order_and_lexical_breaks_it():
  ids = np.array([3, 1, 2, -1, 1])
  model = np.array([2.0, 1.0, 0.0, 5.0, 1.0])
  lexical = np.array([0.0, 0.1, 0.9, 0.0, 0.1])
  assert fuse(ids, model, lexical, 0.0)[0].tolist() == [3, 1, 2]
  assert fuse(ids, model, lexical, 10.0)[0].tolist() == [2, 1, 3]
  np.testing.assert_array_equal(standardized(np.ones(3)), np.zeros(3))


def test_idf_weighs_a_rare_word_above_a_common_one():
  texts = ["common rare"] + [f"common filler{i}" for i in range(20)]
  plain = Featurizer(1 << 18, char_weight=0.0)  # words alone, no bucket shared
  fitted = plain.fit(texts)
  words = plain._vectorizers()[0]
  common, rare = (int(words.transform([w]).indices[0]) for w in ("common", "rare"))
  x = plain.transform(["common rare"])
  assert x[0, common] == pytest.approx(x[0, rare])  # without IDF the two weigh the same
  y = fitted.transform(["common rare"])
  assert y[0, rare] > 2 * y[0, common]
  np.testing.assert_allclose(np.sqrt(y.multiply(y).sum()), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="idf must be two arrays"):
    Featurizer(1 << 12, idf=(np.ones(3), np.ones(3)))
  with pytest.raises(ValueError, match="finite and positive"):
    Featurizer(16, idf=(np.ones(16), np.full(16, np.nan)))
