"""Tests of jmeta.metrics: closed forms on tiny inputs and grakel's Weisfeiler-Lehman kernel."""

import time
import warnings

import chex
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from jmeta import metrics
from jmeta.graph import from_networkx


# -- feature similarity, match rate, consistency, activation loss ---------------------------------


def test_feature_similarity_closed_forms():
  x = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], np.float32)
  np.testing.assert_allclose(metrics.feature_similarity(x, x), 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics.feature_similarity(x, 3.0 * x), 1.0, rtol=1e-6)
  disjoint = 1.0 - x  # binary, no common one
  np.testing.assert_allclose(metrics.feature_similarity(x, disjoint), 0.0, atol=1e-7)
  y = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], np.float32)
  # <x, y> = 2, ||x|| = sqrt(3), ||y|| = 2.
  np.testing.assert_allclose(metrics.feature_similarity(x, y), 2.0 / (np.sqrt(3.0) * 2.0),
                             rtol=1e-6)


def test_feature_similarity_is_jittable_and_matches_numpy():
  rng = np.random.default_rng(0)
  a = rng.random((40, 13)).astype(np.float32)
  b = rng.random((40, 13)).astype(np.float32)
  expected = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
  np.testing.assert_allclose(jax.jit(metrics.feature_similarity)(a, b), expected, rtol=1e-5)


def test_zero_inputs_raise_eagerly_and_give_nan_under_jit():
  z = np.zeros((3, 4), np.float32)
  x = np.ones((3, 4), np.float32)
  with pytest.raises(ValueError, match="all zeros"):
    metrics.feature_similarity(z, x)
  with pytest.raises(ValueError, match="all zeros"):
    metrics.feature_similarity(x, z)
  with pytest.raises(ValueError, match="reference activations"):
    metrics.activation_loss(z, x)
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.feature_similarity(x, x[:2])
  with pytest.raises(ValueError, match="NaN"):
    metrics.check_nonzero("h", np.array([1.0, np.nan]))
  assert np.isnan(jax.jit(metrics.feature_similarity)(z, x))
  assert np.isnan(jax.jit(metrics.activation_loss)(z, x))


def test_match_rate_by_hand():
  logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
  other = jnp.array([[0.5, 0.1], [1.0, 0.0], [0.0, 1.0], [1.0, 4.0]])  # agree on nodes 0 and 3
  np.testing.assert_allclose(metrics.match_rate(logits, other), 0.5)
  mask = jnp.array([True, True, False, False])
  np.testing.assert_allclose(metrics.match_rate(logits, other, mask), 0.5)
  np.testing.assert_allclose(metrics.match_rate(logits, other, jnp.array([1, 0, 0, 1], bool)), 1.0)
  np.testing.assert_allclose(jax.jit(metrics.match_rate)(logits, other, mask), 0.5)
  with pytest.raises(ValueError, match="no node"):
    metrics.match_rate(logits, other, jnp.zeros(4, bool))
  with pytest.raises(ValueError, match="mask has shape"):
    metrics.match_rate(logits, other, jnp.ones(3, bool))


def test_consistency_identities():
  s = np.linspace(0.0, 1.0, 11)
  m = np.linspace(1.0, 0.0, 11)
  cs = metrics.consistency(s, m)
  np.testing.assert_allclose(metrics.consistency(s, np.ones_like(s)), s)  # S_match = 1 -> S
  np.testing.assert_allclose(metrics.consistency(s, np.zeros_like(s)), 1 - s)  # -> 1 - S
  np.testing.assert_allclose(metrics.consistency(s, m), metrics.consistency(m, s))  # symmetric
  np.testing.assert_allclose(metrics.consistency(s, np.full_like(s, 0.5)), 0.5)
  np.testing.assert_allclose(cs, 1 - s - m + 2 * s * m)
  # 0.114 * 0.964 + 0.886 * 0.036 = 0.109896 + 0.031896 (the paper's GCN/Cora means give 14.12 %
  # because it averages CS over seeds rather than computing CS of the averages).
  np.testing.assert_allclose(metrics.as_percent(metrics.consistency(0.114, 0.964)), 14.1792,
                             rtol=1e-9)
  np.testing.assert_allclose(jax.jit(metrics.consistency)(0.25, 0.5), 0.5)


