"""Training and evaluation of a word-level transformer language model."""

from __future__ import annotations

import functools
import hashlib
import math
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import jslide
from jslide import train as T
from jslide.lm.config import ModelConfig, RunConfig
from jslide.lm import corpus
from jslide.lm.vocab import Vocabulary
from jslide.train import checkpoint, distributed
from jslide.train import config as run_config


def windows(ids: np.ndarray, context: int) -> np.ndarray:
  """int32[W, context + 1]: every window of the token stream (stride ``context``), read
  into memory (:func:`jslide.lm.corpus.window_rows` reads some)."""
  return corpus.window_rows(ids, np.arange(corpus.num_windows(ids, context)), context)


def make_step(model, cfg: ModelConfig, run: RunConfig, mesh=None):
  """(graphdef, state, step) of the configured head (one jit, state donated). The indices
  the step reads (the lsh head's, the sparse FFNs') are rebuilt on the run's schedule. With a
  ``mesh``, the step is data-parallel over its axis ``data``; with ``run.row_shards > 1``,
  ``model`` is split by rows (:func:`jslide.row_sharded.split_rows`) over its axis
  ``rows``."""
  head = cfg.head_objective()
  reads_index = head.uses_head_index or cfg.ffn == "sparse"
  rows = {"row_axis": "rows"} if run.row_shards > 1 else {}
  return head.train_step(model, run.learning_rate,
                         run.rebuild_schedule() if reads_index else None, mesh=mesh, **rows)


def abstract_state(cfg: ModelConfig, run: RunConfig, vocab_size: int):
  """(graphdef, the training state's shapes and dtypes, the jitted step) of
  :func:`make_step`, nothing of the model allocated (``jax.eval_shape``): what the step is
  compiled for and a checkpoint restores into, without a materialized state that the
  restored one would double (14 GB instead of 7 for the 1b preset)."""
  built = {}

  def build():
    graphdef, state, step = make_step(cfg.build(vocab_size, run.seed), cfg, run)
    built.update(graphdef=graphdef, step=step)
    return state

  state = jax.eval_shape(build)
  return built["graphdef"], state, built["step"]


