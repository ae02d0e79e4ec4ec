"""Tests for jmeta.data: real dataset facts, safe unpickling, broken files, lookup, download."""

import collections
import hashlib
import os
import pickle
import shutil
import urllib.error
import warnings
from pathlib import Path

import chex
import jax
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

import jmeta.data as data
from jmeta import graph as graph_lib
from jmeta.data import cache, safe_pickle, synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JMETA_DATA") or (REPO.parent / "shared" / "datasets")).resolve()
needs_shared = pytest.mark.skipif(
    not (SHARED / "planetoid").is_dir() or not (SHARED / "heterophilous").is_dir(),
    reason=f"shared datasets folder {SHARED} is absent (set JMETA_DATA to it)")

# name: (nodes, features, classes, directed edges, feature kind, train, val, test)
FACTS = {
    "cora": (2708, 1433, 7, 10556, "binary", 140, 500, 1000),
    "citeseer": (3327, 3703, 6, 9104, "binary", 120, 500, 1000),
    "pubmed": (19717, 500, 3, 88648, "continuous", 60, 500, 1000),
    "chameleon": (2277, 2325, 5, 62742, "binary", 1092, 729, 456),
    "squirrel": (5201, 2089, 5, 396706, "binary", 2496, 1664, 1041),
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
  """No test may reach the network: the default fetcher fails loudly."""

  def refuse(url, timeout=60.0):
    raise AssertionError(f"test tried to download {url}")

  monkeypatch.setattr(cache, "fetch_url", refuse)


@pytest.fixture(scope="module")
def real():
  """Loads each real dataset once per module (from the shared folder)."""
  graphs = {}

  def get(name):
    if name not in graphs:
      graphs[name] = data.load(name, data_dir=SHARED)
    return graphs[name]

  return get


def _isolated_env(monkeypatch, tmp_path):
  """Empty cache, no JMETA_DATA."""
  monkeypatch.delenv("JMETA_DATA", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  return tmp_path / "xdg" / "jmeta"


def _tiny_npz(path, n=6, d=3, num_classes=5, **overrides):
  """A small valid heterophilous-format npz (edges a path 0-1-...-n-1 plus a self loop)."""
  rng = np.random.default_rng(n)
  arrays = dict(
      node_features=(rng.random((n, d)) < 0.5).astype(np.float32),
      node_labels=np.arange(n, dtype=np.int64) % num_classes,
      edges=np.array([[i, i + 1] for i in range(n - 1)] + [[0, 0], [1, 0]], np.int64),
      train_masks=np.tile(np.arange(n) % 3 == 0, (10, 1)),
      val_masks=np.tile(np.arange(n) % 3 == 1, (10, 1)),
      test_masks=np.tile(np.arange(n) % 3 == 2, (10, 1)),
  )
  arrays.update(overrides)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return arrays


def _copy_planetoid(name, dest):
  dest.mkdir(parents=True, exist_ok=True)
  for rel in data.planetoid.relpaths(name):
    shutil.copy(SHARED / rel, dest / Path(rel).name)
  return dest


# -- real datasets ------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("name", list(FACTS))
def test_real_dataset_facts(real, name):
  n, d, c, e, kind, ntr, nva, nte = FACTS[name]
  g = real(name)
  chex.assert_shape(g.x, (n, d))
  chex.assert_shape(g.labels, (n,))
  assert (g.num_classes, g.num_edges, g.feature_kind) == (c, e, kind)
  assert (int(g.train_mask.sum()), int(g.val_mask.sum()), int(g.test_mask.sum())) == (ntr, nva,
                                                                                     nte)
  masks = np.stack([g.train_mask, g.val_mask, g.test_mask]).astype(int)
  assert masks.sum(0).max() == 1  # disjoint
  assert graph_lib.is_symmetric(g) and not graph_lib.has_self_loops(g)
  pairs = np.asarray(g.senders).astype(np.int64) * n + np.asarray(g.receivers)
  assert np.unique(pairs).size == e  # no duplicates
  np.testing.assert_array_equal(np.asarray(g.edge_weight), np.ones(e, np.float32))
  x = np.asarray(g.x)
  assert x.min() >= 0
  if kind == "binary":
    assert np.all((x == 0) | (x == 1))
  else:
    assert np.mean((x > 0) & (x < 1)) > 0.01  # genuinely continuous TF-IDF values
  labels = np.asarray(g.labels)
  assert labels.max() == c - 1
  assert np.all(labels[np.asarray(g.train_mask | g.val_mask | g.test_mask)] >= 0)


@needs_shared
def test_citeseer_isolated_test_nodes(real):
  g = real("citeseer")
  test_index = np.loadtxt(SHARED / "planetoid/ind.citeseer.test.index", dtype=np.int64)
  missing = np.setdiff1d(np.arange(test_index.min(), test_index.max() + 1), test_index)
  assert missing.size == 15
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(g.labels) < 0), missing)
  assert np.asarray(g.x)[missing].sum() == 0
  assert not np.asarray(g.test_mask)[missing].any()


