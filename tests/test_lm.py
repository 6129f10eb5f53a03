"""The language-model trainer: tokenization, vocabulary, training to a perplexity bound on text
with a known entropy rate, checkpoints with exact resume, and bad input."""

import json
import math

import numpy as np
import pytest

from jslide.lm import (ModelConfig, RunConfig, Vocabulary, read_text, tokenize, train,
                       unigram_log_prior, windows)

SUCCESSORS = 3


def markov_text(num_words: int, walk_seed: int, vocab: int = 60) -> str:
  """Text from a first-order Markov chain over ``vocab`` made-up words in which each word is
  followed by one of SUCCESSORS words, uniformly: its entropy rate is log(SUCCESSORS), so no
  model beats perplexity SUCCESSORS, while the unigram perplexity is about ``vocab``."""
  r = np.random.default_rng(0)  # the chain; the walk has its own seed
  names = [f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(vocab)]
  nxt = np.stack([r.choice(vocab, SUCCESSORS, replace=False) for _ in range(vocab)])
  walk = np.random.default_rng(walk_seed)
  cur, words = 0, []
  for _ in range(num_words):
    words.append(names[cur])
    cur = nxt[cur, walk.integers(SUCCESSORS)]
  lines = [" ".join(words[i:i + 12]) for i in range(0, num_words, 12)]
  return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  (d / "train.txt").write_text(markov_text(60_000, walk_seed=1))
  (d / "valid.txt").write_text(markov_text(6_000, walk_seed=2))
  return d


def test_tokenize_and_vocabulary_by_frequency():
  tokens = tokenize("The cat, the dog.\n\nThe END")
  assert tokens == ["the", "cat", ",", "the", "dog", ".", "<eos>", "the", "end", "<eos>"]
  vocab = Vocabulary.from_tokens(tokens, 4)
  assert vocab.words == ["<unk>", "the", "<eos>", ","]  # by count, ties alphabetical
  np.testing.assert_array_equal(vocab.encode(["the", "zebra", ","]), [1, 0, 3])
  assert vocab.decode([1, 3]) == ["the", ","]
  with pytest.raises(ValueError, match="size must be an int >= 3"):
    Vocabulary.from_tokens(tokens, 2)