def test_activation_loss_and_similarity_closed_form():
  h = jnp.array([[3.0, 0.0], [0.0, 4.0]])  # ||h||^2 = 25
  hp = jnp.array([[3.0, 1.0], [0.0, 2.0]])  # ||h' - h||^2 = 1 + 4 = 5
  np.testing.assert_allclose(metrics.activation_loss(h, hp), 0.2, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(metrics.activation_loss)(h, hp), 0.2, rtol=1e-6)
  sim = metrics.activation_similarity(h, hp)
  assert set(sim) == {"one_minus_loss", "cosine"}
  np.testing.assert_allclose(sim["one_minus_loss"], 0.8, rtol=1e-6)
  np.testing.assert_allclose(sim["cosine"], (9.0 + 8.0) / (5.0 * np.sqrt(14.0)), rtol=1e-6)
  np.testing.assert_allclose(metrics.activation_loss(h, h), 0.0)


def test_feature_consistency_bundle_and_percent():
  x = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  xp = jnp.array([[1.0, 1.0], [0.0, 1.0]])
  logits = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  out = metrics.feature_consistency(x, xp, logits, logits[::-1])
  s = 2.0 / (np.sqrt(3.0) * np.sqrt(3.0))
  np.testing.assert_allclose(out["s_feat"], s, rtol=1e-6)
  np.testing.assert_allclose(out["s_match"], 0.0)
  np.testing.assert_allclose(out["cs_feat"], 1 - s, rtol=1e-6)
  pct = metrics.as_percent(out)
  np.testing.assert_allclose(pct["cs_feat"], 100 * (1 - s), rtol=1e-6)


# -- Weisfeiler-Lehman ------------------------------------------------------------------------------


def _grakel_wl(adj_a, adj_b, n_iter):
  """grakel's normalised WL subtree kernel with degree node labels (an independent reference)."""
  from grakel.kernels import VertexHistogram, WeisfeilerLehman
  graphs = []
  for adj in (adj_a, adj_b):
    a = np.asarray(adj)
    n = a.shape[0]
    edges = {i: {int(j): 1 for j in np.flatnonzero(a[i])} for i in range(n)}
    labels = {i: int(np.count_nonzero(a[i])) for i in range(n)}
    graphs.append([edges, labels])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    k = WeisfeilerLehman(n_iter=n_iter, base_graph_kernel=VertexHistogram,
                         normalize=True).fit_transform(graphs)
  return float(k[0, 1])


def _dense(g):
  return nx.to_numpy_array(g, nodelist=range(g.number_of_nodes()))


PAIRS = [
    ("gnp 30 vs gnp 25", nx.gnp_random_graph(30, 0.15, seed=1), nx.gnp_random_graph(25, 0.2, seed=2)),
    ("gnm 60 vs gnm 60", nx.gnm_random_graph(60, 120, seed=3), nx.gnm_random_graph(60, 120, seed=4)),
    ("BA 50 vs WS 50", nx.barabasi_albert_graph(50, 2, seed=5), nx.watts_strogatz_graph(50, 4, 0.3, seed=6)),
    ("tree vs cycle + isolated", nx.random_labeled_tree(20, seed=7),
     nx.disjoint_union(nx.cycle_graph(15), nx.empty_graph(5))),
]


