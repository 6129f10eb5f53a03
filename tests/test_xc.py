"""The XC trainer CLI: train, exact resume, eval, predict, and its errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jslide import datasets as D
from jslide.train import checkpoint
from jslide.xc.config import ModelConfig
from jslide.xc.__main__ import main


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
  """The first 1,500 / 300 examples of the WordNet splits, as XC files."""
  d = tmp_path_factory.mktemp("xc")
  for split, n in (("train", 1500), ("test", 300)):
    full = D.bundled.load("wordnet", split)
    lo, hi = full.feat_indptr[0], full.feat_indptr[n]
    sub = D.XCData(full.feat_indptr[:n + 1], full.feat_ids[lo:hi], full.feat_vals[lo:hi],
                   full.label_indptr[:n + 1], full.label_ids[:full.label_indptr[n]],
                   full.num_features, full.num_labels)
    D.write(str(d / f"{split}.txt"), sub)
  return str(d / "train.txt"), str(d / "test.txt")


ARCH = ["--hidden", "32", "--active", "64", "--num-hashes", "2", "--num-hash-tables", "4",
        "--batch-size", "128", "--no-progress", "--rebuild-initial", "3", "--batch-negatives", "16"]


def _final_state(ckpt):
  mgr = checkpoint.manager(ckpt)
  raw = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.tree.leaves(raw.state), mgr.latest_step()


@pytest.mark.slow
def test_train_resume_is_exact_and_eval_predict_work(small_files, tmp_path):
  train, test = small_files
  straight, split = str(tmp_path / "a"), str(tmp_path / "b")
  assert main(["train", "--train", train, "--test", test, "--epochs", "2", "--ckpt", straight,
               "--json", str(tmp_path / "a.json"), *ARCH]) == 0
  # Stop after the first epoch and a checkpoint every 5 steps, then resume to 2 epochs.
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", split, "--ckpt-every", "5",
               *ARCH]) == 0
  assert main(["train", "--train", train, "--epochs", "2", "--ckpt", split, "--resume",
               *ARCH]) == 0
  (a, step_a), (b, step_b) = _final_state(straight), _final_state(split)
  assert step_a == step_b == 22  # 1,350 examples after the 10% validation split: 11 batches
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  record = json.load(open(tmp_path / "a.json"))
  evals = record["evals"]
  assert [e["epoch"] for e in evals] == [1, 2] and "valid" in evals[0]
  assert "test" not in record["final"] or record["selected"] is record["final"]
  assert record["compile_seconds"] > 0  # compiled ahead, apart from the training seconds
  assert evals[1]["train_loss"] < evals[0]["train_loss"]
  # The test split is scored once, at the end, on the selected evaluation's state.
  selected = record["selected"]
  assert selected["valid"]["P@1"] == max(e["valid"]["P@1"] for e in evals)
  assert record["test"] == selected["test"] and "recall@1" in record["test"]
  assert sum("test" in e for e in evals) == 1

  out = tmp_path / "eval.json"
  assert main(["eval", "--ckpt", straight + "-best", "--test", test, "--json", str(out)]) == 0
  metrics = json.load(open(out))
  for name in ("P@1", "P@5", "lsh_P@1", "recall@1", "training_recall@1", "labels_scored"):
    assert metrics[name] == pytest.approx(record["test"][name]), name
  pred = tmp_path / "pred.txt"
  assert main(["predict", "--ckpt", straight, "--input", test, "--out", str(pred), "--k", "3"]) == 0
  lines = pred.read_text().splitlines()
  assert len(lines) == 300 and all(len(l.split()) == 3 for l in lines)
  scores = [float(t.split(":")[1]) for t in lines[0].split()]
  assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_resume_mid_epoch_continues_the_same_batches(small_files, tmp_path):
  train, _ = small_files
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", full, *ARCH]) == 0
  # A run killed after step 10 of 12 leaves its step-10 checkpoint; resuming finishes the epoch.
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", cut, "--ckpt-every", "5",
               *ARCH]) == 0
  mgr = checkpoint.manager(cut)
  for step in list(mgr.all_steps()):
    if step > 10:
      mgr.delete(step)
  assert mgr.latest_step() == 10
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", cut, "--resume", *ARCH]) == 0
  for x, y in zip(_final_state(full)[0], _final_state(cut)[0]):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_errors_are_clear_and_exit_2(small_files, tmp_path, capsys):
  train, test = small_files
  ckpt = str(tmp_path / "c")
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", ckpt, *ARCH]) == 0
  other = [a if a != "32" else "48" for a in ARCH]
  assert main(["train", "--train", train, "--epochs", "2", "--ckpt", ckpt, "--resume", *other]) == 2
  assert "another model (hidden [32] -> [48])" in capsys.readouterr().err
  assert main(["train", "--train", train, "--epochs", "2", "--ckpt", ckpt, "--resume",
               "--lazy-adam", *ARCH]) == 2
  assert "catch_up True -> False" in capsys.readouterr().err
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  assert main(["train", "--train", str(empty), *ARCH]) == 2
  assert "no examples" in capsys.readouterr().err
  bad = tmp_path / "bad.txt"
  bad.write_text("1 47866 20472\n99999 3:1\n")
  assert main(["eval", "--ckpt", ckpt, "--test", str(bad)]) == 2
  assert "bad.txt:2: label 99999 outside" in capsys.readouterr().err
  wide = tmp_path / "wide.txt"
  wide.write_text("0 50000:1\n")
  assert main(["predict", "--ckpt", ckpt, "--input", str(wide), "--out", str(tmp_path / "p")]) == 2
  assert "wide.txt:1: feature 50000 outside" in capsys.readouterr().err
  assert main(["eval", "--ckpt", str(tmp_path / "nothing")]) == 2
  assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(small_files, tmp_path, capsys):
  train, _ = small_files
  ckpt = str(tmp_path / "n")
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", ckpt, *ARCH]) == 0
  good, step = _final_state(ckpt)
  code = main(["train", "--train", train, "--epochs", "3", "--ckpt", ckpt, "--resume",
               "--lr", "1e38", *ARCH])
  assert code == 2
  err = capsys.readouterr().err
  assert "loss became" in err or "non-finite" in err
  kept, kept_step = _final_state(ckpt)
  assert kept_step == step
  for x, y in zip(good, kept):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sampled_baseline_and_retrieval_report(small_files, tmp_path):
  """--sampled trains the plain-JAX baseline; a jslide run reports what its index finds."""
  train, test = small_files
  assert main(["train", "--train", train, "--test", test, "--epochs", "1", "--sampled", "50",
               "--json", str(tmp_path / "s.json"), *ARCH]) == 0
  sampled = json.load(open(tmp_path / "s.json"))["test"]
  assert "P@1" in sampled and "recall@1" not in sampled
  assert main(["train", "--train", train, "--test", test, "--epochs", "1", "--hash", "cluster",
               "--retrieved", "20", "--candidates", "32", "--json", str(tmp_path / "c.json"),
               *ARCH]) == 0
  report = json.load(open(tmp_path / "c.json"))["test"]
  for name in ("recall@1", "recall@5", "index_share", "labels_scored", "lsh_P@1",
               "training_recall@1", "training_recall@5"):
    assert 0 <= report[name] <= (32 if name == "labels_scored" else 1)
  assert report["index_share"] == pytest.approx(report["labels_scored"] / 32)
  assert report["inference_index_seconds"] > 0
  # Without an inference index, ranking goes through the training index (no second recall).
  assert main(["train", "--train", train, "--test", test, "--epochs", "1", "--hash", "cluster",
               "--retrieved", "20", "--inference-hash-tables", "0", "--candidates", "32",
               "--json", str(tmp_path / "t.json"), *ARCH]) == 0
  own = json.load(open(tmp_path / "t.json"))["test"]
  assert "training_recall@1" not in own
  assert own["recall@1"] == pytest.approx(report["training_recall@1"])


def test_inference_candidates_are_at_most_five_percent_of_the_labels():
  """Sparse inference scores the active, capped at 5% of the labels, unless told otherwise."""
  assert ModelConfig(10, 20472, active=1024).inference_candidates() == 1023
  assert ModelConfig(10, 18160, active=1024).inference_candidates() == 908
  assert ModelConfig(10, 100_000, active=1024).inference_candidates() == 1024
  assert ModelConfig(10, 20472, active=1024, candidates=2000).inference_candidates() == 2000
  for bad in (0, 20473, 1.5, True):
    with pytest.raises(ValueError, match="candidates must be an int"):
      ModelConfig(10, 20472, candidates=bad)
  for name, bad in (("inference_hash_tables", -1), ("inference_hash_tables", 2.0), ("inference_hashes", 0),
                    ("inference_lists", -1), ("inference_probes", 0)):
    with pytest.raises(ValueError, match=name):
      ModelConfig(10, 20472, **{name: bad})


@pytest.mark.slow
def test_checkpoints_are_never_silently_lost_or_misread(small_files, tmp_path, capsys):
  """Issue 11, items 1, 3 and 7: a step checkpoint on an epoch's last step, a new run in a
  directory holding another run, a resume whose batches would come in another order."""
  train, _ = small_files
  ckpt = str(tmp_path / "c")
  # 11 batches an epoch: --ckpt-every 11 lands on each epoch's last step.
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", ckpt, "--ckpt-every", "11",
               *ARCH]) == 0
  assert main(["train", "--train", train, "--epochs", "2", "--ckpt", ckpt, "--ckpt-every", "11",
               "--resume", *ARCH]) == 0
  assert _final_state(ckpt)[1] == 22
  capsys.readouterr()
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", ckpt, *ARCH]) == 2
  assert "holds checkpoints of another run (latest step 22)" in capsys.readouterr().err
  assert _final_state(ckpt)[1] == 22  # untouched
  resumed = ["train", "--train", train, "--epochs", "3", "--ckpt", ckpt, "--resume", *ARCH]
  assert main([*resumed, "--batch-size", "64"]) == 2  # the later flag wins
  assert "batch_size 128 -> 64" in capsys.readouterr().err
  assert main([*resumed, "--seed", "7"]) == 2
  assert "seed 0 -> 7" in capsys.readouterr().err
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", ckpt, "--overwrite",
               *ARCH]) == 0
  assert _final_state(ckpt)[1] == 11


def test_an_unwritable_checkpoint_path_fails_at_once_without_hanging(small_files, tmp_path):
  """Issue 11, item 2: --ckpt naming a file used to train an epoch, print a traceback from
  orbax's threads and never exit. Now: exit 2 before training, well within the timeout."""
  train, _ = small_files
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("x")
  proc = subprocess.run([sys.executable, "-m", "jslide.xc", "train", "--train", train,
                         "--epochs", "1", "--ckpt", str(not_a_dir), *ARCH],
                        capture_output=True, text=True, timeout=120,
                        cwd=tmp_path)  # not the repository root: its jslide/ has no kernels
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "cannot write checkpoints there" in proc.stderr
  assert "epoch 1:" not in proc.stdout


