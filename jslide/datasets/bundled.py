"""The real extreme-classification datasets that ship with jslide, in XC-repository format.

- ``"wordnet"``: WordNet 3.0 noun and verb synsets -> their direct hypernyms: 76,258 train and
  19,064 test examples, 47,866 word features (counts), 20,472 labels, 1.03 labels per example
  (``build_wordnet.py``, ``WORDNET_LICENSE``).
- ``"debian"``: Debian 12 packages, the words of their descriptions -> the packages they
  depend on: 43,678 train and 10,920 test examples, 34,457 word features, 18,160 labels, 4.86
  labels per example (``build_debian.py``, ``DEBIAN_NOTICE``).
"""

from __future__ import annotations

import gzip
import os

from jslide.datasets.xc_format import XCData, read

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
NAMES = {"wordnet": "wordnet_hypernyms", "debian": "debian_depends"}


def _prefix(name: str) -> str:
  if name not in NAMES:
    raise ValueError(f"bundled dataset must be one of {sorted(NAMES)}, got {name!r}")
  return os.path.join(DATA_DIR, NAMES[name])


def path(name: str, split: str) -> str:
  """Path of dataset ``name``'s ``train`` or ``test`` split (gzipped XC format)."""
  if split not in ("train", "test"):
    raise ValueError(f"bundled dataset split must be 'train' or 'test', got {split!r}")
  return f"{_prefix(name)}_{split}.txt.gz"


def load(name: str, split: str) -> XCData:
  """Dataset ``name``'s ``train`` or ``test`` split."""
  return read(path(name, split))


def label_names(name: str) -> list[str]:
  """What each label id stands for (a WordNet synset key, a Debian package name)."""
  with gzip.open(f"{_prefix(name)}_labels.txt.gz", "rt") as f:
    return f.read().split()
