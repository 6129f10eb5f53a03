"""Issue 29's corpus builder: each reader turns its format into prose paragraphs (code,
markup and navigation out), and the builder writes three splits with every part in each and
a manifest of packages and licences. On small files of each format under a fake root."""

import gzip
import json

import pytest

from jslide.datasets import build_english as be


def _b64(n: int) -> str:
  digits = be._B64
  out = ""
  while True:
    out = digits[n % 64] + out
    n //= 64
    if not n:
      return out


def _write_dictd(path, entries):
  body, index, offset = b"", [], 0
  for word, text in entries:
    data = text.encode()
    index.append(f"{word}\t{_b64(offset)}\t{_b64(len(data))}\n")
    body += data
    offset += len(data)
  with gzip.open(str(path) + ".dict.dz", "wb") as f:
    f.write(body)
  (path.parent / (path.name + ".index")).write_text("".join(index))


def test_dictd_entries_are_read_through_their_index(tmp_path):
  _write_dictd(tmp_path / "toy", [
      ("00-database-info", "This file was converted by dictfmt.\n"),
      ("abacus", "abacus\n  A frame with beads, used for {counting} by hand.\n\n"
                 "  Also a slab on top of a column.\n"),
      ("zebra", "zebra\n  An African wild horse with <i>black</i> and white stripes.\n")])
  got = list(be.read_dictd(str(tmp_path / "toy.dict.dz")))
  assert got == ["abacus A frame with beads, used for counting by hand.",
                 "Also a slab on top of a column.",
                 "zebra An African wild horse with black and white stripes."]


def test_rst_keeps_prose_and_directive_bodies_and_drops_code(tmp_path):
  (tmp_path / "a.rst.txt").write_text(
      "Title\n=====\n\n"
      "Use :func:`open` to read a `file <https://x>`_ with ``mode``.\n"
      "It returns a **stream**::\n\n"
      "   f = open('x')\n   f.read()\n\n"
      ".. function:: close(f)\n\n"
      "   Close the stream and free its buffer.\n\n"
      ".. code-block:: python\n\n   print('code, not prose')\n\n"
      ".. this is a comment\n   spanning two lines\n\n"
      ">>> 1 + 1\n2\n\n"
      "The last paragraph.\n")
  got = list(be.read_rst(str(tmp_path / "a.rst.txt")))
  assert got == ["Title", "Use open to read a file with mode. It returns a stream:",
                 "Close the stream and free its buffer.", "The last paragraph."], got


def test_pod_html_info_and_fortunes(tmp_path):
  (tmp_path / "a.pod").write_text(
      "=head1 NAME\n\nperlfoo - how C<foo> works\n\n    my $x = 1;  # verbatim\n\n"
      "=over 4\n\n=item B<bar>\n\nSee L<perlbar|perlbar> for E<lt>more.\n")
  assert list(be.read_pod(str(tmp_path / "a.pod"))) == [
      "NAME", "perlfoo - how foo works", "bar", "See perlbar for <more."]
  (tmp_path / "a.html").write_text(
      "<html><head><title>t</title><script>var x;</script></head><body><nav>Home | Next</nav>"
      "<h1>Heading here</h1><p>First <b>bold</b> paragraph &amp; more.</p>"
      "<pre>code()</pre><table><tr><td>cell</td></tr></table><p>Second one.</p></body></html>")
  assert list(be.read_html(str(tmp_path / "a.html"))) == [
      "Heading here", "First bold paragraph & more.", "Second one."]
  with gzip.open(tmp_path / "a.info.gz", "wt") as f:
    f.write("\x1f\nFile: a.info,  Node: Top,  Next: Intro\n\nThe tool copies files\nquickly.\n"
            "\n* Menu:\n\n* Intro::\n\n     cp a b   (an example)\n\x1f\n")
  assert list(be.read_info(str(tmp_path / "a.info.gz"))) == ["The tool copies files quickly."]
  (tmp_path / "f.u8").write_text("A fortune\nof two lines.\n%\nAnother one here.\n%\n")
  assert [p for p in be.read_fortunes(str(tmp_path / "f.u8")) if p] == [
      "A fortune of two lines.", "Another one here."]


def test_the_builder_writes_three_splits_with_every_part_and_a_manifest(tmp_path, capsys):
  root = tmp_path / "root"
  games = root / "usr/share/games/fortunes"
  games.mkdir(parents=True)
  (games / "a.u8").write_text("".join(f"Fortune number {i} is here.\n%\n" for i in range(400)))
  pods = root / "usr/share/perl/5.36/pod"
  pods.mkdir(parents=True)
  (pods / "a.pod").write_text("".join(f"Perl paragraph number {i} here.\n\n" for i in range(300))
                              + "Perl paragraph number 0 here.\n")  # a repeat: dropped
  out = tmp_path / "out"
  be.main(["--out", str(out), "--root", str(root)])
  printed = capsys.readouterr().out
  assert "gcide: not installed (apt-get install dict-gcide), skipped" in printed
  texts = {s: (out / f"english_{s}.txt").read_text() for s in ("train", "valid", "test")}
  for s, text in texts.items():
    assert "Fortune number" in text and "Perl paragraph" in text, s
  paragraphs = sum(len(t.strip().split("\n\n")) for t in texts.values())
  assert paragraphs == 700
  manifest = {m["part"]: m for m in json.loads((out / "english_parts.json").read_text())}
  assert set(manifest) == {"fortunes", "perl"}
  assert manifest["perl"]["licence"] == "GPL-1+ or Artistic"
  assert manifest["perl"]["paragraphs"] == 300
  assert sum(manifest["fortunes"]["words"].values()) == 400 * 5
  with pytest.raises(SystemExit):
    be.main(["--out", str(out), "--root", str(tmp_path / "empty")])
