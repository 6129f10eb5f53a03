"""The WordNet hypernym dataset that ships with jslide (see build_wordnet.py, WORDNET_LICENSE)."""

from __future__ import annotations

import gzip
import os

from jslide.datasets.xc_format import XCData, read

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


def path(split: str) -> str:
  """Path of the ``train`` or ``test`` split (XC-repository format, gzipped)."""
  if split not in ("train", "test"):
    raise ValueError(f"wordnet: split must be 'train' or 'test', got {split!r}")
  return os.path.join(DATA_DIR, f"wordnet_hypernyms_{split}.txt.gz")


def load(split: str) -> XCData:
  """WordNet 3.0 noun and verb synsets -> their direct hypernyms: 76,258 train and 19,064
  test examples, 47,866 word features (counts), 20,472 labels."""
  return read(path(split))


def label_names() -> list[str]:
  """Label i's WordNet synset key (part of speech + offset in data.noun / data.verb)."""
  with gzip.open(os.path.join(DATA_DIR, "wordnet_hypernyms_labels.txt.gz"), "rt") as f:
    return f.read().split()
