"""Tests of jmeta.jacobian: closed forms, jacfwd vs jacrev, numpy ranks, brute-force Jacobians."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta.data as data
from jmeta import jacobian as jac
from jmeta.graph import to_dense
from jmeta.models import MODEL_NAMES, ModelConfig, create_model


@pytest.fixture(scope="module")
def graph():
  return data.load("synthetic", num_nodes=30, num_features=12, avg_degree=3.0, num_classes=3,
                   seed=0)


def build(graph, name, **kw):
  cfg = ModelConfig(name, **{"num_layers": 2, "hidden": 8, "heads": 2, **kw})
  model = create_model(cfg, graph.num_classes)
  return model, model.init(jax.random.key(3), graph)


def gcn_ahat(graph) -> np.ndarray:
  """Dense ``D^-1/2 (A + I) D^-1/2`` in numpy, ``[n, n]`` (``Ahat[u, v]``: weight of u -> v)."""
  a = np.asarray(to_dense(graph), np.float64) + np.eye(graph.num_nodes)
  deg = a.sum(0)
  return a / np.sqrt(deg[:, None] * deg[None, :])


def test_gcn_layer1_closed_form(graph):
  model, params = build(graph, "gcn")
  w = np.asarray(params["params"]["layer_0"]["lin"]["kernel"], np.float64)   # [d, m]
  b = np.asarray(params["params"]["layer_0"]["bias"], np.float64)
  x = np.asarray(graph.x, np.float64)
  xt = gcn_ahat(graph).T @ x                                                 # x~_v rows
  z = xt @ w + b
  expected = (z > 0)[:, :, None] * w.T[None]                                 # diag(relu') W^T
  j = jac.node_jacobians(model, params, graph, 1, mode="jacfwd")
  chex.assert_shape(j, (graph.num_nodes, 8, graph.num_features))
  np.testing.assert_allclose(np.asarray(j), expected, atol=1e-6)
  ranks = np.array([np.linalg.matrix_rank(w[:, z[v] > 0]) if (z[v] > 0).any() else 0
                    for v in range(graph.num_nodes)])
  res = jac.node_ranks(model, params, graph, 1)
  np.testing.assert_array_equal(res.ranks, ranks)
  np.testing.assert_array_equal(res.metamer_dim, graph.num_features - ranks)
  assert len(set(ranks.tolist())) > 1  # the test sees different active sets


@pytest.mark.parametrize("m,d,r", [(5, 40, 3), (16, 60, 16), (20, 30, 7), (30, 10, 4),
                                   (8, 8, 1)])
def test_matrix_rank_matches_numpy(m, d, r):
  rng = np.random.default_rng(m * 100 + r)
  a = (rng.normal(size=(6, m, r)) @ rng.normal(size=(6, r, d))).astype(np.float32)
  a[0] = 0.0
  got = np.asarray(jac.matrix_rank(jnp.asarray(a)))
  np.testing.assert_array_equal(got, [np.linalg.matrix_rank(x) for x in a])
  np.testing.assert_array_equal(got[1:], r)
  # float32 rounding noise of the low-rank product must not count as rank
  sv = np.linalg.svd(a[1], compute_uv=False)
  if r < min(m, d):
    assert 0 < sv[r] < 1e-3 * sv[0] or sv[r] == 0


def test_rank_float32_vs_float64():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(10, 6, 3)) @ rng.normal(size=(10, 3, 50))
  a[:, :, :2] *= 1e-3                      # uneven scales
  r32 = np.asarray(jac.matrix_rank(jnp.asarray(a, jnp.float32)))
  sv64 = np.linalg.svd(a, compute_uv=False)
  r64 = (sv64 > 50 * np.finfo(np.float64).eps * sv64[:, :1]).sum(-1)
  np.testing.assert_array_equal(r32, r64)
  np.testing.assert_array_equal(r32, 3)


def test_factored_rank_equals_svd_rank(graph):
  for name in ("gat",):
    model, params = build(graph, name)
    a = jac.node_ranks(model, params, graph, 1, method="factored")
    b = jac.node_ranks(model, params, graph, 1, method="svd")
    np.testing.assert_array_equal(a.ranks, b.ranks)
    np.testing.assert_allclose(a.sigma_max, b.sigma_max, rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_jacfwd_equals_jacrev(graph, name):
  model, params = build(graph, name)
  jf = jac.node_jacobians(model, params, graph, 1, mode="jacfwd")
  jr = jac.node_jacobians(model, params, graph, 1, mode="jacrev")
  scale = float(jnp.abs(jf).max())
  chex.assert_trees_all_close(jf, jr, atol=1e-5 * scale, rtol=1e-4)
  chex.assert_tree_all_finite(jf)
  # the map reproduces the model's activation at every node
  nm = jac.local_node_map(model, params, graph, 1)
  h = jax.vmap(lambda u, v: jac.node_fn(nm, u, v))(nm.inputs, jnp.arange(graph.num_nodes))
  chex.assert_trees_all_close(h, model.apply(params, graph).activations[0], atol=2e-6)


def test_resolve_mode():
  assert jac.resolve_mode("auto", 16, 1433) == "jacrev"
  assert jac.resolve_mode("auto", 64, 16) == "jacfwd"
  with pytest.raises(ValueError, match="mode"):
    jac.resolve_mode("hessian", 1, 1)


def brute_own_jacobians(model, params, graph, layer, nodes):
  """``d h^(k)_v / d X_v`` by jacrev through the full-graph model, one node at a time."""
  x = graph.x

  @jax.jit
  def one(params, v):
    f = lambda xv: model.apply(params, graph.with_features(x.at[v].set(xv))).activations[
        layer - 1][v]
    return jax.jacrev(f)(x[v])

  return jnp.stack([one(params, v) for v in nodes])


def test_own_feature_gcn_layer1_is_self_weight_times_local(graph):
  model, params = build(graph, "gcn")
  nodes = np.arange(0, graph.num_nodes, 3)
  e2e = jac.own_feature_jacobians(model, params, graph, 1, nodes=nodes)
  local = jac.node_jacobians(model, params, graph, 1, nodes=nodes)
  ahat_vv = np.diag(gcn_ahat(graph))[nodes]
  np.testing.assert_allclose(np.asarray(e2e), ahat_vv[:, None, None] * np.asarray(local),
                             atol=1e-6)


@pytest.mark.parametrize("name,kw", [("gcn", {}), ("gat", {"residual": True}),
                                     ("cheb", {"cheb_k": 3}), ("sage", {}), ("gin", {})])
def test_own_feature_layer2_matches_brute_force(graph, name, kw):
  model, params = build(graph, name, **kw)
  nodes = [0, 7, 19]
  got = jac.own_feature_jacobians(model, params, graph, 2, nodes=nodes, mode="jacfwd",
                                  chunk_size=2)
  want = brute_own_jacobians(model, params, graph, 2, nodes)
  chex.assert_trees_all_close(got, want, atol=2e-5 * float(jnp.abs(want).max()))


def test_own_feature_layer1_equals_local_for_attention(graph):
  for name in ("gat", "graphormer"):
    model, params = build(graph, name)
    nodes = [1, 4, 11]
    e2e = brute_own_jacobians(model, params, graph, 1, nodes)
    local = jac.node_jacobians(model, params, graph, 1, nodes=nodes)
    chex.assert_trees_all_close(e2e, local, atol=1e-5 * float(jnp.abs(local).max()))


def test_volume_relu_collapses_nonpositive(graph):
  model, params = build(graph, "gcn", num_layers=3)
  for layer in (1, 2):
    vol = jac.activation_volume(model, params, graph, layer)
    z = np.asarray(vol.pre_activation)
    out = np.asarray(model.apply(params, graph).activations[layer - 1])
    np.testing.assert_allclose(np.maximum(z, 0), out, atol=1e-6)   # z is the pre-activation
    np.testing.assert_array_equal(vol.num_collapsed, (z <= 0).sum(1))
    np.testing.assert_array_equal(vol.log_det, 0.0)
  with pytest.raises(ValueError, match="no activation"):
    jac.activation_volume(model, params, graph, 3)


def test_volume_elu_never_collapses(graph):
  model, params = build(graph, "gat", activation="elu")
  vol = jac.activation_volume(model, params, graph, 1)
  z = np.asarray(vol.pre_activation, np.float64)
  np.testing.assert_array_equal(vol.num_collapsed, 0)
  chex.assert_tree_all_finite(vol.log_det)
  np.testing.assert_allclose(vol.log_det, np.minimum(z, 0).sum(1), rtol=1e-5, atol=1e-5)
  assert (np.asarray(vol.log_det) < 0).any()


def test_volume_graphormer_uses_ffn_preactivation(graph):
  model, params = build(graph, "graphormer")
  z = jac.pre_activations(model, params, graph, 1)
  chex.assert_shape(z, (graph.num_nodes, 8))
  vol = jac.volume_change(z, "relu")
  np.testing.assert_array_equal(vol.num_collapsed, (np.asarray(z) <= 0).sum(1))


def test_no_retrace(graph):
  model, params = build(graph, "gat")
  nm = jac.local_node_map(model, params, graph, 1)
  fn = jax.jit(chex.assert_max_traces(jac.batched_jacobian, n=1), static_argnames="mode")
  idx = jnp.arange(8)
  a = fn(nm, idx, mode="jacrev")
  nm2 = jac.local_node_map(model, params, graph.with_features(graph.x * 0.5), 1)
  b = fn(nm2, idx + 8, mode="jacrev")
  assert not np.allclose(a, b)
  # the library's own jitted chunk function compiles once across calls and chunks
  before = jac._jacobians_all._cache_size()
  jac.node_jacobians(model, params, graph, 1, chunk_size=7)
  jac.node_jacobians(model, params, graph.with_features(graph.x * 2.0), 1, chunk_size=7)
  assert jac._jacobians_all._cache_size() - before <= 1


def test_summary_and_plot(graph, tmp_path):
  model, params = build(graph, "gcn")
  res = jac.node_ranks(model, params, graph, 1)
  s = jac.rank_summary(res, model="gcn", layer=1, dataset="synthetic")
  assert sum(s["histogram"].values()) == graph.num_nodes
  assert s["metamer_dim"]["min"] == graph.num_features - res.ranks.max()
  np.testing.assert_allclose(s["rank"]["mean"], res.ranks.mean())
  path = tmp_path / "h.png"
  jac.plot_rank_histogram(s, path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input(graph):
  model, params = build(graph, "gcn")
  with pytest.raises(ValueError, match="layer"):
    jac.node_ranks(model, params, graph, 3)
  with pytest.raises(ValueError, match="nodes out of range"):
    jac.node_jacobians(model, params, graph, 1, nodes=[0, 99])
  with pytest.raises(ValueError, match="method"):
    jac.node_ranks(model, params, graph, 1, method="qr")
  with pytest.raises(ValueError, match="chunk_size"):
    jac.node_jacobians(model, params, graph, 1, chunk_size=0)


def test_row_normalised_model(graph):
  """Layer 1 of an input_norm="row" model is refused; layer 2's map reproduces the model."""
  model, params = build(graph, "gcn", input_norm="row")
  with pytest.raises(ValueError, match="input_norm='row'"):
    jac.node_ranks(model, params, graph, 1)
  nm = jac.local_node_map(model, params, graph, 2)
  h = jax.vmap(lambda u, v: jac.node_fn(nm, u, v))(nm.inputs, jnp.arange(graph.num_nodes))
  chex.assert_trees_all_close(h, model.apply(params, graph).activations[1], atol=2e-6)
