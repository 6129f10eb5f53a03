"""Command line: ``python -m jslide.xc {train,eval,predict} ...``.

    python -m jslide.xc train                       # the bundled WordNet dataset
    python -m jslide.xc train --dataset debian      # the bundled Debian dependency dataset
    python -m jslide.xc train --dense               # the same architecture, dense output layer
    python -m jslide.xc train --train a.txt --test b.txt --ckpt run/ --json run.json
    python -m jslide.xc train --ckpt run/ --resume  # continue exactly where it stopped
    python -m jslide.xc train --processes 2         # data-parallel over 2 local processes
    python -m jslide.xc eval --ckpt run/ --test b.txt
    python -m jslide.xc predict --ckpt run/ --input b.txt --out top5.txt --k 5
"""

from __future__ import annotations

import argparse
import json
import sys

from jslide import datasets as D
from jslide import train as T
from jslide.train import checkpoint, distributed
from jslide.xc import trainer
from jslide.xc.config import ModelConfig, RunConfig


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

  def data_args(q, skip_limits=False):
    q.add_argument("--format", choices=["auto", "xc", "libsvm"], default="auto")
    q.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="use raw feature values (default: log(1+v), unit L2 norm per example)")
    if not skip_limits:  # train takes them from RunConfig
      T.add_arguments(q, RunConfig, skip=[f for f in RunConfig.__dataclass_fields__
                                         if f not in ("max_features", "max_labels")])

  t = sub.add_parser("train", help="train (default data: the bundled WordNet hypernyms)")
  t.add_argument("--dataset", choices=sorted(D.bundled.NAMES), default="wordnet",
                 help="bundled dataset used without --train (default: wordnet)")
  t.add_argument("--train", help="training file (XC repository or multi-label libsvm format)")
  t.add_argument("--test", help="test file, scored at the end of the run (--test-each-eval: "
                                "at every evaluation)")
  t.add_argument("--num-features", type=int, help="feature dimension (libsvm files)")
  t.add_argument("--num-labels", type=int, help="label count (libsvm files)")
  data_args(t, skip_limits=True)
  T.add_arguments(t.add_argument_group("model"), ModelConfig)
  T.add_arguments(t.add_argument_group("run"), RunConfig)
  t.add_argument("--ckpt", help="checkpoint directory (orbax)")
  t.add_argument("--overwrite", action="store_true",
                 help="start a new run in a --ckpt directory that holds another run's "
                      "checkpoints (deletes them)")
  t.add_argument("--resume", action="store_true", help="continue from --ckpt")
  t.add_argument("--json", help="write the run's metrics to this file")
  t.add_argument("--no-progress", dest="progress", action="store_false")
  distributed.add_arguments(t)

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
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parser().parse_args(argv)
  return distributed.command_status(lambda: _run(args, argv))


def _run(args, argv) -> int:
  try:
    if args.command == "train":
      launched = distributed.start(args, "jslide.xc", argv)
      if launched is not None:
        return launched
      train, test = _load_train_test(args)
      model_cfg = T.from_args(ModelConfig, args, num_features=train.num_features,
                              num_labels=train.num_labels)
      cfg = T.from_args(RunConfig, args)
      if distributed.is_primary():
        print(f"data: {train.stats()}")
        print(f"model: {model_cfg} ({cfg.objective()})")
      valid = None
      if cfg.valid_fraction:
        train, valid = train.split(cfg.valid_fraction, seed=0)
      record = trainer.train(train, test, model_cfg, cfg, valid_data=valid,
                             checkpoint_dir=args.ckpt, resume=args.resume,
                             overwrite=args.overwrite, json_path=args.json,
                             progress=args.progress)
      if record.get("interrupted"):
        return 130
    elif args.command == "eval":
      if args.json:
        T.check_writable(args.json)
      dims = trainer.load_model_config(args.ckpt)
      data = (_read(args.test, args.format, dims.num_features, dims.num_labels, args.normalize)
              if args.test else D.bundled.load(args.dataset, "test").normalized())
      train = _lists_training_data(args, dims, bundled=args.dataset if not args.test else None)
      metrics = trainer.evaluate(args.ckpt, data, max_features=args.max_features,
                                 max_labels=args.max_labels, train_data=train)
      print(json.dumps(metrics, indent=2))
      if args.json:
        T.write_json(args.json, metrics)
    else:
      T.check_writable(args.out, "--out")
      dims = trainer.load_model_config(args.ckpt)
      data = _read(args.input, args.format, dims.num_features, dims.num_labels, args.normalize)
      train = (_lists_training_data(args, dims, bundled=args.dataset) if args.via_lsh
               else None)
      n = trainer.predict(args.ckpt, data, args.out, k=args.k, max_features=args.max_features,
                          exact=not args.via_lsh, train_data=train)
      print(f"wrote top-{args.k} labels for {n} inputs to {args.out}")
  except (D.XCFormatError, checkpoint.CheckpointError, T.NonFiniteLossError,
          FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
