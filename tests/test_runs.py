"""Tests for jmeta.runs: atomic writes, the results directory, resumable grids, model cache."""

import csv
import dataclasses
import json
import os

import chex
import jax
import numpy as np
import pytest

import jmeta
import jmeta.data
from jmeta import runs, train
from jmeta.models import ModelConfig

SYNTH = dict(num_nodes=120, num_features=24, num_classes=3, num_val=30, seed=0)
TRAIN = dict(epochs=30, patience=None)


# -- atomic writes and RunDir -----------------------------------------------------------------------


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
  p = tmp_path / "sub" / "f.txt"
  runs.atomic_write_bytes(p, b"old")
  assert p.read_bytes() == b"old"

  def boom(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", boom)
  with pytest.raises(OSError, match="disk full"):
    runs.atomic_write_bytes(p, b"new")
  monkeypatch.undo()
  assert p.read_bytes() == b"old"
  assert sorted(os.listdir(p.parent)) == ["f.txt"]  # no temporary file left behind


def test_run_dir_files(tmp_path):
  import flax
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rd = runs.RunDir(tmp_path / "r")
  rd.write_config({"a": 1, "nested": {"b": [1, 2]}, "arr": np.arange(3)})
  assert json.loads((tmp_path / "r/config.json").read_text()) == {
      "a": 1, "nested": {"b": [1, 2]}, "arr": [0, 1, 2]}
  assert "nested:" in (tmp_path / "r/config.yaml").read_text()
  v = json.loads((tmp_path / "r/versions.json").read_text())
  assert v["jax"] == jax.__version__ and v["flax"] == flax.__version__
  assert v["jmeta"] == jmeta.__version__

  rows = [{"model": "gcn", "x": 0.5}, {"model": "gat", "y": np.float32(2.0), "z": [1, 2]}]
  path = rd.write_csv("m", rows)
  with open(path) as f:
    got = list(csv.DictReader(f))
  assert list(got[0]) == ["model", "x", "y", "z"]
  assert got[0] == {"model": "gcn", "x": "0.5", "y": "", "z": ""}
  assert got[1] == {"model": "gat", "x": "", "y": "2.0", "z": "[1, 2]"}

  a = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
  with np.load(rd.write_npz("arrays/a", a=a, b=np.arange(3))) as z:
    np.testing.assert_array_equal(z["a"], a)
    np.testing.assert_array_equal(z["b"], np.arange(3))
  assert rd.read_json(os.path.basename(rd.write_json("s", {"k": np.int64(3)}))[:-5]) == {"k": 3}
  assert open(rd.write_markdown("t", "| a |")).read() == "| a |\n"

  fig, ax = plt.subplots()
  ax.plot([0, 1])
  png = rd.save_figure("fig", fig)
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert fig.number not in plt.get_fignums()  # closed
  assert rd.cell_path("gcn-cora") == os.path.join(rd.path, "cells", "gcn-cora.json")
  with pytest.raises(ValueError, match="cell id"):
    rd.cell_path("../x")
  with pytest.raises(ValueError, match="bad result file name"):
    rd.write_json("../escape", {})


def test_to_jsonable_rejects_objects():
  with pytest.raises(TypeError, match="cannot store"):
    runs.to_jsonable({"f": object()})


# -- run_grid ---------------------------------------------------------------------------------------


def _cells(k=5):
  return [{"id": f"c{i}", "x": i} for i in range(k)]


def test_run_grid_resumes_after_exception(tmp_path, capsys):
  calls = []

  def flaky(cell):
    calls.append(cell["id"])
    if cell["id"] == "c2" and calls.count("c2") == 1:
      raise RuntimeError("crash in the third cell")
    return {"y": cell["x"] ** 2, "v": np.array([cell["x"], 1.0])}

  rd = runs.RunDir(tmp_path / "g")
  with pytest.raises(RuntimeError, match="third cell"):
    runs.run_grid(_cells(), flaky, rd, progress=False)
  assert calls == ["c0", "c1", "c2"]
  # The error names the cell that failed (the exception itself may not).
  assert "cell c2 failed" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path / "g/cells")) == ["c0.json", "c1.json"]
  rows = runs.run_grid(_cells(), flaky, rd, progress=False)
  # Across both runs every cell ran exactly once to completion; c2 was retried once.
  assert calls == ["c0", "c1", "c2", "c2", "c3", "c4"]
  assert [r["y"] for r in rows] == [0, 1, 4, 9, 16]
  assert rows[3] == {"id": "c3", "x": 3, "y": 9, "v": [3.0, 1.0]}
  # A third run computes nothing and returns the same rows.
  again = runs.run_grid(_cells(), lambda c: pytest.fail("recomputed"), rd, progress=False)
  assert again == rows


