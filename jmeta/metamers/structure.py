"""Structure metamers: the features are fixed, the adjacency is synthesised (Sec 3.4).

The optimised state is a soft matrix ``A'_soft`` ``[n, n]`` of which only the strict upper
triangle is used: the candidate pairs are the ``n (n - 1) / 2`` unordered node pairs, so the
synthesised graph is symmetric with no self loops by construction. ``P = sigmoid(s A'_soft)``
(eq. 11); the hard adjacency has ones on the top ``k`` pairs of P (``k`` = the reference's number
of undirected edges), mirrored to both directions; the model sees
``A' = P + stopgrad(A'_hard - P)`` (eq. 12) through its usual normalisation (the dense ``adj=``
path of the models).
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

# Score given to the lower triangle and the diagonal so that they are never selected.
_EXCLUDED = -3.0e38


class StructureAux(NamedTuple):
  threshold: jax.Array  # float32 scalar: k-th largest upper-triangle logit (warm start)
  density: jax.Array    # float32 scalar: fraction of selected pairs
  mask: jax.Array       # [n, n] bool: the selected pairs, both directions (symmetric)


def upper_mask(n: int) -> jax.Array:
  """``[n, n] bool``: True on the strict upper triangle (the candidate pairs)."""
  return jnp.triu(jnp.ones((n, n), bool), k=1)


def symmetrize_upper(m: jax.Array) -> jax.Array:
  """``triu(m, 1) + triu(m, 1)^T``: a symmetric matrix with zero diagonal, ``[n, n]``."""
  u = jnp.triu(m, k=1)
  return u + u.T


def init_soft_adjacency(key: jax.Array, n: int, init_scale: float = 1.0) -> jax.Array:
  """A random upper-triangular ``[n, n]`` soft adjacency (zero elsewhere)."""
  return jnp.triu(init_scale * jax.random.normal(key, (n, n), jnp.float32), k=1)


def binary_adjacency(soft: jax.Array, k: int, slope: float, threshold_hint=None):
  """Straight-through symmetric binary adjacency with exactly ``k`` undirected edges (eq. 11-12).

  Args:
    soft: ``[n, n]`` soft logits (only the strict upper triangle is read).
    k: number of undirected edges (static).
    slope: sigmoid slope s.
    threshold_hint: previous threshold or ``None``.

  Returns:
    ``(adj, p, threshold)``: ``adj`` ``[n, n]`` symmetric, zero diagonal, binary in value;
    ``p`` ``[n, n]`` symmetric soft probabilities (zero diagonal).
  """
  n = soft.shape[0]
  um = upper_mask(n)
  p = symmetrize_upper(jax.nn.sigmoid(slope * soft))
  scores = jnp.where(um, soft, _EXCLUDED)
  sel = topk_mask(scores, k, threshold_hint)
  hard_upper = sel.mask.astype(p.dtype)
  hard = hard_upper + hard_upper.T
  return p + jax.lax.stop_gradient(hard - p), p, sel.threshold


def _adjacency_surrogate_grad(soft, g, slope, margin_coef):
  n = soft.shape[0]
  pairs = n * (n - 1) // 2
  p = jax.nn.sigmoid(slope * soft)
  grad = slope * p * (1.0 - p) * (g + g.T + (margin_coef / pairs) * (1.0 - 2.0 * p))
  return jnp.where(upper_mask(n), grad, 0.0)


straight_through_adjacency = make_straight_through(_adjacency_surrogate_grad, """\
Fused straight-through adjacency of eq. (12) with the margin of eq. (10).

Value: ``hard`` (exactly binary and symmetric). Gradient with respect to ``soft``: that of
``triu(P) + triu(P)^T + stopgrad(hard - ...) + margin_coef * mean_{i<j} P_ij (1 - P_ij)`` with
``P = sigmoid(slope * soft)`` (`binary_adjacency` computes the same by autodiff), i.e. on the
strict upper triangle ``slope P (1 - P) (g_ij + g_ji + margin_coef (1 - 2 P) / pairs)`` and 0
elsewhere, in one pass. No gradient reaches ``hard``.

