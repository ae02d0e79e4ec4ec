"""Tests of jmeta.metamers: parametrisations, the vmapped optax loop, results."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta import data
from jmeta.graph import to_dense
from jmeta.metamers import MetamerConfig, MetamerResult, feature_metamers, structure_metamers
from jmeta.metamers import feature as feat
from jmeta.metamers import optimize as opt
from jmeta.metamers import structure as struct
from jmeta.models import ModelConfig, create_model


@pytest.fixture(scope="module")
def small():
  graph = data.load("synthetic", num_nodes=60, num_features=24, num_classes=3, seed=1)
  model = create_model(ModelConfig("gcn", hidden=8, dropout=0.0), graph.num_classes)
  params = model.init(jax.random.key(0), graph)
  return graph, model, params


@pytest.fixture(scope="module")
def continuous():
  graph = data.load("synthetic", num_nodes=50, num_features=12, num_classes=3,
                    feature_kind="continuous", seed=2)
  model = create_model(ModelConfig("gcn", hidden=8, dropout=0.0), graph.num_classes)
  return graph, model, model.init(jax.random.key(1), graph)


# -- configuration and bad input -------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("steps", 0), ("num_seeds", 0), ("slope", 0.0),
                                         ("slope", -1.0), ("layer", 0), ("learning_rate", 0.0),
                                         ("margin_sign", "up"), ("density", "free"),
                                         ("tol", -1.0), ("chunk", 0), ("seed_batch", -1),
                                         ("seed_batch", 1.5)])
def test_config_rejects_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    MetamerConfig(**{field: value})


def test_config_from_dict_names_unknown_keys():
  with pytest.raises(ValueError, match="stepz"):
    MetamerConfig.from_dict({"stepz": 3})
  assert MetamerConfig.from_dict({"steps": 3}).steps == 3


def test_layer_out_of_range_is_refused_before_compiling(small):
  graph, model, params = small
  with pytest.raises(ValueError, match="layer=3 is outside 1..2"):
    feature_metamers(model, params, graph, jax.random.key(0), MetamerConfig(layer=3, steps=2),
                     progress=False)


def test_all_zero_reference_activation_is_refused(small):
  graph, model, params = small
  zero = jax.tree.map(jnp.zeros_like, params)
  with pytest.raises(ValueError, match="all zero"):
    feature_metamers(model, zero, graph, jax.random.key(0), MetamerConfig(steps=2),
                     progress=False)


def test_feature_kind_mismatch_is_refused(small):
  graph, model, params = small
  with pytest.raises(ValueError, match="trained on continuous"):
    feature_metamers(model, params, graph, jax.random.key(0), MetamerConfig(steps=2),
                     feature_kind="continuous", progress=False)


# -- parametrisation -------------------------------------------------------------------------


def test_init_matches_reference_moments():
  x = (jax.random.uniform(jax.random.key(0), (4000, 5)) < jnp.array([.1, .2, .3, .4, .5]))
  x = x.astype(jnp.float32)
  soft = feat.init_soft_features(jax.random.key(1), x)
  np.testing.assert_allclose(soft.mean(0), x.mean(0), atol=0.03)
  np.testing.assert_allclose(soft.std(0), x.std(0), rtol=0.05)


def test_straight_through_binary_features_value_and_gradient():
  soft = jax.random.normal(jax.random.key(0), (30, 7))
  k, s = 50, 2.5
  x, p, thr = jax.jit(feat.binary_features, static_argnums=(1, 2))(soft, k, s)
  # Forward: exactly binary, exactly k ones, on the k largest logits.
  assert set(np.unique(np.asarray(x)).tolist()) <= {0.0, 1.0}
  assert int(x.sum()) == k
  order = np.argsort(-np.asarray(soft).ravel(), kind="stable")
  expected = np.zeros(soft.size)
  expected[order[:k]] = 1
  np.testing.assert_array_equal(np.asarray(x).ravel(), expected)
  np.testing.assert_allclose(thr, np.asarray(soft).ravel()[order[k - 1]])
  # Backward: the gradient flows through P = sigmoid(s * soft): d/dsoft = g * s P (1 - P).
  w = jax.random.normal(jax.random.key(1), soft.shape)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(w * feat.binary_features(z, k, s)[0])))(soft)
  pp = jax.nn.sigmoid(s * soft)
  np.testing.assert_allclose(grad, w * s * pp * (1 - pp), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("margin_coef", [0.0, -0.3, 0.7])
def test_fused_straight_through_equals_autodiff_of_the_paper_objective(margin_coef):
  soft = jax.random.normal(jax.random.key(0), (20, 9))
  hard = (soft > 0.5).astype(jnp.float32)
  w = jax.random.normal(jax.random.key(1), soft.shape)
  s = 1.7

  def fused(z):
    return jnp.sum(w * feat.straight_through(z, hard, s, margin_coef))

  def paper(z):  # eq. (9) and (10), written out
    p = jax.nn.sigmoid(s * z)
    x = p + jax.lax.stop_gradient(hard - p)
    return jnp.sum(w * x) + margin_coef * jnp.mean(p * (1 - p))

  np.testing.assert_array_equal(feat.straight_through(soft, hard, s, margin_coef), hard)
  np.testing.assert_allclose(jax.grad(fused)(soft), jax.grad(paper)(soft), rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("margin_coef", [0.0, -0.4])
def test_fused_structure_straight_through_equals_autodiff_of_eq_11_12(margin_coef):
  n, k, s = 12, 10, 1.3
  soft = struct.init_soft_adjacency(jax.random.key(2), n)
  hard = struct.hard_adjacency(soft, k)
  w = jax.random.normal(jax.random.key(3), (n, n))  # not symmetric: both directions matter
  pairs = n * (n - 1) // 2

  def fused(z):
    return jnp.sum(w * struct.straight_through_adjacency(z, hard, s, margin_coef))

  def paper(z):  # eq. (11)-(12) on the symmetrised upper triangle, margin over the pairs
    adj, p, _ = struct.binary_adjacency(z, k, s)
    return jnp.sum(w * adj) + margin_coef * jnp.sum(p * (1 - p)) / (2 * pairs)

  np.testing.assert_array_equal(struct.straight_through_adjacency(soft, hard, s, margin_coef),
                                hard)
  np.testing.assert_allclose(jax.grad(fused)(soft), jax.grad(paper)(soft), rtol=1e-5,
                             atol=1e-7)


def test_structure_parametrisation_is_symmetric_binary_without_loops():
  n, k = 12, 17
  soft = struct.init_soft_adjacency(jax.random.key(0), n)
  adj, p, _ = jax.jit(struct.binary_adjacency, static_argnums=(1, 2))(soft, k, 1.0)
  a = np.asarray(adj)
  np.testing.assert_array_equal(a, a.T)
  assert np.all(np.diag(a) == 0)
  assert set(np.unique(a).tolist()) <= {0.0, 1.0}
  assert int(np.triu(a, 1).sum()) == k
  # The selected pairs are the k largest upper-triangle logits.
  iu = np.triu_indices(n, 1)
  vals = np.asarray(soft)[iu]
  top = np.argsort(-vals, kind="stable")[:k]
  chosen = np.zeros_like(vals)
  chosen[top] = 1
  np.testing.assert_array_equal(a[iu], chosen)
  # Gradient flows symmetrically into the upper triangle only.
  w = jax.random.normal(jax.random.key(1), (n, n))
  g = jax.jit(jax.grad(lambda z: jnp.sum(w * struct.binary_adjacency(z, k, 1.0)[0])))(soft)
  sig = jax.nn.sigmoid(soft)
  expected = np.triu((np.asarray(w) + np.asarray(w).T) * np.asarray(sig * (1 - sig)), 1)
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)


# -- the loop ---------------------------------------------------------------------------------


def _spec_and_data(model, params, graph, cfg):
  h_ref = model.apply(params, graph).activations[cfg.layer - 1]
  spec = feat.FeatureSpec(model=model, layer=cfg.layer, feature_kind=graph.feature_kind,
                          config=cfg, rho_ref=feat.reference_density(graph.x),
                          size=int(graph.x.size))
  return spec, feat.FeatureData(variables=params, graph=graph, h_ref=h_ref)


def test_loop_compiles_once_and_loss_decreases(small, monkeypatch):
  graph, model, params = small
  # A chunk length no other test uses, so that this spec is traced here first.
  cfg = MetamerConfig(steps=93, chunk=31, num_seeds=3, learning_rate=0.05, seed_batch=0)
  monkeypatch.setattr(feat, "feature_activation",
                      chex.assert_max_traces(feat.feature_activation, n=1))
  spec, data_ = _spec_and_data(model, params, graph, cfg)
  res = opt.optimize(spec, data_, jax.random.split(jax.random.key(0), 3), progress=False)
  chex.assert_shape(res.losses, (3, 93))
  np.testing.assert_array_equal(res.steps, [93, 93, 93])
  first, last = np.asarray(res.losses[:, 0]), np.asarray(res.losses[:, -5:]).mean(1)
  assert np.all(last < 0.5 * first), (first, last)
  # Another trained model of the same architecture and other seeds: no retrace (the wrapped
  # activation would raise), the compiled program is reused.
  other = model.init(jax.random.key(42), graph)
  spec2, data2 = _spec_and_data(model, other, graph, cfg)
  again = opt.optimize(spec2, data2, jax.random.split(jax.random.key(1), 3), progress=False)
  assert np.all(np.isfinite(again.losses))


def test_vmapped_seeds_equal_separate_runs(small):
  graph, model, params = small
  cfg = MetamerConfig(steps=20, chunk=10, num_seeds=2, learning_rate=0.02)
  key = jax.random.key(3)
  both = feature_metamers(model, params, graph, key, cfg, progress=False)
  keys = jax.random.split(key, 2)
  spec, data_ = _spec_and_data(model, params, graph, cfg)
  hard_fn = jax.jit(feat.hard_features, static_argnums=2)
  for i in range(2):
    one = opt.optimize(spec, data_, keys[i:i + 1], progress=False)
    np.testing.assert_allclose(both.losses[i], one.losses[0], rtol=2e-5, atol=1e-6)
    hard = hard_fn(one.params["soft"][0], jax.tree.map(lambda a: a[0], one.aux), "binary")
    np.testing.assert_array_equal(both.metamers[i], np.asarray(hard).astype(np.uint8))
  # Different seeds give different metamers.
  assert np.any(both.metamers[0] != both.metamers[1])


@pytest.mark.parametrize("seed_batch", [1, 2])
def test_seed_groups_give_the_same_metamers(small, seed_batch):
  """Seeds one by one, or in uneven groups (2 + 1): the results of one vmap over all seeds."""
  graph, model, params = small
  cfg = MetamerConfig(steps=15, chunk=5, num_seeds=3, learning_rate=0.02, seed_batch=seed_batch)
  res = feature_metamers(model, params, graph, jax.random.key(5), cfg, progress=False)
  ref = feature_metamers(model, params, graph, jax.random.key(5),
                         MetamerConfig(steps=15, chunk=5, num_seeds=3, learning_rate=0.02,
                                       seed_batch=0), progress=False)
  chex.assert_shape(res.losses, (3, 15))
  np.testing.assert_allclose(res.losses, ref.losses, rtol=2e-5, atol=1e-6)
  np.testing.assert_array_equal(res.metamers, ref.metamers)


def test_automatic_group_size():
  big = 2708 * 1433
  assert opt.group_size(None, 8, "cpu", big) == 1
  assert opt.group_size(None, 20, "cpu", big) == 3  # at most 8 groups
  assert opt.group_size(None, 8, "cpu", 60 * 24) == 8  # small: one vmap
  assert opt.group_size(None, 8, "gpu", big) == 8
  assert opt.group_size(0, 5, "cpu", big) == 5
  assert opt.group_size(7, 5, "cpu", big) == 5
  assert opt.group_size(2, 5, "cpu", 10) == 2
  state = opt.LoopState(*[jnp.arange(5)] * len(opt.LoopState._fields))
  groups = opt.split_groups(state, 2)
  assert [int(g.step.shape[0]) for g in groups] == [2, 2, 1]
  chex.assert_trees_all_equal(opt.merge_groups(groups), state)


def test_tolerance_stops_early(small):
  graph, model, params = small
  cfg = MetamerConfig(steps=400, chunk=20, tol=10.0)  # the first step already meets tol
  res = feature_metamers(model, params, graph, jax.random.key(0), cfg, progress=False)
  assert res.steps[0] == 1
  assert res.losses.shape[1] == 20  # one chunk ran, then the loop stopped


def test_feature_metamer_result_metrics_and_density(small):
  graph, model, params = small
  cfg = MetamerConfig(steps=40, chunk=20, num_seeds=2, learning_rate=0.05)
  res = feature_metamers(model, params, graph, jax.random.key(0), cfg, progress=False)
  x = np.asarray(graph.x)
  chex.assert_shape(res.metamers, (2,) + x.shape)
  k = int(round(x.mean() * x.size))
  np.testing.assert_array_equal(res.metamers.reshape(2, -1).sum(1), [k, k])
  # The reported metrics equal an independent numpy computation on the stored metamers.
  ref_logits = np.asarray(model.apply(params, graph).logits)
  for i in range(2):
    xm = res.metamers[i].astype(np.float32)
    s_feat = (x * xm).sum() / np.linalg.norm(x) / np.linalg.norm(xm)
    logits = np.asarray(model.apply(params, graph.with_features(jnp.asarray(xm))).logits)
    s_match = np.mean(logits.argmax(1) == ref_logits.argmax(1))
    np.testing.assert_allclose(res.metrics["s_feat"][i], s_feat, rtol=1e-5)
    np.testing.assert_allclose(res.metrics["s_match"][i], s_match)
    np.testing.assert_allclose(res.metrics["cs_feat"][i],
                               s_feat * s_match + (1 - s_feat) * (1 - s_match), rtol=1e-5)


def test_learned_density_gets_gradient_and_stays_near_reference(small):
  graph, model, params = small
  cfg = MetamerConfig(steps=40, chunk=20, density="learned", density_weight=10.0,
                      learning_rate=0.05)
  spec, data_ = _spec_and_data(model, params, graph, cfg)
  obj = spec.objective()
  p0, aux0 = obj.init(jax.random.key(0), data_)
  grads = jax.jit(jax.grad(lambda p: obj.loss(p, aux0, data_)[0]))(p0)
  assert np.isfinite(grads["rho_logit"]) and grads["rho_logit"] != 0
  res = feature_metamers(model, params, graph, jax.random.key(0), cfg, progress=False)
  rho_ref = float(np.asarray(graph.x).mean())
  assert abs(res.density[0] - rho_ref) < 0.5 * rho_ref
  np.testing.assert_allclose(res.metamers[0].mean(), res.density[0])


def test_continuous_metamers_are_non_negative(continuous):
  graph, model, params = continuous
  cfg = MetamerConfig(steps=60, chunk=30, num_seeds=2, learning_rate=0.05)
  res = feature_metamers(model, params, graph, jax.random.key(0), cfg, progress=False)
  assert res.metamers.dtype == np.float32
  assert np.all(res.metamers >= 0)
  assert np.all(res.losses[:, -1] < res.losses[:, 0])


def test_structure_metamers(small):
  graph, model, params = small
  cfg = MetamerConfig(steps=60, chunk=30, num_seeds=2, learning_rate=0.05)
  res = structure_metamers(model, params, graph, jax.random.key(0), cfg, progress=False)
  k = int(np.triu(np.asarray(to_dense(graph)), 1).sum())
  chex.assert_shape(res.metamers, (2, k, 2))
  assert np.all(res.metamers[..., 0] < res.metamers[..., 1])  # i < j: no loops, no duplicates
  assert len({tuple(e) for e in res.metamers[0].tolist()}) == k
  for name in ("s_struct", "s_match", "cs_struct"):
    assert np.all((res.metrics[name] >= 0) & (res.metrics[name] <= 1 + 1e-9)), name
  assert np.all(res.losses[:, -1] < res.losses[:, 0])


def test_result_save_load_round_trip(small, tmp_path):
  graph, model, params = small
  cfg = MetamerConfig(steps=4, chunk=2, num_seeds=2)
  res = feature_metamers(model, params, graph, jax.random.key(0), cfg, progress=False)
  res.save(str(tmp_path / "run"))
  back = MetamerResult.load(str(tmp_path / "run"))
  assert back.config == cfg and back.kind == "feature"
  np.testing.assert_array_equal(back.metamers, res.metamers)
  np.testing.assert_array_equal(back.losses, res.losses)
  for k, v in res.metrics.items():
    np.testing.assert_array_equal(back.metrics[k], v)
  with pytest.raises(FileNotFoundError, match="missing"):
    MetamerResult.load(str(tmp_path / "missing"))
