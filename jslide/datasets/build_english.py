"""Builds a 20-million-word English corpus for the language models from Debian packages.

Every part is prose that a Debian package installs, under a licence that allows it (the
table below, checked against each package's ``/usr/share/doc/<package>/copyright``); none
is shipped with jslide. The Linux kernel's documentation is not used: it is kept aside as
text that no jslide model was tuned on.

=====================  ======================  =========================================
part                   Debian package          licence
=====================  ======================  =========================================
gcide                  dict-gcide              GPL-3+
wordnet                dict-wn                 WordNet 3.0 licence (BSD-like)
foldoc                 dict-foldoc             GFDL 1.1+
jargon                 dict-jargon             public domain
devil                  dict-devil              public domain
fortunes               fortunes                BSD
python                 python3.11-doc          PSF licence
perl                   perl-doc                GPL-1+ or Artistic
postgresql             postgresql-doc-15       PostgreSQL licence
sqlite                 sqlite3-doc             public domain
django                 python-django-doc       BSD-3-Clause
scipy                  python-scipy-doc        BSD-3-Clause
scikit-learn           python-sklearn-doc      BSD-3-Clause
pandas                 python-pandas-doc       BSD-3-Clause
sympy                  python-sympy-doc        BSD-3-Clause
astropy                python-astropy-doc      BSD-3-Clause
scikit-image           python-skimage-doc      BSD-3-Clause
sphinx                 sphinx-doc              BSD-2-Clause
cmake                  cmake-doc               BSD-3-Clause
git                    git-doc                 GPL-2
nodejs                 nodejs-doc              Expat
octave                 octave-doc              GPL-3+
rust                   rust-doc                MIT or Apache-2.0 (the books only)
debian-reference       debian-reference-en     GPL-2+
gnu-standards          gnu-standards           GFDL (no invariant sections)
gnu-manuals            the GNU tools' own      the manual's: GFDL without invariant
                       (coreutils, grep, ...)  sections or GPL (Debian main)
gimp                   gimp-help-en            GFDL-1.2+ (no invariant sections)
erlang                 erlang-doc              Apache-2.0
boost                  libboost1.74-doc        BSL-1.0
=====================  ======================  =========================================

Each part becomes paragraphs of plain text (markup, code blocks and navigation removed); a
part's paragraphs are cut into blocks (200 paragraphs, fewer for a part of under 20,000
so that it has 100 blocks) and, of each 20 consecutive blocks, block 18 goes to
``english_valid.txt``, block 19 to ``english_test.txt`` and the rest to
``english_train.txt``, so every part is in all three. ``english_parts.json`` records each
part's package, licence and words per split.

    apt-get install dict-gcide dict-wn dict-foldoc dict-jargon dict-devil fortunes \\
        python3.11-doc perl-doc postgresql-doc-15 sqlite3-doc python-django-doc \\
        python-scipy-doc python-sklearn-doc python-pandas-doc python-sympy-doc \\
        python-astropy-doc python-skimage-doc sphinx-doc cmake-doc git-doc nodejs-doc \\
        octave-doc rust-doc debian-reference-en gnu-standards gimp-help-en erlang-doc \\
        libboost1.74-doc
    python -m jslide.datasets.build_english --out data/english
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import html.parser
import json
import os
import re
from collections.abc import Callable, Iterator

from jslide.datasets import build_gcide

_SPACES = re.compile(r"\s+")
_MIN_WORDS = 3  # shorter paragraphs are headings, labels and navigation


def _paragraph(text: str) -> str:
  return _SPACES.sub(" ", text).strip()


# --- dictd dictionaries (.dict.dz with a tab-separated .index) -------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s: str) -> int:
  n = 0
  for c in s:
    n = n * 64 + _B64.index(c)
  return n


def dict_entries(dict_dz: str) -> Iterator[str]:
  """The entries of a dictd dictionary, in index order (its ``00-database-*`` header entries
  skipped)."""
  index = dict_dz[:-len(".dict.dz")] + ".index"
  with gzip.open(dict_dz, "rb") as f:
    raw = f.read()
  seen = set()
  with open(index, encoding="utf-8", errors="replace") as f:
    for line in f:
      parts = line.rstrip("\n").split("\t")
      if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
        continue
      offset, length = _b64(parts[1]), _b64(parts[2])
      if (offset, length) in seen:  # several headwords share one entry
        continue
      seen.add((offset, length))
      yield raw[offset:offset + length].decode("utf-8", errors="replace")


_DICT_MARKUP = re.compile(r"[{}]|<[^>\n]*>")


def read_dictd(path: str) -> Iterator[str]:
  """Paragraphs of a dictd dictionary: each entry's blank-line-separated blocks, with its
  first line (the headword) kept as the start of the first, cross-reference braces removed."""
  for entry in dict_entries(path):
    for block in re.split(r"\n\s*\n", _DICT_MARKUP.sub("", entry)):
      yield _paragraph(block)


def read_gcide(path: str) -> Iterator[str]:
  yield from build_gcide.read_paragraphs(path)


# --- fortune files ----------------------------------------------------------------------------

def read_fortunes(path: str) -> Iterator[str]:
  """Each fortune (between lines of ``%``) as one paragraph."""
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  for item in re.split(r"^%\s*$", text, flags=re.M):
    yield _paragraph(item)


# --- reStructuredText (Sphinx's _sources) -----------------------------------------------------

_RST_ROLE = re.compile(r":[\w:+-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_{1,2}")
_RST_INLINE = re.compile(r"``|\*\*|(?<!\w)\*(?=\w)|(?<=\w)\*(?!\w)|`_{0,2}|\|")
_RST_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+.:_])\1{2,}\s*$")


# Directives whose bodies are code, data or tables of contents, not prose (the bodies of the
# others, such as ``function``, ``class`` and ``note``, are prose and are kept).
_RST_CODE = re.compile(r"\.\.\s+(?:code-block|code|sourcecode|doctest|testcode|testoutput|"
                       r"testsetup|ipython|plot|literalinclude|math|productionlist|toctree|"
                       r"autosummary|image|figure|raw|csv-table|list-table|table|highlight|"
                       r"graphviz|only|include|program-output|jupyter-execute|"
                       r"[\w-]*diagram)::|\.\.\s+(?!\w[\w:-]*::)")


def read_rst(path: str) -> Iterator[str]:
  """Paragraphs of a reStructuredText file: code-like directives (:data:`_RST_CODE`) and
  comments with their bodies, literal blocks (after ``::``), doctest lines, tables and title
  underlines dropped, other directives' lines dropped and their bodies kept; roles and
  links reduced to their text."""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.read().splitlines()
  block: list[str] = []
  skip_indent = None  # inside a directive or a literal block: skip lines indented past this
  doctest = False  # inside a doctest (its output too): skip to the next blank line
  for line in lines + [""]:
    stripped = line.strip()
    indent = len(line) - len(line.lstrip())
    if doctest:
      doctest = bool(stripped)
      continue
    if skip_indent is not None:
      if not stripped or indent > skip_indent:
        continue
      skip_indent = None
    if stripped.startswith(".. ") or stripped.startswith(">>>") or stripped.startswith("+--") \
        or stripped.startswith("|") or _RST_UNDERLINE.match(line):
      if block:
        yield _paragraph(" ".join(block))
        block = []
      if _RST_CODE.match(stripped):
        skip_indent = indent
      doctest = stripped.startswith(">>>")
      continue
    if not stripped:
      if block:
        yield _paragraph(" ".join(block))
        block = []
      continue
    text = _RST_INLINE.sub("", _RST_LINK.sub(r"\1", _RST_ROLE.sub(r"\1", stripped)))
    if stripped.endswith("::"):
      text = text[:-1] if not stripped == "::" else ""
      skip_indent = indent
    if text:
      block.append(text)


# --- Perl's pod -------------------------------------------------------------------------------

_POD_FORMAT = re.compile(r"([A-Z])<<+\s(.*?)\s>>+|([A-Z])<([^<>]*)>")
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_code(m: re.Match) -> str:
  code, text = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
  if code == "E":
    return _POD_ESCAPES.get(text, "")
  if code in "XZ":  # index entries and null codes print nothing
    return ""
  return text.split("|")[0]  # L<text|target>: the text


def _pod_text(s: str) -> str:
  for _ in range(3):  # nested formatting codes
    s = _POD_FORMAT.sub(_pod_code, s)
  return s


def read_pod(path: str) -> Iterator[str]:
  """Paragraphs of a pod file: ordinary paragraphs and headings, verbatim (indented)
  paragraphs and commands other than headings and items dropped, formatting codes reduced
  to their text."""
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  for para in re.split(r"\n\s*\n", text):
    if not para.strip() or para[0] in " \t":
      continue
    if para.startswith("="):
      command, _, rest = para.partition(" ")
      if command.startswith("=head") or command == "=item":
        yield _paragraph(_pod_text(rest))
      continue
    yield _paragraph(_pod_text(para))


# --- GNU info manuals -------------------------------------------------------------------------

def read_info(path: str) -> Iterator[str]:
  """Paragraphs of a (gzipped) info file: node headers, menus and indented examples
  dropped."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8", errors="replace") as f:
    text = f.read()
  for node in text.split("\x1f"):
    for para in re.split(r"\n\s*\n", node):
      lines = para.strip("\n").splitlines()
      if not lines or lines[0].startswith(("File:", "* Menu:", "Tag Table:", "*")) or \
          para.startswith((" " * 5, "\t")) or re.fullmatch(r"[=*\-.]+", lines[-1].strip()):
        continue
      yield _paragraph(" ".join(lines))


