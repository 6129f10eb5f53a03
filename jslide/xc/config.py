"""The settings of an extreme-classification run."""

from __future__ import annotations

import dataclasses

from flax import nnx

import jslide


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the model's architecture (checked when resuming or evaluating)."""

  num_features: int
  num_labels: int
  hidden: tuple[int, ...] = (128,)
  budget: int = 1024
  hash_family: str = "dwta"
  num_hashes: int = 5
  num_tables: int = 16
  bin_size: int = 8
  strategy: str = "vanilla"
  fill_group: int | None = 1
  batch_negatives: int | None = None  # None: budget // 4

  def build(self, seed: int) -> jslide.nn.SparseMLP:
    return jslide.nn.SparseMLP(
        self.num_features, self.num_labels, hidden=self.hidden, budget=self.budget,
        hash_family=self.hash_family, num_hashes=self.num_hashes, num_tables=self.num_tables,
        bin_size=self.bin_size, strategy=self.strategy, fill_group=self.fill_group,
        batch_negatives=(self.budget // 4 if self.batch_negatives is None
                         else self.batch_negatives), rngs=nnx.Rngs(seed))

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "ModelConfig":
    return cls(**{"fill_group": 1, "batch_negatives": 0, **d, "hidden": tuple(d["hidden"])})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int = 5
  batch_size: int = 256
  learning_rate: float = 5e-3
  loss: str = "softmax"
  dense: bool = False
  catch_up: bool = True  # sparse_adam(catch_up=...): rows keep pace with dense Adam
  rebuild_initial: int = 50
  rebuild_growth: float = 1.3
  rebuild_max: int = 2000
  max_features: int = 64
  max_labels: int = 8
  seed: int = 0
  checkpoint_every: int = 0  # steps; 0: at the end of each epoch only
