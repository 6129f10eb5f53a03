"""The benchmark report: runs the benchmarks and the trainers' comparisons, and writes
``docs/benchmarks.md`` with their tables and plots, stamped with the machine, its CPU
features, the package versions, the commit and the date.

Sections, each a command of its own run here in a fresh process (its JSON kept in
``--results``):

1. one training step of an N-row output layer, jslide against dense JAX + ``optax.adam``,
   over growing N (``benchmarks/step_scaling.py``; plot: step time against N, log-log);
2. the LSH index against brute-force top-k (``benchmarks/lsh_retrieval.py``);
3. extreme classification on the bundled datasets, jslide against plain-JAX sampled softmax
   and dense training in the same trainer (``examples/wordnet_demo.py``; plot: validation
   P@1 against training time);
4. language models: validation perplexity against training time from the JSON records of
   ``python -m jslide.lm train --json`` runs (``--lm-records``; by default the records kept
   in ``docs/records/lm_*.json``, which are hour-long runs and are not re-run here);
5. the records of retrieval, of the bytes a multi-device step sends and of the scaling
   model (``docs/records/{retrieval,exchange,scaling}.json``), each table printed from its
   record by its own benchmark (``--table-of``).

    python benchmarks/report.py                      # the full report, about 15 minutes
    python benchmarks/report.py --quick --out /tmp/report/benchmarks.md   # CI-sized

``--quick`` runs every section at toy sizes (small N, one epoch of WordNet): it checks that
the report regenerates, not what the numbers are.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

from _report import write_json
from jslide.lm import plot as lm_plot

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGES = ("jslide", "jax", "jaxlib", "numpy", "flax", "optax", "orbax-checkpoint")


# ------------------------------------------------------------------------------ the stamp


def _cpu() -> tuple[str, list[str]]:
  """(model name, the SIMD features that matter to the kernels) from /proc/cpuinfo."""
  model, flags = platform.processor() or "unknown", []
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          have = set(value.split())
          flags = [x for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16") if x in have]
          break
  except OSError:
    pass
  return model, flags


def _memory_gib() -> float | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return int(line.split()[1]) / 2**20
  except OSError:
    return None
  return None


def _commit() -> str:
  """The checked-out commit, with ``+dirty`` when the tree has changes; ``unknown`` outside
  a git checkout."""
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def stamp() -> dict:
  """What the figures were measured on: machine, CPU features, packages, commit, date."""
  import jslide
  model, flags = _cpu()
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "commit": _commit(), "machine": platform.platform(), "cpu": model,
          "cores": os.cpu_count(), "cpu_features": flags, "kernel_isa": jslide.kernel_isa(),
          "memory_gib": _memory_gib(), "python": platform.python_version(),
          "packages": versions}


# ------------------------------------------------------------------------------ running


def run(args: list[str], log) -> None:
  """One benchmark command in a fresh process; its table goes to the log as it prints."""
  log(f"$ {' '.join(args)}")
  out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
  log(out.stdout)
  if out.returncode:
    raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-4000:]}")


def _load(path: str):
  with open(path) as f:
    return json.load(f)


# ------------------------------------------------------------------------------ sections


def step_scaling(results: str, quick: bool, log) -> dict:
  path = os.path.join(results, "step_scaling.json")
  size = (["--n", "1000", "10000", "--steps", "10", "--budget", "2", "--repeats", "1"]
          if quick else [])
  cmd = ["benchmarks/step_scaling.py", *size, "--json", path]
  run(cmd, log)
  return {"command": "python " + " ".join(cmd[:-2]), "rows": _load(path)}


def lsh_retrieval(results: str, quick: bool, log) -> dict:
  path = os.path.join(results, "lsh_retrieval.json")
  size = ["--n", "20000", "--active", "256"] if quick else []  # 200 clusters for a batch of 128
  cmd = ["benchmarks/lsh_retrieval.py", *size, "--json", path]
  run(cmd, log)
  return {"command": "python " + " ".join(cmd[:-2]), "rows": _load(path)}


def xc(results: str, quick: bool, log) -> dict:
  out = {}
  for dataset in (["wordnet"] if quick else ["wordnet", "debian"]):
    path = os.path.join(results, f"xc_{dataset}.json")
    cmd = ["examples/wordnet_demo.py", "--dataset", dataset, "--epochs",
           "1" if quick else "5", "--json", path]
    run(cmd, log)
    out[dataset] = {"command": "python " + " ".join(cmd[:-2]), "runs": _load(path)}
  return out


# Records kept in the repository of runs too long (or needing data built apart) to repeat
# here: (name, title, the command that wrote it). Their tables are printed by the same
# benchmark (``--table-of``), so the page shows what the command printed.
RECORDS = (
    ("retrieval", "Retrieval without a vector database",
     "python benchmarks/retrieval.py SETS --json docs/records/retrieval.json"),
    ("exchange", "Several devices: bytes sent per step",
     "python benchmarks/exchange.py --json docs/records/exchange.json"),
    ("scaling", "Several hosts: the scaling model",
     "python benchmarks/scaling.py --json docs/records/scaling.json"),
)


def records() -> dict:
  """{name: {"title", "command", "table"}} of :data:`RECORDS`, each table printed from its
  record by its benchmark."""
  out = {}
  for name, title, command in RECORDS:
    record = os.path.join(ROOT, "docs", "records", f"{name}.json")
    run_ = subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py"), "--table-of",
                           record], cwd=ROOT, capture_output=True, text=True)
    if run_.returncode:
      raise RuntimeError(f"{name}.py --table-of {record} failed:\n{run_.stderr[-4000:]}")
    out[name] = {"title": title, "command": command, "record": f"docs/records/{name}.json",
                 "table": run_.stdout.strip()}
  return out


def lm(paths: list[str]) -> list[dict]:
  return [{"path": os.path.relpath(p, ROOT), **_load(p)} for p in paths]


# ------------------------------------------------------------------------------ plots


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_step_scaling(rows: list[dict], path: str) -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  n = [r["n"] for r in rows]
  ax.plot(n, [r["dense_ms"] for r in rows], marker="o", label="dense JAX + optax.adam")
  ax.plot(n, [r["sparse_ms"] for r in rows], marker="o", label="jslide")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("rows N of the output layer")
  ax.set_ylabel("training step (ms)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_xc(runs: dict, dataset: str, path: str) -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, record in runs.items():
    evals = [e for e in record["evals"] if e.get("valid")]
    ax.plot([e["train_s"] for e in evals], [e["valid"]["P@1"] for e in evals], marker="o",
            label=name)
  ax.set_xlabel("training time (s)")
  ax.set_ylabel("validation P@1 (exact ranking)")
  ax.set_title(dataset)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------------------ markdown


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
  out = ["| " + " | ".join(header) + " |",
         "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return out + [""]


def render(report: dict, figures: dict[str, str]) -> str:
  s = report["stamp"]
  pk = ", ".join(f"{k} {v}" for k, v in s["packages"].items() if v)
  md = ["# Benchmarks", "",
        "Written by `python benchmarks/report.py" + (" --quick" if report["quick"] else "")
        + "`, which runs every command below in a fresh process, baselines in the same run "
        "(the machines are noisy: compare ratios). Re-run it to regenerate this page and its "
        "plots.", "",
        f"- date: {s['date']}; commit: `{s['commit']}`",
        f"- machine: {s['machine']}; CPU: {s['cpu']}, {s['cores']} cores, features "
        f"{', '.join(s['cpu_features']) or 'none of avx2/avx512'}; jslide kernels: "
        f"`{s['kernel_isa']}`"
        + (f"; memory {s['memory_gib']:.0f} GiB" if s.get("memory_gib") else ""),
        f"- Python {s['python']}; {pk}", ""]
  if report["quick"]:
    md += ["**`--quick`: toy sizes, to check that the report regenerates; these are not "
           "measurements to quote.**", ""]

  ss = report["step_scaling"]
  md += ["## One training step, jslide against dense, over growing N", "",
         f"`{ss['command']}`: an output layer of N rows (d = 128, batch 128, 256 active "
         "neurons per example), forward, loss, backward and Adam; dense JAX with `optax.adam` "
         "against jslide's row-sparse step (`sparse_adam`, in place). jslide's time is the "
         "fastest of its fresh processes.", ""]
  md += _table(["N rows", "dense JAX + optax.adam", "jslide", "speed-up",
                "jslide peak RSS / (params + Adam)"],
               [[f"{r['n']:,}", f"{r['dense_ms']:,.2f} ms", f"{r['sparse_ms']:.2f} ms",
                 f"{r['speedup']:,.0f}x", f"{r['sparse_rss_over_state']:.2f}"]
                for r in ss["rows"]], "rrrrr")
  md += [f"![step time against N]({figures['step_scaling']})", ""]

  lr = report["lsh_retrieval"]
  md += ["## The LSH index against brute force", "",
         f"`{lr['command']}`: index build, a batch query, and the recall of each query's "
         "exact top 10 within the active set it returns, against `jax.lax.top_k(x @ w.T, k)` "
         "on the same data.", ""]
  rows = [r for r in lr["rows"] if "query_ms" in r]
  md += _table(["N", "active", "index build", "batch query", "brute-force top-10",
                "recall of the exact top 10"],
               [[f"{r['n']:,}", f"{r['active']:,}", f"{r['build_ms']:,.0f} ms",
                 f"{r['query_ms']:.2f} ms",
                 f"{r['brute_top10_ms']:.1f} ms ({r['speedup_vs_top10']:.0f}x)",
                 f"{r['recall_at_10']:.3f}"] for r in rows], "rrrrrr")
  amazon = [r for r in lr["rows"] if "slide_fixed_bucket_mb" in r]
  if amazon:
    a = amazon[0]
    md += [f"At SLIDE's Amazon-670K output layer (N = {a['n']:,}, DWTA K = 6, L = 50, "
           f"{a['num_buckets']:,} buckets) the index takes {a['index_mb']:.0f} MiB "
           f"(SLIDE's fixed 128-slot buckets: {a['slide_fixed_bucket_mb']:,.0f} MiB), built "
           f"in {a['build_ms']:.0f} ms.", ""]

  md += ["## Extreme classification: jslide, sampled softmax and dense training", ""]
  for dataset, entry in report["xc"].items():
    md += [f"### {dataset}", "",
           f"`{entry['command']}`: SLIDE's network (sparse input, 128 ReLU, an output layer "
           "over every label) trained three ways in the same trainer, each scoring about "
           "1,024 labels per example (dense: all of them); test figures at each run's epoch "
           "selected on a validation split, exact ranking over all labels.", ""]
    rows = []
    for name, rec in entry["runs"].items():
      t, sel = rec["test"], rec["selected"]
      per_epoch = sum(e["seconds"] for e in rec["evals"]) / len(rec["evals"])
      rows.append([name, f"{sel['epoch']:g}", f"{t['P@1']:.4f}", f"{t['P@5']:.4f}",
                   f"{per_epoch:.1f}", f"{rec['evals'][-1]['train_s']:.1f}"])
    md += _table(["", "selected epoch", "test P@1", "test P@5", "s/epoch", "training s"],
                 rows, "lrrrrr")
    js = entry["runs"].get("jslide", {}).get("test", {})
    if "lsh_P@1" in js:
      md += [f"jslide ranking through its inference index: P@1 {js['lsh_P@1']:.4f}, "
             f"{js['labels_scored']:.0f} labels scored per example "
             f"({js['labels_scored'] / js['num_labels']:.1%} of them), recall of the exact "
             f"top label {js['recall@1']:.3f}.", ""]
    md += [f"![validation P@1 against training time, {dataset}]({figures['xc_' + dataset]})", ""]

  md += ["## Language models: perplexity against training time", ""]
  if report["lm"]:
    md += ["From the JSON records of `python -m jslide.lm train --json` runs kept in the "
           "repository (" + ", ".join(f"`{r['path']}`" for r in report["lm"]) + "; each "
           "record holds its settings); hour-long runs, not re-run by this command.", ""]
    rows = []
    for r in report["lm"]:
      last = r["evals"][-1]
      best = min(e["valid_ppl"] for e in r["evals"])
      rows.append([lm_plot.label(r), f"{r['active_params_per_token'] / 1e6:.2f} M",
                   f"{last['train_s']:,.0f}", f"{last['tokens'] / 1e6:.2f} M",
                   f"{last['tokens_per_s']:,.0f}", f"{last['valid_ppl']:.2f}", f"{best:.2f}",
                   f"{r['peak_rss_mb'] / 1024:.1f} GB"])
    md += _table(["model", "read per token", "training s", "tokens", "tokens/s",
                  "final valid ppl", "best valid ppl", "peak RSS"], rows, "lrrrrrrr")
    md += [f"![validation perplexity against training time]({figures['lm']})", ""]
  else:
    md += ["No records given (`--lm-records`).", ""]
  for entry in report.get("records", {}).values():
    md += [f"## {entry['title']}", "",
           f"From `{entry['record']}`, written by `{entry['command']}` (not re-run here; "
           "the table is the one that command prints).", "", entry["table"], ""]
  return "\n".join(md)


# ------------------------------------------------------------------------------ main


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"),
                 help="the Markdown page to write; its plots go beside it")
  p.add_argument("--results", default=os.path.join(ROOT, "results", "report"),
                 help="where each benchmark's JSON goes")
  p.add_argument("--quick", action="store_true", help="toy sizes (CI)")
  p.add_argument("--lm-records", nargs="*", default=None,
                 help="JSON records of python -m jslide.lm train runs (default: "
                      "docs/records/lm_*.json)")
  args = p.parse_args(argv)
  try:
    _pyplot()
  except ImportError:
    raise SystemExit("the report draws plots with matplotlib: pip install 'jslide[plot]'")
  lm_paths = (args.lm_records if args.lm_records is not None
              else sorted(glob.glob(os.path.join(ROOT, "docs", "records", "lm_*.json"))))
  for path in lm_paths:
    if not os.path.isfile(path):
      raise SystemExit(f"--lm-records: no file {path}")
  out_dir = os.path.dirname(os.path.abspath(args.out))
  os.makedirs(out_dir, exist_ok=True)
  os.makedirs(args.results, exist_ok=True)
  if not os.access(out_dir, os.W_OK):
    raise SystemExit(f"--out: cannot write in {out_dir}")

  log = lambda text: print(text, flush=True)  # noqa: E731
  report = {"quick": args.quick, "stamp": stamp()}
  report["step_scaling"] = step_scaling(args.results, args.quick, log)
  report["lsh_retrieval"] = lsh_retrieval(args.results, args.quick, log)
  report["xc"] = xc(args.results, args.quick, log)
  report["lm"] = lm(lm_paths)
  report["records"] = records()

  stem = os.path.splitext(os.path.basename(args.out))[0]
  figures = {"step_scaling": f"{stem}_step_scaling.png", "lm": f"{stem}_lm.png"}
  plot_step_scaling(report["step_scaling"]["rows"], os.path.join(out_dir, figures["step_scaling"]))
  for dataset, entry in report["xc"].items():
    figures["xc_" + dataset] = f"{stem}_xc_{dataset}.png"
    plot_xc(entry["runs"], dataset, os.path.join(out_dir, figures["xc_" + dataset]))
  if report["lm"]:
    lm_plot.plot_perplexity(report["lm"], os.path.join(out_dir, figures["lm"]))
  with open(args.out, "w") as f:
    f.write(render(report, figures))
  write_json(os.path.join(args.results, "report.json"), report)
  log(f"wrote {args.out} and its plots; the data in {args.results}/report.json")


if __name__ == "__main__":
  main()
