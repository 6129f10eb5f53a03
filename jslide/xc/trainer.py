"""Training, evaluation and prediction for extreme classification with jslide."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import jslide
from jslide import datasets as D
from jslide.xc import checkpoint
from jslide.xc.config import ModelConfig, TrainConfig


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss."""


def _batch_dict(b: D.Batch) -> dict:
  return {"feat_ids": b.feat_ids, "feat_vals": b.feat_vals, "labels": b.labels, "mask": b.mask}


def _batch_spec(cfg: TrainConfig) -> dict:
  """The shapes and dtypes of a training batch (see :func:`_batch_dict`)."""
  b, f, l = cfg.batch_size, cfg.max_features, cfg.max_labels
  return {"feat_ids": jax.ShapeDtypeStruct((b, f), jnp.int32),
          "feat_vals": jax.ShapeDtypeStruct((b, f), jnp.float32),
          "labels": jax.ShapeDtypeStruct((b, l), jnp.int32),
          "mask": jax.ShapeDtypeStruct((b,), jnp.bool_)}


def _make_step(model, cfg: TrainConfig, moment_dtype: str | None = None):
  if cfg.dense:
    return jslide.nn.make_dense_train_step(model, tx=optax.adam(cfg.learning_rate))
  if cfg.sampled:
    return jslide.nn.make_sampled_train_step(model, num_sampled=cfg.sampled,
                                             tx=optax.adam(cfg.learning_rate))
  moments = None if moment_dtype is None else jax.numpy.dtype(moment_dtype)
  return jslide.nn.make_train_step(
      model, table_tx=jslide.optim.sparse_adam(cfg.learning_rate, catch_up=cfg.catch_up,
                                               moment_dtype=moments),
      dense_tx=optax.adam(cfg.learning_rate), loss=cfg.loss,
      schedule=jslide.lsh.RebuildSchedule(cfg.rebuild_initial, cfg.rebuild_growth,
                                          cfg.rebuild_max))


@functools.lru_cache(maxsize=8)
def _rankers(graphdef, k: int, candidates: int):
  """Jitted rankers, cached so evaluating after every epoch compiles once:

  - ``exact(state, feat_ids, feat_vals) -> (scores, ids)``: top k of all labels;
  - ``retrieved(state, feat_ids, feat_vals, key, index) -> (scores, ids, candidate ids)``:
    top k of the ``candidates`` the index retrieves (no fill), rescored exactly; ``index``:
    an inference index (``SparseDense.build_inference_index``), or None for the model's own;
  - ``training_ids(state, feat_ids, feat_vals, key) -> ids``: the ``candidates`` the model's
    own (training) index retrieves.
  """

  @jax.jit
  def exact(state, feat_ids, feat_vals):
    model = jslide.nn.merge(graphdef, state)
    return jax.lax.top_k(model.output.exact(model.encode(feat_ids, feat_vals)), k)

  @jax.jit
  def retrieved(state, feat_ids, feat_vals, key, index):
    model = jslide.nn.merge(graphdef, state)
    h = model.encode(feat_ids, feat_vals)
    ids = model.output.retrieve(h, key=key, candidates=candidates, index=index)
    top, pos = jax.lax.top_k(model.output.scores(h, ids), k)
    return top, jnp.take_along_axis(ids, pos, axis=-1), ids

  @jax.jit
  def training_ids(state, feat_ids, feat_vals, key):
    model = jslide.nn.merge(graphdef, state)
    return model.output.retrieve(model.encode(feat_ids, feat_vals), key=key,
                                 candidates=candidates)

  return exact, retrieved, training_ids


@functools.lru_cache(maxsize=8)
def _inference_index_builder(graphdef, num_tables: int, num_hashes: int | None,
                             candidates: int):
  """``build(state, key, previous, iters)``, jitted: the output layer's inference index over
  the state's rows (``SparseDense.build_inference_index``; ``previous``: warm start)."""

  @functools.partial(jax.jit, static_argnums=3)
  def build(state, key, previous, iters):
    model = jslide.nn.merge(graphdef, state)
    return model.output.build_inference_index(key, num_tables=num_tables, num_hashes=num_hashes,
                                              candidates=candidates, iters=iters,
                                              previous=previous)

  return build


