"""A retrieval index without a vector database: an extreme classifier whose labels are the
passages (NeuralDB's design, on jslide's machinery).

A query's hashed n-grams (:class:`jslide.retrieval.features.Featurizer`) go through a
:class:`jslide.nn.SparseMLP` whose output layer has one row per passage; the model is
trained on queries made from the passages themselves
(:func:`jslide.retrieval.training_queries.training_queries`) with jslide's active-set loss,
row-sparse gradients and sparse Adam (:func:`jslide.train.make_train_step`,
:func:`jslide.train.fit`). A query is answered by the output layer's k-means inference
index (:meth:`jslide.nn.SparseDense.build_inference_index`): the ``candidates`` passages it
retrieves are rescored exactly and the best per document kept. ``add`` grows the output
layer by the new passages' rows, started from their queries' hidden vectors, and trains
those rows alone on their queries with a replay of the old ones.

An index directory holds versions ``v1``, ``v2``, ... and ``CURRENT`` naming the one in
use: ``save`` writes a new version whole, then switches ``CURRENT`` (an atomic rename), so
an interrupted ``index`` or ``add`` leaves the previous index as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jslide
from jslide import datasets as D
from jslide import optim
from jslide import train as T
from jslide.retrieval.config import IndexConfig, RunConfig
from jslide.retrieval.documents import RANKED, Document, Passage, best_per_document, passages_of
from jslide.retrieval.features import Featurizer, keep_largest, to_xc
from jslide.retrieval.lexical import LexicalIndex, fuse, top
from jslide.retrieval.training_queries import training_queries
from jslide.train import config as run_config

FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Hit:
  """A search result: the document, its best passage's score and text."""

  doc: str
  score: float
  passage: int  # the passage's number in the index
  text: str
  title: str = ""


def _model(cfg: IndexConfig, num_passages: int, seed: int) -> jslide.nn.SparseMLP:
  # As the XC trainer's: a quarter of the active set from the batch's labels, a quarter
  # from the index, the rest random.
  active = min(cfg.active, num_passages)
  return jslide.nn.SparseMLP(cfg.num_features, num_passages, hidden=(cfg.hidden,),
                             active=active, hash_family="cluster",
                             batch_negatives=active // 4, retrieved=active // 4,
                             rngs=nnx.Rngs(seed))


def _loss(first_trained: int = 0):
  """The active-set softmax loss. ``first_trained`` > 0 (``add``): only the output rows of
  passages ``first_trained`` on learn; the encoder and the old rows are held (their logits'
  gradients stopped). Adam moves a row by about the learning rate whenever it is in an
  active set, however small its gradient, so old rows that are only ever negatives would
  lose their common component to the new rows, which would then outscore them on their own
  queries."""

  def forward(m, b, key):
    h = m.encode(b["feat_ids"], b["feat_vals"])
    if not first_trained:
      return m.output(h, b["labels"], key=key)
    logits, ids = m.output(jax.lax.stop_gradient(h), b["labels"], key=key)
    return jnp.where(ids >= first_trained, logits, jax.lax.stop_gradient(logits)), ids

  return jslide.train.active_set_loss(forward)


def _train(model, data: D.XCData, cfg: IndexConfig, run: RunConfig, *, progress: bool,
           first_trained: int = 0):
  """(graphdef, model state) of ``model`` trained on ``data`` as ``run`` says, with its
  training index rebuilt after the last step, and the fit record."""
  graphdef, state, step = jslide.train.make_train_step(
      model, _loss(first_trained), table_tx=optim.sparse_adam(run.learning_rate, catch_up=True),
      dense_tx=optax.adam(run.learning_rate), schedule=run.rebuild_schedule())

  def batches(epoch, start):
    for b in D.batches(data, run.batch_size, max_features=cfg.max_features, max_labels=1,
                       seed=run.seed, epoch=epoch, start_batch=start):
      yield ({"feat_ids": b.feat_ids, "feat_vals": b.feat_vals, "labels": b.labels,
              "mask": b.mask}, int(b.mask.sum()))

  def prepare(s):
    return jslide.train.rebuild_train_state(graphdef, jslide.train.catch_up_train_state(s))

  result = T.fit(state, step, run=run, key=jax.random.key(run.seed),
                 num_batches=D.num_batches(data, run.batch_size), batches=batches,
                 evaluate=lambda s, e: {}, prepare=prepare,
                 meta={"model": cfg.to_json(), "run": run.to_json(), "data": {}},
                 record={}, progress=progress, log=lambda e: None, unit="query")
  trained = result.state.model(graphdef)
  graphdef, mstate = nnx.split(trained)
  return graphdef, mstate, result.record


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _inference_index(graphdef, mstate, tables: int, candidates: int, key):
  model = nnx.merge(graphdef, mstate)
  return model.output.build_inference_index(key, num_hash_tables=tables, candidates=candidates)