def test_run_grid_resumes_after_keyboard_interrupt(tmp_path):
  count = {}

  def fn(cell):
    count[cell["id"]] = count.get(cell["id"], 0) + 1
    if cell["id"] == "c3" and count["c3"] == 1:
      raise KeyboardInterrupt
    return {"y": 10 * cell["x"]}

  rd = runs.RunDir(tmp_path / "g")
  with pytest.raises(KeyboardInterrupt):
    runs.run_grid(_cells(6), fn, rd, progress=False)
  fresh = runs.run_grid(_cells(6), lambda c: {"y": 10 * c["x"]}, runs.RunDir(tmp_path / "h"),
                        progress=False)
  rows = runs.run_grid(_cells(6), fn, rd, progress=False)
  assert count == {"c0": 1, "c1": 1, "c2": 1, "c3": 2, "c4": 1, "c5": 1}
  assert rows == fresh  # nothing lost: same results as an uninterrupted grid


def test_run_grid_recomputes_a_cell_whose_config_changed(tmp_path):
  rd = runs.RunDir(tmp_path / "g")
  runs.run_grid(_cells(3), lambda c: {"y": c["x"]}, rd, progress=False)
  changed = _cells(3)
  changed[1]["x"] = 100
  seen = []
  rows = runs.run_grid(changed, lambda c: seen.append(c["id"]) or {"y": c["x"]}, rd,
                       progress=False)
  assert seen == ["c1"] and [r["y"] for r in rows] == [0, 100, 2]


def test_run_grid_records_the_versions_each_cell_was_computed_with(tmp_path, monkeypatch):
  rd = runs.RunDir(tmp_path / "g")
  runs.run_grid(_cells(1), lambda c: {"y": c["x"]}, rd, progress=False)
  rec = json.loads(open(rd.cell_path("c0")).read())
  assert rec["versions"] == runs.versions()
  assert rec["versions"]["jax"] == jax.__version__
  cpuinfo = open("/proc/cpuinfo").read() if os.path.isfile("/proc/cpuinfo") else ""
  if "model name" in cpuinfo:  # the CPU's model name, as the kernel reports it
    assert f"model name\t: {rec['versions']['cpu']}\n" in cpuinfo
  # A cell added later records its own run's versions; the stored one keeps its own.
  monkeypatch.setattr(runs, "versions", lambda: {"jax": "other"})
  runs.run_grid(_cells(2), lambda c: {"y": c["x"]}, rd, progress=False)
  assert json.loads(open(rd.cell_path("c1")).read())["versions"] == {"jax": "other"}
  assert json.loads(open(rd.cell_path("c0")).read())["versions"]["jax"] == jax.__version__


def test_run_grid_ignores_a_damaged_cell_file(tmp_path):
  rd = runs.RunDir(tmp_path / "g")
  runs.run_grid(_cells(2), lambda c: {"y": c["x"]}, rd, progress=False)
  with open(rd.cell_path("c1"), "w") as f:
    f.write('{"id": "c1", "cell": ')  # truncated JSON
  seen = []
  runs.run_grid(_cells(2), lambda c: seen.append(c["id"]) or {"y": c["x"]}, rd, progress=False)
  assert seen == ["c1"]


def test_run_grid_bad_input(tmp_path):
  rd = runs.RunDir(tmp_path / "g")
  with pytest.raises(ValueError, match="duplicate cell ids"):
    runs.run_grid([{"id": "a"}, {"id": "a"}], lambda c: {}, rd, progress=False)
  with pytest.raises(ValueError, match="'id'"):
    runs.run_grid([{"x": 1}], lambda c: {}, rd, progress=False)
  with pytest.raises(ValueError, match="cell id"):
    runs.run_grid([{"id": "a/b"}], lambda c: {}, rd, progress=False)
  with pytest.raises(TypeError, match="must return a dict"):
    runs.run_grid([{"id": "a"}], lambda c: 3, rd, progress=False)


