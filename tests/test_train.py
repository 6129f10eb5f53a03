"""The shared training framework (jslide.train): run settings and their command line, the
generic step, the loop's evaluation points, limits, selection and exact resume, and the rule
that no application imports another."""

import argparse
import ast
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jslide
from jslide import train as T
from jslide.lm import config as lm_config
from jslide.xc import config as xc_config


@pytest.mark.parametrize("cls", [T.RunConfig, xc_config.RunConfig, xc_config.ModelConfig,
                                 lm_config.RunConfig, lm_config.ModelConfig])
def test_every_field_is_an_option_with_the_dataclass_default(cls):
  parser = argparse.ArgumentParser()
  T.add_arguments(parser, cls)
  args = parser.parse_args([])
  cli = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
  assert cli and all(hasattr(args, f.name) for f in cli)
  required = {f.name: 3 for f in dataclasses.fields(cls) if not f.metadata.get("cli", True)}
  assert T.from_args(cls, args, **required) == cls(**required)  # defaults defined once


def test_options_read_back_into_the_config():
  parser = argparse.ArgumentParser()
  T.add_arguments(parser, xc_config.ModelConfig)
  T.add_arguments(parser, xc_config.RunConfig)
  args = parser.parse_args(["--hidden", "64", "32", "--hash", "dwta", "--lr", "0.01",
                            "--lazy-adam", "--dense", "--epochs", "2", "--ckpt-every", "7"])
  model = T.from_args(xc_config.ModelConfig, args, num_features=5, num_labels=9)
  run = T.from_args(xc_config.RunConfig, args)
  assert model.hidden == (64, 32) and model.hash_family == "dwta" and model.num_labels == 9
  assert (run.learning_rate, run.catch_up, run.dense, run.epochs, run.checkpoint_every) == \
      (0.01, False, True, 2, 7)
  with pytest.raises(SystemExit):  # choices are enforced by argparse
    parser.parse_args(["--hash", "minhash"])


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be an int >= 1"),
    ("epochs", -1, "epochs must be an int >= 0"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number > 0"),
    ("time_limit", -5.0, "time_limit must be a finite number >= 0"),
    ("rebuild_growth", 0.5, "rebuild_growth must be a finite number >= 1"),
    ("max_steps", 1.5, "max_steps must be an int >= 0"),
])
def test_run_config_refuses_bad_values_by_name(field, value, message):
  with pytest.raises(ValueError, match=message):
    T.RunConfig(**{field: value})


def test_resume_may_change_only_what_does_not_move_the_run():
  saved = T.config.to_json(T.RunConfig())
  wanted = T.config.to_json(T.RunConfig(epochs=9, learning_rate=0.5, max_steps=3,
                                        checkpoint_every=2, batch_size=32, eval_every=4))
  assert T.config.changed_on_resume(T.RunConfig, saved, wanted) == {
      "batch_size": (16, 32), "eval_every": (0, 4)}


def _source_files(package: str):
  root = pathlib.Path(jslide.__file__).parent / package
  return [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))


