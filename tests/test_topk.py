"""Tests of jmeta.metamers.topk: exactness against a stable numpy argsort, ties, hints, vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.metamers.topk import keys_to_float, order_keys, topk_mask

SHAPE = (100, 200)  # 20000 scores
K = 3000


def _reference(x, k):
  """Mask and threshold by a stable descending argsort: among equal values, lower index first."""
  flat = np.asarray(x, np.float32).reshape(-1)
  order = np.argsort(-flat, kind="stable")
  mask = np.zeros(flat.size, bool)
  mask[order[:k]] = True
  threshold = flat[order[k - 1]] if k else np.inf
  return mask.reshape(np.shape(x)), np.float32(threshold)


def _check(sel, x, k):
  mask, threshold = _reference(x, k)
  chex.assert_shape(sel.mask, np.shape(x))
  assert int(np.sum(sel.mask)) == k
  np.testing.assert_array_equal(np.asarray(sel.mask), mask)
  assert np.float32(sel.threshold) == threshold


def _inputs():
  """Score matrices with no ties, many ties, and a block of values equal to the threshold."""
  rng = np.random.default_rng(0)
  normal = rng.normal(size=SHAPE).astype(np.float32)
  rounded = np.round(rng.normal(size=SHAPE), 1).astype(np.float32)  # ~60 distinct values
  at_threshold = normal.copy()
  t = _reference(normal, K)[1]
  at_threshold.reshape(-1)[rng.choice(normal.size, 500, replace=False)] = t  # 500 ties at t
  signed_zeros = np.where(rng.random(SHAPE) < 0.5, -0.0, 0.0).astype(np.float32)
  signed_zeros.reshape(-1)[:100] = 1.0
  return {"normal": normal, "rounded": rounded, "at_threshold": at_threshold,
          "signed_zeros": signed_zeros, "constant": np.full(SHAPE, 0.25, np.float32)}


INPUTS = _inputs()


@pytest.fixture(scope="module")
def warm_fn():
  return jax.jit(lambda s, h: topk_mask(s, K, h))


@pytest.fixture(scope="module")
def tiny_capacity_fn():
  """Capacity 8 makes every attempt miss, so the bisection and tie-cut fallbacks run."""
  return jax.jit(lambda s, h: topk_mask(s, K, h, capacity=8, cold_capacity=8))


@pytest.mark.parametrize("name", list(INPUTS))
def test_exact_with_various_hints(warm_fn, name):
  x = INPUTS[name]
  good = _reference(x, K)[1]
  nudged = np.nextafter(good, np.float32(np.inf))
  for hint in (good, nudged, good - 0.01, np.float32(1e30), np.float32(-1e30), np.float32(np.nan)):
    _check(warm_fn(x, hint), x, K)


@pytest.fixture(scope="module")
def cold_fn():
  return jax.jit(lambda s: topk_mask(s, K))


@pytest.mark.parametrize("name", list(INPUTS))
def test_exact_without_hint(cold_fn, name):
  _check(cold_fn(INPUTS[name]), INPUTS[name], K)


@pytest.mark.parametrize("name", ["normal", "rounded", "at_threshold", "constant"])
def test_exact_through_fallbacks(tiny_capacity_fn, name):
  x = INPUTS[name]
  for hint in (_reference(x, K)[1], np.float32(np.nan)):
    _check(tiny_capacity_fn(x, hint), x, K)


def test_warm_hint_from_previous_step(warm_fn):
  rng = np.random.default_rng(1)
  prev = rng.normal(0.0127, 0.1, SHAPE).astype(np.float32)
  hint = _reference(prev, K)[1]
  for _ in range(3):  # a few "Adam steps"
    cur = (prev + rng.normal(0.0, 5e-4, SHAPE)).astype(np.float32)
    sel = warm_fn(cur, hint)
    _check(sel, cur, K)
    prev, hint = cur, sel.threshold


def test_edge_k_and_errors():
  x = INPUTS["rounded"]
  n = x.size
  for k in (0, 1, n - 1, n):
    _check(jax.jit(lambda s, h: topk_mask(s, k, h))(x, np.float32(0.0)), x, k)
  for k in (0, n):  # no search at all
    _check(topk_mask(x, k), x, k)
  assert topk_mask(x, 0).threshold == np.inf
  for bad in (-1, n + 1):
    with pytest.raises(ValueError, match="outside"):
      topk_mask(x, bad)
  with pytest.raises(ValueError, match="must be an int"):
    topk_mask(x, 2.5)
  with pytest.raises(ValueError, match="scalar"):
    topk_mask(x, 3, np.zeros(2, np.float32))
  with pytest.raises(ValueError, match="floating"):
    topk_mask(np.arange(10), 3)
  one = np.array([3.0], np.float32)
  _check(topk_mask(one, 1), one, 1)
  small = np.array([2.0, 5.0, 5.0, -1.0, 5.0], np.float32)  # fewer entries than a block
  _check(jax.jit(lambda s: topk_mask(s, 2))(small), small, 2)


def test_traced_k():
  x = INPUTS["rounded"]
  f = jax.jit(lambda s, k: topk_mask(s, k, np.float32(0.5)))
  for k in (0, 1, 777, K, x.size):
    sel = f(x, jnp.int32(k))
    _check(sel, x, k)


def test_vmap_with_mixed_hints():
  rng = np.random.default_rng(2)
  xs = np.stack([INPUTS["normal"], INPUTS["rounded"], INPUTS["at_threshold"],
                 rng.normal(size=SHAPE).astype(np.float32)])
  good = np.array([_reference(x, K)[1] for x in xs])
  hints = np.array([good[0], np.nan, 1e30, good[3] + 1e-3], np.float32)
  for fn in (lambda s, h: topk_mask(s, K, h),
             lambda s, h: topk_mask(s, K, h, capacity=8, cold_capacity=8)):
    sel = jax.jit(jax.vmap(fn))(xs, hints)
    chex.assert_shape(sel.threshold, (4,))
    for i, x in enumerate(xs):
      _check(jax.tree.map(lambda a: a[i], sel), x, K)
  sel = jax.jit(jax.vmap(lambda s: topk_mask(s, K)))(xs)  # no hint
  for i, x in enumerate(xs):
    _check(jax.tree.map(lambda a: a[i], sel), x, K)


def test_compiles_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, h):
    return topk_mask(s, K, h)

  rng = np.random.default_rng(3)
  hint = jnp.float32(0.0)
  for _ in range(3):
    x = rng.normal(size=SHAPE).astype(np.float32)
    sel = step(x, hint)
    _check(sel, x, K)
    hint = sel.threshold


def test_mask_is_constant_for_autodiff():
  x = jnp.asarray(INPUTS["normal"])
  grad = jax.jit(jax.grad(lambda s: jnp.sum(topk_mask(s, K).mask * s)))(x)
  np.testing.assert_array_equal(np.asarray(grad), _reference(INPUTS["normal"], K)[0].astype(np.float32))


def test_order_keys_preserve_order():
  rng = np.random.default_rng(4)
  special = np.array([-np.inf, np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0],
                     np.float32)
  x = np.concatenate([special, rng.normal(size=1000).astype(np.float32) * 10.0 ** rng.integers(
      -30, 30, 1000)]).astype(np.float32)
  keys = np.asarray(order_keys(x))
  np.testing.assert_array_equal(np.argsort(keys, kind="stable"), np.argsort(x, kind="stable"))
  np.testing.assert_array_equal(np.asarray(keys_to_float(order_keys(x))), x + np.float32(0.0))
  assert order_keys(np.float32(-0.0)) == order_keys(np.float32(0.0))


def test_cora_sized_exact():
  """One case at the real size (2708 x 1433 = 3.9M scores) with a warm hint."""
  rng = np.random.default_rng(5)
  prev = rng.normal(0.0127, 0.1, (2708, 1433)).astype(np.float32)
  cur = (prev + rng.normal(0.0, 5e-4, prev.shape)).astype(np.float32)
  k = int(round(0.0127 * prev.size))
  hint = _reference(prev, k)[1]
  _check(jax.jit(lambda s, h: topk_mask(s, k, h))(cur, hint), cur, k)
