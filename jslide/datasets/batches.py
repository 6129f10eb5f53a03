"""Shuffled, padded mini-batches of XC data as fixed-shape numpy arrays."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from jslide.datasets.xc_format import XCData


@dataclasses.dataclass(frozen=True)
class Batch:
  """One mini-batch; every array has batch_size rows (padding rows have mask False).

  feat_ids: int32[B, F] (-1 padding); feat_vals: float32[B, F]; labels: int32[B, L]
  (-1 padding); mask: bool[B].
  """

  feat_ids: np.ndarray
  feat_vals: np.ndarray
  labels: np.ndarray
  mask: np.ndarray


def _padded(indptr, values, rows, width, fill):
  lo, hi = indptr[rows], indptr[rows + 1]
  cols = np.arange(width)
  valid = cols[None, :] < (hi - lo)[:, None]
  idx = np.minimum(lo[:, None] + cols[None, :], max(len(values) - 1, 0))
  out = values[idx] if len(values) else np.zeros((len(rows), width), values.dtype)
  return np.where(valid, out, fill).astype(values.dtype)


def make_batch(data: XCData, rows: np.ndarray, batch_size: int, max_features: int,
               max_labels: int) -> Batch:
  """The examples ``rows`` padded to fixed shapes (features beyond max_features dropped)."""
  rows = np.asarray(rows, np.int64)
  pad = batch_size - len(rows)
  if pad < 0:
    raise ValueError(f"make_batch: {len(rows)} rows exceed batch_size={batch_size}")
  feat_ids = _padded(data.feat_indptr, data.feat_ids, rows, max_features, -1)
  feat_vals = _padded(data.feat_indptr, data.feat_vals, rows, max_features, 0)
  labels = _padded(data.label_indptr, data.label_ids, rows, max_labels, -1)
  mask = np.ones(len(rows), bool)
  if pad:
    feat_ids = np.pad(feat_ids, ((0, pad), (0, 0)), constant_values=-1)
    feat_vals = np.pad(feat_vals, ((0, pad), (0, 0)))
    labels = np.pad(labels, ((0, pad), (0, 0)), constant_values=-1)
    mask = np.pad(mask, (0, pad))
  return Batch(feat_ids.astype(np.int32), feat_vals.astype(np.float32),
               labels.astype(np.int32), mask)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: a permutation fixed by (seed, epoch), for exact resume."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batches(data: XCData, batch_size: int, *, max_features: int, max_labels: int,
            seed: int = 0, epoch: int = 0, shuffle: bool = True,
            start_batch: int = 0) -> Iterator[Batch]:
  """The batches of one epoch, from batch ``start_batch`` on (the last one padded)."""
  order = epoch_order(len(data), seed, epoch) if shuffle else np.arange(len(data))
  for b in range(start_batch, -(-len(data) // batch_size)):
    yield make_batch(data, order[b * batch_size:(b + 1) * batch_size], batch_size,
                     max_features, max_labels)


def num_batches(data: XCData, batch_size: int) -> int:
  return -(-len(data) // batch_size)
