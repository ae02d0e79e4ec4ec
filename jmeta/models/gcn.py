"""GCN (Kipf & Welling, 2017) with PyG's ``GCNConv`` definition and explicit edge weights."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jmeta.models.propagate import Structure, gcn_norm, propagate
from jmeta.models.stack import MessagePassingGNN, glorot

Array = jnp.ndarray


class GCNConv(nn.Module):
  """``out = D^-1/2 (A + I) D^-1/2 (x W) + b`` (PyG ``GCNConv``).

  Edge weight: ``w_ij`` is the entry ``A_ij`` of the adjacency that is normalised; degrees are
  weighted in-degrees of ``A + I`` (self loops of weight 1), so
  ``out_j = sum_i w_ij / sqrt(d_i d_j) (x_i W) + x_j W / d_j + b`` with
  ``d_j = 1 + sum_i w_ij``. The output is differentiable in every ``w_ij``.

  Attributes:
    features: output width.
  """

  features: int

  @nn.compact
  def __call__(self, x: Array, s: Structure, train: bool = False) -> Array:
    """``x: [n, d_in]`` -> ``[n, features]``."""
    del train
    h = nn.Dense(self.features, use_bias=False, kernel_init=glorot, name="lin")(x)
    h = propagate(gcn_norm(s), h)
    return h + self.param("bias", nn.initializers.zeros, (self.features,))


class GCN(MessagePassingGNN):
  """A stack of `GCNConv` layers (see `jmeta.models.stack`)."""

  input_kernel = ("layer_0", "lin", "kernel")

  def make_conv(self, width: int, last: bool, name: str) -> nn.Module:
    return GCNConv(width, name=name)