def compile_step(step, state, cfg: ModelConfig, run: RunConfig, mesh=None):
  """(``step`` compiled for the state (or its shapes) ``state`` and a batch of ``cfg``/``run``,
  its peak bytes). With a ``mesh``, the data-parallel step taking the whole batch
  (:func:`jslide.train.distributed.compiled_step`)."""
  tokens = jax.ShapeDtypeStruct((run.batch_size, cfg.context), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  compiled = distributed.compiled_step(step, state, {"tokens": tokens, "targets": tokens}, key,
                                       mesh)
  return compiled, T.step_peak_bytes(getattr(compiled, "compiled", compiled))


def batch_of(win: np.ndarray) -> dict:
  return {"tokens": jnp.asarray(win[:, :-1]), "targets": jnp.asarray(win[:, 1:])}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _nll_sum(graphdef, state, tokens, targets, exact_ffn):
  model = state.model(graphdef)
  nll = model.token_nll(tokens, targets, key=jax.random.key(0), exact_ffn=exact_ffn)
  return jnp.sum(nll)


@functools.partial(jax.jit, static_argnums=(0,))
def _ffn_dropped(graphdef, state, tokens):
  return state.model(graphdef).ffn_dropped_fractions(tokens)


def validation_windows(ids, cfg: ModelConfig, run: RunConfig, path: str,
                       max_tokens: int | None = None) -> np.ndarray:
  """int32[W, context + 1]: the first windows of the token ids ``ids`` (of the file
  ``path``) that an evaluation reads, ``max_tokens`` (default ``run.max_eval_tokens``) worth
  but at least a batch, and only those read from the memory map."""
  tokens = run.max_eval_tokens if max_tokens is None else max_tokens
  wanted = max(run.batch_size, tokens // cfg.context)
  count = min(corpus.num_windows(ids, cfg.context, path), wanted)
  return corpus.window_rows(ids, np.arange(count), cfg.context)


@functools.lru_cache(maxsize=4)
def _split_nll_sum(graphdef, mesh, exact_ffn: bool):
  """:func:`_nll_sum` of a state split by rows over ``mesh``'s axis ``rows`` (each device's
  entry; the softmax over every device's words), taking host arrays."""
  def local(state, tokens, targets):
    model = state.model(graphdef)
    return jnp.sum(model.token_nll(tokens, targets, key=jax.random.key(0), exact_ffn=exact_ffn))

  run = jslide.row_sharded.each_shard(local, mesh, "rows")
  return lambda state, tokens, targets: run(
      state, *jslide.parallel.replicated((tokens, targets), mesh))


def perplexity(graphdef, state, wins: np.ndarray, batch_size: int, *,
               exact_ffn: bool = False, mesh=None) -> float:
  """exp(mean exact full-softmax loss) over every window (batches of ``batch_size``; a
  shorter last batch compiles once more). ``mesh``: of a state split by rows over its axis
  ``rows``."""
  total, count = 0.0, 0
  for i in range(0, len(wins), batch_size):
    w = wins[i:i + batch_size]
    if mesh is not None:
      total += float(_split_nll_sum(graphdef, mesh, exact_ffn)(state, w[:, :-1], w[:, 1:]))
    else:
      total += float(_nll_sum(graphdef, state, jnp.asarray(w[:, :-1]), jnp.asarray(w[:, 1:]),
                              exact_ffn))
    count += w[:, 1:].size
  return math.exp(total / max(count, 1))


def load_corpus(train_path: str, valid_path: str, vocab_size: int):
  """(vocabulary of the training text, its ids, the validation text's ids): the ids are
  memory-mapped files, written once per text and vocabulary (:mod:`jslide.lm.corpus`)."""
  vocab = corpus.vocabulary(train_path, vocab_size)
  return vocab, corpus.token_ids(train_path, vocab), corpus.token_ids(valid_path, vocab)


def vocabulary_digest(vocab: Vocabulary) -> str:
  """SHA-256 of the vocabulary's words in order: ids mean the same words iff equal."""
  return hashlib.sha256("\n".join(vocab.words).encode()).hexdigest()


def evaluate(graphdef, state, cfg: ModelConfig, run: RunConfig, valid_w: np.ndarray,
             train_sample: np.ndarray | None = None, mesh=None) -> dict:
  """Exact full-softmax perplexity of the validation windows (and of a training sample);
  with sparse FFNs also computed with every FFN neuron (unless ``run.eval_exact_ffn`` is
  off), and for block FFNs the share of
  block choices the blocks' capacity dropped (first validation batch). ``mesh``: of a state
  split by rows (:func:`perplexity`; the blocks' drops are then not measured)."""
  out = {"valid_ppl": perplexity(graphdef, state, valid_w, run.batch_size, mesh=mesh)}
  if train_sample is not None:
    out["train_ppl"] = perplexity(graphdef, state, train_sample, run.batch_size, mesh=mesh)
  if cfg.ffn != "dense" and run.eval_exact_ffn:
    out["valid_ppl_exact_ffn"] = perplexity(graphdef, state, valid_w, run.batch_size,
                                            exact_ffn=True, mesh=mesh)
  if cfg.ffn == "block" and mesh is None:
    out["ffn_dropped"] = [round(float(f), 4) for f in _ffn_dropped(
        graphdef, state, jnp.asarray(valid_w[:run.batch_size, :-1]))]
  return out


def train(train_path: str, valid_path: str, cfg: ModelConfig, run: RunConfig, *,
          json_path: str | None = None, progress: bool = True, ckpt: str | None = None,
          resume: bool = False, overwrite: bool = False) -> dict:
  """Trains per ``cfg``/``run`` (:func:`jslide.train.fit`); returns (and writes to
  ``json_path``) the run's record.

  With ``ckpt``, the state is saved (orbax) at every evaluation; ``resume`` continues the
  latest checkpoint exactly (same batches, keys and rebuilds as an uninterrupted run), and
  refuses one made on another training text (another vocabulary or number of windows).
  """
  # Several processes (jslide.train.distributed): a data-parallel step over all their
  # devices; process 0 alone prints and writes. Row shards: the embedding and the head split
  # by rows over a mesh axis (jslide.row_sharded), the batch over the rest.
  split = run.row_shards > 1
  if split:
    if cfg.head != "lsh":
      raise ValueError(f"train: row_shards > 1 trains the lsh head, not the {cfg.head} head")
    mesh = distributed.row_mesh(run.row_shards, batch_size=run.batch_size)
  else:
    mesh = distributed.data_mesh(batch_size=run.batch_size)
  if not distributed.is_primary():
    progress, json_path = False, None
  if json_path:
    T.check_writable(json_path)
  t0 = time.perf_counter()
  vocab, train_ids, valid_ids = load_corpus(train_path, valid_path, cfg.vocab_size)
  n_train = corpus.num_windows(train_ids, cfg.context, train_path)
  if n_train < run.batch_size:
    raise ValueError(f"{train_path}: {n_train} windows of {cfg.context + 1} tokens, fewer "
                     f"than one batch of {run.batch_size}")
  valid_w = validation_windows(valid_ids, cfg, run, valid_path)
  rng = np.random.default_rng(run.seed)
  train_sample = corpus.window_rows(train_ids, rng.permutation(n_train)[:len(valid_w)],
                                    cfg.context)
  meta = {"model": cfg.to_json(), "run": run.to_json(), "vocab": vocab.words,
          "data": {"windows": n_train, "vocabulary": vocabulary_digest(vocab)}}
  distributed.check_same("the run (model, run settings, data)",
                         lambda: {**meta, "vocab": None, "data": {
                             **meta["data"], "train": corpus.digest(train_ids),
                             "valid": corpus.digest(valid_ids)}})
  store = T.Checkpoints(ckpt, resume=resume, overwrite=overwrite, best=False) if ckpt else None
  fits = (f"this model's training step ({cfg.vocab_size:,} words, {cfg.layers} layers of "
          f"width {cfg.features}, FFN {cfg.hidden:,})")
  if split:
    model = cfg.build(len(vocab), run.seed, train_ids)
    if len(vocab) % run.row_shards:
      raise ValueError(f"train: row_shards={run.row_shards} must divide the vocabulary of "
                       f"{len(vocab):,} words (each device holds an equal block; set "
                       "--vocab-size)")
    params = int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    graphdef, state, step = make_step(jslide.row_sharded.split_rows(model, run.row_shards),
                                      cfg, run, mesh)
    step, peak = compile_step(step, state, cfg, run, mesh)
    T.check_fits(peak, fits)
  elif mesh is None:
    # The step compiled from the model's shapes alone, and its peak memory checked, before
    # any of the model is allocated.
    graphdef, shapes, step = abstract_state(cfg, run, len(vocab))
    step, peak = compile_step(step, shapes, cfg, run)
    T.check_fits(peak, fits)
    if resume:  # fit restores the state into its shapes
      state = shapes
    else:
      graphdef, state, _ = make_step(cfg.build(len(vocab), run.seed, train_ids), cfg, run)
  else:  # the replicated state is placed on the mesh as it is made: made first
    graphdef, state, step = make_step(cfg.build(len(vocab), run.seed, train_ids), cfg, run,
                                      mesh)
    step, peak = compile_step(step, state, cfg, run, mesh)
    T.check_fits(peak, fits)
  record = {"model": cfg.to_json(), "run": run.to_json(), "vocab_size": len(vocab),
            "train_tokens": int(len(train_ids)),
            "unknown_share": float(np.mean(train_ids == 0)),
            "params": (params if split else
                       int(sum(x.size for x in jax.tree.leaves((state.tables, state.params))))),
            "active_params_per_token": cfg.active_params_per_token(len(vocab)),
            "estimated_step_peak_mb": round(peak / 2**20, 1), "evals": [],
            "processes": jax.process_count()}
  if split:
    record["head_rows_held"] = distributed.rows_held(state.tables["head"]["kernel"].get_value())
  catch_up, rebuild = jslide.train.state_updates(graphdef, mesh if split else None)
  per_epoch = n_train // run.batch_size
  tokens_per_step = run.batch_size * cfg.context

  def prepare(state):
    state = catch_up(state)
    return rebuild(state) if run.rebuild_before_eval else state

  def evaluate_at(state, entry):
    tokens = entry["step"] * tokens_per_step
    out = {"tokens": tokens,
           "tokens_per_s": round(tokens / max(entry["train_s"], 1e-9), 1)}
    # every process evaluates its own replica (the same numbers); split by rows, together
    out.update(evaluate(graphdef, state, cfg, run, valid_w, train_sample, mesh)
               if split else
               evaluate(graphdef, distributed.local_replica(state), cfg, run, valid_w,
                        train_sample))
    return out

  def batches(epoch, start):
    order = np.random.default_rng(run.seed + 1 + epoch).permutation(n_train)
    for i in range(start, per_epoch):
      rows = order[i * run.batch_size:(i + 1) * run.batch_size]
      yield batch_of(corpus.window_rows(train_ids, rows, cfg.context)), run.batch_size

  def log(entry):
    if not distributed.is_primary():
      return
    tqdm.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in entry.items()))

  try:
    result = T.fit(state, step, run=run, key=jax.random.key(run.seed), num_batches=per_epoch,
                   batches=batches, evaluate=evaluate_at, prepare=prepare, meta=meta,
                   record=record, store=store, resume=resume, progress=progress, log=log)
  finally:
    if store is not None:
      store.close()
  record = result.record
  if result.interrupted and distributed.is_primary():
    tqdm.write(f"interrupted at step {record['interrupted']['step']}" +
               (f"; saved in {ckpt} (continue with --resume)" if ckpt else ""))
  record["wall_s"] = round(time.perf_counter() - t0, 1)
  record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  if json_path:
    T.write_json(json_path, record)
  return record


