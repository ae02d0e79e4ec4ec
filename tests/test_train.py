"""Tests for jmeta.train: losses, PGD, the scanned epoch loop, early stopping, errors."""

import dataclasses
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta.data
from jmeta import train
from jmeta.models import ModelConfig, create_model

GCN = ModelConfig("gcn", hidden=16, dropout=0.5)


@pytest.fixture(scope="module")
def easy():
  """An easy CSBM: homophily 0.9, binary features."""
  return jmeta.data.load("synthetic", num_nodes=300, num_features=32, num_classes=3,
                         homophily=0.9, avg_degree=6.0, seed=0, num_val=60)


@pytest.fixture(scope="module")
def cont():
  """A small CSBM with continuous non-negative features."""
  return jmeta.data.load("synthetic", num_nodes=120, num_features=16, num_classes=3,
                         homophily=0.7, feature_kind="continuous", seed=1, num_val=30)


def _init(graph, cfg=GCN, seed=0):
  model = create_model(cfg, graph.num_classes)
  return model, model.init(jax.random.PRNGKey(seed), graph)


def _np_cross_entropy(logits, labels, mask):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  idx = np.flatnonzero(np.asarray(mask) & (np.asarray(labels) >= 0))
  return -logp[idx, np.asarray(labels)[idx]].mean()


# -- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("learning_rate", 0.0), ("learning_rate", float("inf")), ("learning_rate", -1e-3),
    ("weight_decay", -1.0), ("epochs", 0), ("epochs", 2.5), ("patience", 0), ("seed", 1.5),
    ("chunk", 0), ("adversarial", {"eps": 0.1})])
def test_train_config_rejects(field, value):
  with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
    train.TrainConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("eps", 0.0), ("eps", float("nan")), ("steps", 0), ("step_size", -0.1), ("adv_weight", 1.5),
    ("random_start", 1)])
def test_adversarial_config_rejects(field, value):
  with pytest.raises(ValueError, match=f"AdversarialConfig.{field}"):
    train.AdversarialConfig(**{field: value})


def test_train_config_round_trips_through_dict():
  cfg = train.TrainConfig(learning_rate=0.001, adversarial=train.AdversarialConfig(eps=0.05))
  assert train.TrainConfig.from_dict(cfg.to_dict()) == cfg
  assert train.AdversarialConfig(eps=0.2, steps=4).alpha == pytest.approx(2.5 * 0.2 / 4)
  assert train.default_train_config("GAT").learning_rate == 0.005
  assert train.default_train_config("gcn", epochs=7).epochs == 7


# -- pure functions --------------------------------------------------------------------------------


def test_loss_and_evaluate_match_numpy(easy):
  model, params = _init(easy)
  logits = np.asarray(model.apply(params, easy).logits)
  loss, aux = train.loss_fn(params, model, easy, None, train=False)
  np.testing.assert_allclose(float(loss), _np_cross_entropy(logits, easy.labels,
                                                            easy.train_mask), rtol=1e-5)
  ev = train.evaluate(params, model, easy)
  pred, y = logits.argmax(1), np.asarray(easy.labels)
  for split in ("train", "val", "test"):
    m = np.asarray(getattr(easy, f"{split}_mask"))
    assert ev[split] == pytest.approx((pred[m] == y[m]).mean(), abs=1e-7)
  assert float(aux["accuracy"]) == pytest.approx(ev["train"], abs=1e-7)
  assert ev["val_loss"] == pytest.approx(_np_cross_entropy(logits, y, easy.val_mask), rel=1e-5)


def test_unlabelled_nodes_are_ignored(easy):
  model, params = _init(easy)
  logits = model.apply(params, easy).logits
  y = np.asarray(easy.labels).copy()
  first = np.flatnonzero(np.asarray(easy.train_mask))[0]
  y[first] = -1
  g = easy.replace(labels=jnp.asarray(y))
  loss = train.masked_cross_entropy(logits, g.labels, g.train_mask)
  np.testing.assert_allclose(float(loss), _np_cross_entropy(logits, y, easy.train_mask),
                             rtol=1e-5)


def test_train_steps_decrease_loss(easy):
  model, params = _init(easy)
  state = train.create_train_state(model, params, train.TrainConfig())
  before = train.evaluate(state.params, model, easy)["loss"]
  for t in range(10):
    state, metrics = train.train_step(state, easy, jax.random.PRNGKey(t))
    chex.assert_tree_all_finite(metrics)
  after = train.evaluate(state.params, model, easy)["loss"]
  assert int(state.step) == 10
  assert after < 0.8 * before


def test_weight_decay_is_coupled_l2():
  """With a zero loss gradient Adam normalises the decay term: the first update is -lr*sign(p)."""
  cfg = train.TrainConfig(learning_rate=0.1, weight_decay=0.5)
  tx = train.make_optimizer(cfg)
  p = {"w": jnp.array([2.0, -3.0])}
  upd, _ = tx.update({"w": jnp.zeros(2)}, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(upd["w"]), [-0.1, 0.1], rtol=1e-4)


