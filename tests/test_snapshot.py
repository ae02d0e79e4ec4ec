"""Tests of jmeta.metamers.snapshot: an interrupted metamer run resumes to the same result."""

import os

import jax
import numpy as np
import pytest

from jmeta import data
from jmeta.metamers import MetamerConfig, feature_metamers, structure_metamers
from jmeta.metamers import feature as feat
from jmeta.metamers import snapshot as snap
from jmeta.models import ModelConfig, create_model

CFG = MetamerConfig(steps=50, chunk=10, num_seeds=3, learning_rate=0.05, seed_batch=2)


@pytest.fixture(scope="module")
def small():
  graph = data.load("synthetic", num_nodes=60, num_features=24, num_classes=3, seed=1)
  model = create_model(ModelConfig("gcn", hidden=8, dropout=0.0), graph.num_classes)
  return graph, model, model.init(jax.random.key(0), graph)


def _run(kind, small, key, **kw):
  graph, model, params = small
  fn = feature_metamers if kind == "feature" else structure_metamers
  return fn(model, params, graph, jax.random.key(key), CFG, progress=False, **kw)


def _interrupt_after_saves(monkeypatch, n):
  """Ctrl-C right after the ``n``-th snapshot has been written."""
  real, count = snap.save_snapshot, []

  def save_then_interrupt(*args, **kwargs):
    real(*args, **kwargs)
    count.append(1)
    if len(count) == n:
      raise KeyboardInterrupt
  monkeypatch.setattr(snap, "save_snapshot", save_then_interrupt)


@pytest.mark.parametrize("kind", ["feature", "structure"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(small, tmp_path, monkeypatch, kind):
  path = str(tmp_path / "run.npz")
  ref = _run(kind, small, 0)
  with monkeypatch.context() as m:
    _interrupt_after_saves(m, 2)
    with pytest.raises(KeyboardInterrupt):
      _run(kind, small, 0, snapshot=path, snapshot_every=0.0)
  assert os.path.isfile(path)
  res = _run(kind, small, 0, snapshot=path, snapshot_every=0.0)
  assert res.info["resumed_steps"] == 20  # two chunks of 10 restored, three run
  np.testing.assert_array_equal(res.losses, ref.losses)
  np.testing.assert_array_equal(res.metamers, ref.metamers)
  for k, v in ref.metrics.items():
    np.testing.assert_array_equal(res.metrics[k], v)
  np.testing.assert_array_equal(res.steps, [50, 50, 50])
  assert not os.path.exists(path)  # a finished run leaves no snapshot


def test_snapshot_of_another_run_is_ignored(small, tmp_path, monkeypatch, capsys):
  path = str(tmp_path / "run.npz")
  with monkeypatch.context() as m:
    _interrupt_after_saves(m, 1)
    with pytest.raises(KeyboardInterrupt):
      _run("feature", small, 0, snapshot=path, snapshot_every=0.0)
  res = _run("feature", small, 1, snapshot=path, snapshot_every=1e9)  # other seeds
  assert "another metamer run" in capsys.readouterr().err
  assert res.info["resumed_steps"] == 0
  np.testing.assert_array_equal(res.metamers, _run("feature", small, 1).metamers)


def test_damaged_snapshot_is_ignored(small, tmp_path, capsys):
  path = tmp_path / "run.npz"
  path.write_bytes(b"PK\x03\x04 not a zip archive")
  res = _run("feature", small, 2, snapshot=str(path))
  assert "unreadable" in capsys.readouterr().err
  assert res.info["resumed_steps"] == 0
  np.testing.assert_array_equal(res.metamers, _run("feature", small, 2).metamers)
  assert not path.exists()


def test_fingerprint_names_the_run(small):
  graph, model, params = small
  spec = feat.FeatureSpec(model=model, layer=1, feature_kind="binary", config=CFG,
                          rho_ref=0.1, size=int(graph.x.size))
  d = feat.FeatureData(variables=params, graph=graph, h_ref=graph.x[:, :8])
  keys = jax.random.split(jax.random.key(0), 3)
  fp = snap.run_fingerprint(spec, d, keys, 2)
  assert fp == snap.run_fingerprint(spec, d, jax.random.split(jax.random.key(0), 3), 2)
  flipped = graph.with_features(graph.x.at[0, 0].set(1.0 - graph.x[0, 0]))
  others = [snap.run_fingerprint(spec, d._replace(graph=flipped), keys, 2),
            snap.run_fingerprint(spec, d, jax.random.split(jax.random.key(1), 3), 2),
            snap.run_fingerprint(spec, d, keys, 3),
            snap.run_fingerprint(
                feat.FeatureSpec(model=model, layer=1, feature_kind="binary",
                                 config=MetamerConfig(**{**CFG.to_dict(), "steps": 60}),
                                 rho_ref=0.1, size=int(graph.x.size)), d, keys, 2)]
  assert len({fp, *others}) == 5
