"""XC/libsvm readers: round trips, every error names its file and line; batches; WordNet."""

import gzip

import numpy as np
import pytest

from jslide import datasets as D


def _write(path, text, gz=False):
  if gz:
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return str(path)


def test_xc_round_trip_including_empty_label_lines(tmp_path):
  p = _write(tmp_path / "a.txt", "3 10 5\n0,4 1:0.5 7:2\n 3:1\n2 9:1.25\n")
  d = D.read(p)
  assert len(d) == 3 and d.num_features == 10 and d.num_labels == 5
  np.testing.assert_array_equal(d.labels_per_example(), [2, 0, 1])
  np.testing.assert_array_equal(d.feat_ids, [1, 7, 3, 9])
  np.testing.assert_allclose(d.feat_vals, [0.5, 2, 1, 1.25])
  q = str(tmp_path / "b.txt.gz")
  D.write(q, d)
  e = D.read(q)
  for field in ("feat_indptr", "feat_ids", "feat_vals", "label_indptr", "label_ids"):
    np.testing.assert_array_equal(getattr(d, field), getattr(e, field))


def test_libsvm_without_header(tmp_path):
  p = _write(tmp_path / "s.svm", "1,2 0:1 5:3\n0 2:1\n")
  d = D.read(p)
  assert (d.num_features, d.num_labels, len(d)) == (6, 3, 2)
  d2 = D.read(p, num_features=100, num_labels=10, fmt="libsvm")
  assert (d2.num_features, d2.num_labels) == (100, 10)


