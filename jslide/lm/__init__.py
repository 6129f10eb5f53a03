"""The word-level language-model trainer (``python -m jslide.lm``): tokenization and
vocabulary (:mod:`jslide.lm.vocab`), the softmax heads compared (:mod:`jslide.lm.heads`),
its settings (:mod:`jslide.lm.config`), training and exact evaluation
(:mod:`jslide.lm.trainer`)."""

from jslide.lm.config import ModelConfig, RunConfig
from jslide.lm.trainer import perplexity, train, windows
from jslide.lm.vocab import Vocabulary, read_text, tokenize, unigram_log_prior

__all__ = ["ModelConfig", "RunConfig", "Vocabulary", "perplexity", "read_text", "tokenize",
           "train", "unigram_log_prior", "windows"]
