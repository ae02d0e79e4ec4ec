"""Layer-1 cost of ChebNet, GraphSAGE and GIN: projecting before aggregating against after.

A first layer ``A x W`` (``x: [n, d]`` wide input features, ``W: [d, 16]``) gives the same
numbers as ``(A x) W`` and ``A (x W)``; the second moves 16 columns through the edges instead of
``d`` (`jmeta.models.stack.project_first`, the layers' default when it narrows). This times, in
one process and after compilation, the jitted value-and-gradient with respect to ``x`` of
``|conv(x) - h_ref|^2`` (what a layer-1 feature metamer differentiates every step), vmapped over
``--seeds`` copies of ``x``, for both orders (the layers' ``project`` attribute), and checks that
they agree.

Usage: python benchmarks/layer_order.py [--datasets cora squirrel] [--models cheb sage gin]
       [--seeds 5] [--repeats 5] [--data-dir DIR]
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import data
from jmeta.models import ChebConv, GINConv, SAGEConv
from jmeta.models.stack import model_inputs

HIDDEN = 16


def make_conv(name: str, project: bool):
  """The first layer of ``name`` (width 16, as `jmeta.runs.MODEL_DEFAULTS`) in one order."""
  if name == "cheb":
    return ChebConv(HIDDEN, 2, project=project)
  if name == "sage":
    return SAGEConv(HIDDEN, project=project)
  if name == "gin":
    return GINConv(HIDDEN, HIDDEN, project=project)
  raise ValueError(f"unknown model {name!r}; expected cheb, sage or gin")


def seconds_per_call(fn, *args, repeats: int) -> float:
  """Median wall seconds of ``fn(*args)`` after one compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def time_orders(name: str, graph, seeds: int, repeats: int) -> dict:
  """Seconds per vmapped value-and-grad step for both orders, and their largest difference."""
  x, s = model_inputs(graph, None)
  xs = jnp.stack([x] * seeds)
  variables = make_conv(name, True).init(jax.random.key(0), x, s)
  ref = make_conv(name, True).apply(variables, x, s)
  out, grads = {}, {}
  for project in (True, False):
    conv = make_conv(name, project)
    loss = lambda xi, v, st, r: jnp.sum((conv.apply(v, xi, st) - r) ** 2)
    # Graph and parameters are arguments, not constants that XLA would fold at compile time.
    step = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(0, None, None, None)))
    args_ = (xs + 0.01, variables, s, ref)
    out[project] = seconds_per_call(step, *args_, repeats=repeats)
    grads[project] = np.asarray(step(*args_)[1][0])
  scale = float(np.abs(grads[False]).max())
  return {"model": name, "dataset": graph.name, "n": int(x.shape[0]), "d": int(x.shape[1]),
          "edges": int(s.senders.shape[0]), "seeds": seeds,
          "project_first_s": out[True], "aggregate_first_s": out[False],
          "speedup": out[False] / out[True],
          "grad_max_rel_diff": float(np.abs(grads[True] - grads[False]).max() / scale)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--datasets", nargs="+", default=["cora", "squirrel"])
  ap.add_argument("--models", nargs="+", default=["cheb", "sage", "gin"])
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--data-dir", default=None)
  args = ap.parse_args()
  for name in args.models:
    make_conv(name, True)                                 # unknown names fail before loading

  rows = []
  print("| model | dataset | n x d | edges | aggregate first s | project first s | speedup | "
        "grad rel diff |")
  print("|---|---|---|---|---|---|---|---|")
  for ds in args.datasets:
    graph = data.load(ds, data_dir=args.data_dir)
    for name in args.models:
      r = time_orders(name, graph, args.seeds, args.repeats)
      rows.append(r)
      print(f"| {name} | {ds} | {r['n']} x {r['d']} | {r['edges']} | "
            f"{r['aggregate_first_s']:.3f} | {r['project_first_s']:.3f} | {r['speedup']:.1f}x | "
            f"{r['grad_max_rel_diff']:.1e} |", flush=True)
  print(json.dumps({"seeds": args.seeds, "hidden": HIDDEN, "rows": rows}))


if __name__ == "__main__":
  main()
