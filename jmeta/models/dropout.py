"""Dropout that draws as few random bits as its rate needs.

Input dropout on a Cora-sized feature matrix (3.9 M entries; CiteSeer 12.3 M) dominates a
training step on CPU when each entry draws a 32-bit random word. `keep_mask` compares ``b``-bit
uniforms with ``round(rate * 2^b)``, using the fewest bits ``b`` in (1, 2, 4, 8, 16) for which
``rate * 2^b`` is an integer (rate 0.5: one bit per entry, 32 entries per random word), else
``max_bits``: the keep probability is then ``1 - round(rate * 2^b) / 2^b``, within
``2^-(b+1)`` of ``1 - rate`` (exact for the usual 0.5). The words come from XLA's
``RngBitGenerator`` (an ``rbg`` key derived deterministically from the given key), cheaper than
threefry on CPU. Kept entries are scaled by ``1 / keep`` (inverted dropout), so the expectation
is exact.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

_WIDTHS = (1, 2, 4, 8, 16)  # bit widths that divide a 32-bit word


def bits_for_rate(rate: float, max_bits: int = 16) -> int:
  """The fewest bits ``b`` (a divisor of 32, ``<= max_bits``) with ``rate * 2^b`` integral."""
  for b in _WIDTHS:
    if b <= max_bits and abs(rate * (1 << b) - round(rate * (1 << b))) < 1e-9:
      return b
  return max(b for b in _WIDTHS if b <= max_bits)


def keep_mask(key: jax.Array, shape: tuple, rate: float,
              max_bits: int = 16) -> tuple[jax.Array, float]:
  """A Bernoulli keep mask of ``shape`` and its exact keep probability.

  Args:
    key: PRNG key (any implementation).
    shape: the mask's shape.
    rate: drop probability in ``[0, 1)``.
    max_bits: the most random bits per entry (one of 1, 2, 4, 8, 16).

  Returns:
    ``(mask, keep)``: ``mask`` bool of ``shape``, ``keep`` the probability of ``True``.
  """
  size = math.prod(shape)
  b = bits_for_rate(rate, max_bits)
  per_word = 32 // b
  cut = int(round(rate * (1 << b)))
  rbg = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
  words = jax.random.bits(rbg, (-(-size // per_word),), jnp.uint32)
  shifts = jnp.arange(per_word, dtype=jnp.uint32) * b
  fields = (words[:, None] >> shifts[None, :]) & jnp.uint32((1 << b) - 1)
  return (fields.reshape(-1)[:size] >= cut).reshape(shape), 1.0 - cut / (1 << b)


class Dropout(nn.Module):
  """Inverted dropout (drop ``rate``), active when ``deterministic`` is False.

  Uses the ``"dropout"`` RNG stream, like `flax.linen.Dropout`.
  """

  rate: float
  deterministic: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    mask, keep = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))
