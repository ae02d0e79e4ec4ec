"""Tests for jmeta.checkpoint: round trip, refusals, damaged files."""

import hashlib
import json
import os

import chex
import jax
import numpy as np
import pytest

import jmeta
import jmeta.data
from jmeta import checkpoint, train
from jmeta.models import ModelConfig, create_model

CFG = ModelConfig("gat", hidden=8, heads=2, dropout=0.6, residual=True)


@pytest.fixture(scope="module")
def trained():
  g = jmeta.data.load("synthetic", num_nodes=80, num_features=12, num_classes=3, seed=2,
                      num_val=20)
  res = train.fit(CFG, g, train.TrainConfig(epochs=5, patience=None), progress=False)
  return g, res


@pytest.fixture()
def saved(tmp_path, trained):
  g, res = trained
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", res.params, CFG,
                                    num_features=g.num_features, num_classes=g.num_classes,
                                    train_config=res.train_config, metrics=res.metrics)
  return path


def test_round_trip_is_bitwise_and_outputs_match(saved, trained):
  g, res = trained
  ck = checkpoint.load_checkpoint(saved, expect_model_config=CFG,
                                  expect_num_features=g.num_features,
                                  expect_num_classes=g.num_classes)
  assert ck.model_config == CFG and ck.num_features == 12 and ck.num_classes == 3
  ref = jax.tree_util.tree_map(np.asarray, res.params)
  assert jax.tree_util.tree_structure(ck.params) == jax.tree_util.tree_structure(ref)
  for a, b in zip(jax.tree_util.tree_leaves(ck.params), jax.tree_util.tree_leaves(ref)):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()  # bitwise
  model = create_model(ck.model_config, ck.num_classes)
  out_a = model.apply(ck.params, g)
  out_b = create_model(CFG, g.num_classes).apply(res.params, g)
  chex.assert_trees_all_equal(out_a, out_b)
  assert train.TrainConfig.from_dict(ck.meta["train_config"]) == res.train_config
  assert ck.meta["metrics"]["test"] == pytest.approx(res.metrics["test"])
  assert ck.meta["versions"]["jax"] == jax.__version__
  assert ck.meta["versions"]["jmeta"] == jmeta.__version__


def test_file_layout_and_overwrite_leaves_no_temporaries(saved, trained):
  g, res = trained
  with np.load(os.path.join(saved, checkpoint.PARAMS_FILE)) as z:
    names = sorted(z.files)
  flat = checkpoint.flatten_params(res.params)
  assert names == sorted(flat) and all(n.startswith("params/") for n in names)
  checkpoint.save_checkpoint(saved, res.params, CFG, num_features=12, num_classes=3)
  assert sorted(os.listdir(saved)) == [checkpoint.META_FILE, checkpoint.PARAMS_FILE]
  assert checkpoint.load_checkpoint(saved).meta["train_config"] is None


def test_refuses_other_architecture_and_dims(saved):
  other = ModelConfig("gcn", hidden=8)
  with pytest.raises(ValueError, match=r"stored ModelConfig\(name='gat'.*expected "
                                       r"ModelConfig\(name='gcn'"):
    checkpoint.load_checkpoint(saved, expect_model_config=other)
  with pytest.raises(ValueError, match="trained on 12 input features, expected 1433"):
    checkpoint.load_checkpoint(saved, expect_num_features=1433)
  with pytest.raises(ValueError, match="trained for 3 classes, expected 7"):
    checkpoint.load_checkpoint(saved, expect_num_classes=7)


def test_missing_and_corrupt_files_name_the_path(saved, tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    checkpoint.load_checkpoint(tmp_path / "nowhere")
  params_path = os.path.join(saved, checkpoint.PARAMS_FILE)
  meta_path = os.path.join(saved, checkpoint.META_FILE)
  data = open(params_path, "rb").read()
  with open(params_path, "wb") as f:  # flip one byte
    f.write(data[:100] + bytes([data[100] ^ 1]) + data[101:])
  with pytest.raises(ValueError, match="params.npz.*sha256"):
    checkpoint.load_checkpoint(saved)
  with open(meta_path, "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match="corrupt checkpoint record.*checkpoint.json"):
    checkpoint.load_checkpoint(saved)
  os.remove(params_path)
  with pytest.raises(FileNotFoundError, match="params.npz"):
    checkpoint.load_checkpoint(saved)


def test_corrupt_npz_with_matching_hash_is_reported(saved):
  params_path = os.path.join(saved, checkpoint.PARAMS_FILE)
  meta_path = os.path.join(saved, checkpoint.META_FILE)
  junk = b"not a zip file at all"
  with open(params_path, "wb") as f:
    f.write(junk)
  meta = json.load(open(meta_path))
  meta["params_sha256"] = hashlib.sha256(junk).hexdigest()
  json.dump(meta, open(meta_path, "w"))
  with pytest.raises(ValueError, match="corrupt parameter file.*params.npz"):
    checkpoint.load_checkpoint(saved)


def test_save_rejects_bad_arguments(tmp_path, trained):
  _, res = trained
  with pytest.raises(ValueError, match="num_features"):
    checkpoint.save_checkpoint(tmp_path / "a", res.params, CFG, num_features=0, num_classes=3)
  with pytest.raises(ValueError, match="model_config"):
    checkpoint.save_checkpoint(tmp_path / "a", res.params, {"name": "gat"}, num_features=4,
                               num_classes=3)
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="not a directory"):
    checkpoint.save_checkpoint(tmp_path / "file", res.params, CFG, num_features=4,
                               num_classes=3)
