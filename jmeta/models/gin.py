"""GIN (Xu et al., 2019) with PyG's ``GINConv`` and a two-layer MLP (no batch norm)."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmeta.models.propagate import Structure, propagate
from jmeta.models.stack import MessagePassingGNN, activation_fn, torch_linear

Array = jnp.ndarray


class GINConv(nn.Module):
  """``out_j = MLP((1 + eps) x_j + sum_{i -> j} w_ij x_i)`` (PyG ``GINConv``, fixed ``eps``).

  ``MLP = Dense(hidden) -> act -> Dense(features)`` (both with bias, no batch norm), with the
  model's activation. Edge weight: ``w_ij`` multiplies the neighbour's features in the sum
  (PyG's sum for binary weights); differentiable in ``w``.

  Attributes:
    features: output width.
    hidden: width of the MLP's hidden layer.
    eps: the fixed ``eps``.
    activation: the MLP's nonlinearity.
  """

  features: int
  hidden: int
  eps: float = 0.0
  activation: Callable[[Array], Array] = jax.nn.relu

  @nn.compact
  def __call__(self, x: Array, s: Structure, train: bool = False) -> Array:
    """``x: [n, d_in]`` -> ``[n, features]``."""
    del train
    h = (1.0 + self.eps) * x + propagate(s, x)
    h = self.activation(nn.Dense(self.hidden, kernel_init=torch_linear, name="mlp_0")(h))
    return nn.Dense(self.features, kernel_init=torch_linear, name="mlp_1")(h)


class GIN(MessagePassingGNN):
  """A stack of `GINConv` layers; each MLP's hidden width is ``config.hidden``."""

  input_kernel = ("layer_0", "mlp_0", "kernel")

  def make_conv(self, width: int, last: bool, name: str) -> nn.Module:
    cfg = self.config
    return GINConv(width, cfg.hidden, cfg.gin_eps, activation_fn(cfg.activation), name=name)