def _reference_planetoid(name):
  """The GCN reference preprocessing (Kipf's utils.load_data) with the plain pickle module."""
  objs = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # numpy.core / scipy.sparse.csr deprecation shims
    for s in ("x", "y", "tx", "ty", "allx", "ally", "graph"):
      with open(SHARED / f"planetoid/ind.{name}.{s}", "rb") as f:
        objs[s] = pickle.load(f, encoding="latin1")
  test_idx = [int(l) for l in open(SHARED / f"planetoid/ind.{name}.test.index")]
  rng = np.sort(test_idx)
  tx, ty = objs["tx"], objs["ty"]
  if name == "citeseer":
    full = range(min(test_idx), max(test_idx) + 1)
    tx_ext = sp.lil_matrix((len(full), tx.shape[1]))
    tx_ext[rng - min(rng), :] = tx
    ty_ext = np.zeros((len(full), ty.shape[1]))
    ty_ext[rng - min(rng), :] = ty
    tx, ty = tx_ext, ty_ext
  feats = sp.vstack((objs["allx"], tx)).tolil()
  feats[test_idx, :] = feats[rng, :]
  onehot = np.vstack((objs["ally"], ty))
  onehot[test_idx, :] = onehot[rng, :]
  labels = np.where(onehot.sum(1) > 0, onehot.argmax(1), -1)
  adj = nx.adjacency_matrix(nx.from_dict_of_lists(objs["graph"]),
                            nodelist=range(feats.shape[0]))
  adj = ((adj + adj.T) > 0).astype(np.float32).tolil()
  adj.setdiag(0)
  return feats.toarray(), labels, adj.tocsr()


@needs_shared
@pytest.mark.parametrize("name", ["cora", "citeseer"])
def test_planetoid_matches_reference_code(real, name):
  g = real(name)
  x, labels, adj = _reference_planetoid(name)
  np.testing.assert_array_equal(np.asarray(g.x), x)
  np.testing.assert_array_equal(np.asarray(g.labels), labels)
  assert abs(graph_lib.to_scipy(g) - adj).sum() == 0


@needs_shared
def test_heterophilous_split_and_edges(real):
  with np.load(SHARED / "heterophilous/chameleon.npz") as z:
    raw = {k: z[k] for k in z.files}
  g3 = data.load("chameleon", data_dir=SHARED, split=3)
  np.testing.assert_array_equal(np.asarray(g3.train_mask), raw["train_masks"][3])
  np.testing.assert_array_equal(np.asarray(g3.val_mask), raw["val_masks"][3])
  np.testing.assert_array_equal(np.asarray(g3.test_mask), raw["test_masks"][3])
  assert not np.array_equal(raw["train_masks"][3], raw["train_masks"][0])
  n = raw["node_labels"].shape[0]
  e = raw["edges"]
  a = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
  a = ((a + a.T) > 0).astype(np.float32).tolil()
  a.setdiag(0)
  assert abs(graph_lib.to_scipy(g3) - a.tocsr()).sum() == 0
  np.testing.assert_array_equal(np.asarray(g3.x), raw["node_features"])