@dataclasses.dataclass(frozen=True)
class _Cfg:
  name: str
  width: int = 16
  act: str = "relu"
  tags: tuple = dataclasses.field(default_factory=lambda: ("a",))


@dataclasses.dataclass(frozen=True)
class _CfgWithNewField(_Cfg):  # a later version of _Cfg: one more field with a default
  norm: str = "none"


def test_field_defaults_and_without_defaults():
  assert runs.field_defaults(_Cfg) == {"width": 16, "act": "relu", "tags": ["a"]}
  d = runs.to_jsonable(_Cfg("gcn", width=32))
  assert runs.without_defaults(d, runs.field_defaults(_Cfg)) == {"name": "gcn", "width": 32}
  # Nested: only entries equal to their default go; keys without a default stay; a bool is not
  # the int default it equals.
  nested = {"id": "c", "m": {"a": 1, "b": 2}, "x": True}
  assert runs.without_defaults(nested, {"m": {"a": 1, "b": 3}, "x": 1}) == {
      "id": "c", "m": {"b": 2}, "x": True}


def test_run_grid_defaults_keep_cells_stored_before_a_field_existed(tmp_path):
  rd = runs.RunDir(tmp_path / "g")
  old = [{"id": f"c{w}", "cfg": runs.to_jsonable(_Cfg("gcn", width=w))} for w in (8, 16)]
  runs.run_grid(old, lambda c: {"y": c["cfg"]["width"]}, rd, progress=False)
  defaults = {"cfg": runs.field_defaults(_CfgWithNewField)}
  new = [{"id": f"c{w}", "cfg": runs.to_jsonable(_CfgWithNewField("gcn", width=w, norm=n))}
         for w, n in ((8, "none"), (16, "row"))]
  seen = []
  rows = runs.run_grid(new, lambda c: seen.append(c["id"]) or {"y": -1}, rd, progress=False,
                       defaults=defaults)
  # c8 keeps the new field at its default: still finished. c16 sets it: recomputed.
  assert seen == ["c16"] and [r["y"] for r in rows] == [8, -1]
  # Without defaults the stored c8 no longer matches.
  seen.clear()
  runs.run_grid(new[:1], lambda c: seen.append(c["id"]) or {"y": 0}, rd, progress=False)
  assert seen == ["c8"]


def test_study_cell_defaults_accept_a_model_config_without_a_later_field(tmp_path):
  from jmeta.study import cell_defaults
  rd = runs.RunDir(tmp_path / "g")
  mc = ModelConfig("gcn").to_dict()
  stored = {k: v for k, v in mc.items() if k != "input_norm"}  # as written before input_norm
  runs.run_grid([{"id": "a", "model_config": stored}], lambda c: {"y": 1}, rd, progress=False)
  rows = runs.run_grid([{"id": "a", "model_config": mc}], lambda c: pytest.fail("recomputed"),
                       rd, progress=False, defaults=cell_defaults())
  assert rows[0]["y"] == 1
  row_norm = dict(mc, input_norm="row")
  rows = runs.run_grid([{"id": "a", "model_config": row_norm}], lambda c: {"y": 2}, rd,
                       progress=False, defaults=cell_defaults())
  assert rows[0]["y"] == 2


def test_mean_std_and_format():
  v = [0.1, 0.12, 0.14]
  m, s = runs.mean_std(v)
  assert m == pytest.approx(np.mean(v)) and s == pytest.approx(np.std(v))
  assert runs.format_mean_std([0.114, 0.114]) == "11.4 ± 0.0"
  assert runs.format_mean_std([0.1, 0.2], digits=2) == "15.00 ± 5.00"
  with pytest.raises(ValueError, match="empty"):
    runs.mean_std([])


