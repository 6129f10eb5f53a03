"""Extreme-classification data: readers, batching, and the bundled datasets."""

from jslide.datasets import bundled
from jslide.datasets.batches import Batch, batches, epoch_order, make_batch, num_batches
from jslide.datasets.xc_format import XCData, XCFormatError, read, write

__all__ = ["Batch", "XCData", "XCFormatError", "batches", "bundled", "epoch_order",
           "make_batch", "num_batches", "read", "write"]
