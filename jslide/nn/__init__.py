"""Flax NNX modules with LSH-sparse layers and row-sparse tables."""

from jslide.nn.block_ffn import BlockSparseFFN
from jslide.nn.dlrm import DLRM
from jslide.nn.embed import HashEmbed, HashedTable, TableEmbed
from jslide.nn.robe import RobeEmbed, RobeMemory
from jslide.nn.sampled import make_sampled_train_step
from jslide.nn.softmax_head import SparseSoftmaxHead
from jslide.nn.sparse_dense import SparseDense
from jslide.nn.sparse_ffn import DenseFFN, SparseFFN
from jslide.nn.sparse_input import SparseInput
from jslide.nn.sparse_mlp import SparseMLP
from jslide.nn.transformer import CausalSelfAttention, SparseTransformerBlock, SparseTransformerLM
from jslide.nn.training import (TrainState, catch_up_train_state, make_dense_train_step,
                                make_train_step, merge, rebuild_indices, rebuild_train_state,
                                split_model)
from jslide.nn.variables import Index, RouteBias, Table

__all__ = ["BlockSparseFFN", "CausalSelfAttention", "DLRM", "DenseFFN", "HashEmbed", "HashedTable", "Index",
           "RobeEmbed", "RobeMemory", "RouteBias", "SparseDense", "SparseFFN", "SparseInput", "TableEmbed",
           "SparseMLP", "SparseSoftmaxHead", "SparseTransformerBlock", "SparseTransformerLM",
           "Table", "TrainState",
           "catch_up_train_state", "make_dense_train_step", "make_sampled_train_step",
           "make_train_step", "merge", "rebuild_train_state",
           "rebuild_indices", "split_model"]
