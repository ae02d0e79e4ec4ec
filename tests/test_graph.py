"""Tests for jmeta.graph: conversions, edge-list transforms, pytree behaviour, validation."""

import chex
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from jmeta import graph as graph_lib
from jmeta.data import synthetic


def _hand_graph():
  """4 nodes, undirected edges 0-1 (w 1), 1-2 (w 2), 2-3 (w 0.5); node 3 unlabelled."""
  x = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
  s = [0, 1, 1, 2, 2, 3]
  r = [1, 0, 2, 1, 3, 2]
  w = [1.0, 1.0, 2.0, 2.0, 0.5, 0.5]
  return graph_lib.make_graph(x, s, r, [0, 1, 1, -1], num_classes=2, edge_weight=w,
                              train_mask=[1, 0, 0, 0], name="hand")


HAND_ADJ = np.array([[0, 1, 0, 0], [1, 0, 2, 0], [0, 2, 0, 0.5], [0, 0, 0.5, 0]], np.float32)


@pytest.fixture(scope="module")
def csbm_graph():
  return synthetic.csbm(num_nodes=60, num_features=8, num_classes=3, avg_degree=4, seed=1,
                        feature_kind="continuous")


def test_hand_graph_fields():
  g = _hand_graph()
  assert (g.num_nodes, g.num_features, g.num_edges, g.num_classes) == (4, 2, 6, 2)
  assert g.feature_kind == "binary"  # inferred from 0/1 features
  chex.assert_trees_all_equal(np.asarray(g.graph.n_node), np.array([4], np.int32))
  chex.assert_trees_all_equal(np.asarray(g.graph.n_edge), np.array([6], np.int32))
  np.testing.assert_array_equal(np.asarray(g.train_mask), [True, False, False, False])
  assert not np.asarray(g.val_mask).any()
  assert graph_lib.is_symmetric(g) and not graph_lib.has_self_loops(g)


def test_dense_round_trip_hand():
  g = _hand_graph()
  adj = graph_lib.to_dense(g)
  np.testing.assert_array_equal(np.asarray(adj), HAND_ADJ)
  np.testing.assert_array_equal(graph_lib.to_scipy(g).toarray(), HAND_ADJ)
  g2 = graph_lib.from_dense(g, adj)
  # row-major order of the non-zero entries, which is the hand order here
  np.testing.assert_array_equal(np.asarray(g2.senders), [0, 1, 1, 2, 2, 3])
  np.testing.assert_array_equal(np.asarray(g2.receivers), [1, 0, 2, 1, 3, 2])
  np.testing.assert_array_equal(np.asarray(g2.edge_weight), [1, 1, 2, 2, 0.5, 0.5])
  with pytest.raises(ValueError, match=r"adjacency has shape \(3, 3\)"):
    graph_lib.from_dense(g, np.zeros((3, 3)))


def test_dense_sums_duplicates():
  g = graph_lib.make_graph(np.zeros((2, 1)), [0, 0], [1, 1], [0, 0], edge_weight=[1.0, 2.5])
  np.testing.assert_array_equal(np.asarray(graph_lib.to_dense(g)), [[0, 3.5], [0, 0]])


def _edge_set(g):
  return sorted(zip(np.asarray(g.senders).tolist(), np.asarray(g.receivers).tolist(),
                    np.asarray(g.edge_weight).tolist()))


def test_round_trips_csbm(csbm_graph):
  g = csbm_graph
  # dense
  g_dense = graph_lib.from_dense(g, graph_lib.to_dense(g))
  assert _edge_set(g_dense) == _edge_set(g)
  # networkx: compare with a graph built independently by networkx from the edge list
  nxg = graph_lib.to_networkx(g)
  ref = nx.Graph()
  ref.add_edges_from(zip(np.asarray(g.senders).tolist(), np.asarray(g.receivers).tolist()))
  assert nx.utils.edges_equal(nxg.edges(), ref.edges())
  assert nxg.number_of_edges() == g.num_edges // 2
  np.testing.assert_array_equal(nx.to_numpy_array(nxg, nodelist=range(g.num_nodes)),
                                np.asarray(graph_lib.to_dense(g)))
  back = graph_lib.from_networkx(nxg, num_classes=g.num_classes, name=g.name)
  chex.assert_trees_all_equal(back.x, g.x)
  chex.assert_trees_all_equal(back.labels, g.labels)
  assert _edge_set(back) == _edge_set(g)
  assert back.feature_kind == "continuous"


