"""The settings of an extreme-classification run."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

import jslide
from jslide import lsh
from jslide.lsh import STRATEGIES
from jslide.train import config as run_config
from jslide.train.config import option


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the model's architecture (checked when resuming or evaluating).
  Each field is also an option of ``python -m jslide.xc train``."""

  num_features: int = option(0, "input features (from the data)", cli=False)
  num_labels: int = option(0, "labels (from the data)", cli=False)
  hidden: tuple[int, ...] = option((128,), "widths of the hidden ReLU layers")
  active: int = option(1024, "active output neurons per example in training")
  hash_family: str = option("cluster", "hash family of the output layer's index",
                            flag="--hash", choices=tuple(lsh.FAMILIES))
  num_hashes: int | None = option(None, "K: hashes per table (cluster: 2^K buckets); default "
                                  "the family's (jslide.lsh.FAMILIES; cluster: about 20 rows "
                                  "a bucket; else 5)")
  num_hash_tables: int | None = option(None, "L: hash tables; default the family's (cluster: "
                                       "1; else 16)")
  bin_size: int = option(8, "DWTA bin size")
  strategy: str | None = option(None, "retrieval strategy (default: ranked for --hash "
                                "cluster, else vanilla)", choices=sorted(STRATEGIES))
  fill_group: int | None = option(1, "consecutive examples sharing one random fill (shared "
                                  "negatives)")
  batch_negatives: int | None = option(None, "of the active, slots for other labels of the "
                                       "batch (default: active/4)")
  retrieved: int | None = option(None, "of the active, ids taken from the index at most, "
                                     "the rest random (default: active/4)")
  param_dtype: str = option("float32", "dtype of the input and output tables (bfloat16: half "
                            "the memory traffic; updates rounded stochastically)",
                            choices=("float32", "bfloat16"))
  moment_dtype: str | None = option(None, "dtype of the tables' Adam moments (default "
                                    "float32)", choices=("float32", "bfloat16"))
  candidates: int | None = option(None, "labels retrieved and rescored per example at "
                                  "inference through the index (default: the active, at "
                                  "most 5%% of the labels)")
  inference_hash_tables: int = option(6, "k-means tables of the index built for inference (0: "
                                 "use the training index)")
  inference_hashes: int | None = option(None, "K of the inference index, 2^K buckets a table "
                                        "(default: the training index's)")
  # Neuron lists (jslide.lsh.NeuronLists) over this many regions of the hidden space, fitted
  # to the training set, each query reading its inference_probes nearest (0, the default:
  # the k-means index above; 1,024 with 4 probes is 7-9x faster and a little less exact,
  # docs/lsh.md). Eval and predict from a checkpoint build them from the training file they
  # are given (--train).
  inference_lists: int = option(0, "regions of the hidden space whose neuron lists sparse "
                                "inference reads (0: the k-means index)")
  inference_probes: int = option(2, "neuron lists each example reads")

  def __post_init__(self):
    for name in ("param_dtype", "moment_dtype"):
      value = getattr(self, name)
      if value not in ("float32", "bfloat16") and not (name == "moment_dtype" and value is None):
        raise ValueError(f"ModelConfig: {name} must be 'float32' or 'bfloat16', got {value!r}")
    for name, lo, hi in (("inference_hash_tables", 0, 64), ("inference_hashes", 1, 24),
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
    """Labels the index retrieves per example at inference: ``candidates``, or the active
    set's size capped at 5% of the labels (sparse inference scores at most a twentieth of
    them)."""
    if self.candidates is not None:
      return self.candidates
    # At least 5 (the P@5 through the index needs them), or every label of a small set.
    return max(min(5, self.num_labels), min(self.active, self.num_labels // 20))

  def build(self, seed: int) -> jslide.nn.SparseMLP:
    quarter = self.active // 4
    return jslide.nn.SparseMLP(
        self.num_features, self.num_labels, hidden=self.hidden, active=self.active,
        hash_family=self.hash_family, num_hashes=self.num_hashes,
        num_hash_tables=self.num_hash_tables,
        bin_size=self.bin_size, strategy=self.strategy, fill_group=self.fill_group,
        batch_negatives=quarter if self.batch_negatives is None else self.batch_negatives,
        retrieved=quarter if self.retrieved is None else self.retrieved,
        param_dtype=jnp.dtype(self.param_dtype), rngs=nnx.Rngs(seed))

  def to_json(self) -> dict:
    return run_config.to_json(self)

  @classmethod
  def from_json(cls, d: dict) -> "ModelConfig":
    return run_config.from_json(cls, d)


@dataclasses.dataclass(frozen=True)
class RunConfig(run_config.RunConfig):
  """How an extreme-classification run trains and evaluates (:class:`jslide.train.RunConfig`
  and the fields below). Evaluation scores the validation split (exact P@k) at every
  evaluation and the test split, with the inference index's diagnostics, once at the end
  on the selected state (``test_each_eval``: at every evaluation too)."""

  epochs: int = option(5, "passes over the training data", resumable=True)
  batch_size: int = option(256, "examples per step")
  learning_rate: float = option(5e-3, "Adam's learning rate", flag="--lr", resumable=True)
  loss: str = option("softmax", "loss over the active set", choices=("softmax", "bce"))
  dense: bool = option(False, "the dense baseline: every label scored, optax.adam on every "
                       "parameter")
  sampled: int = option(0, "the sampled-softmax baseline: the batch's labels plus S uniform "
                        "labels shared by the batch, plain JAX gathers, optax.adam on "
                        "everything (0: off)", metavar="S")
  catch_up: bool = option(True, "lazy Adam for tables (default: catch-up Adam, equal to "
                          "dense Adam)", flag="--lazy-adam")
  max_features: int = option(64, "features kept per example")
  max_labels: int = option(8, "labels kept per example")
  valid_fraction: float = option(0.1, "training examples held out to select the best "
                                 "evaluation (command line; 0: none)")
  time_ranking: bool = option(False, "also time exact ranking and ranking through the "
                              "inference index on the test split (exact_ms, lsh_ms)",
                              resumable=True)
  test_each_eval: bool = option(False, "score the test split and the inference index at "
                                "every evaluation, not only at the end", resumable=True)
  row_shards: int = option(1, "split the output layer's rows over R devices, each with its "
                           "own rows, index and optimizer state (jslide.row_sharded; the "
                           "devices of every process, R dividing their number; the batch is "
                           "split over the rest); 1: whole", metavar="R")

  def __post_init__(self):
    super().__post_init__()
    for name in ("max_features", "max_labels"):
      run_config.check_int(self, name, 1)
    run_config.check_int(self, "sampled", 0)
    run_config.check_int(self, "row_shards", 1)
    if self.row_shards > 1 and (self.dense or self.sampled or self.loss != "softmax"):
      raise ValueError("RunConfig: row_shards > 1 trains jslide's softmax over the active set "
                       "(not the baselines, not loss 'bce')")
    run_config.check_choice(self, "loss", ("softmax", "bce"))
    if not 0 <= self.valid_fraction < 1:
      raise ValueError(f"RunConfig: valid_fraction must lie in [0, 1), got "
                       f"{self.valid_fraction!r}")
    if self.dense and self.sampled:
      raise ValueError("RunConfig: dense and sampled are two different baselines; pick one")

  def objective(self, moment_dtype: str | None = None):
    """What the run minimizes (:mod:`jslide.xc.objectives`): jslide's loss, or the baseline
    the flags name (``moment_dtype``: the model's, for jslide's sparse Adam)."""
    from jslide.xc import objectives
    if self.dense:
      return objectives.Dense()
    if self.sampled:
      return objectives.Sampled(self.sampled)
    return objectives.Sparse(self.loss, self.catch_up, moment_dtype)
