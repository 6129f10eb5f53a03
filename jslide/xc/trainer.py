"""Training, evaluation and prediction for extreme classification with jslide."""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jslide
from jslide import datasets as D
from jslide import train as T
from jslide.lsh.cluster import top_indices
from jslide.train import checkpoint, distributed
from jslide.train import config as run_config
from jslide.xc.config import ModelConfig, RunConfig


def _batch_dict(b: D.Batch) -> dict:
  return {"feat_ids": b.feat_ids, "feat_vals": b.feat_vals, "labels": b.labels, "mask": b.mask}


def _batch_spec(cfg: RunConfig) -> dict:
  """The shapes and dtypes of a training batch (see :func:`_batch_dict`)."""
  b, f, l = cfg.batch_size, cfg.max_features, cfg.max_labels
  return {"feat_ids": jax.ShapeDtypeStruct((b, f), jnp.int32),
          "feat_vals": jax.ShapeDtypeStruct((b, f), jnp.float32),
          "labels": jax.ShapeDtypeStruct((b, l), jnp.int32),
          "mask": jax.ShapeDtypeStruct((b,), jnp.bool_)}


@functools.lru_cache(maxsize=8)
def _rankers(graphdef, k: int, candidates: int):
  """Jitted rankers, cached so evaluating after every epoch compiles once:

  - ``exact(state, feat_ids, feat_vals) -> (scores, ids)``: top k of all labels;
  - ``retrieved(state, feat_ids, feat_vals, key, index) -> (scores, ids, candidate ids)``:
    top k of the ``candidates`` the index retrieves (no fill), rescored exactly; ``index``:
    an inference index (``SparseDense.build_inference_index``), or None for the model's own.
  """

  @jax.jit
  def exact(state, feat_ids, feat_vals):
    model = state.model(graphdef)
    return jax.lax.top_k(model.output.exact(model.encode(feat_ids, feat_vals)), k)

  @jax.jit
  def retrieved(state, feat_ids, feat_vals, key, index):
    model = state.model(graphdef)
    h = model.encode(feat_ids, feat_vals)
    ids = model.output.retrieve(h, key=key, candidates=candidates, index=index)
    top, pos = jax.lax.top_k(model.output.scores(h, ids), k)
    return top, jnp.take_along_axis(ids, pos, axis=-1), ids

  return exact, retrieved