# Lloyd steps of an inference index: built from rows (after the first epoch, or from a
# checkpoint for eval and predict), then warm from the last epoch's centroids (the steps add
# up over a run, as the training index's rebuilds do).
FIRST_ITERS, WARM_ITERS = 10, 3


def inference_index(graphdef, state, model_cfg: ModelConfig, previous=None, seed: int = 0,
                    iters: int | None = None):
  """The inference index of ``model_cfg`` over the state's output layer (None when
  ``inference_tables`` is 0: inference then goes through the training index). ``previous``
  (the index built after the last epoch) starts the centroids, ``iters`` Lloyd steps (default
  3); without it, the keys of random rows (default 10 steps)."""
  if not model_cfg.inference_tables:
    return None
  build = _inference_index_builder(graphdef, model_cfg.inference_tables,
                                   model_cfg.inference_hashes,
                                   model_cfg.inference_candidates())
  if iters is None:
    iters = FIRST_ITERS if previous is None else WARM_ITERS
  return build(state, jax.random.PRNGKey(seed), previous, iters)


@functools.lru_cache(maxsize=8)
def _list_rankers(graphdef, k: int):
  """Jitted, like :func:`_rankers`, for neuron lists (``jslide.lsh.NeuronLists``):

  - ``ranked(state, feat_ids, feat_vals, key, lists) -> (scores, ids, None)``: the top k of
    the neurons listed for each example, rescored exactly (the timed path; ``retrieved``'s
    signature, ``key`` unused, no candidate ids);
  - ``listed(state, feat_ids, feat_vals, lists) -> ids``: those candidates (for recall).
  """

  @jax.jit
  def ranked(state, feat_ids, feat_vals, key, lists):
    del key
    model = jslide.nn.merge(graphdef, state)
    return (*model.output.list_topk(model.encode(feat_ids, feat_vals), k, lists), None)

  @jax.jit
  def listed(state, feat_ids, feat_vals, lists):
    model = jslide.nn.merge(graphdef, state)
    return jslide.lsh.neuron_list_candidates(lists, model.encode(feat_ids, feat_vals))

  return ranked, listed


# Training examples whose hidden vectors place the neuron lists' regions, at most.
MAX_LIST_QUERIES = 1 << 17


@functools.lru_cache(maxsize=8)
def _list_builder(graphdef, num_lists: int, probes: int, list_size: int):
  """``build(state, queries, labels, key, init, iters)``, jitted: neuron lists of the output
  layer (``init``: the last epoch's centroids, or None)."""

  @functools.partial(jax.jit, static_argnums=5)
  def build(state, queries, labels, key, init, iters):
    model = jslide.nn.merge(graphdef, state)
    centroids = jslide.lsh.fit_query_centroids(key, queries, num_lists, iters=iters, init=init)
    return jslide.lsh.build_neuron_lists(centroids, queries, labels,
                                         model.output.kernel.get_value().astype(jnp.float32),
                                         model.output.bias.get_value(), list_size=list_size,
                                         probes=probes)

  return build


