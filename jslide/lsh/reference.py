"""NumPy implementations of the LSH kernels' maths, for tests (same hash functions)."""

from __future__ import annotations

import numpy as np

_DWTA_MAX_PROBES = 64


def mix32(x):
  """lowbias32 on uint32 arrays (wrapping arithmetic), as Mix32 in ffi/lsh.h."""
  x = np.asarray(x, np.uint32).copy()
  with np.errstate(over="ignore"):
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
  return x


def simhash_codes(x, idx, sign):
  x, idx, sign = np.asarray(x), np.asarray(idx), np.asarray(sign)
  proj = np.einsum("lkn,blkn->blk", sign, x[:, idx])
  bits = (proj >= 0).astype(np.int64)
  return (bits << np.arange(idx.shape[1])).sum(-1).astype(np.int32)


def dwta_codes(x, bins):
  x, bins = np.asarray(x), np.asarray(bins)
  l, k, bin_size = bins.shape
  nh = l * k
  vals = x[:, bins.reshape(nh, bin_size)]                        # [B, nh, bin]
  nonzero = vals != 0
  masked = np.where(nonzero, vals, -np.inf)
  value = np.where(nonzero.any(-1), masked.argmax(-1), -1)       # first max among non-zeros
  bits = int(np.log2(bin_size))
  h = np.arange(nh, dtype=np.uint32)
  with np.errstate(over="ignore"):
    probes = [mix32(h * np.uint32(0x9E3779B1) + np.uint32(a) * np.uint32(0x85EBCA6B)
                    + np.uint32(1)) % np.uint32(nh) for a in range(1, _DWTA_MAX_PROBES + 1)]
  out = value.copy()
  for a in range(_DWTA_MAX_PROBES):
    empty = out < 0
    out = np.where(empty, value[:, probes[a].astype(np.int64)], out)
  out = np.maximum(out, 0).reshape(-1, l, k)
  return (out << (np.arange(k) * bits)).sum(-1).astype(np.int32)


def sparse_simhash_entries(seeds, features):
  """The projection entries f32[L, K, F] for feature ids F."""
  seeds = np.asarray(seeds, np.uint32)
  with np.errstate(over="ignore"):
    f = mix32(np.asarray(features, np.uint32) + np.uint32(0x632BE5AB))
  h = mix32(seeds[..., None] ^ f)
  return np.where(h % 3 == 0, np.where(h >> 31, 1.0, -1.0), 0.0).astype(np.float32)


def sparse_simhash_codes(feat_ids, feat_vals, seeds):
  feat_ids, feat_vals = np.asarray(feat_ids), np.asarray(feat_vals, np.float32)
  l, k = np.asarray(seeds).shape
  out = np.zeros((feat_ids.shape[0], l), np.int32)
  for r in range(feat_ids.shape[0]):
    keep = feat_ids[r] >= 0
    e = sparse_simhash_entries(seeds, feat_ids[r][keep])       # [L, K, F]
    proj = (e * feat_vals[r][keep]).sum(-1)
    out[r] = ((proj >= 0).astype(np.int64) << np.arange(k)).sum(-1)
  return out


def build_index(codes, num_buckets):
  """(offsets [L, buckets + 1], ids [L, N]) by a stable sort per table."""
  codes = np.asarray(codes)
  n, l = codes.shape
  offsets = np.zeros((l, num_buckets + 1), np.int32)
  ids = np.zeros((l, n), np.int32)
  for t in range(l):
    ids[t] = np.argsort(codes[:, t], kind="stable")
    offsets[t, 1:] = np.cumsum(np.bincount(codes[:, t], minlength=num_buckets))
  return offsets, ids


def bucket_counts(index, codes):
  """For each query, {id: number of tables whose bucket holds it}."""
  offsets, ids = np.asarray(index.offsets), np.asarray(index.ids)
  out = []
  for row in np.asarray(codes):
    counts: dict[int, int] = {}
    for t, c in enumerate(row):
      for i in ids[t, offsets[t, c]:offsets[t, c + 1]]:
        counts[int(i)] = counts.get(int(i), 0) + 1
    out.append(counts)
  return out


def nearest_centroids(x, centroids, p):
  """int32[B, p] as ``jslide_nearest_centroids``: the p centroids nearest to each x (by
  x . c - |c|^2 / 2, float64 here), nearest first, ties by lower index, NaN last."""
  x, centroids = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
  score = x @ centroids.T - 0.5 * (centroids * centroids).sum(1)
  nan = np.isnan(score)
  index = np.broadcast_to(np.arange(centroids.shape[0]), score.shape)
  # Highest score first; NaN after -inf; then by index.
  order = np.lexsort((index, nan, -np.where(nan, -np.inf, score)))
  return order[:, :p].astype(np.int32)


def neuron_list_topk(x, w, b, lists, probes, k):
  """(scores f32[B, k], ids int32[B, k]) as ``jslide_list_topk``: the k best distinct neurons
  of each example's probed lists by x . w_n + b_n (float64 here), best first, ties by lower
  id; NaN and -inf never kept; -inf / -1 after the last."""
  x, w, b = (np.asarray(a, np.float64) for a in (x, w, b))
  lists, probes = np.asarray(lists), np.asarray(probes)
  scores = np.full((x.shape[0], k), -np.inf, np.float32)
  ids = np.full((x.shape[0], k), -1, np.int32)
  for e in range(x.shape[0]):
    cand = np.unique(lists[probes[e]].reshape(-1))
    cand = cand[cand >= 0]
    s = w[cand] @ x[e] + b[cand]
    keep = np.isfinite(s) | (s == np.inf)
    cand, s = cand[keep], s[keep]
    order = np.lexsort((cand, -s))[:k]
    scores[e, :len(order)], ids[e, :len(order)] = s[order], cand[order]
  return scores, ids


def neuron_lists(centroids, queries, labels, w, b, list_size):
  """int32[C, S] as ``build_neuron_lists``: region c's labels (of the queries nearest to its
  centroid) by count, most first, ties by lower id; then the other neurons by score at the
  centroid, highest first, ties by lower id."""
  centroids, queries, w, b = (np.asarray(a, np.float64) for a in (centroids, queries, w, b))
  labels = np.asarray(labels)
  d2 = ((queries[:, None, :] - centroids[None]) ** 2).sum(-1)
  region = np.argmin(d2, axis=1)
  out = np.zeros((centroids.shape[0], list_size), np.int32)
  for c in range(centroids.shape[0]):
    lab = labels[region == c].reshape(-1)
    counts = np.bincount(lab[lab >= 0], minlength=w.shape[0])
    score = w @ centroids[c] + b
    labelled = np.flatnonzero(counts)
    labelled = labelled[np.lexsort((labelled, -counts[labelled]))]
    rest = np.flatnonzero(counts == 0)
    rest = rest[np.lexsort((rest, -score[rest]))]
    out[c] = np.concatenate([labelled, rest])[:list_size]
  return out
