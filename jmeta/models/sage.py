"""GraphSAGE (Hamilton et al., 2017) with PyG's ``SAGEConv`` (mean aggregation + root weight)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jmeta.models.propagate import Structure, mean_aggregate
from jmeta.models.stack import MessagePassingGNN, torch_linear

Array = jnp.ndarray


class SAGEConv(nn.Module):
  """``out_j = W_l mean_{i -> j} x_i + b + W_r x_j`` (PyG ``SAGEConv``, ``aggr="mean"``).

  Edge weight: the mean is weighted, ``sum_i w_ij x_i / sum_i w_ij`` (0 for a node without
  incoming weight), which is PyG's mean for binary weights and differentiable in ``w``.
  ``lin_l`` has the bias, ``lin_r`` (root weight) has none.

  Attributes:
    features: output width.
  """

  features: int

  @nn.compact
  def __call__(self, x: Array, s: Structure, train: bool = False) -> Array:
    """``x: [n, d_in]`` -> ``[n, features]``."""
    del train
    agg = mean_aggregate(s, x)
    out = nn.Dense(self.features, kernel_init=torch_linear, name="lin_l")(agg)
    return out + nn.Dense(self.features, use_bias=False, kernel_init=torch_linear,
                          name="lin_r")(x)


class GraphSAGE(MessagePassingGNN):
  """A stack of `SAGEConv` layers."""

  input_kernel = ("layer_0", "lin_l", "kernel")

  def make_conv(self, width: int, last: bool, name: str) -> nn.Module:
    return SAGEConv(width, name=name)
