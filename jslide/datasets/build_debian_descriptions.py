"""Builds a retrieval test set from Debian's package descriptions: a package's one-line
synopsis is the query, its long description the document that answers it.

Source: Debian 12 "bookworm" main (amd64) as apt installs its index with English
descriptions (``apt-get -o Acquire::Languages=en update`` puts
``*_main_binary-amd64_Packages.lz4`` and ``*_main_i18n_Translation-en.lz4`` in
``/var/lib/apt/lists``; the descriptions are each package's, under its licence, as
distributed by Debian). The synopsis ("duplicate files finder") and the long description
are written apart, so a query's words are not copied from its document.

Every package whose long description has at least 20 words is a document (``id``: the
package name; packages with the same long description, such as a library and its
transitional package, are one document under the first name). ``--queries`` packages,
drawn at random (seed 0), give the queries; a query is relevant to every document whose
package has that exact synopsis.

Writes ``docs.jsonl`` and ``queries.jsonl`` in the formats of ``python -m jslide.retrieval``.

    apt-get -o Acquire::Languages=en update
    python -m jslide.datasets.build_debian_descriptions --out data/debian_descriptions
"""

from __future__ import annotations

import argparse
import collections
import os

import numpy as np

from jslide.datasets.build_debian import _default, described_packages
from jslide.datasets.retrieval_format import write_retrieval_set


def read_descriptions(packages_path: str, translation_path: str):
  """Yields (package, synopsis, long description) for every package with a description."""
  for s, text in described_packages(packages_path, translation_path):
    synopsis, _, rest = text.partition("\n")
    # Control-file long descriptions: " ." is a blank line between paragraphs.
    paragraphs = [" ".join(p.split()) for p in
                  "\n".join("" if line.strip() == "." else line
                            for line in rest.split("\n")).split("\n\n")]
    yield s["Package"], synopsis.strip(), "\n\n".join(p for p in paragraphs if p)


def build(rows, num_queries: int, seed: int = 0, min_words: int = 20):
  """(documents, queries) from (package, synopsis, long description) rows."""
  docs, doc_of_text, synopsis_docs = [], {}, collections.defaultdict(list)
  for name, synopsis, text in rows:
    if len(text.split()) < min_words or not synopsis:
      continue
    if text not in doc_of_text:
      doc_of_text[text] = name
      docs.append({"id": name, "text": text})
    synopsis_docs[synopsis].append(doc_of_text[text])
  synopses = sorted(synopsis_docs)
  pick = np.random.default_rng(seed).permutation(len(synopses))[:num_queries]
  queries = [{"query": synopses[i], "relevant": sorted(set(synopsis_docs[synopses[i]]))}
             for i in sorted(pick)]
  return docs, queries


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--packages", default=_default("*_main_binary-amd64_Packages*"))
  p.add_argument("--translations", default=_default("*_main_i18n_Translation-en*"))
  p.add_argument("--queries", type=int, default=5000, help="queries to draw (default 5000)")
  p.add_argument("--out", required=True, help="directory for docs.jsonl and queries.jsonl")
  args = p.parse_args(argv)
  for path in (args.packages, args.translations):
    if not os.path.exists(path):
      p.error(f"{path} not found: run apt-get -o Acquire::Languages=en update")
  docs, queries = build(read_descriptions(args.packages, args.translations), args.queries)
  write_retrieval_set(args.out, docs, queries)
  print(f"{args.out}: {len(docs):,} documents, {len(queries):,} queries")


if __name__ == "__main__":
  main()
