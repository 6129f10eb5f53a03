"""A word-level language model on real English text, three softmax heads on the same trunk.

The corpus is GCIDE (about 4.4 million training words; Debian's ``dict-gcide`` installs it;
:mod:`jslide.datasets.build_gcide` turns it into text files). Each run trains the same
transformer (d=256, 2 layers, 4 heads, context 64, vocabulary 50,000) for the same training
time, with the jslide LSH head, plain-JAX sampled softmax (1,024 log-uniform negatives, logQ
correction) and the full softmax; validation perplexity is always the exact full softmax.
It prints a table and writes one JSON record per run and a plot of perplexity against time.

    apt-get install dict-gcide
    python examples/lm_gcide.py --seconds 300 --out results/lm_gcide

``--ffn sparse`` runs the same comparison with SparseFFN blocks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from jslide.nn.transformer import FFN_KINDS


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", default="data/gcide", help="where the corpus text files go")
  p.add_argument("--out", default="results/lm_gcide")
  p.add_argument("--seconds", type=float, default=300.0, help="training time per run")
  p.add_argument("--heads", default="lsh,sampled,full")
  p.add_argument("--ffn", choices=FFN_KINDS, default="dense")
  p.add_argument("--hidden", type=int, default=1024)
  args = p.parse_args(argv)
  train_txt = os.path.join(args.data, "gcide_train.txt")
  valid_txt = os.path.join(args.data, "gcide_valid.txt")
  if not os.path.exists(train_txt):
    subprocess.run([sys.executable, "-m", "jslide.datasets.build_gcide", "--out", args.data],
                   check=True)
  os.makedirs(args.out, exist_ok=True)
  records = []
  for head in args.heads.split(","):
    path = os.path.join(args.out, f"{head}_{args.ffn}.json")
    subprocess.run([sys.executable, "-m", "jslide.lm", "train", "--train", train_txt,
                    "--valid", valid_txt, "--head", head, "--ffn", args.ffn,
                    "--hidden", str(args.hidden), "--time-limit", str(args.seconds),
                    "--eval-every", "0", "--eval-seconds", str(args.seconds / 4),
                    "--max-eval-tokens", "16384", "--json", path, "--no-progress"], check=True)
    records.append(path)
  subprocess.run([sys.executable, "-m", "jslide.lm", "plot", *records, "--out",
                  os.path.join(args.out, f"perplexity_{args.ffn}.png")], check=False)
  import json
  loaded = [json.load(open(path)) for path in records]
  runs = {r["model"]["head"]: r for r in loaded}
  print(f"\n| head ({args.ffn} FFN) | ms/step | tokens in {args.seconds:.0f} s | "
        "valid ppl | train ppl |")
  print("|---|---:|---:|---:|---:|")
  for head, r in runs.items():
    e = r["evals"][-1]
    print(f"| {head} | {r['step_ms']} | {e['tokens']:,} | {e['valid_ppl']:.1f} | "
          f"{e['train_ppl']:.1f} |")
  if "full" in runs and "lsh" in runs:
    # The same number of tokens as the full softmax saw in its time.
    steps = runs["full"]["evals"][-1]["step"]
    path = os.path.join(args.out, f"lsh_{args.ffn}_same_tokens.json")
    subprocess.run([sys.executable, "-m", "jslide.lm", "train", "--train", train_txt,
                    "--valid", valid_txt, "--head", "lsh", "--ffn", args.ffn,
                    "--hidden", str(args.hidden), "--max-steps", str(steps), "--eval-every",
                    str(steps), "--max-eval-tokens", "16384", "--json", path, "--no-progress"],
                   check=True)
    same = json.load(open(path))["evals"][-1]
    full = runs["full"]["evals"][-1]
    print(f"\nafter the same {full['tokens']:,} tokens: lsh {same['valid_ppl']:.1f}, full "
          f"{full['valid_ppl']:.1f} ({same['valid_ppl'] / full['valid_ppl'] - 1:+.1%})")


if __name__ == "__main__":
  main()