def test_default_model_config_matches_train_benchmark():
  assert runs.default_model_config("gat") == ModelConfig("gat", hidden=64, heads=8, out_heads=1,
                                                         dropout=0.6)
  assert runs.default_model_config("GCN", hidden=32) == ModelConfig("gcn", hidden=32)
  cfg = {"model": {"num_layers": 3}, "model_overrides": {"gat": {"hidden": 16}},
         "train": {"epochs": 7, "adversarial": {"eps": 0.2}}}
  assert runs.model_config_from(cfg, "gat") == ModelConfig("gat", num_layers=3, hidden=16,
                                                           heads=8, dropout=0.6)
  tc = runs.train_config_from(cfg, "gat")
  assert tc.epochs == 7 and tc.learning_rate == 0.005 and tc.adversarial.eps == 0.2
  # a model's train_overrides entry wins over the shared train section, for that model only
  cfg["train_overrides"] = {"gin": {"epochs": 400, "patience": 200}}
  assert runs.train_config_from(cfg, "gin").epochs == 400
  assert runs.train_config_from(cfg, "gin").patience == 200
  assert runs.train_config_from(cfg, "gat").epochs == 7
  with pytest.raises(ValueError, match="unknown model"):
    runs.default_model_config("mlp")


# -- trained_model cache ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
  return jmeta.data.load("synthetic", **SYNTH)


def test_trained_model_is_cached(tmp_path, graph, monkeypatch):
  cfg = runs.default_model_config("gcn")
  tc = train.default_train_config("gcn", **TRAIN)
  real_fit = train.fit
  fits = []

  def counting_fit(*a, **k):
    fits.append(1)
    if len(fits) > 1:
      raise AssertionError("fit called again: the cache was not used")
    return real_fit(*a, **k)

  monkeypatch.setattr(train, "fit", counting_fit)
  cache = str(tmp_path / "ck")
  m1, p1, g1, met1 = runs.trained_model(cfg, "synthetic", tc, graph=graph, cache_dir=cache,
                                        progress=False)
  m2, p2, g2, met2 = runs.trained_model(cfg, "synthetic", tc, graph=graph, cache_dir=cache,
                                        progress=False)
  assert len(fits) == 1 and not met1["cached"] and met2["cached"]
  chex.assert_trees_all_equal(p1, p2)
  assert met1["test"] == met2["test"] and met1["checkpoint"] == met2["checkpoint"]
  # The cached parameters reproduce the recorded accuracy (an independent evaluation).
  assert train.evaluate(p2, m2, graph)["test"] == pytest.approx(met1["test"])
  # The per-epoch history was stored beside the checkpoint.
  hist = runs.training_history(met1["checkpoint"])
  assert hist["loss"].shape == (met1["epochs_run"],)

  # Loading through the dataset name (graph=None) hits the same cache entry.
  _, p3, _, met3 = runs.trained_model(cfg, "synthetic", tc, synthetic=SYNTH, cache_dir=cache,
                                      progress=False)
  assert met3["cached"]
  chex.assert_trees_all_equal(p1, p3)


def test_cache_key_depends_on_everything_that_matters(graph):
  cfg = runs.default_model_config("gcn")
  tc = train.default_train_config("gcn", **TRAIN)
  k = runs.model_cache_key(cfg, "synthetic", 0, tc, graph)
  assert k == runs.model_cache_key(ModelConfig("gcn"), "synthetic", 0,
                                   train.default_train_config("gcn", **TRAIN), graph)
  other_graph = jmeta.data.load("synthetic", **{**SYNTH, "seed": 1})
  others = [runs.model_cache_key(ModelConfig("gcn", hidden=8), "synthetic", 0, tc, graph),
            runs.model_cache_key(cfg, "cora", 0, tc, graph),
            runs.model_cache_key(cfg, "synthetic", 1, tc, graph),
            runs.model_cache_key(cfg, "synthetic", 0, train.default_train_config(
                "gcn", epochs=31, patience=None), graph),
            runs.model_cache_key(cfg, "synthetic", 0, tc, other_graph)]
  assert len({k, *others}) == 6
  assert k.startswith("gcn-synthetic-s0-")
  # A config class that gained a field with a default keeps the keys of configs that leave it
  # at its default, and not of those that set it.
  base = runs.model_cache_key(_Cfg("gcn"), "synthetic", 0, tc, graph)
  assert runs.model_cache_key(_CfgWithNewField("gcn"), "synthetic", 0, tc, graph) == base
  assert runs.model_cache_key(_CfgWithNewField("gcn", norm="row"), "synthetic", 0, tc,
                              graph) != base


