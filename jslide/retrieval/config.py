"""What a retrieval index is made of (:class:`IndexConfig`) and how it trains
(:class:`RunConfig`); both are command-line options of ``python -m jslide.retrieval index``."""

from __future__ import annotations

import dataclasses

from jslide.train import config as run_config
from jslide.train.config import check_float, check_int, option


@dataclasses.dataclass(frozen=True)
class IndexConfig:
  """The passages, their features and the model that maps a query to them."""

  max_words: int = option(128, "words per passage at most (whole paragraphs, cut at "
                          "sentence ends when longer)")
  num_features: int = option(1 << 18, "hashed word and character n-gram buckets of the input")
  char_weight: float = option(0.5, "weight of the character 4-grams beside the words")
  idf: bool = option(True, "do not weight each n-gram by its inverse document frequency over "
                     "the passages", flag="--no-idf")
  max_features: int = option(256, "features per text at most (the largest kept)")
  lexical_weight: float = option(1.0, "weight of the lexical score (the cosine of the query's "
                                 "and the passage's features) beside the model's, each "
                                 "standardized over a query's candidates; 0: the model alone")
  hidden: int = option(256, "width of the hidden layer (the query's embedding)")
  active: int = option(512, "passages scored per training example: its own, the batch's, "
                       "those the LSH index retrieves, random ones")
  candidates: int = option(512, "passages the inference index retrieves per query, rescored "
                           "exactly")
  inference_tables: int = option(6, "k-means tables of the inference index")
  sentences: int = option(4, "a passage's sentences used as training queries, at most")
  spans: int = option(4, "random spans of 4-16 words per passage, as training queries")

  def __post_init__(self):
    for name, lo in (("max_words", 1), ("max_features", 1), ("hidden", 1), ("active", 1),
                     ("candidates", 1), ("inference_tables", 1), ("sentences", 0),
                     ("spans", 0)):
      check_int(self, name, lo)
    check_int(self, "num_features", 16, 1 << 26)
    check_float(self, "char_weight", 0.0)
    check_float(self, "lexical_weight", 0.0)

  def to_json(self) -> dict:
    return run_config.to_json(self)


@dataclasses.dataclass(frozen=True)
class RunConfig(run_config.RunConfig):
  """How the index trains (:class:`jslide.train.RunConfig`, other defaults)."""

  epochs: int = option(4, "passes over the training queries", resumable=True)
  batch_size: int = option(256, "training queries per step")
  learning_rate: float = option(5e-3, "Adam's learning rate", flag="--lr", resumable=True)
  rebuild_initial: int = option(100, "steps before the first index rebuild")
  add_replay: float = option(1.0, "add: training queries of the old passages replayed, per "
                             "new one (so the new rows stay off the old queries)")
  add_epochs: int = option(2, "add: passes over the new (and replayed) training queries; "
                           "more lets the new rows crowd out the old ones", resumable=True)

  def __post_init__(self):
    super().__post_init__()
    check_float(self, "add_replay", 0.0)
    check_int(self, "add_epochs", 0)
