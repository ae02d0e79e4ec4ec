"""Exact global top-k masks, fast enough to run at every step of a metamer loop.

A feature metamer (eq. 8-9) needs, at every optimisation step, the binary mask with exactly ``k``
ones at the ``k`` largest entries of a logit matrix of several million entries. ``lax.top_k`` and
``jnp.sort`` cost far more than the rest of a step on CPU. `topk_mask` selects exactly, but
touches the whole array only about twice when it is given the previous step's threshold:

1. Values are mapped to order-preserving ``uint32`` keys (`order_keys`), so every comparison is an
   exact integer comparison and ties are well defined (``-0.0`` and ``+0.0`` are one value).
2. **Warm attempt** (a hint is given): one pass computes, per block of 32 consecutive entries, the
   key distance from the hint to the closest entry, and the number of entries ``>= hint``. The
   largest radius (on a geometric ladder, ratio ``2**(1/8)``) whose blocks and entries fit a
   static capacity is chosen; those blocks are gathered, the entries within the radius are
   compacted and sorted (key descending, flat index ascending), and the ``k``-th entry overall is
   read off directly if it lies within the radius.
3. **Cold attempt** (no hint, a NaN hint, or the warm attempt missed): the same, with a larger
   capacity, around a hint estimated from a strided sample of 65536 entries.
4. **Exact fallback** (both missed): bisection on the key bits narrows a bracket until it holds
   few entries, then the same gather-and-sort resolves it; if more entries than the capacity tie
   at the threshold itself, the cut among them is found by bisection on the flat index.

Every stage after the first runs inside a ``lax.while_loop`` of 0 or 1 trips, not a ``lax.cond``.
Under ``jax.vmap`` the search runs per batch member (a ``custom_vmap`` rule with ``lax.map``):
batched gathers and sorts are slower than one member at a time, and a member's fallback then
costs only that member. The mask itself is one elementwise pass (batched), which fuses into a
straight-through consumer.

Measured on the 2-core CPU of this project (``benchmarks/topk.py``, Cora-sized 2708 x 1433,
k = 1.27 %): warm ~9 ms, cold ~24 ms, ``lax.top_k`` ~63 ms, ``jnp.sort`` ~1.2 s.

Ties: among equal values the lower flat (row-major) index wins, exactly as a stable descending
argsort. Scores must not contain NaN (the result is then unspecified; still exactly ``k`` ones).
"""

from __future__ import annotations

import operator
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

BLOCK = 32  # entries per block of the candidate search
DEFAULT_CAPACITY = 4096  # blocks and entries gathered by a warm attempt
COLD_CAPACITY = 16384  # the same for the cold attempt and the exact fallback
SAMPLE_SIZE = 65536  # strided sample that estimates the threshold without a hint
_NBINS = 258  # distance ladder: bin 0 is distance 0, bins 1..257 cover [1, 2**32)
_SIGN = np.uint32(0x80000000)
_NEG_ZERO_KEY = np.uint32(0x7FFFFFFF)
_INT32_MAX = np.int32(np.iinfo(np.int32).max)


class TopK(NamedTuple):
  """The result of `topk_mask`.

  Attributes:
    mask: ``bool``, the shape of the scores, exactly ``k`` entries ``True``.
    threshold: ``float32`` scalar, the ``k``-th largest score (``+inf`` when ``k == 0``); pass it
      as ``threshold_hint`` to the next call on slightly changed scores.
  """

  mask: Array
  threshold: Array


class _Found(NamedTuple):
  key: Array  # uint32 key of the k-th largest entry
  index: Array  # int32 flat index of the k-th largest entry (the last one selected)
  ok: Array  # bool: key and index are exact


# -- order keys -----------------------------------------------------------------------------------


def order_keys(x: Array) -> Array:
  """Maps float32 values to ``uint32`` keys with the same order (``x <= y`` iff keys are).

  ``-0.0`` and ``+0.0`` get the same key; ``-inf``/``+inf`` are the smallest/largest non-NaN keys.

  Args:
    x: float32 array, any shape.

  Returns:
    ``uint32`` array of the same shape.
  """
  bits = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
  key = jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)
  return jnp.where(key == _NEG_ZERO_KEY, _SIGN, key)