def test_networkx_round_trip_hand_and_directed():
  g = _hand_graph()
  nxg = graph_lib.to_networkx(g)
  assert sorted(nxg.edges(data="weight")) == [(0, 1, 1.0), (1, 2, 2.0), (2, 3, 0.5)]
  assert nxg.nodes[3]["y"] == -1
  back = graph_lib.from_networkx(nxg, num_classes=2)
  assert _edge_set(back) == _edge_set(g)
  np.testing.assert_array_equal(np.asarray(back.labels), [0, 1, 1, -1])
  # a directed networkx graph keeps one direction; an undirected self loop is kept once
  d = nx.DiGraph([(0, 1), (2, 1)])
  gd = graph_lib.from_networkx(d, x=np.ones((3, 1)), labels=[0, 0, 0])
  assert _edge_set(gd) == [(0, 1, 1.0), (2, 1, 1.0)]
  u = nx.Graph([(0, 0), (0, 1)])
  gu = graph_lib.from_networkx(u, x=np.ones((2, 1)), labels=[0, 0])
  assert _edge_set(gu) == [(0, 0, 1.0), (0, 1, 1.0), (1, 0, 1.0)]
  with pytest.raises(ValueError, match="0..n-1"):
    graph_lib.from_networkx(nx.Graph([(1, 2)]), x=np.ones((2, 1)), labels=[0, 0])


def test_remove_self_loops_hand():
  s, r, w = graph_lib.remove_self_loops([0, 1, 2, 2], [0, 2, 2, 1], [5.0, 1.0, 3.0, 4.0])
  np.testing.assert_array_equal(s, [1, 2])
  np.testing.assert_array_equal(r, [2, 1])
  np.testing.assert_array_equal(w, [1.0, 4.0])
  s, r, w = graph_lib.remove_self_loops(np.array([3, 4]), np.array([3, 3]))
  assert w is None and s.tolist() == [4] and r.tolist() == [3]


def test_symmetrize_hand():
  # 0->1 (w 1), 1->0 (w 3) duplicate pair keeps max 3; 2->0 (w 2) gains 0->2; loop 2->2 once
  s, r, w = graph_lib.symmetrize([0, 1, 2, 2], [1, 0, 0, 2], [1.0, 3.0, 2.0, 5.0])
  assert list(zip(s.tolist(), r.tolist(), w.tolist())) == [(0, 1, 3.0), (0, 2, 2.0),
                                                           (1, 0, 3.0), (2, 0, 2.0),
                                                           (2, 2, 5.0)]
  s, r, w = graph_lib.symmetrize([3, 3, 1], [1, 1, 3], num_nodes=5)
  assert w is None and s.tolist() == [1, 3] and r.tolist() == [3, 1]
  s, r, w = graph_lib.symmetrize(np.zeros(0, int), np.zeros(0, int))
  assert s.size == 0 and r.size == 0


def test_symmetrize_matches_dense_max(csbm_graph):
  rng = np.random.default_rng(0)
  s = rng.integers(0, 30, 200)
  r = rng.integers(0, 30, 200)
  w = rng.random(200).astype(np.float32)
  ss, rr, ww = graph_lib.symmetrize(s, r, w, num_nodes=30)
  dense = np.zeros((30, 30), np.float32)
  np.maximum.at(dense, (s, r), w)
  np.maximum.at(dense, (r, s), w)
  out = np.zeros((30, 30), np.float32)
  out[ss, rr] = ww
  np.testing.assert_array_equal(out, dense)
  assert np.all(np.diff(ss * 30 + rr) > 0)  # sorted, deduplicated


def test_add_self_loops_hand_and_jit():
  s = jnp.array([0, 1], jnp.int32)
  r = jnp.array([1, 0], jnp.int32)
  w = jnp.array([2.0, 2.0])
  fn = jax.jit(graph_lib.add_self_loops, static_argnums=(3,))
  s2, r2, w2 = fn(s, r, w, 3, 0.5)
  np.testing.assert_array_equal(np.asarray(s2), [0, 1, 0, 1, 2])
  np.testing.assert_array_equal(np.asarray(r2), [1, 0, 0, 1, 2])
  np.testing.assert_array_equal(np.asarray(w2), [2, 2, 0.5, 0.5, 0.5])
  assert s2.dtype == jnp.int32 and w2.dtype == w.dtype


