"""A softmax over a large vocabulary trained on each position's target, the words an LSH index
retrieves for it, and a shared sample of the rest with the sampled-softmax correction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jslide import losses, lsh, row_sharded
from jslide._checks import int32_ids, positive_int
from jslide.initializers import check_param_dtype, init_table
from jslide.nn.variables import Index, Table
from jslide.ops import shared_linear, sparse_linear

PROPOSALS = ("log-uniform", "uniform")


def log_proposal(ids, num_words: int, proposal: str):
  """log q(id): ``uniform`` 1/V, or ``log-uniform`` (Zipf over the frequency rank, as
  TensorFlow's ``log_uniform_candidate_sampler``): log((id + 2) / (id + 1)) / log(V + 1)."""
  if proposal == "uniform":
    return jnp.full(ids.shape, -jnp.log(float(num_words)))
  ids = ids.astype(jnp.float32)
  return jnp.log(jnp.log((ids + 2.0) / (ids + 1.0)) / jnp.log(num_words + 1.0))


def log_expected_count(ids, count: int, num_words: int, proposal: str):
  """log(count * q(id)): the sampled-softmax correction of a word's logit when ``count``
  words are drawn from the proposal."""
  return jnp.log(float(count)) + log_proposal(ids, num_words, proposal)


def sample_words(key, count: int, num_words: int, proposal: str):
  """int32[count] words drawn with replacement from the proposal."""
  if proposal == "uniform":
    return jax.random.randint(key, (count,), 0, num_words, jnp.int32)
  # The log-uniform inverse CDF: floor(exp(u log(V + 1))) - 1.
  u = jax.random.uniform(key, (count,))
  return jnp.clip(jnp.floor(jnp.exp(u * jnp.log(num_words + 1.0))) - 1, 0,
                  num_words - 1).astype(jnp.int32)


def _is_in_rows(words, ids):
  """bool[T, S]: whether words[s] (int32[S], duplicates allowed) is among ids[t] (int32[T, A],
  -1 padding). The S words are sorted once and every id is looked up among them (T * A binary
  searches), then each word reads its sorted slot: no per-row sort and no [T, A, S] array."""
  s = words.shape[0]
  ordered = jnp.sort(words)
  pos = jnp.minimum(jnp.searchsorted(ordered, ids, side="left"), s - 1)
  found = jnp.take(ordered, pos) == ids
  rows = jnp.arange(ids.shape[0])[:, None]
  hit_slot = jnp.zeros((ids.shape[0], s), bool).at[rows, jnp.where(found, pos, s)].set(
      True, mode="drop")
  # Equal words share their first sorted slot, so every copy of a hit is marked.
  return jnp.take(hit_slot, jnp.searchsorted(ordered, words, side="left"), axis=1)


class SparseSoftmaxHead(nnx.Module):
  """The output softmax of a language model over ``num_words`` words, trained sparsely.

  For each position the training loss is a softmax over: its target; up to ``retrieved``
  words the LSH index returns for its hidden state (the words likely to score highest, whose
  terms dominate the partition function); and ``sampled`` words drawn from ``proposal`` and
  shared by the batch, each logit corrected by ``- log(sampled * q(word))``, those equal to
  the target or to a retrieved word removed. The target and the retrieved words enter the
  partition function exactly and the sample estimates the rest of it (the sampled-softmax
  estimator of Jean et al. 2015 over the words the index did not find), so the loss tracks
  the full softmax more closely than sampling alone. The retrieved part costs
  O(T * retrieved * d) gathered rows, the shared part one [T, sampled] matmul; gradients of
  ``kernel`` and ``bias`` are row-sparse.

  ``log-uniform`` assumes word ids ranked by frequency (id 0 the most frequent), as
  :class:`jslide.lm.Vocabulary` numbers them. Parameters follow ``nnx.Linear``, with the
  kernel one row per word, ``Table[num_words, features]``: ``kernel_init`` (default normal
  with standard deviation ``features ** -0.5``), ``bias_init`` (default zeros;
  :func:`jslide.lm.unigram_log_prior` starts the biases at the words' log frequencies),
  ``param_dtype`` (the kernel's: float32 or bfloat16; the biases stay float32, as in
  :class:`SparseDense`). ``hash_family``, ``num_hashes``, ``num_hash_tables``: the index's
  (:class:`jslide.lsh.HashFamily` defaults).
  """

  def __init__(self, features: int, num_words: int, *, retrieved: int = 256,
               sampled: int = 1024, proposal: str = "log-uniform",
               hash_family: str | lsh.HashFamily = "cluster", num_hashes: int | None = None,
               num_hash_tables: int | None = None, kernel_init=None,
               bias_init=nnx.initializers.zeros_init(), param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    fn = "SparseSoftmaxHead"
    positive_int(fn, "features", features)
    positive_int(fn, "num_words", num_words)
    if isinstance(retrieved, bool) or not isinstance(retrieved, int) or retrieved < 0:
      raise ValueError(f"{fn}: retrieved must be an int >= 0, got {retrieved!r}")
    positive_int(fn, "sampled", sampled)
    if proposal not in PROPOSALS:
      raise ValueError(f"{fn}: proposal must be one of {PROPOSALS}, got {proposal!r}")
    self.features, self.num_words = features, num_words
    self.retrieved = min(retrieved, num_words - 1)
    self.sampled, self.proposal = sampled, proposal
    family = lsh.hash_family(hash_family)
    self.strategy = family.strategy
    check_param_dtype(fn, param_dtype)
    kernel_init = kernel_init or nnx.initializers.normal(features ** -0.5)
    self.kernel = Table(init_table(kernel_init, rngs.params(), (num_words, features),
                                   param_dtype))
    bias = jnp.asarray(bias_init(rngs.params(), (num_words,), jnp.float32))
    if bias.shape != (num_words,) or not jnp.issubdtype(bias.dtype, jnp.floating):
      raise ValueError(f"{fn}: bias_init must return floats of shape ({num_words},), got "
                       f"{bias.dtype}{list(bias.shape)}")
    self.bias = Table(bias.astype(jnp.float32))
    hasher = family.hasher(rngs.params(), features, num_rows=num_words,
                           active=max(self.retrieved, 1), num_hashes=num_hashes,
                           num_hash_tables=num_hash_tables)
    self.index = Index(jax.jit(lsh.build)(hasher, self.kernel.get_value(),
                                          self.bias.get_value()))
    self.row_axis: str | None = None
    self.vocab_words = num_words  # the whole vocabulary, split or not

  def keep_rows(self, shard: int, shards: int, axis: str) -> None:
    """Keeps words ``[shard * rows, (shard + 1) * rows)`` (``rows = num_words / shards``),
    an index over them with the same hash functions and ``1 / shards`` of the retrieved
    words: the head of device ``shard`` of mesh axis ``axis``
    (:func:`jslide.row_sharded.split_rows`). Every device draws the whole head's shared
    sample (the same key) and scores the words of it that it holds, so the split head's
    sample and corrections are the whole head's."""
    rows = row_sharded.keep_layer_rows(self, "SparseSoftmaxHead.keep_rows", "num_words", shard,
                                       shards, axis)
    self.num_words = rows
    self.retrieved = min(-(-self.retrieved // shards), rows)  # the target may be elsewhere

  def __call__(self, h, targets, *, key):
    """(logits f32[T, 1 + retrieved + sampled], word ids int32[T, 1 + retrieved + sampled])
    for hidden states h f32[T, features] and targets int[T]: column 0 is the target, -1 marks
    what is not scored. Feed them to :func:`jslide.losses.active_softmax_cross_entropy` with
    ``targets[:, None]``. Split by rows: the ids are global, this device's words (the target
    where it holds it), for :func:`jslide.row_sharded.active_softmax_cross_entropy`."""
    if self.row_axis is not None:
      return self._split_call(h, targets, key)
    targets = int32_ids("SparseSoftmaxHead", "targets", targets, num_rows=self.num_words, ndim=1)
    query_key, sample_key = jax.random.split(key)
    ids = lsh.query(self.index.get_value(), jax.lax.stop_gradient(h),
                    active=1 + self.retrieved, key=query_key, strategy=self.strategy,
                    force_ids=targets[:, None], fill=False)
    near = sparse_linear(h, self.kernel.get_value(), self.bias.get_value(), ids)
    words = sample_words(sample_key, self.sampled, self.num_words, self.proposal)
    far = shared_linear(h, self.kernel.get_value(), self.bias.get_value(), words)
    far = far - log_expected_count(words, self.sampled, self.num_words, self.proposal)
    far_ids = jnp.where(_is_in_rows(words, ids), -1, words[None, :])
    return jnp.concatenate([near, far], axis=-1), jnp.concatenate([ids, far_ids], axis=-1)

  def _split_call(self, h, targets, key):
    axis, rows = self.row_axis, self.num_words
    row_sharded.check_local("SparseSoftmaxHead.__call__", axis, self.kernel.get_value())
    targets = int32_ids("SparseSoftmaxHead", "targets", targets, num_rows=self.vocab_words,
                        ndim=1)
    h = row_sharded.shared_input(h, axis)
    query_key, sample_key = jax.random.split(key)
    local_targets = row_sharded.local_ids(targets, rows, axis)
    ids = lsh.query(self.index.get_value(), jax.lax.stop_gradient(h),
                    active=1 + self.retrieved, key=query_key, strategy=self.strategy,
                    force_ids=local_targets[:, None], fill=False)
    w, b = self.kernel.get_value(), self.bias.get_value()
    near = sparse_linear(h, w, b, ids)
    # the whole head's sample on every device (one key), each scoring the words it holds
    words = sample_words(sample_key, self.sampled, self.vocab_words, self.proposal)
    local = row_sharded.local_ids(words, rows, axis)
    far = (shared_linear(h, w, b, jnp.maximum(local, 0))
           - log_expected_count(words, self.sampled, self.vocab_words, self.proposal))
    hit = _is_in_rows(jnp.where(local >= 0, local, -2), ids)  # -2: never an id
    far_ids = jnp.where((local >= 0)[None, :] & ~hit, words[None, :], -1)
    return (jnp.concatenate([near, far], axis=-1),
            jnp.concatenate([row_sharded.global_ids(ids, rows, axis), far_ids], axis=-1))

  def exact(self, h):
    """Scores of every word, f32[T, num_words] (small vocabularies and tests; split by rows,
    this device's words)."""
    return h @ self.kernel.get_value().T.astype(h.dtype) + self.bias.get_value()

  def nll(self, h, targets, *, chunk_size: int = 8192):
    """f32[T]: the exact full-softmax loss, chunked over the vocabulary (split by rows, over
    every device's words: :func:`jslide.row_sharded.chunked_softmax_cross_entropy`)."""
    if self.row_axis is not None:
      row_sharded.check_local("SparseSoftmaxHead.nll", self.row_axis, self.kernel.get_value())
      return row_sharded.chunked_softmax_cross_entropy(
          h, self.kernel.get_value(), self.bias.get_value(), targets, self.row_axis,
          chunk_size=chunk_size)
    return losses.chunked_softmax_cross_entropy(h, self.kernel.get_value(),
                                                self.bias.get_value(), targets,
                                                chunk_size=chunk_size)

  def topk(self, h, k: int, *, key, candidates: int | None = None):
    """(scores, ids) f32/int32[T, k]: the k best of ``candidates`` (default ``retrieved``)
    retrieved words, rescored exactly (-inf / -1 where fewer were found)."""
    if self.row_axis is not None:  # decoding a split head: not built
      raise NotImplementedError("SparseSoftmaxHead.topk: the head is split by rows; "
                                "ranking over its shards is not built")
    ids = lsh.query(self.index.get_value(), h, active=candidates or max(self.retrieved, k),
                    key=key, strategy=self.strategy, fill=False)
    y = jnp.where(ids >= 0, sparse_linear(h, self.kernel.get_value(), self.bias.get_value(),
                                          ids), -jnp.inf)
    top, pos = jax.lax.top_k(y, k)
    return top, jnp.take_along_axis(ids, pos, axis=-1)

  def rebuild_index(self):
    self.index.set_value(lsh.rebuild(self.index.get_value(), self.kernel.get_value(),
                                     self.bias.get_value()))
