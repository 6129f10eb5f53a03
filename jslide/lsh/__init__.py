"""Locality-sensitive hashing: retrieve the neurons of a large layer likely to fire.

Hash families (``SimHash``, ``DWTA``, ``SparseSimHash``) each have ``init(key, dim, K, L)``
and hash vectors to codes int32[B, L]; ``build``/``rebuild`` bucket a table's rows into an
``LSHIndex`` (CSR layout); ``query`` / ``query_sparse`` return active ids per input;
``RebuildSchedule`` says when to rebuild. See docs/lsh.md for the maths.
"""

from jslide.lsh.dwta import DWTA
from jslide.lsh.index import LSHIndex, build, rebuild
from jslide.lsh.query import STRATEGIES, query, query_sparse
from jslide.lsh.schedule import RebuildSchedule, RebuildState
from jslide.lsh.simhash import SimHash
from jslide.lsh.sparse_simhash import SparseSimHash

__all__ = ["DWTA", "LSHIndex", "RebuildSchedule", "RebuildState", "STRATEGIES", "SimHash",
           "SparseSimHash", "build", "query", "query_sparse", "rebuild"]