def test_text_files_that_cannot_train_are_refused_by_name(tmp_path):
  (tmp_path / "empty.txt").write_text("  \n\n")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
  with pytest.raises(ValueError, match="empty.txt: the file has no text"):
    read_text(str(tmp_path / "empty.txt"))
  with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text \(byte 3"):
    read_text(str(tmp_path / "latin1.txt"))
  with pytest.raises(ValueError, match="too few for one window of context 8"):
    windows(np.arange(5, dtype=np.int32), 8)
  with pytest.raises(ValueError, match="head must be one of"):
    ModelConfig(head="adaptive")


def test_unigram_log_prior_is_the_smoothed_word_distribution():
  ids = np.array([0, 1, 1, 1, 2, 2, 4], np.int32)
  prior = np.asarray(unigram_log_prior(ids, 6)(None, (6,), np.float32))
  np.testing.assert_allclose(np.exp(prior), np.array([2, 4, 3, 1, 2, 1]) / 13, rtol=1e-6)
  np.testing.assert_allclose(np.exp(prior).sum(), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
    unigram_log_prior(ids, 4)
  with pytest.raises(TypeError, match="1-d integer array"):
    unigram_log_prior(ids.astype(np.float32), 6)
  with pytest.raises(ValueError, match=r"asked for shape \(5,\)"):
    unigram_log_prior(ids, 6)(None, (5,), np.float32)
  with pytest.raises(ValueError, match="head_bias must be one of"):
    ModelConfig(head_bias="ones")


@pytest.mark.slow
def test_model_starts_at_the_unigram_distribution():
  """With train_ids the untrained model's word biases are the log frequencies, so its exact
  loss on the text starts well below the zero-bias model's (about log V)."""
  ids = np.random.default_rng(0).zipf(1.5, 5000) % 50
  cfg = ModelConfig(**{**TINY, "ffn": "dense"}, head="lsh")
  model = cfg.build(50, 0, ids.astype(np.int32))
  bias = np.asarray(model.head.bias.get_value())
  np.testing.assert_allclose(bias, np.asarray(unigram_log_prior(ids, 50)(None, (50,))), rtol=1e-6)
  zeros = cfg.build(50, 0)
  assert not np.any(np.asarray(zeros.head.bias.get_value()))
  tokens = ids[:16].reshape(1, 16).astype(np.int32)
  nll = float(np.mean(np.asarray(model.token_nll(tokens[:, :-1], tokens[:, 1:]))))
  nll0 = float(np.mean(np.asarray(zeros.token_nll(tokens[:, :-1], tokens[:, 1:]))))
  assert nll < nll0 - 0.5, (nll, nll0)


TINY = dict(vocab_size=100, context=16, features=32, heads=2, layers=1, hidden=128,
            ffn="sparse", ffn_active=32, retrieved=8, sampled=16)


@pytest.mark.slow
@pytest.mark.parametrize("head,ffn", [("lsh", "sparse"), ("full", "sparse"), ("lsh", "block")])
def test_tiny_model_learns_the_markov_chain(corpus, head, ffn):
  """Validation perplexity (exact softmax) falls from about the vocabulary size to below 5,
  against a floor of 3 (the chain's entropy rate)."""
  cfg = ModelConfig(**{**TINY, "ffn": ffn}, head=head)
  run = RunConfig(epochs=2, batch_size=16, learning_rate=3e-3, eval_every=10_000,
                  max_eval_tokens=4096)
  record = train(str(corpus / "train.txt"), str(corpus / "valid.txt"), cfg, run,
                 progress=False)
  last = record["evals"][-1]
  assert record["vocab_size"] <= 62  # the words the walk reached, <unk>, <eos>
  assert SUCCESSORS * 0.95 < last["valid_ppl"] < 5.0, last
  assert last["valid_ppl_exact_ffn"] < 8.0, last


@pytest.mark.slow
def test_checkpoint_resume_is_exact_and_eval_generate_read_it(corpus, tmp_path, capsys):
  from jslide.lm.__main__ import main

  def cli(*args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err

  common = ["--train", corpus / "train.txt", "--valid", corpus / "valid.txt",
            "--vocab-size", "100", "--context", "16", "--features", "32", "--heads", "2",
            "--layers", "1", "--hidden", "64", "--ffn", "sparse", "--ffn-active", "16",
            "--retrieved", "8", "--sampled", "16", "--batch-size", "8", "--eval-every", "15",
            "--max-eval-tokens", "512", "--no-progress"]
  ck = tmp_path / "ck"
  code, _, err = cli("train", *common, "--max-steps", "30", "--json", tmp_path / "whole.json")
  assert code == 0, err
  code, _, err = cli("train", *common, "--max-steps", "15", "--ckpt", ck)
  assert code == 0, err
  code, _, err = cli("train", *common, "--max-steps", "15", "--ckpt", ck)
  assert code == 2 and "--resume" in err
  code, _, err = cli("train", *common, "--max-steps", "30", "--ckpt", ck, "--resume", "--json",
                     tmp_path / "resumed.json")
  assert code == 0, err
  a = json.loads((tmp_path / "whole.json").read_text())["evals"]
  b = json.loads((tmp_path / "resumed.json").read_text())["evals"]
  assert [e["step"] for e in a] == [e["step"] for e in b] == [15, 30]
  assert a[-1]["valid_ppl"] == b[-1]["valid_ppl"]  # bit-exact continuation
  # Resuming on another training text would give ids and batches another meaning: refused.
  other = tmp_path / "other.txt"
  other.write_text(markov_text(50_000, walk_seed=5))
  code, _, err = cli("train", "--train", other, *common[2:], "--max-steps", "45", "--ckpt", ck,
                     "--resume")
  assert code == 2 and "other data (" in err and "windows 3750 -> 3125" in err, err
  code, out, err = cli("eval", "--ckpt", ck, "--valid", corpus / "valid.txt",
                       "--max-eval-tokens", "512")
  assert code == 0, err
  assert math.isclose(json.loads(out)["valid_ppl"], b[-1]["valid_ppl"], rel_tol=1e-5)
  code, out, err = cli("generate", "--ckpt", ck, "--prompt", "waa", "--words", "5")
  assert code == 0, err
  assert len(out.split()) == 6 and out.split()[0] == "waa"
  assert "words/s (sparse)" in err
  # Issue 29: the same model computed densely (every FFN neuron, every word), for comparison.
  code, out, err = cli("generate", "--ckpt", ck, "--prompt", "waa", "--words", "5", "--exact")
  assert code == 0 and len(out.split()) == 6, err
  assert "words/s (every FFN neuron and word)" in err
  # Issue 33, item 10: bad generation settings were accepted; a mistyped --ckpt was created.
  for flag, value in (("--words", "-3"), ("--temperature", "-1"), ("--top-k", "0")):
    code, _, err = cli("generate", "--ckpt", ck, "--prompt", "waa", flag, value)
    assert code == 2 and f"{flag} must be" in err, err
  code, _, err = cli("generate", "--ckpt", tmp_path / "typo", "--prompt", "waa")
  assert code == 2 and "no checkpoint found" in err and not (tmp_path / "typo").exists()
  code, _, err = cli("train", *common[4:], "--train", tmp_path / "missing.txt", "--valid",
                     corpus / "valid.txt")
  assert code == 2 and "missing.txt" in err


@pytest.mark.slow
def test_perplexity_counts_every_window_even_fewer_than_a_batch():
  import jax
  import jax.numpy as jnp
  from jslide.lm import perplexity
  from jslide.lm.trainer import make_step
  cfg = ModelConfig(**{**TINY, "vocab_size": 30})
  graphdef, state, _ = make_step(cfg.build(30, 0), cfg, RunConfig())
  wins = np.random.default_rng(0).integers(0, 30, size=(3, cfg.context + 1)).astype(np.int32)
  got = perplexity(graphdef, state, wins, batch_size=2)  # a batch of 2, then one of 1
  model = state.model(graphdef)
  nll = model.token_nll(jnp.asarray(wins[:, :-1]), jnp.asarray(wins[:, 1:]),
                        key=jax.random.key(0))
  assert math.isclose(got, math.exp(float(nll.mean())), rel_tol=1e-5)
  assert got > 10  # an untrained model over 30 words, not the exp(0) of no windows


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "batch_size must be an int >= 1"),
    (["--context", "0"], "context must be an int >= 1"),
    (["--time-limit", "-5"], "time_limit must be a finite number >= 0"),
    (["--epochs", "-1"], "epochs must be an int >= 0"),
    (["--ffn-active", "0"], "ffn_active must be an int in [1, 1024]"),
])
def test_bad_settings_are_one_line_errors_before_any_work(corpus, capsys, flags, message):
  """Issue 33, items 8 and 10: tracebacks (ZeroDivisionError) or silently accepted values."""
  from jslide.lm.__main__ import main
  code = main(["train", "--train", str(corpus / "train.txt"), "--valid",
               str(corpus / "valid.txt"), "--no-progress", *flags])
  err = capsys.readouterr().err
  assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_diverging_run_is_a_one_line_error(corpus, tmp_path, capsys):
  from jslide.lm.__main__ import main
  code = main(["train", "--train", str(corpus / "train.txt"), "--valid",
               str(corpus / "valid.txt"), "--vocab-size", "100", "--context", "16",
               "--features", "32", "--heads", "2", "--layers", "1", "--hidden", "64",
               "--ffn", "dense", "--retrieved", "8", "--sampled", "16", "--batch-size", "8",
               "--max-steps", "20", "--lr", "1e30", "--no-progress",
               "--json", str(tmp_path / "missing" / "r.json")])
  assert code == 2 and "the folder" in capsys.readouterr().err  # checked before training
  code = main(["train", "--train", str(corpus / "train.txt"), "--valid",
               str(corpus / "valid.txt"), "--vocab-size", "100", "--context", "16",
               "--features", "32", "--heads", "2", "--layers", "1", "--hidden", "64",
               "--ffn", "dense", "--retrieved", "8", "--sampled", "16", "--batch-size", "8",
               "--max-steps", "20", "--lr", "1e30", "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and ("non-finite" in err or "loss became" in err), err


def test_a_model_too_large_for_the_machine_is_refused_before_it_is_allocated(corpus, capsys):
  """Issue 29: out of memory predicted, not suffered. The step is compiled from the model's
  shapes alone (jax.eval_shape), and XLA's accounting of it (137 GB of FFN weights here)
  is compared with the memory available, before anything is allocated."""
  import resource
  from jslide.lm.__main__ import main
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  code = main(["train", "--train", str(corpus / "train.txt"), "--valid",
               str(corpus / "valid.txt"), "--vocab-size", "100", "--context", "16",
               "--features", "4096", "--heads", "4", "--layers", "2", "--hidden", "2097152",
               "--ffn", "dense", "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and "needs about" in err and "GiB available" in err, err
  needed = float(err.split("needs about ")[1].split(" GiB")[0])
  # The FFN weights are 128 GiB; Adam's two moments and their gradient make it four times.
  assert 4 * 128 <= needed < 5 * 128, needed
  grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
  assert grown < 2 * 2**20, grown  # KiB: nothing of the model was allocated


def test_the_record_holds_the_parameter_counts_and_the_memory_estimate(corpus, tmp_path):
  cfg = ModelConfig(**{**TINY, "ffn": "dense"}, head="lsh")
  record = train(str(corpus / "train.txt"), str(corpus / "valid.txt"), cfg,
                 RunConfig(max_steps=3, batch_size=8), progress=False,
                 json_path=str(tmp_path / "r.json"))
  model = cfg.build(record["vocab_size"], 0)
  import jax
  from flax import nnx
  assert record["params"] == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert 0 < record["active_params_per_token"] < record["params"]
  assert 0 < record["estimated_step_peak_mb"] < record["peak_rss_mb"]


@pytest.mark.slow
@pytest.mark.parametrize("rebuild_before_eval", [True, False])
def test_indices_are_rebuilt_before_evaluating_unless_the_run_says_not(
    corpus, tmp_path, rebuild_before_eval):
  """Issue 29: the 1b preset evaluates with the indices it trains with; rebuilding its four
  FFN indices before each evaluation cost about 48 s of every 10 minutes of training. With
  no rebuild due on the schedule, the saved FFN index is the initial one exactly when the
  run skips the rebuild before evaluating."""
  import jax
  from jslide.lm import trainer
  cfg = ModelConfig(**TINY, head="lsh")
  run = RunConfig(max_steps=6, batch_size=8, eval_every=3, max_eval_tokens=256,
                  rebuild_initial=1000, rebuild_max=1000,
                  rebuild_before_eval=rebuild_before_eval)
  train(str(corpus / "train.txt"), str(corpus / "valid.txt"), cfg, run, progress=False,
        ckpt=str(tmp_path / "ck"))
  _, _, vocab, graphdef, state = trainer.load(str(tmp_path / "ck"))
  saved = state.model(graphdef).blocks[0].ffn.index.get_value()
  initial = cfg.build(len(vocab), run.seed).blocks[0].ffn.index.get_value()  # same FFN
  same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(saved), jax.tree.leaves(initial)))
  assert same == (not rebuild_before_eval)


def test_plot_draws_each_record_labelled_by_its_model(tmp_path):
  """``plot`` draws one line per record, named by its parameters, head and FFN."""
  pytest.importorskip("matplotlib")
  from jslide.lm.__main__ import main
  paths = []
  for i, (head, ffn, params) in enumerate([("lsh", "sparse", 1_102_563_664),
                                           ("sampled", "dense", 26_000_000)]):
    record = {"params": params, "model": {"head": head, "ffn": ffn, "hidden": 256},
              "evals": [{"train_s": 600.0 * k, "valid_ppl": 100.0 / k} for k in (1, 2, 3)]}
    paths.append(tmp_path / f"r{i}.json")
    paths[-1].write_text(json.dumps(record))
  out = tmp_path / "p.png"
  assert main(["plot", *map(str, paths), "--out", str(out)]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  from jslide.lm.plot import plot_perplexity
  labels = plot_perplexity([json.loads(p.read_text()) for p in paths], str(out))
  assert labels == ["1,103 M parameters, lsh head, sparse FFN (hidden 256)",
                    "26 M parameters, sampled head, dense FFN (hidden 256)"]


def test_row_shards_are_checked_before_training(corpus, tmp_path, capsys):
  """--row-shards (the embedding and the lsh head split by rows over devices,
  tests/test_row_sharded.py and tests/test_distributed.py) is refused with another head
  and when it does not divide the devices."""
  import jax
  from jslide.lm.__main__ import main
  common = ["train", "--train", str(corpus / "train.txt"), "--valid", str(corpus / "valid.txt"),
            "--vocab-size", "100", "--context", "16", "--features", "16", "--heads", "2",
            "--layers", "1", "--hidden", "32", "--no-progress", "--row-shards", "2"]
  for flags, message in ((["--head", "sampled"], "row_shards > 1 trains the lsh head"),
                         ([], f"row_shards=2 must divide the {jax.device_count()} devices")):
    assert main([*common, *flags]) == 2
    assert message in capsys.readouterr().err
