"""The word-level language-model trainer (``python -m jslide.lm``): tokenization and
vocabulary (:mod:`jslide.lm.vocab`), the softmax heads compared (:mod:`jslide.lm.heads`),
training and exact evaluation (:mod:`jslide.lm.trainer`)."""

from jslide.lm.trainer import LMConfig, RunConfig, perplexity, train, windows
from jslide.lm.vocab import Vocabulary, read_text, tokenize, unigram_log_prior

__all__ = ["LMConfig", "RunConfig", "Vocabulary", "perplexity", "read_text", "tokenize", "train",
           "unigram_log_prior", "windows"]