def test_train_step_compiles_once(easy):
  model, params = _init(easy)
  step = jax.jit(chex.assert_max_traces(train._train_step, n=1))  # pylint: disable=protected-access
  state = train.create_train_state(model, params, train.TrainConfig())
  for t in range(4):
    state, _ = step(state, easy, jax.random.PRNGKey(t))
  chex.clear_trace_counter()


def test_pgd_stays_in_ball_and_box_and_beats_random(easy):
  model, params = _init(easy)
  adv = train.AdversarialConfig(eps=0.2, steps=10)
  x = np.asarray(easy.x)
  x_adv = np.asarray(train.pgd_attack(params, model, easy, jax.random.PRNGKey(0), adv))
  chex.assert_shape(x_adv, x.shape)
  assert np.abs(x_adv - x).max() <= adv.eps + 1e-6
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  # The attack uses the ball: many entries sit on its boundary (the others were pushed into the
  # box's face, or do not affect the training loss and stay at the random start).
  assert np.mean(np.isclose(np.abs(x_adv - x), adv.eps, atol=1e-6)) > 0.3

  def loss(z):
    return float(train.loss_fn(params, model, easy.with_features(jnp.asarray(z)), None,
                               train=False)[0])

  rng = np.random.default_rng(0)
  x_rand = np.clip(x + adv.eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1)
  assert loss(x_adv) > loss(x_rand) + 0.05
  assert loss(x_adv) > loss(x) + 0.05


def test_pgd_continuous_clip_and_determinism(cont):
  model, params = _init(cont)
  adv = train.AdversarialConfig(eps=0.3, steps=3)
  key = jax.random.PRNGKey(3)
  a = np.asarray(train.pgd_attack(params, model, cont, key, adv))
  b = np.asarray(train.pgd_attack(params, model, cont, key, adv))
  c = np.asarray(train.pgd_attack(params, model, cont, jax.random.PRNGKey(4), adv))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  x = np.asarray(cont.x)
  assert np.abs(a - x).max() <= adv.eps + 1e-6
  assert a.min() >= 0.0 and a.max() > x.max()  # non-negative, but not clipped above
  free = np.asarray(train.pgd_attack(
      params, model, cont, key, dataclasses.replace(adv, clip_min_continuous=None)))
  assert free.min() < 0.0


# -- the loop --------------------------------------------------------------------------------------


def test_fit_reaches_high_accuracy_quickly(easy):
  t0 = time.perf_counter()
  res = train.fit(GCN, easy, train.TrainConfig(epochs=100), progress=False)
  seconds = time.perf_counter() - t0
  assert res.metrics["test"] > 0.8, res.metrics
  assert seconds < 20.0
  assert res.history["loss"][-1] < res.history["loss"][0]
  assert res.train_config.epochs == 100 and res.model_config == GCN


def test_early_stopping_keeps_best_val_params(easy):
  cfg = train.TrainConfig(epochs=300, patience=15, chunk=20, learning_rate=0.05)
  res = train.fit(GCN, easy, cfg, progress=False)
  h = res.history
  assert res.epochs_run < 300  # stopped early
  assert res.epochs_run == res.best_epoch + cfg.patience + 1
  assert h["val_acc"][res.best_epoch] == h["val_acc"].max()
  model = create_model(GCN, easy.num_classes)
  # The returned parameters are the best epoch's: their eval matches that row of the history.
  assert res.metrics["val"] == pytest.approx(float(h["val_acc"].max()), abs=1e-7)
  ev = train.evaluate(res.params, model, easy)
  assert ev["val_loss"] == pytest.approx(float(h["val_loss"][res.best_epoch]), rel=1e-5)


def test_fit_is_deterministic_and_chunk_independent(easy):
  cfg = train.TrainConfig(epochs=30, patience=None, chunk=7, seed=3)
  a = train.fit(GCN, easy, cfg, progress=False)
  b = train.fit(GCN, easy, dataclasses.replace(cfg, chunk=30), progress=False)
  c = train.fit(GCN, easy, dataclasses.replace(cfg, seed=4), progress=False)
  chex.assert_trees_all_equal(a.params, b.params)
  np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
  assert not np.array_equal(np.asarray(jax.tree_util.tree_leaves(a.params)[0]),
                            np.asarray(jax.tree_util.tree_leaves(c.params)[0]))


def test_fit_compiles_chunk_once(easy, monkeypatch):
  counted = jax.jit(chex.assert_max_traces(train._run_chunk_impl, n=1),  # pylint: disable=protected-access
                    static_argnames=("chunk", "patience"))
  monkeypatch.setattr(train, "_run_chunk", counted)
  for seed in (0, 1):  # five chunks, the last one partial, two seeds: one trace
    res = train.fit(GCN, easy, train.TrainConfig(epochs=23, chunk=5, patience=None, seed=seed),
                    progress=False)
    assert res.epochs_run == 23
  chex.clear_trace_counter()


