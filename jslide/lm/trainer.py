"""Training and evaluation of a word-level transformer language model."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import jslide
from jslide._checks import positive_int
from jslide.lm.heads import HEADS, PROPOSALS, full_softmax_loss, sampled_softmax_loss
from jslide.lm.vocab import Vocabulary, read_text, tokenize, unigram_log_prior
from jslide.nn.training import dense_gradient_step
from jslide.xc import checkpoint


HEAD_BIASES = ("unigram", "zeros")


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """The model and how its softmax head and FFNs train."""

  vocab_size: int = 50_000
  context: int = 64
  features: int = 256
  heads: int = 4
  layers: int = 2
  hidden: int = 1024
  ffn: str = "dense"            # "sparse" | "block" | "dense"
  ffn_active: int | None = None  # None: hidden // 20
  ffn_capacity: float = 1.5      # block: tokens per block, times a fair share
  head: str = "lsh"             # "lsh" | "sampled" | "full"
  retrieved: int = 256          # lsh: words the index retrieves per position
  sampled: int = 1024           # lsh and sampled: shared sampled words per step
  proposal: str = "log-uniform"
  head_bias: str = "unigram"    # word biases start at "unigram" log frequencies, or "zeros"

  def __post_init__(self):
    if self.head not in HEADS:
      raise ValueError(f"LMConfig: head must be one of {HEADS}, got {self.head!r}")
    if self.proposal not in PROPOSALS:
      raise ValueError(f"LMConfig: proposal must be one of {PROPOSALS}, got {self.proposal!r}")
    if isinstance(self.retrieved, bool) or not isinstance(self.retrieved, int) \
        or self.retrieved < 0:
      raise ValueError(f"LMConfig: retrieved must be an int >= 0, got {self.retrieved!r}")
    positive_int("LMConfig", "sampled", self.sampled)
    if self.head_bias not in HEAD_BIASES:
      raise ValueError(f"LMConfig: head_bias must be one of {HEAD_BIASES}, got "
                       f"{self.head_bias!r}")

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
        head_bias_init=bias_init, rngs=nnx.Rngs(seed))


@dataclasses.dataclass(frozen=True)
class RunConfig:
  epochs: int = 1
  batch_size: int = 16
  learning_rate: float = 1e-3
  seed: int = 0
  eval_every: int = 500          # steps; 0: by eval_seconds only
  eval_seconds: float = 0.0      # also evaluate after every this many seconds of training
  max_eval_tokens: int = 32_768  # validation (and training-sample) tokens per evaluation
  time_limit: float = 0.0        # seconds of training; 0: no limit
  max_steps: int = 0             # 0: no limit


def windows(ids: np.ndarray, context: int) -> np.ndarray:
  """int32[W, context + 1]: consecutive windows of the token stream (stride ``context``)."""
  count = (len(ids) - 1) // context
  if count < 1:
    raise ValueError(f"the text has {len(ids)} tokens, too few for one window of context "
                     f"{context} plus its next word")
  idx = np.arange(count)[:, None] * context + np.arange(context + 1)[None, :]
  return ids[idx]


def make_step(model, cfg: LMConfig, run: RunConfig):
  """(graphdef, state, step) for the configured head (one jit, state donated)."""
  lr = run.learning_rate
  if cfg.head == "lsh":
    def forward(m, batch, key):
      return m(batch["tokens"], batch["targets"], key=key)
    return jslide.nn.make_train_step(
        model, table_tx=jslide.optim.sparse_adam(lr, catch_up=True), dense_tx=optax.adam(lr),
        forward=forward, schedule=jslide.lsh.RebuildSchedule(50, 1.3, 2000))
  if cfg.head == "full":
    return dense_gradient_step(model, full_softmax_loss, optax.adam(lr))
  loss = functools.partial(sampled_softmax_loss, num_sampled=cfg.sampled, proposal=cfg.proposal)
  return dense_gradient_step(model, loss, optax.adam(lr))


def batch_of(win: np.ndarray) -> dict:
  tokens, targets = jnp.asarray(win[:, :-1]), jnp.asarray(win[:, 1:])
  return {"tokens": tokens, "targets": targets, "labels": targets.reshape(-1, 1),
          "mask": jnp.ones(targets.size, bool)}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _nll_sum(graphdef, state, tokens, targets, exact_ffn):
  model = jslide.nn.merge(graphdef, state)
  nll = model.token_nll(tokens, targets, key=jax.random.key(0), exact_ffn=exact_ffn)
  return jnp.sum(nll)


@functools.partial(jax.jit, static_argnums=(0,))
def _ffn_dropped(graphdef, state, tokens):
  return jslide.nn.merge(graphdef, state).ffn_dropped_fractions(tokens)


def perplexity(graphdef, state, wins: np.ndarray, batch_size: int, *,
               exact_ffn: bool = False) -> float:
  """exp(mean exact full-softmax loss) over every window (batches of ``batch_size``; a
  shorter last batch compiles once more)."""
  total, count = 0.0, 0
  for i in range(0, len(wins), batch_size):
    w = wins[i:i + batch_size]
    total += float(_nll_sum(graphdef, state, jnp.asarray(w[:, :-1]), jnp.asarray(w[:, 1:]),
                            exact_ffn))
    count += w[:, 1:].size
  return math.exp(total / max(count, 1))


def load_corpus(train_path: str, valid_path: str, vocab_size: int):
  train_tokens = tokenize(read_text(train_path))
  vocab = Vocabulary.from_tokens(train_tokens, vocab_size)
  return vocab, vocab.encode(train_tokens), vocab.encode(tokenize(read_text(valid_path)))


def train(train_path: str, valid_path: str, cfg: LMConfig, run: RunConfig, *,
          json_path: str | None = None, progress: bool = True, ckpt: str | None = None,
          resume: bool = False, overwrite: bool = False) -> dict:
  """Trains per ``cfg``/``run``; returns (and writes to ``json_path``) the run's record.

  With ``ckpt``, the state is saved (orbax) at every evaluation; ``resume`` continues the
  latest checkpoint exactly (same batches, keys and rebuilds as an uninterrupted run).
  """
  mgr = None
  if ckpt:
    mgr = checkpoint.writable_manager(ckpt)
    if not resume:
      checkpoint.refuse_to_overwrite(mgr, ckpt, overwrite)
  t0 = time.perf_counter()
  vocab, train_ids, valid_ids = load_corpus(train_path, valid_path, cfg.vocab_size)
  train_w, valid_w = windows(train_ids, cfg.context), windows(valid_ids, cfg.context)
  if len(train_w) < run.batch_size:
    raise ValueError(f"{train_path}: {len(train_w)} windows of {cfg.context + 1} tokens, fewer "
                     f"than one batch of {run.batch_size}")
  eval_windows = max(run.batch_size, run.max_eval_tokens // cfg.context)
  valid_w = valid_w[:eval_windows]
  rng = np.random.default_rng(run.seed)
  train_sample = train_w[rng.permutation(len(train_w))[:len(valid_w)]]
  model = cfg.build(len(vocab), run.seed, train_ids)
  graphdef, state, step = make_step(model, cfg, run)
  sparse_ffn_without_schedule = cfg.ffn == "sparse" and cfg.head != "lsh"
  record = {"config": dataclasses.asdict(cfg), "run": dataclasses.asdict(run),
            "vocab_size": len(vocab), "train_tokens": int(len(train_ids)),
            "unknown_share": float(np.mean(train_ids == 0)), "evals": []}

  def evaluate(state, steps, train_s):
    state = jslide.nn.catch_up_train_state(state)
    state = jslide.nn.rebuild_train_state(graphdef, state)
    entry = {"step": steps, "tokens": steps * run.batch_size * cfg.context,
             "train_s": round(train_s, 2),
             "valid_ppl": perplexity(graphdef, state, valid_w, run.batch_size),
             "train_ppl": perplexity(graphdef, state, train_sample, run.batch_size)}
    if cfg.ffn != "dense":
      entry["valid_ppl_exact_ffn"] = perplexity(graphdef, state, valid_w, run.batch_size,
                                                exact_ffn=True)
    if cfg.ffn == "block":  # what the blocks' capacity cost, on the first validation batch
      entry["ffn_dropped"] = [round(float(f), 4) for f in _ffn_dropped(
          graphdef, state, jnp.asarray(valid_w[:run.batch_size, :-1]))]
    entry["tokens_per_s"] = round(entry["tokens"] / max(train_s, 1e-9), 1)
    record["evals"].append(entry)
    tqdm.write(json.dumps(entry))
    if mgr is not None:
      checkpoint.save(mgr, state, {"lm": dataclasses.asdict(cfg), "run": dataclasses.asdict(run),
                                   "train_s": train_s, "record": record, "vocab": vocab.words})
    return state

  key = jax.random.key(run.seed)
  steps, train_s, step_times = 0, 0.0, []
  if resume:
    state, meta = restore(ckpt, state, cfg, run)
    steps, train_s, record = int(state.step), meta["train_s"], meta["record"]
  per_epoch = len(train_w) // run.batch_size

  def next_eval_after(seconds):  # the next multiple of eval_seconds
    return (math.floor(seconds / run.eval_seconds) + 1) * run.eval_seconds

  def finished(steps, seconds):
    return bool((run.max_steps and steps >= run.max_steps) or
                (run.time_limit and seconds >= run.time_limit))

  next_eval_s = next_eval_after(train_s) if run.eval_seconds else 0.0
  total = per_epoch * run.epochs if not run.max_steps else min(run.max_steps,
                                                               per_epoch * run.epochs)
  bar = tqdm(total=total, initial=min(steps, total), unit="step", disable=not progress,
             dynamic_ncols=True)
  done = finished(steps, train_s)
  for epoch in range(steps // per_epoch, run.epochs if not done else 0):
    order = np.random.default_rng(run.seed + 1 + epoch).permutation(len(train_w))
    for i in range(steps - epoch * per_epoch, per_epoch):
      batch = batch_of(train_w[order[i * run.batch_size:(i + 1) * run.batch_size]])
      started = time.perf_counter()
      state, metrics = step(state, batch, jax.random.fold_in(key, steps))
      if sparse_ffn_without_schedule and steps % 200 == 199:
        state = jslide.nn.rebuild_train_state(graphdef, state)
      loss = float(metrics["loss"])  # waits for the step
      if not bool(metrics["finite"]):
        raise FloatingPointError(f"step {steps}: non-finite loss or gradient; the step was "
                                 "skipped and training stopped")
      elapsed = time.perf_counter() - started
      train_s += elapsed
      step_times.append(elapsed)
      steps += 1
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.3f}",
                      tok_s=f"{steps * run.batch_size * cfg.context / train_s:,.0f}")
      if ((run.eval_every and steps % run.eval_every == 0) or
          (run.eval_seconds and train_s >= next_eval_s)):
        state = evaluate(state, steps, train_s)
        if run.eval_seconds:
          next_eval_s = next_eval_after(train_s)
      if finished(steps, train_s):
        done = True
        break
    if done:
      break
  bar.close()
  if not record["evals"] or record["evals"][-1]["step"] != steps:
    state = evaluate(state, steps, train_s)
  # The first steps compile; the median is the steady state.
  if step_times:
    record["step_ms"] = round(1000 * float(np.median(step_times[min(5, len(step_times) - 1):])),
                              2)
  record["wall_s"] = round(time.perf_counter() - t0, 1)
  record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(record, f, indent=1)
  return record


def restore(ckpt: str, state_like, cfg: LMConfig, run: RunConfig):
  """(state, meta) of the newest intact checkpoint in ``ckpt``, refusing one made with other
  settings (its batches, keys or optimizer state would not continue this run)."""

  def check(meta):
    for name, saved, wanted in (("model", meta["lm"], dataclasses.asdict(cfg)),
                                ("run", meta["run"], dataclasses.asdict(run))):
      fixed = {k: v for k, v in wanted.items() if k not in ("epochs", "time_limit", "max_steps")}
      diff = {k: (saved.get(k), v) for k, v in fixed.items() if saved.get(k) != v}
      if diff:
        raise checkpoint.CheckpointError(
            f"{ckpt}: the checkpoint's {name} settings differ (saved, requested): {diff}")

  return checkpoint.restore_checked(ckpt, state_like, check)
