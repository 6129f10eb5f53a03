"""Neuron lists (jslide.lsh.NeuronLists): the list builder and the rescoring kernel against
NumPy references, edge cases, bad input, and retrieval on a trained layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jslide.lsh import neuron_lists as nl
from jslide.lsh import reference as ref


def _kernel(x, w, b, lists, probes, k):
  out = (jax.ShapeDtypeStruct((x.shape[0], k), jnp.float32),
         jax.ShapeDtypeStruct((x.shape[0], k), jnp.int32))
  return jax.ffi.ffi_call("jslide_list_topk", out)(x, w, b, lists, probes)


def _check_against_reference(x, w, b, lists, probes, k):
  scores, ids = map(np.asarray, _kernel(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b),
                                        jnp.asarray(lists), jnp.asarray(probes), k))
  want_scores, want_ids = ref.neuron_list_topk(x, np.asarray(w, np.float32), b, lists, probes, k)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  # Ids agree wherever the reference's scores are apart (float32 sums may swap near-ties).
  with np.errstate(invalid="ignore"):  # -inf - -inf: both padding, compared as apart
    gaps = np.abs(np.diff(np.concatenate([want_scores, np.full((len(x), 1), -np.inf)], 1),
                          axis=1))
  gaps = np.where(np.isnan(gaps), np.inf, gaps)
  apart = np.isinf(want_scores) | (gaps > 1e-4)
  apart[:, 1:] &= gaps[:, :-1] > 1e-4
  np.testing.assert_array_equal(ids[apart], want_ids[apart])
  for row in ids:  # distinct, even when a neuron is in two probed lists
    kept = row[row >= 0]
    assert len(set(kept.tolist())) == len(kept)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70), st.integers(1, 40), st.integers(1, 90), st.integers(1, 12),
       st.integers(1, 30), st.integers(1, 4), st.integers(1, 9), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_kernel_matches_the_reference(b, d, n, c, s, p, k, bf16, seed):
  """Random shapes (d below, at and past the 8 and 16 lanes of a vector): k larger or
  smaller than the distinct candidates, lists with -1 holes and repeated neurons, probes
  repeating a list; a bfloat16 table scores as its rows widened to float32."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  w = rng.normal(size=(n, d)).astype(np.float32)
  bias = rng.normal(size=n).astype(np.float32)
  lists = rng.integers(-1, n, size=(c, s)).astype(np.int32)
  probes = rng.integers(0, c, size=(b, p)).astype(np.int32)
  if bf16:
    w = jnp.asarray(w, jnp.bfloat16)
  _check_against_reference(x, w, bias, lists, probes, k)


def test_edge_cases_empty_lists_nan_and_a_batch_of_one():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(10, 8)).astype(np.float32)
  bias = np.zeros(10, np.float32)
  lists = np.array([[-1, -1, -1], [3, 3, 7]], np.int32)  # an empty list, a repeated neuron
  x = rng.normal(size=(1, 8)).astype(np.float32)
  scores, ids = map(np.asarray, _kernel(x, w, bias, lists, np.array([[0]], np.int32), 2))
  assert ids.tolist() == [[-1, -1]] and np.all(np.isneginf(scores))
  scores, ids = map(np.asarray, _kernel(x, w, bias, lists, np.array([[1, 0]], np.int32), 4))
  assert sorted(ids[0, :2].tolist()) == [3, 7] and ids[0, 2:].tolist() == [-1, -1]
  _check_against_reference(x, w, bias, lists, np.array([[1, 1]], np.int32), 4)
  nan = np.full((1, 8), np.nan, np.float32)  # NaN scores are never kept
  assert np.asarray(_kernel(nan, w, bias, lists, np.array([[1]], np.int32), 2)[1]).tolist() == [[-1, -1]]


def test_kernel_refuses_out_of_range_lists_and_probes():
  w, bias, x = jnp.zeros((5, 4)), jnp.zeros(5), jnp.zeros((2, 4))
  good = jnp.zeros((3, 2), jnp.int32)
  with pytest.raises(Exception, match="lists holds 5"):
    _kernel(x, w, bias, good.at[1, 1].set(5), jnp.zeros((2, 1), jnp.int32), 1)
  with pytest.raises(Exception, match="probes holds 3"):
    _kernel(x, w, bias, good, jnp.full((2, 1), 3, jnp.int32), 1)
  with pytest.raises(Exception, match="bias must be"):
    _kernel(x, w, jnp.zeros(4), good, jnp.zeros((2, 1), jnp.int32), 1)


def test_lists_hold_each_regions_labels_first_then_the_best_scores_at_its_centroid():
  rng = np.random.default_rng(1)
  n, d, q = 40, 6, 300
  w = rng.normal(size=(n, d)).astype(np.float32)
  bias = rng.normal(size=n).astype(np.float32)
  queries = rng.normal(size=(q, d)).astype(np.float32)
  labels = rng.integers(-1, n, size=(q, 3)).astype(np.int32)
  labels[:, 0] = rng.integers(0, 5, size=q)  # a few frequent labels, so counts differ
  centroids = np.asarray(nl.fit_query_centroids(jax.random.PRNGKey(0), queries, 7, iters=5))
  index = nl.build_neuron_lists(centroids, queries, labels, w, bias, list_size=25, probes=2)
  np.testing.assert_array_equal(np.asarray(index.lists),
                                ref.neuron_lists(centroids, queries, labels, w, bias, 25))
  assert index.candidates == 50 and index.num_lists == 7