def keys_to_float(key: Array) -> Array:
  """Inverse of `order_keys` (``-0.0`` comes back as ``+0.0``)."""
  bits = jnp.where(key >= _SIGN, key ^ _SIGN, ~key)
  return jax.lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.float32)


# -- helpers on the flat scores ------------------------------------------------------------------
# They all take the flat float32 scores ``x: [N]`` and compute the keys where they read them: the
# keys are then fused into each pass instead of being written out, and ``x`` is the only large
# array that the fallback loops capture (a derived array captured by a loop is copied).


def _pin(x: Array, state):
  """``x`` made to look dependent on a loop's ``state``.

  XLA hoists loop-invariant work out of while loops, so without this the keys of ``x`` (and
  more) would be computed, and written out, before every fallback loop even when it never runs.
  """
  return jax.lax.optimization_barrier((x, state))[0]


def _run_if(pred: Array, fn, x: Array, state):
  """``fn(x, state)`` if ``pred`` else ``state``: a while loop of 0 or 1 trips.

  Under ``vmap`` a ``lax.cond`` would run both branches; this loop runs only if some batch
  member needs it.
  """
  def body(carry):
    return jnp.zeros_like(carry[0]), fn(_pin(x, carry), carry[1])
  return jax.lax.while_loop(lambda carry: carry[0], body, (jnp.asarray(pred, bool), state))[1]


