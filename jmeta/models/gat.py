"""GAT (Velickovic et al., 2018) with PyG's ``GATConv`` and multiplicative edge weights.

Widths: a hidden layer has ``H = config.heads`` heads of ``C`` channels, concatenated, with
``C = hidden // H`` when ``H`` divides ``hidden`` (so ``hidden = 64, heads = 8`` is the paper's
8 x 8 and the activation width is ``hidden``) and ``C = hidden`` otherwise (width ``H * hidden``);
see `head_split`. The output layer has ``config.out_heads`` heads of ``num_classes`` channels,
averaged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmeta.models.dropout import Dropout
from jmeta.models.propagate import (Structure, attend, attention_logits, weighted_softmax,
                                    with_self_loops, without_self_loops)
from jmeta.models.stack import MessagePassingGNN, glorot

Array = jnp.ndarray


def head_split(hidden: int, heads: int) -> tuple[int, int]:
  """``(heads, channels)`` of a hidden GAT layer: ``channels = hidden // heads`` if it divides,
  else ``hidden``. Example: ``head_split(64, 8) == (8, 8)``, ``head_split(16, 3) == (3, 16)``."""
  return (heads, hidden // heads) if hidden % heads == 0 else (heads, hidden)


class GATConv(nn.Module):
  """Multi-head graph attention (PyG ``GATConv``).

  ``z_i = x_i W`` split into ``H`` heads of ``C`` channels;
  ``e_ij^h = LeakyReLU_0.2(a_src^h . z_i^h + a_dst^h . z_j^h)``;
  ``alpha_ij^h = w_ij exp(e_ij^h) / sum_k w_kj exp(e_kj^h)`` over the in-neighbours ``k`` of
  ``j`` including ``j`` itself (existing loops are dropped and loops of weight 1 added, as PyG);
  dropout on ``alpha`` in train mode; ``out_j^h = sum_i alpha_ij^h z_i^h``, heads concatenated
  (``concat``) or averaged, plus a bias.

  Edge weight: ``w_ij`` multiplies the unnormalised attention ``exp(e_ij)``. For binary weights
  this is exactly PyG's GAT on the edges of weight 1; it is differentiable in ``w`` and a weight
  of 0 removes the edge.

  Attributes:
    heads: ``H``. channels: ``C``. concat: concatenate (else average) heads.
    dropout: dropout rate on the attention coefficients.
    negative_slope: LeakyReLU slope (0.2).
  """

  heads: int
  channels: int
  concat: bool = True
  dropout: float = 0.0
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, x: Array, s: Structure, train: bool = False) -> Array:
    """``x: [n, d_in]`` -> ``[n, H * C]`` (concat) or ``[n, C]``."""
    n, hh, c = x.shape[0], self.heads, self.channels
    z = nn.Dense(hh * c, use_bias=False, kernel_init=glorot, name="lin")(x).reshape(n, hh, c)
    att_src = self.param("att_src", glorot, (1, hh, c))
    att_dst = self.param("att_dst", glorot, (1, hh, c))
    s = with_self_loops(without_self_loops(s), 1.0)
    logits = attention_logits(s, (z * att_src).sum(-1), (z * att_dst).sum(-1))
    alpha = weighted_softmax(s, jax.nn.leaky_relu(logits, self.negative_slope))
    alpha = Dropout(self.dropout, deterministic=not train)(alpha)
    out = attend(s, alpha, z)
    out = out.reshape(n, hh * c) if self.concat else out.mean(axis=1)
    width = hh * c if self.concat else c
    return out + self.param("bias", nn.initializers.zeros, (width,))


class GAT(MessagePassingGNN):
  """A stack of `GATConv` layers (widths in the module docstring)."""

  input_kernel = ("layer_0", "lin", "kernel")

  def hidden_width(self) -> int:
    h, c = head_split(self.config.hidden, self.config.heads)
    return h * c

  def make_conv(self, width: int, last: bool, name: str) -> nn.Module:
    cfg = self.config
    if last:
      return GATConv(cfg.out_heads, width, concat=False, dropout=cfg.dropout, name=name)
    h, c = head_split(cfg.hidden, cfg.heads)
    return GATConv(h, c, concat=True, dropout=cfg.dropout, name=name)
