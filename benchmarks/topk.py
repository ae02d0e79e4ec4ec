"""Speed of the exact global top-k mask of `jmeta.metamers.topk` against the alternatives.

Times, under ``jax.jit`` and after compilation, one call that turns a float32 score vector of
``N`` entries into a mask of its ``k = round(density * N)`` largest entries:

* ``lax.top_k``: ``lax.top_k`` then a scatter into a boolean mask (exact).
* ``sort``: ``jnp.sort`` then a compare with the ``k``-th value (ties not resolved).
* ``bisection``: 32 passes of bitwise bisection on the order keys, then a compare (ties not
  resolved).
* ``ours cold``: `topk_mask` without a hint.
* ``ours warm``: `topk_mask` hinted with the threshold of the previous scores, where the current
  scores are the previous ones plus N(0, noise^2) on every entry (an Adam step at lr 5e-4 moves
  each logit by about that much).
* ``ours warm vmap x8``: the warm call vmapped over 8 seeds, time per seed.

Scores mimic feature-metamer logits (mean 0.0127, std 0.1) shaped like the feature matrices:
Cora 2708x1433 (3.9M) and CiteSeer 3327x3703 (12.3M) by default; ``--sizes`` takes ``NxD`` or a
plain count ``N``. The last line printed is one JSON object with every figure.

    python benchmarks/topk.py [--sizes 2708x1433 3327x3703] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.metamers.topk import order_keys, topk_mask



def _shape(text: str) -> tuple:
  return tuple(int(v) for v in text.lower().split("x"))


def _time(fn, *args, repeats: int) -> float:
  """Median wall time in ms of ``fn(*args)`` after one warm-up (compilation) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def _lax_top_k(s, k):
  _, idx = jax.lax.top_k(s.reshape(-1), k)
  return jnp.zeros(s.size, bool).at[idx].set(True).reshape(s.shape)


def _sort(s, k):
  return s >= jnp.sort(s.reshape(-1))[s.size - k]


def _bisection(s, k):
  u = order_keys(s)

  def step(i, x):
    cand = x | jax.lax.shift_left(jnp.uint32(1), (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(u >= cand, dtype=jnp.int32) >= k, cand, x)

  return u >= jax.lax.fori_loop(0, 32, step, jnp.zeros((), jnp.uint32))


def bench_size(shape: tuple, density: float, noise: float, repeats: int, seeds: int) -> dict:
  n = int(np.prod(shape))
  k = int(round(density * n))
  key0, key1 = jax.random.split(jax.random.PRNGKey(0))
  prev = 0.0127 + 0.1 * jax.random.normal(key0, (seeds, *shape), jnp.float32)
  cur = prev + noise * jax.random.normal(key1, (seeds, *shape), jnp.float32)
  hints = jax.vmap(lambda s: topk_mask(s, k).threshold)(prev)
  s, h = cur[0], hints[0]
  ours = jax.jit(lambda s, h: topk_mask(s, k, h))
  ours_cold = jax.jit(lambda s: topk_mask(s, k))
  ours_vmap = jax.jit(jax.vmap(lambda s, h: topk_mask(s, k, h)))
  # The figures are only worth printing if the fast path is exact.
  ref = np.asarray(jax.jit(_lax_top_k, static_argnums=1)(s, k))
  assert np.array_equal(np.asarray(ours(s, h).mask), ref), "warm top-k mask is not exact"
  assert np.array_equal(np.asarray(ours_cold(s).mask), ref), "cold top-k mask is not exact"
  res = {"n": n, "shape": "x".join(map(str, shape)), "k": k}
  res["lax_top_k"] = _time(jax.jit(_lax_top_k, static_argnums=1), s, k, repeats=repeats)
  res["sort"] = _time(jax.jit(_sort, static_argnums=1), s, k, repeats=max(1, repeats // 2))
  res["bisection"] = _time(jax.jit(_bisection, static_argnums=1), s, k, repeats=repeats)
  res["ours_cold"] = _time(ours_cold, s, repeats=repeats)
  res["ours_warm"] = _time(ours, s, h, repeats=repeats)
  res[f"ours_warm_vmap{seeds}_per_seed"] = _time(ours_vmap, cur, hints, repeats=repeats) / seeds
  res["speedup_warm_vs_lax_top_k"] = res["lax_top_k"] / res["ours_warm"]
  return res


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=_shape, nargs="+", default=[(2708, 1433), (3327, 3703)],
                      help="score shapes, NxD or N")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--density", type=float, default=0.0127, help="k / N (Cora: 0.0127)")
  parser.add_argument("--noise", type=float, default=5e-4, help="std of the step perturbation")
  parser.add_argument("--seeds", type=int, default=8, help="batch of the vmapped timing")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; ms per call, median of "
        f"{args.repeats}; density {args.density}, noise {args.noise}")
  results = [bench_size(n, args.density, args.noise, args.repeats, args.seeds)
             for n in args.sizes]
  cols = [c for c in results[0] if c not in ("n", "shape", "k")]
  print(f"{'N':>10} {'k':>8} " + " ".join(f"{c:>28}" for c in cols))
  for r in results:
    print(f"{r['n']:>10} {r['k']:>8} " + " ".join(f"{r[c]:>28.2f}" for c in cols))
  print(json.dumps({"benchmark": "topk", "device": jax.devices()[0].device_kind,
                    "repeats": args.repeats, "density": args.density, "noise": args.noise,
                    "results": results}))


if __name__ == "__main__":
  main()