# --- HTML -------------------------------------------------------------------------------------

_HTML_SKIP = {"script", "style", "pre", "code", "nav", "header", "footer", "head", "kbd",
              "samp", "table", "button", "select"}
_HTML_BREAK = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "br", "tr",
               "blockquote", "section", "article", "ul", "ol", "dl", "hr", "title", "figcaption"}


class _HTMLText(html.parser.HTMLParser):
  """Text of an HTML page as paragraphs (block elements break them), without code, tables,
  scripts and navigation."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.skip = 0
    self.current: list[str] = []
    self.paragraphs: list[str] = []

  def _flush(self):
    if self.current:
      self.paragraphs.append(_paragraph("".join(self.current)))
      self.current = []

  def handle_starttag(self, tag, attrs):
    if tag in _HTML_SKIP:
      self.skip += 1
    elif tag in _HTML_BREAK:
      self._flush()
    elif tag == "tt" and not self.skip:
      self.current.append(" ")

  def handle_endtag(self, tag):
    if tag in _HTML_SKIP:
      self.skip = max(0, self.skip - 1)
    elif tag in _HTML_BREAK:
      self._flush()

  def handle_data(self, data):
    if not self.skip:
      self.current.append(data)


def read_html(path: str) -> Iterator[str]:
  parser = _HTMLText()
  with open(path, encoding="utf-8", errors="replace") as f:
    parser.feed(f.read())
  parser.close()
  parser._flush()
  yield from parser.paragraphs


# --- the parts --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Part:
  """One source: its Debian package and licence, the files (glob patterns, sorted, read in
  that order) and the reader that turns a file into paragraphs."""

  name: str
  package: str
  licence: str
  patterns: tuple[str, ...]
  read: Callable[[str], Iterator[str]]

  def files(self, root: str = "/") -> list[str]:
    out: list[str] = []
    for pattern in self.patterns:
      out.extend(sorted(p for p in glob.glob(os.path.join(root, pattern.lstrip("/")),
                                             recursive=True)
                        if os.path.isfile(p) and not _NOT_PROSE.search(p)))
    return out


# Pages of generated manuals that are code, indices or search pages, not prose.
_NOT_PROSE = re.compile(r"/_(?:modules|static|images|downloads)/|/(?:genindex|search|"
                        r"py-modindex|all)\.html$|/(?:octave|liboctave|maintain|standards)"
                        r"\.info")


_SPHINX = "_sources/**/*.txt"
PARTS = (
    Part("gcide", "dict-gcide", "GPL-3+", ("/usr/share/dictd/gcide.dict.dz",), read_gcide),
    Part("wordnet", "dict-wn", "WordNet 3.0 licence", ("/usr/share/dictd/wn.dict.dz",),
         read_dictd),
    Part("foldoc", "dict-foldoc", "GFDL-1.1+", ("/usr/share/dictd/foldoc.dict.dz",),
         read_dictd),
    Part("jargon", "dict-jargon", "public domain", ("/usr/share/dictd/jargon.dict.dz",),
         read_dictd),
    Part("devil", "dict-devil", "public domain", ("/usr/share/dictd/devil.dict.dz",),
         read_dictd),
    Part("fortunes", "fortunes", "BSD", ("/usr/share/games/fortunes/*.u8",), read_fortunes),
    Part("python", "python3.11-doc", "PSF",
         ("/usr/share/doc/python3.11/html/" + _SPHINX,), read_rst),
    Part("perl", "perl-doc", "GPL-1+ or Artistic", ("/usr/share/perl/5.*/pod/*.pod",),
         read_pod),
    Part("postgresql", "postgresql-doc-15", "PostgreSQL",
         ("/usr/share/doc/postgresql-doc-15/html/*.html",), read_html),
    Part("sqlite", "sqlite3-doc", "public domain", ("/usr/share/doc/sqlite3/**/*.html",),
         read_html),
    Part("django", "python-django-doc", "BSD-3-Clause",
         ("/usr/share/doc/python-django-doc/html/**/*.html",), read_html),
    Part("scipy", "python-scipy-doc", "BSD-3-Clause",
         ("/usr/share/doc/python-scipy-doc/html/**/*.html",), read_html),
    Part("scikit-learn", "python-sklearn-doc", "BSD-3-Clause",
         ("/usr/share/doc/python-sklearn-doc/html/" + _SPHINX,), read_rst),
    Part("pandas", "python-pandas-doc", "BSD-3-Clause",
         ("/usr/share/doc/python-pandas-doc/html/" + _SPHINX,), read_rst),
    Part("sympy", "python-sympy-doc", "BSD-3-Clause",
         ("/usr/share/doc/python-sympy-doc/html/" + _SPHINX,), read_rst),
    Part("astropy", "python-astropy-doc", "BSD-3-Clause",
         ("/usr/share/doc/python-astropy-doc/html/" + _SPHINX,), read_rst),
    Part("scikit-image", "python-skimage-doc", "BSD-3-Clause",
         ("/usr/share/doc/python-skimage-doc/html/" + _SPHINX,), read_rst),
    Part("sphinx", "sphinx-doc", "BSD-2-Clause", ("/usr/share/doc/sphinx-doc/html/" + _SPHINX,),
         read_rst),
    Part("cmake", "cmake-doc", "BSD-3-Clause", ("/usr/share/doc/cmake-data/html/" + _SPHINX,
                                                "/usr/share/doc/cmake/html/" + _SPHINX),
         read_rst),
    Part("git", "git-doc", "GPL-2", ("/usr/share/doc/git-doc/*.txt",), read_rst),
    Part("nodejs", "nodejs-doc", "Expat", ("/usr/share/doc/nodejs/api/*.html",), read_html),
    Part("octave", "octave-doc", "GPL-3+", ("/usr/share/doc/octave/*.html/*.html",),
         read_html),
    Part("rust", "rust-doc", "MIT or Apache-2.0",
         tuple(f"/usr/share/doc/rust-doc/html/{book}/**/*.html" for book in
               ("book", "reference", "rust-by-example", "nomicon", "edition-guide", "rustc")),
         read_html),
    Part("debian-reference", "debian-reference-en", "GPL-2+",
         ("/usr/share/debian-reference/*.en.html", "/usr/share/doc/debian-reference-en/**/*.html"),
         read_html),
    Part("gnu-standards", "gnu-standards", "GFDL",
         ("/usr/share/doc/gnu-standards/*.html",), read_html),
    Part("gnu-manuals", "coreutils, grep, findutils, gettext, gnupg, ...",
         "each manual's (GFDL without invariant sections, or GPL: Debian main)",
         ("/usr/share/info/*.info*.gz",), read_info),
    Part("gimp", "gimp-help-en", "GFDL-1.2+ (no invariant sections)",
         ("/usr/share/gimp/2.0/help/en/*.html",), read_html),
    Part("erlang", "erlang-doc", "Apache-2.0", ("/usr/share/doc/erlang-doc/**/*.html",),
         read_html),
    Part("boost", "libboost1.74-doc", "BSL-1.0",
         ("/usr/share/doc/libboost1.74-doc/**/*.html",), read_html),
)


def part_paragraphs(part: Part, root: str = "/") -> list[str]:
  """The paragraphs of ``part`` of at least three words, exact repeats within the part
  dropped (navigation and boilerplate that every page of a manual repeats)."""
  seen: set[str] = set()
  out = []
  for path in part.files(root):
    for p in part.read(path):
      if len(p.split()) >= _MIN_WORDS and p not in seen:
        seen.add(p)
        out.append(p)
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="directory for english_{train,valid,test}.txt")
  p.add_argument("--root", default="/", help="where the packages are installed (default /)")
  p.add_argument("--parts", nargs="+", choices=[x.name for x in PARTS],
                 help="only these parts (default: every part whose package is installed)")
  args = p.parse_args(argv)
  chosen = [x for x in PARTS if args.parts is None or x.name in args.parts]
  splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
  manifest = []
  for part in chosen:
    paragraphs = part_paragraphs(part, args.root)
    if not paragraphs:
      print(f"{part.name}: not installed (apt-get install {part.package}), skipped")
      continue
    words = {}
    # Blocks of up to 200 paragraphs, at least 100 of them, so a small part is in every split.
    block = max(1, min(200, len(paragraphs) // 100))
    for name, ps in build_gcide.split(paragraphs, block).items():
      splits[name].extend(ps)
      words[name] = sum(len(x.split()) for x in ps)
    manifest.append({"part": part.name, "package": part.package, "licence": part.licence,
                     "paragraphs": len(paragraphs), "words": words})
    print(f"{part.name}: {len(paragraphs):,} paragraphs, {sum(words.values()):,} words")
  if not manifest:
    p.error("none of the packages is installed; see python -m jslide.datasets.build_english -h")
  os.makedirs(args.out, exist_ok=True)
  for name, paragraphs in splits.items():
    path = os.path.join(args.out, f"english_{name}.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n\n".join(paragraphs) + "\n")
    print(f"{path}: {len(paragraphs):,} paragraphs, "
          f"{sum(len(x.split()) for x in paragraphs):,} words")
  with open(os.path.join(args.out, "english_parts.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)


if __name__ == "__main__":
  main()
