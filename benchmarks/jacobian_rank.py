"""Times per-node layer-1 Jacobians and their ranks on Cora; the last line is one JSON object.

Models are untrained (random init, seed 0): the cost does not depend on the weights. For each
model and mode the script reports, after compilation (compile time separately, as the first
call minus a warm call):

* ``jacobian_s``: all ``m x d'`` Jacobians materialised (`jmeta.jacobian.node_jacobians`);
* ``rank_s``: all ranks (`node_ranks`, ``method="factored"``: the Jacobian's inner factor
  ``Dg`` (``m x p``) and the SVDs of ``Dg R^T``, without materialising the full Jacobians);
* ``rank_svd_s`` (``--svd``): ranks by SVD of the materialised Jacobians (slow: ~100 s for GAT);
* ``loop_s``: a sequential Python loop over ``--loop-nodes`` nodes calling a jitted one-node
  Jacobian + rank, extrapolated to all nodes, and ``speedup`` = loop_s / rank_s.

Usage:
  python benchmarks/jacobian_rank.py [--models gcn gat] [--nodes N] [--modes auto jacrev jacfwd]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def timed(fn, repeat: int = 2):
  """``(first_call_s, best_warm_s, result)``; outputs are blocked on."""
  import jax
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  best = float("inf")
  for _ in range(repeat):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return first, best, out


def main(argv=None) -> None:
  repo = Path(__file__).resolve().parents[1]
  os.environ.setdefault("JMETA_DATA", str(repo.parent / "shared" / "datasets"))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["gcn", "gat"])
  parser.add_argument("--nodes", type=int, default=None, help="first N nodes (default all)")
  parser.add_argument("--modes", nargs="+", default=["auto", "jacrev", "jacfwd"])
  parser.add_argument("--dataset", default="cora")
  parser.add_argument("--loop-nodes", type=int, default=100)
  parser.add_argument("--chunk", type=int, default=512)
  parser.add_argument("--svd", action="store_true", help="also time SVD of the full Jacobians")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  import jmeta.data as data
  from jmeta import jacobian as jac
  from jmeta.models import ModelConfig, create_model

  for m in args.modes:
    jac.resolve_mode(m, 1, 1)
  graph = data.load(args.dataset)
  n = graph.num_nodes if args.nodes is None else min(args.nodes, graph.num_nodes)
  nodes = np.arange(n)
  print(f"{args.dataset}: {graph.num_nodes} nodes, d = {graph.num_features}; timing {n} nodes, "
        f"untrained models, {jax.device_count()} {jax.devices()[0].platform} device(s)")
  figures = {"dataset": args.dataset, "nodes": n, "trained": False, "models": {}}
  for name in args.models:
    hidden = 64 if name in ("gat", "graphormer") else 16
    cfg = ModelConfig(name, num_layers=2, hidden=hidden, heads=8)
    model = create_model(cfg, graph.num_classes)
    params = model.init(jax.random.key(0), graph)
    res_model = {}
    nm = jac.local_node_map(model, params, graph, 1)
    m, d = nm.width, nm.input_dim
    for mode in args.modes:
      row = {"resolved": jac.resolve_mode(mode, m, d)}
      f_j, w_j, _ = timed(lambda: jac.node_jacobians(model, params, graph, 1, mode=mode,
                                                     nodes=nodes, chunk_size=args.chunk),
                          repeat=1 if mode == "jacfwd" else 2)
      f_r, w_r, res = timed(lambda: jac.node_ranks(model, params, graph, 1, mode=mode,
                                                   nodes=nodes, chunk_size=args.chunk))
      row.update(jacobian_s=w_j, jacobian_compile_s=max(f_j - w_j, 0.0), rank_s=w_r,
                 rank_compile_s=max(f_r - w_r, 0.0), mean_rank=float(res.ranks.mean()),
                 mean_metamer_dim=float(res.metamer_dim.mean()))
      if args.svd:
        _, w_s, res_s = timed(lambda: jac.node_ranks(model, params, graph, 1, mode=mode,
                                                     method="svd", nodes=nodes,
                                                     chunk_size=args.chunk), repeat=1)
        row.update(rank_svd_s=w_s, svd_agrees=bool((res_s.ranks == res.ranks).all()))
      res_model[mode] = row
      print(f"{name:5s} {mode:6s} ({row['resolved']}) m x d' = {m} x {d}: jacobians "
            f"{w_j:.3f} s (compile {row['jacobian_compile_s']:.1f} s), ranks {w_r:.3f} s "
            f"(compile {row['rank_compile_s']:.1f} s), mean d'-r {row['mean_metamer_dim']:.1f}")

    # sequential baseline: jitted one-node Jacobian (jacrev) + SVD rank, Python loop over nodes
    mode = jac.resolve_mode("auto", m, d)
    one = jax.jit(lambda nm, v: jac.matrix_rank(jac.batched_jacobian(nm, v[None], mode)[0]))
    k = min(args.loop_nodes, n)
    jax.block_until_ready(one(nm, jnp.int32(0)))
    t0 = time.perf_counter()
    for v in range(k):
      jax.block_until_ready(one(nm, jnp.int32(v)))
    loop_s = (time.perf_counter() - t0) / k * n
    res_model["loop"] = {"nodes_timed": k, "extrapolated_s": loop_s,
                         "speedup_vs_auto_rank": loop_s / res_model.get("auto", {}).get(
                             "rank_s", float("nan"))}
    print(f"{name:5s} python loop ({k} nodes, extrapolated to {n}): {loop_s:.2f} s; auto ranks "
          f"are {res_model['loop']['speedup_vs_auto_rank']:.1f}x faster")
    figures["models"][name] = {"m": m, "d": d, **res_model}
  print(json.dumps(figures))


if __name__ == "__main__":
  main()
