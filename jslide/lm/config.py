"""The settings of a language-model run: the model, and how it trains (each field also an
option of ``python -m jslide.lm train``)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

import jslide
from jslide.lm import heads
from jslide.lm.heads import HEADS, PROPOSALS
from jslide.lm.vocab import unigram_log_prior
from jslide.nn.transformer import FFN_KINDS
from jslide.train import config as run_config
from jslide.train.config import option

HEAD_BIASES = ("unigram", "zeros")
TABLE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The model and how its softmax head and FFNs train."""

  vocab_size: int = option(50_000, "words in the vocabulary (the most frequent of the "
                           "training text, <unk> for the rest)")
  context: int = option(64, "tokens a position sees")
  features: int = option(256, "model width")
  heads: int = option(4, "attention heads")
  layers: int = option(2, "transformer blocks")
  hidden: int = option(1024, "FFN width")
  ffn: str = option("dense", "FFN kind", choices=FFN_KINDS)
  ffn_active: int | None = option(None, "hidden neurons per token, --ffn sparse or block "
                                  "(default hidden // 20)")
  ffn_capacity: float = option(1.5, "--ffn block: tokens a block takes, in multiples of a "
                               "fair share")
  head: str = option("lsh", "softmax head", choices=HEADS)
  retrieved: int = option(256, "words the lsh head's index retrieves per position")
  sampled: int = option(1024, "shared sampled words per step (lsh and sampled heads)")
  proposal: str = option("log-uniform", "distribution of the sampled words", choices=PROPOSALS)
  head_bias: str = option("unigram", "the word biases start at the training text's log word "
                          "frequencies (unigram) or at zero", choices=HEAD_BIASES)
  table_dtype: str = option("float32", "dtype of the row-sparse tables (token embedding, lsh "
                            "head, sparse FFN kernels); bfloat16 halves their memory, its "
                            "updates rounded stochastically (--head lsh)",
                            choices=TABLE_DTYPES)
  moment_dtype: str = option("float32", "dtype of sparse Adam's moments of those tables "
                             "(--head lsh); bfloat16 halves the optimizer's memory",
                             choices=TABLE_DTYPES)

  def __post_init__(self):
    for name, choices in (("head", HEADS), ("proposal", PROPOSALS), ("ffn", FFN_KINDS),
                          ("head_bias", HEAD_BIASES), ("table_dtype", TABLE_DTYPES),
                          ("moment_dtype", TABLE_DTYPES)):
      run_config.check_choice(self, name, choices)
    for name in ("table_dtype", "moment_dtype"):
      # The other heads train every parameter with optax.adam, whose bfloat16 updates round
      # to nearest: a step smaller than half a bfloat16 ulp (most of them) would be lost.
      if getattr(self, name) != "float32" and self.head != "lsh":
        raise ValueError(f"ModelConfig: {name}={getattr(self, name)} needs head='lsh' (jslide's "
                         f"sparse Adam rounds bfloat16 stochastically; the {self.head} head "
                         f"trains with optax.adam, which would round small updates away)")
    for name in ("vocab_size", "context", "features", "heads", "layers", "hidden", "sampled"):
      run_config.check_int(self, name, 1)
    run_config.check_int(self, "retrieved", 0)
    if self.ffn_active is not None:
      run_config.check_int(self, "ffn_active", 1, self.hidden)
    run_config.check_float(self, "ffn_capacity", 0.0, strict=True)

  def build(self, vocab_size: int, seed: int,
            train_ids: np.ndarray | None = None) -> jslide.nn.SparseTransformerLM:
    """The model; ``train_ids`` (the encoded training text) sets the ``unigram`` biases
    (without it they start at zero: for a model whose state a checkpoint replaces)."""
    bias_init = (unigram_log_prior(train_ids, vocab_size)
                 if self.head_bias == "unigram" and train_ids is not None
                 else nnx.initializers.zeros_init())
    return jslide.nn.SparseTransformerLM(
        vocab_size, context=self.context, features=self.features, heads=self.heads,
        layers=self.layers, hidden=self.hidden, ffn=self.ffn, ffn_active=self.ffn_active,
        ffn_capacity=self.ffn_capacity,
        head_retrieved=self.retrieved, head_sampled=self.sampled, proposal=self.proposal,
        head_bias_init=bias_init, table_dtype=jnp.dtype(self.table_dtype),
        rngs=nnx.Rngs(seed))

  def active_params_per_token(self, vocab_size: int) -> int:
    """The parameters one token's forward pass reads: its embedding row and position, every
    layer's attention and norms, the FFN neurons it computes (all of them for ``dense``;
    ``ffn_active`` or a twentieth for ``sparse`` and ``block``), and the words its head
    scores (every word for ``full``; the target, the retrieved and the sampled words for
    ``lsh``; the target and the sampled for ``sampled``)."""
    d = self.features
    active = self.hidden if self.ffn == "dense" else (self.ffn_active or max(1, self.hidden // 20))
    attention = 4 * d * d + 4 * d + 4 * d  # qkv and out projections with biases; 2 norms
    ffn = 2 * active * d + active + d
    words = {"full": vocab_size, "lsh": 1 + self.retrieved + self.sampled,
             "sampled": 1 + self.sampled}[self.head]
    return 2 * d + self.layers * (attention + ffn) + 2 * d + words * (d + 1)

  def head_objective(self):
    """The head's training objective (:mod:`jslide.lm.heads`), with this config's settings."""
    if self.head == "lsh":
      return heads.LSHHead(moment_dtype=self.moment_dtype)
    if self.head == "sampled":
      return heads.SampledHead(self.sampled, self.proposal)
    return heads.FullHead()

  def to_json(self) -> dict:
    return run_config.to_json(self)


@dataclasses.dataclass(frozen=True)
class RunConfig(run_config.RunConfig):
  """How a language model trains (:class:`jslide.train.RunConfig` and the field below): by
  default one epoch of windows of ``context + 1`` tokens, evaluated every 500 steps."""

  eval_every: int = option(500, "also evaluate every this many steps (0: at the end of each "
                           "epoch only)")
  max_eval_tokens: int = option(32_768, "validation (and training-sample) tokens per "
                                "evaluation", resumable=True)
  eval_exact_ffn: bool = option(True, "no second validation perplexity with every neuron of "
                                "the sparse FFNs computed (it costs the dense FFN's forward "
                                "pass, hours for a billion-parameter FFN)",
                                flag="--no-eval-exact-ffn", resumable=True)
  rebuild_before_eval: bool = option(True, "no index rebuild before each evaluation: the "
                                     "indices follow the rebuild schedule alone, and the "
                                     "model is evaluated with the indices it trains with "
                                     "(a rebuild of the 1b preset's four FFN indices takes "
                                     "about 48 s)", flag="--no-rebuild-before-eval")
  row_shards: int = option(1, "split the token embedding and the lsh head by rows over R "
                           "devices, each with its own words, index and optimizer state "
                           "(jslide.row_sharded; the devices of every process, R dividing "
                           "their number and the vocabulary; the batch is split over the "
                           "rest); 1: whole", metavar="R")

  def __post_init__(self):
    super().__post_init__()
    run_config.check_int(self, "max_eval_tokens", 1)
    run_config.check_int(self, "row_shards", 1)
