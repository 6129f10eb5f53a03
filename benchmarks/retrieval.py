"""Retrieval without a vector database (``python -m jslide.retrieval``) against BM25 and a
vector search, on query sets built by ``jslide.datasets`` (a folder with ``docs.jsonl`` and
``queries.jsonl``: ``build_manpages``, ``build_debian_descriptions``), and what ``add``
costs and keeps.

For each set, every step a command-line call in a process of its own (evaluation pins XLA
to one thread, so latency is one thread's; training uses every core):

1. ``index`` of every document (timed), then ``eval --baselines``: recall@1, recall@10,
   MRR@10, p50 / p99 latency of one query at a time, build seconds and index size, for
   jslide, its model without the lexical half (``jslide_model_alone``), BM25 (bm25s) and
   TF-IDF + SVD + FAISS on the same passages;
2. ``index`` of 90% of the documents (every tenth one left out), ``eval`` of the queries
   of those 90%, ``add`` of the other 10% (timed against the full index's build), and
   ``eval`` of the old and the new documents' queries on the grown index.

    python benchmarks/retrieval.py /tmp/manpages /tmp/debian-desc --json results/retrieval.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _report import write_json


def cli(*args: str) -> None:
  subprocess.run([sys.executable, "-m", "jslide.retrieval", *args], check=True)


def evaluated(index_dir: str, queries: str, out: str, *extra: str) -> dict:
  cli("eval", index_dir, "--queries", queries, "--json", out, *extra)
  with open(out) as f:
    return json.load(f)


def record_of(index_dir: str) -> dict:
  with open(os.path.join(index_dir, "CURRENT")) as f:
    version = f.read().strip()
  with open(os.path.join(index_dir, version, "index.json")) as f:
    return json.load(f)["record"]


def run_set(path: str, work: str, options: list[str]) -> dict:
  docs_file, queries_file = (os.path.join(path, n) for n in ("docs.jsonl", "queries.jsonl"))
  with open(docs_file, encoding="utf-8") as f:
    docs = [json.loads(line) for line in f if line.strip()]
  with open(queries_file, encoding="utf-8") as f:
    queries = [json.loads(line) for line in f if line.strip()]
  name = os.path.basename(os.path.normpath(path))
  full = os.path.join(work, name + "-full")
  cli("index", docs_file, "--out", full, "--overwrite", "--no-progress", *options)
  out = {"set": name, "documents": len(docs), "queries": len(queries),
         "full": evaluated(full, queries_file, os.path.join(work, name + "-full.json"),
                           "--baselines"),
         "full_record": record_of(full)}
  # add: every tenth document held out, added to an index of the others.
  new_ids = {str(d["id"]) for i, d in enumerate(docs) if i % 10 == 9}
  parts = {"old": [d for d in docs if str(d["id"]) not in new_ids],
           "new": [d for d in docs if str(d["id"]) in new_ids]}
  files = {}
  for part, rows in parts.items():
    files[part] = os.path.join(work, f"{name}-{part}.jsonl")
    with open(files[part], "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    q = [r for r in queries if (set(map(str, r["relevant"])) <= new_ids) == (part == "new")]
    files[part + "_queries"] = os.path.join(work, f"{name}-{part}-queries.jsonl")
    with open(files[part + "_queries"], "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in q)
  grown = os.path.join(work, name + "-grown")
  cli("index", files["old"], "--out", grown, "--overwrite", "--no-progress", *options)
  before = evaluated(grown, files["old_queries"], os.path.join(work, name + "-before.json"))
  cli("add", grown, files["new"], "--no-progress")
  rec = record_of(grown)
  out["add"] = {
      "old_before": before["jslide"],
      "old_after": evaluated(grown, files["old_queries"],
                             os.path.join(work, name + "-old.json"))["jslide"],
      "new_after": evaluated(grown, files["new_queries"],
                             os.path.join(work, name + "-new.json"))["jslide"],
      "add_s": rec["add"]["add_s"], "old_build_s": rec["build_s"],
      "full_build_s": out["full_record"]["build_s"]}
  return out


def table(rows: list[dict]) -> str:
  lines = ["| set | method | recall@1 | recall@10 | MRR@10 | p50 ms | p99 ms | build s | MB |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    for method, m in r["full"].items():
      if isinstance(m, dict):
        lines.append(f"| {r['set']} | {method} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | "
                     f"{m['mrr@10']:.3f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                     f"{m['build_s'] or 0:.1f} | {m['memory_mb'] or 0:.1f} |")
  lines += ["", "| set | add s / full build s | new docs' recall@10 | old docs' recall@10 "
            "before -> after |", "|---|---:|---:|---:|"]
  for r in rows:
    a = r["add"]
    lines.append(f"| {r['set']} | {a['add_s']:.1f} / {a['full_build_s']:.1f} "
                 f"({a['add_s'] / a['full_build_s']:.0%}) | {a['new_after']['recall@10']:.3f} | "
                 f"{a['old_before']['recall@10']:.3f} -> {a['old_after']['recall@10']:.3f} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("sets", nargs="*", help="folders with docs.jsonl and queries.jsonl")
  p.add_argument("--json", help="write the results here")
  p.add_argument("--work", help="where the indices go (default: a temporary folder)")
  p.add_argument("--table-of", metavar="JSON",
                 help="print the table of a record this command wrote (--json), and exit")
  args, options = p.parse_known_args()  # the rest: options of `python -m jslide.retrieval index`
  if args.table_of:
    with open(args.table_of) as f:
      print(table(json.load(f)))
    return
  if not args.sets:
    p.error("name at least one set (a folder with docs.jsonl and queries.jsonl)")
  work = args.work or tempfile.mkdtemp(prefix="jslide-retrieval-")
  rows = [run_set(s, work, options) for s in args.sets]
  print(table(rows))
  write_json(args.json, rows)


if __name__ == "__main__":
  main()