@pytest.mark.parametrize("text,match", [
    ("2 10 5\n0 1:1\n", "header declares 2 examples, found 1"),
    ("1 10 5\n7 1:1\n", r":2: label 7 outside \[0, 5\)"),
    ("1 10 5\n0 12:1\n", r":2: feature 12 outside \[0, 10\)"),
    ("2 10 5\n0 1:1\n1 3-1\n", r":3: bad feature '3-1'"),
    ("1 10 5\n0 1:abc\n", ":2: bad feature value"),
    ("1 10 5\n0 1:nan\n", ":2: non-finite feature value"),
    ("1 10 5\n0 1:1e39\n", ":2: feature value in '1:1e39' is outside float32's range"),
    ("1 10 5\nx,1 1:1\n", ":2: bad label 'x'"),
    ("", "no examples"),
    # Issue 33, item 8: ids beyond int32 (libsvm, no dimensions given) were an OverflowError.
    ("0 99999999999999999999:1\n", r":1: feature 99999999999999999999 outside \[0, 2147483647\)"),
    ("99999999999999999999 1:1\n", r":1: label 99999999999999999999 outside \[0, 2147483647\)"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, match):
  p = _write(tmp_path / "bad.txt", text)
  with pytest.raises(D.XCFormatError, match=match) as e:
    D.read(p)
  assert "bad.txt" in str(e.value)


def test_header_must_match_the_model(tmp_path):
  p = _write(tmp_path / "h.txt", "1 10 5\n0 1:1\n")
  with pytest.raises(D.XCFormatError, match="num_labels=5, expected 7"):
    D.read(p, num_labels=7)
  with pytest.raises(FileNotFoundError):
    D.read(str(tmp_path / "missing.txt"))


def test_batches_are_padded_shuffled_and_reproducible(tmp_path):
  lines = "".join(f"{i % 4} {i}:1 {i + 1}:2\n" for i in range(10))
  d = D.read(_write(tmp_path / "d.txt", f"10 12 4\n{lines}"))
  bs = list(D.batches(d, 4, max_features=3, max_labels=2, seed=1, epoch=0))
  assert len(bs) == 3 and bs[-1].mask.tolist() == [True, True, False, False]
  assert bs[-1].feat_ids[2:].tolist() == [[-1] * 3] * 2
  seen = sorted(int(b.feat_ids[i, 0]) for b in bs for i in range(4) if b.mask[i])
  assert seen == list(range(10))  # every example once
  again = list(D.batches(d, 4, max_features=3, max_labels=2, seed=1, epoch=0, start_batch=1))
  np.testing.assert_array_equal(again[0].feat_ids, bs[1].feat_ids)  # resume mid-epoch
  other = list(D.batches(d, 4, max_features=3, max_labels=2, seed=1, epoch=1))
  assert not all(np.array_equal(a.feat_ids, b.feat_ids) for a, b in zip(bs, other))
  assert bs[0].labels.shape == (4, 2) and bs[0].feat_vals.dtype == np.float32


def test_wordnet_dataset_is_real_and_long_tailed():
  train = D.bundled.load("wordnet", "train")
  s = train.stats()
  assert s["examples"] == 76_258 and s["labels"] == 20_472 and s["features"] == 47_866
  freq = np.sort(train.label_frequencies())[::-1]
  assert freq[0] > 300 and s["labels_with_one_example"] > 5_000  # a long tail
  assert len(D.bundled.label_names("wordnet")) == 20_472
  norm = train.normalized()
  row = norm.feat_vals[norm.feat_indptr[0]:norm.feat_indptr[1]]
  assert abs(np.linalg.norm(row) - 1) < 1e-5


def test_debian_dataset_is_multi_label_with_a_skewed_head():
  train, test = D.bundled.load("debian", "train"), D.bundled.load("debian", "test")
  s = train.stats()
  assert s["examples"] == 43_678 and len(test) == 10_920
  assert s["labels"] == 18_160 >= 10_000 and s["features"] == 34_457
  assert s["mean_labels_per_example"] > 4.5  # at least 3 labels an example on average
  names = D.bundled.label_names("debian")
  freq = train.label_frequencies()
  assert names[int(np.argmax(freq))] == "libc6" and 0.3 < freq.max() / len(train) < 0.5
  with pytest.raises(ValueError, match="bundled dataset must be one of"):
    D.bundled.load("amazon", "train")


def test_split_holds_out_a_fraction_and_subset_keeps_each_example_whole():
  d = D.bundled.load("wordnet", "test")
  rest, held = d.split(0.1, seed=3)
  assert len(held) == round(0.1 * len(d)) and len(rest) + len(held) == len(d)
  for part in (rest, held):
    assert part.feat_indptr[-1] == len(part.feat_ids) and part.label_indptr[-1] == len(part.label_ids)
  rows = [5, 0, 17]
  sub = d.subset(rows)
  for i, r in enumerate(rows):
    np.testing.assert_array_equal(sub.feat_ids[sub.feat_indptr[i]:sub.feat_indptr[i + 1]],
                                  d.feat_ids[d.feat_indptr[r]:d.feat_indptr[r + 1]])
    np.testing.assert_array_equal(sub.label_ids[sub.label_indptr[i]:sub.label_indptr[i + 1]],
                                  d.label_ids[d.label_indptr[r]:d.label_indptr[r + 1]])
  with pytest.raises(ValueError, match="fraction"):
    d.split(1.0)


def test_repeated_labels_of_an_example_count_once(tmp_path, capsys):
  """Issue 33, item 4: '1,1,1' was three labels: nDCG counted the hit three times (0.469
  instead of 1.0 for a perfect ranking) and they took --max-labels slots."""
  p = _write(tmp_path / "rep.txt", "2 10 5\n1,1,1 2:1\n3,0,3 1:1\n")
  data = D.read(p)
  assert data.label_ids.tolist() == [1, 3, 0] and data.label_indptr.tolist() == [0, 1, 3]
  assert f"3 repeated labels of an example dropped (the first at {p}:2)" in capsys.readouterr().err
  import jslide
  top = np.array([[1, 4, 2, 0, 3]], np.int32)
  labels = np.array([[1, -1, -1]], np.int32)
  assert float(jslide.metrics.ndcg_at_k(top, labels, 5)[0]) == 1.0
