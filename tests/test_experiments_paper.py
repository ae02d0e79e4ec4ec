"""End-to-end tests of the paper experiments Fig. 6-9 and Table 2 (their --quick configs).

Each quick config runs on a tiny synthetic graph into ``tmp_path`` with a temporary checkpoint
cache; the assertions check the written files against independent computations: CS_feat from
S_feat and S_match (eq. 15), the crops of Fig. 9 against the graph's features, and every entry of
Table 2 against `jmeta.train.evaluate` of the saved retrained parameters on the original graph.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re

import chex
import numpy as np
import pytest

from jmeta import checkpoint, config_io, runs, study, train
from jmeta.models import create_model

NUMBER = re.compile(r"(-?\d+\.\d+) ± (\d+\.\d+)")


def load_experiment(name: str):
  path = runs.experiments_dir() / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"test_jmeta_experiments.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """One checkpoint cache for the file: fig7's width-8 GCN is fig6's baseline (trained once)."""
  return tmp_path_factory.mktemp("checkpoints")


def quick_config(module, name: str, cache_dir, *overrides) -> dict:
  return config_io.load_config(runs.configs_dir() / f"{name}_quick.yaml",
                               [f"cache_dir={cache_dir}", *overrides], schema=module.SCHEMA)


def table_rows(text: str) -> list[list[str]]:
  """The body rows of the first Markdown table in ``text`` (cells stripped)."""
  rows, started = [], False
  for line in text.splitlines():
    if line.startswith("|"):
      if started and not set(line) <= set("|-"):
        rows.append([c.strip() for c in line.strip("|").split("|")])
      started = True
    elif started and rows:
      break
  return rows


def check_common_files(out, figure: str) -> dict:
  for f in ("config.json", "config.yaml", "versions.json", "metrics.json", "metrics.csv",
            "table.md", f"{figure}.png"):
    assert os.path.isfile(out / f), f
  with open(out / f"{figure}.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(out / "metrics.json") as f:
    return json.load(f)


def check_percentages(table: str) -> list[float]:
  values = [float(m) for m, _ in NUMBER.findall(table)]
  assert values, table
  assert all(0.0 <= v <= 100.0 for v in values), values
  return values


def check_cells_consistent(out) -> None:
  """CS_feat per seed equals S_feat S_match + (1 - S_feat)(1 - S_match) (eq. 15)."""
  for name in os.listdir(out / "cells"):
    with open(out / "cells" / name) as f:
      res = json.load(f)["result"]
    if "cs_feat" in res:
      s, m = np.asarray(res["s_feat"]), np.asarray(res["s_match"])
      chex.assert_trees_all_close(np.asarray(res["cs_feat"]), s * m + (1 - s) * (1 - m),
                                  atol=1e-6)
      assert all(0.0 <= v <= 1.0 for v in res["cs_feat"])


def test_fig6_quick_end_to_end(tmp_path, cache_dir):
  mod = load_experiment("fig6_mitigation")
  out = tmp_path / "fig6"
  summary = mod.run(quick_config(mod, "fig6_mitigation", cache_dir), str(out), progress=False)
  check_common_files(out, "fig6_mitigation")
  table = (out / "table.md").read_text()
  rows = table_rows(table)
  assert [(r[0], r[1]) for r in rows] == [(m, v) for m in ("gcn", "graphormer")
                                          for v in mod.VARIANTS]
  assert all(r[2] == "skipped¹" for r in rows if r[0] == "graphormer")
  assert "kept out of the quick run" in table
  check_percentages(table)
  check_cells_consistent(out)
  # Each variant trained its own model: the cells record distinct model / train configs.
  cells = {}
  for v in mod.VARIANTS:
    with open(out / "cells" / f"synthetic-gcn-{v}.json") as f:
      cells[v] = json.load(f)["cell"]
  assert cells["elu"]["model_config"]["activation"] == "elu"
  assert cells["residual"]["model_config"]["residual"] is True
  assert cells["adversarial"]["train_config"]["adversarial"]["eps"] == 0.1
  assert cells["baseline"]["train_config"]["adversarial"] is None
  # The CSV and the npz hold the same numbers as the table.
  with open(out / "metrics.csv") as f:
    csv_rows = {r["id"]: r for r in csv.DictReader(f)}
  with np.load(out / "metrics.npz") as z:
    cs = z["synthetic-gcn-elu/cs_feat"]
  chex.assert_trees_all_close(float(csv_rows["synthetic-gcn-elu"]["cs_feat_mean"]),
                              100 * cs.mean(), rtol=1e-6)
  assert rows[1][2] == runs.format_mean_std(cs, digits=2)
  assert csv_rows["synthetic-graphormer-elu"]["status"] == "skipped"
  assert os.path.isfile(out / "metamers" / "synthetic-gcn-baseline.npz")
  assert summary["rows"][0]["num_seeds"] == 2
  # A rerun resumes: every cell is loaded, nothing is recomputed (cell files untouched).
  stamps = {n: os.stat(out / "cells" / n).st_mtime_ns for n in os.listdir(out / "cells")}
  again = mod.run(quick_config(mod, "fig6_mitigation", cache_dir), str(out), progress=False)
  assert again["table_markdown"] == summary["table_markdown"]
  assert stamps == {n: os.stat(out / "cells" / n).st_mtime_ns for n in os.listdir(out / "cells")}


def test_fig6_baseline_reuses_the_table1_cells_metamers(tmp_path, monkeypatch):
  """A Figure 6 baseline cell with Table 1's configs loads the metamers Table 1 synthesised
  (cached beside the shared checkpoint): no metamer run, the same per-seed numbers."""
  import jmeta.metamers

  mod, t1 = load_experiment("fig6_mitigation"), load_experiment("table1")
  config = quick_config(mod, "fig6_mitigation", tmp_path / "ck", "models=[gcn]",
                        "variants=[baseline, elu]")
  shared = {k: config[k] for k in ("split", "seed", "model", "train", "metamer", "synthetic",
                                   "cache_dir", "datasets")}
  t1.run({**shared, "models": ["gcn"]}, str(tmp_path / "t1"), progress=False)
  real, calls = jmeta.metamers.feature_metamers, []
  monkeypatch.setattr(jmeta.metamers, "feature_metamers",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  mod.run(config, str(tmp_path / "fig6"), progress=False)
  assert len(calls) == 1  # the ELU variant only

  ds = config["datasets"][0]
  t1_cell = json.loads((tmp_path / "t1" / "cells" / f"gcn-{ds}.json").read_text())["result"]
  cells = {v: json.loads((tmp_path / "fig6" / "cells" / f"{ds}-gcn-{v}.json").read_text())
           for v in ("baseline", "elu")}
  base = cells["baseline"]["result"]
  assert t1_cell["metamers_cached"] is None and cells["elu"]["result"]["metamers_cached"] is None
  assert base["metamers_cached"].startswith(str(tmp_path / "ck"))
  for k in ("s_feat", "s_match", "cs_feat"):
    assert base[k] == t1_cell[k]
  assert base["model_test_acc"] == t1_cell["test_acc"]


def test_fig6_graphormer_residual_is_its_baseline_and_skips():
  mod = load_experiment("fig6_mitigation")
  config = mod.resolve({"datasets": ["cora", "pubmed"], "models": ["gcn", "graphormer"],
                        "skip": {"graphormer/pubmed": "too big"}})
  todo, other = mod.make_cells(config)
  ids = {c["id"] for c in todo}
  assert "cora-graphormer-baseline" in ids and "cora-graphormer-residual" not in ids
  assert "cora-gcn-residual" in ids and not any(i.startswith("pubmed-graphormer") for i in ids)
  status = {o["id"]: o["status"] for o in other}
  assert status["cora-graphormer-residual"] == "same_as_baseline"
  assert {status[f"pubmed-graphormer-{v}"] for v in mod.VARIANTS} == {"skipped"}
  done = [{**c, "cs_feat": [0.25, 0.75]} for c in todo]
  merged = {r["id"]: r for r in mod.merge_results(config, done, other)}
  assert merged["cora-graphormer-residual"]["cs_feat"] == [0.25, 0.75]
  assert merged["cora-graphormer-residual"]["variant"] == "residual"
  # Alone, the residual cell is computed as the baseline (same checkpoint and metamer cache).
  alone = mod.resolve({"datasets": ["cora"], "models": ["graphormer", "gcn"],
                       "variants": ["residual"]})
  todo, other = mod.make_cells(alone)
  cells = {c["id"]: c for c in todo}
  assert other == [] and set(cells) == {"cora-graphormer-residual", "cora-gcn-residual"}
  base_mc, base_tc = mod.variant_configs(alone, "graphormer", "baseline")
  assert cells["cora-graphormer-residual"]["model_config"] == base_mc.to_dict()
  assert cells["cora-graphormer-residual"]["train_config"] == base_tc.to_dict()
  assert cells["cora-graphormer-residual"]["variant"] == "residual"
  assert cells["cora-gcn-residual"]["model_config"]["residual"] is True
  with pytest.raises(config_io.ConfigError, match="skip.gcn"):
    mod.resolve({"datasets": ["cora"], "models": ["gcn"], "skip": {"gcn": "x"}})
  with pytest.raises(config_io.ConfigError, match="variants"):
    mod.resolve({"datasets": ["cora"], "models": ["gcn"], "variants": ["dropout"]})


def test_fig7_quick_end_to_end(tmp_path, cache_dir):
  mod = load_experiment("fig7_width")
  out = tmp_path / "fig7"
  config = quick_config(mod, "fig7_width", cache_dir)
  mod.run(config, str(out), progress=False)
  check_common_files(out, "fig7_width")
  rows = table_rows((out / "table.md").read_text())
  assert [(r[0], int(r[1])) for r in rows] == [("gcn", w) for w in config["widths"]]
  check_percentages((out / "table.md").read_text())
  check_cells_consistent(out)
  for w in config["widths"]:
    with open(out / "cells" / f"synthetic-gcn-w{w}.json") as f:
      rec = json.load(f)
    assert rec["cell"]["model_config"]["hidden"] == w
  with pytest.raises(config_io.ConfigError, match="hidden"):
    mod.resolve({**config, "model": {"hidden": 32}})


def test_fig8_quick_end_to_end(tmp_path):
  mod = load_experiment("fig8_depth")
  out = tmp_path / "fig8"
  config = quick_config(mod, "fig8_depth", tmp_path / "checkpoints")
  mod.run(config, str(out), progress=False)
  check_common_files(out, "fig8_depth")
  rows = table_rows((out / "table.md").read_text())
  assert [(r[0], int(r[1])) for r in rows] == [("gcn", k) for k in config["layers"]]
  check_percentages((out / "table.md").read_text())
  check_cells_consistent(out)
  # One trained model serves every targeted layer (one checkpoint in the cache).
  assert len(os.listdir(tmp_path / "checkpoints")) == 1
  with pytest.raises(config_io.ConfigError, match="not hidden layers"):
    mod.resolve({**config, "layers": [1, 3]})  # layer 3 of a 3-layer model is the logits


def test_fig9_quick_end_to_end(tmp_path, cache_dir):
  mod = load_experiment("fig9_pubmed_gat")
  out = tmp_path / "fig9"
  config = quick_config(mod, "fig9_pubmed_gat", cache_dir)
  summary = mod.run(config, str(out), progress=False)
  check_common_files(out, "fig9_pubmed_gat")
  table = (out / "table.md").read_text()
  rows = table_rows(table)
  assert [int(r[0]) for r in rows] == config["layers"]
  check_percentages(table)
  assert "1 - L_act" in table and "cosine" in table
  for r in summary["rows"]:
    assert "1 - L_act" in r["title"] and "cosine" in r["title"]
  graph = runs.load_graph("synthetic", None, 0, config["synthetic"])
  x = np.asarray(graph.x)
  with np.load(out / "figure_arrays.npz") as z:
    rows_idx, cols_idx = z["rows"], z["cols"]
    chex.assert_trees_all_close(z["reference_crop"], x[rows_idx][:, cols_idx])
    crops = {k: z[f"metamer_crop_L{k}"] for k in config["layers"]}
  chex.assert_shape(crops[1], (config["crop"]["rows"], config["crop"]["cols"]))
  # The crop columns are the most frequently non-zero features.
  counts = np.count_nonzero(x, axis=0)
  assert counts[cols_idx].min() >= np.delete(counts, cols_idx).max()
  assert np.all(crops[1] >= 0)  # continuous metamers are projected to be non-negative
  with pytest.raises(config_io.ConfigError, match="not hidden layers"):
    mod.resolve({**config, "layers": [3]})


def test_crop_indices_closed_form():
  mod = load_experiment("fig9_pubmed_gat")
  x = np.array([[0, 1, 0, 2], [0, 3, 0, 0], [5, 1, 0, 1]], np.float32)
  rows, cols = mod.crop_indices(x, rows=2, cols=2)
  np.testing.assert_array_equal(rows, [0, 1])
  np.testing.assert_array_equal(cols, [1, 3])  # non-zeros per column: 1, 3, 0, 2


def test_table2_quick_matches_independent_evaluation(tmp_path, cache_dir):
  mod = load_experiment("table2_transfer")
  out = tmp_path / "table2"
  config = quick_config(mod, "table2_transfer", cache_dir)
  summary = mod.run(config, str(out), progress=False)
  check_common_files(out, "table2_transfer")
  table = (out / "table.md").read_text()
  rows = table_rows(table)
  models = config["models"]
  assert [r[0] for r in rows] == models and all(len(r) == 2 + len(models) for r in rows)
  check_percentages(table)
  assert "78.35 ± 0.24" in table  # the paper's GCN Original beside ours
  assert "graphormer excluded" in table
  graph = runs.load_graph("synthetic", None, 0, config["synthetic"])
  for source in models:
    for target in models:
      accs = summary["matrix"][source][target]
      assert len(accs) == 2
      model = create_model(study.model_config(mod.resolve(config), target),
                           graph.num_classes)
      with np.load(out / "retrained" / f"{source}-{target}.npz") as z:
        flat = {k: z[k] for k in z.files}
      for s, acc in enumerate(accs):
        params = checkpoint.unflatten_params(
            {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"seed{s}/")})
        independent = train.evaluate(params, model, graph)["test"]
        assert acc == pytest.approx(independent, abs=1e-7)
      cell = rows[models.index(source)][2 + models.index(target)]
      assert cell == runs.format_mean_std(accs, digits=2)
  # Retraining on metamers really trained on other features than the original ones.
  with open(out / "cells" / "source-gcn.json") as f:
    res = json.load(f)["result"]
  assert all(s < 0.999 for s in res["s_feat"])


def test_study_schema_and_defaults():
  schema = {**study.schema_entries("datasets", "models", required=("models",)),
            "widths": config_io.ListOf(int), **study.schema_entries("split", "save_metamers")}
  assert list(schema) == ["datasets", "models", "widths", "split", "save_metamers"]
  assert isinstance(schema["models"], config_io.Required)
  assert not isinstance(schema["datasets"], config_io.Required)
  defaults = study.schema_defaults(schema, widths=[8], save_metamers=True)
  assert list(defaults.items()) == [("widths", [8]), ("split", 0), ("save_metamers", True)]
  with pytest.raises(KeyError, match="hidden"):
    study.schema_entries("hidden")
  with pytest.raises(KeyError, match="layers"):
    study.schema_entries("split", required=("layers",))
  with pytest.raises(KeyError, match="crop"):
    study.schema_defaults(schema, crop={})
  with pytest.raises(ValueError, match="x: config key 'models' is required"):
    study.fill_defaults({"datasets": ["cora"]}, {"split": 0}, ("datasets", "models"), "x")


def test_study_train_overrides_apply_per_model_and_are_validated():
  from experiments import fig8_depth
  config = fig8_depth.resolve({"datasets": ["cora"], "models": ["gcn", "gin"], "layers": [1],
                               "train": {"epochs": 50},
                               "train_overrides": {"gin": {"epochs": 400, "patience": 200}}})
  gin, gcn = study.train_config(config, "gin"), study.train_config(config, "gcn")
  assert (gin.epochs, gin.patience, gcn.epochs, gcn.patience) == (400, 200, 50, 100)
  assert study.train_config(config, "gin", epochs=3).epochs == 3  # extra comes last
  assert fig8_depth.resolve({"datasets": ["cora"], "models": ["gcn"],
                             "layers": [1]})["train_overrides"] == {}
  with pytest.raises(config_io.ConfigError, match="train_overrides.gin.epoch"):
    fig8_depth.resolve({"datasets": ["cora"], "models": ["gin"], "layers": [1],
                        "train_overrides": {"gin": {"epoch": 400}}})
  with pytest.raises(config_io.ConfigError, match="train_overrides"):
    fig8_depth.resolve({"datasets": ["cora"], "models": ["gin"], "layers": [1],
                        "train_overrides": {"mlp": {"epochs": 400}}})


def test_study_grid_cells_results_and_table():
  config = {"datasets": ["cora", "citeseer"], "models": ["gcn", "gat"],
            "skip": {"gat/citeseer": "too big"}}

  def make(dataset, name, width):
    if name == "gat" and width == 2:
      return {"status": "same", "note": "as width 1"}
    return {"dataset": dataset, "model": name}

  todo, other = study.grid_cells(config, "width", [1, 2], "w", make)
  assert [c["id"] for c in todo] == ["cora-gcn-w1", "cora-gcn-w2", "cora-gat-w1",
                                     "citeseer-gcn-w1", "citeseer-gcn-w2"]
  assert todo[0] == {"id": "cora-gcn-w1", "width": 1, "dataset": "cora", "model": "gcn"}
  assert {o["id"]: o["status"] for o in other} == {
      "cora-gat-w2": "same", "citeseer-gat-w1": "skipped", "citeseer-gat-w2": "skipped"}
  by_id = {c["id"]: {**c, "cs_feat": [0.5, 0.7]} for c in todo}
  by_id.update({o["id"]: {**o, "cs_feat": [0.1, 0.1]} if o["status"] == "same" else o
                for o in other})
  results = study.grid_results(config, [1, 2], "w", by_id)
  assert [r["id"] for r in results] == [study.cell_id(d, m, w, "w") for d in config["datasets"]
                                        for m in config["models"] for w in (1, 2)]
  table = study.grid_table("caption", "width", config, results, [1, 2], "w")
  lines = table.splitlines()
  assert lines[:4] == ["caption", "", "| model | width | cora | citeseer |", "|---|---|---|---|"]
  assert lines[4] == "| gcn | 1 | 60.00 ± 10.00 | 60.00 ± 10.00 |"
  assert lines[7] == "| gat | 2 | 10.00 ± 0.00 | skipped¹ |"
  assert lines[-1] == "¹ gat on citeseer: too big"  # one footnote for both skipped cells
  assert table.count("¹ gat on citeseer") == 1


def test_table2_reuses_table1_metamers(tmp_path, cache_dir, monkeypatch):
  """Sources with a matching Table 1 cell retrain on exactly Table 1's stored metamers (no new
  metamer run); a source whose Table 1 cell has other metamer settings is computed."""
  mod, t1 = load_experiment("table2_transfer"), load_experiment("table1")
  t1_dir = tmp_path / "t1"
  config = quick_config(mod, "table2_transfer", cache_dir, f"table1_dir={t1_dir}")
  shared = {k: config[k] for k in ("split", "seed", "model", "train", "metamer", "synthetic",
                                   "cache_dir")}
  t1.run({**shared, "models": ["gcn"], "datasets": [config["dataset"]]}, str(t1_dir),
         progress=False)
  other = {**shared["metamer"], "steps": shared["metamer"]["steps"] + 2}
  t1.run({**shared, "metamer": other, "models": ["sage"], "datasets": [config["dataset"]]},
         str(t1_dir), progress=False)
  stored = np.load(t1_dir / "metamers" / f"gcn-{config['dataset']}.npz")["metamers"]

  synthesised, seen = [], []
  real_metamers, real_retrain = mod.cell_feature_metamers, mod.retrain
  monkeypatch.setattr(mod, "cell_feature_metamers",
                      lambda tm, *a, **k: synthesised.append(tm) or real_metamers(tm, *a, **k))
  monkeypatch.setattr(mod, "retrain",
                      lambda mc, g, x, *a, **k: seen.append(np.array(x)) or
                      real_retrain(mc, g, x, *a, **k))
  summary = mod.run(config, str(tmp_path / "t2"), progress=False)

  assert len(synthesised) == 1  # sage's metamers only
  k = len(config["models"]) * len(stored)  # retrainings per source: targets x seeds
  for i, x in enumerate(seen[:k]):  # gcn is the first source; seeds inner, targets outer
    np.testing.assert_array_equal(x, stored[i % len(stored)])
  assert not any(np.array_equal(x, stored[0]) for x in seen[k:])
  cells = {m: json.loads((tmp_path / "t2" / "cells" / f"source-{m}.json").read_text())["result"]
           for m in config["models"]}
  t1_gcn = json.loads((t1_dir / "cells" / f"gcn-{config['dataset']}.json").read_text())["result"]
  assert cells["gcn"]["metamers_source"] == str(t1_dir / "metamers" / f"gcn-{config['dataset']}")
  assert cells["gcn"]["s_feat"] == t1_gcn["s_feat"]
  assert cells["sage"]["metamers_source"] == "computed"
  assert "Metamers read from Table 1's results: gcn (" in (tmp_path / "t2" / "table.md").read_text()
  assert set(summary["matrix"]) == set(config["models"])

  # A damaged metamer file is not used: a warning, then the metamers are computed.
  (t1_dir / "metamers" / f"gcn-{config['dataset']}.npz").write_bytes(b"not a zip")
  resolved = mod.resolve(config)
  graph = runs.load_graph(config["dataset"], None, 0, config["synthetic"])
  with pytest.warns(UserWarning, match="unreadable"):
    assert mod.table1_metamers(mod.make_cells(resolved)[1][0], resolved, graph) is None
