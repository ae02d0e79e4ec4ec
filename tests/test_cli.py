"""Tests for the `jmeta` command: config validation errors, train / metamer / rank outputs."""

import csv
import json
import os

import jax
import numpy as np
import pytest

import jmeta.data
from jmeta import checkpoint, cli, metrics, runs, train
from jmeta.metamers import MetamerResult
from jmeta.models import ModelConfig, create_model

SYNTH = "{num_nodes: 120, num_features: 24, num_classes: 3, num_val: 30, seed: 0}"


def _common(tmp_path, *extra):
  args = ["--set", "dataset=synthetic", "--set", f"synthetic={SYNTH}",
          "--set", "train={epochs: 30, patience: null}",
          "--set", f"cache_dir={tmp_path / 'ck'}", "--quiet"]
  for e in extra:
    args += ["--set", e]
  return args


def _graph():
  return jmeta.data.load("synthetic", num_nodes=120, num_features=24, num_classes=3, num_val=30,
                         seed=0)


@pytest.mark.parametrize("argv,match", [
    (["train", "--set", "bogus=1"], "unknown key 'bogus'"),
    (["train", "--set", "model.hiddn=3"], "unknown key 'model.hiddn'"),
    (["train", "--set", "model.hidden=0"], "ModelConfig.hidden must be >= 1"),
    (["train", "--set", "dataset=mnist"], "dataset: 'mnist' is not one of"),
    (["metamer", "--set", "kind=edges"], "kind: 'edges' is not one of"),
    (["metamer", "--set", "metamer.steps=0"], "MetamerConfig.steps=0"),
    (["rank", "--set", "method=qr"], "method: 'qr' is not one of"),
    (["rank", "--set", "layer=0"], r"layer: 0 is outside"),
    (["train", "--set", "split"], "must look like key=value"),
    (["train", "--config", "/nonexistent/x.yaml"], "config file not found"),
    (["experiment", "nosuch"], "unknown experiment 'nosuch'; available: .*table1"),
    (["experiment", "table1", "--quick", "--set", "models=[gcn, mlp]"],
     r"models\[1\]: 'mlp' is not one of"),
    (["experiment", "table1", "--set", "metamer.stepz=3"], "unknown key 'metamer.stepz'"),
])
def test_bad_config_exits_2_naming_the_key(capsys, argv, match):
  import re
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("jmeta: error: ")
  assert re.search(match, err), err


@pytest.mark.parametrize("command,key", [("metamer", "metamer.layer"), ("rank", "layer")])
def test_layer_deeper_than_the_model_is_refused_before_training(command, key, capsys,
                                                                monkeypatch):
  def no_training(*a, **k):
    raise AssertionError("trained before checking the layer")
  monkeypatch.setattr(runs, "trained_model", no_training)
  assert cli.main([command, "--set", "model.num_layers=2", "--set", f"{key}=3"]) == 2
  assert f"{key}=3 exceeds model.num_layers=2" in capsys.readouterr().err


def test_model_name_required(tmp_path, capsys):
  p = tmp_path / "c.yaml"
  p.write_text("model: {hidden: 8}\ndataset: cora\n")
  assert cli.main(["train", "--config", str(p)]) == 2
  assert "model.name is required" in capsys.readouterr().err


