"""``python benchmarks/report.py --quick`` regenerates the benchmark page: every section's
table, the plots, and the stamp of the machine, packages and commit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "benchmarks", "report.py")

pytest.importorskip("matplotlib")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(REPORT), reason="not a source checkout")
def test_quick_report_regenerates_every_section(tmp_path):
  out = tmp_path / "site" / "benchmarks.md"
  run = subprocess.run([sys.executable, REPORT, "--quick", "--out", str(out), "--results",
                        str(tmp_path / "results")], capture_output=True, text=True,
                       timeout=1200, cwd=tmp_path)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  page = out.read_text()
  # the stamp
  import jax
  assert f"jax {jax.__version__}" in page
  assert re.search(r"commit: `([0-9a-f]{40}(\+dirty)?|unknown)`", page)
  assert re.search(r"\d+ cores", page)
  # every section, its table rows, each baseline beside jslide
  steps = page.split("## One training step")[1].split("\n## ")[0]
  assert re.search(r"^\| 1,000 \|", steps, re.M) and re.search(r"^\| 10,000 \|", steps, re.M)
  assert "recall of the exact top 10" in page
  xc = page.split("### wordnet")[1]
  for name in ("jslide", "sampled", "dense JAX"):
    assert re.search(rf"^\| {name}", xc, re.M), name
  assert "perplexity against training time" in page
  for title in ("Retrieval without a vector database", "bytes sent per step",
                "the scaling model"):
    assert title in page
  assert re.search(r"^\| manpages \| jslide \|", page, re.M)
  # the plots it links are there, and are PNG files
  figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", page)
  assert len(figures) >= 3
  for name in figures:
    with open(out.parent / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
  assert (tmp_path / "results" / "report.json").exists()


def test_report_refuses_a_missing_record(tmp_path):
  run = subprocess.run([sys.executable, REPORT, "--quick", "--out", str(tmp_path / "b.md"),
                        "--lm-records", str(tmp_path / "missing.json")], capture_output=True,
                       text=True, timeout=300)
  assert run.returncode != 0 and "--lm-records: no file" in run.stderr
