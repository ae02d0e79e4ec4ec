"""The straight-through estimator shared by feature and structure metamers (eq. 9, 12).

``P + stopgrad(hard - P)`` has the value ``hard`` and the gradient of ``P``. Written out, autodiff
keeps ``P`` and the sum alive in the forward pass and reads them again in the backward pass;
`make_straight_through` builds a custom-vjp function whose value is ``hard`` itself (exactly
binary, no rounding) and whose backward pass recomputes the surrogate's gradient in one
elementwise pass from the saved logits.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

# surrogate_grad(soft, g, slope, margin_coef) -> d objective / d soft, same shape as soft.
SurrogateGrad = Callable[[jax.Array, jax.Array, float, float], jax.Array]


def make_straight_through(surrogate_grad: SurrogateGrad, doc: str = "") -> Callable:
  """Builds ``f(soft, hard, slope, margin_coef) -> hard`` with the gradient ``surrogate_grad``.

  Args:
    surrogate_grad: given the logits ``soft``, the cotangent ``g`` of the output (shape of
      ``hard``), the sigmoid slope and the signed margin coefficient (both static), returns the
      gradient with respect to ``soft``.
    doc: the docstring of the returned function.

  Returns:
    A `jax.custom_vjp` function; ``slope`` and ``margin_coef`` are non-differentiable (static)
    arguments and no gradient reaches ``hard``.
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def straight_through(soft, hard, slope, margin_coef):
    del soft, slope, margin_coef
    return hard

  def fwd(soft, hard, slope, margin_coef):
    del slope, margin_coef
    return hard, soft

  def bwd(slope, margin_coef, soft, g):
    return surrogate_grad(soft, g, slope, margin_coef), None

  straight_through.defvjp(fwd, bwd)
  straight_through.__doc__ = doc
  return straight_through
