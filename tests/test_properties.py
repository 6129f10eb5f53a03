"""Property-based tests at the public boundary: random shapes (empty batches included), ids
anywhere (in range, padding, negative, past the table), non-finite values, and random bytes
for the readers. Each call matches the reference or raises the documented error: a
``ValueError`` naming the argument eagerly, the kernel's error under ``jit`` (where ids are
not known until the kernel runs), an ``XCFormatError`` naming ``file:line`` for a file."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import jslide
from jslide import datasets as D
from jslide import reference as ref

from helpers import KERNEL_ERROR

SHAPES = st.tuples(st.integers(0, 5), st.integers(0, 9), st.integers(1, 17), st.integers(1, 9))


def _ids(rng, n: int, shape, bad: bool):
  """int32 ids: in [-1, n) (padding included, duplicates likely), or, with ``bad``, some of
  them anywhere in [-4, n + 3]."""
  ids = rng.integers(-1, n, size=shape)
  if bad and ids.size:
    where = rng.random(shape) < 0.3
    where.flat[rng.integers(ids.size)] = True
    wild = rng.integers(-4, n + 4, size=shape)
    wild = np.where((wild >= -1) & (wild < n), n + 1, wild)  # always out of range
    ids = np.where(where, wild, ids)
  return jnp.asarray(ids, jnp.int32)


def _values(rng, *shape, extreme: bool):
  """float32 normal values; with ``extreme``, about 10% of them NaN, +inf or -inf (whose
  results do not depend on the order of a sum, so kernel and reference must agree)."""
  x = rng.normal(size=shape).astype(np.float32)
  if extreme and x.size:
    pick = rng.random(shape)
    x = np.where(pick < 0.04, np.nan, x)
    x = np.where((pick >= 0.04) & (pick < 0.07), np.inf, x)
    x = np.where((pick >= 0.07) & (pick < 0.1), -np.inf, x)
  return jnp.asarray(x)


def _check(call, want, ids, n: int, jit: bool):
  """``call()`` equals ``want()`` (NaN where it has NaN) when every id is in [-1, n); else it
  raises: eagerly a ValueError naming ``ids``, under jit the kernel's error (KERNEL_ERROR)."""
  valid = ids.size == 0 or (int(ids.min()) >= -1 and int(ids.max()) < n)
  if valid:
    np.testing.assert_allclose(np.asarray(call()), np.asarray(want()), rtol=2e-5, atol=2e-5)
    return
  if jit:
    with pytest.raises(KERNEL_ERROR, match=r"ids holds -?\d+"):
      jax.block_until_ready(call())
  else:
    with pytest.raises(ValueError, match=r"ids holds -?\d+; ids must lie in \[-1, "):
      call()


@given(SHAPES, st.integers(0, 2**31 - 1), st.booleans(), st.booleans(), st.booleans())
@pytest.mark.slow
def test_sparse_linear_matches_reference_or_refuses(shape, seed, bad, extreme, jit):
  r, a, n, d = shape
  rng = np.random.default_rng(seed)
  x, w, b = _values(rng, r, d, extreme=extreme), _values(rng, n, d, extreme=False), \
      _values(rng, n, extreme=False)
  ids = _ids(rng, n, (r, a), bad)
  op = jax.jit(jslide.sparse_linear) if jit else jslide.sparse_linear
  _check(lambda: op(x, w, b, ids), lambda: ref.sparse_linear(x, w, b, ids), ids, n, jit)


@given(SHAPES, st.integers(0, 2**31 - 1), st.booleans(), st.booleans(), st.booleans())
@pytest.mark.slow
def test_embedding_bag_matches_reference_or_refuses(shape, seed, bad, extreme, jit):
  r, f, n, d = shape
  rng = np.random.default_rng(seed)
  vals, w = _values(rng, r, f, extreme=extreme), _values(rng, n, d, extreme=False)
  ids = _ids(rng, n, (r, f), bad)
  op = jax.jit(jslide.embedding_bag) if jit else jslide.embedding_bag
  _check(lambda: op(ids, vals, w), lambda: ref.embedding_bag(ids, vals, w), ids, n, jit)


