"""jslide.value_and_grad: row-sparse table gradients equal the dense ones, cost no [N, d]."""

import jax
import optax
import jax.numpy as jnp
import pytest

import jslide
from jslide import reference as ref

from helpers import assert_close, normal, random_ids


def _mlp_params(rng, n_in=40, d=8, n_out=30):
  return {"emb": normal(rng, n_in, d), "hidden": normal(rng, d, d, scale=0.3),
          "out_w": normal(rng, n_out, d), "out_b": normal(rng, n_out)}


def _mlp_loss(ops):
  def loss(p, feat_ids, feat_vals, ids, labels):
    h = ops.embedding_bag(feat_ids, feat_vals, p["emb"])
    h = jax.nn.relu(h @ p["hidden"])
    logits = ops.sparse_linear(h, p["out_w"], p["out_b"], ids)
    return jslide.losses.active_softmax_cross_entropy(logits, ids, labels).mean()
  return loss


def _batch(rng, n_in=40, n_out=30, b=6, f=5, a=9):
  labels = jnp.asarray(rng.integers(0, n_out, size=(b, 1)), jnp.int32)
  ids = random_ids(rng, n_out, (b, a)).at[:, 0].set(labels[:, 0])
  return random_ids(rng, n_in, (b, f)), normal(rng, b, f), ids, labels


TABLES = jslide.tables.min_rows(20)


def test_row_sparse_grads_equal_dense_grads(rng):
  p, batch = _mlp_params(rng), _batch(rng)
  v_ref, g_ref = jax.value_and_grad(_mlp_loss(ref))(p, *batch)
  v, g = jax.jit(jslide.value_and_grad(_mlp_loss(jslide), tables=TABLES))(p, *batch)
  assert_close(v, v_ref)
  for name in ("emb", "out_w", "out_b"):
    assert isinstance(g[name], jslide.RowSparseGrad), name
    assert_close(g[name].todense(), g_ref[name], atol=1e-5)
  assert isinstance(g["hidden"], jax.Array)
  assert_close(g["hidden"], g_ref["hidden"], atol=1e-5)


def test_mask_tree_has_aux_and_grad(rng):
  p, batch = _mlp_params(rng), _batch(rng)
  mask = {"emb": False, "hidden": False, "out_w": True, "out_b": False}

  def loss_aux(p, *batch):
    return _mlp_loss(jslide)(p, *batch), {"two": jnp.float32(2)}

  (v, aux), g = jslide.value_and_grad(loss_aux, tables=mask, has_aux=True)(p, *batch)
  g_ref = jax.grad(_mlp_loss(ref))(p, *batch)
  assert float(aux["two"]) == 2.0
  assert isinstance(g["out_w"], jslide.RowSparseGrad)
  assert isinstance(g["emb"], jax.Array) and isinstance(g["out_b"], jax.Array)
  for name in p:
    dense = g[name].todense() if isinstance(g[name], jslide.RowSparseGrad) else g[name]
    assert_close(dense, g_ref[name], atol=1e-5)
  g2 = jslide.grad(_mlp_loss(jslide), tables=mask)(p, *batch)
  assert_close(g2["out_w"].todense(), g_ref["out_w"], atol=1e-5)


def test_table_used_twice_and_unused_table(rng):
  n, d = 25, 4
  p = {"w": normal(rng, n, d), "unused": normal(rng, n, d), "x": normal(rng, 3, d)}
  ids1, ids2 = random_ids(rng, n, (3, 5)), random_ids(rng, n, (3, 8))

  def loss(p):
    y1 = jslide.sparse_linear(p["x"], p["w"], None, ids1)
    y2 = jslide.sparse_linear(p["x"] * 2, p["w"], None, ids2)
    return jnp.sum(y1 ** 2) + jnp.sum(jnp.sin(y2))

  def loss_ref(p):
    return (jnp.sum(ref.sparse_linear(p["x"], p["w"], None, ids1) ** 2)
            + jnp.sum(jnp.sin(ref.sparse_linear(p["x"] * 2, p["w"], None, ids2))))

  g = jslide.grad(loss, tables=jslide.tables.min_rows(n))(p)
  g_ref = jax.grad(loss_ref)(p)
  assert g["w"].ids.shape == (6, 8)  # two uses stacked, A padded to the wider one
  assert_close(g["w"].todense(), g_ref["w"], atol=1e-4)
  assert_close(g["unused"].todense(), jnp.zeros((n, d)))
  assert_close(g["x"], g_ref["x"], atol=1e-4)


def test_table_misuse_is_a_type_error(rng):
  p = {"w": normal(rng, 30, 4)}
  with pytest.raises(TypeError, match="can only be passed to jslide ops"):
    jslide.grad(lambda p: jnp.sum(p["w"] @ jnp.ones(4)), tables=TABLES)(p)
  with pytest.raises(TypeError, match="can only be passed to jslide ops"):
    jslide.grad(lambda p: jnp.sum(p["w"][0]), tables=TABLES)(p)


def test_non_scalar_loss_is_rejected(rng):
  p = {"w": normal(rng, 30, 4)}
  ids = random_ids(rng, 30, (2, 3))
  with pytest.raises(TypeError, match="must return a scalar"):
    jslide.grad(lambda p: jslide.sparse_linear(jnp.ones((2, 4)), p["w"], None, ids),
                tables=TABLES)(p)


def test_no_dense_table_gradient_in_compiled_step():
  # The performance rule, checked on the compiled program: with N = 200,000 rows the
  # row-sparse step needs far less temporary memory than one [N, d] table.
  n, d, b, a = 200_000, 64, 32, 64
  params = {"w": jnp.zeros((n, d)), "b": jnp.zeros((n,))}
  tx = jslide.optim.sparse_adam(1e-3)
  state = tx.init(params)
  x, ids = jnp.ones((b, d)), jnp.zeros((b, a), jnp.int32)
  labels = jnp.zeros((b, 1), jnp.int32)

  def step(p, s):
    def loss(p):
      logits = jslide.sparse_linear(x, p["w"], p["b"], ids)
      return jslide.losses.active_softmax_cross_entropy(logits, ids, labels).mean()
    _, g = jslide.value_and_grad(loss, tables=jslide.tables.min_rows(n))(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state).compile()
  mem = compiled.memory_analysis()
  table_bytes = n * d * 4
  assert mem.temp_size_in_bytes < table_bytes / 20, mem
  # And every table-sized output is written in place into a donated input.
  assert mem.alias_size_in_bytes >= 3 * table_bytes

  dense = jax.jit(lambda p: jax.grad(lambda p: jnp.sum(
      jslide.sparse_linear(x, p["w"], p["b"], ids)))(p)).lower(params).compile()
  assert dense.memory_analysis().output_size_in_bytes >= table_bytes  # the dense path is dense
