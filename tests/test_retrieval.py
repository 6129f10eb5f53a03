"""The index as an associative memory: MIPS keys, k-means buckets with ranked probes, the
query's fill and cap, and the recall measure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jslide import lsh

from helpers import normal


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 12), b=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_mips_keys_are_unit_and_order_rows_by_the_layer_score(n, d, b, seed):
  rng = np.random.default_rng(seed)
  w = normal(rng, n, d) + 3.0  # a common component, as trained rows have
  bias = normal(rng, n)
  x = normal(rng, b, d)
  keys = lsh.mips_keys(w, bias)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(keys), axis=1), 1.0, rtol=1e-5)
  cos = np.asarray(lsh.mips_queries(x) @ keys.T)
  score = np.asarray(x @ w.T + bias)
  # The same order: the two differ by a per-query shift and a positive per-query scale.
  shift = score - score.mean(1, keepdims=True)
  cshift = cos - cos.mean(1, keepdims=True)
  scale = (np.linalg.norm(shift, axis=1, keepdims=True) /
           np.maximum(np.linalg.norm(cshift, axis=1, keepdims=True), 1e-30))
  np.testing.assert_allclose(cshift * scale, shift, atol=1e-3 * (1 + np.abs(shift).max()))


def test_mips_simhash_collides_more_with_higher_scoring_rows(rng):
  """The bit agreement of query and row codes falls with the angle in MIPS space, so with the
  score: rows are ranked by their agreement as by their score (Spearman > 0.8)."""
  w, b, x = normal(rng, 400, 16), normal(rng, 400), normal(rng, 1, 16)
  h = lsh.MIPSHash.init(jax.random.PRNGKey(0), 16, 1, 512)
  agree = np.mean(np.asarray(h.hash(x)) == np.asarray(h.hash_keys(w, b)), axis=1)
  score = np.asarray(x @ w.T + b)[0]
  rank = lambda v: np.argsort(np.argsort(v))
  assert np.corrcoef(rank(agree), rank(score))[0, 1] > 0.8


def _cluster_index(rng, n=600, d=8, k=4, l=1, probes=4):
  w, b = normal(rng, n, d), normal(rng, n, scale=0.1)
  index = jax.jit(lsh.build)(lsh.ClusterHash.init(jax.random.PRNGKey(1), d, k, l,
                                                  probes=probes), w, b)
  return w, b, index


def test_cluster_hash_buckets_rows_by_their_nearest_learned_centroid(rng):
  w, b, index = _cluster_index(rng)
  h = index.hasher
  keys = np.asarray(lsh.mips_keys(w, b))
  cent = np.asarray(h.centroids)[0]
  codes = np.asarray(h.hash_keys(w, b))[:, 0]
  np.testing.assert_array_equal(codes, np.argmax(keys @ cent.T, axis=1))
  np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, rtol=1e-5)
  sizes = np.diff(np.asarray(index.offsets)[0])
  assert sizes.sum() == w.shape[0] and (sizes > 0).sum() >= 12  # refitted: few empty buckets


def test_cluster_probes_come_best_first(rng):
  w, b, index = _cluster_index(rng, l=2, probes=5)
  x = normal(rng, 7, 8)
  codes = np.asarray(index.hasher.hash(x)).reshape(7, 5, 2)  # [B, P, L]
  scores = np.einsum("bd,lcd->blc", np.asarray(lsh.mips_queries(x)),
                     np.asarray(index.hasher.centroids))
  for t in range(2):
    got = np.take_along_axis(scores[:, t], codes[:, :, t], axis=1)
    assert np.all(np.diff(got, axis=1) <= 1e-6)
    np.testing.assert_allclose(got[:, 0], scores[:, t].max(axis=1), rtol=1e-6)


def test_ranked_query_reads_buckets_in_probe_order_and_stops_at_the_active_size(rng):
  w, b, index = _cluster_index(rng, probes=16)
  x = normal(rng, 5, 8)
  codes = np.asarray(index.hasher.hash(x))
  offsets, ids = np.asarray(index.offsets)[0], np.asarray(index.ids)[0]
  got = np.asarray(lsh.query(index, x, active=100, key=jax.random.PRNGKey(0),
                             strategy="ranked", fill=False))
  for r in range(5):
    want = np.concatenate([ids[offsets[c]:offsets[c + 1]] for c in codes[r]])[:100]
    np.testing.assert_array_equal(got[r, :len(want)], want)


def test_all_probes_find_every_row_and_exact_top_k(rng):
  w, b, index = _cluster_index(rng, n=200, probes=16)  # 16 probes of 16 buckets: all rows
  x = normal(rng, 6, 8)
  got = lsh.query(index, x, active=200, key=jax.random.PRNGKey(0), strategy="ranked",
                  fill=False)
  top = jax.lax.top_k(x @ w.T + b, 5)[1]
  np.testing.assert_array_equal(np.asarray(lsh.recall_of_top_k(got, top)), 1.0)


def test_fill_false_pads_with_minus_one_and_retrieved_caps_the_index(rng):
  w, b, index = _cluster_index(rng, probes=2)
  x = normal(rng, 4, 8)
  key = jax.random.PRNGKey(3)
  bare = np.asarray(lsh.query(index, x, active=500, key=key, strategy="ranked", fill=False))
  found = (bare >= 0).sum(1)
  assert np.all(found < 500) and np.all(bare[:, -1] == -1)
  assert all(np.all(bare[r, :found[r]] >= 0) for r in range(4))
  capped = np.asarray(lsh.query(index, x, active=500, key=key, strategy="ranked",
                                retrieved=10))
  np.testing.assert_array_equal(capped[:, :10], bare[:, :10])  # then random fill
  assert np.all(capped >= 0) and all(len(set(r)) == 500 for r in capped)
  with pytest.raises(ValueError, match="retrieved"):
    lsh.query(index, x, active=5, key=key, retrieved=-1)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 6), a=st.integers(1, 12), k=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_recall_of_top_k_matches_a_set_count(b, a, k, seed):
  rng = np.random.default_rng(seed)
  got = rng.integers(-1, 15, size=(b, a))
  top = np.stack([rng.choice(15, size=k, replace=False) for _ in range(b)])
  want = [len(set(top[r]) & set(got[r][got[r] >= 0])) / k for r in range(b)]
  np.testing.assert_allclose(np.asarray(lsh.recall_of_top_k(jnp.asarray(got, jnp.int32),
                                                            jnp.asarray(top, jnp.int32))),
                             want, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(r=st.integers(1, 6), c=st.integers(1, 3000), seed=st.integers(0, 2**31 - 1),
       data=st.data())
def test_top_indices_kernel_matches_lax_top_k_with_ties(r, c, seed, data):
  # k = 1 (max, then first position), k <= 8 (one pass) and larger k (a threshold: from a
  # sample of the row when C >= 256, else a histogram) take different paths: all are drawn.
  k = data.draw(st.one_of(st.integers(1, min(c, 10)), st.integers(1, c)))
  rng = np.random.default_rng(seed)
  if data.draw(st.booleans()):
    scores = jnp.asarray(rng.integers(0, 5, size=(r, c)), jnp.float32)  # many ties
  else:  # distinct values over a few binades, as trained scores are
    scores = jnp.asarray(rng.normal(size=(r, c)) * 10.0 ** rng.integers(-3, 3), jnp.float32)
  got = lsh.cluster.top_indices(scores, k)
  want = jax.lax.top_k(scores, k)[1]
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 200), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_top_indices_ranks_nan_last_and_ties_by_position(c, seed, data):
  k = data.draw(st.integers(1, c))
  rng = np.random.default_rng(seed)
  scores = rng.choice(np.array([np.nan, -np.inf, np.inf, -1.0, 0.0, 2.5], np.float32), size=c)
  got = np.asarray(lsh.cluster.top_indices(jnp.asarray(scores[None]), k))[0]
  nan_last = np.where(np.isnan(scores), 1, 0)
  rank = np.lexsort((np.arange(c), -np.nan_to_num(scores, nan=0.0, posinf=np.inf), nan_last))
  np.testing.assert_array_equal(got, rank[:k])


def test_top_indices_when_the_sampled_threshold_misjudges():
  """A row whose sampled positions hold its largest scores: the threshold read off the sample
  lets fewer than k through, and the histogram fallback must still give the exact top k."""
  c, k = 1024, 100
  scores = np.zeros((2, c), np.float32)
  scores[:, np.arange(64) * c // 64] = 1000.0 + np.arange(64)
  scores[1, 5::7] = np.linspace(-1.0, 1.0, len(range(5, c, 7)))
  got = lsh.cluster.top_indices(jnp.asarray(scores), k)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.lax.top_k(scores, k)[1]))


def test_top_indices_refuses_bad_input():
  scores = jnp.zeros((2, 5), jnp.float32)
  with pytest.raises(ValueError, match="k=6 exceeds the 5 scores"):
    lsh.cluster.top_indices(scores, 6)
  with pytest.raises(ValueError, match="k must be"):
    lsh.cluster.top_indices(scores, 0)
  with pytest.raises(TypeError, match="scores must be float32"):
    lsh.cluster.top_indices(jnp.zeros((2, 5), jnp.int32), 1)
  with pytest.raises(ValueError, match="scores must have rank 2"):
    lsh.cluster.top_indices(jnp.zeros(5, jnp.float32), 1)


@pytest.mark.slow
def test_from_rows_starts_every_table_at_keys_of_distinct_rows(rng):
  w, b = normal(rng, 300, 8), normal(rng, 300)
  fam = lsh.ClusterHash.from_rows(jax.random.PRNGKey(0), w, b, num_hashes=5, num_hash_tables=3)
  keys = np.asarray(lsh.mips_keys(w, b))
  cent = np.asarray(fam.centroids)
  assert cent.shape == (3, 32, 10)
  for table in cent:  # each centroid is a row's key, 32 different rows per table
    match = np.argmin(np.linalg.norm(table[:, None] - keys[None], axis=-1), axis=1)
    np.testing.assert_allclose(table, keys[match], atol=1e-6)
    assert len(set(match.tolist())) == 32
  assert not np.allclose(cent[0], cent[1])
  small = lsh.ClusterHash.from_rows(jax.random.PRNGKey(0), w[:10], b[:10], num_hashes=5,
                                    num_hash_tables=1)  # fewer rows than buckets: rows repeat
  assert small.centroids.shape == (1, 32, 10)


@pytest.mark.slow
def test_inference_index_finds_the_top_rows_that_one_table_misses():
  """More tables of independent k-means partitions hold the exact top neuron for more
  queries than the layer's one-table training index, within 5% of the neurons."""
  from flax import nnx

  import jslide

  rng = np.random.default_rng(0)
  layer = jslide.nn.SparseDense(32, 4096, active=204, hash_family="cluster", num_hashes=8,
                                num_hash_tables=1, rngs=nnx.Rngs(0))
  w = rng.normal(size=(4096, 32)).astype(np.float32)
  layer.kernel.set_value(jnp.asarray(w))
  layer.rebuild_index()
  x = jnp.asarray(w[rng.choice(4096, 256, replace=False)]  # a row's direction, and noise
                  + rng.normal(size=(256, 32)).astype(np.float32))
  top = jax.lax.top_k(layer.exact(x), 1)[1]
  key = jax.random.PRNGKey(1)
  own = lsh.recall_of_top_k(layer.retrieve(x, key=key), top)
  index = layer.build_inference_index(jax.random.PRNGKey(2), num_hash_tables=6)
  assert index.num_hash_tables == 6 and index.num_buckets == 256
  found = lsh.recall_of_top_k(layer.retrieve(x, key=key, index=index), top)
  assert float(found.mean()) >= 0.9 and float(found.mean()) > float(own.mean()) + 0.1
  scores, ids = layer.topk(x, 1, key=key, index=index)  # rescored exactly
  hit = np.asarray(found) == 1
  np.testing.assert_array_equal(np.asarray(ids)[hit, 0], np.asarray(top)[hit, 0])
  warm = layer.build_inference_index(key, previous=index, iters=1)  # keeps tables, probes
  assert (warm.num_hash_tables, warm.hasher.probes) == (6, index.hasher.probes)