def _serving_index(graphdef, mstate, cfg: IndexConfig, num_passages: int, seed: int):
  """The inference index ``search`` reads, over the output layer of ``mstate``."""
  return _inference_index(graphdef, mstate, cfg.inference_tables,
                          min(cfg.candidates, num_passages), jax.random.key(seed))


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _rank(graphdef, mstate, inference, feat_ids, feat_vals, extra_ids, k: int, candidates: int):
  """(scores f32[B, k], passage numbers int32[B, k], the scores f32[B, M] of ``extra_ids``
  int32[B, M]): the k best of the ``candidates`` passages the inference index retrieves,
  rescored exactly (-1 where fewer), and the exact scores of other passages (-inf at -1)."""
  model = nnx.merge(graphdef, mstate)
  h = model.encode(feat_ids, feat_vals)
  scores, ids = model.output.topk(h, k, key=jax.random.key(0), candidates=candidates,
                                  index=inference)
  return scores, ids, model.output.scores(h, extra_ids)


def _examples(passages: list[Passage], featurizer: Featurizer, cfg: IndexConfig, seed: int,
              label_offset: int = 0):
  """(CSR features, labels, the word features they contain) of the training queries of
  ``passages`` (labels counted from ``label_offset``)."""
  texts, labels = training_queries(passages, sentences=cfg.sentences, spans=cfg.spans,
                                   seed=seed)
  feats, words = featurizer.featurize(texts, cfg.max_features)
  return feats, labels + label_offset, np.unique(words.indices)