@given(SHAPES, st.integers(0, 2**31 - 1), st.booleans())
@pytest.mark.slow
def test_gradients_at_random_ids_match_reference(shape, seed, jit):
  """Row-sparse and dense gradients agree with the reference's wherever the ids are valid,
  empty batches included."""
  r, a, n, d = shape
  rng = np.random.default_rng(seed)
  x, w, b = (_values(rng, r, d, extreme=False), _values(rng, n, d, extreme=False),
             _values(rng, n, extreme=False))
  ids, ct = _ids(rng, n, (r, a), False), _values(rng, r, a, extreme=False)
  loss = lambda op: (lambda x, w, b: jnp.sum(ct * op(x, w, b, ids)))  # noqa: E731
  grad = jax.grad(loss(jslide.sparse_linear), argnums=(0, 1, 2))
  got = (jax.jit(grad) if jit else grad)(x, w, b)
  want = jax.grad(loss(ref.sparse_linear), argnums=(0, 1, 2))(x, w, b)
  for g, e in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-4)
  if not (r and a):
    return
  # the factored gradient of the table stands for the same dense one
  _, sparse = jslide.value_and_grad(lambda p: loss(jslide.sparse_linear)(x, p["w"], b),
                                    tables=lambda path, leaf: True)({"w": w})
  np.testing.assert_allclose(np.asarray(sparse["w"].todense()), np.asarray(want[1]),
                             rtol=1e-4, atol=1e-4)


# Random bytes, and text made of what the format is made of (and a digit int() refuses).
_XC_BYTES = st.one_of(st.binary(max_size=300),
                      st.text(alphabet="0123456789,:-.e \n\u00b2", max_size=200).map(str.encode))


@given(_XC_BYTES, st.booleans())
def test_reader_returns_data_or_a_format_error(tmp_path_factory, blob, header):
  """Any bytes: the XC reader returns consistent data or raises an XCFormatError that names
  the file (and the line, where a line is at fault); never another exception."""
  path = tmp_path_factory.mktemp("xc") / "data.txt"
  path.write_bytes((b"2 5 3\n" if header else b"") + blob)
  try:
    data = D.read(str(path))
  except D.XCFormatError as e:
    assert str(path) in str(e)
    return
  assert len(data) >= 1
  assert np.all((data.feat_ids >= 0) & (data.feat_ids < data.num_features))
  assert np.all((data.label_ids >= 0) & (data.label_ids < data.num_labels))
  assert np.all(np.isfinite(data.feat_vals))
  assert data.feat_indptr[-1] == len(data.feat_ids)
  assert data.label_indptr[-1] == len(data.label_ids)


@given(st.lists(st.tuples(st.lists(st.integers(0, 6), max_size=3, unique=True),
                          st.dictionaries(st.integers(0, 9),
                                          st.floats(-1e3, 1e3, allow_nan=False, width=32),
                                          max_size=4)),
                min_size=1, max_size=6))
def test_reader_reads_back_what_write_wrote(tmp_path_factory, examples):
  """write then read is the identity, labels and features in file order."""
  feat_indptr, feat_ids, feat_vals, label_indptr, label_ids = [0], [], [], [0], []
  for labels, feats in examples:
    label_ids += labels
    label_indptr.append(len(label_ids))
    feat_ids += list(feats)
    feat_vals += list(feats.values())
    feat_indptr.append(len(feat_ids))
  data = D.XCData(np.asarray(feat_indptr, np.int64), np.asarray(feat_ids, np.int32),
                  np.asarray(feat_vals, np.float32), np.asarray(label_indptr, np.int64),
                  np.asarray(label_ids, np.int32), 10, 7)
  path = str(tmp_path_factory.mktemp("xc") / "data.txt")
  D.write(path, data)
  back = D.read(path)
  assert (back.num_features, back.num_labels) == (10, 7)
  for name in ("feat_indptr", "feat_ids", "label_indptr", "label_ids"):
    np.testing.assert_array_equal(getattr(back, name), getattr(data, name), err_msg=name)
  np.testing.assert_allclose(back.feat_vals, data.feat_vals, rtol=1e-6)


@pytest.mark.parametrize("line", ["\u00b2:1.0", "--5 0:1", "\u0661 0:1", "1,\u00b2 0:1"])
def test_reader_refuses_digits_int_cannot_read(tmp_path, line):
  """str.isdigit() accepts '\u00b2' and '\u0661', and '--5' passed a strip of '-': each was a
  ValueError from int(), not a format error naming the line."""
  path = tmp_path / "data.txt"
  path.write_text(f"1 5 3\n{line}\n", encoding="utf-8")
  with pytest.raises(D.XCFormatError, match=r"data.txt:2: bad"):
    D.read(str(path))
