"""GraphSAGE (Hamilton et al., 2017) with PyG's ``SAGEConv`` (mean aggregation + root weight)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jmeta.models.propagate import Structure, mean_aggregate
from jmeta.models.stack import DenseParams, MessagePassingGNN, project_first, torch_linear

Array = jnp.ndarray


class SAGEConv(nn.Module):
  """``out_j = W_l mean_{i -> j} x_i + b + W_r x_j`` (PyG ``SAGEConv``, ``aggr="mean"``).

  Edge weight: the mean is weighted, ``sum_i w_ij x_i / sum_i w_ij`` (0 for a node without
  incoming weight), which is PyG's mean for binary weights and differentiable in ``w``.
  ``lin_l`` has the bias, ``lin_r`` (root weight) has none. When ``features < d_in`` the mean
  is taken of ``x W_l`` (`jmeta.models.stack.project_first`).

  Attributes:
    features: output width.
    project: multiply by the weights before aggregating (``None``: when that narrows,
      `jmeta.models.stack.project_first`); both orders give the same numbers up to rounding.
  """

  features: int
  project: Optional[bool] = None

  @nn.compact
  def __call__(self, x: Array, s: Structure, train: bool = False) -> Array:
    """``x: [n, d_in]`` -> ``[n, features]``."""
    del train
    d_in, f = x.shape[-1], self.features
    k_l, b_l = DenseParams(f, kernel_init=torch_linear, name="lin_l")(d_in)
    k_r, _ = DenseParams(f, use_bias=False, kernel_init=torch_linear, name="lin_r")(d_in)
    if project_first(d_in, f, self.project):  # mean(x W_l) + x W_r: one product
      xw = x @ jnp.concatenate([k_l, k_r], axis=1)
      return mean_aggregate(s, xw[:, :f]) + b_l + xw[:, f:]
    return mean_aggregate(s, x) @ k_l + b_l + x @ k_r


class GraphSAGE(MessagePassingGNN):
  """A stack of `SAGEConv` layers."""

  input_kernel = ("layer_0", "lin_l", "kernel")

  def make_conv(self, width: int, last: bool, name: str) -> nn.Module:
    return SAGEConv(width, name=name)