def test_query_centroids_find_separated_clusters():
  rng = np.random.default_rng(2)
  centres = 10 * rng.normal(size=(4, 3)).astype(np.float32)
  queries = (centres[rng.integers(0, 4, 400)] + 0.1 * rng.normal(size=(400, 3))).astype(np.float32)
  cent = np.asarray(nl.fit_query_centroids(jax.random.PRNGKey(3), queries, 4, iters=10))
  nearest = np.min(np.linalg.norm(cent[:, None] - centres[None], axis=-1), axis=0)
  assert np.all(nearest < 0.5)


def test_bad_arguments_are_named():
  q, w = jnp.zeros((20, 4)), jnp.zeros((10, 4))
  cent = jnp.zeros((3, 4))
  labels = jnp.zeros((20, 2), jnp.int32)
  with pytest.raises(ValueError, match="num_lists=30 exceeds the 20 queries"):
    nl.fit_query_centroids(jax.random.PRNGKey(0), q, 30)
  with pytest.raises(ValueError, match="list_size=11 exceeds"):
    nl.build_neuron_lists(cent, q, labels, w, list_size=11, probes=1)
  with pytest.raises(ValueError, match="probes=4 exceeds the 3 regions"):
    nl.build_neuron_lists(cent, q, labels, w, list_size=5, probes=4)
  with pytest.raises(ValueError, match="labels"):
    nl.build_neuron_lists(cent, q, labels.at[0, 0].set(10), w, list_size=5, probes=1)
  index = nl.build_neuron_lists(cent, q, labels, w, list_size=5, probes=1)
  with pytest.raises(ValueError, match="k must be"):
    nl.neuron_list_topk(index, jnp.zeros((2, 4)), w, jnp.zeros(10), 0)
  with pytest.raises(ValueError, match=r"x \[B, 4\]"):
    nl.neuron_list_topk(index, jnp.zeros((2, 5)), w, jnp.zeros(10), 1)


@pytest.mark.slow
def test_lists_find_the_top_label_of_a_trained_layer():
  """On the output layer of a model trained on the WordNet data (one epoch), the lists of
  the training set's labels hold the exact top label of most test examples (the first
  4,096), reading 5% of the labels, and the top-1 through them equals exact ranking wherever
  they hold it."""
  from jslide import datasets as D
  from jslide.xc import trainer
  from jslide.xc.config import ModelConfig, RunConfig
  train, test = (D.bundled.load("wordnet", s).normalized() for s in ("train", "test"))
  test = test.subset(np.arange(4096))
  cfg = ModelConfig(train.num_features, train.num_labels, inference_lists=256,
                    inference_probes=2, inference_hash_tables=0)
  run = trainer.train(train, test, cfg, RunConfig(epochs=1), progress=False,
                      log=lambda *a: None)
  report = run["final"]["test"]
  assert report["labels_scored"] <= 0.05 * train.num_labels
  assert report["recall@1"] >= 0.8
  assert report["lsh_P@1"] >= report["P@1"] - 0.04


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 100), st.integers(1, 40), st.integers(1, 70),
       st.integers(0, 2**31 - 1))
def test_nearest_centroids_match_the_reference(b, c, d, p, seed):
  """The probes kernel against NumPy at random shapes: C below, at and past a panel of 32
  centroids, p up to 64 and to C, ties broken by lower index (repeated centroids)."""
  p = min(p, c, 64)
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  cent = rng.normal(size=(c, d)).astype(np.float32)
  cent[c // 2] = cent[0]  # a tie: the lower index first
  got = np.asarray(nl.nearest_centroids(x, cent, p))
  want = ref.nearest_centroids(x, cent, p)
  # Float32 sums may swap near-ties: compare where the reference's distances are apart.
  score = x.astype(np.float64) @ cent.T.astype(np.float64) - 0.5 * (cent.astype(np.float64) ** 2).sum(1)
  ranked = np.take_along_axis(score, want, axis=1)
  gaps = np.abs(np.diff(np.concatenate([ranked, np.full((b, 1), -np.inf)], 1), axis=1))
  apart = gaps > 1e-4
  apart[:, 1:] &= gaps[:, :-1] > 1e-4
  np.testing.assert_array_equal(got[apart], want[apart])
  assert all(len(set(r.tolist())) == p for r in got)


def test_nearest_centroids_edge_cases_and_bad_input():
  rng = np.random.default_rng(1)
  cent = rng.normal(size=(70, 5)).astype(np.float32)
  nan = np.full((2, 5), np.nan, np.float32)  # every distance NaN: the first p by index
  assert np.asarray(nl.nearest_centroids(nan, cent, 3)).tolist() == [[0, 1, 2]] * 2
  one = rng.normal(size=(1, 5)).astype(np.float32)
  assert sorted(np.asarray(nl.nearest_centroids(one, cent, 70))[0].tolist()) == list(range(70))
  # Beyond 64 probes, the scores are ranked by top_indices: the same answer.
  np.testing.assert_array_equal(np.asarray(nl.nearest_centroids(one, cent, 66))[0, :64],
                                np.asarray(nl.nearest_centroids(one, cent, 64))[0])
  with pytest.raises(ValueError, match="p=71 exceeds the 70 centroids"):
    nl.nearest_centroids(one, cent, 71)
  with pytest.raises(ValueError, match="centroids must be"):
    nl.nearest_centroids(one, cent[:, :4], 1)
  raw = jax.ffi.ffi_call("jslide_nearest_centroids", jax.ShapeDtypeStruct((1, 65), jnp.int32))
  with pytest.raises(Exception, match="p must be in"):  # the kernel checks too
    raw(jnp.asarray(one), jnp.asarray(cent))