class Index:
  """A trained retrieval index (:meth:`build`, :meth:`load`); :meth:`search` is safe to call
  from several threads at once (the arrays are never changed; :meth:`add` returns a new
  index)."""

  def __init__(self, cfg: IndexConfig, run: RunConfig, passages: list[Passage], graphdef,
               mstate, inference, seen_words: np.ndarray, record: dict,
               featurizer: Featurizer, lexical: LexicalIndex | None):
    self.cfg, self.run, self.passages = cfg, run, passages
    self._graphdef, self._mstate, self._inference = graphdef, mstate, inference
    self._seen = seen_words  # bool[num_features]: word n-grams of the training queries
    self.record = record
    self.featurizer = featurizer
    self.lexical = lexical  # None where cfg.lexical_weight is 0
    self._doc_ids = sorted({p.doc for p in passages})

  @property
  def num_passages(self) -> int:
    return len(self.passages)

  @property
  def doc_ids(self) -> list[str]:
    return list(self._doc_ids)

  @property
  def candidates(self) -> int:
    return min(self.cfg.candidates, self.num_passages)

  # Building -----------------------------------------------------------------------------

  @classmethod
  def build(cls, docs: list[Document], cfg: IndexConfig = IndexConfig(),
            run: RunConfig = RunConfig(), *, progress: bool = True) -> "Index":
    """An index of ``docs`` (:func:`jslide.retrieval.documents.read_documents`), trained."""
    t0 = time.perf_counter()
    passages = passages_of(docs, cfg.max_words)
    featurizer = Featurizer(cfg.num_features, cfg.char_weight)
    if cfg.idf:  # fitted once: add keeps it, so the trained encoder's inputs keep their scale
      featurizer = featurizer.fit([p.text for p in passages])
    feats, labels, words = _examples(passages, featurizer, cfg, run.seed)
    lexical = _lexical(passages, featurizer, cfg)
    data = to_xc(feats, labels, len(passages))
    t_features = time.perf_counter() - t0
    graphdef, mstate, fit = _train(_model(cfg, len(passages), run.seed), data, cfg, run,
                                   progress=progress)
    t1 = time.perf_counter()
    inference = jax.block_until_ready(
        _serving_index(graphdef, mstate, cfg, len(passages), run.seed))
    seen = np.zeros(cfg.num_features, bool)
    seen[words] = True
    record = {"documents": len(docs), "passages": len(passages),
              "training_queries": len(labels), "features_s": round(t_features, 2),
              "train_s": fit["evals"][-1]["train_s"] if fit.get("evals") else None,
              "inference_index_s": round(time.perf_counter() - t1, 2),
              "build_s": round(time.perf_counter() - t0, 2), "steps": _steps(fit)}
    return cls(cfg, run, passages, graphdef, mstate, inference, seen, record, featurizer,
               lexical)

  def add(self, docs: list[Document], run: RunConfig | None = None, *,
          progress: bool = True) -> "Index":
    """A new index with ``docs`` added: the output layer grows by their passages' rows
    (started by :func:`_imprint`), and those rows alone learn (the encoder and the old rows
    held, :func:`_loss`, so the old passages keep their ranking) from the new passages'
    queries plus ``run.add_replay`` times as many of the old passages' (which keep the new
    rows off the old queries). Words no indexed passage had keep their initial, untrained
    input rows until the index is rebuilt. ValueError for an id already indexed."""
    run = run or self.run
    known = set(self._doc_ids)
    for doc in docs:
      if doc.id in known:
        raise ValueError(f"document id {doc.id!r} is already in the index; ids must be new "
                         "(rebuild the index to change a document)")
    t0 = time.perf_counter()
    cfg, old_n = self.cfg, self.num_passages
    new_passages = passages_of(docs, cfg.max_words)
    feats, labels, words = _examples(new_passages, self.featurizer, cfg, run.seed + old_n,
                                     label_offset=old_n)
    replay = _replay(self.passages, int(round(run.add_replay * len(new_passages))), run.seed)
    if replay:
      r_feats, r_labels, _ = _examples([self.passages[i] for i in replay], self.featurizer,
                                       cfg, run.seed + 1)
      import scipy.sparse as sp
      feats = sp.vstack([feats, r_feats]).tocsr()
      labels = np.concatenate([labels, np.asarray(replay, np.int32)[r_labels]])
    passages = self.passages + new_passages
    data = to_xc(feats, labels, len(passages))
    model = _grown(self._graphdef, self._mstate, cfg, len(passages), run.seed)
    _imprint(model, data, old_n, cfg.max_features)
    graphdef, mstate, fit = _train(model, data, cfg, dataclasses.replace(
        run, epochs=run.add_epochs), progress=progress, first_trained=old_n)
    inference = jax.block_until_ready(
        _serving_index(graphdef, mstate, cfg, len(passages), run.seed))
    seen = self._seen.copy()
    seen[words] = True
    record = {**self.record, "add": {
        "documents": len(docs), "passages": len(new_passages),
        "training_queries": len(labels), "replayed_passages": len(replay),
        "steps": _steps(fit), "add_s": round(time.perf_counter() - t0, 2)}}
    record["documents"] = self.record.get("documents", 0) + len(docs)
    record["passages"] = len(passages)
    lexical = self.lexical and self.lexical.grown(
        self.featurizer.featurize([p.text for p in new_passages])[0])
    return Index(cfg, run, passages, graphdef, mstate, inference, seen, record, self.featurizer,
                 lexical)

  def with_lexical_weight(self, weight: float) -> "Index":
    """This index searching with another ``lexical_weight`` (0: the model alone); the
    lexical index is built if it had none. The model is shared, not copied."""
    cfg = dataclasses.replace(self.cfg, lexical_weight=weight)  # checks the weight
    lexical = None if weight == 0 else (self.lexical or _lexical(self.passages,
                                                                 self.featurizer, cfg))
    return Index(cfg, self.run, self.passages, self._graphdef, self._mstate, self._inference,
                 self._seen, self.record, self.featurizer, lexical)

  # Searching ----------------------------------------------------------------------------

  def _known(self, words) -> np.ndarray:
    """bool[n]: whether each text, by its word counts (:meth:`Featurizer.featurize`), has a
    word (or word pair) of the indexed passages' training queries."""
    return np.array([self._seen[words.indices[words.indptr[i]:words.indptr[i + 1]]].any()
                     for i in range(words.shape[0])], bool)

  def search_many(self, queries: list[str], k: int = 10, *,
                  strict: bool = True) -> list[list[Hit]]:
    """The ``k`` best documents for each query (its best passage each), best first. A query
    with no word of the indexed passages is refused (ValueError), or with ``strict=False``
    answered with no documents."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= RANKED:
      raise ValueError(f"search: k must be an int in [1, {RANKED}], got {k!r}")
    queries = [queries] if isinstance(queries, str) else list(queries)
    for q in queries:
      if not isinstance(q, str) or not q.strip():
        raise ValueError(f"search: a query must be a non-empty string, got {q!r}")
    if not queries:
      return []
    full, words = self.featurizer.featurize(queries)
    known = self._known(words)
    if strict and not known.all():
      raise ValueError(f"query {queries[int(np.argmin(known))]!r} has no word of the indexed "
                       "passages")
    feats = keep_largest(full, self.cfg.max_features)
    b = D.make_batch(to_xc(feats, None, self.num_passages), np.arange(len(queries)),
                     len(queries), self.cfg.max_features, 1)
    ranked = min(RANKED, self.candidates)
    lexical = self.lexical.scores(full) if self.lexical is not None else None
    lexical_ids = (top(lexical, ranked) if lexical is not None
                   else np.zeros((len(queries), 0), np.int32))
    scores, ids, lexical_ids_scores = jax.device_get(_rank(
        self._graphdef, self._mstate, self._inference, jnp.asarray(b.feat_ids),
        jnp.asarray(b.feat_vals), jnp.asarray(lexical_ids), ranked, self.candidates))
    out = []
    for row, ok in enumerate(known):
      row_ids, row_scores = ids[row], scores[row]
      if lexical is not None:  # both halves' best, each scored by both
        both = np.concatenate([row_ids, lexical_ids[row]])
        row_ids, row_scores = fuse(
            both, np.concatenate([row_scores, lexical_ids_scores[row]]),
            lexical[row][np.maximum(both, 0)], self.cfg.lexical_weight)
      best = best_per_document(self.passages, row_ids, k) if ok else []
      score = dict(zip(row_ids.tolist(), row_scores.tolist()))
      out.append([Hit(self.passages[i].doc, score[i], i, self.passages[i].text,
                      self.passages[i].title) for i in best])
    return out

  def search(self, query: str, k: int = 10, *, strict: bool = True) -> list[Hit]:
    """The ``k`` best documents for ``query``, best first (:meth:`search_many`)."""
    return self.search_many([query], k, strict=strict)[0]

  # Files --------------------------------------------------------------------------------

  def save(self, directory: str) -> str:
    """Writes this index as a new version of ``directory`` and makes it current (the
    previous version is kept until the next save); returns the version's path."""
    import orbax.checkpoint as ocp
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    version = _current_number(directory) + 1
    tmp = os.path.join(directory, f".v{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "passages.jsonl"), "w", encoding="utf-8") as f:
      for p in self.passages:
        f.write(json.dumps({"doc": p.doc, "title": p.title, "text": p.text},
                           ensure_ascii=False) + "\n")
    np.save(os.path.join(tmp, "seen_words.npy"), np.packbits(self._seen))
    if self.lexical is not None:
      self.lexical.save(os.path.join(tmp, "lexical.npz"))
    if self.featurizer.idf is not None:
      np.savez(os.path.join(tmp, "idf.npz"), words=self.featurizer.idf[0],
               chars=self.featurizer.idf[1])
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(tmp, "state"), {"model": nnx.to_pure_dict(self._mstate),
                                           "inference": self._inference})
    ckpt.wait_until_finished()
    with open(os.path.join(tmp, "index.json"), "w") as f:  # last: a version is whole
      json.dump({"format": FORMAT, "index": self.cfg.to_json(), "run": self.run.to_json(),
                 "passages": self.num_passages, "record": self.record}, f, indent=1)
    final = os.path.join(directory, f"v{version}")
    os.replace(tmp, final)
    with open(os.path.join(directory, "CURRENT.tmp"), "w") as f:
      f.write(f"v{version}\n")
    os.replace(os.path.join(directory, "CURRENT.tmp"), os.path.join(directory, "CURRENT"))
    for name in os.listdir(directory):  # older versions than the previous one
      if 0 < _version_number(name) < version - 1:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    return final

  @classmethod
  def load(cls, directory: str) -> "Index":
    """The current version of an index directory (ValueError if there is none)."""
    import orbax.checkpoint as ocp
    path = current_version(directory)
    with open(os.path.join(path, "index.json")) as f:
      meta = json.load(f)
    if meta.get("format") != FORMAT:
      raise ValueError(f"{directory}: an index of format {meta.get('format')}, this jslide "
                       f"reads format {FORMAT}")
    cfg = run_config.from_json(IndexConfig, meta["index"],
                               old={"idf": False, "lexical_weight": 0.0})
    run = run_config.from_json(RunConfig, meta["run"])
    with open(os.path.join(path, "passages.jsonl"), encoding="utf-8") as f:
      passages = [Passage(r["doc"], r["text"], r["title"]) for r in map(json.loads, f)]
    seen = np.unpackbits(np.load(os.path.join(path, "seen_words.npy")))[:cfg.num_features]
    featurizer = Featurizer(cfg.num_features, cfg.char_weight)
    if cfg.idf:
      with np.load(os.path.join(path, "idf.npz")) as f:
        featurizer = dataclasses.replace(featurizer, idf=(f["words"], f["chars"]))
    graphdef, abstract_model = nnx.split(nnx.eval_shape(
        lambda: _model(cfg, len(passages), run.seed)))
    abstract_inf = jax.eval_shape(
        lambda m: _serving_index(graphdef, m, cfg, len(passages), 0), abstract_model)
    target = {"model": nnx.to_pure_dict(abstract_model), "inference": abstract_inf}
    restored = ocp.StandardCheckpointer().restore(os.path.join(path, "state"), target)
    nnx.replace_by_pure_dict(abstract_model, restored["model"])
    lexical = (LexicalIndex.load(os.path.join(path, "lexical.npz"))
               if cfg.lexical_weight > 0 else None)
    return cls(cfg, run, passages, graphdef, abstract_model, restored["inference"],
               seen.astype(bool), meta.get("record", {}), featurizer, lexical)