def _num_blocks(n: int) -> int:
  return -(-n // BLOCK)


def _split(x: Array):
  """``x: [N]`` -> full blocks ``[N // BLOCK, BLOCK]`` and the tail ``[N % BLOCK]``."""
  full = x.shape[0] // BLOCK
  return x[:full * BLOCK].reshape(full, BLOCK), x[full * BLOCK:]


def _count(x: Array, pred) -> Array:
  """Number of entries where ``pred(keys, flat_index)`` holds.

  Counted per block first, with an optimisation barrier so that XLA keeps the two reductions
  apart: on CPU the per-block reduction vectorises and the flat one does not (about 5x slower).
  """
  main, tail = _split(x)
  total = jnp.zeros((), jnp.int32)
  if main.shape[0]:
    shape = main.shape
    index = (jax.lax.broadcasted_iota(jnp.int32, shape, 0) * BLOCK
             + jax.lax.broadcasted_iota(jnp.int32, shape, 1))
    rows = jnp.sum(pred(order_keys(main), index), axis=1, dtype=jnp.int32)
    total = jnp.sum(jax.lax.optimization_barrier(rows))
  if tail.shape[0]:
    index = jnp.arange(main.size, x.shape[0], dtype=jnp.int32)
    total = total + jnp.sum(pred(order_keys(tail), index), dtype=jnp.int32)
  return total


def _count_ge(x: Array, t: Array) -> Array:
  """Number of entries whose key is ``>= t``."""
  return _count(x, lambda u, i: u >= t)


def _distance(u: Array, lo: Array, hi: Array) -> Array:
  """Key distance from ``u`` to the interval ``[lo, hi]`` (``uint32``, no overflow)."""
  zero = jnp.zeros((), jnp.uint32)
  return jnp.where(u < lo, lo - u, jnp.where(u > hi, u - hi, zero))


def _bin(d: Array) -> Array:
  """Monotone geometric bin of a ``uint32`` distance: 0 for 0, then 8 bins per octave."""
  f = d.astype(jnp.float32)
  b = jax.lax.shift_right_logical(jax.lax.bitcast_convert_type(f, jnp.int32), 20) - 1015
  return jnp.maximum(b, 0)


def _block_distance(x: Array, lo: Array, hi: Array) -> Array:
  """``[num_blocks]`` smallest key distance from each block's entries to ``[lo, hi]``."""
  main, tail = _split(x)
  parts = []
  if main.shape[0]:
    parts.append(jnp.min(_distance(order_keys(main), lo, hi), axis=1))
  if tail.shape[0]:
    parts.append(jnp.min(_distance(order_keys(tail), lo, hi), keepdims=True))
  return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def _gather_blocks(x: Array, ids: Array):
  """Blocks ``ids`` (``[C]``; ``num_blocks`` marks none) -> ``(keys, flat_index, valid)``."""
  n = x.shape[0]
  index = ids[:, None] * BLOCK + jnp.arange(BLOCK, dtype=jnp.int32)[None, :]
  valid = (ids < _num_blocks(n))[:, None] & (index < n)
  return order_keys(x[jnp.minimum(index, n - 1)]), index, valid


def _largest_fitting_bin(bins: Array, capacity: int) -> Array:
  """Largest ladder bin ``b`` with at most ``capacity`` of ``bins`` in ``[0, b]`` (-1 if none)."""
  cum = jnp.cumsum(jnp.bincount(bins.reshape(-1), length=_NBINS + 1)[:_NBINS])
  return jnp.sum(cum <= capacity, dtype=jnp.int32) - 1


def _attempt(x: Array, k: Array, lo: Array, hi: Array, capacity: int) -> _Found:
  """Finds the k-th largest entry if it lies near the key interval ``[lo, hi]``.

  The bracket is ``[lo - R, hi + R]`` for the largest ladder radius ``R`` whose blocks and
  entries fit ``capacity``; ``ok`` is False when the k-th entry lies outside it.
  """
  num_blocks = _num_blocks(x.shape[0])
  cap_blocks = min(capacity, num_blocks)
  cap = min(capacity, cap_blocks * BLOCK)
  # The one pass over all entries: block distances and the count at or above lo.
  block_bin = _bin(_block_distance(x, lo, hi))
  count_ge_lo = _count_ge(x, lo)
  radius_bin = _largest_fitting_bin(block_bin, cap_blocks)
  (ids,) = jnp.nonzero(block_bin <= radius_bin, size=cap_blocks, fill_value=num_blocks)
  keys, index, valid = _gather_blocks(x, ids.astype(jnp.int32))
  # Shrink the radius further if the gathered blocks hold too many entries within it.
  entry_bin = jnp.where(valid, _bin(_distance(keys, lo, hi)), _NBINS)
  radius_bin = jnp.minimum(radius_bin, _largest_fitting_bin(entry_bin, cap))
  inside = (entry_bin <= radius_bin).reshape(-1)
  keys, index = keys.reshape(-1), index.reshape(-1)
  num_inside = jnp.sum(inside, dtype=jnp.int32)
  count_above = count_ge_lo - jnp.sum(inside & (keys >= lo), dtype=jnp.int32)
  rank = k - count_above  # rank of the k-th entry among those inside, 1-based
  ok = (radius_bin >= 0) & (rank >= 1) & (rank <= num_inside)
  # Compact the entries inside (flat-index order is kept) and sort them by key, descending.
  (pos,) = jnp.nonzero(inside, size=cap, fill_value=0)
  live = jnp.arange(cap) < num_inside
  cand_key = jnp.where(live, keys[pos], jnp.uint32(0))
  cand_index = jnp.where(live, index[pos], _INT32_MAX)
  neg_key, cand_index = jax.lax.sort((~cand_key, cand_index), num_keys=1, is_stable=True)
  j = jnp.clip(rank - 1, 0, cap - 1)
  return _Found(~neg_key[j], cand_index[j], ok)


def _kth_largest_key(u: Array, k: Array) -> Array:
  """The ``k``-th largest of the keys ``u`` (``1 <= k <= len(u)``), 32 steps of bisection."""
  def step(i, t):
    u_ = _pin(u, t)
    cand = t | jax.lax.shift_left(jnp.uint32(1), (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(u_ >= cand, dtype=jnp.int32) >= k, cand, t)
  return jax.lax.fori_loop(0, 32, step, jnp.zeros((), jnp.uint32))


def _sample_hint(x: Array, k: Array) -> Array:
  """Estimates the k-th largest key from a strided sample of `SAMPLE_SIZE` entries."""
  n = x.shape[0]
  s = min(n, SAMPLE_SIZE)
  sample = order_keys(x[::n // s][:s])
  ks = jnp.clip(jnp.round(k.astype(jnp.float32) * (s / n)), 1, s).astype(jnp.int32)
  return _kth_largest_key(sample, ks)


def _narrow(x: Array, k: Array, target: int):
  """Bitwise bisection until ``[lo, hi]`` holds the k-th largest and at most ``target`` entries.

  Stops earlier only when ``lo == hi`` (more than ``target`` entries tie at the threshold).
  """
  n = x.shape[0]

  def cond(s):
    _, bit, c_lo, c_hi = s
    return (c_lo - c_hi > target) & (bit > 0)

  def body(s):
    t, bit, c_lo, c_hi = s
    bit = bit - 1
    cand = t | jax.lax.shift_left(jnp.uint32(1), bit.astype(jnp.uint32))
    c = _count_ge(_pin(x, s), cand)
    take = c >= k
    return (jnp.where(take, cand, t), bit, jnp.where(take, c, c_lo), jnp.where(take, c_hi, c))

  init = (jnp.zeros((), jnp.uint32), jnp.int32(32), jnp.int32(n), jnp.int32(0))
  lo, bit, _, _ = jax.lax.while_loop(cond, body, init)
  span = jnp.where(bit >= 32, jnp.uint32(0xFFFFFFFF),
                   jax.lax.shift_left(jnp.uint32(1), jnp.minimum(bit, 31).astype(jnp.uint32))
                   - jnp.uint32(1))
  return lo, lo | span


def _tie_cut(x: Array, k: Array, t: Array) -> Array:
  """Flat index of the last selected entry among those equal to ``t`` (bisection on index)."""
  need = k - _count(x, lambda u, i: u > t)

  def body(s):
    lo, hi = s
    mid = lo + (hi - lo) // 2
    enough = _count(_pin(x, s), lambda u, i: (u == t) & (i < mid)) >= need
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  lo, _ = jax.lax.while_loop(lambda s: s[0] < s[1], body, (jnp.int32(1), jnp.int32(x.shape[0])))
  return lo - 1


def _search(x: Array, k: Array, hint: Array, has_hint: bool, capacity: int,
            cold_capacity: int):
  """``(key, flat index)`` of the k-th largest entry of ``x: [N]`` (the stages of the docstring)."""
  n = x.shape[0]

  def cold(x, _):
    h = _sample_hint(x, k)
    return _attempt(x, k, h, h, cold_capacity)

  def exact(x, _):
    target = max(1, min(cold_capacity, _num_blocks(n)) // 2)
    lo, hi = _narrow(x, k, target)
    g = _attempt(x, k, lo, hi, cold_capacity)
    return _Found(jnp.where(g.ok, g.key, lo), g.index, g.ok)  # on failure lo == hi == t

  def ties(x, f):
    return _Found(f.key, _tie_cut(x, k, f.key), jnp.ones((), bool))

  if has_hint:
    # Run directly, not inside a loop, where XLA CPU compiles it slower. A NaN hint maps to a
    # key above +inf, and the attempt then fails unless k is small.
    h = order_keys(hint)
    found = _attempt(x, k, h, h, capacity)
    found = _run_if(~found.ok, cold, x, found)
  else:
    found = cold(x, None)
  found = _run_if(~found.ok, exact, x, found)
  found = _run_if(~found.ok, ties, x, found)
  return found.key, found.index


def _make_search(has_hint: bool, capacity: int, cold_capacity: int):
  """`_search` for one configuration; under ``vmap`` it runs per batch member (``lax.map``).

  Batched, the search's gathers, compactions and sorts are slower than one member at a time, and
  its fallback loops would run for the whole batch whenever one member needs them.
  """
  @jax.custom_batching.custom_vmap
  def search(x, k, hint):
    return _search(x, k, hint, has_hint, capacity, cold_capacity)

  @search.def_vmap
  def rule(axis_size, in_batched, x, k, hint):
    args = (x, k, hint)

    def one(batched_args):
      it = iter(batched_args)
      full = [next(it) if b else a for a, b in zip(args, in_batched)]
      return search(*full)

    out = jax.lax.map(one, tuple(a for a, b in zip(args, in_batched) if b))
    return out, (True, True)

  return search


def _check_k(k, n: int) -> Union[int, Array]:
  """A Python int is validated (static); a JAX integer scalar is clipped to ``[0, n]``."""
  if isinstance(k, jax.Array):
    if k.ndim != 0 or not jnp.issubdtype(k.dtype, jnp.integer):
      raise ValueError(f"topk_mask: an array k must be an integer scalar, got {k.dtype}{k.shape}")
    return jnp.clip(k.astype(jnp.int32), 0, n)
  try:
    k = operator.index(k)
  except TypeError:
    raise ValueError(f"topk_mask: k must be an int, got {k!r}") from None
  if not 0 <= k <= n:
    raise ValueError(f"topk_mask: k={k} is outside [0, {n}] (the number of scores)")
  return k


def topk_mask(scores: Array, k: Union[int, Array], threshold_hint: Optional[Array] = None, *,
              capacity: int = DEFAULT_CAPACITY, cold_capacity: int = COLD_CAPACITY) -> TopK:
  """Exact mask of the ``k`` largest scores (the hard top-k of eq. 8 and 11).

  Selecting on the logits is equivalent to selecting on ``sigmoid(s * logits)`` for ``s > 0``
  except where the sigmoid rounds distinct logits to equal probabilities.

  Args:
    scores: ``[...]`` float (cast to float32), no NaN.
    k: number of ones; a Python int in ``[0, N]`` (``N = scores.size``; static, validated), or a
      traced integer scalar (clipped to ``[0, N]``).
    threshold_hint: float32 scalar, typically the previous call's ``threshold``; ``None`` or NaN
      for none. Any value gives the exact result; a close one makes the call fast.
    capacity: candidate blocks and entries of the warm attempt (static).
    cold_capacity: the same for the cold attempt and the exact fallback (static).

  Returns:
    `TopK`: ``mask`` (bool, shape of ``scores``, exactly ``k`` True; among equal values the lower
    flat index is selected first) and ``threshold`` (the ``k``-th largest score).

  Raises:
    ValueError: ``k`` outside ``[0, N]`` or not an integer, or a capacity below 1.

  Example:
    >>> sel = topk_mask(logits, k)                         # first step
    >>> sel = topk_mask(new_logits, k, sel.threshold)      # later steps: warm start
  """
  scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    raise ValueError(f"topk_mask: scores must be floating point, got {scores.dtype}")
  if capacity < 1 or cold_capacity < 1:
    raise ValueError(f"topk_mask: capacities must be >= 1, got {capacity}, {cold_capacity}")
  shape, n = scores.shape, scores.size
  if n >= 2**31 - 2 * BLOCK:
    raise ValueError(f"topk_mask: {n} scores exceed the int32 index range")
  k = _check_k(k, n)
  flat = scores.reshape(-1).astype(jnp.float32)
  if isinstance(k, int) and k == 0:
    return TopK(jnp.zeros(shape, bool), jnp.full((), jnp.inf, jnp.float32))
  if isinstance(k, int) and k == n:
    return TopK(jnp.ones(shape, bool), jnp.min(flat))
  k_arr = jnp.asarray(max(k, 1) if isinstance(k, int) else jnp.maximum(k, 1), jnp.int32)
  if threshold_hint is None:
    hint = jnp.full((), jnp.nan, jnp.float32)
  else:
    hint = jnp.asarray(threshold_hint, jnp.float32)
    if hint.shape != ():
      raise ValueError(f"topk_mask: threshold_hint must be a scalar, got shape {hint.shape}")
  search = _make_search(threshold_hint is not None, capacity, cold_capacity)
  # The mask carries no gradient: the search sees constants, whatever transformation is outside.
  key, index = search(jax.lax.stop_gradient(flat), k_arr, jax.lax.stop_gradient(hint))
  found = _Found(key, index, jnp.ones((), bool))

  u = order_keys(flat)
  iota = jnp.arange(n, dtype=jnp.int32)
  mask = (u > found.key) | ((u == found.key) & (iota <= found.index))
  threshold = keys_to_float(found.key)
  if not isinstance(k, int):
    mask = mask & (k > 0)
    threshold = jnp.where(k > 0, threshold, jnp.inf)
  return TopK(mask.reshape(shape), threshold)
