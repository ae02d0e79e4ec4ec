"""Tests for jmeta.models: each layer against a numpy closed form, dense == edge list, shapes,
activations, residuals, edge-weight gradients, dropout, config validation and jit."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from jmeta.graph import make_graph, to_dense
from jmeta.models import (MODEL_NAMES, ChebConv, GATConv, GCNConv, GINConv, ModelConfig,
                          ModelOutput, SAGEConv, check_params_match, create_model, head_split)
from jmeta.models.graphormer import attention_keep_mask
from jmeta.models.propagate import (DenseAdj, EdgeList, pack_bits, segment_or, shortest_path_buckets,
                                    unpack_bits)

N, D = 9, 4
# Undirected pairs (both directions, independent weights), one one-way edge 5 -> 6, node 8
# isolated: the weights are asymmetric, in- and out-degrees differ, and some pairs are
# unreachable.
PAIRS = [(0, 1), (1, 2), (2, 3), (3, 0), (2, 4), (4, 5), (6, 7)]
ONE_WAY = [(5, 6)]
TOL = dict(rtol=1e-5, atol=1e-5)


def _graph(seed=0):
  rng = np.random.default_rng(seed)
  s = [u for u, v in PAIRS] + [v for u, v in PAIRS] + [u for u, v in ONE_WAY]
  r = [v for u, v in PAIRS] + [u for u, v in PAIRS] + [v for u, v in ONE_WAY]
  w = rng.uniform(0.3, 2.0, size=len(s))
  x = rng.normal(size=(N, D))
  return make_graph(x, s, r, np.array([0, 1, 2, 0, 1, 2, 0, 1, 2]), edge_weight=w,
                    feature_kind="continuous", name="toy")


@pytest.fixture(scope="module")
def graph():
  return _graph()


def _edges(g):
  return EdgeList(g.senders, g.receivers, g.edge_weight, g.num_nodes)


def _dense_np(g):
  return np.asarray(to_dense(g), np.float64)


def _randomize(variables, seed, scale=0.5):
  """Every parameter (biases, LN scales, embeddings included) replaced by N(0, scale^2).

  ``variables`` may be abstract (`jax.eval_shape` of ``init``): only shapes are used.
  """
  rng = np.random.default_rng(seed)                  # numpy: no per-shape XLA compile
  return jax.tree.map(lambda l: jnp.asarray(scale * rng.normal(size=l.shape), l.dtype),
                      variables)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _init(module, *args):
  """``module.init`` under jit (eager init compiles every op separately: slow)."""
  return jax.jit(module.init)(jax.random.key(0), *args)


def _random_params(module, *args, seed=1):
  """Random parameters of every kind for ``module`` called on ``args`` (no real init)."""
  return _randomize(jax.eval_shape(module.init, jax.random.key(0), *args), seed)


def _init_conv(conv, g, seed=0):
  return _random_params(conv, g.x, _edges(g), seed=seed + 1)


def _apply(module, variables, *args, **kwargs):
  """``module.apply`` under one jit (one compile instead of many eager op compiles)."""
  return jax.jit(lambda v, *a: module.apply(v, *a, **kwargs))(variables, *args)


def _relu(z):
  return np.maximum(z, 0.0)


def _inv_sqrt(d):
  out = np.zeros_like(d)
  out[d > 0] = d[d > 0] ** -0.5
  return out


# -- single layers against numpy closed forms ---------------------------------------------------


@pytest.mark.parametrize("dense", [False, True])
def test_gcn_conv_closed_form(graph, dense):
  conv = GCNConv(5)
  v = _init_conv(conv, graph)
  p = _np(v["params"])
  a = _dense_np(graph)
  a_hat = a + np.eye(N)
  dinv = _inv_sqrt(a_hat.sum(0))                     # in-degree of A + I
  norm = dinv[:, None] * a_hat * dinv[None, :]
  want = norm.T @ (np.asarray(graph.x, np.float64) @ p["lin"]["kernel"]) + p["bias"]
  s = DenseAdj(to_dense(graph)) if dense else _edges(graph)
  got = _apply(conv, v, graph.x, s)
  np.testing.assert_allclose(got, want, **TOL)


# Output widths on both sides of D = 4 (by default a narrower layer projects before it
# propagates, `project_first`, a wider one propagates first) and both orders forced: every
# combination must give the closed form.
ORDERS = [None, True, False]


@pytest.mark.parametrize("project", ORDERS)
@pytest.mark.parametrize("width", [2, 5])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_cheb_conv_closed_form(graph, k, width, project):
  conv = ChebConv(width, k, project=project)
  v = _init_conv(conv, graph)
  p = _np(v["params"])
  a = _dense_np(graph)
  dinv = _inv_sqrt(a.sum(1))                         # out-degree, isolated node -> 0
  lhat = -dinv[:, None] * a * dinv[None, :]
  x = np.asarray(graph.x, np.float64)
  ts = [x, lhat.T @ x]
  for _ in range(2, k):
    ts.append(2 * lhat.T @ ts[-1] - ts[-2])
  want = sum(ts[i] @ p[f"lin_{i}"]["kernel"] for i in range(k)) + p["bias"]
  got = _apply(conv, v, graph.x, _edges(graph))
  np.testing.assert_allclose(got, want, **TOL)
  assert dinv[8] == 0.0 and np.all(np.isfinite(got))


def test_cheb_ignores_self_loops(graph):
  conv = ChebConv(3, 3)
  v = _init_conv(conv, graph)
  adj = to_dense(graph)
  with_loops = adj + jnp.diag(jnp.arange(1.0, N + 1.0))
  chex.assert_trees_all_close(_apply(conv, v, graph.x, DenseAdj(with_loops)),
                              _apply(conv, v, graph.x, DenseAdj(adj)), **TOL)


def test_lazy_dense_adjacency_equals_its_explicit_matrix():
  """Scales and loops kept beside ``adj`` give the numbers of the explicit matrix."""
  from jmeta.models import propagate as pr
  rng = np.random.default_rng(3)
  a = rng.uniform(0.0, 1.0, (N, N)) * (rng.random((N, N)) < 0.5)
  np.fill_diagonal(a, rng.uniform(0.5, 1.0, N))  # a non-zero diagonal
  x = rng.normal(size=(N, 3))
  lft, rgt = rng.uniform(0.5, 2.0, N), rng.uniform(0.5, 2.0, N)
  a_no_diag = a - np.diag(np.diag(a))
  cases = {  # structure -> its explicit matrix (numpy)
      "loops": (pr.with_self_loops(DenseAdj(jnp.asarray(a)), 2.0), a + 2.0 * np.eye(N)),
      "scaled": (pr.scale(pr.with_self_loops(DenseAdj(jnp.asarray(a))), lft, rgt),
                 lft[:, None] * (a + np.eye(N)) * rgt[None, :]),
      "no_loops_after_scale": (pr.without_self_loops(pr.scale(DenseAdj(jnp.asarray(a)), lft,
                                                                rgt)),
                               lft[:, None] * a_no_diag * rgt[None, :]),
      "loops_after_scale": (pr.with_self_loops(pr.scale(DenseAdj(jnp.asarray(a)), lft, rgt)),
                            lft[:, None] * a * rgt[None, :] + np.eye(N)),
      "gcn": (pr.gcn_norm(DenseAdj(jnp.asarray(a))),
              (a + np.eye(N)) / np.sqrt(np.outer((a + np.eye(N)).sum(0), (a + np.eye(N)).sum(0)))),
      "cheb": (pr.cheb_norm(DenseAdj(jnp.asarray(a))),
               -a_no_diag / np.sqrt(np.outer(a_no_diag.sum(1), a_no_diag.sum(1)))),
  }
  for name, (st, m) in cases.items():
    np.testing.assert_allclose(st.matrix(), m, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(pr.propagate(st, x), m.T @ x, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(pr.in_degree(st), m.sum(0), rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(pr.out_degree(st), m.sum(1), rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("project", ORDERS)
@pytest.mark.parametrize("width", [2, 5])
def test_sage_conv_closed_form(graph, width, project):
  conv = SAGEConv(width, project=project)
  v = _init_conv(conv, graph)
  p = _np(v["params"])
  a = _dense_np(graph)
  x = np.asarray(graph.x, np.float64)
  deg = a.sum(0)
  mean = np.zeros_like(x)
  mean[deg > 0] = (a.T @ x)[deg > 0] / deg[deg > 0, None]
  want = mean @ p["lin_l"]["kernel"] + p["lin_l"]["bias"] + x @ p["lin_r"]["kernel"]
  assert "bias" not in p["lin_r"]
  np.testing.assert_allclose(_apply(conv, v, graph.x, _edges(graph)), want, **TOL)


@pytest.mark.parametrize("project", ORDERS)
@pytest.mark.parametrize("hidden", [3, 7])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_gin_conv_closed_form(graph, eps, hidden, project):
  conv = GINConv(5, hidden=hidden, eps=eps, project=project)
  v = _init_conv(conv, graph)
  p = _np(v["params"])
  a = _dense_np(graph)
  x = np.asarray(graph.x, np.float64)
  h = (1 + eps) * x + a.T @ x
  h = _relu(h @ p["mlp_0"]["kernel"] + p["mlp_0"]["bias"])
  want = h @ p["mlp_1"]["kernel"] + p["mlp_1"]["bias"]
  np.testing.assert_allclose(_apply(conv, v, graph.x, _edges(graph)), want, **TOL)


def _gat_numpy(p, x, a, heads, ch, concat):
  z = (x @ p["lin"]["kernel"]).reshape(len(x), heads, ch)
  a_src = (z * p["att_src"]).sum(-1)                 # [n, H]
  a_dst = (z * p["att_dst"]).sum(-1)
  a_hat = a * (1 - np.eye(len(x))) + np.eye(len(x))
  out = np.zeros((len(x), heads, ch))
  for j in range(len(x)):
    for h in range(heads):
      e = a_src[:, h] + a_dst[j, h]
      e = np.where(e > 0, e, 0.2 * e)
      num = a_hat[:, j] * np.exp(e)
      alpha = num / num.sum()
      out[j, h] = alpha @ z[:, h]
  out = out.reshape(len(x), heads * ch) if concat else out.mean(1)
  return out + p["bias"]


@pytest.mark.parametrize("concat", [True, False])
def test_gat_conv_closed_form(graph, concat):
  conv = GATConv(3, 2, concat=concat, dropout=0.5)
  v = _init_conv(conv, graph)
  p = _np(v["params"])
  want = _gat_numpy(p, np.asarray(graph.x, np.float64), _dense_np(graph), 3, 2, concat)
  got = _apply(conv, v, graph.x, _edges(graph))        # eval mode: no attention dropout
  np.testing.assert_allclose(got, want, **TOL)
  chex.assert_shape(got, (N, 6 if concat else 2))


def test_gat_binary_weights_equal_dropping_zero_edges(graph):
  # A zero weight removes an edge exactly: same output as the graph without that edge.
  conv = GATConv(2, 3)
  v = _init_conv(conv, graph)
  w = np.asarray(graph.edge_weight).copy()
  w[:] = 1.0
  w[[0, 3]] = 0.0
  zeroed = graph.with_edges(graph.senders, graph.receivers, w)
  keep = w != 0
  dropped = graph.with_edges(np.asarray(graph.senders)[keep], np.asarray(graph.receivers)[keep])
  chex.assert_trees_all_close(_apply(conv, v, zeroed.x, _edges(zeroed)),
                              _apply(conv, v, dropped.x, _edges(dropped)), **TOL)


def test_head_split():
  assert head_split(64, 8) == (8, 8)
  assert head_split(16, 8) == (8, 2)
  assert head_split(10, 3) == (3, 10)


# -- Graphormer -----------------------------------------------------------------------------------


def _nx_spd(g, max_spd):
  dg = nx.DiGraph()
  dg.add_nodes_from(range(g.num_nodes))
  dg.add_edges_from(zip(np.asarray(g.senders).tolist(), np.asarray(g.receivers).tolist()))
  spd = np.full((g.num_nodes, g.num_nodes), max_spd + 1)
  for u, dists in nx.all_pairs_shortest_path_length(dg):
    for j, dist in dists.items():
      spd[j, u] = min(dist, max_spd)                 # spd[j, u]: hops u -> j
  return spd


@pytest.mark.parametrize("max_spd", [1, 4])
def test_shortest_path_buckets_match_networkx(max_spd):
  # A 7-path (diameter 6), our toy graph, and a random directed graph.
  path = nx.path_graph(7)
  gp = make_graph(np.zeros((7, 1)), [u for u, v in path.edges] + [v for u, v in path.edges],
                  [v for u, v in path.edges] + [u for u, v in path.edges], np.zeros(7))
  rng = np.random.default_rng(3)
  m = rng.random((12, 12)) < 0.12
  np.fill_diagonal(m, False)
  s, r = np.nonzero(m)
  gr = make_graph(np.zeros((12, 1)), s, r, np.zeros(12))
  for g in (gp, _graph(), gr):
    want = _nx_spd(g, max_spd)
    got_e = jax.jit(shortest_path_buckets, static_argnums=1)(_edges(g), max_spd)
    got_d = jax.jit(shortest_path_buckets, static_argnums=1)(DenseAdj(to_dense(g)), max_spd)
    np.testing.assert_array_equal(got_e, want)
    np.testing.assert_array_equal(got_d, want)


def test_pack_bits_and_segment_or_match_numpy():
  rng = np.random.default_rng(5)
  b = rng.random((6, 70)) < 0.3                      # 70 columns: 3 words, 26 padding bits
  words = pack_bits(jnp.asarray(b))
  assert words.shape == (6, 3) and words.dtype == jnp.uint32
  np.testing.assert_array_equal(unpack_bits(words, 70), b)
  # Bitwise OR per receiver against a numpy loop; node 3 has no in-edge (gets 0).
  s = np.array([0, 1, 2, 4, 5, 0, 2, 1]); r = np.array([1, 0, 0, 2, 2, 4, 5, 4])
  vals = rng.integers(0, 2**32, size=(8, 3), dtype=np.uint32)
  want = np.zeros((6, 3), np.uint32)
  for e in range(8):
    want[r[e]] |= vals[e]
  got = segment_or(EdgeList(jnp.asarray(s), jnp.asarray(r), jnp.ones(8), 6), jnp.asarray(vals))
  np.testing.assert_array_equal(got, want)


def test_graphormer_spd_prior_init(graph):
  cfg = ModelConfig("graphormer", hidden=8, heads=2, max_spd=3)
  table = _init(create_model(cfg, 3), graph)["params"]["spd_bias"]["embedding"]
  want = np.tile(-2.0 * np.arange(5.0)[:, None], (1, 2))  # buckets 0..max_spd+1, every head
  np.testing.assert_allclose(table, want)


def test_attention_keep_mask_rate_and_determinism():
  shape = (4, 300, 300)
  for rate in (0.1, 0.5):
    mask, keep = attention_keep_mask(jax.random.key(0), shape, rate)
    assert keep == 1.0 - round(rate * 256) / 256 and abs(keep - (1 - rate)) <= 2**-9
    assert mask.shape == shape and mask.dtype == jnp.bool_
    # 360 000 Bernoulli draws: the mean is within 5 standard deviations of keep.
    assert abs(float(mask.mean()) - keep) < 5 * np.sqrt(keep * (1 - keep) / mask.size)
  again, _ = attention_keep_mask(jax.random.key(0), shape, 0.5)
  other, _ = attention_keep_mask(jax.random.key(1), shape, 0.5)
  np.testing.assert_array_equal(again, mask)
  assert float(jnp.mean(other != mask)) > 0.4


def _layer_norm(x, p, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _softmax(z, axis):
  z = z - z.max(axis, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis, keepdims=True)


def test_graphormer_one_block_closed_form(graph):
  cfg = ModelConfig("graphormer", num_layers=1, hidden=8, heads=2, max_spd=2)
  model = create_model(cfg, 3)
  v = _random_params(model, graph, seed=1)
  p = _np(v["params"])
  x = np.asarray(graph.x, np.float64)
  a = _dense_np(graph) != 0
  spd = _nx_spd(graph, cfg.max_spd)
  h = x @ p["input_proj"]["kernel"] + p["input_proj"]["bias"]
  h = h + p["in_degree"]["embedding"][a.sum(0)] + p["out_degree"]["embedding"][a.sum(1)]
  bias = np.transpose(p["spd_bias"]["embedding"][spd], (2, 0, 1))       # [H, n, n]
  b = p["layer_0"]
  y = _layer_norm(h, b["ln_attn"])
  proj = lambda nm: (y @ b[nm]["kernel"] + b[nm]["bias"]).reshape(N, 2, 4)
  q, k, val = proj("query"), proj("key"), proj("value")
  logits = np.einsum("ihc,jhc->hij", q, k) / 2.0 + bias
  o = np.einsum("hij,jhc->ihc", _softmax(logits, -1), val).reshape(N, 8)
  h = h + o @ b["out"]["kernel"] + b["out"]["bias"]
  y = _relu(_layer_norm(h, b["ln_ffn"]) @ b["ffn_0"]["kernel"] + b["ffn_0"]["bias"])
  h = h + y @ b["ffn_1"]["kernel"] + b["ffn_1"]["bias"]
  want = _layer_norm(h, p["final_ln"]) @ p["head"]["kernel"] + p["head"]["bias"]
  out = _apply(model, v, graph)
  assert len(out.activations) == 1
  np.testing.assert_allclose(out.logits, want, rtol=1e-4, atol=1e-4)


def test_graphormer_degree_clamp(graph):
  # A star with 70 leaves: the hub's degree is clamped to max_degree = 64.
  n = 71
  s = np.r_[np.zeros(70, int), np.arange(1, 71)]
  r = np.r_[np.arange(1, 71), np.zeros(70, int)]
  g = make_graph(np.random.default_rng(0).normal(size=(n, 2)), s, r, np.zeros(n))
  cfg = ModelConfig("graphormer", num_layers=1, hidden=4, heads=1)
  model = create_model(cfg, 2)
  v = _random_params(model, g, seed=2)
  # The hub's in-degree 70 is clamped to 64: moving embedding row 64 changes the output, moving
  # row 63 (no node has degree 63) does not. The table has max_degree + 1 = 65 rows.
  table = v["params"]["in_degree"]["embedding"]
  assert table.shape == (65, 4)
  bump = jnp.array([1.0, -2.0, 0.5, 0.0])            # not a constant shift (LayerNorm)
  fwd = jax.jit(lambda v: model.apply(v, g).logits)
  base = fwd(v)

  def moved(row):
    v2 = jax.tree.map(lambda t: t, v)
    v2["params"]["in_degree"]["embedding"] = table.at[row].add(bump)
    return float(jnp.abs(fwd(v2) - base).max())

  assert moved(64) > 1e-3 and moved(63) == 0.0


# -- whole models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dense_path_equals_edge_list(graph, name):
  cfg = ModelConfig(name, num_layers=3, hidden=8, heads=2, residual=True, cheb_k=3,
                    gin_eps=0.2, out_heads=2, max_spd=2)
  model = create_model(cfg, 3)
  v = _random_params(model, graph, seed=1)
  sparse = _apply(model, v, graph)
  dense_fwd = jax.jit(lambda v, a: model.apply(v, graph, adj=a))
  dense = dense_fwd(v, to_dense(graph))
  assert isinstance(sparse, ModelOutput) and len(sparse.activations) == 3
  chex.assert_trees_all_close(dense, sparse, **TOL)
  chex.assert_tree_all_finite(sparse)
  # A different adjacency gives a different output (the dense path really uses adj).
  other = dense_fwd(v, jnp.ones((N, N)) - jnp.eye(N))
  assert float(jnp.abs(other.logits - sparse.logits).max()) > 1e-3


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("layers", [2, 4])
@pytest.mark.parametrize("hidden", [16, 32, 64])
def test_activation_shapes(graph, name, layers, hidden):
  cfg = ModelConfig(name, num_layers=layers, hidden=hidden)
  model = create_model(cfg, 3)
  v = jax.eval_shape(model.init, jax.random.key(0), graph)
  out = jax.eval_shape(model.apply, v, graph)
  assert len(out.activations) == layers
  for a in out.activations[:-1]:
    chex.assert_shape(a, (N, hidden))                # GAT: 8 heads x hidden/8 channels
  chex.assert_shape(out.logits, (N, 3))
  assert out.activations[-1] == out.logits


def test_gat_width_when_heads_do_not_divide(graph):
  cfg = ModelConfig("gat", num_layers=2, hidden=10, heads=3)
  model = create_model(cfg, 3)
  out = jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.key(0), graph), graph)
  chex.assert_shape(out.activations[0], (N, 30))


def _pre_activation(model_params, graph, conv):
  return _apply(conv, {"params": model_params["params"]["layer_0"]}, graph.x, _edges(graph))


@pytest.mark.parametrize("name,conv", [("gcn", GCNConv(16)), ("sage", SAGEConv(16))])
def test_relu_vs_elu(graph, name, conv):
  outs = {}
  for act in ("relu", "elu"):
    model = create_model(ModelConfig(name, hidden=16, activation=act), 3)
    v = _random_params(model, graph, seed=1)
    outs[act] = _apply(model, v, graph)
    z = _pre_activation(v, graph, conv)
    fn = jax.nn.relu if act == "relu" else jax.nn.elu
    chex.assert_trees_all_close(outs[act].activations[0], fn(z), **TOL)
  assert float(outs["elu"].activations[0].min()) < 0.0 <= float(outs["relu"].activations[0].min())


def test_gin_activation_enters_mlp(graph):
  # GIN's MLP uses the configured activation too (ReLU -> ELU changes layer 1 beyond its
  # outer nonlinearity).
  v = None
  outs = {}
  for act in ("relu", "elu"):
    model = create_model(ModelConfig("gin", hidden=16, activation=act), 3)
    v = v or _random_params(model, graph, seed=1)
    outs[act] = _apply(model, v, graph).activations[0]
  conv = GINConv(16, 16, activation=jax.nn.elu)
  chex.assert_trees_all_close(outs["elu"], jax.nn.elu(_pre_activation(v, graph, conv)), **TOL)


def test_residual_definition(graph):
  cfg = ModelConfig("gcn", num_layers=3, hidden=16, residual=True)
  model = create_model(cfg, 3)
  v = _random_params(model, graph, seed=1)
  p = v["params"]
  chex.assert_shape(p["residual_0"]["kernel"], (D, 16))    # d != hidden: projection
  assert "residual_1" not in p and "residual_2" not in p   # identity; none on the last layer
  assert "bias" not in p["residual_0"]
  out = _apply(model, v, graph)
  s = _edges(graph)
  conv = GCNConv(16)
  h1 = jax.nn.relu(conv.apply({"params": p["layer_0"]}, graph.x, s)) + \
      graph.x @ p["residual_0"]["kernel"]
  h2 = jax.nn.relu(conv.apply({"params": p["layer_1"]}, h1, s)) + h1
  logits = GCNConv(3).apply({"params": p["layer_2"]}, h2, s)
  chex.assert_trees_all_close(out.activations, (h1, h2, logits), **TOL)


@pytest.mark.parametrize("name", ["gcn", "graphormer"])
def test_row_normalised_input(name):
  """input_norm="row" == the plain model on numpy-normalised features; a zero row stays 0 and
  its gradient is finite."""
  rng = np.random.default_rng(3)
  x = (rng.uniform(size=(N, D)) < 0.5).astype(np.float64)
  x[0], x[1] = 0.0, [1.0, 1.0, 0.0, 0.0]                   # an all-zero row, a two-word row
  g = _graph().with_features(jnp.asarray(x, jnp.float32))
  row = create_model(ModelConfig(name, hidden=8, heads=2, input_norm="row"), 3)
  plain = create_model(ModelConfig(name, hidden=8, heads=2), 3)
  v = _random_params(plain, g, seed=1)
  total = x.sum(1, keepdims=True)
  x_norm = x / np.where(total > 0, total, 1.0)              # the zero row stays 0
  got = _apply(row, v, g).activations
  want = _apply(plain, v, g.with_features(jnp.asarray(x_norm, jnp.float32))).activations
  chex.assert_trees_all_close(got, want, **TOL)
  assert not np.allclose(np.asarray(got[0]), np.asarray(_apply(plain, v, g).activations[0]))
  grad = jax.jit(jax.grad(lambda xx: jnp.sum(row.apply(v, g.with_features(xx)).logits ** 2)))(
      g.x)
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad[0])).sum() > 0


@pytest.mark.parametrize("name", ["gcn", "cheb", "sage", "gin", "gat"])
def test_edge_weight_gradient(graph, name):
  model = create_model(ModelConfig(name, hidden=8, heads=2), 3)
  v = _random_params(model, graph, seed=1)

  def loss_w(w):
    g = graph.with_edges(graph.senders, graph.receivers, w)
    return jnp.sum(model.apply(v, g).logits ** 2)

  def loss_a(a):
    return jnp.sum(model.apply(v, graph, adj=a).logits ** 2)

  w = graph.edge_weight
  loss_w = jax.jit(loss_w)
  gw = jax.jit(jax.grad(loss_w))(w)
  chex.assert_tree_all_finite(gw)
  assert float(jnp.abs(gw).max()) > 1e-4
  # Central finite difference on one edge (edge 0: 0 -> 1).
  e = jnp.zeros_like(w).at[0].set(1e-2)
  fd = (loss_w(w + e) - loss_w(w - e)) / 2e-2
  np.testing.assert_allclose(gw[0], fd, rtol=2e-2, atol=1e-3)
  # The dense path gives the same gradient for existing edges.
  a = to_dense(graph)
  ga = jax.jit(jax.grad(loss_a))(a)
  chex.assert_trees_all_close(ga[graph.senders, graph.receivers], gw, rtol=1e-4, atol=1e-5)
  # At a non-edge (0 -> 2: adding an edge) the dense gradient is right too.
  assert a[0, 2] == 0.0
  loss_a = jax.jit(loss_a)
  e = jnp.zeros_like(a).at[0, 2].set(1e-2)
  fd = (loss_a(a + e) - loss_a(a - e)) / 2e-2
  np.testing.assert_allclose(ga[0, 2], fd, rtol=2e-2, atol=1e-3)
  assert abs(float(ga[0, 2])) > 1e-4


def test_graphormer_has_no_edge_weight_gradient(graph):
  model = create_model(ModelConfig("graphormer", hidden=8, heads=2), 3)
  v = _random_params(model, graph)
  ga = jax.jit(jax.grad(lambda a: jnp.sum(model.apply(v, graph, adj=a).logits)))(
      to_dense(graph))
  assert float(jnp.abs(ga).max()) == 0.0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dropout_train_only_and_deterministic(graph, name):
  model = create_model(ModelConfig(name, hidden=8, heads=2, dropout=0.5), 3)
  v = _random_params(model, graph)

  @jax.jit
  def run(v, key):                                   # one compile: eval and train outputs
    rngs = {"dropout": key}
    return (model.apply(v, graph, rngs=rngs),
            model.apply(v, graph, train=True, rngs=rngs))

  ev, t1 = run(v, jax.random.key(1))
  _, t1b = run(v, jax.random.key(1))
  ev3, t2 = run(v, jax.random.key(2))
  chex.assert_trees_all_equal(ev, ev3)               # eval mode ignores the key
  chex.assert_trees_all_equal(t1, t1b)               # train mode: deterministic per key
  assert float(jnp.abs(t1.logits - ev.logits).max()) > 1e-4
  assert float(jnp.abs(t1.logits - t2.logits).max()) > 1e-4


def test_gat_attention_dropout(graph):
  # With no input dropout, train mode still differs through the attention dropout.
  conv = GATConv(2, 3, dropout=0.5)
  v = _init_conv(conv, graph)
  s = _edges(graph)
  ev = _apply(conv, v, graph.x, s)
  tr = _apply(conv, v, graph.x, s, train=True, rngs={"dropout": jax.random.key(0)})
  assert float(jnp.abs(tr - ev).max()) > 1e-4


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_jit_compiles_once(graph, name):
  model = create_model(ModelConfig(name, hidden=8, heads=2), 3)
  v = _random_params(model, graph)

  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(v, g, a):
    return model.apply(v, g, adj=a).logits

  a = to_dense(graph)
  out1 = run(v, graph, a)
  out2 = run(v, graph.with_features(graph.x + 1.0), a * 0.5)
  chex.assert_tree_all_finite((out1, out2))
  assert float(jnp.abs(out1 - out2).max()) > 1e-4


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init(graph, name):
  model = create_model(ModelConfig(name, hidden=8, heads=2), 3)
  v = _init(model, graph)
  chex.assert_tree_all_finite(v)
  chex.assert_trees_all_equal_shapes(v, jax.eval_shape(model.init, jax.random.key(0), graph))
  biases = [l for path, l in jax.tree_util.tree_leaves_with_path(v)
            if jax.tree_util.keystr(path).endswith("['bias']")
            and "ln" not in jax.tree_util.keystr(path)]
  assert biases and all(float(jnp.abs(b).max()) == 0.0 for b in biases)
  kernels = [l for l in jax.tree.leaves(v) if l.ndim == 2]
  assert all(float(jnp.abs(k).max()) > 0.0 for k in kernels)


def test_dense_params_initialise_like_nn_dense():
  """`DenseParams` has nn.Dense's names, shapes and values for one key: checkpoints of SAGE/GIN
  written before their layers took the kernel out stay valid."""
  from jmeta.models.stack import DenseParams, torch_linear
  x = jnp.ones((3, 6))
  for bias in (True, False):
    want = nn.Dense(4, use_bias=bias, kernel_init=torch_linear).init(jax.random.key(7), x)
    got = DenseParams(4, use_bias=bias, kernel_init=torch_linear).init(jax.random.key(7), 6)
    chex.assert_trees_all_equal(got, want)


def test_chebyshev_series_matches_the_recursion():
  """Clenshaw's sum with a different coefficient matrix per term against explicit T_k."""
  from jmeta.models import propagate as pr
  rng = np.random.default_rng(5)
  m = rng.normal(size=(N, N))
  coeffs = [rng.normal(size=(N, 3)) for _ in range(5)]
  ts = [np.eye(N), m.T]
  for _ in range(2, 5):
    ts.append(2 * m.T @ ts[-1] - ts[-2])
  st = DenseAdj(jnp.asarray(m))
  for k in range(1, 6):
    want = sum(ts[i] @ coeffs[i] for i in range(k))
    np.testing.assert_allclose(pr.chebyshev_series(st, [jnp.asarray(c) for c in coeffs[:k]]),
                               want, rtol=1e-4, atol=1e-4, err_msg=f"K={k}")
  with pytest.raises(ValueError, match="at least one"):
    pr.chebyshev_series(st, [])


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("name", "gcnn"), ("name", 3), ("num_layers", 0), ("num_layers", 2.0), ("num_layers", True),
    ("hidden", 0), ("activation", "tanh"), ("dropout", 1.0), ("dropout", -0.1),
    ("dropout", float("nan")), ("heads", 0), ("out_heads", 0), ("cheb_k", 0), ("max_spd", 0),
    ("residual", 1), ("gin_eps", float("inf")), ("input_norm", "l2"), ("input_norm", None),
])
def test_config_validation(field, value):
  kwargs = {"name": "gcn", field: value}
  with pytest.raises(ValueError, match=f"ModelConfig.{field}.*{value!r}".replace("(", r"\(")):
    ModelConfig(**kwargs)