def test_adversarial_training_is_more_robust(easy):
  adv = train.AdversarialConfig(eps=0.2, steps=5)
  cfg = train.TrainConfig(epochs=100, patience=None)
  mcfg = dataclasses.replace(GCN, dropout=0.0)
  clean = train.fit(mcfg, easy, cfg, progress=False)
  robust = train.fit(mcfg, easy, dataclasses.replace(cfg, adversarial=adv), progress=False)
  model = create_model(mcfg, easy.num_classes)

  def attacked_loss(params):  # averaged over several attack starts
    losses = []
    for i in range(4):
      x_adv = train.pgd_attack(params, model, easy, jax.random.PRNGKey(9 + i), adv)
      losses.append(float(train.loss_fn(params, model, easy.with_features(x_adv), None,
                                        False)[0]))
    return np.mean(losses)

  robust_loss, clean_loss = attacked_loss(robust.params), attacked_loss(clean.params)
  assert robust_loss < clean_loss
  assert robust.metrics["test"] > 0.9


def test_divergence_raises_naming_epoch(easy):
  cfg = train.TrainConfig(epochs=20, learning_rate=1e38, chunk=5)
  with pytest.raises(train.TrainingDivergedError, match=r"epoch 0") as info:
    train.fit(GCN, easy, cfg, progress=False)
  err = info.value
  assert isinstance(err, FloatingPointError)
  assert err.epoch == 0 and err.best_epoch == -1
  assert err.history["loss"].shape == (1,)
  # No finite epoch: the attached parameters are the initial ones (fit's init key from seed 0).
  init_key, _ = jax.random.split(jax.random.PRNGKey(0))
  expected = create_model(GCN, easy.num_classes).init(init_key, easy)
  chex.assert_trees_all_equal(err.best_params, expected)


# -- input checks ----------------------------------------------------------------------------------


def test_fit_rejects_bad_inputs_before_compiling(easy, monkeypatch):
  def boom(*a, **k):
    raise AssertionError("compiled before validating")
  monkeypatch.setattr(train, "_run_chunk", boom)
  with pytest.raises(ValueError, match="ModelConfig.name"):
    train.fit({"name": "nope"}, easy, progress=False)
  with pytest.raises(ValueError, match="train_config"):
    train.fit(GCN, easy, {"epochs": 3}, progress=False)
  with pytest.raises(ValueError, match="no labelled train nodes"):
    train.fit(GCN, easy.replace(train_mask=jnp.zeros_like(easy.train_mask)), progress=False)
  with pytest.raises(ValueError, match="no labelled val nodes"):
    train.fit(GCN, easy.replace(val_mask=jnp.zeros_like(easy.val_mask)), progress=False)
  bad_y = easy.replace(labels=easy.labels.at[0].set(easy.num_classes))
  with pytest.raises(ValueError, match="labels out of range"):
    train.fit(GCN, bad_y, progress=False)
  nan_x = easy.with_features(easy.x.at[5, 2].set(jnp.nan))
  with pytest.raises(ValueError, match="node 5, feature 2"):
    train.fit(GCN, nan_x, progress=False)
  # Parameters for another feature dimension are refused, naming both shapes.
  _, params = _init(easy)
  other = easy.with_features(easy.x[:, :10])
  with pytest.raises(ValueError, match=r"\(32, 16\).*\(10, 16\)"):
    train.fit(GCN, other, init_params=params, progress=False)


def test_adversarial_mixing_weights(cont):
  model, params = _init(cont)
  key = jax.random.PRNGKey(5)
  clean_state = train.create_train_state(model, params, train.TrainConfig())
  clean, m_clean = train.train_step(clean_state, cont, key)
  # adv_weight = 0: the minimised loss and the update are exactly the clean ones.
  zero = train.TrainConfig(adversarial=train.AdversarialConfig(eps=0.1, adv_weight=0.0))
  z, m_zero = train.train_step(train.create_train_state(model, params, zero), cont, key)
  chex.assert_trees_all_close(z.params, clean.params, rtol=1e-6, atol=1e-7)
  assert float(m_zero["loss"]) == pytest.approx(float(m_clean["loss"]), rel=1e-6)
  half = train.TrainConfig(adversarial=train.AdversarialConfig(eps=0.1, adv_weight=0.5))
  _, m = train.train_step(train.create_train_state(model, params, half), cont, key)
  assert float(m["loss"]) == pytest.approx(
      0.5 * float(m["clean_loss"]) + 0.5 * float(m["adv_loss"]), rel=1e-6)
  assert float(m["adv_loss"]) > float(m["clean_loss"])