def test_graph_through_jit(csbm_graph):
  g = csbm_graph

  @jax.jit
  @chex.assert_max_traces(n=1)
  def degree_weighted(graph):
    return graph_lib.to_dense(graph).sum(1) @ graph.x

  out1 = degree_weighted(g)
  out2 = degree_weighted(g.with_features(g.x * 2))  # same shapes: no retrace
  deg = np.bincount(np.asarray(g.senders), weights=np.asarray(g.edge_weight),
                    minlength=g.num_nodes)
  chex.assert_trees_all_close(out1, deg @ np.asarray(g.x), rtol=1e-5)
  chex.assert_trees_all_close(out2, 2 * out1, rtol=1e-6)
  # a jitted function may return a Graph; static metadata survives
  h = jax.jit(lambda graph: graph.with_features(graph.x + 1))(g)
  assert (h.name, h.feature_kind, h.num_classes) == (g.name, g.feature_kind, g.num_classes)
  chex.assert_trees_all_close(h.x, g.x + 1)


def test_graph_through_vmap(csbm_graph):
  g = csbm_graph
  xs = jax.random.normal(jax.random.key(0), (3,) + g.x.shape)

  def propagate(x):
    return graph_lib.to_dense(g.with_features(x)).T @ g.with_features(x).x

  batched = jax.vmap(propagate)(xs)
  adj = np.asarray(graph_lib.to_dense(g))
  for b in range(3):
    chex.assert_trees_all_close(batched[b], adj.T @ np.asarray(xs[b]), rtol=1e-5, atol=1e-5)
  # vmap over a batch of whole Graphs (stacked leaves; metadata static)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), g, g.with_edges(g.senders, g.receivers,
                                                                  2 * g.edge_weight))
  totals = jax.vmap(lambda graph: graph_lib.to_dense(graph).sum())(stacked)
  chex.assert_trees_all_close(totals, jnp.array([1.0, 2.0]) * g.num_edges)


def test_with_edges_defaults():
  g = _hand_graph().with_edges(np.array([0, 3]), np.array([3, 0]))
  np.testing.assert_array_equal(np.asarray(g.edge_weight), [1.0, 1.0])
  assert g.senders.dtype == jnp.int32 and int(g.graph.n_edge[0]) == 2


def test_make_graph_errors():
  x = np.zeros((3, 2), np.float32)
  bad = x.copy()
  bad[1, 0] = np.nan
  with pytest.raises(ValueError, match=r"NaN or inf \(first at node 1, feature 0\)"):
    graph_lib.make_graph(bad, [0], [1], [0, 0, 0])
  with pytest.raises(ValueError, match=r"features must be \[n, d\]"):
    graph_lib.make_graph(np.zeros(3), [0], [1], [0, 0, 0])
  with pytest.raises(ValueError, match=r"senders out of range \[0, 3\)"):
    graph_lib.make_graph(x, [0, 3], [1, 2], [0, 0, 0])
  with pytest.raises(ValueError, match=r"receivers out of range"):
    graph_lib.make_graph(x, [0], [-1], [0, 0, 0])
  with pytest.raises(ValueError, match=r"senders \(2,\) and receivers \(1,\) differ"):
    graph_lib.make_graph(x, [0, 1], [1], [0, 0, 0])
  with pytest.raises(ValueError, match=r"labels have shape \(2,\)"):
    graph_lib.make_graph(x, [0], [1], [0, 0])
  with pytest.raises(ValueError, match=r"labels out of range \[-1, 2\)"):
    graph_lib.make_graph(x, [0], [1], [0, 1, 2], num_classes=2)
  with pytest.raises(ValueError, match=r"labels out of range"):
    graph_lib.make_graph(x, [0], [1], [0, -2, 1])
  with pytest.raises(ValueError, match=r"labels must hold integers"):
    graph_lib.make_graph(x, [0], [1], [0, 0.5, 1])
  with pytest.raises(ValueError, match=r"senders must hold integers"):
    graph_lib.make_graph(x, [0.7], [1], [0, 0, 1])
  with pytest.raises(ValueError, match=r"edge_weight has shape"):
    graph_lib.make_graph(x, [0], [1], [0, 0, 0], edge_weight=[1.0, 2.0])
  with pytest.raises(ValueError, match=r"edge weights contain NaN"):
    graph_lib.make_graph(x, [0], [1], [0, 0, 0], edge_weight=[np.inf])
  with pytest.raises(ValueError, match=r"feature_kind='binary' but features"):
    graph_lib.make_graph(x + 0.5, [0], [1], [0, 0, 0], feature_kind="binary")
  with pytest.raises(ValueError, match=r"feature_kind must be one of"):
    graph_lib.make_graph(x, [0], [1], [0, 0, 0], feature_kind="text")
  with pytest.raises(ValueError, match=r"train_mask has shape"):
    graph_lib.make_graph(x, [0], [1], [0, 0, 0], train_mask=[True])
  # integral floats are fine
  g = graph_lib.make_graph(x, np.array([0.0]), np.array([1.0]), np.array([0.0, 1.0, -1.0]))
  assert g.num_classes == 2 and g.feature_kind == "binary"