Args:
  soft: ``[n, n]`` logits (the strict upper triangle is used).
  hard: ``[n, n]`` symmetric 0/1 adjacency, zero diagonal (same dtype as soft).
  slope: sigmoid slope s (static).
  margin_coef: signed lambda_reg (static), see `MetamerConfig.margin_coefficient`.

Returns:
  ``hard``.
""")


def hard_adjacency(soft: jax.Array, k: int, threshold_hint=None) -> jax.Array:
  """The final binary symmetric adjacency ``[n, n]`` with ``k`` undirected edges."""
  n = soft.shape[0]
  scores = jnp.where(upper_mask(n), soft, _EXCLUDED)
  up = topk_mask(scores, k, threshold_hint).mask.astype(jnp.float32)
  return up + up.T


class StructureData(NamedTuple):
  """Dynamic inputs of a structure-metamer run (a pytree)."""
  variables: dict       # the frozen model's variables
  graph: Graph          # the reference graph (features kept)
  h_ref: jax.Array      # [n, m] reference activation at the target layer (non-zero)


@dataclasses.dataclass(frozen=True)
class StructureSpec:
  """Static description of a structure-metamer run (hashable: a jit static argument).

  Attributes:
    model: the Flax module (must support ``adj=``).
    layer: target layer k (1-based).
    config: the `MetamerConfig` (``density`` must be ``"fixed"``).
    num_nodes: n.
    num_edges: k, the number of undirected edges to select (the reference's).
  """
  model: Any
  layer: int
  config: MetamerConfig
  num_nodes: int
  num_edges: int

  def __post_init__(self):
    if self.config.density != "fixed":
      raise ValueError("structure metamers support MetamerConfig.density='fixed' only: the "
                       "number of edges is the reference's")
    pairs = self.num_nodes * (self.num_nodes - 1) // 2
    if not 0 < self.num_edges <= pairs:
      raise ValueError(f"number of undirected edges {self.num_edges} must be in [1, {pairs}]")

  def activation(self, adj: jax.Array, data: StructureData) -> jax.Array:
    """``h^(k)`` of the frozen model on the dense adjacency ``adj: [n, n]``, ``[n, m]``."""
    return self.model.apply(data.variables, data.graph, adj=adj).activations[self.layer - 1]

  def objective(self) -> Objective:
    return make_structure_objective(self)


def make_structure_objective(spec: StructureSpec) -> Objective:
  """Builds the `Objective` of a structure metamer for `optimize`.

  ``select`` computes the exact top-k pairs (non-differentiable, warm-started); ``loss`` applies
  the straight-through estimator of eq. (12) and the margin of eq. (10) over the candidate pairs,
  fused (`straight_through_adjacency`).

  Args:
    spec: the run's `StructureSpec`.

  Returns:
    An `Objective` whose functions read a `StructureData`.
  """
  config = spec.config
  n, k = spec.num_nodes, spec.num_edges
  pairs = n * (n - 1) // 2

  def init_fn(key, data):
    del data
    return init_soft_adjacency(key, n, config.init_scale), StructureAux(
        threshold=jnp.full((), jnp.nan, jnp.float32),
        density=jnp.asarray(k / pairs, jnp.float32), mask=jnp.zeros((n, n), bool))

  def select_fn(soft, aux, data):
    del data
    sel = topk_mask(jnp.where(upper_mask(n), soft, _EXCLUDED), k, aux.threshold)
    return aux._replace(threshold=sel.threshold, mask=sel.mask | sel.mask.T)

  def loss_fn(soft, aux, data):
    # The value is the hard adjacency; the margin (eq. 10) enters through the gradient only.
    adj = straight_through_adjacency(soft, aux.mask.astype(soft.dtype), config.slope,
                                     config.margin_coefficient)
    la = jnp.sum((spec.activation(adj, data) - data.h_ref) ** 2) / jnp.sum(data.h_ref ** 2)
    return la, (la, aux)

  return Objective(init_fn, loss_fn, select_fn, k)
