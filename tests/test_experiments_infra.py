"""Quick end-to-end runs of experiments/table1.py, fig5_structure.py and jacobian_study.py.

The three share one checkpoint cache, so the Jacobian study and Figure 5 reuse the models that
Table 1 trained, and the Jacobian study reads its CS_feat from the Table 1 results.
"""

import csv
import json
import os
import shutil

import networkx as nx
import numpy as np
import pytest

import jmeta.data
from jmeta import cli, metrics, runs, train
from jmeta.config_io import load_config
from jmeta.graph import to_dense
from jmeta.metamers import MetamerResult


def _config(name, **overrides):
  mod = cli.load_experiment(name)
  cfg = load_config(runs.configs_dir() / f"{name}_quick.yaml", schema=mod.SCHEMA)
  cfg.update(overrides)
  return mod, cfg


@pytest.fixture(scope="module")
def done(tmp_path_factory):
  """Runs the three quick experiments once; returns their directories and summaries."""
  root = tmp_path_factory.mktemp("exp")
  cache = str(root / "ck")
  t1_mod, t1_cfg = _config("table1", cache_dir=cache)
  t1 = t1_mod.run(t1_cfg, str(root / "table1"), progress=False)
  real_fit = train.fit
  fits = []
  train.fit = lambda *a, **k: fits.append(a) or real_fit(*a, **k)
  try:
    js_mod, js_cfg = _config("jacobian_study", cache_dir=cache, table1_dir=str(root / "table1"))
    js = js_mod.run(js_cfg, str(root / "jac"), progress=False)
  finally:
    train.fit = real_fit
  f5_mod, f5_cfg = _config("fig5_structure", cache_dir=cache, models=["gcn"])
  f5 = f5_mod.run(f5_cfg, str(root / "fig5"), progress=False)
  graph = jmeta.data.load("synthetic", **t1_cfg["synthetic"])
  return dict(root=root, cache=cache, t1=t1, t1_cfg=t1_cfg, js=js, js_fits=len(fits), f5=f5,
              graph=graph)


def test_table1_outputs_and_metrics(done):
  d = done["root"] / "table1"
  for f in ("config.json", "config.yaml", "versions.json", "results.json", "metrics.csv",
            "table.md", "table1_cs.png", "cells/gcn-synthetic.json", "cells/sage-synthetic.json",
            "metamers/gcn-synthetic.npz", "metamers/gcn-synthetic.json"):
    assert (d / f).is_file(), f
  rows = {r["model"]: r for r in done["t1"]["rows"]}
  assert set(rows) == {"gcn", "sage"}
  g = done["graph"]
  for m, r in rows.items():
    res = MetamerResult.load(str(d / "metamers" / f"{m}-synthetic"))
    assert res.metamers.shape == (2, g.num_nodes, g.num_features)
    # S_feat recomputed from the saved metamers (eq. 13), CS per seed (eq. 15), then mean.
    s = np.array([float(metrics.feature_similarity(g.x, x.astype(np.float32)))
                  for x in res.metamers])
    np.testing.assert_allclose(r["s_feat"], s, atol=1e-6)
    sm = np.asarray(r["s_match"])
    cs = s * sm + (1 - s) * (1 - sm)
    np.testing.assert_allclose(r["cs_feat"], cs, atol=1e-6)
    assert r["cs_feat_mean"] == pytest.approx(cs.mean(), abs=1e-6)
    assert r["cs_feat_std"] == pytest.approx(cs.std(), abs=1e-6)
    assert r["cs_of_means"] == pytest.approx(s.mean() * sm.mean()
                                             + (1 - s.mean()) * (1 - sm.mean()), abs=1e-6)
  with open(d / "metrics.csv") as f:
    csv_rows = {r["model"]: r for r in csv.DictReader(f)}
  assert float(csv_rows["gcn"]["cs_feat_mean"]) == pytest.approx(rows["gcn"]["cs_feat_mean"])
  table = (d / "table.md").read_text()
  assert runs.format_mean_std(rows["sage"]["cs_feat"], digits=2) in table
  cfg = json.loads((d / "config.json").read_text())
  assert cfg["metamer"]["steps"] == 10 and cfg["models"] == ["gcn", "sage"]


def test_table1_rerun_recomputes_nothing(done, monkeypatch):
  """A rerun through `jmeta experiment` resumes from the stored cells: no training, no metamer."""
  import jmeta.metamers

  def fail(*a, **k):
    raise AssertionError("recomputed a finished cell")

  monkeypatch.setattr(train, "fit", fail)
  monkeypatch.setattr(jmeta.metamers, "feature_metamers", fail)
  d = done["root"] / "table1"
  before = (d / "table.md").read_text()
  assert cli.main(["experiment", "table1", "--quick", "--out", str(d), "--quiet",
                   "--set", f"cache_dir={done['cache']}"]) == 0
  assert (d / "table.md").read_text() == before


def test_table1_stored_only_tabulates_without_computing(done, monkeypatch, tmp_path):
  """``stored_only``: the stored cells in the table, a model never run reads "not run"."""
  import jmeta.metamers

  def fail(*a, **k):
    raise AssertionError("stored_only computed something")

  monkeypatch.setattr(train, "fit", fail)
  monkeypatch.setattr(jmeta.metamers, "feature_metamers", fail)
  d = tmp_path / "table1"
  shutil.copytree(done["root"] / "table1", d)  # the other tests' directory stays as it was
  mod, cfg = _config("table1", cache_dir=done["cache"], models=["gcn", "sage", "gin"],
                     stored_only=True)
  out = mod.run(cfg, str(d), progress=False)
  rows = {r["model"]: r for r in out["rows"]}
  assert rows["gin"]["missing"] and "missing" not in rows["sage"]
  assert rows["sage"]["cs_feat"] == {r["model"]: r for r in done["t1"]["rows"]}["sage"]["cs_feat"]
  assert "| gin | synthetic | not run |" in out["table"]
  assert runs.format_mean_std(rows["gcn"]["cs_feat"], digits=2) in out["table"]
  assert not (d / "cells" / "gin-synthetic.json").exists()


