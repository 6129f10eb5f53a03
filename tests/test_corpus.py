"""The streamed corpus: the same tokens as tokenizing the whole text, ids memory-mapped from
a cache written once, windows read by rows."""

import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from jslide.lm import corpus
from jslide.lm.vocab import Vocabulary, read_text, tokenize

PIECES = ["word", "Cat's", "x-ray", "3.14", "1,000", ",", ".", " ", "  ", "\t", "\n", "\n",
          "\n\n", "\r\n", "\r", " \n ", "\u2028", "\u00e9t\u00e9", "\n \t\n"]


@given(st.lists(st.sampled_from(PIECES), max_size=60))
def test_paragraph_tokens_are_the_tokens_of_the_whole_text(tmp_path_factory, pieces):
  text = "".join(pieces)
  path = tmp_path_factory.mktemp("c") / "t.txt"
  path.write_bytes(text.encode("utf-8"))
  if not text.strip():
    with pytest.raises(ValueError, match="the file has no text"):
      list(corpus.paragraph_tokens(str(path)))
    return
  streamed = [t for words in corpus.paragraph_tokens(str(path)) for t in words]
  assert streamed == tokenize(read_text(str(path)))


def test_non_utf8_bytes_are_named_with_their_offset(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("one line\ncaf\xe9 au lait".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text \(byte 12"):
    list(corpus.paragraph_tokens(str(path)))


def test_ids_are_written_once_and_memory_mapped(tmp_path, monkeypatch):
  monkeypatch.setenv("JSLIDE_CACHE", str(tmp_path / "cache"))
  path = tmp_path / "t.txt"
  path.write_text("the cat sat\n\nthe dog\n" * 50)
  vocab = corpus.vocabulary(str(path), 5)
  assert vocab.words == Vocabulary.from_tokens(tokenize(path.read_text()), 5).words
  ids = corpus.token_ids(str(path), vocab)
  assert isinstance(ids, np.memmap) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids, vocab.encode(tokenize(path.read_text())))
  cached = sorted(os.listdir(tmp_path / "cache" / "tokens"))
  assert len(cached) == 2 and not [n for n in cached if "partial" in n]
  again = corpus.token_ids(str(path), vocab)  # read from the cache, not re-encoded
  assert again.filename == ids.filename
  path.write_text("another text entirely\n")  # a changed file gets its own entry
  assert len(corpus.token_ids(str(path), corpus.vocabulary(str(path), 5))) == 4
  rows = corpus.window_rows(ids, [0, 3], 4)
  np.testing.assert_array_equal(rows, np.stack([ids[0:5], ids[12:17]]))
  assert corpus.num_windows(ids, 4) == (len(ids) - 1) // 4
  with pytest.raises(ValueError, match="too few for one window of context 4"):
    corpus.num_windows(ids[:4], 4)