def test_bad_names_and_splits(tmp_path):
  with pytest.raises(ValueError, match="cora, citeseer, pubmed, chameleon, squirrel, synthetic"):
    data.load("karate")
  with pytest.raises(ValueError, match="only the public Planetoid split 0"):
    data.load("cora", data_dir=tmp_path, split=1)
  with pytest.raises(ValueError, match=r"0\.\.9"):
    data.load("squirrel", data_dir=tmp_path, split=10)
  with pytest.raises(ValueError, match="unexpected keyword"):
    data.load("cora", num_nodes=5)
  assert data.DATASETS == ("cora", "citeseer", "pubmed", "chameleon", "squirrel", "synthetic")


# -- synthetic CSBM -----------------------------------------------------------------------------


@pytest.mark.parametrize("h", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_csbm_homophily_degree_and_features(h, kind):
  g = synthetic.csbm(num_nodes=400, num_features=32, num_classes=4, homophily=h, avg_degree=6,
                     feature_kind=kind, seed=3)
  labels = np.asarray(g.labels)
  s, r = np.asarray(g.senders), np.asarray(g.receivers)
  # homophily recomputed independently with networkx edge iteration
  nxg = graph_lib.to_networkx(g)
  same = np.mean([labels[u] == labels[v] for u, v in nxg.edges()])
  assert abs(same - h) < 0.05
  assert abs(synthetic.edge_homophily(s, r, labels) - same) < 1e-12
  assert abs(2 * nxg.number_of_edges() / 400 - 6) < 0.05
  assert graph_lib.is_symmetric(g) and not graph_lib.has_self_loops(g)
  assert g.feature_kind == kind and g.num_classes == 4
  assert np.all(np.bincount(labels) == 100)
  x = np.asarray(g.x)
  assert x.min() >= 0
  if kind == "binary":
    assert np.all((x == 0) | (x == 1)) and x.mean() < 0.15  # sparse, bag-of-words like
  # class-dependent features: class means differ far more than the noise of a mean
  means = np.stack([x[labels == c].mean(0) for c in range(4)])
  assert np.ptp(means, axis=0).mean() > 0.1
  # masks: disjoint, 20 train nodes per class
  tr, va, te = (np.asarray(m) for m in (g.train_mask, g.val_mask, g.test_mask))
  assert np.all(tr.astype(int) + va + te == 1)
  np.testing.assert_array_equal(np.bincount(labels[tr]), [20] * 4)


def test_csbm_deterministic_by_seed():
  a = synthetic.csbm(num_nodes=120, seed=7)
  b = data.load("synthetic", num_nodes=120, seed=7)
  chex.assert_trees_all_equal(a, b)
  c = synthetic.csbm(num_nodes=120, seed=8)
  assert not np.array_equal(np.asarray(a.x), np.asarray(c.x))
  ka = synthetic.csbm(num_nodes=120, seed=jax.random.key(5))
  kb = synthetic.csbm(num_nodes=120, seed=jax.random.key(5))
  chex.assert_trees_all_equal(ka, kb)
  assert not np.array_equal(np.asarray(ka.senders), np.asarray(a.senders))
  # another split: same graph, different masks
  s1 = synthetic.csbm(num_nodes=120, seed=7, split=1)
  np.testing.assert_array_equal(np.asarray(s1.senders), np.asarray(a.senders))
  assert not np.array_equal(np.asarray(s1.train_mask), np.asarray(a.train_mask))


def test_csbm_small_dense_and_defaults():
  g = data.load("synthetic")
  assert (g.num_nodes, g.num_features, g.num_classes, g.feature_kind) == (500, 64, 4, "binary")
  # dense regime (pool enumeration): 20 nodes, avg degree 8 -> 80 of 190 pairs
  d = synthetic.csbm(num_nodes=20, num_classes=2, homophily=0.5, avg_degree=8, seed=0)
  assert d.num_edges == 160
  assert synthetic.edge_homophily(d.senders, d.receivers, d.labels) == 0.5
  with pytest.raises(ValueError, match="cannot place"):
    synthetic.csbm(num_nodes=20, num_classes=4, homophily=0.9, avg_degree=8)
  with pytest.raises(ValueError, match="homophily"):
    synthetic.csbm(homophily=1.5)


# -- restricted unpickler -----------------------------------------------------------------------


class _Evil:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _EvilSubprocess:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import subprocess
    return (subprocess.call, (["touch", str(self.marker)],))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilSubprocess])