def test_missing_experiments_folder(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(runs, "experiments_dir", lambda: tmp_path / "experiments")
  assert cli.main(["experiment", "table1"]) == 2
  assert "experiments folder not found" in capsys.readouterr().err


def test_dry_run_prints_resolved_config(capsys):
  assert cli.main(["metamer", "--dry-run", "--set", "metamer.steps=17",
                   "--set", "model.name=gat"]) == 0
  import yaml
  cfg = yaml.safe_load(capsys.readouterr().out)
  assert cfg["metamer"]["steps"] == 17 and cfg["model"]["name"] == "gat"
  assert cfg["kind"] == "feature"
  assert {"table1", "fig5_structure", "jacobian_study"} <= set(cli.available_experiments())


def test_train_writes_checkpoint_and_metrics(tmp_path):
  out = tmp_path / "train"
  assert cli.main(["train", "--out", str(out), *_common(tmp_path)]) == 0
  for f in ("config.json", "config.yaml", "versions.json", "metrics.json", "metrics.csv",
            "table.md", "history.csv", "history.npz", "training.png"):
    assert (out / f).is_file(), f
  m = json.loads((out / "metrics.json").read_text())
  ck = checkpoint.load_checkpoint(out / "checkpoint")
  assert ck.model_config == runs.default_model_config("gcn")
  graph = _graph()
  model = create_model(ck.model_config, graph.num_classes)
  # The saved parameters reproduce the saved test accuracy (independent evaluation).
  assert train.evaluate(ck.params, model, graph)["test"] == pytest.approx(m["test"])
  resolved = json.loads((out / "config.json").read_text())
  assert resolved["model"]["hidden"] == 16 and resolved["train"]["epochs"] == 30
  with open(out / "history.csv") as f:
    assert len(list(csv.DictReader(f))) == m["epochs_run"]
  # A second `train` loads the cached checkpoint.
  assert cli.main(["train", "--out", str(tmp_path / "again"), *_common(tmp_path)]) == 0
  assert json.loads((tmp_path / "again/metrics.json").read_text())["cached"] is True


def test_metamer_feature(tmp_path):
  out = tmp_path / "fm"
  assert cli.main(["metamer", "--out", str(out), *_common(
      tmp_path, "metamer={layer: 1, steps: 5, num_seeds: 2, chunk: 5}")]) == 0
  for f in ("metamers.npz", "metamers.json", "metrics.json", "metrics.csv", "table.md",
            "metamers.png", "config.json", "versions.json"):
    assert (out / f).is_file(), f
  res = MetamerResult.load(str(out / "metamers"))
  assert res.metamers.shape == (2, 120, 24)
  graph = _graph()
  with open(out / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  for i, row in enumerate(rows):
    s = float(metrics.feature_similarity(graph.x, res.metamers[i].astype(np.float32)))
    assert float(row["s_feat"]) == pytest.approx(s, abs=1e-6)
    cs = s * float(row["s_match"]) + (1 - s) * (1 - float(row["s_match"]))  # eq. 15
    assert float(row["cs_feat"]) == pytest.approx(cs, abs=1e-6)
  assert "s_feat" in (out / "table.md").read_text()


def test_metamer_structure(tmp_path):
  out = tmp_path / "sm"
  assert cli.main(["metamer", "--out", str(out), *_common(
      tmp_path, "kind=structure", "metamer={layer: 1, steps: 5, num_seeds: 1, chunk: 5}")]) == 0
  assert (out / "metamers.png").is_file()
  res = MetamerResult.load(str(out / "metamers"))
  graph = _graph()
  edges = res.metamers[0]
  assert edges.shape == (graph.num_edges // 2, 2)
  adj = np.zeros((120, 120))
  adj[edges[:, 0], edges[:, 1]] = adj[edges[:, 1], edges[:, 0]] = 1
  from jmeta.graph import to_dense
  s = metrics.wl_similarity(np.asarray(to_dense(graph)), adj, iterations=3)
  assert json.loads((out / "metrics.json").read_text())["per_seed"]["s_struct"][0] == (
      pytest.approx(s))


def test_rank(tmp_path):
  out = tmp_path / "rk"
  assert cli.main(["rank", "--out", str(out), *_common(tmp_path, "layer=1")]) == 0
  summary = json.loads((out / "rank_summary.json").read_text())
  assert (out / "rank_histogram.png").is_file()
  with np.load(out / "ranks.npz") as z:
    ranks, dim = z["ranks"], z["metamer_dim"]
  assert summary["input_dim"] == 24 and summary["output_dim"] == 16
  np.testing.assert_array_equal(dim, 24 - ranks)
  assert sum(summary["histogram"].values()) == 120
  assert ranks.max() <= 16
