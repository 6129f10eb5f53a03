"""The settings of an extreme-classification run."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from flax import nnx

import jslide
from jslide.nn.sparse_dense import default_num_hashes


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the model's architecture (checked when resuming or evaluating)."""

  num_features: int
  num_labels: int
  hidden: tuple[int, ...] = (128,)
  budget: int = 1024
  hash_family: str = "cluster"
  num_hashes: int | None = None  # None: per family (cluster: about 20 rows a bucket; else 5)
  num_tables: int | None = None  # None: per family (cluster: 1; else 16)
  bin_size: int = 8
  strategy: str | None = None  # None: the hash family's default
  fill_group: int | None = 1
  batch_negatives: int | None = None  # None: budget // 4
  max_retrieved: int | None = None  # ids from the index at most; None: budget // 4
  param_dtype: str = "float32"  # the tables (input and output kernels): or "bfloat16"
  moment_dtype: str | None = None  # the tables' Adam moments; None: float32
  # Labels retrieved and rescored per example at inference (eval and predict through the
  # index); None: the budget, capped at 5% of the labels.
  candidates: int | None = None
  # Inference (eval and predict through the index) uses an index of its own, k-means with
  # this many tables (0: the training index), 2^inference_hashes buckets each (None: as many
  # as the training index, or about 20 rows a bucket).
  inference_tables: int = 6
  inference_hashes: int | None = None
  # The trainer's sparse inference: neuron lists (jslide.lsh.NeuronLists) over this many
  # regions of the hidden space, fitted to the training set after every epoch, each query
  # reading its inference_probes nearest (0, the default: the k-means index above; 1,024 with 4
  # probes is 7-9x faster and a little less exact, docs/lsh.md). Eval and predict from a
  # checkpoint build them from the training file they are given (--train).
  inference_lists: int = 0
  inference_probes: int = 2

  def __post_init__(self):
    for name in ("param_dtype", "moment_dtype"):
      value = getattr(self, name)
      if value not in ("float32", "bfloat16") and not (name == "moment_dtype" and value is None):
        raise ValueError(f"ModelConfig: {name} must be 'float32' or 'bfloat16', got {value!r}")
    for name, lo, hi in (("inference_tables", 0, 64), ("inference_hashes", 1, 24),
                         ("inference_lists", 0, 1 << 20), ("inference_probes", 1, 64)):
      value = getattr(self, name)
      if value is None and name == "inference_hashes":
        continue
      if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"ModelConfig: {name} must be an int in [{lo}, {hi}], got {value!r}")
    c = self.candidates
    if c is not None and (isinstance(c, bool) or not isinstance(c, int)
                          or not 1 <= c <= self.num_labels):
      raise ValueError(f"ModelConfig: candidates must be an int in [1, num_labels="
                       f"{self.num_labels}] or None, got {c!r}")

  def inference_candidates(self) -> int:
    """Labels the index retrieves per example at inference: ``candidates``, or the budget
    capped at 5% of the labels (so sparse inference scores at most a twentieth of them)."""
    if self.candidates is not None:
      return self.candidates
    return max(1, min(self.budget, self.num_labels // 20))

  def index_shape(self) -> tuple[int, int]:
    """(K, L) with the per-family defaults filled in. k-means buckets work best small (about
    20 rows each, docs/lsh.md) and need one table; hashing families take K=5, L=16."""
    cluster = self.hash_family == "cluster"
    k = self.num_hashes or (default_num_hashes(self.num_labels) if cluster else 5)
    return k, self.num_tables or (1 if cluster else 16)

  def build(self, seed: int) -> jslide.nn.SparseMLP:
    k, l = self.index_shape()
    quarter = self.budget // 4
    return jslide.nn.SparseMLP(
        self.num_features, self.num_labels, hidden=self.hidden, budget=self.budget,
        hash_family=self.hash_family, num_hashes=k, num_tables=l,
        bin_size=self.bin_size, strategy=self.strategy, fill_group=self.fill_group,
        batch_negatives=quarter if self.batch_negatives is None else self.batch_negatives,
        max_retrieved=quarter if self.max_retrieved is None else self.max_retrieved,
        param_dtype=jnp.dtype(self.param_dtype), rngs=nnx.Rngs(seed))

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "ModelConfig":
    # Checkpoints from before a field existed get the value that build used then.
    old = {"fill_group": 1, "batch_negatives": 0, "max_retrieved": d.get("budget", 0),
           "param_dtype": "float32", "moment_dtype": None}
    return cls(**{**old, **d, "hidden": tuple(d["hidden"])})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int = 5
  batch_size: int = 256
  learning_rate: float = 5e-3
  loss: str = "softmax"
  dense: bool = False
  sampled: int = 0  # > 0: the sampled-softmax baseline with that many shared uniform labels
  catch_up: bool = True  # sparse_adam(catch_up=...): rows keep pace with dense Adam
  rebuild_initial: int = 50
  rebuild_growth: float = 1.3
  rebuild_max: int = 2000
  max_features: int = 64
  max_labels: int = 8
  seed: int = 0
  checkpoint_every: int = 0  # steps; 0: at the end of each epoch only

  def __post_init__(self):
    for name in ("batch_size", "max_features", "max_labels"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TrainConfig: {name} must be a positive int, got {value!r}")
    for name in ("epochs", "sampled", "checkpoint_every"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"TrainConfig: {name} must be an int >= 0, got {value!r}")
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"TrainConfig: learning_rate must be finite and > 0, got "
                       f"{self.learning_rate!r}")
    if self.dense and self.sampled:
      raise ValueError("TrainConfig: dense and sampled are two different baselines; pick one")
