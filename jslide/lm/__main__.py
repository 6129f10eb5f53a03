"""``python -m jslide.lm``: train, evaluate, sample from and plot word-level language models.

    python -m jslide.lm train --train T.txt --valid V.txt [--preset 1b] [--head lsh|sampled|full]
        [--ffn sparse|block|dense] [--vocab-size N] [--json PATH] [--ckpt DIR [--resume]]
        [--processes N | --coordinator HOST:PORT --num-processes N --process-id I | --cluster]
    python -m jslide.lm eval --ckpt DIR --valid V.txt
    python -m jslide.lm generate --ckpt DIR --prompt "the word" [--words 20]
    python -m jslide.lm plot RUN.json [RUN.json ...] --out FIG.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time

from jslide import train as T
from jslide.train import distributed
from jslide.lm.config import ModelConfig, RunConfig
from jslide.lm.presets import PRESETS


def _train_parser(sub):
  p = sub.add_parser("train", help="train a model")
  p.add_argument("--train", required=True, help="UTF-8 text file to train on")
  p.add_argument("--valid", required=True, help="UTF-8 text file for validation perplexity")
  p.add_argument("--preset", choices=sorted(PRESETS),
                 help="named settings (jslide.lm.presets); options given here override them")
  T.add_arguments(p.add_argument_group("model"), ModelConfig)
  T.add_arguments(p.add_argument_group("run"), RunConfig)
  p.add_argument("--json", help="write the run's record (evaluations, speed) here")
  p.add_argument("--ckpt", help="save checkpoints (orbax) in this directory")
  p.add_argument("--resume", action="store_true", help="continue the checkpoint in --ckpt")
  p.add_argument("--overwrite", action="store_true",
                 help="delete another run's checkpoints in --ckpt")
  p.add_argument("--no-progress", dest="progress", action="store_false",
                 help="no progress bar")
  distributed.add_arguments(p)
  return p


def _train(args) -> int | None:
  launched = distributed.start(args, "jslide.lm", args.argv)
  if launched is not None:
    return launched
  from jslide.lm import trainer
  cfg, run = T.from_args(ModelConfig, args), T.from_args(RunConfig, args)
  record = trainer.train(args.train, args.valid, cfg, run, json_path=args.json,
                         progress=args.progress, ckpt=args.ckpt, resume=args.resume,
                         overwrite=args.overwrite)
  if record.get("interrupted"):
    return 130
  if not distributed.is_primary():
    return 0
  last = record["evals"][-1]
  print(f"{cfg.head} head, {cfg.ffn} FFN: valid perplexity {last['valid_ppl']:.2f} after "
        f"{last['tokens']:,} tokens, {last['train_s']:.1f} s of training "
        f"({record.get('step_ms', float('nan'))} ms/step)")


def _eval(args) -> None:
  from jslide.lm import corpus, trainer
  cfg, run, vocab, graphdef, state = trainer.load(args.ckpt)
  wins = trainer.validation_windows(corpus.token_ids(args.valid, vocab), cfg, run, args.valid,
                                    args.max_eval_tokens)
  if args.exact_ffn:
    run = dataclasses.replace(run, eval_exact_ffn=True)
  out = trainer.evaluate(graphdef, state, cfg, run, wins)  # what the trainer reports
  out["tokens"] = int(wins[:, 1:].size)
  print(json.dumps(out))


def _generate(args) -> None:
  for name, value, ok in (("--words", args.words, args.words >= 0),
                          ("--top-k", args.top_k, args.top_k >= 1),
                          ("--temperature", args.temperature,
                           math.isfinite(args.temperature) and args.temperature > 0)):
    if not ok:
      raise ValueError(f"{name} must be {'>= 0' if name == '--words' else '> 0'}, got {value}")
  from jslide.lm import trainer
  from jslide.lm.vocab import tokenize
  cfg, _, vocab, graphdef, state = trainer.load(args.ckpt)
  words = [w for w in tokenize(args.prompt) if w != "<eos>"]
  if not words:
    raise ValueError("--prompt has no words")
  print(" ".join(words), end="", flush=True)
  # Each word is printed as it is made: a long generation shows its progress.
  times = [time.perf_counter()]
  for word in trainer.generate(graphdef, state, cfg, vocab.encode(words), args.words,
                               pad_id=vocab.ids.get("<eos>", 0), top_k=args.top_k,
                               temperature=args.temperature, seed=args.seed,
                               exact=args.exact):
    times.append(time.perf_counter())
    print(" " + vocab.decode([word])[0], end="", flush=True)
  print()
  if len(times) > 2:  # the first word compiles the step: the rate is of the others
    rate = (len(times) - 2) / max(times[-1] - times[1], 1e-9)
    print(f"{rate:.1f} words/s ({'every FFN neuron and word' if args.exact else 'sparse'})",
          file=sys.stderr)


def _plot(args) -> None:
  try:
    import matplotlib  # noqa: F401
  except ImportError:
    raise SystemExit("plot needs matplotlib: pip install 'jslide[plot]'") from None
  from jslide.lm.plot import plot_perplexity
  records = []
  for path in args.runs:
    with open(path) as f:
      records.append(json.load(f))
  plot_perplexity(records, args.out)
  print(f"wrote {args.out}")


def parse_args(argv=None) -> argparse.Namespace:
  """The command line, with ``train --preset NAME``'s settings for the options not given."""
  parser = argparse.ArgumentParser(prog="python -m jslide.lm", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  train_parser = _train_parser(sub)
  p = sub.add_parser("eval", help="validation perplexity of a checkpoint")
  p.add_argument("--ckpt", required=True)
  p.add_argument("--valid", required=True)
  p.add_argument("--max-eval-tokens", type=int, default=RunConfig.max_eval_tokens)
  p.add_argument("--exact-ffn", action="store_true",
                 help="also the perplexity with every FFN neuron computed, even where the "
                      "run skipped it (--no-eval-exact-ffn)")
  p = sub.add_parser("generate", help="continue a prompt")
  p.add_argument("--ckpt", required=True)
  p.add_argument("--prompt", required=True)
  p.add_argument("--words", type=int, default=20)
  p.add_argument("--top-k", type=int, default=10)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--exact", action="store_true",
                 help="compute every FFN neuron and score every word (the dense model)")
  p = sub.add_parser("plot", help="validation perplexity against training time")
  p.add_argument("runs", nargs="+", help="JSON records written by train --json")
  p.add_argument("--out", required=True)
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  if args.command == "train" and args.preset:
    train_parser.set_defaults(**PRESETS[args.preset])  # the command line still wins
    args = parser.parse_args(argv)
  args.argv = argv  # what --processes launches again
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  return distributed.command_status(lambda: _run(args))


def _run(args) -> int:
  try:
    code = {"train": _train, "eval": _eval, "generate": _generate,
            "plot": _plot}[args.command](args)
  except (ValueError, T.CheckpointError, T.NonFiniteLossError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  return code or 0


if __name__ == "__main__":
  sys.exit(main())