def test_unpickler_refuses_code_execution(tmp_path, evil_cls):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"x": [1, 2], "y": evil_cls(marker)}, protocol=2)
  path = tmp_path / "evil.pkl"
  path.write_bytes(payload)
  with pytest.raises(safe_pickle.UnsafePickleError, match=r"(posix|os|subprocess|commands)\.(system|call)"
                     ) as info:
    safe_pickle.load(path)
  assert str(path) in str(info.value)
  assert not marker.exists()
  # sanity: the plain unpickler really runs the command
  pickle.loads(payload)
  assert marker.exists()


def test_unpickler_refuses_builtins_outside_allow_list(tmp_path):
  payload = b"\x80\x02c__builtin__\neval\nX\x04\x00\x00\x001+1q\x85R."
  with pytest.raises(safe_pickle.UnsafePickleError, match=r"__builtin__\.eval"):
    safe_pickle.loads(payload, "payload")


@needs_shared
def test_malicious_planetoid_file_refused(tmp_path):
  d = _copy_planetoid("cora", tmp_path / "data")
  marker = tmp_path / "pwned"
  (d / "ind.cora.ty").write_bytes(pickle.dumps(_Evil(marker), protocol=2))
  with pytest.raises(safe_pickle.UnsafePickleError, match="ind.cora.ty"):
    data.load("cora", data_dir=d)
  assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_unpickler_round_trips_allowed_objects(protocol):
  obj = {
      "m": sp.csr_matrix(np.array([[0, 1.5], [2, 0]], np.float32)),
      "c": sp.coo_matrix(np.eye(3)),
      "a": np.arange(6, dtype=np.int32).reshape(2, 3),
      "g": collections.defaultdict(list, {0: [1, 2], 1: [0]}),
      "t": (1, 2.0, "s", b"b", {3}, frozenset([4])),
  }
  out = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
  assert isinstance(out["m"], sp.csr_matrix) and isinstance(out["c"], sp.coo_matrix)
  np.testing.assert_array_equal(out["m"].toarray(), obj["m"].toarray())
  np.testing.assert_array_equal(out["c"].toarray(), np.eye(3))
  np.testing.assert_array_equal(out["a"], obj["a"])
  assert out["a"].dtype == np.int32
  assert out["g"] == obj["g"] and out["g"].default_factory is list
  assert out["t"] == obj["t"]


# -- broken files -------------------------------------------------------------------------------


@needs_shared
def test_truncated_and_garbage_planetoid(tmp_path):
  d = _copy_planetoid("cora", tmp_path / "trunc")
  raw = (SHARED / "planetoid/ind.cora.allx").read_bytes()
  (d / "ind.cora.allx").write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match=r"ind\.cora\.allx.*corrupt or truncated"):
    data.load("cora", data_dir=d)
  (d / "ind.cora.allx").write_bytes(os.urandom(64))
  with pytest.raises(ValueError, match=r"ind\.cora\.allx"):
    data.load("cora", data_dir=d)


