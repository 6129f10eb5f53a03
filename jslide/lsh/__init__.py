"""Locality-sensitive hashing: retrieve the neurons of a large layer likely to fire.

Hash families (``SimHash``, ``DWTA``, ``SparseSimHash``, ``MIPSHash``, ``ClusterHash``)
each have ``init(key, dim, K, L)`` and hash vectors to codes int32[B, L]; ``HashFamily``
objects (``FAMILIES``, ``hash_family(name)``) carry a family's defaults (K, L, strategy) for
the modules that build an index; ``MIPSHash`` ranks rows by
the layer's score ``x . w_n + b_n`` (``mips_keys`` / ``mips_queries``). ``build``/``rebuild``
bucket a table's rows into an ``LSHIndex`` (CSR layout); ``query`` / ``query_sparse`` return
active ids per input; ``NeuronLists`` (``fit_query_centroids``, ``build_neuron_lists``,
``neuron_list_topk``) maps regions of the input space to the neurons that fire there, for
sparse inference of a trained layer; ``recall_of_top_k`` measures what they find; ``RebuildSchedule`` says
when to rebuild. See docs/lsh.md for the maths.
"""

from jslide.lsh.cluster import ClusterHash
from jslide.lsh.dwta import DWTA
from jslide.lsh.families import FAMILIES, HashFamily, hash_family, rows_per_bucket_hashes
from jslide.lsh.index import LSHIndex, build, rebuild
from jslide.lsh.mips import MIPSHash, mips_key_stats, mips_keys, mips_queries
from jslide.lsh.neuron_lists import (NeuronLists, build_neuron_lists, fit_query_centroids,
                                     nearest_centroids, neuron_list_candidates,
                                     neuron_list_topk)
from jslide.lsh.query import STRATEGIES, query, query_sparse
from jslide.lsh.recall import recall_of_top_k
from jslide.lsh.schedule import RebuildSchedule, RebuildState
from jslide.lsh.simhash import SimHash
from jslide.lsh.sparse_simhash import SparseSimHash

__all__ = ["ClusterHash", "DWTA", "FAMILIES", "HashFamily", "LSHIndex", "MIPSHash", "NeuronLists", "RebuildSchedule",
           "RebuildState", "STRATEGIES", "SimHash", "SparseSimHash", "build",
           "build_neuron_lists", "fit_query_centroids", "hash_family", "mips_key_stats", "mips_keys",
           "mips_queries", "rows_per_bucket_hashes",
           "nearest_centroids", "neuron_list_candidates", "neuron_list_topk", "query",
           "query_sparse", "rebuild", "recall_of_top_k"]
