"""GIN (Xu et al., 2019) with PyG's ``GINConv`` and a two-layer MLP (no batch norm)."""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmeta.models.propagate import Structure, propagate
from jmeta.models.stack import (DenseParams, MessagePassingGNN, activation_fn, project_first,
                                torch_linear)

Array = jnp.ndarray


class GINConv(nn.Module):
  """``out_j = MLP((1 + eps) x_j + sum_{i -> j} w_ij x_i)`` (PyG ``GINConv``, fixed ``eps``).

  ``MLP = Dense(hidden) -> act -> Dense(features)`` (both with bias, no batch norm), with the
  model's activation. Edge weight: ``w_ij`` multiplies the neighbour's features in the sum
  (PyG's sum for binary weights); differentiable in ``w``. When ``hidden < d_in`` the sum is
  taken of ``x W_0`` (`jmeta.models.stack.project_first`).

  Attributes:
    features: output width.
    hidden: width of the MLP's hidden layer.
    eps: the fixed ``eps``.
    activation: the MLP's nonlinearity.
    project: multiply by the weights before aggregating (``None``: when that narrows,
      `jmeta.models.stack.project_first`); both orders give the same numbers up to rounding.
  """

  features: int
  hidden: int
  eps: float = 0.0
  activation: Callable[[Array], Array] = jax.nn.relu
  project: Optional[bool] = None

  @nn.compact
  def __call__(self, x: Array, s: Structure, train: bool = False) -> Array:
    """``x: [n, d_in]`` -> ``[n, features]``."""
    del train
    d_in = x.shape[-1]
    kernel, bias = DenseParams(self.hidden, kernel_init=torch_linear, name="mlp_0")(d_in)
    if project_first(d_in, self.hidden, self.project):  # ((1+eps) x + A^T x) W, from x W
      y = x @ kernel
      h = (1.0 + self.eps) * y + propagate(s, y)
    else:
      h = ((1.0 + self.eps) * x + propagate(s, x)) @ kernel
    h = self.activation(h + bias)
    return nn.Dense(self.features, kernel_init=torch_linear, name="mlp_1")(h)


class GIN(MessagePassingGNN):
  """A stack of `GINConv` layers; each MLP's hidden width is ``config.hidden``."""

  input_kernel = ("layer_0", "mlp_0", "kernel")

  def make_conv(self, width: int, last: bool, name: str) -> nn.Module:
    cfg = self.config
    return GINConv(width, cfg.hidden, cfg.gin_eps, activation_fn(cfg.activation), name=name)
