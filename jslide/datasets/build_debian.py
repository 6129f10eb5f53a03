"""Builds the Debian package-dependency extreme-classification dataset shipped with jslide.

Source: Debian 12 "bookworm" main (amd64), the package index and its English descriptions as
Debian's apt installs them (``apt-get -o Acquire::Languages=en update`` puts
``*_main_binary-amd64_Packages.lz4`` and ``*_main_i18n_Translation-en.lz4`` in
``/var/lib/apt/lists``). Each package with a dependency is one example:

- features: the words of its short and long description (lowercase alphabetic tokens of at
  least two letters, occurring in at least 2 packages), valued by their count;
- labels: the packages named in its ``Depends`` and ``Pre-Depends`` fields (every
  alternative, versions and architecture qualifiers dropped), kept when at least 2 packages
  depend on them.

A task unlike WordNet's: 5 to 6 labels per example, a very skewed label distribution (libc6
is a label of about a third of the examples) and short technical texts. Examples are split
80/20 at random (seed 0) and written in the Extreme Classification Repository format,
gzipped. Only word counts and package names are kept, not the descriptions' text; see
DEBIAN_NOTICE.

    apt-get -o Acquire::Languages=en update
    python -m jslide.datasets.build_debian --out jslide/datasets/data
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import os
import re
import subprocess

import numpy as np

_TOKEN = re.compile(r"[a-z][a-z]+")
_DEP_NAME = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)")
PREFIX = "debian_depends"


def _read_text(path: str) -> str:
  if path.endswith(".lz4"):
    return subprocess.run(["lz4cat", path], check=True, capture_output=True).stdout.decode()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    return f.read()


def stanzas(text: str):
  """Yields each control-file stanza as {field: value} (continuation lines joined by \\n)."""
  for block in text.split("\n\n"):
    fields, last = {}, None
    for line in block.splitlines():
      if line[:1] in (" ", "\t") and last:
        fields[last] += "\n" + line[1:]
      elif ":" in line:
        last, _, value = line.partition(":")
        fields[last] = value.strip()
    if fields:
      yield fields


def dependency_names(field: str) -> list[str]:
  """Package names of a Depends-style field: every alternative, no versions or arch."""
  names = []
  for clause in field.split(","):
    for alt in clause.split("|"):
      m = _DEP_NAME.match(alt.split(":")[0])
      if m:
        names.append(m.group(1))
  return names


def described_packages(packages_path: str, translation_path: str):
  """Yields (stanza, English description) for each package of the index, once per name: the
  description from the translation file (synopsis, then the long description), or the
  index's own when the translation lacks it."""
  long_desc = {}
  for s in stanzas(_read_text(translation_path)):
    if "Description-md5" in s and "Description-en" in s:
      long_desc[s["Description-md5"]] = s["Description-en"]
  seen = set()
  for s in stanzas(_read_text(packages_path)):
    name = s.get("Package")
    if not name or name in seen:
      continue
    seen.add(name)
    yield s, long_desc.get(s.get("Description-md5", ""), s.get("Description", ""))


def read_packages(packages_path: str, translation_path: str):
  """Yields (package, description text, dependency names) for packages with dependencies."""
  for s, text in described_packages(packages_path, translation_path):
    name = s["Package"]
    deps = dependency_names(s.get("Depends", "")) + dependency_names(s.get("Pre-Depends", ""))
    deps = sorted(set(d for d in deps if d != name))
    if deps:
      yield name, text, deps


def build(packages_path: str, translation_path: str, out_dir: str, seed: int = 0,
          test_fraction: float = 0.2):
  pkgs = list(read_packages(packages_path, translation_path))
  tokens = [collections.Counter(_TOKEN.findall(text.lower())) for _, text, _ in pkgs]
  doc_freq = collections.Counter(t for c in tokens for t in c)
  vocab = sorted(t for t, df in doc_freq.items() if df >= 2)
  feature_id = {t: i for i, t in enumerate(vocab)}
  label_freq = collections.Counter(d for _, _, deps in pkgs for d in deps)
  label_names = sorted(d for d, n in label_freq.items() if n >= 2)
  label_id = {d: i for i, d in enumerate(label_names)}
  rows = [i for i, (_, _, deps) in enumerate(pkgs)
          if any(d in label_id for d in deps) and any(t in feature_id for t in tokens[i])]
  order = np.asarray(rows)[np.random.default_rng(seed).permutation(len(rows))]
  n_test = int(round(test_fraction * len(rows)))
  splits = {"test": order[:n_test], "train": order[n_test:]}
  os.makedirs(out_dir, exist_ok=True)
  n_labels = 0
  for split, idx in splits.items():
    with gzip.open(os.path.join(out_dir, f"{PREFIX}_{split}.txt.gz"), "wt",
                   compresslevel=9) as f:
      f.write(f"{len(idx)} {len(vocab)} {len(label_names)}\n")
      for r in idx:
        labels = sorted(label_id[d] for d in pkgs[r][2] if d in label_id)
        n_labels += len(labels)
        feats = sorted((feature_id[t], c) for t, c in tokens[r].items() if t in feature_id)
        f.write(",".join(map(str, labels)) + " " + " ".join(f"{i}:{c}" for i, c in feats) + "\n")
  with gzip.open(os.path.join(out_dir, f"{PREFIX}_labels.txt.gz"), "wt") as f:
    f.write("\n".join(label_names) + "\n")
  with gzip.open(os.path.join(out_dir, f"{PREFIX}_features.txt.gz"), "wt") as f:
    f.write("\n".join(vocab) + "\n")
  return {"examples": len(rows), "features": len(vocab), "labels": len(label_names),
          "labels_per_example": round(n_labels / len(rows), 2),
          "train": len(splits["train"]), "test": len(splits["test"])}


def _default(pattern: str) -> str:
  """The largest of apt's lists matching ``pattern``: the release's own index, not those of
  its -security and -updates suites (which sort first, and hold a few packages each)."""
  found = glob.glob(os.path.join("/var/lib/apt/lists", pattern))
  return max(found, key=os.path.getsize) if found else pattern


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--packages",
                 default=_default("*_debian_dists_bookworm_main_binary-amd64_Packages*"))
  p.add_argument("--translation",
                 default=_default("*_debian_dists_bookworm_main_i18n_Translation-en*"))
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
  args = p.parse_args()
  print(build(args.packages, args.translation, args.out))


if __name__ == "__main__":
  main()