def _imports(path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def test_no_application_imports_another_and_the_library_imports_none():
  apps = ("jslide.xc", "jslide.lm")
  for pkg in ("xc", "lm"):
    others = [a for a in apps if a != f"jslide.{pkg}"]
    for path in _source_files(pkg):
      bad = [n for n in _imports(path) if any(n == o or n.startswith(o + ".") for o in others)]
      assert not bad, (path, bad)
  for pkg in ("train", "nn", "lsh", "datasets", "optim.py", "ops.py", "losses.py"):
    for path in _source_files(pkg):
      bad = [n for n in _imports(path) if any(n == a or n.startswith(a + ".") for a in apps)]
      assert not bad, (path, bad)


class _Indexed(nnx.Module):
  """A module of no class the framework knows that holds an index."""

  def __init__(self, rngs):
    self.layer = jslide.nn.SparseDense(8, 64, active=16, num_hashes=2, num_hash_tables=2,
                                       bin_size=4, rngs=rngs)
    self.rebuilds = nnx.Variable(jnp.zeros([], jnp.int32))
    self.index = self.layer.index  # the same Index, held here too

  def rebuild_index(self):
    self.rebuilds.set_value(self.rebuilds.get_value() + 1)


class _Stale(nnx.Module):
  def __init__(self, rngs):
    self.index = jslide.nn.Index(jnp.zeros(3))


def test_any_module_holding_an_index_is_rebuilt_and_one_that_cannot_be_is_refused():
  model = _Indexed(nnx.Rngs(0))
  jslide.train.rebuild_indices(model)
  assert int(model.rebuilds.get_value()) == 1
  with pytest.raises(TypeError, match="_Stale holds an Index but has no rebuild_index"):
    jslide.train.rebuild_indices(_Stale(nnx.Rngs(0)))


def _regression(n=64, d=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x @ rng.normal(size=(d,))).astype(np.float32)
  return x, y


def _linear_loss(model, batch, key):
  del key
  return (model(batch["x"])[:, 0] - batch["y"]) ** 2, batch["mask"]


def _linear_step(schedule=None, seed=0):
  model = nnx.Linear(8, 1, rngs=nnx.Rngs(seed))
  return T.make_dense_train_step(model, _linear_loss, tx=optax.adam(0.3), schedule=schedule)


def _fit(run, *, store=None, resume=False, select=None, evaluate=None):
  x, y = _regression()
  graphdef, state, step = _linear_step()
  per_epoch = len(x) // run.batch_size

  def batches(epoch, start):
    order = np.random.default_rng([run.seed, epoch]).permutation(len(x))
    for i in range(start, per_epoch):
      rows = order[i * run.batch_size:(i + 1) * run.batch_size]
      yield {"x": x[rows], "y": y[rows], "mask": np.ones(len(rows), bool)}, len(rows)

  def mse(state, entry):
    model = state.model(graphdef)
    return {"mse": float(jnp.mean((model(x)[:, 0] - y) ** 2))}

  logged = []
  result = T.fit(state, step, run=run, key=jax.random.PRNGKey(0), num_batches=per_epoch,
                 batches=batches, evaluate=evaluate or mse, meta={"model": {}, "run": run.to_json(),
                                                                  "data": {"n": len(x)}},
                 record={}, store=store, select=select, resume=resume, progress=False,
                 log=logged.append)
  return result, logged


def test_fit_evaluates_at_epoch_ends_and_every_n_steps_and_stops_at_its_limits():
  result, logged = _fit(T.RunConfig(epochs=3, batch_size=16, eval_every=3))  # 4 steps/epoch
  steps = [e["step"] for e in result.record["evals"]]
  assert steps == [3, 4, 6, 8, 9, 12] and logged == result.record["evals"]
  assert [e["epoch"] for e in result.record["evals"]][:2] == [0.75, 1]
  mse = [e["mse"] for e in result.record["evals"]]
  assert mse[-1] < 0.5 * mse[0]
  assert int(result.state.step) == 12 and result.record["step_ms"] > 0
  result, _ = _fit(T.RunConfig(epochs=3, batch_size=16, max_steps=6))
  assert [e["step"] for e in result.record["evals"]] == [4, 6] and int(result.state.step) == 6


def test_fit_selects_the_best_evaluation_and_returns_its_state():
  scores = iter([1.0, 3.0, 2.0])
  result, _ = _fit(T.RunConfig(epochs=3, batch_size=16),
                   evaluate=lambda state, entry: {"score": next(scores),
                                                  "w": np.asarray(state.params["kernel"]
                                                                  .get_value()).tolist()},
                   select=lambda e: e["score"])
  selected = result.record["selected"]
  assert selected["score"] == 3.0 and selected["step"] == 8
  np.testing.assert_array_equal(np.asarray(result.best.params["kernel"].get_value()),
                                np.asarray(selected["w"], np.float32))


def test_fit_resumes_exactly_and_refuses_another_run(tmp_path):
  run = T.RunConfig(epochs=2, batch_size=16, checkpoint_every=3)
  whole, _ = _fit(run)
  with T.Checkpoints(str(tmp_path / "c"), resume=False, overwrite=False, best=False) as store:
    _fit(dataclasses.replace(run, max_steps=5), store=store)
  store = T.Checkpoints(str(tmp_path / "c"), resume=True, overwrite=False, best=False)
  resumed, _ = _fit(run, store=store, resume=True)
  assert [e["step"] for e in resumed.record["evals"]] == [4, 5, 8]
  for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(T.CheckpointError, match=r"other run settings \(batch_size 16 -> 8\)"):
    _fit(dataclasses.replace(run, batch_size=8), store=store, resume=True)


def test_fit_stops_at_a_non_finite_loss_with_the_last_good_state():
  x, y = _regression()
  graphdef, state, step = _linear_step()

  def batches(epoch, start):
    for i in range(start, 4):
      bad = np.full(16, np.nan, np.float32) if i == 2 else y[:16]
      yield {"x": x[:16], "y": bad, "mask": np.ones(16, bool)}, 16

  with pytest.raises(T.NonFiniteLossError, match="at step 3 .*batch 2"):
    T.fit(state, step, run=T.RunConfig(epochs=1, batch_size=16), key=jax.random.PRNGKey(0),
          num_batches=4, batches=batches, evaluate=lambda s, e: {}, meta={}, record={},
          progress=False, log=lambda e: None)


def test_dense_steps_rebuild_indices_on_their_schedule(rng):
  model = jslide.nn.SparseMLP(30, 50, hidden=(8,), active=10, num_hashes=2, num_hash_tables=2,
                              bin_size=4, rngs=nnx.Rngs(0))
  from jslide.xc.objectives import full_softmax_loss
  _, state, step = T.make_dense_train_step(model, full_softmax_loss, tx=optax.adam(0.1),
                                           schedule=jslide.lsh.RebuildSchedule(2, 1.0, 2))
  batch = {"feat_ids": jnp.asarray(rng.integers(0, 30, (4, 3)), jnp.int32),
           "feat_vals": jnp.ones((4, 3), jnp.float32),
           "labels": jnp.asarray(rng.integers(0, 50, (4, 1)), jnp.int32),
           "mask": jnp.ones(4, bool)}
  rebuilt = []
  for i in range(6):
    state, m = step(state, batch, jax.random.PRNGKey(i))
    rebuilt.append(bool(m["rebuilt"]))
  assert rebuilt == [False, True] * 3
  _, state, bad = T.make_dense_train_step(model, lambda m, b, k: (jnp.zeros(3),
                                                                  jnp.ones(2, bool)))
  with pytest.raises(ValueError, match="values of shape .* and a mask of shape"):
    bad(state, batch, jax.random.PRNGKey(0))


def test_a_sigint_stops_after_the_step_in_flight_with_the_state_saved(tmp_path):
  import os
  import signal
  import threading
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signals reach the main thread only")
  x, y = _regression()
  graphdef, state, step = _linear_step()
  run = T.RunConfig(epochs=3, batch_size=16)

  def batches(epoch, start):
    for i in range(start, 4):
      if epoch == 1 and i == 2:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 7 is dispatched
      yield {"x": x[:16], "y": y[:16], "mask": np.ones(16, bool)}, 16

  store = T.Checkpoints(str(tmp_path / "c"), resume=False, overwrite=False, best=False)
  handler = signal.getsignal(signal.SIGINT)
  result = T.fit(state, step, run=run, key=jax.random.PRNGKey(0), num_batches=4,
                 batches=batches, evaluate=lambda s, e: {}, meta={"run": run.to_json()},
                 record={}, store=store, progress=False, log=lambda e: None)
  assert result.interrupted and result.record["interrupted"]["step"] == 7
  assert [e["step"] for e in result.record["evals"]] == [4]  # no evaluation after the stop
  meta = T.checkpoint.read_meta(str(tmp_path / "c"))
  assert meta["position"]["epoch"] == 1 and meta["position"]["next_batch"] == 3
  assert signal.getsignal(signal.SIGINT) is handler  # restored


def test_two_runs_cannot_share_a_checkpoint_directory(tmp_path):
  """Issue 33, item 10: two trainers saving into one --ckpt deleted each other's steps."""
  first = T.Checkpoints(str(tmp_path / "c"), resume=False, overwrite=False, best=False)
  with pytest.raises(T.CheckpointError, match="another run is saving checkpoints there"):
    T.Checkpoints(str(tmp_path / "c"), resume=True, overwrite=False, best=False)
  first.close()  # the first run ends
  with T.Checkpoints(str(tmp_path / "c"), resume=True, overwrite=False, best=False):
    pass


@pytest.mark.parametrize("table_tx", [
    lambda: optax.chain(optax.clip_by_global_norm(1.0), jslide.optim.sparse_adam(1e-3)),
    lambda: optax.MultiSteps(jslide.optim.sparse_adam(1e-3), 2),
    lambda: optax.apply_if_finite(jslide.optim.sparse_adam(1e-3), 2),
], ids=["clip_by_global_norm", "MultiSteps", "apply_if_finite"])
def test_optax_wrappers_around_the_sparse_optimizer_are_refused_with_what_works(table_tx):
  """Issue 33, item 11: these failed with JAX's generic errors ("lax.select requires
  arguments to have the same dtypes", pytree structure errors); the step now names jslide's
  own clip, skip and accumulation instead."""
  model = jslide.nn.SparseDense(8, 64, active=16, num_hashes=2, num_hash_tables=2, bin_size=4,
                                rngs=nnx.Rngs(0))

  def loss(m, batch, key):
    logits, ids = m(batch["x"], key=key)
    values = jslide.losses.active_softmax_cross_entropy(logits, ids, batch["y"])
    return values, jnp.ones(values.shape, bool)

  _, state, step = jslide.train.make_train_step(model, loss, table_tx=table_tx(), schedule=None)
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
           "y": jnp.asarray(rng.integers(0, 64, size=(4, 1)), jnp.int32)}
  with pytest.raises(ValueError, match="jslide.optim.clip_by_global_norm before") as info:
    step(state, batch, jax.random.key(0))
  assert "jslide.optim.apply_if_finite" in str(info.value)