@pytest.mark.parametrize("content, flags, message", [
    (None, [], "not a file"),                                         # a directory
    (b"\x1f\x8b\x08\x00trunc", [], "cannot read the file"),           # a truncated gzip
    (b"plain text, not gzip", [], "cannot read the file"),            # .gz that is not gzip
    (b"2 5 3\n0 1:1\n\xff\xfe 2:1\n", [], "not UTF-8 text"),
    (b"1 0 3\n0 1:1\n", [], "header declares 0 features"),
    (b"1 5 3\n0 1:1\n", ["--batch-size", "0"], "batch_size must be an int >= 1"),
    (b"1 5 3\n0 1:1\n", ["--batch-size", "-4"], "batch_size must be an int >= 1"),
    (b"1 5 3\n0 1:1\n", ["--max-features", "0"], "max_features must be an int >= 1"),
    (b"1 5 3\n0 1:1\n", ["--max-labels", "0"], "max_labels must be an int >= 1"),
])
def test_bad_files_and_flags_are_messages_with_exit_2(tmp_path, capsys, content, flags,
                                                     message):
  """Issue 11, item 9: what used to be tracebacks (or a silent run that trained nothing)."""
  if content is None:
    path = tmp_path / "adir"
    path.mkdir()
  else:
    gz = content.startswith(b"\x1f\x8b") or content.startswith(b"plain")
    path = tmp_path / ("data.txt.gz" if gz else "data.txt")
    path.write_bytes(content)
  assert main(["train", "--train", str(path), "--epochs", "1", "--no-progress",
               "--valid-fraction", "0", *flags]) == 2
  assert message in capsys.readouterr().err


