"""What a data-parallel step sends between devices (jslide.parallel), counted in the program
XLA compiles, against the formula (:func:`jslide.parallel.exchange_bytes`) and against the
dense way (every gradient all-reduced, tables included: what a plain data-parallel JAX
program with dense gradients does), at SLIDE's Amazon-670K shape and for the default
language model; for the XC shape also the step with its output layer split by rows over the
devices (jslide.row_sharded: every device the whole batch, its own rows), whose formula is
three all-reduces of per-example numbers: [B] (the largest logit), [3, B] (the sums) and
[B, d] (the input's gradient).

The step is compiled, not run, for 2, 4 and 8 forced host devices (nothing is allocated:
the shapes suffice), and every all-gather and all-reduce in its HLO is counted: an
all-gather whose result holds O bytes sends ``(devices - 1) / devices * O`` per device, an
all-reduce of B bytes ``2 (devices - 1) / devices * B`` (a ring). Then, from the bytes
alone, the seconds one step spends sending at 10 and 100 Gbit/s.

    python benchmarks/exchange.py --json results/exchange.json
"""

from __future__ import annotations

import os

DEVICES = (2, 4, 8)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={max(DEVICES)}")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from _report import write_json  # noqa: E402
import jslide  # noqa: E402
from jslide import parallel  # noqa: E402

_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1,
          "s64": 8, "u64": 8, "f64": 8}
_OP = re.compile(r"=\s*(.*?)\s(all-gather|all-reduce)(?:-start)?\(")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def collectives(hlo: str) -> dict:
  """{"all-gather": result bytes, "all-reduce": bytes, "largest": the largest result's
  shape} of the collectives in an HLO module's text."""
  out = {"all-gather": 0, "all-reduce": 0, "largest": (0, "")}
  for line in hlo.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    for dtype, dims in _SHAPE.findall(re.sub(r"/\*.*?\*/", "", m.group(1))):
      size = _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
      out[m.group(2)] += size
      if size > out["largest"][0]:
        out["largest"] = (size, f"{dtype}[{dims}]")
  return out


def sent_per_device(counted: dict, devices: int) -> int:
  return int((devices - 1) / devices * counted["all-gather"]
             + 2 * (devices - 1) / devices * counted["all-reduce"])


XC_HIDDEN = 128


def xc_case():
  """SLIDE's Amazon-670K network: 135,909 features (75 a row) -> 128 -> 670,091 labels,
  0.5% active (3,351), batch 128 (and 1,024 for many devices)."""
  n_in, n_out, hidden, nnz, active = 135_909, 670_091, XC_HIDDEN, 75, 3_351

  def model(multiple_of: int = 1):
    # split by rows: the labels rounded up to a multiple of the devices (670,096 for 8)
    labels = -(-n_out // multiple_of) * multiple_of
    return jslide.nn.SparseMLP(n_in, labels, hidden=(hidden,), active=active, num_hashes=6,
                               num_hash_tables=50, rngs=nnx.Rngs(0))

  def loss():
    return jslide.train.active_set_loss(
        lambda m, b, key: m(b["feat_ids"], b["feat_vals"], b["labels"], key=key))

  def batch(size):
    return {"feat_ids": jax.ShapeDtypeStruct((size, nnz), jnp.int32),
            "feat_vals": jax.ShapeDtypeStruct((size, nnz), jnp.float32),
            "labels": jax.ShapeDtypeStruct((size, 5), jnp.int32),
            "mask": jax.ShapeDtypeStruct((size,), jnp.bool_)}

  return "XC, Amazon-670K shape", model, loss, batch


def measure(case, batch_size: int, devices: int) -> dict:
  name, model_fn, loss_fn, batch_fn = case
  mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
  row = {"case": name, "batch": batch_size, "devices": devices}
  for way, build in (("jslide", jslide.train.make_train_step),
                     ("dense", jslide.train.make_dense_train_step)):
    state, step = _abstract_step(build, model_fn, loss_fn(), mesh)
    hlo = step.lower(state, batch_fn(batch_size), jax.random.key(0)).compile().as_text()
    counted = collectives(hlo)
    row[way + "_sent"] = sent_per_device(counted, devices)
    row[way + "_largest"] = counted["largest"][1]
  f = formula_row(case, batch_size // devices, devices)
  row["formula_sent"], row["formula_dense"] = f["formula_sent"], f["formula_dense"]
  if name.startswith("XC"):
    rows_mesh = jax.make_mesh((1, devices), ("data", "rows"), devices=jax.devices()[:devices])

    def split():
      return jslide.row_sharded.split_rows(model_fn(devices), devices, "rows")

    state, step = _abstract_step(jslide.train.make_train_step, split, row_loss(), rows_mesh,
                                 row_axis="rows")
    hlo = step.lower(state, batch_fn(batch_size), jax.random.key(0)).compile().as_text()
    counted = collectives(hlo)
    row["rows_sent"] = sent_per_device(counted, devices)
    row["rows_largest"] = counted["largest"][1]
    row["rows_formula"] = rows_formula(batch_size, XC_HIDDEN, devices)
  return row


def row_loss():
  from jslide.xc import objectives
  return objectives.active_set_loss()


def rows_formula(batch: int, hidden: int, devices: int) -> int:
  """Bytes each device sends per step of a row-sharded output layer: ring all-reduces of
  f32 [B] + [3, B] + [B, d]."""
  return int(2 * (devices - 1) / devices * 4 * batch * (1 + 3 + hidden))


def lm_case():
  """The default language model (``python -m jslide.lm train``'s: vocabulary 50,000, d=256,
  sparse FFNs and the lsh head), 16 windows of 64 tokens per device."""
  from jslide.lm.config import ModelConfig
  from jslide.lm.heads import lsh_softmax_loss
  cfg = ModelConfig()

  def batch(size):
    tokens = jax.ShapeDtypeStruct((size, cfg.context), jnp.int32)
    return {"tokens": tokens, "targets": tokens}

  return ("LM, default model", lambda: cfg.build(cfg.vocab_size, 0), lambda: lsh_softmax_loss,
          batch)


def _abstract_step(build, model_fn, loss, mesh, **kw):
  """(the state as shapes, the step): the step builder traced, so no state is allocated."""
  built = {}

  def state():
    _, s, built["step"] = build(model_fn(), loss, mesh=mesh, **kw)
    return s

  return jax.eval_shape(state), built["step"]


def _one_device_grads(model_fn, loss, batch):
  model = model_fn()
  graphdef, tables, params, rest = jslide.train.split_model(model)
  batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), batch)

  def value(trainable):
    m = nnx.merge(graphdef, *trainable, rest)
    values, mask = loss(m, batch, jax.random.key(0))
    return jslide.train.masked_mean(values, mask)

  return jslide.value_and_grad(value, tables=(True, False))((tables, params))[1]