def test_a_save_keeps_a_bounded_window_in_flight_and_grows_it_for_a_large_array(
    tmp_path, monkeypatch):
  """Issue 29: orbax handed every array to its writers at once, whose buffers held most of
  the state a second time (the 1b preset's 7 GB state peaked about 5 GB above itself). Saves
  now keep SAVE_WINDOW_BYTES in flight; an array larger than that widens the window of the
  run's manager (orbax would fail in its threads), and a manager too narrow for a state is
  refused before orbax sees it."""
  import jax.numpy as jnp
  monkeypatch.setattr(T.checkpoint, "SAVE_WINDOW_BYTES", 4096)
  import collections
  state = collections.namedtuple("S", "big step")(jnp.arange(4096, dtype=jnp.float32),
                                                   jnp.int32(3))  # 16 KB
  assert T.checkpoint.save_window(state) == 16384
  mgr = T.checkpoint.manager(str(tmp_path / "narrow"))
  with pytest.raises(ValueError, match="save window of 4,096"):
    T.checkpoint.save(mgr, state, {})
  with T.Checkpoints(str(tmp_path / "c"), resume=False, overwrite=False, best=False) as store:
    store.save(state, {"k": 1})
    assert store.mgr.jslide_save_window == 16384
    restored, meta = T.checkpoint.restore_checked(str(tmp_path / "c"), state, lambda m: None)
  np.testing.assert_array_equal(np.asarray(restored.big), np.arange(4096))
  assert meta == {"k": 1}
