"""Retrieval without a vector database: an extreme classifier whose labels are passages.

    index = jslide.retrieval.Index.build(jslide.retrieval.read_documents(["docs.jsonl"]))
    index.save("idx")
    jslide.retrieval.Index.load("idx").search("how do I duplicate a file descriptor", k=5)

``python -m jslide.retrieval`` indexes, adds, queries and evaluates from the command line;
docs/retrieval.md has the design and the measurements.
"""

from jslide.retrieval.config import IndexConfig, RunConfig
from jslide.retrieval.documents import Document, Passage, read_documents, split_passages
from jslide.retrieval.features import Featurizer
from jslide.retrieval.index import Hit, Index
from jslide.retrieval.training_queries import training_queries

__all__ = ["Document", "Featurizer", "Hit", "Index", "IndexConfig", "Passage", "RunConfig",
           "read_documents", "split_passages", "training_queries"]
