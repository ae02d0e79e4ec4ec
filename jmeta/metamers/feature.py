"""Feature metamers: the structure is fixed, the node features are synthesised (Sec 3.3).

Binary features (eq. 7-10): ``X'_soft = mu 1^T + tau * eps`` (per-feature mean and std of the
reference), ``P = sigmoid(s X'_soft)``, a hard mask with exactly ``k`` ones on the top entries
of P over the whole matrix (selected on the logits ``X'_soft``: sigmoid is monotone), and the
straight-through estimator ``X' = P + stopgrad(X'_hard - P)``: the model sees exactly binary
features while gradients flow through P.

Continuous features: ``X' = relu(X'_soft)``, optimised directly (entries stay non-negative).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jmeta.graph import Graph
from jmeta.metamers.config import MetamerConfig
from jmeta.metamers.optimize import Objective
from jmeta.metamers.ste import make_straight_through
from jmeta.metamers.topk import topk_mask


class FeatureAux(NamedTuple):
  """Non-differentiable state of a feature metamer."""
  threshold: jax.Array  # float32 scalar: the k-th largest logit of the last step (a warm start)
  density: jax.Array    # float32 scalar: the fraction of ones of the last hard mask
  mask: jax.Array       # [n, d] bool: the current hard mask (fixed density; else [0, 0])


def init_soft_features(key: jax.Array, x_ref: jax.Array, init_scale: float = 1.0) -> jax.Array:
  """Initialises ``X'_soft = mu 1^T + tau * eps`` (eq. 7).

  Args:
    key: PRNG key.
    x_ref: ``[n, d]`` reference features.
    init_scale: multiplies tau.

  Returns:
    ``[n, d] float32``.
  """
  mu = jnp.mean(x_ref, axis=0)
  tau = jnp.std(x_ref, axis=0)
  eps = jax.random.normal(key, x_ref.shape, jnp.float32)
  return mu[None, :] + init_scale * tau[None, :] * eps


def reference_density(x_ref: jax.Array) -> float:
  """Fraction of non-zero entries of the reference features (the initial rho)."""
  return float(jnp.mean(x_ref != 0))


def num_active(density: float, size: int) -> int:
  """``round(rho * N)``: the number of ones in the hard mask."""
  return int(round(density * size))


def _feature_surrogate_grad(soft, g, slope, margin_coef):
  p = jax.nn.sigmoid(slope * soft)
  return slope * p * (1.0 - p) * (g + (margin_coef / soft.size) * (1.0 - 2.0 * p))


straight_through = make_straight_through(_feature_surrogate_grad, """\
Fused straight-through estimator of eq. (9) with the margin of eq. (10).

Value: ``hard`` (exactly binary). Gradient with respect to ``soft``: that of
``P + stopgrad(hard - P) + margin_coef * mean(P (1 - P))`` with ``P = sigmoid(slope * soft)``,
i.e. ``slope P (1 - P) (g + margin_coef (1 - 2P) / N)``, computed in one elementwise pass (P is
recomputed in the backward pass instead of being stored). No gradient reaches ``hard``.

Args:
  soft: ``[n, d]`` logits ``X'_soft``.
  hard: ``[n, d]`` the hard mask (0/1, same dtype as soft).
  slope: sigmoid slope s (static).
  margin_coef: signed lambda_reg (static), see `MetamerConfig.margin_coefficient`.

Returns:
  ``hard``.