@pytest.mark.parametrize("name,ga,gb", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("h", [1, 2, 3, 5])
def test_wl_matches_grakel(name, ga, gb, h):
  a, b = _dense(ga), _dense(gb)
  # grakel 0.1.11 counts refinement steps in n_iter (it runs n_iter + 1 labellings), as we do.
  np.testing.assert_allclose(metrics.wl_similarity(a, b, iterations=h), _grakel_wl(a, b, h),
                             rtol=0, atol=1e-6)


def test_wl_iteration_semantics():
  a, b = _dense(PAIRS[0][1]), _dense(PAIRS[0][2])
  # iterations = 0 is the cosine of the degree histograms, by hand.
  da, db = a.sum(1).astype(int), b.sum(1).astype(int)
  ha = np.bincount(da, minlength=20)
  hb = np.bincount(db, minlength=20)
  np.testing.assert_allclose(metrics.wl_similarity(a, b, 0), ha @ hb / np.sqrt((ha @ ha) * (hb @ hb)))
  # iterations = h is grakel n_iter = h, not h + 1 (the values differ, so the mapping is pinned).
  ours = metrics.wl_similarity(a, b, 2)
  assert abs(ours - _grakel_wl(a, b, 2)) < 1e-6
  assert abs(ours - _grakel_wl(a, b, 3)) > 1e-3
  # Raw kernel: k(A, A) = sum over iterations of squared label counts.
  hists = metrics.wl_label_histograms([a], iterations=2)
  assert len(hists) == 3
  assert metrics.wl_kernel(a, a, 2, normalize=False) == sum(int(h[0] @ h[0]) for h in hists)


def test_wl_self_isomorphic_and_input_kinds():
  g = nx.gnm_random_graph(40, 90, seed=11)
  a = _dense(g)
  perm = np.random.default_rng(0).permutation(40)
  a_perm = a[np.ix_(perm, perm)]
  assert metrics.wl_similarity(a, a) == pytest.approx(1.0, abs=1e-12)
  assert metrics.wl_similarity(a, a_perm) == pytest.approx(1.0, abs=1e-12)
  other = _dense(nx.gnm_random_graph(40, 90, seed=12))
  ref = metrics.wl_similarity(a, other)
  assert ref < 1.0 - 1e-3
  graph = from_networkx(g, x=np.ones((40, 2), np.float32), labels=np.zeros(40, int))
  for a_like in (jnp.asarray(a), sp.csr_matrix(a), graph, 2.5 * a):  # weights are ignored
    assert metrics.wl_similarity(a_like, other) == pytest.approx(ref, abs=1e-12)


def test_wl_bad_input():
  with pytest.raises(ValueError, match="square"):
    metrics.wl_similarity(np.zeros((3, 4)), np.zeros((3, 3)))
  with pytest.raises(ValueError, match="2-D"):
    metrics.wl_similarity(np.zeros(3), np.zeros((3, 3)))
  with pytest.raises(ValueError, match="iterations"):
    metrics.wl_similarity(np.eye(3), np.eye(3), iterations=-1)
  with pytest.raises(ValueError, match="no nodes"):
    metrics.wl_similarity(np.zeros((0, 0)), np.eye(3))


def test_random_graph_like_keeps_size():
  g = nx.karate_club_graph()  # 34 nodes, 78 edges
  u, v = np.array(list(g.edges())).T
  lo, hi = np.minimum(u, v), np.maximum(u, v)
  one_way = sp.csr_matrix((np.ones(len(u)), (lo, hi)), shape=(34, 34))  # each pair once
  r = metrics.random_graph_like(one_way, seed=3)
  chex.assert_shape(r, (34, 34))
  assert (r != r.T).nnz == 0 and r.diagonal().sum() == 0
  assert r.nnz == 2 * 78 and set(np.unique(r.data)) == {1}
  assert (metrics.random_graph_like(one_way, seed=3) != r).nnz == 0  # seeded
  assert (metrics.random_graph_like(one_way, seed=4) != r).nnz > 0


def test_random_graph_similarity_closed_forms():
  complete = np.ones((7, 7)) - np.eye(7)  # K_7 is the only simple graph with 7 nodes, 21 edges
  np.testing.assert_allclose(metrics.random_graph_similarity(complete, seeds=range(3)), 1.0)
  empty = np.zeros((5, 5))  # and the edgeless graph the only one with none
  np.testing.assert_allclose(metrics.random_graph_similarity(empty, seeds=(0, 1)), 1.0)
  # A star's hub has no counterpart in a random graph with the same 12 edges.
  star = nx.to_numpy_array(nx.star_graph(12))
  chance = metrics.random_graph_similarity(star, seeds=range(4), iterations=1)
  chex.assert_shape(chance, (4,))
  assert np.all(chance < 0.9) and np.all(chance > 0.0)
  with pytest.raises(ValueError, match="NaN"):
    metrics.random_graph_similarity(np.full((3, 3), np.nan))


def test_wl_fast_on_pubmed_sized_graphs():
  """Two graphs of PubMed's size (19717 nodes, 44324 edges) in well under a second."""
  a = nx.to_scipy_sparse_array(nx.barabasi_albert_graph(19717, 2, seed=0), format="csr")
  b = nx.to_scipy_sparse_array(nx.gnm_random_graph(19717, 44324, seed=1), format="csr")
  t0 = time.perf_counter()
  s = metrics.wl_similarity(a, b, iterations=3)
  elapsed = time.perf_counter() - t0
  assert 0.0 < s < 1.0
  assert elapsed < 2.0, f"WL on PubMed-sized graphs took {elapsed:.2f} s"
  assert metrics.wl_similarity(a, a) == pytest.approx(1.0, abs=1e-12)


def test_structure_consistency_bundle():
  a = _dense(nx.gnm_random_graph(30, 50, seed=1))
  b = _dense(nx.gnm_random_graph(30, 50, seed=2))
  logits = jnp.eye(30)[:, :3] + 0.01
  out = metrics.structure_consistency(a, b, logits, logits)
  s = metrics.wl_similarity(a, b)
  assert out["s_match"] == pytest.approx(1.0)
  assert out["s_struct"] == pytest.approx(s)
  assert out["cs_struct"] == pytest.approx(s)
  chex.assert_scalar_in(out["s_struct"], 0.0, 1.0)