def neuron_lists(graphdef, state, model_cfg: ModelConfig, data: D.XCData, *, max_features: int,
                 max_labels: int, previous=None, seed: int = 0):
  """The output layer's :class:`jslide.lsh.NeuronLists` for inference: the hidden vectors
  of (up to ``MAX_LIST_QUERIES``, evenly spread) training examples and their labels place
  ``inference_lists`` regions (fewer for a small set: 16 examples a region at least), each
  listing ``inference_candidates() // inference_probes`` labels. ``previous``: the last
  epoch's lists, whose centroids start 3 Lloyd steps (else 10 from random examples)."""
  stride = max(1, -(-len(data) // MAX_LIST_QUERIES))
  if stride > 1:
    data = data.subset(np.arange(0, len(data), stride))
  queries, labels = map(jnp.asarray, hidden_vectors(graphdef, state, data,
                                                   max_features=max_features,
                                                   max_labels=max_labels))
  num_lists = max(1, min(model_cfg.inference_lists, len(queries) // 16))
  probes = min(model_cfg.inference_probes, num_lists)
  build = _list_builder(graphdef, num_lists, probes,
                        max(1, model_cfg.inference_candidates() // probes))
  init = None
  if previous is not None and previous.num_lists == num_lists:
    init = previous.centroids
  return build(state, queries, labels, jax.random.PRNGKey(seed), init,
               WARM_ITERS if init is not None else FIRST_ITERS)


@functools.lru_cache(maxsize=8)
def _encoder(graphdef):
  return jax.jit(lambda state, i, v: jslide.nn.merge(graphdef, state).encode(i, v))


def hidden_vectors(graphdef, state, data: D.XCData, *, max_features: int,
                   max_labels: int) -> tuple[np.ndarray, np.ndarray]:
  """(f32[n, d], int32[n, max_labels]): the output layer's input for every example of the
  data (in order), and its labels (-1 padding)."""
  encode = _encoder(graphdef)
  queries, labels = [], []
  for b in D.batches(data, 4096, max_features=max_features, max_labels=max_labels,
                     shuffle=False):
    keep = np.asarray(b.mask)
    queries.append(np.asarray(encode(state, b.feat_ids, b.feat_vals))[keep])
    labels.append(np.asarray(b.labels)[keep])
  return np.concatenate(queries), np.concatenate(labels)


def _timed(fn, *args):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t0


def evaluate_state(graphdef, state, data: D.XCData, *, batch_size: int, max_features: int,
                   max_labels: int, candidates: int, ks=(1, 3, 5),
                   with_lsh: bool = True, index=None, lists=None) -> dict:
  """P@k and nDCG@k over all labels (exact), and with ``with_lsh`` through the index
  (``lists``, neuron lists; else ``index``, an inference index, or None: the model's own):

  - ``lsh_P@k``, ``lsh_nDCG@k``: the top k of the ``candidates`` retrieved labels, rescored;
  - ``recall@1``, ``recall@5``: the share of the exact top 1 / top 5 that the index retrieved;
  - ``training_recall@1``, ``training_recall@5``: the same for the training index (the
    one each training step queries), with ``index`` given;
  - ``index_share``: retrieved labels / candidates (no labels forced, no random fill);
  - ``labels_scored``: labels scored per example through the index (neuron lists: the
    scores computed, a label in two of an example's lists counting twice); ``exact_ms`` and
    ``lsh_ms``: time per batch of exact ranking and of retrieval + rescoring (first batch,
    which compiles, excluded).
  """
  kmax = max(max(ks), 5)
  exact, retrieved, training_ids = _rankers(graphdef, kmax, candidates)
  if lists is not None:
    retrieved, listed = _list_rankers(graphdef, kmax)
    index, candidates = lists, lists.candidates
  sums: dict[str, float] = {}
  times = {"exact_ms": [], "lsh_ms": []}
  key = jax.random.PRNGKey(0)

  def add(name, value):
    sums[name] = sums.get(name, 0.0) + float(value)

  for i, b in enumerate(D.batches(data, batch_size, max_features=max_features,
                                  max_labels=max_labels, shuffle=False)):
    (_, top), t_exact = _timed(exact, state, b.feat_ids, b.feat_vals)
    for name, v in jslide.metrics.summarize(top, b.labels, b.mask, ks).items():
      add(name, v)
    if not with_lsh:
      continue
    (_, lsh_top, cand), t_lsh = _timed(retrieved, state, b.feat_ids, b.feat_vals,
                                       jax.random.fold_in(key, i), index)
    if lists is not None:
      cand = listed(state, b.feat_ids, b.feat_vals, lists)
    if i:
      times["exact_ms"].append(1e3 * t_exact)
      times["lsh_ms"].append(1e3 * t_lsh)
    for name, v in jslide.metrics.summarize(lsh_top, b.labels, b.mask, ks).items():
      add("lsh_" + name, v)
    found = jnp.sum(cand >= 0, axis=1)
    for name, v in (("recall@1", jslide.lsh.recall_of_top_k(cand, top[:, :1])),
                    ("recall@5", jslide.lsh.recall_of_top_k(cand, top[:, :5])),
                    ("labels_scored", found), ("index_share", found / candidates)):
      add(name, jnp.sum(jnp.where(b.mask, v, 0)))
    if index is not None:
      own = training_ids(state, b.feat_ids, b.feat_vals, jax.random.fold_in(key, i))
      for name, j in (("training_recall@1", 1), ("training_recall@5", 5)):
        add(name, jnp.sum(jnp.where(b.mask, jslide.lsh.recall_of_top_k(own, top[:, :j]), 0)))
  out = {name: v / len(data) for name, v in sums.items()}
  out["num_labels"] = data.num_labels
  out.update({name: sum(v) / len(v) for name, v in times.items() if v})
  return out


def train(train_data: D.XCData, test_data: D.XCData | None, model_cfg: ModelConfig,
          cfg: TrainConfig, *, valid_data: D.XCData | None = None,
          checkpoint_dir: str | None = None, resume: bool = False, overwrite: bool = False,
          json_path: str | None = None, progress: bool = True, log=print) -> dict:
  """Trains (or resumes) a SparseMLP; returns the run's record (also written to json_path).

  With ``valid_data``, every epoch is scored on it (exact P@k) and the epoch with the best
  validation P@1 is selected: ``record["selected"]`` holds its entry (test numbers included),
  and with a checkpoint directory its state is kept in ``<checkpoint_dir>-best``.
  """
  if train_data.num_features != model_cfg.num_features or train_data.num_labels != model_cfg.num_labels:
    raise ValueError("train: the data's dimensions differ from the model's")
  model = model_cfg.build(cfg.seed)
  graphdef, state, step = _make_step(model, cfg, model_cfg.moment_dtype)
  epoch, start_batch = 0, 0
  record = {"model": model_cfg.to_json(), "train": dataclasses.asdict(cfg), "epochs": []}
  mgr = checkpoint.writable_manager(checkpoint_dir) if checkpoint_dir else None
  best_dir = checkpoint_dir.rstrip("/") + "-best" if checkpoint_dir else None
  best_mgr = (checkpoint.writable_manager(best_dir)
              if checkpoint_dir and valid_data is not None else None)
  if mgr and not resume:
    checkpoint.refuse_to_overwrite(mgr, checkpoint_dir, overwrite)
    if best_mgr:
      checkpoint.refuse_to_overwrite(best_mgr, best_dir, overwrite=True)  # goes with the run
  data_order = {"batch_size": cfg.batch_size, "seed": cfg.seed, "examples": len(train_data),
                "max_features": cfg.max_features, "max_labels": cfg.max_labels}
  if resume:
    if not checkpoint_dir:
      raise ValueError("train: resume needs a checkpoint directory")
    state, meta = checkpoint.restore(checkpoint_dir, state, model_cfg, cfg.dense, cfg.catch_up,
                                     cfg.sampled)
    checkpoint.check_data_order(checkpoint_dir, meta.get("data_order"), data_order)
    epoch, start_batch = meta["epoch"], meta["next_batch"]
    record["epochs"] = meta.get("epochs", [])
    if meta.get("selected"):
      record["selected"] = meta["selected"]
    log(f"resumed from {checkpoint_dir} at step {int(state.step)} (epoch {epoch}, batch "
        f"{start_batch})")

  def meta(epoch, next_batch):
    return {"model": model_cfg.to_json(), "dense": cfg.dense, "sampled": cfg.sampled,
            "catch_up": cfg.catch_up,
            "epoch": epoch,
            "next_batch": next_batch, "epochs": record["epochs"],
            "selected": record.get("selected"), "data_order": data_order}

  n_batches = D.num_batches(train_data, cfg.batch_size)
  key = jax.random.PRNGKey(cfg.seed)
  # Compiled ahead of the first epoch, so an epoch's seconds are training alone (the same
  # for jslide and the baselines); the compilation is recorded on its own.
  t0 = time.perf_counter()
  step = step.lower(state, _batch_spec(cfg), key).compile()
  jslide.nn.catch_up_train_state.lower(state).compile()  # what each epoch ends with
  if not (cfg.dense or cfg.sampled):
    jslide.nn.rebuild_train_state.lower(graphdef, state).compile()
  record["compile_seconds"] = time.perf_counter() - t0
  log(f"training step compiled in {record['compile_seconds']:.1f} s (not in the epochs' "
      "seconds)")
  inf_index = None  # the inference index, rebuilt from its last centroids after every epoch
  inf_lists = None  # or the neuron lists, likewise
  while epoch < cfg.epochs:
    bar = tqdm(total=len(train_data), initial=min(start_batch * cfg.batch_size, len(train_data)),
               unit="ex", unit_scale=True, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress, dynamic_ncols=True)
    t0, seen, loss_sum = time.perf_counter(), 0, 0.0
    pending = None  # the last step's (metrics, examples, batch index), not yet read back

    def check(pending):
      """Reads one step's metrics back (waiting for it); stops on a non-finite loss."""
      nonlocal seen, loss_sum
      m, n, i = pending
      stop = (f"at epoch {epoch + 1}, batch {i}; stopping. The last good checkpoint (if any) "
              f"is kept in {checkpoint_dir}. Try a lower learning rate.")
      loss = float(m["loss"])
      if not bool(m["finite"]):  # the step was skipped: the state is the last good one
        raise NonFiniteLossError(f"non-finite gradient {stop}")
      if not math.isfinite(loss):
        raise NonFiniteLossError(f"loss became {loss} {stop}")
      seen, loss_sum = seen + n, loss_sum + loss * n
      bar.update(n)
      bar.set_postfix(loss=f"{loss:.4f}")

    steps_done = int(state.step)
    for i, b in enumerate(D.batches(train_data, cfg.batch_size, max_features=cfg.max_features,
                                    max_labels=cfg.max_labels, seed=cfg.seed, epoch=epoch,
                                    start_batch=start_batch), start=start_batch):
      state, m = step(state, _batch_dict(b), jax.random.fold_in(key, epoch * n_batches + i))
      steps_done += 1
      # The previous step's loss is read while this one runs (dispatch is asynchronous), so
      # the host's batch building and bookkeeping overlap the computation.
      if pending is not None:
        check(pending)
      pending = (m, int(b.mask.sum()), i)
      if mgr and cfg.checkpoint_every and steps_done % cfg.checkpoint_every == 0:
        check(pending)  # a checkpoint is only written after its step is known to be good
        pending = None
        checkpoint.save(mgr, state, meta(epoch, i + 1))
    if pending is not None:
      check(pending)
    bar.close()
    state = jslide.nn.catch_up_train_state(state)  # every row as dense Adam has it, for eval and saving
    if not (cfg.dense or cfg.sampled):  # retrieval at evaluation sees the final weights
      state = jslide.nn.rebuild_train_state(graphdef, state)
    seconds = time.perf_counter() - t0
    entry = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "seconds": seconds,
             "examples_per_second": seen / seconds if seconds else 0.0}
    sparse_test = test_data is not None and not (cfg.dense or cfg.sampled)
    if sparse_test and model_cfg.inference_lists:  # warm: from the last epoch's centroids
      t1 = time.perf_counter()
      inf_lists = jax.block_until_ready(neuron_lists(
          graphdef, state, model_cfg, train_data, max_features=cfg.max_features,
          max_labels=cfg.max_labels, previous=inf_lists, seed=cfg.seed))
      entry["inference_index_seconds"] = time.perf_counter() - t1
    elif sparse_test and model_cfg.inference_tables:  # warm: from the last epoch's centroids
      t1 = time.perf_counter()
      inf_index = jax.block_until_ready(
          inference_index(graphdef, state, model_cfg, inf_index, cfg.seed))
      entry["inference_index_seconds"] = time.perf_counter() - t1
    evaluate = functools.partial(evaluate_state, graphdef, state, batch_size=1024,
                                 max_features=cfg.max_features, max_labels=cfg.max_labels,
                                 candidates=model_cfg.inference_candidates())
    if valid_data is not None:
      entry["valid"] = evaluate(valid_data, with_lsh=False)
    if test_data is not None:
      entry["test"] = evaluate(test_data, with_lsh=sparse_test, index=inf_index,
                               lists=inf_lists)
    record["epochs"].append(entry)
    log(_format_epoch(entry))
    best = record.get("selected")
    if valid_data is not None and (best is None or entry["valid"]["P@1"] > best["valid"]["P@1"]):
      record["selected"] = entry
      if best_mgr:
        checkpoint.save(best_mgr, state, meta(epoch + 1, 0))
    epoch, start_batch = epoch + 1, 0
    if mgr:
      checkpoint.save(mgr, state, meta(epoch, 0))
  record["final"] = record["epochs"][-1] if record["epochs"] else {}
  if record.get("selected"):
    log(f"selected epoch {record['selected']['epoch']} (best validation P@1 "
        f"{record['selected']['valid']['P@1']:.4f})")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(record, f, indent=2)
  return record


def _format_epoch(e: dict) -> str:
  s = (f"epoch {e['epoch']}: loss {e['train_loss']:.4f}, {e['seconds']:.1f} s "
       f"({e['examples_per_second']:.0f} examples/s)")
  if e.get("valid"):
    s += f"; valid P@1 {e['valid']['P@1']:.4f}"
  t = e.get("test")
  if t:
    s += "; test " + " ".join(f"{k} {t[k]:.4f}" for k in ("P@1", "P@3", "P@5", "nDCG@5"))
    if "lsh_P@1" in t:
      s += (f" | via LSH: P@1 {t['lsh_P@1']:.4f} P@5 {t['lsh_P@5']:.4f}, recall of top 1 "
            f"{t['recall@1']:.3f} top 5 {t['recall@5']:.3f}, {t['labels_scored']:.0f} labels "
            f"scored per example ({t['labels_scored'] / t['num_labels']:.1%} of the labels)")
      if "lsh_ms" in t:
        s += f", {t['lsh_ms']:.1f} ms/batch vs exact {t['exact_ms']:.1f}"
      if "training_recall@1" in t:
        s += (f"; training index: recall of top 1 {t['training_recall@1']:.3f} top 5 "
              f"{t['training_recall@5']:.3f}")
  return s


def load_model(checkpoint_dir: str):
  """(graphdef, state, model config, meta) from a checkpoint directory."""
  meta = checkpoint.read_meta(checkpoint_dir)
  model_cfg = ModelConfig.from_json(meta["model"])
  cfg = TrainConfig(dense=bool(meta["dense"]), sampled=int(meta.get("sampled", 0)),
                    catch_up=bool(meta.get("catch_up", False)))
  graphdef, state, _ = _make_step(model_cfg.build(0), cfg, model_cfg.moment_dtype)
  state, meta = checkpoint.restore(checkpoint_dir, state, model_cfg, cfg.dense, cfg.catch_up,
                                   cfg.sampled)
  # A mid-epoch checkpoint may hold rows that catch-up Adam has not brought up to date yet.
  return graphdef, jslide.nn.catch_up_train_state(state), model_cfg, meta


def _checkpoint_lists(graphdef, state, model_cfg: ModelConfig, train_data, *, fn: str,
                      max_features: int, max_labels: int):
  """The neuron lists of a restored model whose config asks for them (``inference_lists``),
  built from ``train_data`` as the trainer builds them after an epoch (10 Lloyd steps from
  random examples); None for a model that ranks through the k-means index."""
  if not model_cfg.inference_lists:
    return None
  if train_data is None:
    raise ValueError(f"{fn}: the model ranks through neuron lists (inference_lists="
                     f"{model_cfg.inference_lists}), which are built from the training set: "
                     "pass its training data (--train, or --dataset for a bundled one)")
  _check_dims(train_data, model_cfg)
  return neuron_lists(graphdef, state, model_cfg, train_data, max_features=max_features,
                      max_labels=max_labels)


def evaluate(checkpoint_dir: str, data: D.XCData, *, max_features=64, max_labels=8,
             train_data: D.XCData | None = None) -> dict:
  """:func:`evaluate_state` of a checkpoint (the inference index built fresh: the k-means
  index from the rows, or, for a model trained with ``inference_lists``, the neuron lists
  from ``train_data``)."""
  graphdef, state, model_cfg, meta = load_model(checkpoint_dir)
  _check_dims(data, model_cfg)
  sparse = not (meta["dense"] or meta.get("sampled", 0))
  lists = index = None
  if sparse:
    lists = _checkpoint_lists(graphdef, state, model_cfg, train_data, fn="evaluate",
                              max_features=max_features, max_labels=max_labels)
    if lists is None:
      index = inference_index(graphdef, state, model_cfg)
  return evaluate_state(graphdef, state, data, batch_size=1024, max_features=max_features,
                        max_labels=max_labels, candidates=model_cfg.inference_candidates(),
                        with_lsh=sparse, index=index, lists=lists)


def predict(checkpoint_dir: str, data: D.XCData, out_path: str, *, k: int = 5,
            max_features: int = 64, exact: bool = True,
            train_data: D.XCData | None = None) -> int:
  """Writes, per input line, its top-k labels as ``label:score`` pairs; returns the count.
  ``exact=False`` ranks through the inference index, as :func:`evaluate` builds it."""
  graphdef, state, model_cfg, _ = load_model(checkpoint_dir)
  _check_dims(data, model_cfg)
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= model_cfg.num_labels:
    raise ValueError(f"predict: k must be an int in [1, {model_cfg.num_labels}], got {k!r}")
  candidates = model_cfg.inference_candidates()
  if not exact and k > candidates:
    raise ValueError(f"predict: k={k} exceeds the {candidates} labels retrieved through "
                     "the index")
  exact_rank, retrieved, _ = _rankers(graphdef, k, candidates)
  index = None
  if not exact:
    index = _checkpoint_lists(graphdef, state, model_cfg, train_data, fn="predict",
                              max_features=max_features, max_labels=TrainConfig.max_labels)
    if index is None:
      index = inference_index(graphdef, state, model_cfg)
    else:
      retrieved, _ = _list_rankers(graphdef, k)
  # Written beside the target and renamed at the end: a failed run leaves no partial file.
  tmp_path = f"{out_path}.partial"
  try:
    with open(tmp_path, "w") as f:
      for i, b in enumerate(D.batches(data, 1024, max_features=max_features, max_labels=1,
                                      shuffle=False)):
        if exact:
          scores, ids = exact_rank(state, b.feat_ids, b.feat_vals)
        else:
          scores, ids, _ = retrieved(state, b.feat_ids, b.feat_vals, jax.random.PRNGKey(i),
                                     index)
        for row in range(int(b.mask.sum())):
          f.write(" ".join(f"{int(l)}:{float(s):.5g}" for l, s in zip(ids[row], scores[row])
                           if l >= 0) + "\n")
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  os.replace(tmp_path, out_path)
  return len(data)


def _check_dims(data: D.XCData, cfg: ModelConfig) -> None:
  if data.num_features > cfg.num_features:
    raise ValueError(f"data has {data.num_features} features; the model takes "
                     f"{cfg.num_features}")
  if data.num_labels > cfg.num_labels:
    raise ValueError(f"data has {data.num_labels} labels; the model has {cfg.num_labels}")

