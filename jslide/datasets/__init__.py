"""Extreme-classification data: readers, batching, and the bundled WordNet dataset."""

from jslide.datasets import wordnet
from jslide.datasets.batches import Batch, batches, epoch_order, make_batch, num_batches
from jslide.datasets.xc_format import XCData, XCFormatError, read, write

__all__ = ["Batch", "XCData", "XCFormatError", "batches", "epoch_order", "make_batch",
           "num_batches", "read", "wordnet", "write"]