@functools.partial(jax.jit, static_argnums=(0, 3, 6))
def _next_word(graphdef, state, context, top_k: int, temperature, key, exact: bool = False):
  """One sampled next word after context int32[1, T] (jitted once per shape)."""
  retrieve_key, sample_key = jax.random.split(key)
  model = state.model(graphdef)
  if exact:  # every FFN neuron and every word: the same model computed densely
    h = model.hidden_states(context, exact_ffn=True)[:, -1]
    scores, cand = jax.lax.top_k(model.head.exact(h), top_k)
  else:
    scores, cand = model.next_word_candidates(context, top_k, key=retrieve_key)
  scores = jnp.where(cand >= 0, scores / temperature, -jnp.inf)
  return cand[0, jax.random.categorical(sample_key, scores[0])]


def generate(graphdef, state, cfg: ModelConfig, prompt_ids, count: int, *, pad_id: int,
             top_k: int = 10, temperature: float = 1.0, seed: int = 0, exact: bool = False):
  """Yields ``count`` word ids continuing ``prompt_ids``, each drawn from the ``top_k`` best
  of the words the head's index retrieves (rescored exactly, softened by ``temperature``),
  through the neurons the FFNs' indices retrieve; with ``exact``, from the ``top_k`` best of
  every word, through every FFN neuron (the model computed densely).

  The context is the last ``cfg.context`` words, left-padded with ``pad_id`` (``<eos>``'s: a
  paragraph boundary) while shorter, so one compiled step serves every word."""
  ids = [int(i) for i in prompt_ids]
  key = jax.random.key(seed)
  for i in range(count):
    window = ids[-cfg.context:]
    window = [pad_id] * (cfg.context - len(window)) + window
    word = int(_next_word(graphdef, state, jnp.asarray([window], jnp.int32), top_k,
                          jnp.float32(temperature), jax.random.fold_in(key, i), exact))
    ids.append(word)
    yield word


def load(ckpt: str):
  """(model config, run config, vocabulary, graphdef, state) of a checkpoint of this
  trainer (CheckpointError for another's)."""
  meta = checkpoint.read_meta(ckpt)
  if "vocab" not in meta or not isinstance(meta.get("model"), dict) \
      or "vocab_size" not in meta["model"]:
    raise checkpoint.CheckpointError(f"{ckpt}: not a checkpoint of the language-model trainer "
                                     "(python -m jslide.lm train)")
  cfg = run_config.from_json(ModelConfig, meta["model"])
  run = run_config.from_json(RunConfig, meta["run"])
  if run.row_shards > 1:
    raise checkpoint.CheckpointError(
        f"{ckpt}: a checkpoint of a run with --row-shards {run.row_shards} (its embedding and "
        "head split by rows); evaluating or generating from it is not built")
  vocab = Vocabulary(meta["vocab"])
  graphdef, state, _ = abstract_state(cfg, run, len(vocab))
  state, _ = checkpoint.restore_checked(
      ckpt, state, lambda m: checkpoint.check_same_run(ckpt, m, {"model": cfg.to_json()},
                                                       RunConfig))
  return cfg, run, vocab, graphdef, state