@pytest.mark.slow
def test_predict_refuses_k_beyond_the_labels_and_never_leaves_a_partial_file(small_files,
                                                                            tmp_path, capsys):
  """Issue 11, item 11."""
  train, test = small_files
  ckpt, out = str(tmp_path / "p"), tmp_path / "top.txt"
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", ckpt, *ARCH]) == 0
  out.write_text("previous predictions\n")
  for flags in (["--k", "30000"], ["--k", "65", "--via-lsh"]):
    assert main(["predict", "--ckpt", ckpt, "--input", test, "--out", str(out), *flags]) == 2
    assert "predict: k" in capsys.readouterr().err
  assert out.read_text() == "previous predictions\n"
  assert main(["predict", "--ckpt", ckpt, "--input", test, "--out", str(out), "--k", "3",
               "--via-lsh"]) == 0
  lines = out.read_text().splitlines()
  assert len(lines) == 300 and all(":" in l and "-inf" not in l for l in lines)
  assert not (tmp_path / "top.txt.partial").exists()


@pytest.mark.slow
def test_eval_and_predict_rebuild_a_checkpoints_neuron_lists(small_files, tmp_path, capsys):
  """A model trained with --inference-lists ranks through neuron lists at eval and predict
  too, built from the training file as the trainer built them (same data: no validation
  split; same seed), so eval reproduces the trainer's numbers through them."""
  train, test = small_files
  ckpt = str(tmp_path / "l")
  lists = ["--inference-lists", "16", "--inference-probes", "2", "--valid-fraction", "0"]
  assert main(["train", "--train", train, "--test", test, "--epochs", "1", "--ckpt", ckpt,
               "--json", str(tmp_path / "l.json"), *lists, *ARCH]) == 0
  final = json.load(open(tmp_path / "l.json"))["final"]["test"]
  out = tmp_path / "eval.json"
  assert main(["eval", "--ckpt", ckpt, "--test", test, "--train", train, "--json", str(out)]) == 0
  metrics = json.load(open(out))
  for name in ("P@1", "lsh_P@1", "lsh_P@5", "recall@1", "labels_scored"):
    assert metrics[name] == pytest.approx(final[name]), name
  assert metrics["labels_scored"] <= 0.05 * metrics["num_labels"]
  # Without the training data the lists cannot be built: said, not a silent fallback.
  assert main(["eval", "--ckpt", ckpt, "--test", test]) == 2
  assert "neuron lists" in capsys.readouterr().err
  pred = tmp_path / "pred.txt"
  assert main(["predict", "--ckpt", ckpt, "--input", test, "--out", str(pred), "--k", "3",
               "--via-lsh"]) == 2
  assert "--train" in capsys.readouterr().err
  assert main(["predict", "--ckpt", ckpt, "--input", test, "--out", str(pred), "--k", "3",
               "--via-lsh", "--train", train]) == 0
  lines = pred.read_text().splitlines()
  assert len(lines) == 300 and all(len(l.split()) == 3 for l in lines)
  exact = tmp_path / "exact.txt"
  assert main(["predict", "--ckpt", ckpt, "--input", test, "--out", str(exact), "--k", "1"]) == 0
  top = [l.split(":")[0] for l in exact.read_text().splitlines()]
  agree = np.mean([l.split()[0].split(":")[0] == t for l, t in zip(lines, top)])
  assert agree == pytest.approx(final["recall@1"], abs=0.01)  # the exact top 1, when listed