@functools.lru_cache(maxsize=8)
def _inference_index_builder(graphdef, num_hash_tables: int, num_hashes: int | None,
                             candidates: int):
  """``build(state, key, previous, iters)``, jitted: the output layer's inference index over
  the state's rows (``SparseDense.build_inference_index``; ``previous``: warm start)."""

  @functools.partial(jax.jit, static_argnums=3)
  def build(state, key, previous, iters):
    model = state.model(graphdef)
    return model.output.build_inference_index(key, num_hash_tables=num_hash_tables,
                                              num_hashes=num_hashes,
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
  ``inference_hash_tables`` is 0: inference then goes through the training index). ``previous``
  (the index built after the last epoch) starts the centroids, ``iters`` Lloyd steps (default
  3); without it, the keys of random rows (default 10 steps)."""
  if not model_cfg.inference_hash_tables:
    return None
  build = _inference_index_builder(graphdef, model_cfg.inference_hash_tables,
                                   model_cfg.inference_hashes,
                                   model_cfg.inference_candidates())
  if iters is None:
    iters = FIRST_ITERS if previous is None else WARM_ITERS
  return build(state, jax.random.PRNGKey(seed), previous, iters)


@functools.lru_cache(maxsize=8)
def _list_rankers(graphdef, k: int):
  """Jitted, like :func:`_rankers`, for neuron lists (``jslide.lsh.NeuronLists``):

  ``ranked(state, feat_ids, feat_vals, key, lists) -> (scores, ids, None)``: the top k of
  the neurons listed for each example, rescored exactly (``retrieved``'s signature, ``key``
  unused, no candidate ids).
  """

  @jax.jit
  def ranked(state, feat_ids, feat_vals, key, lists):
    del key
    model = state.model(graphdef)
    return (*model.output.list_topk(model.encode(feat_ids, feat_vals), k, lists), None)

  return ranked


# Training examples whose hidden vectors place the neuron lists' regions, at most.
MAX_LIST_QUERIES = 1 << 17


@functools.lru_cache(maxsize=8)
def _list_builder(graphdef, num_lists: int, probes: int, list_size: int):
  """``build(state, queries, labels, key, init, iters)``, jitted: neuron lists of the output
  layer (``init``: the last epoch's centroids, or None)."""

  @functools.partial(jax.jit, static_argnums=5)
  def build(state, queries, labels, key, init, iters):
    model = state.model(graphdef)
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
  evaluation's lists, whose centroids start 3 Lloyd steps (else 10 from random
  examples)."""
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
  return jax.jit(lambda state, i, v: state.model(graphdef).encode(i, v))


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


@functools.lru_cache(maxsize=8)
def _scorer(graphdef, k: int, candidates: int, ks: tuple, through: str):
  """``score(state, feat_ids, feat_vals, labels, mask, key, index) -> sums``, jitted: one
  encoding of the batch serves every metric of :func:`evaluate_state` (sums over the
  examples where mask is True). ``through``: ``exact`` (exact ranking only), ``index``
  (``index``: an inference index, or None for the model's own) or ``lists``."""

  def metrics(prefix, top, labels, mask):
    return {prefix + n: v for n, v in jslide.metrics.summarize(top, labels, mask, ks).items()}

  @jax.jit
  def score(state, feat_ids, feat_vals, labels, mask, key, index):
    model = state.model(graphdef)
    h = model.encode(feat_ids, feat_vals)
    # jslide's top-k kernel: lax.top_k's ranks, without the full sort XLA falls back to
    # when only the indices are used (40x slower here).
    top = top_indices(model.output.exact(h), k)
    out = metrics("", top, labels, mask)
    if through == "exact":
      return out

    def masked_sum(v):
      return jnp.sum(jnp.where(mask, v, 0.0))

    if through == "lists":
      _, lsh_top = model.output.list_topk(h, k, index)
      cand = jslide.lsh.neuron_list_candidates(index, h)
    else:
      cand = model.output.retrieve(h, key=key, candidates=candidates, index=index)
      pos = top_indices(model.output.scores(h, cand), k)
      lsh_top = jnp.take_along_axis(cand, pos, axis=-1)
    out.update(metrics("lsh_", lsh_top, labels, mask))
    found = jnp.sum(cand >= 0, axis=1).astype(jnp.float32)
    out.update({"recall@1": masked_sum(jslide.lsh.recall_of_top_k(cand, top[:, :1])),
                "recall@5": masked_sum(jslide.lsh.recall_of_top_k(cand, top[:, :5])),
                "labels_scored": masked_sum(found),
                "index_share": masked_sum(found / candidates)})
    if through == "index" and index is not None:
      own = model.output.retrieve(h, key=key, candidates=candidates)
      out.update({f"training_recall@{j}": masked_sum(jslide.lsh.recall_of_top_k(own, top[:, :j]))
                  for j in (1, 5)})
    return out

  return score


@functools.lru_cache(maxsize=8)
def _row_sharded_scorer(graphdef, k: int, ks: tuple, mesh):
  """:func:`_scorer`'s exact metrics for a state split by rows over ``mesh``'s ``"rows"``
  axis: each device ranks its own rows, and the k best of every device are merged
  (:func:`jslide.row_sharded.top_k`); no scores of all labels cross devices."""

  def local(state, feat_ids, feat_vals, labels, mask):
    model = state.model(graphdef)
    scores = model.output.exact(model.encode(feat_ids, feat_vals))
    top, pos = jax.lax.top_k(scores, min(k, scores.shape[-1]))
    ids = jslide.row_sharded.global_ids(pos, scores.shape[-1], "rows")
    _, best = jslide.row_sharded.top_k(top, ids, k, "rows")
    return jslide.metrics.summarize(best, labels, mask, ks)

  run = jslide.row_sharded.each_shard(local, mesh, "rows")

  def score(state, feat_ids, feat_vals, labels, mask, key, index):
    del key, index
    return run(state, *jslide.parallel.replicated((feat_ids, feat_vals, labels, mask), mesh))

  return score


# Batches timed for exact_ms and lsh_ms, after one that compiles.
TIMED_BATCHES = 8


def evaluate_state(graphdef, state, data: D.XCData, *, batch_size: int, max_features: int,
                   max_labels: int, candidates: int, ks=(1, 3, 5),
                   with_lsh: bool = True, index=None, lists=None,
                   time_ranking: bool = True, score=None) -> dict:
  """P@k and nDCG@k over all labels (exact), and with ``with_lsh`` through the index
  (``lists``, neuron lists; else ``index``, an inference index, or None: the model's own):

  - ``lsh_P@k``, ``lsh_nDCG@k``: the top k of the ``candidates`` retrieved labels, rescored;
  - ``recall@1``, ``recall@5``: the share of the exact top 1 / top 5 that the index retrieved;
  - ``training_recall@1``, ``training_recall@5``: the same for the training index (the
    one each training step queries), with ``index`` given;
  - ``index_share``: retrieved labels / candidates (no labels forced, no random fill);
  - ``labels_scored``: labels scored per example through the index (neuron lists: the
    scores computed, a label in two of an example's lists counting twice);
  - with ``time_ranking``, ``exact_ms`` and ``lsh_ms``: time per batch of exact ranking and
    of retrieval + rescoring, each alone, on up to ``TIMED_BATCHES`` batches (after one that
    compiles).

  One jitted pass per batch computes every metric from one encoding of it (``score``: that
  pass, when not the one-device model's; :func:`_row_sharded_scorer`).
  """
  ks = tuple(k for k in ks if k <= data.num_labels) or (data.num_labels,)
  kmax = min(max(max(ks), 5), data.num_labels)
  through = "exact" if not with_lsh else "lists" if lists is not None else "index"
  if lists is not None:
    index, candidates = lists, lists.candidates
  score = score or _scorer(graphdef, kmax, candidates, tuple(ks), through)
  sums: dict[str, float] = {}
  key = jax.random.PRNGKey(0)
  batches = list(D.batches(data, batch_size, max_features=max_features,
                           max_labels=max_labels, shuffle=False))
  for i, b in enumerate(batches):
    for name, v in score(state, b.feat_ids, b.feat_vals, b.labels, b.mask,
                         jax.random.fold_in(key, i), index).items():
      sums[name] = sums.get(name, 0.0) + float(v)
  out = {name: v / len(data) for name, v in sums.items()}
  out["num_labels"] = data.num_labels
  if with_lsh and time_ranking:
    out.update(_ranking_ms(graphdef, state, batches[:TIMED_BATCHES + 1], kmax, candidates,
                           index, lists is not None))
  return out


def _ranking_ms(graphdef, state, batches, k: int, candidates: int, index, lists: bool) -> dict:
  """``exact_ms``, ``lsh_ms``: the mean time per batch of exact ranking and of ranking
  through the index, each in a pass of its own (the first batch, which compiles, left
  out)."""
  exact, retrieved = _rankers(graphdef, k, candidates)
  if lists:
    retrieved = _list_rankers(graphdef, k)
  key = jax.random.PRNGKey(0)
  times = {"exact_ms": [], "lsh_ms": []}
  for name, rank in (("exact_ms", lambda b, i: exact(state, b.feat_ids, b.feat_vals)),
                     ("lsh_ms", lambda b, i: retrieved(state, b.feat_ids, b.feat_vals,
                                                       jax.random.fold_in(key, i), index))):
    for i, b in enumerate(batches):
      t = _timed(rank, b, i)[1]
      if i:
        times[name].append(1e3 * t)
  return {name: sum(v) / len(v) for name, v in times.items() if v}


def train(train_data: D.XCData, test_data: D.XCData | None, model_cfg: ModelConfig,
          cfg: RunConfig, *, valid_data: D.XCData | None = None,
          checkpoint_dir: str | None = None, resume: bool = False, overwrite: bool = False,
          json_path: str | None = None, progress: bool = True, log=print) -> dict:
  """Trains (or resumes) a SparseMLP; returns the run's record (also written to json_path).

  Every evaluation (each epoch's end, and as ``cfg`` says: :class:`jslide.train.RunConfig`)
  scores ``valid_data`` (exact P@k), and the evaluation with the best validation P@1 is
  selected: ``record["selected"]`` holds its entry, and with a checkpoint directory its
  state is kept in ``<checkpoint_dir>-best``. At the end the selected state (the final one
  without validation data) is scored on ``test_data``, exactly and, for a jslide run,
  through its inference index: ``record["test"]``, also in the selected entry.
  """
  if train_data.num_features != model_cfg.num_features or train_data.num_labels != model_cfg.num_labels:
    raise ValueError("train: the data's dimensions differ from the model's")
  if model_cfg.active < cfg.max_labels:  # every example's labels are in its active set
    raise ValueError(f"train: active={model_cfg.active} must be at least max_labels="
                     f"{cfg.max_labels} (the labels an example keeps, all in its active set)")
  # Several processes (jslide.train.distributed): a data-parallel step over all their
  # devices; process 0 alone prints and writes. Row shards: the output layer split by rows
  # over a mesh axis (jslide.row_sharded), the batch over the rest.
  sharded = cfg.row_shards > 1
  if sharded:
    if model_cfg.num_labels % cfg.row_shards:
      raise ValueError(f"train: row_shards={cfg.row_shards} must divide the "
                       f"{model_cfg.num_labels} labels (each device holds an equal block)")
    mesh = distributed.row_mesh(cfg.row_shards, batch_size=cfg.batch_size)
  else:
    mesh = distributed.data_mesh(batch_size=cfg.batch_size)
  if not distributed.is_primary():
    log, progress, json_path = (lambda *_: None), False, None
  if json_path:
    T.check_writable(json_path)
  meta = {"model": model_cfg.to_json(), "run": cfg.to_json(),
          "data": {"examples": len(train_data)}}
  distributed.check_same("the run (model, run settings, data)",
                         lambda: {**meta, "data": {
                             "train": train_data.digest(),
                             "valid": valid_data and valid_data.digest(),
                             "test": test_data and test_data.digest()}})
  store = (T.Checkpoints(checkpoint_dir, resume=resume, overwrite=overwrite,
                         best=valid_data is not None) if checkpoint_dir else None)
  model = model_cfg.build(cfg.seed)
  objective = cfg.objective(model_cfg.moment_dtype)
  sparse = objective.uses_index
  if sharded:
    model = jslide.row_sharded.split_rows(model, cfg.row_shards, "rows")
    graphdef, state, step = objective.train_step(model, cfg.learning_rate,
                                                 cfg.rebuild_schedule(), mesh=mesh,
                                                 row_axis="rows")
  else:
    graphdef, state, step = objective.train_step(model, cfg.learning_rate,
                                                 cfg.rebuild_schedule(), mesh=mesh)
  record = {"model": model_cfg.to_json(), "run": cfg.to_json(), "evals": [],
            "processes": jax.process_count()}
  if sharded:
    record["output_rows_held"] = distributed.rows_held(state.tables["output"]["kernel"].get_value())
  catch_up, rebuild = jslide.train.state_updates(graphdef, mesh if sharded else None)
  n_batches = D.num_batches(train_data, cfg.batch_size)
  # Compiled ahead of the first epoch, so an epoch's seconds are training alone (the same
  # for jslide and the baselines); the compilation is recorded on its own.
  t0 = time.perf_counter()
  step = distributed.compiled_step(step, state, _batch_spec(cfg), jax.random.PRNGKey(cfg.seed),
                                   mesh)
  catch_up.lower(state).compile()  # what each evaluation starts with
  if sparse:
    rebuild.lower(state).compile()
  record["compile_seconds"] = time.perf_counter() - t0
  log(f"training step compiled in {record['compile_seconds']:.1f} s (not in the training "
      "seconds)")

  def prepare(state):
    state = catch_up(state)  # every row as dense Adam has it
    if sparse:  # retrieval at evaluation sees the final weights
      state = rebuild(state)
    return state

  # Every process evaluates its own replica (the same numbers: every process selects the
  # same evaluation).
  evaluate = functools.partial(_evaluate_run, graphdef, model_cfg, cfg, train_data,
                               mesh=mesh if sharded else None)
  inference = {"index": None, "lists": None}  # warm from the last evaluation's

  def evaluate_each(state, entry):
    out = {}
    if valid_data is not None:
      out["valid"] = evaluate(state, valid_data, with_lsh=False)
    if cfg.test_each_eval and test_data is not None:
      out["test"] = evaluate(state, test_data, with_lsh=sparse, inference=inference)
    return out

  def batches(epoch, start):
    for b in D.batches(train_data, cfg.batch_size, max_features=cfg.max_features,
                       max_labels=cfg.max_labels, seed=cfg.seed, epoch=epoch,
                       start_batch=start):
      yield _batch_dict(b), int(b.mask.sum())

  select = (lambda e: e["valid"]["P@1"]) if valid_data is not None else None
  try:
    result = T.fit(state, step, run=cfg, key=jax.random.PRNGKey(cfg.seed),
                   num_batches=n_batches, batches=batches, evaluate=evaluate_each,
                   prepare=prepare, meta=meta, record=record, store=store, select=select,
                   resume=resume, progress=progress, log=lambda e: log(_format_entry(e)))
  finally:
    if store is not None:
      store.close()
  record = result.record
  if result.interrupted:
    log(f"interrupted at step {record['interrupted']['step']}" +
        (f"; saved in {checkpoint_dir} (continue with --resume)" if checkpoint_dir else ""))
    if json_path:
      T.write_json(json_path, record)
    return record
  if resume:
    log(f"resumed from {checkpoint_dir}")
  chosen = record.get("selected") or record["evals"][-1]
  if test_data is not None and "test" not in chosen:
    chosen["test"] = evaluate(result.best, test_data, with_lsh=sparse, inference=inference)
  if test_data is not None:
    record["test"] = chosen["test"]
    log(f"test, {'selected' if record.get('selected') else 'final'} evaluation (epoch "
        f"{chosen['epoch']:g}): " + _format_test(chosen["test"]))
  record["final"] = record["evals"][-1]
  if record.get("selected"):
    log(f"selected epoch {record['selected']['epoch']:g} (best validation P@1 "
        f"{record['selected']['valid']['P@1']:.4f})")
  if json_path:
    T.write_json(json_path, record)
  return record


def _evaluate_run(graphdef, model_cfg: ModelConfig, cfg: RunConfig, train_data, state, data,
                  *, with_lsh: bool, inference: dict | None = None, mesh=None) -> dict:
  """:func:`evaluate_state` of a training run's state; with ``with_lsh`` its inference index
  (or neuron lists) built first: warm from ``inference``'s last one, which it replaces, or
  (the first) as ``eval`` builds it from a checkpoint. ``mesh``: the row-sharded run's
  (exact ranking only, merged over the shards: an inference index per shard is not built)."""
  if mesh is not None:
    ks = tuple(k for k in (1, 3, 5) if k <= data.num_labels) or (data.num_labels,)
    score = _row_sharded_scorer(graphdef, min(max(max(ks), 5), data.num_labels), ks, mesh)
    return evaluate_state(graphdef, state, data, batch_size=1024,
                          max_features=cfg.max_features, max_labels=cfg.max_labels,
                          candidates=1, ks=ks, with_lsh=False, score=score)
  state = distributed.local_replica(state)
  index = lists = None
  seconds = None
  if with_lsh:
    t1 = time.perf_counter()
    if model_cfg.inference_lists:
      lists = inference["lists"] = jax.block_until_ready(neuron_lists(
          graphdef, state, model_cfg, train_data, max_features=cfg.max_features,
          max_labels=cfg.max_labels, previous=inference["lists"], seed=cfg.seed))
    elif model_cfg.inference_hash_tables:
      index = inference["index"] = jax.block_until_ready(inference_index(
          graphdef, state, model_cfg, inference["index"], cfg.seed))
    seconds = time.perf_counter() - t1
  out = evaluate_state(graphdef, state, data, batch_size=1024, max_features=cfg.max_features,
                       max_labels=cfg.max_labels, candidates=model_cfg.inference_candidates(),
                       with_lsh=with_lsh, index=index, lists=lists,
                       time_ranking=cfg.time_ranking)
  if seconds is not None and (lists is not None or index is not None):
    out["inference_index_seconds"] = seconds
  return out


def _format_entry(e: dict) -> str:
  s = (f"epoch {e['epoch']:g} (step {e['step']}): loss {e['train_loss']:.4f}, "
       f"{e['seconds']:.1f} s ({e['examples_per_s']:.0f} examples/s)")
  if e.get("valid"):
    s += f"; valid P@1 {e['valid']['P@1']:.4f}"
  if e.get("test"):
    s += "; test " + _format_test(e["test"])
  return s


def _format_test(t: dict) -> str:
  s = " ".join(f"{k} {t[k]:.4f}" for k in ("P@1", "P@3", "P@5", "nDCG@5") if k in t)
  if "lsh_P@1" in t:
    s += (f" | via LSH: P@1 {t['lsh_P@1']:.4f} P@5 {t.get('lsh_P@5', float('nan')):.4f}, "
          f"recall of top 1 "
          f"{t['recall@1']:.3f} top 5 {t['recall@5']:.3f}, {t['labels_scored']:.0f} labels "
          f"scored per example ({t['labels_scored'] / t['num_labels']:.1%} of the labels)")
    if "lsh_ms" in t:
      s += f", {t['lsh_ms']:.1f} ms/batch vs exact {t['exact_ms']:.1f}"
    if "training_recall@1" in t:
      s += (f"; training index: recall of top 1 {t['training_recall@1']:.3f} top 5 "
            f"{t['training_recall@5']:.3f}")
  return s


def _read_configs(checkpoint_dir: str) -> tuple[ModelConfig, RunConfig]:
  meta = checkpoint.read_meta(checkpoint_dir)
  if not isinstance(meta.get("model"), dict) or "num_labels" not in meta["model"] \
      or "run" not in meta:
    raise checkpoint.CheckpointError(f"{checkpoint_dir}: not a checkpoint of the XC trainer "
                                     "(python -m jslide.xc train)")
  return (ModelConfig.from_json(meta["model"]),
          run_config.from_json(RunConfig, meta["run"]))


def load_model_config(checkpoint_dir: str) -> ModelConfig:
  """The model config of a checkpoint of this trainer (CheckpointError for another's)."""
  return _read_configs(checkpoint_dir)[0]


def load_model(checkpoint_dir: str):
  """(graphdef, state, model config, run config) from a checkpoint directory."""
  model_cfg, cfg = _read_configs(checkpoint_dir)
  if cfg.row_shards > 1:
    raise checkpoint.CheckpointError(
        f"{checkpoint_dir}: a checkpoint of a run with --row-shards {cfg.row_shards} (its "
        "output layer split by rows); evaluating or predicting from it is not built "
        "(the run's record has its test metrics)")
  graphdef, state, _ = cfg.objective(model_cfg.moment_dtype).train_step(
      model_cfg.build(0), cfg.learning_rate, cfg.rebuild_schedule())
  state, _ = checkpoint.restore_checked(
      checkpoint_dir, state, lambda m: checkpoint.check_same_run(
          checkpoint_dir, m, {"model": model_cfg.to_json()}, RunConfig))
  # A mid-epoch checkpoint may hold rows that catch-up Adam has not brought up to date yet.
  return graphdef, jslide.train.catch_up_train_state(state), model_cfg, cfg


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
  graphdef, state, model_cfg, cfg = load_model(checkpoint_dir)
  _check_dims(data, model_cfg)
  sparse = cfg.objective().uses_index
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
  exact_rank, retrieved = _rankers(graphdef, k, candidates)
  index = None
  if not exact:
    index = _checkpoint_lists(graphdef, state, model_cfg, train_data, fn="predict",
                              max_features=max_features, max_labels=RunConfig.max_labels)
    if index is None:
      index = inference_index(graphdef, state, model_cfg)
    else:
      retrieved = _list_rankers(graphdef, k)
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

