"""Evaluation of a retrieval index on queries with known relevant documents: recall@1,
recall@10, MRR@10 and the latency of one query at a time."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from jslide.datasets.retrieval_format import json_lines


def read_queries(path: str) -> list[tuple[str, list[str]]]:
  """``(query, relevant document ids)`` of a JSON-lines file of ``{"query": ...,
  "relevant": [ids]}`` (ValueError naming the line for a malformed one)."""
  out = []
  with open(path, encoding="utf-8") as f:
    for number, row in json_lines(path, f):
      if (not isinstance(row, dict) or not isinstance(row.get("query"), str)
          or not isinstance(row.get("relevant"), list) or not row["relevant"]):
        raise ValueError(f"{path}:{number}: expected {{\"query\": \"...\", \"relevant\": "
                         "[document ids]}}")
      out.append((row["query"], [str(r) for r in row["relevant"]]))
  if not out:
    raise ValueError(f"{path}: no queries")
  return out


def ranking_metrics(ranked: list[list[str]], relevant: list[list[str]]) -> dict:
  """recall@1 and recall@10 (the share of a query's relevant documents in its first 1 or
  10, averaged over queries) and MRR@10 (1 / the rank of the first relevant one within 10,
  else 0)."""
  r1, r10, mrr = [], [], []
  for docs, rel in zip(ranked, relevant):
    rel = set(rel)
    r1.append(len(rel & set(docs[:1])) / len(rel))
    r10.append(len(rel & set(docs[:10])) / len(rel))
    first = next((i for i, d in enumerate(docs[:10]) if d in rel), None)
    mrr.append(0.0 if first is None else 1.0 / (first + 1))
  return {"recall@1": float(np.mean(r1)), "recall@10": float(np.mean(r10)),
          "mrr@10": float(np.mean(mrr)), "queries": len(ranked)}


def timed_rankings(search: Callable[[str], list[str]], queries: list[str],
                   warmup: int = 3) -> tuple[list[list[str]], dict]:
  """(each query's ranked document ids, latency): ``search`` called on one query at a
  time, in this thread; p50 and p99 in milliseconds over every query (the ``warmup`` first
  calls, which may compile, run once more untimed before)."""
  for q in queries[:warmup]:
    search(q)
  ranked, ms = [], []
  for q in queries:
    t = time.perf_counter()
    ranked.append(search(q))
    ms.append(1e3 * (time.perf_counter() - t))
  return ranked, {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def evaluate(search: Callable[[str], list[str]], queries: list[tuple[str, list[str]]]) -> dict:
  """:func:`ranking_metrics` and :func:`timed_rankings` of ``search`` (query -> ranked
  document ids, at least 10) on ``queries`` (:func:`read_queries`)."""
  ranked, latency = timed_rankings(search, [q for q, _ in queries])
  return {**ranking_metrics(ranked, [r for _, r in queries]), **latency}
