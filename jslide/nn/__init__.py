"""Flax NNX modules with LSH-sparse layers and row-sparse tables."""

from jslide.nn.block_ffn import BlockSparseFFN
from jslide.nn.dlrm import DLRM
from jslide.nn.embed import HashEmbed, HashedTable, TableEmbed
from jslide.nn.robe import RobeEmbed, RobeMemory
from jslide.nn.softmax_head import SparseSoftmaxHead
from jslide.nn.sparse_dense import SparseDense
from jslide.nn.sparse_ffn import DenseFFN, SparseFFN
from jslide.nn.sparse_input import SparseInput
from jslide.nn.sparse_mlp import SparseMLP
from jslide.nn.transformer import CausalSelfAttention, SparseTransformerBlock, SparseTransformerLM
from jslide.nn.variables import Index, RouteBias, Table

__all__ = ["BlockSparseFFN", "CausalSelfAttention", "DLRM", "DenseFFN", "HashEmbed", "HashedTable", "Index",
           "RobeEmbed", "RobeMemory", "RouteBias", "SparseDense", "SparseFFN", "SparseInput", "TableEmbed",
           "SparseMLP", "SparseSoftmaxHead", "SparseTransformerBlock", "SparseTransformerLM",
           "Table"]
