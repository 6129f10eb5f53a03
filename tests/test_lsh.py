"""LSH: collision rates against theory, kernels against numpy, index, retrieval, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jslide import lsh
from jslide.lsh import reference as ref

from helpers import KERNEL_ERROR

KEY = jax.random.PRNGKey(0)


def pairs_at_angle(rng, n, d, theta):
  """n pairs of unit vectors at exactly angle theta."""
  x = rng.normal(size=(n, d))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  z = rng.normal(size=(n, d))
  z -= (z * x).sum(1, keepdims=True) * x
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  return x.astype(np.float32), (np.cos(theta) * x + np.sin(theta) * z).astype(np.float32)


def bit_agreement(c1, c2, bits_per_hash, hashes_per_table):
  """Fraction of individual hashes (groups of bits) on which two code arrays agree."""
  c1, c2 = np.asarray(c1).astype(np.int64), np.asarray(c2).astype(np.int64)
  mask = (1 << bits_per_hash) - 1
  agree = [((c1 >> (j * bits_per_hash)) & mask) == ((c2 >> (j * bits_per_hash)) & mask)
           for j in range(hashes_per_table)]
  return float(np.mean(agree))


@pytest.mark.parametrize("family", ["simhash", "sparse_simhash"])
@pytest.mark.parametrize("theta", [np.pi / 8, np.pi / 4, np.pi / 2, 3 * np.pi / 4])
def test_simhash_bit_collision_rate_is_one_minus_theta_over_pi(rng, family, theta):
  d, k, l, n = 128, 8, 64, 300
  if family == "simhash":
    h = lsh.SimHash.init(jax.random.PRNGKey(1), d, k, l)
  else:
    h = lsh.SparseSimHash.init(jax.random.PRNGKey(1), d, k, l)
  x, y = pairs_at_angle(rng, n, d, theta)
  rate = bit_agreement(h.hash(x), h.hash(y), 1, k)
  # 153,600 bit pairs: sampling sd < 0.002; sparse projections add a small bias.
  assert abs(rate - (1 - theta / np.pi)) < 0.025, (rate, 1 - theta / np.pi)


@pytest.mark.parametrize("relu", [False, True])
def test_dwta_collision_rate_rises_with_similarity(rng, relu):
  d, k, l, n = 128, 4, 64, 300
  h = lsh.DWTA.init(jax.random.PRNGKey(2), d, k, l, bin_size=8)
  rates = []
  for theta in [0.1, np.pi / 8, np.pi / 4, np.pi / 3, np.pi / 2, 2 * np.pi / 3]:
    x, y = pairs_at_angle(rng, n, d, theta)
    if relu:  # sparse, ReLU-like activations exercise densification of empty bins
      x, y = np.maximum(x, 0), np.maximum(y, 0)
    rates.append(bit_agreement(h.hash(x), h.hash(y), 3, k))
  assert all(a > b + 0.01 for a, b in zip(rates, rates[1:])), rates
  assert rates[0] > 0.8 and rates[-1] < 0.35, rates  # near 1/8 for unrelated vectors


@given(st.integers(1, 20), st.integers(2, 60), st.integers(1, 8), st.integers(1, 6),
       st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_simhash_kernel_matches_numpy(b, d, k, l, seed):
  rng = np.random.default_rng(seed)
  h = lsh.SimHash.init(jax.random.PRNGKey(seed), d, k, l)
  x = rng.normal(size=(b, d)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(h.hash(x)), ref.simhash_codes(x, h.idx, h.sign))


@given(st.integers(1, 20), st.sampled_from([2, 4, 8]), st.integers(1, 5), st.integers(1, 6),
       st.floats(0.0, 0.97), st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_dwta_kernel_matches_numpy_including_densification(b, bin_size, k, l, zero_frac, seed):
  rng = np.random.default_rng(seed)
  d = bin_size * 4
  h = lsh.DWTA.init(jax.random.PRNGKey(seed), d, k, l, bin_size=bin_size)
  x = rng.normal(size=(b, d)).astype(np.float32)
  x[rng.random((b, d)) < zero_frac] = 0.0
  x[0] = 0.0  # an all-zero input: every bin empty
  np.testing.assert_array_equal(np.asarray(h.hash(x)), ref.dwta_codes(x, h.bins))


def test_sparse_simhash_matches_numpy_and_dense_form(rng):
  dim, k, l = 5000, 7, 9
  h = lsh.SparseSimHash.init(jax.random.PRNGKey(3), dim, k, l)
  ids = rng.integers(0, dim, size=(6, 12)).astype(np.int32)
  ids[:, -3:] = -1
  vals = rng.random((6, 12)).astype(np.float32)
  codes = np.asarray(h.hash_sparse(ids, vals))
  np.testing.assert_array_equal(codes, ref.sparse_simhash_codes(ids, vals, h.seeds))
  dense = np.zeros((6, dim), np.float32)
  for r in range(6):
    np.add.at(dense[r], ids[r][ids[r] >= 0], vals[r][ids[r] >= 0])
  np.testing.assert_array_equal(np.asarray(h.hash(dense)), codes)
  entries = ref.sparse_simhash_entries(h.seeds, np.arange(dim))
  assert abs((entries != 0).mean() - 1 / 3) < 0.01  # a third of the entries non-zero


@pytest.mark.parametrize("family", ["simhash", "dwta", "sparse_simhash"])
def test_csr_index_holds_exactly_the_matching_rows(rng, family):
  n, d = 3000, 32
  w = rng.normal(size=(n, d)).astype(np.float32)
  h = {"simhash": lambda: lsh.SimHash.init(KEY, d, 5, 7),
       "dwta": lambda: lsh.DWTA.init(KEY, d, 2, 7, bin_size=4),
       "sparse_simhash": lambda: lsh.SparseSimHash.init(KEY, d, 5, 7)}[family]()
  index = jax.jit(lsh.build)(h, w)
  codes = np.asarray(h.hash(w))
  offsets, ids = ref.build_index(codes, h.num_buckets)
  np.testing.assert_array_equal(np.asarray(index.offsets), offsets)
  np.testing.assert_array_equal(np.asarray(index.ids), ids)
  # and directly: bucket c of table t is exactly {r : codes[r, t] == c}
  o, i = np.asarray(index.offsets), np.asarray(index.ids)
  for t in range(7):
    for c in rng.integers(0, h.num_buckets, size=5):
      np.testing.assert_array_equal(i[t, o[t, c]:o[t, c + 1]], np.flatnonzero(codes[:, t] == c))


def test_empty_buckets_and_tiny_tables():
  w = np.zeros((3, 8), np.float32)  # all rows hash alike: most buckets empty
  index = lsh.build(lsh.SimHash.init(KEY, 8, 4, 3), w)
  assert int((np.diff(np.asarray(index.offsets), axis=1) == 0).sum()) == 3 * 15
  q = lsh.query(index, np.ones((2, 8), np.float32), active=5, key=KEY)
  # N = 3 < active = 5: all 3 rows, then -1 padding at the end
  assert np.all(np.sort(np.asarray(q)[:, :3], axis=1) == [0, 1, 2])
  assert np.all(np.asarray(q)[:, 3:] == -1)


def _check_rows(q, n):
  for row in np.asarray(q):
    real = row[row >= 0]
    assert len(set(real.tolist())) == len(real), "duplicate ids in a row"
    assert np.all(real < n)
    first_pad = np.argmax(row < 0) if np.any(row < 0) else len(row)
    assert np.all(row[first_pad:] == -1), "padding only at the end"


@pytest.mark.parametrize("strategy", ["vanilla", "topk", "threshold"])
def test_query_forced_ids_no_duplicates_determinism(rng, strategy):
  n, d = 2000, 16
  w = rng.normal(size=(n, d)).astype(np.float32)
  index = lsh.build(lsh.SimHash.init(KEY, d, 6, 8), w)
  x = w[:10] + 0.05 * rng.normal(size=(10, d)).astype(np.float32)
  force = rng.integers(0, n, size=(10, 3)).astype(np.int32)
  force[0, 1] = force[0, 0]  # a duplicate forced id
  force[1, 2] = -1           # padding in the forced ids
  f = jax.jit(lambda idx, x, key, force: lsh.query(idx, x, active=64, key=key,
                                                   strategy=strategy, force_ids=force))
  q = np.asarray(f(index, x, KEY, force))
  _check_rows(q, n)
  assert q.shape == (10, 64) and np.all(q >= 0)
  for r in range(10):
    wanted = [i for i in dict.fromkeys(force[r].tolist()) if i >= 0]
    assert q[r, :len(wanted)].tolist() == wanted
  np.testing.assert_array_equal(q, np.asarray(f(index, x, KEY, force)))
  assert not np.array_equal(q, np.asarray(f(index, x, jax.random.PRNGKey(7), force)))


def test_vanilla_takes_the_whole_union_when_it_fits(rng):
  n, d = 4000, 16
  w = rng.normal(size=(n, d)).astype(np.float32)
  index = lsh.build(lsh.SimHash.init(KEY, d, 10, 4), w)  # 1024 buckets: small buckets
  x = rng.normal(size=(5, d)).astype(np.float32)
  counts = ref.bucket_counts(index, index.hasher.hash(x))
  q = np.asarray(lsh.query(index, x, active=200, key=KEY))
  for r in range(5):
    union = set(counts[r])
    assert len(union) < 200
    assert union <= set(q[r].tolist())


def test_topk_and_threshold_prefer_ids_in_more_tables(rng):
  n, d, l = 4000, 16, 12
  w = rng.normal(size=(n, d)).astype(np.float32)
  index = lsh.build(lsh.SimHash.init(KEY, d, 4, l), w)  # 16 buckets: ~250 rows each
  x = w[:6]
  counts = ref.bucket_counts(index, index.hasher.hash(x))
  active = 40
  # Buckets hold ~250 rows: lift the per-bucket cap so counts are exact.
  top = np.asarray(lsh.query(index, x, active=active, key=KEY, strategy="topk",
                             max_per_bucket=n))
  thr = np.asarray(lsh.query(index, x, active=active, key=KEY, strategy="threshold",
                             threshold=l - 2, max_per_bucket=n))
  for r in range(6):
    c = counts[r]
    assert c[r] == l  # the row itself is in all its buckets
    got = sorted((c.get(i, 0) for i in top[r]), reverse=True)
    best = sorted(c.values(), reverse=True)[:active]
    assert got == best  # exactly the highest counts
    strong = {i for i, v in c.items() if v >= l - 2}
    if len(strong) <= active:
      assert strong <= set(thr[r].tolist())


def test_bucket_cap_bounds_what_is_read(rng):
  n, d = 5000, 8
  w = np.ones((n, d), np.float32)  # every row in one bucket per table
  index = lsh.build(lsh.SimHash.init(KEY, d, 4, 3), w)
  q = np.asarray(lsh.query(index, w[:4], active=10, key=KEY, strategy="topk",
                           max_per_bucket=7))
  _check_rows(q, n)
  assert q.shape == (4, 10) and np.all(q >= 0)


def test_planted_clusters_recall(rng):
  n_clusters, per, d = 100, 100, 64
  centers = rng.normal(size=(n_clusters, d)).astype(np.float32)
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  w = (np.repeat(centers, per, 0) + 0.1 * rng.normal(size=(n_clusters * per, d)) / np.sqrt(d))
  w = w.astype(np.float32)
  queries = (centers[:50] + 0.1 * rng.normal(size=(50, d)) / np.sqrt(d)).astype(np.float32)
  top10 = np.argsort(-(queries @ w.T), axis=1)[:, :10]
  index = lsh.build(lsh.SimHash.init(KEY, d, 8, 16), w)
  q = np.asarray(lsh.query(index, queries, active=100, key=KEY, strategy="topk"))  # 1% of N
  recall = np.mean([len(set(top10[i]) & set(q[i])) / 10 for i in range(50)])
  assert recall >= 0.9, recall


def test_schedule_matches_its_host_listing_and_rebuilds_under_jit(rng):
  sched = lsh.RebuildSchedule(initial_period=3, growth=1.5, max_period=8)
  expected = sched.steps(40)
  # periods 3, round(4.5) = 4, round(6.75) = 7, then capped at 8
  assert expected == [2, 6, 13, 21, 29, 37]
  w = jnp.asarray(rng.normal(size=(50, 8)), jnp.float32)
  index = lsh.build(lsh.SimHash.init(KEY, 8, 3, 2), w)

  @jax.jit
  def step(carry, t):
    state, index, w = carry
    w = w + 1.0  # the table moves every step
    now, state = sched.update(state, t)
    index = jax.lax.cond(now, lambda: lsh.rebuild(index, w), lambda: index)
    return (state, index, w), now

  (_, index, w), flags = jax.lax.scan(step, (sched.init(), index, w), jnp.arange(40))
  assert np.flatnonzero(np.asarray(flags)).tolist() == expected
  periods = np.diff(expected)
  assert np.all(periods[1:] >= periods[:-1]) and periods.max() <= 8


def test_index_memory_is_linear_in_rows_and_buckets():
  small = lsh.build(lsh.DWTA.init(KEY, 16, 2, 3, bin_size=8), np.ones((100, 16), np.float32))
  assert small.nbytes() == (3 * (64 + 1) + 3 * 100) * 4


def test_lsh_bad_input(rng):
  w = rng.normal(size=(100, 16)).astype(np.float32)
  h = lsh.SimHash.init(KEY, 16, 4, 3)
  index = lsh.build(h, w)
  x = w[:2]
  with pytest.raises(ValueError, match="num_hashes"):
    lsh.SimHash.init(KEY, 16, 0, 3)
  with pytest.raises(ValueError, match="exceeds 24"):
    lsh.SimHash.init(KEY, 16, 25, 3)
  with pytest.raises(ValueError, match="exceeds 24"):
    lsh.DWTA.init(KEY, 64, 9, 3, bin_size=8)
  with pytest.raises(ValueError, match="num_hash_tables"):
    lsh.DWTA.init(KEY, 16, 2, 1000)
  with pytest.raises(ValueError, match="power of two"):
    lsh.DWTA.init(KEY, 16, 2, 3, bin_size=6)
  with pytest.raises(ValueError, match="active=2 is smaller than the 3 forced"):
    lsh.query(index, x, active=2, key=KEY, force_ids=np.zeros((2, 3), np.int32))
  with pytest.raises(ValueError, match="force_ids holds 100"):
    lsh.query(index, x, active=8, key=KEY, force_ids=np.full((2, 1), 100, np.int32))
  with pytest.raises(ValueError, match="strategy"):
    lsh.query(index, x, active=8, key=KEY, strategy="best")
  with pytest.raises(ValueError, match="threshold=4 exceeds"):
    lsh.query(index, x, active=8, key=KEY, strategy="threshold", threshold=4)
  with pytest.raises(ValueError, match="built for dim=16"):
    lsh.query(index, np.ones((2, 8), np.float32), active=8, key=KEY)
  with pytest.raises(TypeError, match="x must be float32"):
    lsh.query(index, np.ones((2, 16), np.int32), active=8, key=KEY)
  with pytest.raises(ValueError, match=r"built for a table of shape \(100, 16\)"):
    lsh.rebuild(index, np.ones((99, 16), np.float32))
  with pytest.raises(TypeError, match="does not hash sparse inputs"):
    lsh.query_sparse(index, np.zeros((1, 2), np.int32), np.ones((1, 2), np.float32),
                     active=4, key=KEY)
  # A corrupt index is an error from the kernel, not an out-of-bounds read.
  bad = lsh.LSHIndex(hasher=h, offsets=index.offsets.at[:, 1:].set(10**6), ids=index.ids)
  with pytest.raises(KERNEL_ERROR, match="corrupt index"):
    jax.block_until_ready(jax.jit(lambda i, x: lsh.query(i, x, active=8, key=KEY))(bad, x))
  # So is a row id outside [0, N) in the buckets (issue 11, item 12): never an active id.
  bad_ids = lsh.LSHIndex(hasher=h, offsets=index.offsets, ids=index.ids.at[:, :].set(10**6))
  with pytest.raises(KERNEL_ERROR, match="corrupt index"):
    jax.block_until_ready(jax.jit(lambda i, x: lsh.query(i, x, active=8, key=KEY))(bad_ids, x))
  # Traced out-of-range forced ids are caught by the kernel.
  with pytest.raises(KERNEL_ERROR, match="force_ids holds 500"):
    jax.block_until_ready(jax.jit(lambda f: lsh.query(index, x, active=8, key=KEY,
                                                      force_ids=f))(np.full((2, 1), 500)))


def test_fill_groups_share_their_negatives(rng):
  n, d, b, active = 50_000, 16, 32, 200
  w = rng.normal(size=(n, d)).astype(np.float32)
  index = lsh.build(lsh.SimHash.init(KEY, d, 16, 2), w)  # 65,536 buckets: almost no hits
  x = rng.normal(size=(b, d)).astype(np.float32)
  per = np.asarray(lsh.query(index, x, active=active, key=KEY))
  shared = np.asarray(lsh.query(index, x, active=active, key=KEY, fill_group=None))
  grouped = np.asarray(lsh.query(index, x, active=active, key=KEY, fill_group=8))
  _check_rows(grouped, n)
  _check_rows(shared, n)
  assert shared.shape == (b, active) and np.all(shared >= 0)
  hits = ref.bucket_counts(index, index.hasher.hash(x))
  retrieved = set().union(*(set(c) for c in hits))
  assert len(retrieved) < 0.2 * b * active  # the buckets return few ids: most is fill
  # Per-example fill touches ~b * active rows; shared fill one active set's worth plus the hits.
  assert len(np.unique(per)) > 0.9 * b * active
  assert len(np.unique(shared)) <= active + len(retrieved)
  # Groups of 8: four groups, each sharing one active set's worth of fill.
  assert 3.5 * active < len(np.unique(grouped)) <= 4 * active + len(retrieved)
  with pytest.raises(ValueError, match="fill_group must be a positive int"):
    lsh.query(index, x, active=active, key=KEY, fill_group=0)


def test_cluster_refit_of_a_large_table_reads_an_even_sample(rng):
  """Issue 29: refitting k-means buckets over a 524,288-row FFN read every row in every Lloyd
  step (24 s per layer). A refit now runs its Lloyd steps on ``sample_per_bucket`` evenly
  spaced rows per centroid and assigns every row once: the centroids are exactly those of
  the sample, and on planted clusters the buckets still find them."""
  import dataclasses
  from jslide.lsh.cluster import ClusterHash, _lloyd_step, sample_rows
  from jslide.lsh.mips import mips_keys
  n_clusters, per, d = 64, 200, 32
  centers = rng.normal(size=(n_clusters, d)).astype(np.float32)
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  labels = rng.permutation(np.repeat(np.arange(n_clusters), per))
  w = (centers[labels] + 0.05 * rng.normal(size=(labels.size, d))).astype(np.float32)
  family = dataclasses.replace(ClusterHash.from_rows(KEY, w, num_hashes=6, num_hash_tables=1),
                               sample_per_bucket=8)
  rows = sample_rows(w.shape[0], 8 * 64)
  np.testing.assert_array_equal(rows, np.arange(512) * w.shape[0] // 512)
  sample = np.asarray(mips_keys(w))[rows]  # keys scaled by the whole table's statistics
  refit = family.refit(w)
  expected = family.centroids
  for _ in range(family.iters):  # Lloyd steps on the sample's keys only
    expected = _lloyd_step(sample, expected)
  np.testing.assert_allclose(np.asarray(refit.centroids), np.asarray(expected), atol=1e-5)
  # Each planted cluster lands mostly in one bucket.
  codes = np.asarray(refit.hash_keys(w))[:, 0]
  purity = np.mean([np.bincount(codes[labels == c]).max() / per for c in range(n_clusters)])
  assert purity > 0.9, purity
  assert sample_rows(100, 512) is None  # small tables: every row


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), block=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_row_blocks_visit_every_row_once(n, block, seed):
  """Issue 29: passes over a large table go a block of rows at a time; the last block
  overlaps the one before, and ``fresh`` marks each row in exactly one block."""
  from jslide.lsh._common import concat_row_blocks, map_row_blocks
  x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
  rows = concat_row_blocks(map_row_blocks(lambda p, _: p * 2, jnp.asarray(x), block), n)
  np.testing.assert_array_equal(np.asarray(rows), 2 * x)
  sums = map_row_blocks(lambda p, fresh: jnp.sum(jnp.where(fresh[:, None], p, 0), 0),
                        jnp.asarray(x), block)
  np.testing.assert_allclose(np.asarray(sums).sum(0), x.sum(0), rtol=1e-5, atol=1e-5)
  bf = jnp.asarray(x, jnp.bfloat16)  # bfloat16 rows come as float32, converted exactly
  got = concat_row_blocks(map_row_blocks(lambda p, _: p, bf, block), n)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(bf.astype(jnp.float32)))


def test_cluster_index_of_a_bfloat16_table_is_built_without_a_float32_copy(monkeypatch):
  """Issue 29: an index rebuild of a 524,288-row bfloat16 FFN made a float32 copy and the
  [N, d + 2] MIPS keys of the whole table (0.5 GB each, 3 GB over the 1b preset's four
  layers at once). The keys are now made a block of rows at a time: the codes are those of
  the keys of the whole table, for a table that is not a whole number of blocks, and the
  compiled rebuild's temporaries are under the size of the bfloat16 table itself."""
  from jslide.lsh import cluster
  from jslide.lsh.mips import mips_key_stats, mips_keys
  monkeypatch.setattr(cluster, "_CHUNK", 256)
  rng = np.random.default_rng(0)
  n, d = 3 * 256 + 77, 16
  w = jnp.asarray(rng.normal(size=(n, d)), jnp.bfloat16)
  b = jnp.asarray(rng.normal(size=n), jnp.float32)
  family = lsh.ClusterHash.from_rows(KEY, w.astype(jnp.float32), b, num_hashes=5,
                                     num_hash_tables=2)
  keys = np.asarray(mips_keys(w.astype(jnp.float32), b))
  want = np.argmax(np.einsum("nd,lcd->nlc", keys, np.asarray(family.centroids)), -1)
  np.testing.assert_array_equal(np.asarray(family.hash_keys(w, b)), want)
  mu, m2 = mips_key_stats(w, b)
  w32 = np.asarray(w.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(mu), w32.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(m2), np.max(((w32 - w32.mean(0)) ** 2).sum(1) +
                                               np.asarray(b) ** 2), rtol=1e-5)
  # Memory: a 65,536 x 64 bfloat16 table (8 MB) rebuilt with every default.
  big = jax.random.normal(KEY, (65_536, 64), jnp.bfloat16)
  monkeypatch.undo()
  index = jax.jit(lsh.build)(lsh.ClusterHash.init(KEY, 64, 6, 1, probes=4), big)
  temp = jax.jit(lsh.rebuild).lower(index, big).compile().memory_analysis().temp_size_in_bytes
  assert temp < big.nbytes * 1.5, (temp, big.nbytes)  # a float32 copy alone is 2x
