"""Builds a retrieval test set from the Linux manual pages: each page's NAME line is a query,
written apart from the page's text, whose answer is the page.

Source: Debian's ``manpages`` and ``manpages-dev`` (the Linux man-pages project; most pages
under the "Verbatim" licence, some GPL or BSD, as ``/usr/share/doc/manpages/copyright``
lists), the roff files as installed under ``/usr/share/man``. For every page that is not an
alias (``.so``), the description after the dash in its NAME section ("dup, dup2, dup3 -
duplicate a file descriptor") is the query, and the page's text without the NAME section is
the document, so a query's words are not copied from its document. Pages whose descriptions
are equal are all relevant to that query.

Writes ``docs.jsonl`` (``{"id": "dup.2", "text": ...}``, one per page) and
``queries.jsonl`` (``{"query": ..., "relevant": [ids]}``), the formats of
``python -m jslide.retrieval``.

    apt-get install manpages manpages-dev
    python -m jslide.datasets.build_manpages --out data/manpages
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import re
import subprocess

from jslide.datasets.retrieval_format import write_retrieval_set

PACKAGES = ("manpages", "manpages-dev")

_FONT = re.compile(r"\\f(?:[BIRPC]|\(\w\w|\[\w*\])")
_ESCAPES = {r"\-": "-", r"\(em": "-", r"\(en": "-", r"\e": "\\", r"\&": "", r"\(aq": "'",
            r"\(dq": '"', r"\(lq": '"', r"\(rq": '"', r"\(bu": "", r"\~": " ", r"\ ": " ",
            r"\|": "", r"\^": "", r"\:": "", r"\c": "", r"\(co": "(c)", r"\(mu": "x"}
_OTHER_ESCAPE = re.compile(r"\\(?:\(\w\w|\[[^\]]*\]|\*\(?\w+|s[+-]?\d|.)")
_SPACES = re.compile(r"\s+")
# Macros that start a new paragraph; the text of font macros (.B, .BR, ...) is kept.
_BREAKS = {"PP", "P", "LP", "TP", "IP", "HP", "RS", "RE", "SS", "SH", "nf", "fi", "EX", "EE",
           "TQ", "sp", "br", "in", "TH", "ad", "na", "ne", "UR", "UE", "MT", "ME", "ft", "hy",
           "nh", "ps", "vs", "ti", "ta", "ce", "TS", "TE", "ig", "de", "ds", "if", "ie", "el"}
_FONT_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB"}


def roff_text(line: str) -> str:
  """A roff text line with its font changes and escapes removed."""
  line = _FONT.sub("", line)
  for escape, text in _ESCAPES.items():
    line = line.replace(escape, text)
  return _OTHER_ESCAPE.sub("", line)


def parse_page(source: str) -> tuple[str | None, list[tuple[str, list[str]]]]:
  """(target of an alias page or None, [(section name, its paragraphs)]) of a roff page."""
  lines = source.splitlines()
  for line in lines:
    if line.startswith(".so "):
      return line[4:].strip(), []
  sections: list[tuple[str, list[str]]] = []
  current: list[str] = []
  paragraphs: list[str] = []
  in_table = False

  def flush():
    if current:
      text = _SPACES.sub(" ", " ".join(current)).strip()
      if text:
        paragraphs.append(text)
      current.clear()

  for line in lines:
    if line.startswith(('.\\"', "'\\\"", '.\\\\"')):
      continue
    if line.startswith((".", "'")):
      parts = line[1:].split(None, 1)
      macro = parts[0] if parts else ""
      rest = parts[1] if len(parts) > 1 else ""
      if macro == "TS":
        in_table = True
      if macro == "TE":
        in_table = False
        continue
      if macro == "SH":
        flush()
        paragraphs = []
        sections.append((roff_text(rest).strip('"').upper(), paragraphs))
      elif macro in _FONT_MACROS:
        words = re.findall(r'"[^"]*"|\S+', rest)
        current.append(roff_text("".join(w.strip('"') for w in words)
                                 if macro not in ("B", "I", "SM", "SB")
                                 else " ".join(w.strip('"') for w in words)))
      elif macro in _BREAKS:
        flush()
      continue
    if in_table:
      continue
    current.append(roff_text(line))
  flush()
  return None, sections


def name_description(name_paragraphs: list[str]) -> str | None:
  """The description after the dash of a NAME section ("dup, dup2 - duplicate ..."), or
  None when there is none."""
  text = " ".join(name_paragraphs)
  match = re.search(r"\s-+\s+(.+)$", text)
  return match.group(1).strip() if match else None


def page_id(path: str) -> str:
  """``dup.2`` for ``.../man2/dup.2.gz``."""
  name = os.path.basename(path)
  return name.removesuffix(".gz")


def installed_pages(packages=PACKAGES) -> list[str]:
  """The English manual pages the packages installed (sorted), each once (no links)."""
  out = []
  for package in packages:
    try:
      listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                               check=True).stdout
    except (OSError, subprocess.CalledProcessError):
      raise SystemExit(f"{package} is not installed: apt-get install {' '.join(packages)}")
    # A symbolic link is another name of a page (exit.2 for _exit.2): the page once.
    out.extend(p for p in listing.split("\n")
               if re.match(r"/usr/share/man/man\d/[^/]+\.gz$", p) and os.path.isfile(p)
               and not os.path.islink(p))
  return sorted(set(out))


def build(paths: list[str]) -> tuple[list[dict], list[dict]]:
  """(documents, queries) from the pages at ``paths``: one document per page that is not an
  alias and has a NAME description and some text besides; one query per distinct
  description, relevant to every page that has it."""
  docs, by_description = [], collections.defaultdict(list)
  for path in paths:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
      alias, sections = parse_page(f.read())
    if alias is not None:
      continue
    names = [p for name, ps in sections if name == "NAME" for p in ps]
    description = name_description(names)
    body = [p for name, ps in sections if name != "NAME" for p in ps]
    if description is None or len(" ".join(body).split()) < 20:
      continue
    pid = page_id(path)
    docs.append({"id": pid, "text": "\n\n".join(body)})
    by_description[description].append(pid)
  queries = [{"query": q, "relevant": ids} for q, ids in by_description.items()]
  return docs, queries


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="directory for docs.jsonl and queries.jsonl")
  args = p.parse_args(argv)
  docs, queries = build(installed_pages())
  write_retrieval_set(args.out, docs, queries)
  words = sum(len(d["text"].split()) for d in docs)
  print(f"{args.out}: {len(docs):,} pages ({words:,} words), {len(queries):,} queries")


if __name__ == "__main__":
  main()