def test_damaged_checkpoint_is_retrained(tmp_path, graph):
  cfg = runs.default_model_config("gcn")
  tc = train.default_train_config("gcn", **TRAIN)
  cache = str(tmp_path / "ck")
  _, p1, _, met1 = runs.trained_model(cfg, "synthetic", tc, graph=graph, cache_dir=cache,
                                      progress=False)
  with open(os.path.join(met1["checkpoint"], "params.npz"), "r+b") as f:
    f.seek(40)
    f.write(b"garbage")
  _, p2, _, met2 = runs.trained_model(cfg, "synthetic", tc, graph=graph, cache_dir=cache,
                                      progress=False)
  assert not met2["cached"]
  chex.assert_trees_all_close(p1, p2)  # training is deterministic given the seed
  _, _, _, met3 = runs.trained_model(cfg, "synthetic", tc, graph=graph, cache_dir=cache,
                                     progress=False)
  assert met3["cached"]


# -- cached_feature_metamers ------------------------------------------------------------------------


def test_feature_metamers_are_cached_beside_the_model(tmp_path, graph, monkeypatch):
  """The first call computes and stores; an equal call loads the same arrays without a metamer
  run; another seed or config computes anew. The stored result equals a direct
  `feature_metamers` call (an independent computation)."""
  import jmeta.metamers
  from jmeta.metamers import MetamerConfig

  tm = runs.trained_model(runs.default_model_config("gcn"), "synthetic",
                          train.default_train_config("gcn", **TRAIN), graph=graph,
                          cache_dir=str(tmp_path / "ck"), progress=False)
  mc = MetamerConfig(layer=1, steps=12, num_seeds=2, chunk=6)
  real, calls = jmeta.metamers.feature_metamers, []
  monkeypatch.setattr(jmeta.metamers, "feature_metamers",
                      lambda *a, **k: calls.append(1) or real(*a, **k))

  first = runs.cached_feature_metamers(tm, graph, mc, 3, progress=False)
  again = runs.cached_feature_metamers(tm, graph, MetamerConfig(**mc.to_dict()), 3,
                                       progress=False)
  assert len(calls) == 1 and first.info["cached"] is None
  path = runs.metamer_cache_path(tm, graph, mc, 3)
  assert again.info["cached"] == path and path.startswith(tm.metrics["checkpoint"])
  direct = real(tm.model, tm.params, graph, jax.random.key(3), mc, progress=False)
  for res in (first, again):
    np.testing.assert_array_equal(res.metamers, direct.metamers)
    np.testing.assert_array_equal(res.losses, direct.losses)
    chex.assert_trees_all_equal(res.metrics, direct.metrics)
  assert again.config == mc

  runs.cached_feature_metamers(tm, graph, mc, 4, progress=False)
  runs.cached_feature_metamers(tm, graph, dataclasses.replace(mc, steps=13), 3, progress=False)
  assert len(calls) == 3
  other_graph = jmeta.data.load("synthetic", **{**SYNTH, "seed": 1})
  paths = {runs.metamer_cache_path(tm, g, c, s) for g, c, s in
           ((graph, mc, 3), (graph, mc, 4), (graph, dataclasses.replace(mc, steps=13), 3),
            (other_graph, mc, 3))}
  assert len(paths) == 4
  assert runs.metamer_cache_path(tm._replace(metrics={}), graph, mc, 3) is None


def test_damaged_cached_metamers_are_recomputed(tmp_path, graph):
  from jmeta.metamers import MetamerConfig

  tm = runs.trained_model(runs.default_model_config("gcn"), "synthetic",
                          train.default_train_config("gcn", **TRAIN), graph=graph,
                          cache_dir=str(tmp_path / "ck"), progress=False)
  mc = MetamerConfig(layer=1, steps=8, num_seeds=2, chunk=4)
  first = runs.cached_feature_metamers(tm, graph, mc, 0, progress=False)
  path = runs.metamer_cache_path(tm, graph, mc, 0)
  with open(path + ".npz", "wb") as f:
    f.write(b"not a zip")
  with pytest.warns(UserWarning, match="unusable"):
    second = runs.cached_feature_metamers(tm, graph, mc, 0, progress=False)
  assert second.info["cached"] is None
  np.testing.assert_array_equal(second.metamers, first.metamers)
  assert runs.cached_feature_metamers(tm, graph, mc, 0, progress=False).info["cached"] == path


def test_atomic_write_file_mode(tmp_path):
  p = tmp_path / "f.json"
  runs.atomic_write_text(p, "{}")
  mask = os.umask(0)
  os.umask(mask)
  assert (os.stat(p).st_mode & 0o777) == (0o666 & ~mask)