def seconds(sent: int, gbit: float) -> float:
  return sent * 8 / (gbit * 1e9)


def table(rows: list[dict]) -> str:
  lines = ["| case | devices | batch | jslide MB sent (compiled / formula) | dense MB sent "
           "(compiled / formula) | dense / jslide | jslide ms at 10 / 100 Gbit/s | dense ms "
           "at 10 / 100 Gbit/s | rows split: MB sent (compiled / formula) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    js = r.get("jslide_sent", r["formula_sent"])
    dn = r.get("dense_sent", r["formula_dense"])
    compiled = (f"{r['jslide_sent'] / 1e6:,.1f} / " if "jslide_sent" in r else "- / ")
    compiled_dense = (f"{r['dense_sent'] / 1e6:,.1f} / " if "dense_sent" in r else "- / ")
    lines.append(
        f"| {r['case']} | {r['devices']} | {r['batch']:,} | {compiled}"
        f"{r['formula_sent'] / 1e6:,.1f} | {compiled_dense}{r['formula_dense'] / 1e6:,.1f} | "
        f"{dn / js:,.1f}x | {1e3 * seconds(js, 10):,.1f} / {1e3 * seconds(js, 100):,.2f} | "
        f"{1e3 * seconds(dn, 10):,.0f} / {1e3 * seconds(dn, 100):,.1f} | "
        + (f"{r['rows_sent'] / 1e6:,.2f} / " if "rows_sent" in r else "- / " if "rows_formula" in r
           else "- |")
        + (f"{r['rows_formula'] / 1e6:,.2f} |" if "rows_formula" in r else ""))
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json")
  p.add_argument("--table-of", metavar="JSON",
                 help="print the table of a record this command wrote (--json), and exit")
  args = p.parse_args()
  if args.table_of:
    with open(args.table_of) as f:
      print(table(json.load(f)))
    return
  rows = []
  for case, per_device in ((xc_case(), 128), (lm_case(), 16)):
    for d in DEVICES:
      rows.append(measure(case, per_device * d, d))
    one = rows[-1]
    for d in (16, 32, 64):  # the formula, checked against the compiled programs above
      rows.append({**formula_row(case, per_device, d), "case": one["case"]})
      if "rows_formula" in one:
        rows[-1]["rows_formula"] = rows_formula(per_device * d, XC_HIDDEN, d)
  print(table(rows))
  write_json(args.json, rows)


def formula_row(case, per_device: int, devices: int) -> dict:
  _, model_fn, loss_fn, batch_fn = case
  formula = {}

  def traced():
    formula.update(parallel.exchange_bytes(
        _one_device_grads(model_fn, loss_fn(), batch_fn(per_device)), devices))
    return 0.0

  jax.eval_shape(traced)
  return {"devices": devices, "batch": per_device * devices,
          "formula_sent": formula["row_sparse"], "formula_dense": formula["dense"]}


if __name__ == "__main__":
  main()