def _step_dirs(ckpt):
  return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []


def _largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  return max(files, key=os.path.getsize)


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(small_files, tmp_path,
                                                                          capsys):
  """Issue 11, item 8: flipped bytes used to restore silently (weights of 1e12) and a damaged
  file gave a long traceback; the checksums now send resume to the previous intact step, and
  it says so."""
  train, _ = small_files
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", full, *ARCH]) == 0
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", cut, "--ckpt-every", "4",
               *ARCH]) == 0
  older, latest = _step_dirs(cut)  # step 8 and the end of the epoch (11 batches)
  victim = _largest_file(os.path.join(cut, str(latest)))
  data = bytearray(open(victim, "rb").read())
  data[len(data) // 2] ^= 0xFF  # one flipped byte
  open(victim, "wb").write(bytes(data))
  capsys.readouterr()
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", cut, "--resume", *ARCH]) == 0
  err = capsys.readouterr().err
  assert f"checkpoint step {latest} in {cut} is damaged" in err
  assert f"using step {older}" in err
  for x, y in zip(_final_state(full)[0], _final_state(cut)[0]):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Every step damaged: a message and exit 2, not a traceback.
  for step in _step_dirs(cut):
    os.remove(_largest_file(os.path.join(cut, str(step))))
  assert main(["train", "--train", train, "--epochs", "2", "--ckpt", cut, "--resume", *ARCH]) == 2
  assert "no intact checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_exact_and_loses_no_checkpoint(small_files,
                                                                               tmp_path):
  """Issue 11: the trainer killed (SIGKILL) 20 times at random points of training and
  checkpointing (a checkpoint every step), resumed each time: the newest intact checkpoint
  never goes back, and the final weights equal an uninterrupted run's bit for bit."""
  train, _ = small_files
  flags = ["--train", train, "--epochs", "6", *ARCH]  # 66 steps
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  assert main(["train", *flags, "--ckpt", full]) == 0
  # The 21 trainer processes share a persistent compilation cache: each then starts in about
  # 4 s instead of 12 (the same executables, so resume stays bit-exact; an entry cut short by
  # a kill fails JAX's read and is compiled again).
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  rng = np.random.default_rng(0)
  kills, newest = 0, 0
  while kills < 20:
    resume = ["--resume"] if _step_dirs(cut) else []
    proc = subprocess.Popen([sys.executable, "-m", "jslide.xc", "train", *flags, "--ckpt", cut,
                             "--ckpt-every", "1", *resume], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while proc.poll() is None and max(_step_dirs(cut), default=0) <= newest:
      assert time.time() < deadline, "the trainer made no progress"
      time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
      assert proc.returncode == 0, proc.stderr.read().decode()
      break  # finished before this kill
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    kills += 1
    checkpoint.read_meta(cut)  # the newest intact step reads (a damaged one would be named)
    intact = max(_step_dirs(cut))
    assert intact >= newest  # no checkpoint lost
    newest = intact
  assert kills == 20
  done = subprocess.run([sys.executable, "-m", "jslide.xc", "train", *flags, "--ckpt", cut,
                         "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  assert "damaged" not in done.stderr
  (a, step_a), (b, step_b) = _final_state(full), _final_state(cut)
  assert step_a == step_b
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sigint_saves_where_the_run_stands_writes_the_record_and_exits_130(small_files,
                                                                          tmp_path):
  """Issue 33, item 7: Ctrl-C used to give exit 130 with several tracebacks from orbax's
  threads, no checkpoint and no record. Now: the step in flight finishes, the state is
  saved, the JSON record says where it stopped, one line says so, exit 130; resuming
  finishes the run as if it had never stopped."""
  train, _ = small_files
  flags = ["--train", train, "--epochs", "40", *ARCH]
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  assert main(["train", *flags, "--ckpt", full]) == 0
  record = tmp_path / "cut.json"
  proc = subprocess.Popen([sys.executable, "-m", "jslide.xc", "train", *flags, "--ckpt", cut,
                           "--json", str(record)], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:  # training has started once the step is compiled
    if "compiled" in line:
      break
  time.sleep(1.0)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err
  stopped = json.load(open(record))["interrupted"]["step"]
  assert f"interrupted at step {stopped}; saved in {cut}" in out
  assert 0 < stopped < 440 and _final_state(cut)[1] == stopped
  assert not [n for n in os.listdir(cut) if "tmp" in n]
  assert main(["train", *flags, "--ckpt", cut, "--resume"]) == 0
  for x, y in zip(_final_state(full)[0], _final_state(cut)[0]):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
@pytest.mark.parametrize("num_labels, flags", [(3, ["--active", "4"]), (60, [])])
def test_small_label_sets_train_and_evaluate(tmp_path, num_labels, flags):
  """Issue 33, item 5: with fewer than 100 labels the default candidates fell below k=5 and
  top_k failed after the first epoch, before the checkpoint was written; 3 labels with an
  active set of 4 computed a negative size."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 400), ("test", 100)):
    lines = [f"{n} 30 {num_labels}"]
    for _ in range(n):
      labels = ",".join(map(str, sorted(set(rng.integers(0, num_labels, 2).tolist()))))
      feats = " ".join(f"{f}:1" for f in sorted(set(rng.integers(0, 30, 4).tolist())))
      lines.append(f"{labels} {feats}")
    (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
  record = tmp_path / "r.json"
  assert main(["train", "--train", str(tmp_path / "train.txt"), "--test",
               str(tmp_path / "test.txt"), "--epochs", "1", "--batch-size", "64",
               "--max-labels", "2", "--hidden", "16", "--no-progress", "--json", str(record),
               *flags]) == 0
  test = json.load(open(record))["test"]
  assert 0 <= test["P@1"] <= 1 and 0 <= test["recall@1"] <= 1


def test_an_active_set_smaller_than_the_labels_kept_is_refused_before_training(small_files,
                                                                            capsys):
  train, _ = small_files
  assert main(["train", "--train", train, "--active", "4", "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert "active=4 must be at least max_labels=8" in err and "epoch 1" not in err


@pytest.mark.slow
def test_output_paths_are_checked_before_any_work(small_files, tmp_path, capsys):
  """Issue 33, items 6 and 8: an unwritable --json lost the record after training (with a
  traceback), and predict --out naming a directory raised IsADirectoryError and left a
  stray .partial file."""
  train, test = small_files
  assert main(["train", "--train", train, "--json", str(tmp_path / "no" / "r.json"),
               *ARCH]) == 2
  assert "the folder" in capsys.readouterr().err
  ckpt = str(tmp_path / "c")
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", ckpt, *ARCH]) == 0
  assert main(["predict", "--ckpt", ckpt, "--input", test, "--out", str(tmp_path)]) == 2
  assert "is a directory" in capsys.readouterr().err
  assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_a_checkpoint_of_the_other_trainer_is_refused_by_name(small_files, tmp_path, capsys):
  """Issue 33, item 8: an XC checkpoint given to `lm eval` was a KeyError('lm'), an LM one
  given to `xc eval` a KeyError('model')."""
  from jslide.lm.__main__ import main as lm_main
  train, test = small_files
  ckpt = str(tmp_path / "c")
  assert main(["train", "--train", train, "--epochs", "1", "--ckpt", ckpt, *ARCH]) == 0
  capsys.readouterr()
  assert lm_main(["eval", "--ckpt", ckpt, "--valid", test]) == 2
  assert "not a checkpoint of the language-model trainer" in capsys.readouterr().err
  lm = tmp_path / "lm"
  text = tmp_path / "t.txt"
  text.write_text(" ".join(f"w{i % 7}" for i in range(600)) + "\n")
  assert lm_main(["train", "--train", str(text), "--valid", str(text), "--vocab-size", "10",
                  "--context", "8", "--features", "8", "--heads", "1", "--layers", "1",
                  "--hidden", "16", "--retrieved", "2", "--sampled", "4", "--batch-size", "4",
                  "--max-steps", "2", "--no-progress", "--ckpt", str(lm)]) == 0
  capsys.readouterr()
  assert main(["eval", "--ckpt", str(lm), "--test", test]) == 2
  assert "not a checkpoint of the XC trainer" in capsys.readouterr().err


def test_row_shards_are_checked_before_training(small_files, tmp_path, capsys):
  """--row-shards (the output layer split by rows over devices, tests/test_row_sharded.py
  and tests/test_distributed.py) is refused with the baselines and when it does not divide
  the devices."""
  train, _ = small_files
  for flags, message in ((["--dense"], "row_shards > 1 trains jslide's softmax"),
                         ([], f"row_shards=2 must divide the {jax.device_count()} devices")):
    assert main(["train", "--train", train, "--row-shards", "2", *flags, *ARCH]) == 2
    err = capsys.readouterr().err
    assert message in err and "epoch 1" not in err
