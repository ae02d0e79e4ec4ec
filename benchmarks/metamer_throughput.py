"""Feature-metamer throughput: vmapped seeds vs sequential loops, compile time, top-k share.

Trains a 2-layer GCN (hidden 16) on the dataset, then synthesises layer-1 feature metamers for
S seeds and prints, for every S:

* seed-steps/s of the vmapped program (`jmeta.metamers.feature_metamers` with ``seed_batch=0``:
  scan over steps inside jit, one vmap over all seeds), with its compile time;
* seed-steps/s of the same program with ``seed_batch=1`` (seeds unrolled one after another
  inside the compiled step instead of vmapped; the CPU default up to S = 8);
* seed-steps/s of the same single-seed scanned program run S times in a loop;
* seed-steps/s of a plain sequential loop: one jitted optax step dispatched from Python per step,
  per seed;
* the time of the top-k selection alone (warm hint) and its share of a single-seed step.

Usage: python benchmarks/metamer_throughput.py [--dataset cora] [--model gcn] [--steps 200]
       [--seeds 1 4 8] [--data-dir DIR]
The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta import data, train
from jmeta.metamers import MetamerConfig, feature_metamers
from jmeta.metamers import feature as feat
from jmeta.metamers.optimize import optimize
from jmeta.metamers.topk import topk_mask
from jmeta.models import ModelConfig, create_model


def spec_and_data(model, params, graph, cfg: MetamerConfig):
  h_ref = model.apply(params, graph).activations[cfg.layer - 1]
  spec = feat.FeatureSpec(model=model, layer=cfg.layer, feature_kind=graph.feature_kind,
                          config=cfg, rho_ref=feat.reference_density(graph.x),
                          size=int(graph.x.size))
  return spec, feat.FeatureData(variables=params, graph=graph, h_ref=h_ref)


def plain_loop_rate(model, params, graph, cfg: MetamerConfig, seeds: int) -> float:
  """Seed-steps/s of one jitted step per Python iteration, seeds one after another."""
  spec, data_ = spec_and_data(model, params, graph, cfg)
  obj = spec.objective()
  opt = optax.adam(cfg.learning_rate)

  @jax.jit
  def step(p, o, aux):
    if obj.select is not None:
      aux = obj.select(p, aux, data_)
    (_, (la, aux)), g = jax.value_and_grad(obj.loss, has_aux=True)(p, aux, data_)
    u, o = opt.update(g, o, p)
    return optax.apply_updates(p, u), o, aux, la

  init = jax.jit(obj.init)
  keys = jax.random.split(jax.random.key(1), seeds)
  p, aux = init(keys[0], data_)
  o = opt.init(p)
  jax.block_until_ready(step(p, o, aux))  # compile
  t0 = time.perf_counter()
  for i in range(seeds):
    p, aux = init(keys[i], data_)
    o = opt.init(p)
    for _ in range(cfg.steps):
      p, o, aux, la = step(p, o, aux)
    jax.block_until_ready(la)
  return seeds * cfg.steps / (time.perf_counter() - t0)


def topk_seconds(graph, repeats: int = 20) -> float:
  """Median seconds of one warm-started exact top-k over all n*d logits."""
  x = graph.x
  k = feat.num_active(feat.reference_density(x), x.size)
  soft = feat.init_soft_features(jax.random.key(0), x)
  fn = jax.jit(lambda s, h: topk_mask(s, k, h))
  thr = fn(soft, None).threshold
  moved = soft + 5e-4 * jax.random.normal(jax.random.key(1), soft.shape)
  jax.block_until_ready(fn(moved, thr))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(moved, thr))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dataset", default="cora")
  ap.add_argument("--model", default="gcn")
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8])
  ap.add_argument("--layer", type=int, default=1)
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--skip-plain", action="store_true", help="skip the plain-loop baseline")
  args = ap.parse_args()

  graph = data.load(args.dataset, data_dir=args.data_dir)
  mcfg = ModelConfig(args.model, num_layers=2, hidden=16)
  trained = train.fit(mcfg, graph, train.default_train_config(args.model), progress=False)
  model = create_model(mcfg, graph.num_classes)
  params = trained.params
  chunk = min(100, args.steps)

  rows, figures = [], {"dataset": args.dataset, "model": args.model, "steps": args.steps,
                       "layer": args.layer, "test_accuracy": trained.metrics["test"]}
  single_cfg = MetamerConfig(layer=args.layer, steps=args.steps, num_seeds=1, chunk=chunk)
  single_spec, single_data = spec_and_data(model, params, graph, single_cfg)
  for s in args.seeds:
    cfg = MetamerConfig(layer=args.layer, steps=args.steps, num_seeds=s, chunk=chunk,
                        seed_batch=0)
    res = feature_metamers(model, params, graph, jax.random.key(0), cfg, progress=False)
    vmapped = s * args.steps / res.info["run_seconds"]
    # The same program with seeds in groups of one (unrolled inside the compiled step).
    grouped_res = feature_metamers(model, params, graph, jax.random.key(0),
                                   dataclasses.replace(cfg, seed_batch=1), progress=False)
    grouped = s * args.steps / grouped_res.info["run_seconds"]
    # The same single-seed scanned program, run s times (compile excluded: run_seconds only).
    keys = jax.random.split(jax.random.key(0), s)
    seq_seconds = sum(optimize(single_spec, single_data, keys[i:i + 1],
                               progress=False).run_seconds for i in range(s))
    sequential = s * args.steps / seq_seconds
    plain = None if args.skip_plain else plain_loop_rate(model, params, graph, single_cfg, s)
    row = {"seeds": s, "vmapped_seed_steps_per_s": vmapped,
           "seed_batch1_seed_steps_per_s": grouped,
           "seed_batch1_compile_seconds": grouped_res.info["compile_seconds"],
           "scan_loop_seed_steps_per_s": sequential, "plain_loop_seed_steps_per_s": plain,
           "vmapped_over_scan_loop": vmapped / sequential,
           "vmapped_over_plain_loop": None if plain is None else vmapped / plain,
           "compile_seconds": res.info["compile_seconds"],
           "cs_feat_mean": float(np.mean(res.metrics["cs_feat"])),
           "act_loss_mean": float(np.mean(res.metrics["act_loss"]))}
    rows.append(row)

  tk = topk_seconds(graph)
  step_single = 1.0 / rows[0]["scan_loop_seed_steps_per_s"]
  figures.update(rows=rows, topk_seconds=tk, single_seed_step_seconds=step_single,
                 topk_share_of_step=tk / step_single)

  print(f"{args.model} on {args.dataset}, layer {args.layer}, {args.steps} steps "
        f"(trained test acc {100 * trained.metrics['test']:.1f}%)")
  print("| S | vmapped seed-steps/s | seed_batch=1 | scan loop xS | plain loop xS | "
        "vmapped/scan | vmapped/plain | compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    plain = "-" if r["plain_loop_seed_steps_per_s"] is None else \
        f"{r['plain_loop_seed_steps_per_s']:.1f}"
    ratio = "-" if r["vmapped_over_plain_loop"] is None else f"{r['vmapped_over_plain_loop']:.2f}"
    print(f"| {r['seeds']} | {r['vmapped_seed_steps_per_s']:.1f} | "
          f"{r['seed_batch1_seed_steps_per_s']:.1f} | "
          f"{r['scan_loop_seed_steps_per_s']:.1f} | {plain} | "
          f"{r['vmapped_over_scan_loop']:.2f} | {ratio} | {r['compile_seconds']:.1f} |")
  print(f"top-k (warm) {1e3 * tk:.1f} ms = {100 * tk / step_single:.0f}% of a single-seed step "
        f"({1e3 * step_single:.1f} ms)")
  print(json.dumps(figures))


if __name__ == "__main__":
  main()