@needs_shared
def test_wrong_shapes_planetoid(tmp_path):
  d = _copy_planetoid("cora", tmp_path / "shape")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tx = pickle.load(open(SHARED / "planetoid/ind.cora.tx", "rb"), encoding="latin1")
    ty = pickle.load(open(SHARED / "planetoid/ind.cora.ty", "rb"), encoding="latin1")
  (d / "ind.cora.tx").write_bytes(pickle.dumps(sp.csr_matrix(tx[:999]), protocol=2))
  (d / "ind.cora.ty").write_bytes(pickle.dumps(ty[:999], protocol=2))
  with pytest.raises(ValueError, match=r"ind\.cora\.tx: 999 rows.*1000 test nodes"):
    data.load("cora", data_dir=d)
  shutil.copy(SHARED / "planetoid/ind.cora.tx", d / "ind.cora.tx")
  with pytest.raises(ValueError, match=r"ind\.cora\.ty: 999 label rows"):
    data.load("cora", data_dir=d)
  two_hot = ty.copy()
  two_hot[5, :2] = 1
  (d / "ind.cora.ty").write_bytes(pickle.dumps(two_hot, protocol=2))
  with pytest.raises(ValueError, match=r"ind\.cora\.ty: 1 label rows have more than one"):
    data.load("cora", data_dir=d)
  shutil.copy(SHARED / "planetoid/ind.cora.ty", d / "ind.cora.ty")
  (d / "ind.cora.graph").write_bytes(pickle.dumps({0: [1, 5000]}, protocol=2))
  with pytest.raises(ValueError, match=r"ind\.cora\.graph: neighbour index out of range"):
    data.load("cora", data_dir=d)


def test_broken_npz(tmp_path):
  path = tmp_path / "chameleon.npz"
  bad_x = np.ones((6, 3), np.float32)
  bad_x[2, 1] = np.nan
  _tiny_npz(path, node_features=bad_x)
  with pytest.raises(ValueError, match=r"chameleon\.npz: node_features contain NaN.*node 2"):
    data.load("chameleon", data_dir=tmp_path)
  _tiny_npz(path, node_labels=np.array([0, 1, 2, 3, 4, 5]))
  with pytest.raises(ValueError, match=r"chameleon\.npz: node_labels out of range"):
    data.load("chameleon", data_dir=tmp_path)
  _tiny_npz(path, node_labels=np.zeros(5, np.int64))
  with pytest.raises(ValueError, match=r"chameleon\.npz: node_labels must be int \[6\]"):
    data.load("chameleon", data_dir=tmp_path)
  _tiny_npz(path, edges=np.array([[0, 9]]))
  with pytest.raises(ValueError, match=r"chameleon\.npz: edges out of range"):
    data.load("chameleon", data_dir=tmp_path)
  _tiny_npz(path, train_masks=np.ones((10, 4), bool))
  with pytest.raises(ValueError, match=r"chameleon\.npz: train_masks must be bool"):
    data.load("chameleon", data_dir=tmp_path)
  arrays = _tiny_npz(path)
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) - 200])
  with pytest.raises(ValueError, match=r"chameleon\.npz: corrupt or truncated"):
    data.load("chameleon", data_dir=tmp_path)
  path.write_bytes(b"not a zip file at all")
  with pytest.raises(ValueError, match=r"chameleon\.npz: corrupt or truncated"):
    data.load("chameleon", data_dir=tmp_path)
  del arrays["edges"]
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  with pytest.raises(ValueError, match=r"missing arrays \['edges'\]"):
    data.load("chameleon", data_dir=tmp_path)


def test_tiny_npz_graph_construction(tmp_path):
  arrays = _tiny_npz(tmp_path / "squirrel.npz")
  g = data.load("squirrel", data_dir=tmp_path, split=4)
  # path 0-1-2-3-4-5 undirected; the self loop and the duplicate 1->0 are dropped
  expected = nx.path_graph(6)
  assert sorted(graph_lib.to_networkx(g).edges()) == sorted(expected.edges())
  assert g.num_edges == 10
  np.testing.assert_array_equal(np.asarray(g.labels), arrays["node_labels"])


# -- lookup order, download, offline ------------------------------------------------------------