""")


def binary_features(soft: jax.Array, k, slope: float, threshold_hint=None, rho=None):
  """Straight-through binary features (eq. 8-9) with exactly ``k`` ones.

  With ``rho`` given (learned density), the surrogate is rescaled to that density,
  ``P~ = P * rho / stopgrad(mean(P))``, and ``X' = P~ + stopgrad(X'_hard - P~)``: the forward
  value is still the hard mask, and the loss gradient along "more ones everywhere" reaches rho
  (``dL/drho = sum_ij dL/dX'_ij P_ij / mean(P)``). ``p`` returned is always the plain P.

  Args:
    soft: ``[n, d]`` soft logits ``X'_soft``.
    k: number of ones (a static int, or a traced int32 scalar for a learned density).
    slope: sigmoid slope s.
    threshold_hint: previous step's threshold (warm start for the top-k), or ``None``.
    rho: optional traced density in (0, 1) (see above).

  Returns:
    ``(x, p, threshold)``: ``x`` ``[n, d]`` equal to the hard mask in value with P's gradient,
    ``p`` ``[n, d]`` the soft probabilities, ``threshold`` the k-th largest logit.
  """
  p = jax.nn.sigmoid(slope * soft)
  sel = topk_mask(soft, k, threshold_hint)
  hard = sel.mask.astype(p.dtype)
  surrogate = p if rho is None else p * (rho / jax.lax.stop_gradient(jnp.mean(p)))
  x = surrogate + jax.lax.stop_gradient(hard - surrogate)
  return x, p, sel.threshold


def hard_features(soft: jax.Array, aux: FeatureAux, feature_kind: str) -> jax.Array:
  """The final metamer features ``[n, d]`` from the optimised state.

  Continuous: ``relu(soft)``. Binary: the top ``round(aux.density * n d)`` entries of ``soft``
  (the last step's count, static or learned).
  """
  if feature_kind == "continuous":
    return jax.nn.relu(soft)
  k = jnp.round(aux.density * soft.size).astype(jnp.int32)
  return topk_mask(soft, k, aux.threshold).mask.astype(jnp.float32)


def margin(p: jax.Array) -> jax.Array:
  """``mean(P (1 - P))`` of eq. (10), without lambda."""
  return jnp.mean(p * (1.0 - p))


class FeatureData(NamedTuple):
  """Dynamic inputs of a feature-metamer run (a pytree)."""
  variables: dict       # the frozen model's variables
  graph: Graph          # the reference graph (structure kept, features X)
  h_ref: jax.Array      # [n, m] reference activation at the target layer (non-zero)


def feature_activation(model, layer: int, x: jax.Array, data: FeatureData) -> jax.Array:
  """``h^(layer)`` ``[n, m]`` of the frozen ``model`` on the reference graph with features ``x``."""
  return model.apply(data.variables, data.graph.with_features(x)).activations[layer - 1]


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """Static description of a feature-metamer run (hashable: a jit static argument).

  Attributes:
    model: the Flax module (`jmeta.models.create_model`).
    layer: target layer k (1-based).
    feature_kind: ``"binary"`` or ``"continuous"``.
    config: the `MetamerConfig`.
    rho_ref: reference density (fraction of non-zero features).
    size: ``n * d``.
  """
  model: Any
  layer: int
  feature_kind: str
  config: MetamerConfig
  rho_ref: float
  size: int

  @property
  def k(self) -> int:
    """Static number of ones of the hard mask at the reference density."""
    return num_active(self.rho_ref, self.size)

  def activation(self, x: jax.Array, data: FeatureData) -> jax.Array:
    """``h^(k)`` of the frozen model on features ``x: [n, d]``, ``[n, m]``."""
    return feature_activation(self.model, self.layer, x, data)

  def objective(self) -> Objective:
    return make_feature_objective(self)


def make_feature_objective(spec: FeatureSpec) -> Objective:
  """Builds the `Objective` of a feature metamer for `optimize`.

  Binary features with a fixed density split each step in two: ``select`` computes the exact
  top-k mask (non-differentiable, warm-started from the last threshold), ``loss`` applies the
  fused straight-through estimator to it. A learned density selects inside ``loss`` (``k``
  depends on the optimised rho); continuous features need no selection.

  Args:
    spec: the run's `FeatureSpec`.

  Returns:
    An `Objective` whose functions read a `FeatureData`.
  """
  config = spec.config
  rho_ref, size, k = spec.rho_ref, spec.size, spec.k
  no_mask = jnp.zeros((0, 0), bool)

  def act_loss(x, data):
    return jnp.sum((spec.activation(x, data) - data.h_ref) ** 2) / jnp.sum(data.h_ref ** 2)

  def soft_init(key, data):
    return {"soft": init_soft_features(key, data.graph.x, config.init_scale)}

  if spec.feature_kind == "continuous":
    def init_fn(key, data):
      return soft_init(key, data), FeatureAux(
          threshold=jnp.zeros((), jnp.float32), density=jnp.ones((), jnp.float32),
          mask=no_mask)

    def loss_fn(params, aux, data):
      x = jax.nn.relu(params["soft"])
      la = act_loss(x, data)
      return la, (la, aux._replace(density=jnp.mean(x > 0).astype(jnp.float32)))

    return Objective(init_fn, loss_fn, None, None)

  fixed = config.density == "fixed"

  def init_fn(key, data):
    params = soft_init(key, data)
    if not fixed:
      params["rho_logit"] = jnp.asarray(jax.scipy.special.logit(rho_ref), jnp.float32)
    shape = data.graph.x.shape
    return params, FeatureAux(threshold=jnp.full((), jnp.nan, jnp.float32),
                              density=jnp.full((), rho_ref, jnp.float32),
                              mask=jnp.zeros(shape, bool) if fixed else no_mask)

  if fixed:
    def select_fn(params, aux, data):
      del data
      sel = topk_mask(params["soft"], k, aux.threshold)
      return aux._replace(threshold=sel.threshold, mask=sel.mask)

    def loss_fn(params, aux, data):
      # The value is the hard mask; the margin (eq. 10) enters through the gradient only.
      x = straight_through(params["soft"], aux.mask.astype(params["soft"].dtype),
                           config.slope, config.margin_coefficient)
      la = act_loss(x, data)
      return la, (la, aux)

    return Objective(init_fn, loss_fn, select_fn, k)

  def loss_fn(params, aux, data):
    soft = params["soft"]
    rho = jax.nn.sigmoid(params["rho_logit"])
    kk = jnp.clip(jnp.round(jax.lax.stop_gradient(rho) * size), 1, size).astype(jnp.int32)
    x, p, thr = binary_features(soft, kk, config.slope, aux.threshold, rho=rho)
    density_pen = config.density_weight * ((rho - rho_ref) / rho_ref) ** 2
    la = act_loss(x, data)
    objective = la + config.margin_coefficient * margin(p) + density_pen
    return objective, (la, aux._replace(threshold=thr,
                                        density=kk.astype(jnp.float32) / size))

  return Objective(init_fn, loss_fn, None, None)
