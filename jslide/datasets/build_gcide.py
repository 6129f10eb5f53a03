"""Builds a plain-text English corpus for the language-model example from GCIDE.

Source: the GNU Collaborative International Dictionary of English (GCIDE 0.48, GPL-3+;
derived from Webster's Revised Unabridged Dictionary, 1913, and WordNet) as installed by
Debian's ``dict-gcide`` package (``/usr/share/dictd/gcide.dict.dz``, gzip-readable). The
text is not shipped with jslide (its licence differs); this script turns the installed file
into three UTF-8 files:

- each dictionary paragraph (definitions, usage notes, quotations) becomes one paragraph of
  plain prose: pronunciation spans (``\\Ab*di"ca*tive\\``), source tags (``[1913 Webster]``),
  cross-reference braces, the bracketed codes of accented letters (``[\"e]``) and
  symbols (``[sect]``) and the ``?`` that stand for Greek letters are removed, and lines are
  unwrapped;
- paragraphs are cut into blocks of 200; of each 20 consecutive blocks, block 18 goes to
  ``gcide_valid.txt``, block 19 to ``gcide_test.txt`` and the rest to ``gcide_train.txt``
  (contiguous blocks, so neighbouring entries rarely straddle the split).

About 5 million words over more than 100,000 distinct lowercased words.

    apt-get install dict-gcide
    python -m jslide.datasets.build_gcide --out data/gcide
"""

from __future__ import annotations

import argparse
import gzip
import os
import re

DEFAULT_SOURCE = "/usr/share/dictd/gcide.dict.dz"
_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
_SOURCE_TAG = re.compile(r"\[(?:1913 Webster|PJC|Webster 1913 Suppl\.|WordNet[^\]]*|"
                         r"Century Dict\.|Chambers 1881|Wordnet 1\.5|F\. R\. S\.)\]")
_GREEK = re.compile(r"(?<!\w)\?(?!\w)|\?(?=\w)")
_SPACES = re.compile(r"\s+")
# GCIDE writes accented and special characters as bracketed codes: ["e], [=a], [sect].
_ACCENT = re.compile(r"\[[\"=.`'^~,-]([A-Za-z]{1,2})\]|\[([A-Za-z])(?:\^|mac)\]")
_SYMBOL = re.compile(r"\[(?:sect|sharp|flat|natural|aum|deg|frac\d*|root|min|sec|cre|eth|thorn|"
                     r"ae|oe|AE|OE|pound|cent|dagger|para|middot|asl|prime|bprime|sm|lm|ait|"
                     r"add|ddd|th|ng|ee)\]")


def clean_paragraph(block: str) -> str:
  """One dictionary paragraph as a single line of prose ('' when nothing is left)."""
  text = _PRONUNCIATION.sub("", block)
  text = _SOURCE_TAG.sub("", text)
  text = _ACCENT.sub(lambda m: m.group(1) or m.group(2), text)
  text = _SYMBOL.sub("", text)
  text = text.replace("{", "").replace("}", "")
  text = _GREEK.sub("", text)
  return _SPACES.sub(" ", text).strip()


def read_paragraphs(source: str) -> list[str]:
  """The cleaned paragraphs of the dictionary, in file order (its header entries skipped)."""
  with gzip.open(source, "rt", encoding="utf-8", errors="replace") as f:
    raw = f.read()
  start = raw.find("[1913 Webster]", raw.find("Begin file 1 of"))
  paragraphs = (clean_paragraph(p) for p in re.split(r"\n\s*\n", raw[start:]))
  return [p for p in paragraphs if len(p.split()) >= 3]


def split(paragraphs: list[str], block: int = 200) -> dict[str, list[str]]:
  parts: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
  for i in range(0, len(paragraphs), block):
    which = {18: "valid", 19: "test"}.get((i // block) % 20, "train")
    parts[which].extend(paragraphs[i:i + block])
  return parts


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--source", default=DEFAULT_SOURCE,
                 help="gcide.dict.dz (Debian's dict-gcide installs it here by default)")
  p.add_argument("--out", required=True, help="directory for gcide_{train,valid,test}.txt")
  args = p.parse_args(argv)
  if not os.path.exists(args.source):
    p.error(f"{args.source} not found: install Debian's dict-gcide (apt-get install dict-gcide) "
            "or pass --source")
  os.makedirs(args.out, exist_ok=True)
  for name, paragraphs in split(read_paragraphs(args.source)).items():
    path = os.path.join(args.out, f"gcide_{name}.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n\n".join(paragraphs) + "\n")
    print(f"{path}: {len(paragraphs):,} paragraphs, "
          f"{sum(len(x.split()) for x in paragraphs):,} words")


if __name__ == "__main__":
  main()