def test_config_normalises_case_and_round_trips():
  cfg = ModelConfig("GAT", activation="ELU")
  assert (cfg.name, cfg.activation) == ("gat", "elu")
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="unknown field"):
    ModelConfig.from_dict({**cfg.to_dict(), "width": 3})
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.hidden = 3


def test_create_model_rejects_bad_arguments():
  with pytest.raises(ValueError, match="num_classes"):
    create_model(ModelConfig("gcn"), 0)
  with pytest.raises(ValueError, match="ModelConfig"):
    create_model({"name": "gcn"}, 3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_feature_width_mismatch(graph, name):
  model = create_model(ModelConfig(name, hidden=8, heads=2), 3)
  v = _random_params(model, graph)
  wide = graph.with_features(jnp.ones((N, D + 2)))
  with pytest.raises(ValueError, match=f"{D + 2} node features.*built for {D}"):
    model.apply(v, wide)
  for m in (None, model):
    with pytest.raises(ValueError, match=f"{D + 2} node features"):
      check_params_match(v, wide, m)
    check_params_match(v, graph, m)                  # matching params: no error
  other = create_model(ModelConfig(name, hidden=4, heads=2, num_layers=3), 3)
  with pytest.raises(ValueError, match="params do not match|node features"):
    check_params_match(v, graph, other)
  with pytest.raises(ValueError, match="adj has shape"):
    model.apply(v, graph, adj=jnp.ones((N, N + 1)))


@pytest.mark.parametrize("rate,bits", [(0.1, 16), (0.5, 1), (0.6, 16), (0.25, 2),
                                       (0.375, 4)])
def test_few_bit_dropout_keep_probability_and_scaling(rate, bits):
  from jmeta.models.dropout import Dropout, bits_for_rate, keep_mask
  assert bits_for_rate(rate) == bits
  mask, keep = keep_mask(jax.random.key(0), (401, 301), rate)
  assert abs(keep - (1 - rate)) <= 2.0 ** -17
  if bits < 16:
    assert keep == 1 - rate  # dyadic rates are exact
  # Binomial mean within 5 standard deviations.
  n = mask.size
  assert abs(float(mask.mean()) - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
  x = jnp.ones((401, 301))
  y = Dropout(rate).apply({}, x, rngs={"dropout": jax.random.key(0)})
  y = np.asarray(y)
  kept = y != 0
  np.testing.assert_allclose(y[kept], 1 / keep, rtol=1e-6)  # inverted dropout scaling
  assert abs(kept.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
  assert Dropout(rate, deterministic=True).apply({}, x) is x