def test_lookup_order(monkeypatch, tmp_path):
  cache_dir = _isolated_env(monkeypatch, tmp_path)
  _tiny_npz(tmp_path / "arg" / "heterophilous" / "chameleon.npz", n=5)
  _tiny_npz(tmp_path / "env" / "chameleon.npz", n=6)  # flat layout
  _tiny_npz(cache_dir / "heterophilous" / "chameleon.npz", n=7)
  monkeypatch.setenv("JMETA_DATA", str(tmp_path / "env"))
  assert data.load("chameleon", data_dir=tmp_path / "arg").num_nodes == 5
  assert data.load("chameleon").num_nodes == 6
  assert data.load("chameleon", data_dir=tmp_path / "nowhere").num_nodes == 6
  monkeypatch.delenv("JMETA_DATA")
  assert data.load("chameleon").num_nodes == 7
  assert cache.search_dirs(tmp_path / "arg") == [tmp_path / "arg", cache_dir]


@needs_shared
def test_download_planetoid_with_fake_fetch(monkeypatch, tmp_path):
  cache_dir = _isolated_env(monkeypatch, tmp_path)
  urls = []

  def fetch(url):
    urls.append(url)
    return (SHARED / "planetoid" / url.rsplit("/", 1)[1]).read_bytes()

  g = data.load("cora", fetch=fetch)
  assert (g.num_nodes, g.num_edges) == (2708, 10556)
  assert sorted(urls) == sorted(
      f"https://github.com/kimiyoung/planetoid/raw/master/data/ind.cora.{s}"
      for s in data.planetoid.SUFFIXES)
  files = sorted(p.name for p in (cache_dir / "planetoid").iterdir())
  assert files == sorted(f"ind.cora.{s}" for s in data.planetoid.SUFFIXES)  # no temp files left
  for f in files:
    digest = hashlib.sha256((cache_dir / "planetoid" / f).read_bytes()).hexdigest()
    assert digest == cache.SHA256[f"planetoid/{f}"]
  # second load reads the cache, no fetch
  urls.clear()
  data.load("cora", fetch=fetch)
  assert urls == []


def test_download_npz_checksum(monkeypatch, tmp_path):
  cache_dir = _isolated_env(monkeypatch, tmp_path)
  _tiny_npz(tmp_path / "src" / "chameleon.npz")
  payload = (tmp_path / "src" / "chameleon.npz").read_bytes()
  dest = cache_dir / "heterophilous" / "chameleon.npz"
  # mismatch (the table holds the published hash): refused, nothing kept
  with pytest.raises(cache.ChecksumError, match="sha256 mismatch.*chameleon.npz"):
    data.load("chameleon", fetch=lambda url: payload)
  assert not dest.exists()
  assert not any(p.is_file() for p in tmp_path.joinpath("xdg").rglob("*"))
  # success once the table agrees
  monkeypatch.setitem(cache.SHA256, "heterophilous/chameleon.npz",
                      hashlib.sha256(payload).hexdigest())
  seen = []
  g = data.load("chameleon", fetch=lambda url: seen.append(url) or payload)
  assert seen == ["https://raw.githubusercontent.com/yandex-research/heterophilous-graphs/"
                  "main/data/chameleon.npz"]
  assert dest.read_bytes() == payload and g.num_nodes == 6


def test_offline_error_message(monkeypatch, tmp_path):
  cache_dir = _isolated_env(monkeypatch, tmp_path)

  def offline(url):
    raise urllib.error.URLError("Name or service not known")

  with pytest.raises(FileNotFoundError) as info:
    data.load("squirrel", data_dir=tmp_path / "mine", fetch=offline)
  msg = str(info.value)
  for part in ("squirrel.npz", str(tmp_path / "mine"), str(cache_dir), "JMETA_DATA",
               "heterophilous/squirrel.npz", "Name or service not known"):
    assert part in msg
  assert not (cache_dir / "heterophilous" / "squirrel.npz").exists()
