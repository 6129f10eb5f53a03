"""Command line: ``python -m jslide.xc {train,eval,predict} ...``.

    python -m jslide.xc train                       # the bundled WordNet dataset
    python -m jslide.xc train --dataset debian      # the bundled Debian dependency dataset
    python -m jslide.xc train --dense               # the same architecture, dense output layer
    python -m jslide.xc train --train a.txt --test b.txt --ckpt run/ --json run.json
    python -m jslide.xc train --ckpt run/ --resume  # continue exactly where it stopped
    python -m jslide.xc eval --ckpt run/ --test b.txt
    python -m jslide.xc predict --ckpt run/ --input b.txt --out top5.txt --k 5
"""

from __future__ import annotations

import argparse
import json
import sys

from jslide import datasets as D
from jslide.lsh import STRATEGIES
from jslide.nn.sparse_dense import HASH_FAMILIES
from jslide.xc import checkpoint, trainer
from jslide.xc.config import ModelConfig, TrainConfig


def _read(path, fmt, num_features=None, num_labels=None, normalize=True):
  data = D.read(path, fmt=fmt, num_features=num_features, num_labels=num_labels)
  return data.normalized() if normalize else data


def _load_train_test(args):
  if args.train:
    train = _read(args.train, args.format, args.num_features, args.num_labels, args.normalize)
    test = None
    if args.test:
      test = _read(args.test, args.format, train.num_features, train.num_labels, args.normalize)
    return train, test
  if args.test:
    raise SystemExit("--test needs --train (or neither, for a bundled dataset)")
  norm = (lambda d: d.normalized()) if args.normalize else (lambda d: d)
  return norm(D.bundled.load(args.dataset, "train")), norm(D.bundled.load(args.dataset, "test"))


