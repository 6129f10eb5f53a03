"""Validation perplexity against training time, one line per run record (the JSON that
``python -m jslide.lm train --json`` writes): drawn by ``python -m jslide.lm plot`` and by the
benchmark report."""

from __future__ import annotations


def label(record: dict) -> str:
  """What tells runs apart: size, head, FFN and its width."""
  c = record["model"]
  return (f"{record['params'] / 1e6:,.0f} M parameters, {c['head']} head, {c['ffn']} FFN "
          f"(hidden {c['hidden']:,})")


def plot_perplexity(records: list[dict], path: str) -> list[str]:
  """Writes the plot of ``records`` (each with ``evals`` of ``train_s`` and ``valid_ppl``)
  to ``path`` (needs matplotlib); returns the lines' labels, in order."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for record in records:
    ax.plot([e["train_s"] for e in record["evals"]], [e["valid_ppl"] for e in record["evals"]],
            marker="o", label=label(record))
  ax.set_xlabel("training time (s)")
  ax.set_ylabel("validation perplexity (exact softmax)")
  ax.set_yscale("log")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  plt.close(fig)
  return labels
