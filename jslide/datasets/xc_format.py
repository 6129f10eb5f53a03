"""Reading and writing extreme-classification data.

Two text formats, optionally gzipped (``.gz``):

- Extreme Classification Repository: a header ``num_points num_features num_labels``, then
  one example a line, ``l1,l2,... f:v f:v ...`` (a line may have no labels);
- multi-label libsvm: the same lines without the header.

Examples are parsed line by line into compact arrays (CSR), never into Python lists of
examples. Every problem is an :class:`XCFormatError` naming the file and line.
"""

from __future__ import annotations

import array
import dataclasses
import gzip
import hashlib
import math
import os
import re
import sys

import numpy as np

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_ID = 2**31 - 2  # ids are int32, and one more than an id (a count) must fit too
# ASCII digits only: str.isdigit() also accepts '²' or '١', which int() then refuses.
_UINT = re.compile(r"[0-9]+")
_INT = re.compile(r"-?[0-9]+")


class XCFormatError(ValueError):
  """A malformed or inconsistent data file (the message names the file and line)."""


@dataclasses.dataclass(frozen=True)
class XCData:
  """A multi-label dataset with sparse features, in CSR layout.

  Attributes:
    feat_indptr: int64[n + 1]; example i's features are entries
      ``feat_indptr[i]:feat_indptr[i + 1]`` of feat_ids / feat_vals.
    feat_ids: int32[nnz]. feat_vals: float32[nnz].
    label_indptr: int64[n + 1]. label_ids: int32[total labels].
    num_features, num_labels: the declared dimensions.
  """

  feat_indptr: np.ndarray
  feat_ids: np.ndarray
  feat_vals: np.ndarray
  label_indptr: np.ndarray
  label_ids: np.ndarray
  num_features: int
  num_labels: int

  def __len__(self) -> int:
    return len(self.feat_indptr) - 1

  def features_per_example(self) -> np.ndarray:
    return np.diff(self.feat_indptr)

  def labels_per_example(self) -> np.ndarray:
    return np.diff(self.label_indptr)

  def digest(self) -> str:
    """A SHA-256 of the dataset's arrays and dimensions (the same data, the same digest)."""
    h = hashlib.sha256(f"{self.num_features} {self.num_labels}".encode())
    for a in (self.feat_indptr, self.feat_ids, self.feat_vals, self.label_indptr,
              self.label_ids):
      h.update(np.ascontiguousarray(a).view(np.uint8).data)
    return h.hexdigest()

  def label_frequencies(self) -> np.ndarray:
    return np.bincount(self.label_ids, minlength=self.num_labels)

  def normalized(self) -> "XCData":
    """Feature values replaced by log(1 + v) scaled to unit L2 norm per example."""
    vals = np.log1p(np.maximum(self.feat_vals, 0)).astype(np.float32)
    row = np.repeat(np.arange(len(self)), self.features_per_example())
    norms = np.sqrt(np.bincount(row, weights=vals.astype(np.float64) ** 2, minlength=len(self)))
    vals = vals / np.maximum(norms[row], 1e-12).astype(np.float32)
    return dataclasses.replace(self, feat_vals=vals.astype(np.float32))

  def subset(self, rows) -> "XCData":
    """The examples ``rows`` (int indices, in that order)."""
    rows = np.asarray(rows, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
      raise ValueError(f"XCData.subset: rows must lie in [0, {len(self)})")

    def take(indptr, *arrays):
      counts = np.diff(indptr)[rows]
      new_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
      idx = np.repeat(indptr[rows] - new_ptr[:-1], counts) + np.arange(new_ptr[-1])
      return (new_ptr, *(a[idx] for a in arrays))

    feat_indptr, feat_ids, feat_vals = take(self.feat_indptr, self.feat_ids, self.feat_vals)
    label_indptr, label_ids = take(self.label_indptr, self.label_ids)
    return dataclasses.replace(self, feat_indptr=feat_indptr, feat_ids=feat_ids,
                               feat_vals=feat_vals, label_indptr=label_indptr,
                               label_ids=label_ids)

  def split(self, fraction: float, seed: int = 0) -> tuple["XCData", "XCData"]:
    """(rest, held out): a random ``fraction`` of the examples held out (e.g. validation)."""
    if not 0 < fraction < 1:
      raise ValueError(f"XCData.split: fraction must lie in (0, 1), got {fraction!r}")
    order = np.random.default_rng(seed).permutation(len(self))
    cut = int(round(fraction * len(self)))
    return self.subset(np.sort(order[cut:])), self.subset(np.sort(order[:cut]))

  def stats(self) -> dict:
    freq = self.label_frequencies()
    used = freq[freq > 0]
    return {"examples": len(self), "features": self.num_features, "labels": self.num_labels,
            "labels_seen": int(used.size),
            "mean_features_per_example": float(self.features_per_example().mean()),
            "mean_labels_per_example": float(self.labels_per_example().mean()),
            "max_label_frequency": int(freq.max()) if freq.size else 0,
            "labels_with_one_example": int((freq == 1).sum())}


def _open(path: str, mode: str = "rt"):
  if path.endswith(".gz"):
    return gzip.open(path, mode, encoding="utf-8") if "t" in mode else gzip.open(path, mode)
  return open(path, mode, encoding="utf-8")


def read(path: str, *, num_features: int | None = None, num_labels: int | None = None,
         fmt: str = "auto") -> XCData:
  """Reads an XC-repository (header) or multi-label libsvm (no header) file.

  Args:
    path: the file (``.gz`` is decompressed on the fly).
    num_features, num_labels: the dimensions; required to check libsvm files against a
      model (inferred as max id + 1 otherwise); must agree with an XC header.
    fmt: ``"auto"`` (a first line of three integers is a header), ``"xc"`` or ``"libsvm"``.
  """
  if fmt not in ("auto", "xc", "libsvm"):
    raise ValueError(f"read: fmt must be 'auto', 'xc' or 'libsvm', got {fmt!r}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise XCFormatError(f"{path}: not a file")
  feat_ptr, fids, fvals = array.array("q", [0]), array.array("i"), array.array("f")
  label_ptr, lids = array.array("q", [0]), array.array("i")
  declared_points = None
  max_f = max_l = -1
  lineno = 0
  duplicates, first_duplicate = 0, 0
  try:
    with _open(path) as f:
      for lineno, line in enumerate(f, start=1):
        if lineno == 1 and fmt != "libsvm":
          parts = line.split()
          if len(parts) == 3 and all(_UINT.fullmatch(p) for p in parts):
            declared_points, nf, nl = (int(p) for p in parts)
            if nf < 1 or nl < 1:
              raise XCFormatError(f"{path}:1: header declares {nf} features and {nl} "
                                  "labels; both must be at least 1")
            for name, given, got in (("num_features", num_features, nf),
                                     ("num_labels", num_labels, nl)):
              if given is not None and given != got:
                raise XCFormatError(f"{path}:1: header declares {name}={got}, expected {given}")
            num_features, num_labels = nf, nl
            continue
          if fmt == "xc":
            raise XCFormatError(f"{path}:1: expected a header 'num_points num_features "
                                f"num_labels', got {line.strip()[:80]!r}")
        tokens = line.split()
        start = 0
        if tokens and ":" not in tokens[0]:
          seen = set()
          for lab in tokens[0].split(","):
            if not _INT.fullmatch(lab):
              raise XCFormatError(f"{path}:{lineno}: bad label {lab!r} (labels are "
                                  "comma-separated non-negative integers)")
            v = int(lab)
            if v < 0 or v > _MAX_ID or (num_labels is not None and v >= num_labels):
              raise XCFormatError(f"{path}:{lineno}: label {v} outside "
                                  f"[0, {num_labels if num_labels is not None else _MAX_ID + 1})")
            if v in seen:  # a label counted twice would count twice in P@k and nDCG
              duplicates += 1
              first_duplicate = first_duplicate or lineno
              continue
            seen.add(v)
            lids.append(v)
            max_l = max(max_l, v)
          start = 1
        for tok in tokens[start:]:
          fid, sep, val = tok.partition(":")
          if not sep or not _UINT.fullmatch(fid):
            raise XCFormatError(f"{path}:{lineno}: bad feature {tok!r} (expected id:value)")
          try:
            x = float(val)
          except ValueError:
            raise XCFormatError(f"{path}:{lineno}: bad feature value in {tok!r}") from None
          if not math.isfinite(x):
            raise XCFormatError(f"{path}:{lineno}: non-finite feature value in {tok!r}")
          if abs(x) > _FLOAT32_MAX:  # 1e39 is finite here but inf once stored as float32
            raise XCFormatError(f"{path}:{lineno}: feature value in {tok!r} is outside "
                                "float32's range")
          i = int(fid)
          if i > _MAX_ID or (num_features is not None and i >= num_features):
            raise XCFormatError(f"{path}:{lineno}: feature {i} outside "
                                f"[0, {num_features if num_features is not None else _MAX_ID + 1})")
          fids.append(i)
          fvals.append(x)
          max_f = max(max_f, i)
        feat_ptr.append(len(fids))
        label_ptr.append(len(lids))
  except UnicodeDecodeError:
    raise XCFormatError(f"{path}:{lineno + 1}: not UTF-8 text") from None
  except (EOFError, OSError) as e:  # a truncated gzip, a .gz that is not gzip, ...
    raise XCFormatError(f"{path}:{lineno + 1}: cannot read the file ({e})") from None
  n = len(feat_ptr) - 1
  if n == 0:
    raise XCFormatError(f"{path}: no examples (empty file)")
  if duplicates:
    print(f"jslide: {path}: {duplicates} repeated labels of an example dropped (the first at "
          f"{path}:{first_duplicate})", file=sys.stderr)
  if declared_points is not None and declared_points != n:
    raise XCFormatError(f"{path}: header declares {declared_points} examples, found {n}")
  return XCData(feat_indptr=np.frombuffer(feat_ptr, np.int64).copy(),
                feat_ids=np.frombuffer(fids, np.int32).copy(),
                feat_vals=np.frombuffer(fvals, np.float32).copy(),
                label_indptr=np.frombuffer(label_ptr, np.int64).copy(),
                label_ids=np.frombuffer(lids, np.int32).copy(),
                num_features=int(num_features if num_features is not None else max_f + 1),
                num_labels=int(num_labels if num_labels is not None else max_l + 1))


def write(path: str, data: XCData, *, header: bool = True) -> None:
  """Writes data in the XC-repository format (``header=False``: multi-label libsvm)."""
  with _open(path, "wt") as f:
    if header:
      f.write(f"{len(data)} {data.num_features} {data.num_labels}\n")
    for i in range(len(data)):
      labels = data.label_ids[data.label_indptr[i]:data.label_indptr[i + 1]]
      lo, hi = data.feat_indptr[i], data.feat_indptr[i + 1]
      feats = " ".join(f"{j}:{v:.9g}" for j, v in zip(data.feat_ids[lo:hi], data.feat_vals[lo:hi]))
      f.write(",".join(map(str, labels)) + (" " if labels.size and feats else "") + feats + "\n")