def _lexical(passages: list[Passage], featurizer: Featurizer,
             cfg: IndexConfig) -> LexicalIndex | None:
  """The lexical index of ``passages`` (every feature of each), None if it has no weight."""
  if cfg.lexical_weight == 0:
    return None
  return LexicalIndex(featurizer.featurize([p.text for p in passages])[0])


def _steps(fit: dict) -> int:
  return int(fit["evals"][-1]["step"]) if fit.get("evals") else 0


def _replay(passages: list[Passage], count: int, seed: int) -> list[int]:
  """``count`` old passage numbers (without repeats while possible) to replay in ``add``."""
  if count <= 0 or not passages:
    return []
  rng = np.random.default_rng([seed, 7])
  return sorted(rng.choice(len(passages), min(count, len(passages)), replace=False).tolist())


def _grown(graphdef, mstate, cfg: IndexConfig, num_passages: int, seed: int):
  """A model over ``num_passages`` passages holding the trained one's weights: the input
  and hidden layers as they are, the old passages' output rows and biases, new rows freshly
  initialized; the training index built over all rows."""
  # Copies: training donates the new model's buffers, and the old index stays usable.
  old = nnx.merge(graphdef, jax.tree.map(jnp.copy, mstate))
  new = _model(cfg, num_passages, seed + 1)
  new.input.kernel.set_value(old.input.kernel.get_value())
  new.input.bias.set_value(old.input.bias.get_value())
  for a, b in zip(new.hidden, old.hidden):
    nnx.update(a, nnx.state(b))
  n = old.output.out_features
  new.output.kernel.set_value(new.output.kernel.get_value().at[:n].set(
      old.output.kernel.get_value()))
  new.output.bias.set_value(new.output.bias.get_value().at[:n].set(old.output.bias.get_value()))
  new.output.rebuild_index()
  return new


