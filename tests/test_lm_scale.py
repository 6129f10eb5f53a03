"""Issue 29, the billion-parameter language model: the ``1b`` preset's shapes and settings,
bfloat16 tables and moments, and evaluation that skips the dense pass over the FFNs."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jslide.lm import ModelConfig, RunConfig, train
from jslide.lm.__main__ import parse_args
from jslide.lm.presets import PRESETS


def _split(preset: dict):
  model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
  run_fields = {f.name for f in dataclasses.fields(RunConfig)}
  assert set(preset) <= model_fields | run_fields, set(preset) - model_fields - run_fields
  return ({k: v for k, v in preset.items() if k in model_fields},
          {k: v for k, v in preset.items() if k in run_fields})


def test_the_1b_preset_has_a_billion_parameters_and_reads_a_thousandth_per_token():
  """Counted from the shapes alone (nothing allocated)."""
  model_kw, run_kw = _split(PRESETS["1b"])
  cfg, _ = ModelConfig(**model_kw), RunConfig(**run_kw)
  shapes = nnx.eval_shape(lambda: cfg.build(cfg.vocab_size, 0))
  params = nnx.state(shapes, nnx.Param)
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count >= 1_000_000_000, count
  ffn = sum(x.size for path, x in jax.tree.leaves_with_path(params)
            if "ffn" in jax.tree_util.keystr(path))
  assert ffn > 0.95 * count  # the parameters are where the sparsity is
  active = cfg.active_params_per_token(cfg.vocab_size)
  assert active < count / 500, (active, count)
  tables = [x for x in jax.tree.leaves(params) if x.ndim == 2 and x.shape[0] >= 50_000]
  assert tables and all(x.dtype == jnp.bfloat16 for x in tables)


def test_a_preset_fills_what_the_command_line_leaves_unset():
  args = parse_args(["train", "--train", "t.txt", "--valid", "v.txt", "--preset", "1b",
                     "--layers", "2", "--lr", "5e-4"])
  assert args.layers == 2 and args.learning_rate == 5e-4  # given: kept
  assert args.hidden == 524_288 and args.table_dtype == "bfloat16"  # not given: the preset's
  assert args.eval_exact_ffn is False
  plain = parse_args(["train", "--train", "t.txt", "--valid", "v.txt"])
  assert plain.hidden == ModelConfig.hidden and plain.eval_exact_ffn is True


def test_bfloat16_tables_need_the_head_whose_optimizer_rounds_stochastically():
  for head in ("sampled", "full"):
    with pytest.raises(ValueError, match="table_dtype=bfloat16 needs head='lsh'"):
      ModelConfig(head=head, table_dtype="bfloat16")
    with pytest.raises(ValueError, match="moment_dtype=bfloat16 needs head='lsh'"):
      ModelConfig(head=head, moment_dtype="bfloat16")
  with pytest.raises(ValueError, match="table_dtype must be one of"):
    ModelConfig(table_dtype="float16")


TINY = dict(vocab_size=100, context=16, features=32, heads=2, layers=1, hidden=128,
            ffn="sparse", ffn_active=32, retrieved=8, sampled=16)


@pytest.mark.slow
def test_bfloat16_tables_and_moments_learn_the_markov_chain(tmp_path, capsys):
  """The 1b preset's dtypes on the tiny model: it learns the chain (floor 3) as the float32
  one does (test_lm.py), its tables and moments stay bfloat16, and an evaluation without the
  exact-FFN pass reports none."""
  from test_lm import SUCCESSORS, markov_text
  (tmp_path / "train.txt").write_text(markov_text(60_000, walk_seed=1))
  (tmp_path / "valid.txt").write_text(markov_text(6_000, walk_seed=2))
  cfg = ModelConfig(**TINY, head="lsh", table_dtype="bfloat16", moment_dtype="bfloat16")
  run = RunConfig(epochs=2, batch_size=16, learning_rate=3e-3, eval_every=10_000,
                  max_eval_tokens=4096, eval_exact_ffn=False)
  record = train(str(tmp_path / "train.txt"), str(tmp_path / "valid.txt"), cfg, run,
                 progress=False, ckpt=str(tmp_path / "ck"))
  last = record["evals"][-1]
  assert SUCCESSORS * 0.95 < last["valid_ppl"] < 5.0, last
  assert "valid_ppl_exact_ffn" not in last and last["checkpoint_s"] > 0
  # The checkpoint's evaluation can still ask for the exact-FFN perplexity.
  from jslide.lm.__main__ import main
  capsys.readouterr()  # the training's log
  for flags, has_exact in (([], False), (["--exact-ffn"], True)):
    assert main(["eval", "--ckpt", str(tmp_path / "ck"), "--valid", str(tmp_path / "valid.txt"),
                 "--max-eval-tokens", "512", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    assert ("valid_ppl_exact_ffn" in out) == has_exact, out
  assert out["valid_ppl_exact_ffn"] < 8.0
  from jslide.lm.trainer import make_step
  vocab = record["vocab_size"]
  graphdef, state, _ = make_step(cfg.build(vocab, 0), cfg, run)
  model = state.model(graphdef)
  tables = (model.embed, model.head.kernel, model.blocks[0].ffn.up, model.blocks[0].ffn.down)
  assert all(t.get_value().dtype == jnp.bfloat16 for t in tables)
  table_shapes = {(vocab, 32), (128, 32)}
  moments = [x for x in jax.tree.leaves(state.opt_state) if np.shape(x) in table_shapes]
  assert len(moments) == 8 and all(x.dtype == jnp.bfloat16 for x in moments)
