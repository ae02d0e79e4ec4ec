"""ChebNet (Defferrard et al., 2016) with PyG's ``ChebConv`` definition (``lambda_max = 2``)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jmeta.models.propagate import Structure, cheb_norm, chebyshev_series, propagate
from jmeta.models.stack import MessagePassingGNN, glorot, project_first

Array = jnp.ndarray


class ChebConv(nn.Module):
  """``out = sum_{k<K} T_k W_k + b`` with the Chebyshev recursion on ``L_hat`` (PyG ``ChebConv``).

  ``L_hat = 2 L / lambda_max - I = -D^-1/2 A D^-1/2`` (``L = I - D^-1/2 A D^-1/2``,
  ``lambda_max = 2``), ``T_0 = x``, ``T_1 = L_hat x``, ``T_k = 2 L_hat T_{k-1} - T_{k-2}``, where
  ``(L_hat x)_j = sum_i L_hat_ij x_i``. When ``features < d_in`` the terms are computed as
  ``T_k (x W_k)`` (`jmeta.models.propagate.chebyshev_series`), which propagates ``features``
  columns instead of ``d_in`` (`jmeta.models.stack.project_first`).

  Edge weight: ``w_ij`` is the entry ``A_ij``; self loops are ignored, ``d_i = sum_j w_ij``
  (weighted out-degree, as PyG's ``get_laplacian``; equal to the in-degree on symmetric graphs),
  and an isolated node has ``d^-1/2 = 0``. Differentiable in every ``w_ij``.

  Attributes:
    features: output width.
    k: number of terms ``K >= 1`` (``K = 1`` is a plain linear layer).
    project: multiply by the weights before aggregating (``None``: when that narrows,
      `jmeta.models.stack.project_first`); both orders give the same numbers up to rounding.
  """

  features: int
  k: int = 2
  project: Optional[bool] = None

  @nn.compact
  def __call__(self, x: Array, s: Structure, train: bool = False) -> Array:
    """``x: [n, d_in]`` -> ``[n, features]``."""
    del train
    lin = lambda i: nn.Dense(self.features, use_bias=False, kernel_init=glorot, name=f"lin_{i}")
    if project_first(x.shape[-1], self.features, self.project):  # sum_k T_k (x W_k)
      out = chebyshev_series(cheb_norm(s), [lin(i)(x) for i in range(self.k)])
    else:                                            # sum_k (T_k x) W_k
      out = lin(0)(x)
      if self.k > 1:
        lhat = cheb_norm(s)
        t_prev, t = x, propagate(lhat, x)
        out = out + lin(1)(t)
        for i in range(2, self.k):
          t_prev, t = t, 2.0 * propagate(lhat, t) - t_prev
          out = out + lin(i)(t)
    return out + self.param("bias", nn.initializers.zeros, (self.features,))


class ChebNet(MessagePassingGNN):
  """A stack of `ChebConv` layers with ``K = config.cheb_k`` terms."""

  input_kernel = ("layer_0", "lin_0", "kernel")

  def make_conv(self, width: int, last: bool, name: str) -> nn.Module:
    return ChebConv(width, self.config.cheb_k, name=name)