def test_table1_paper_numbers_and_skip(tmp_path):
  mod = cli.load_experiment("table1")
  assert mod.PAPER[("gcn", "cora")] == (11.4, 0.05, 96.4, 0.32, 14.12, 0.29)
  assert mod.PAPER[("gat", "pubmed")][4] == 41.94
  assert len(mod.PAPER) == 30
  # Each paper CS is consistent with eq. 15 applied per seed: within a few points of the CS of
  # its means (the paper's tables average CS over seeds).
  for (m, ds), p in mod.PAPER.items():
    cs_of_means = 100 * float(metrics.consistency(p[0] / 100, p[2] / 100))
    assert abs(cs_of_means - p[4]) < 2.5, (m, ds)
  # A model over its max_nodes is skipped with the reason, without training anything.
  _, cfg = _config("table1", models=["graphormer"], max_nodes={"graphormer": 50},
                   cache_dir=str(tmp_path / "ck"))
  out = mod.run(cfg, str(tmp_path / "t"), progress=False)
  assert "120 nodes > 50" in out["skipped"]["graphormer-synthetic"]
  assert "skipped" in (tmp_path / "t/table.md").read_text()
  assert not (tmp_path / "ck").exists()


def test_jacobian_study_reuses_models_and_table1(done):
  assert done["js_fits"] == 0  # every model came from the cache Table 1 filled
  js = done["js"]
  t1 = {r["model"]: r for r in done["t1"]["rows"]}
  for p in js["dimension_vs_cs"]:
    assert p["cs_feat_mean"] == t1[p["model"]]["cs_feat_mean"]
    assert p["cs_source"].endswith(f"{p['model']}-synthetic.json")
  ranks = {(r["model"], r["layer"]): r for r in js["ranks"]}
  d = done["graph"].num_features
  assert ranks[("gcn", 1)]["input_dim"] == d and ranks[("sage", 1)]["input_dim"] == 2 * d
  assert ranks[("gcn", 2)]["input_dim"] == 16 and ranks[("gcn", 2)]["output_dim"] == 3
  jd = done["root"] / "jac"
  for (m, layer), r in ranks.items():
    with np.load(jd / "ranks" / f"{m}-L{layer}.npz") as z:
      rk, dim = z["ranks"], z["metamer_dim"]
    np.testing.assert_array_equal(dim, r["input_dim"] - rk)  # eq. 22
    assert rk.max() <= min(r["input_dim"], r["output_dim"])
    assert r["dim_mean"] == pytest.approx(dim.mean())
    assert (jd / "ranks" / f"{m}-L{layer}.png").is_file()
  assert js["spearman_dim_frac_vs_cs"] is None  # two models: no correlation reported
  for f in ("table.md", "metrics.csv", "dimension_vs_cs.csv", "jacobian_vs_cs.png",
            "results.json", "versions.json"):
    assert (jd / f).is_file(), f


def test_jacobian_study_falls_back_to_computing_cs(done, tmp_path):
  mod, cfg = _config("jacobian_study", cache_dir=done["cache"], models=["gcn"], layers=[1],
                     table1_dir=str(tmp_path / "no_table1"))
  out = mod.run(cfg, str(tmp_path / "jac"), progress=False)
  (p,) = out["dimension_vs_cs"]
  assert p["cs_source"].startswith("computed") and p["cs_steps"] == 10
  assert 0.0 <= p["cs_feat_mean"] <= 1.0
  assert mod.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_fig5_structure(done, tmp_path):
  (r,) = done["f5"]["rows"]
  g = done["graph"]
  d = done["root"] / "fig5"
  res = MetamerResult.load(str(d / "metamers" / "gcn-synthetic"))
  adj_ref = np.asarray(to_dense(g))
  for i, edges in enumerate(res.metamers):
    assert edges.shape == (g.num_edges // 2, 2)  # the reference's number of edges
    adj = np.zeros_like(adj_ref)
    adj[edges[:, 0], edges[:, 1]] = adj[edges[:, 1], edges[:, 0]] = 1
    assert r["s_struct"][i] == pytest.approx(metrics.wl_similarity(adj_ref, adj, iterations=3))
  # The chance level: S_struct of one G(n, m) graph per metamer seed, seeds from the config's.
  chance = [metrics.wl_similarity(adj_ref, nx.to_numpy_array(nx.gnm_random_graph(
      g.num_nodes, g.num_edges // 2, seed=s), nodelist=range(g.num_nodes)), iterations=3)
            for s in range(len(res.metamers))]
  assert r["s_struct_random_mean"] == pytest.approx(np.mean(chance))
  assert r["s_struct_random_std"] == pytest.approx(np.std(chance))
  assert "random S_struct" in (d / "table.md").read_text()
  for f in ("table.md", "metrics.csv", "fig5_structure.png", "results.json"):
    assert (d / f).is_file(), f
  # Graphs over max_nodes are skipped with the memory reason, before training.
  mod, cfg = _config("fig5_structure", cache_dir=str(tmp_path / "ck"), models=["gcn"],
                     max_nodes=100)
  out = mod.run(cfg, str(tmp_path / "f5"), progress=False)
  assert "120 nodes > max_nodes 100" in out["skipped"]["gcn-synthetic"]
  assert not (tmp_path / "ck").exists()