def _imprint(model, data: D.XCData, first: int, max_features: int) -> None:
  """Starts the output rows of passages ``first`` on from their training queries in
  ``data`` (weight imprinting, Qi et al. 2018), and rebuilds the training index.

  A new row is the old rows' mean plus its queries' mean hidden vector less that of every
  query in ``data``, scaled to the old rows' spread about their mean; its bias the old
  biases' mean. A fresh random row has a third of a trained row's norm: its MIPS key lies
  apart from the trained rows', so the inference index never retrieves it. A row at the
  raw mean of its queries' (non-negative, ReLU) hidden vectors points where every query
  points, and outscores the old rows on their own queries."""
  labels = data.label_ids
  n_new, width = model.output.out_features - first, model.output.in_features
  sums, counts = np.zeros((n_new, width)), np.zeros(n_new)
  total = np.zeros(width)
  for start in range(0, len(labels), 1024):
    part = np.arange(start, min(start + 1024, len(labels)))
    b = D.make_batch(data, part, len(part), max_features, 1)
    h = np.asarray(model.encode(jnp.asarray(b.feat_ids), jnp.asarray(b.feat_vals)), np.float64)
    total += h.sum(0)
    new = labels[part] >= first
    np.add.at(sums, labels[part][new] - first, h[new])
    np.add.at(counts, labels[part][new] - first, 1)
  means = sums / np.maximum(counts, 1)[:, None] - total / max(len(labels), 1)
  means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
  kernel, bias = model.output.kernel.get_value(), model.output.bias.get_value()
  old = np.asarray(kernel[:first], np.float64)
  center = old.mean(0)
  spread = np.linalg.norm(old - center, axis=1).mean()
  rows = jnp.asarray(center + spread * means, jnp.float32)
  fresh = counts > 0  # a passage without queries keeps its random row
  model.output.kernel.set_value(kernel.at[first:].set(
      jnp.where(fresh[:, None], rows, kernel[first:]).astype(kernel.dtype)))
  model.output.bias.set_value(bias.at[first:].set(jnp.where(fresh, jnp.mean(bias[:first]),
                                                            bias[first:])))
  model.output.rebuild_index()


def _current_number(directory: str) -> int:
  try:
    with open(os.path.join(directory, "CURRENT")) as f:
      name = f.read().strip()
  except FileNotFoundError:
    return max(map(_version_number, os.listdir(directory)), default=0)
  return _version_number(name)


def _version_number(name: str) -> int:
  """N of a version folder's name ``vN``; 0 for any other name (ASCII digits only:
  ``str.isdigit`` also accepts digits ``int`` refuses)."""
  digits = name[1:]
  return int(digits) if name.startswith("v") and digits.isascii() and digits.isdigit() else 0


def current_version(directory: str) -> str:
  """The path of the version ``CURRENT`` names (ValueError when there is no index)."""
  try:
    with open(os.path.join(directory, "CURRENT")) as f:
      name = f.read().strip()
  except OSError:
    raise ValueError(f"{directory}: no index here (no CURRENT file); build one with "
                     "python -m jslide.retrieval index DOCS --out DIR") from None
  path = os.path.join(directory, name)
  if not os.path.isfile(os.path.join(path, "index.json")):
    raise ValueError(f"{directory}: CURRENT names {name!r}, which is not a whole index")
  return path
