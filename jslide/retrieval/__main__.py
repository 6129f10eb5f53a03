"""``python -m jslide.retrieval``: search documents without a vector database.

    python -m jslide.retrieval index DOCS... --out DIR [--overwrite] [options]
    python -m jslide.retrieval add DIR DOCS...
    python -m jslide.retrieval query DIR "text" [-k 10] [--json]
    python -m jslide.retrieval eval DIR --queries FILE [--baselines] [--json PATH]

DOCS are JSON-lines files of ``{"id": ..., "text": ...}`` (``.jsonl``), or plain-text and
Markdown files, one document each. Queries for ``eval``: JSON lines of ``{"query": ...,
"relevant": [document ids]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _single_thread() -> None:
  # Latency is reported for one thread: XLA's CPU backend would split a query's work over
  # every core. Only before JAX starts.
  if "jax" not in sys.modules:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1").strip()


def _parser() -> argparse.ArgumentParser:
  from jslide import train as T
  from jslide.retrieval.config import IndexConfig, RunConfig
  p = argparse.ArgumentParser(prog="python -m jslide.retrieval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  i = sub.add_parser("index", help="index documents (trains the model)")
  i.add_argument("docs", nargs="+", help="JSON-lines, text or Markdown files")
  i.add_argument("--out", required=True, help="the index directory")
  i.add_argument("--overwrite", action="store_true", help="replace an index in --out")
  i.add_argument("--no-progress", dest="progress", action="store_false")
  T.add_arguments(i.add_argument_group("index"), IndexConfig)
  T.add_arguments(i.add_argument_group("training"), RunConfig)
  a = sub.add_parser("add", help="add documents to an index (trains their passages)")
  a.add_argument("dir")
  a.add_argument("docs", nargs="+")
  a.add_argument("--no-progress", dest="progress", action="store_false")
  q = sub.add_parser("query", help="search an index")
  q.add_argument("dir")
  q.add_argument("text")
  q.add_argument("-k", type=int, default=10, help="documents to return")
  q.add_argument("--json", action="store_true", help="print JSON lines")
  e = sub.add_parser("eval", help="recall@1, recall@10, MRR@10 and latency on queries")
  e.add_argument("dir")
  e.add_argument("--queries", required=True, help="JSON lines of {query, relevant}")
  e.add_argument("--baselines", action="store_true",
                 help="also BM25, TF-IDF + SVD + FAISS on the same passages, and this "
                 "index's model without its lexical half")
  e.add_argument("--json", help="write the results here")
  return p


def _index(args) -> None:
  from jslide import train as T
  from jslide.retrieval.config import IndexConfig, RunConfig
  from jslide.retrieval.documents import read_documents
  from jslide.retrieval.index import Index
  if os.path.exists(os.path.join(args.out, "CURRENT")) and not args.overwrite:
    raise ValueError(f"{args.out} holds an index: add documents with `add`, or pass "
                     "--overwrite to replace it")
  docs = read_documents(args.docs)
  index = Index.build(docs, T.from_args(IndexConfig, args), T.from_args(RunConfig, args),
                      progress=args.progress)
  path = index.save(args.out)
  r = index.record
  print(f"indexed {r['documents']:,} documents as {r['passages']:,} passages in "
        f"{r['build_s']:.1f} s ({r['training_queries']:,} training queries): {path}")


def _add(args) -> None:
  from jslide.retrieval.documents import read_documents
  from jslide.retrieval.index import Index
  index = Index.load(args.dir)
  new = index.add(read_documents(args.docs), progress=args.progress)
  path = new.save(args.dir)
  r = new.record["add"]
  print(f"added {r['documents']:,} documents as {r['passages']:,} passages in "
        f"{r['add_s']:.1f} s: {path}")


def _query(args) -> None:
  from jslide.retrieval.index import Index
  hits = Index.load(args.dir).search(args.text, k=args.k)
  for rank, h in enumerate(hits, 1):
    if args.json:
      print(json.dumps({"rank": rank, "doc": h.doc, "score": round(h.score, 4),
                        "passage": h.passage, "text": h.text}, ensure_ascii=False))
    else:
      print(f"{rank:>3}. {h.doc}  ({h.score:.3f})\n     {h.text[:200]}")


def _eval(args) -> None:
  import resource
  from jslide.retrieval import baselines
  from jslide.retrieval.evaluate import evaluate, read_queries
  from jslide.retrieval.index import Index, current_version
  queries = read_queries(args.queries)
  index = Index.load(args.dir)
  results = {"jslide": {**evaluate(lambda q: [h.doc for h in index.search(q, 10, strict=False)],
                                   queries),
                        "build_s": index.record.get("build_s"),
                        "memory_mb": round(_dir_bytes(current_version(args.dir)) / 2**20, 1)}}
  if args.baselines and index.lexical is not None:  # what each half brings
    alone = index.with_lexical_weight(0.0)
    results["jslide_model_alone"] = {
        **evaluate(lambda q: [h.doc for h in alone.search(q, 10, strict=False)], queries),
        "build_s": None, "memory_mb": None}
  if args.baselines:
    try:
      import faiss
      faiss.omp_set_num_threads(1)
    except ImportError:
      pass
    for cls in (baselines.BM25, baselines.VectorSearch):
      b = cls(index.passages)
      results[cls.name] = {**evaluate(lambda q: b.search(q, 10), queries),
                           "build_s": round(b.build_s, 2),
                           "memory_mb": round(b.memory_bytes() / 2**20, 1)}
  results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  print(f"{'':24} {'recall@1':>9} {'recall@10':>9} {'MRR@10':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'build s':>8} {'MB':>7}")
  for name, r in results.items():
    if isinstance(r, dict):
      print(f"{name:24} {r['recall@1']:9.4f} {r['recall@10']:9.4f} {r['mrr@10']:7.4f} "
            f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['build_s'] or 0:8.1f} "
            f"{r['memory_mb'] or 0:7.1f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, files in os.walk(path)
             for n in files)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] in (["eval"], ["query"]):
    _single_thread()
  args = _parser().parse_args(argv)
  try:
    {"index": _index, "add": _add, "query": _query, "eval": _eval}[args.command](args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