def _lists_training_data(args, dims: ModelConfig, bundled: str | None):
  """The training set that eval / predict build a checkpoint's neuron lists from: --train,
  else the bundled dataset's training split; None when the model has no lists (or neither
  is given: the trainer then says what is missing)."""
  if not dims.inference_lists:
    return None
  if args.train:
    return _read(args.train, args.format, dims.num_features, dims.num_labels, args.normalize)
  if bundled:
    train = D.bundled.load(bundled, "train")
    return train.normalized() if args.normalize else train
  return None


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jslide.xc", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)

  def data_args(q):
    q.add_argument("--format", choices=["auto", "xc", "libsvm"], default="auto")
    q.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="use raw feature values (default: log(1+v), unit L2 norm per example)")
    q.add_argument("--max-features", type=int, default=64, help="features kept per example")
    q.add_argument("--max-labels", type=int, default=8, help="labels kept per example")

  t = sub.add_parser("train", help="train (default data: the bundled WordNet hypernyms)")
  t.add_argument("--dataset", choices=sorted(D.bundled.NAMES), default="wordnet",
                 help="bundled dataset used without --train (default: wordnet)")
  t.add_argument("--train", help="training file (XC repository or multi-label libsvm format)")
  t.add_argument("--test", help="test file, evaluated after every epoch")
  t.add_argument("--num-features", type=int, help="feature dimension (libsvm files)")
  t.add_argument("--num-labels", type=int, help="label count (libsvm files)")
  data_args(t)
  d = ModelConfig(num_features=0, num_labels=0)
  tc = TrainConfig()
  t.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden))
  t.add_argument("--budget", type=int, default=d.budget, help="active output neurons per example")
  t.add_argument("--candidates", type=int, default=d.candidates,
                 help="labels retrieved and rescored per example at inference through the index "
                      "(default: the budget, at most 5%% of the labels)")
  t.add_argument("--inference-tables", type=int, default=d.inference_tables,
                 help="k-means tables of the index built for inference (0: use the training "
                      "index)")
  t.add_argument("--inference-hashes", type=int, default=d.inference_hashes,
                 help="K of the inference index, 2^K buckets a table (default: the training "
                      "index's)")
  t.add_argument("--inference-lists", type=int, default=d.inference_lists,
                 help="regions of the hidden space whose neuron lists the trainer's sparse "
                      "inference reads (0: the k-means index)")
  t.add_argument("--inference-probes", type=int, default=d.inference_probes,
                 help="neuron lists each example reads")
  t.add_argument("--hash", dest="hash_family", choices=list(HASH_FAMILIES),
                 default=d.hash_family)
  t.add_argument("--num-hashes", type=int, default=d.num_hashes,
                 help="K: hashes per table (cluster: 2^K buckets); default per family")
  t.add_argument("--num-tables", type=int, default=d.num_tables,
                 help="L: hash tables; default per family")
  t.add_argument("--bin-size", type=int, default=d.bin_size, help="DWTA bin size")
  t.add_argument("--strategy", choices=sorted(STRATEGIES), default=d.strategy,
                 help="retrieval strategy (default: ranked for --hash cluster, else vanilla)")
  t.add_argument("--fill-group", type=int, default=d.fill_group,
                 help="consecutive examples sharing one random fill (shared negatives)")
  t.add_argument("--max-retrieved", type=int, default=d.max_retrieved,
                 help="of the budget, ids taken from the index at most, the rest random "
                      "(default: budget/4)")
  t.add_argument("--batch-negatives", type=int, default=d.batch_negatives,
                 help="of the budget, slots for other labels of the batch (default: budget/4)")
  t.add_argument("--param-dtype", choices=["float32", "bfloat16"], default=d.param_dtype,
                 help="dtype of the input and output tables (bfloat16: half the memory "
                      "traffic; updates rounded stochastically)")
  t.add_argument("--moment-dtype", choices=["float32", "bfloat16"], default=d.moment_dtype,
                 help="dtype of the tables' Adam moments (default float32)")
  t.add_argument("--epochs", type=int, default=tc.epochs)
  t.add_argument("--valid-fraction", type=float, default=0.1,
                 help="training examples held out to select the best epoch (0: none)")
  t.add_argument("--batch-size", type=int, default=tc.batch_size)
  t.add_argument("--lr", type=float, default=tc.learning_rate)
  t.add_argument("--loss", choices=["softmax", "bce"], default=tc.loss)
  t.add_argument("--dense", action="store_true", help="dense output layer baseline")
  t.add_argument("--sampled", type=int, default=0, metavar="S",
                 help="sampled-softmax baseline: the batch's labels plus S uniform labels "
                      "shared by the batch, plain JAX gathers, optax.adam on everything")
  t.add_argument("--lazy-adam", dest="catch_up", action="store_false",
                 help="lazy Adam for tables (default: catch-up Adam, equal to dense Adam)")
  t.add_argument("--rebuild-initial", type=int, default=tc.rebuild_initial)
  t.add_argument("--rebuild-growth", type=float, default=tc.rebuild_growth)
  t.add_argument("--rebuild-max", type=int, default=tc.rebuild_max)
  t.add_argument("--seed", type=int, default=tc.seed)
  t.add_argument("--ckpt", help="checkpoint directory (orbax)")
  t.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps")
  t.add_argument("--overwrite", action="store_true",
                 help="start a new run in a --ckpt directory that holds another run's "
                      "checkpoints (deletes them)")
  t.add_argument("--resume", action="store_true", help="continue from --ckpt")
  t.add_argument("--json", help="write the run's metrics to this file")
  t.add_argument("--no-progress", dest="progress", action="store_false")

  e = sub.add_parser("eval", help="P@k and nDCG@k of a checkpoint")
  e.add_argument("--ckpt", required=True)
  e.add_argument("--test", help="default: the test split of the bundled --dataset")
  e.add_argument("--dataset", choices=sorted(D.bundled.NAMES), default="wordnet")
  e.add_argument("--train", help="training file, for a model trained with --inference-lists "
                                 "(its neuron lists are built from it; default: the bundled "
                                 "--dataset's, when --test is not given)")
  e.add_argument("--json")
  data_args(e)

  r = sub.add_parser("predict", help="top-k labels per input line")
  r.add_argument("--ckpt", required=True)
  r.add_argument("--input", required=True)
  r.add_argument("--out", required=True)
  r.add_argument("--k", type=int, default=5)
  r.add_argument("--via-lsh", action="store_true", help="retrieve candidates with the index")
  r.add_argument("--train", help="training file, for --via-lsh with a model trained with "
                                 "--inference-lists (its neuron lists are built from it)")
  r.add_argument("--dataset", choices=sorted(D.bundled.NAMES),
                 help="a bundled dataset whose training split stands for --train")
  data_args(r)
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "train":
      train, test = _load_train_test(args)
      model_cfg = ModelConfig(
          train.num_features, train.num_labels, hidden=tuple(args.hidden), budget=args.budget,
          hash_family=args.hash_family, num_hashes=args.num_hashes, num_tables=args.num_tables,
          bin_size=args.bin_size, strategy=args.strategy, fill_group=args.fill_group,
          batch_negatives=args.batch_negatives, max_retrieved=args.max_retrieved,
          param_dtype=args.param_dtype, moment_dtype=args.moment_dtype,
          candidates=args.candidates, inference_tables=args.inference_tables,
          inference_hashes=args.inference_hashes, inference_lists=args.inference_lists,
          inference_probes=args.inference_probes)
      cfg = TrainConfig(
          epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, loss=args.loss,
          dense=args.dense, sampled=args.sampled, catch_up=args.catch_up,
          rebuild_initial=args.rebuild_initial,
          rebuild_growth=args.rebuild_growth, rebuild_max=args.rebuild_max,
          max_features=args.max_features, max_labels=args.max_labels, seed=args.seed,
          checkpoint_every=args.ckpt_every)
      print(f"data: {train.stats()}")
      kind = (" (dense output layer)" if args.dense else
              f" (sampled softmax, {args.sampled} shared labels)" if args.sampled else "")
      print(f"model: {model_cfg}{kind}")
      valid = None
      if args.valid_fraction:
        train, valid = train.split(args.valid_fraction, seed=0)
      trainer.train(train, test, model_cfg, cfg, valid_data=valid, checkpoint_dir=args.ckpt,
                    resume=args.resume, overwrite=args.overwrite, json_path=args.json,
                    progress=args.progress)
    elif args.command == "eval":
      meta = checkpoint.read_meta(args.ckpt)
      dims = ModelConfig.from_json(meta["model"])
      data = (_read(args.test, args.format, dims.num_features, dims.num_labels, args.normalize)
              if args.test else D.bundled.load(args.dataset, "test").normalized())
      train = _lists_training_data(args, dims, bundled=args.dataset if not args.test else None)
      metrics = trainer.evaluate(args.ckpt, data, max_features=args.max_features,
                                 max_labels=args.max_labels, train_data=train)
      print(json.dumps(metrics, indent=2))
      if args.json:
        with open(args.json, "w") as f:
          json.dump(metrics, f, indent=2)
    else:
      meta = checkpoint.read_meta(args.ckpt)
      dims = ModelConfig.from_json(meta["model"])
      data = _read(args.input, args.format, dims.num_features, dims.num_labels, args.normalize)
      train = (_lists_training_data(args, dims, bundled=args.dataset) if args.via_lsh
               else None)
      n = trainer.predict(args.ckpt, data, args.out, k=args.k, max_features=args.max_features,
                          exact=not args.via_lsh, train_data=train)
      print(f"wrote top-{args.k} labels for {n} inputs to {args.out}")
  except (D.XCFormatError, checkpoint.CheckpointError, trainer.NonFiniteLossError,
          FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
