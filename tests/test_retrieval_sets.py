"""Issue 31's real query sets, written apart from the passages they find: the builders
from the Linux manual pages (NAME line -> page) and from Debian's package descriptions
(synopsis -> long description), on small files of each format."""

import gzip

from jslide.datasets import build_debian_descriptions as dd
from jslide.datasets import build_manpages as mp

DUP_PAGE = r""".\" Copyright notice: a comment, dropped
.TH dup 2 2023-02-05 "Linux man-pages 6.03"
.SH NAME
dup, dup2, dup3 \- duplicate a file descriptor
.SH SYNOPSIS
.nf
.B #include <unistd.h>
.fi
.SH DESCRIPTION
The
.BR dup ()
system call allocates a new file descriptor that refers to the same open file
description as the descriptor \fIoldfd\fP.
.PP
The new file descriptor number is guaranteed to be the lowest-numbered file descriptor
that was unused in the calling process, and the two descriptors share offsets and flags.
.TS
tab(:);
l l.
A:table cell
.TE
"""


def test_a_man_page_becomes_a_query_and_a_document_without_its_name_line(tmp_path):
  alias, sections = mp.parse_page(DUP_PAGE)
  assert alias is None
  names = dict(sections)
  assert mp.name_description(names["NAME"]) == "duplicate a file descriptor"
  assert names["DESCRIPTION"][0] == ("The dup() system call allocates a new file descriptor "
                                     "that refers to the same open file description as the "
                                     "descriptor oldfd.")
  assert "table cell" not in " ".join(names["DESCRIPTION"])
  assert mp.parse_page(".so man2/dup.2\n") == ("man2/dup.2", [])
  man2 = tmp_path / "man2"
  man2.mkdir()
  for name, text in (("dup.2.gz", DUP_PAGE), ("dup3.2.gz", ".so man2/dup.2\n"),
                     ("short.2.gz", ".SH NAME\nshort \\- too short a page\n.SH DESCRIPTION\n"
                                    "Hardly any text.\n")):
    with gzip.open(man2 / name, "wt") as f:
      f.write(text)
  docs, queries = mp.build(sorted(str(p) for p in man2.iterdir()))
  assert [d["id"] for d in docs] == ["dup.2"]  # the alias and the 3-word page are not
  assert "duplicate a file descriptor" not in docs[0]["text"]
  assert "#include <unistd.h>" in docs[0]["text"]
  assert queries == [{"query": "duplicate a file descriptor", "relevant": ["dup.2"]}]


PACKAGES = """Package: fdupes
Description: identifies duplicate files within given directories
Description-md5: aaa

Package: libfoo1
Description: library for foo
Description-md5: bbb

Package: libfoo-transitional
Description: library for foo
Description-md5: bbb

Package: tiny
Description: a tiny package
Description-md5: ccc
"""
TRANSLATIONS = """Package: fdupes
Description-md5: aaa
Description-en: identifies duplicate files within given directories
 FDupes uses md5sums and then a byte by byte comparison to find
 duplicate files within a set of directories.
 .
 It has several useful options including recursion, and it prints the
 sets of identical files it found.

Package: libfoo1
Description-md5: bbb
Description-en: library for foo
 This library implements the foo protocol for programs that need to speak
 it over a network connection, with retries and timeouts handled for them.

Package: tiny
Description-md5: ccc
Description-en: a tiny package
 Too short.
"""


def test_debian_synopses_are_queries_for_long_descriptions(tmp_path):
  (tmp_path / "Packages").write_text(PACKAGES)
  (tmp_path / "Translation-en").write_text(TRANSLATIONS)
  rows = list(dd.read_descriptions(str(tmp_path / "Packages"), str(tmp_path / "Translation-en")))
  assert rows[0][:2] == ("fdupes", "identifies duplicate files within given directories")
  assert rows[0][2].split("\n\n")[1].startswith("It has several useful options")
  docs, queries = dd.build(rows, num_queries=10)
  assert [d["id"] for d in docs] == ["fdupes", "libfoo1"]  # one document per text; tiny: short
  assert {q["query"]: q["relevant"] for q in queries} == {
      "identifies duplicate files within given directories": ["fdupes"],
      "library for foo": ["libfoo1"]}
  docs, queries = dd.build(rows, num_queries=1)
  assert len(queries) == 1
