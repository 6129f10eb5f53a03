"""Builds the WordNet hypernym extreme-classification dataset shipped with jslide.

Source: WordNet 3.0 (Princeton University), as installed by Debian's ``wordnet-base``
package (``/usr/share/wordnet/data.noun``, ``data.verb``). Each noun or verb synset that has
a hypernym is one example:

- features: the words of its lemmas, definition and example sentences (lowercase
  alphabetic tokens; words occurring in at least 2 synsets), valued by their count;
- labels: its direct hypernym synsets (``@`` and instance hypernyms ``@i``).

That gives 95,322 examples over 20,472 labels with a long tail (the most frequent label
has 664 examples; 7,648 labels have one). Examples are split 80/20 at random (seed 0) and
written in the Extreme Classification Repository format, gzipped.

    apt-get install wordnet-base
    python -m jslide.datasets.build_wordnet --wordnet /usr/share/wordnet --out jslide/datasets/data
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import re

import numpy as np

_TOKEN = re.compile(r"[a-z]+")


def read_synsets(wordnet_dir: str):
  """Yields (synset key, text, hypernym keys) for noun and verb synsets."""
  for pos in ("noun", "verb"):
    with open(os.path.join(wordnet_dir, f"data.{pos}"), encoding="latin-1") as f:
      for line in f:
        if line.startswith("  "):  # the license header
          continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        key = fields[2] + fields[0]
        n_words = int(fields[3], 16)
        words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        i = 4 + 2 * n_words
        n_ptr = int(fields[i])
        i += 1
        hypernyms = []
        for _ in range(n_ptr):
          symbol, offset, ptr_pos = fields[i:i + 3]
          i += 4
          if symbol in ("@", "@i"):
            hypernyms.append(ptr_pos + offset)
        yield key, " ".join(words) + " " + gloss, hypernyms


def build(wordnet_dir: str, out_dir: str, seed: int = 0, test_fraction: float = 0.2):
  synsets = [s for s in read_synsets(wordnet_dir) if s[2]]
  tokens = [collections.Counter(_TOKEN.findall(text.lower())) for _, text, _ in synsets]
  doc_freq = collections.Counter(t for c in tokens for t in c)
  vocab = sorted(t for t, df in doc_freq.items() if df >= 2)
  feature_id = {t: i for i, t in enumerate(vocab)}
  label_names = sorted({h for _, _, hyp in synsets for h in hyp})
  label_id = {h: i for i, h in enumerate(label_names)}
  order = np.random.default_rng(seed).permutation(len(synsets))
  n_test = int(round(test_fraction * len(synsets)))
  splits = {"test": order[:n_test], "train": order[n_test:]}
  os.makedirs(out_dir, exist_ok=True)
  for split, rows in splits.items():
    path = os.path.join(out_dir, f"wordnet_hypernyms_{split}.txt.gz")
    with gzip.open(path, "wt", compresslevel=9) as f:
      f.write(f"{len(rows)} {len(vocab)} {len(label_names)}\n")
      for r in rows:
        labels = ",".join(str(label_id[h]) for h in sorted(set(synsets[r][2])))
        feats = sorted((feature_id[t], c) for t, c in tokens[r].items() if t in feature_id)
        f.write(labels + " " + " ".join(f"{i}:{c}" for i, c in feats) + "\n")
  with gzip.open(os.path.join(out_dir, "wordnet_hypernyms_labels.txt.gz"), "wt") as f:
    f.write("\n".join(label_names) + "\n")
  with gzip.open(os.path.join(out_dir, "wordnet_hypernyms_features.txt.gz"), "wt") as f:
    f.write("\n".join(vocab) + "\n")
  return {"examples": len(synsets), "features": len(vocab), "labels": len(label_names),
          "train": len(splits["train"]), "test": len(splits["test"])}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--wordnet", default="/usr/share/wordnet")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
  args = p.parse_args()
  print(build(args.wordnet, args.out))


if __name__ == "__main__":
  main()
