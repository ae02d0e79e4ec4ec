"""The ``jmeta`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np


def _load_graph(name: str, data_dir: Optional[str], fallback: bool):
  from jmeta import data
  try:
    return data.load(name, data_dir=data_dir)
  except FileNotFoundError as e:
    if not fallback:
      raise
    print(f"[jmeta] {name} not found ({e.__class__.__name__}); using the synthetic graph "
          "instead (set JMETA_DATA or --data-dir to use real data)", file=sys.stderr)
    return data.load("synthetic", num_nodes=1000, num_features=256, num_classes=5)


def format_summary(summary: dict, keys: Sequence[str]) -> str:
  """A Markdown table of ``mean +- std`` (in percent) for the metrics ``keys``."""
  lines = ["| metric | mean (%) | std (%) |", "|---|---|---|"]
  for k in keys:
    if k in summary:
      lines.append(f"| {k} | {100 * summary[k]['mean']:.2f} | {100 * summary[k]['std']:.2f} |")
  return "\n".join(lines)


def plot_feature_metamers(x_ref: np.ndarray, result, path: str, rows: int = 200,
                          cols: int = 300) -> None:
  """Writes a PNG: loss curves per seed, and the reference features beside one metamer."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for i, curve in enumerate(result.losses):
    axes[0].semilogy(np.arange(1, len(curve) + 1), curve, label=f"seed {i}")
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("activation loss (eq. 5)")
  axes[0].legend()
  r, c = min(rows, x_ref.shape[0]), min(cols, x_ref.shape[1])
  axes[1].imshow(x_ref[:r, :c], aspect="auto", cmap="Greys", interpolation="nearest")
  axes[1].set_title(f"reference features (first {r} x {c})")
  m = result.metrics
  axes[2].imshow(result.metamers[0][:r, :c].astype(np.float32), aspect="auto", cmap="Greys",
                 interpolation="nearest")
  axes[2].set_title(f"metamer, seed 0: S_feat {100 * m['s_feat'][0]:.1f}%, "
                    f"S_match {100 * m['s_match'][0]:.1f}%")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def cmd_quickstart(args) -> int:
  import jax

  from jmeta import train
  from jmeta.metamers import MetamerConfig, feature_metamers
  from jmeta.models import ModelConfig, create_model

  t0 = time.perf_counter()
  graph = _load_graph(args.dataset, args.data_dir, fallback=True)
  print(f"[jmeta] {graph.name}: {graph.num_nodes} nodes, {graph.num_features} "
        f"{graph.feature_kind} features, {graph.num_edges} directed edges")
  model_cfg = ModelConfig(args.model, num_layers=2, hidden=16)
  res_train = train.fit(model_cfg, graph, train.default_train_config(args.model),
                        progress=not args.quiet)
  print(f"[jmeta] trained {args.model}: test accuracy {100 * res_train.metrics['test']:.1f}%")
  model = create_model(model_cfg, graph.num_classes)
  cfg = MetamerConfig(layer=args.layer, steps=args.steps, num_seeds=args.seeds)
  result = feature_metamers(model, res_train.params, graph, jax.random.key(args.seed), cfg,
                            progress=not args.quiet)
  result.info.update(model=model_cfg.name)
  summary = result.summary()
  print(f"\nFeature metamers of {args.model} on {graph.name}, layer {args.layer}, "
        f"{args.seeds} seeds x {args.steps} steps "
        f"({result.info['seed_steps_per_second']:.0f} seed-steps/s, "
        f"compile {result.info['compile_seconds']:.1f} s):\n")
  print(format_summary(summary, ["s_feat", "s_match", "cs_feat", "act_one_minus_loss",
                                 "act_cosine"]))
  os.makedirs(args.out, exist_ok=True)
  result.save(os.path.join(args.out, "quickstart"))
  fig = os.path.join(args.out, "quickstart.png")
  plot_feature_metamers(np.asarray(graph.x), result, fig)
  print(f"\n[jmeta] wrote {args.out}/quickstart.npz, .json and {fig} "
        f"in {time.perf_counter() - t0:.0f} s")
  return 0


# -- config-driven commands: train, metamer, rank, experiment ------------------------------------


def _schemas() -> dict:
  """Config schemas of the `train`, `metamer` and `rank` commands (see `jmeta.config_io`)."""
  from jmeta.config_io import KwargsOf, OneOf, Optional as Opt, Range, Required
  from jmeta.data import DATASETS, csbm
  from jmeta.jacobian import MODES, RANK_METHODS
  from jmeta.metamers import MetamerConfig
  from jmeta.models import ModelConfig
  from jmeta.train import TrainConfig

  common = {"model": Required(ModelConfig), "dataset": Required(OneOf(*DATASETS)),
            "split": Range(0, None, integer=True), "train": TrainConfig,
            "synthetic": KwargsOf(csbm), "cache_dir": Opt(str)}
  return {
      "train": dict(common),
      "metamer": dict(common, kind=OneOf("feature", "structure"), metamer=MetamerConfig,
                      seed=Range(0, None, integer=True), wl_iterations=Range(1, None,
                                                                             integer=True)),
      "rank": dict(common, layer=Range(1, None, integer=True), method=OneOf(*RANK_METHODS),
                   mode=OneOf(*MODES), rtol=Opt(float), chunk_size=Range(1, None,
                                                                         integer=True),
                   num_nodes=Opt(Range(1, None, integer=True))),
  }


def _config_path(args, name: str) -> str:
  if args.config:
    return args.config
  from jmeta.runs import configs_dir
  path = configs_dir() / f"{name}.yaml"
  if not path.is_file():
    raise FileNotFoundError(f"default config {str(path)!r} not found; pass --config PATH")
  return str(path)


def _load_command_config(args, name: str, schema: dict) -> dict:
  from jmeta.config_io import ConfigError, load_config
  config = load_config(_config_path(args, name), args.set or (), schema=schema)
  if "name" not in config["model"]:
    raise ConfigError("model.name is required (one of the model names, e.g. model.name=gcn)")
  return config


def _print_config(config: dict) -> None:
  from jmeta.config_io import dump_yaml
  print(dump_yaml(config), end="")


def _model_config(config: dict):
  from jmeta import runs
  fields = {k: v for k, v in config["model"].items() if k != "name"}
  return runs.default_model_config(config["model"]["name"], **fields)


def _model_and_graph(config: dict, args, progress: bool):
  """(ModelConfig, TrainConfig, TrainedModel) of a command config, trained or loaded."""
  from jmeta import runs
  model_cfg = _model_config(config)
  train_cfg = runs.train_config_from(config, model_cfg.name)
  tm = runs.trained_model(model_cfg, config["dataset"], train_cfg, data_dir=args.data_dir,
                          split=config.get("split", 0), cache_dir=config.get("cache_dir"),
                          synthetic=config.get("synthetic"), progress=progress)
  return model_cfg, train_cfg, tm


def _resolved(config: dict, model_cfg, train_cfg, **extra) -> dict:
  return {**config, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(), **extra}


def plot_training_history(history: dict, title: str):
  """A Figure: training loss and train/val/test accuracy per epoch."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  ep = np.arange(1, len(history["loss"]) + 1)
  axes[0].plot(ep, history["loss"], label="train loss")
  axes[0].plot(ep, history["val_loss"], label="val loss")
  axes[0].set_xlabel("epoch")
  axes[0].legend()
  for k in ("train_acc", "val_acc", "test_acc"):
    axes[1].plot(ep, history[k], label=k)
  axes[1].set_xlabel("epoch")
  axes[1].set_ylabel("accuracy")
  axes[1].legend()
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def plot_structure_metamers(adj_ref: np.ndarray, result, nodes: int = 200):
  """A Figure: loss curves per seed, and the reference adjacency beside one structure metamer
  (first ``nodes`` nodes)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = adj_ref.shape[0]
  k = min(nodes, n)
  meta = np.zeros((n, n), np.uint8)
  e = np.asarray(result.metamers[0])
  meta[e[:, 0], e[:, 1]] = 1
  meta[e[:, 1], e[:, 0]] = 1
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for i, curve in enumerate(result.losses):
    axes[0].semilogy(np.arange(1, len(curve) + 1), curve, label=f"seed {i}")
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("activation loss (eq. 5)")
  axes[0].legend()
  axes[1].imshow(adj_ref[:k, :k] > 0, cmap="Greys", interpolation="nearest")
  axes[1].set_title(f"reference adjacency (first {k} nodes)")
  m = result.metrics
  axes[2].imshow(meta[:k, :k], cmap="Greys", interpolation="nearest")
  axes[2].set_title(f"metamer, seed 0: S_struct {100 * m['s_struct'][0]:.1f}%, "
                    f"S_match {100 * m['s_match'][0]:.1f}%")
  fig.tight_layout()
  return fig


def _default_out(args, *parts: str) -> str:
  return args.out or os.path.join("results", *parts)


def _setup(args, name: str, layer_key: Optional[str] = None):
  """Loads and validates the command's config, then trains or loads its model.

  Returns ``None`` after printing the config for ``--dry-run``, else ``(config, start time,
  model config, train config, trained model)``. ``layer_key`` (a dotted config key) names a
  target layer checked against the model's depth before any training.
  """
  config = _load_command_config(args, name, _schemas()[name])
  if args.dry_run:
    _print_config(config)
    return None
  if layer_key is not None:
    section, _, field = layer_key.rpartition(".")
    layer = (config.get(section, {}) if section else config).get(field, 1)
    depth = _model_config(config).num_layers
    if layer > depth:
      raise ValueError(f"{layer_key}={layer} exceeds model.num_layers={depth}")
  t0 = time.perf_counter()
  return (config, t0) + tuple(_model_and_graph(config, args, progress=not args.quiet))


def cmd_train(args) -> int:
  from jmeta import checkpoint, runs
  setup = _setup(args, "train")
  if setup is None:
    return 0
  config, t0, model_cfg, train_cfg, tm = setup
  rd = runs.RunDir(_default_out(args, "train", f"{model_cfg.name}-{config['dataset']}"))
  rd.write_config(_resolved(config, model_cfg, train_cfg))
  checkpoint.save_checkpoint(rd.file("checkpoint"), tm.params, model_cfg,
                             num_features=tm.graph.num_features,
                             num_classes=tm.graph.num_classes, train_config=train_cfg,
                             metrics={k: v for k, v in tm.metrics.items()
                                      if k not in ("checkpoint", "cached")})
  rd.write_json("metrics", tm.metrics)
  rd.write_csv("metrics", [{"model": model_cfg.name, "dataset": config["dataset"],
                            **tm.metrics}])
  m = tm.metrics
  rd.write_markdown("table", "\n".join([
      f"# {model_cfg.name} on {config['dataset']}", "",
      "| split | accuracy (%) |", "|---|---|",
      *[f"| {k} | {100 * m[k]:.1f} |" for k in ("train", "val", "test") if k in m]]))
  hist = runs.training_history(m["checkpoint"])
  if hist is not None:
    rd.write_npz("history", **hist)
    rd.write_csv("history", [{"epoch": i, **{k: float(v[i]) for k, v in hist.items()}}
                             for i in range(len(hist["loss"]))])
    rd.save_figure("training", plot_training_history(
        hist, f"{model_cfg.name} on {config['dataset']}"))
  print(f"[jmeta] {model_cfg.name} on {config['dataset']}: test accuracy "
        f"{100 * m['test']:.1f}% ({'loaded from cache' if m['cached'] else 'trained'}); wrote "
        f"{rd.path} in {time.perf_counter() - t0:.0f} s")
  return 0


def cmd_metamer(args) -> int:
  import jax

  from jmeta import runs
  from jmeta.graph import to_dense
  from jmeta.metamers import MetamerConfig, feature_metamers, structure_metamers
  setup = _setup(args, "metamer", layer_key="metamer.layer")
  if setup is None:
    return 0
  config, t0, model_cfg, train_cfg, tm = setup
  kind = config.get("kind", "feature")
  mcfg = MetamerConfig(**config.get("metamer", {}))
  graph = tm.graph
  rd = runs.RunDir(_default_out(args, "metamer",
                                f"{model_cfg.name}-{config['dataset']}-{kind}"))
  rd.write_config(_resolved(config, model_cfg, train_cfg, metamer=mcfg.to_dict(), kind=kind))
  key = jax.random.key(config.get("seed", 0))
  snapshot = rd.file("snapshot.npz")  # a rerun of the same command resumes an interrupted loop
  if kind == "feature":
    res = feature_metamers(tm.model, tm.params, graph, key, mcfg, progress=not args.quiet,
                           snapshot=snapshot)
  else:
    res = structure_metamers(tm.model, tm.params, graph, key, mcfg, progress=not args.quiet,
                             wl_iterations=config.get("wl_iterations", 3), snapshot=snapshot)
  res.info.update(model=model_cfg.name)
  res.save(rd.file("metamers"))
  summary = res.summary()
  rd.write_json("metrics", {"summary": summary, "per_seed": runs.metamer_metrics(res),
                            "train": tm.metrics})
  seeds = len(res.steps)
  rd.write_csv("metrics", [{"seed": i, **{k: float(np.asarray(v)[i])
                                          for k, v in res.metrics.items()}}
                           for i in range(seeds)])
  keys = (["s_feat", "s_match", "cs_feat"] if kind == "feature" else
          ["s_struct", "s_match", "cs_struct"]) + ["act_one_minus_loss", "act_cosine"]
  table = format_summary(summary, keys)
  rd.write_markdown("table", f"# {kind} metamers of {model_cfg.name} on {config['dataset']}, "
                              f"layer {mcfg.layer}\n\n{seeds} seeds x {mcfg.steps} steps\n\n"
                              f"{table}")
  if kind == "feature":
    plot_feature_metamers(np.asarray(graph.x), res, rd.file("metamers.png"))
  else:
    rd.save_figure("metamers", plot_structure_metamers(np.asarray(to_dense(graph)), res))
  print(f"\n{kind} metamers of {model_cfg.name} on {config['dataset']}, layer {mcfg.layer}, "
        f"{seeds} seeds x {mcfg.steps} steps:\n")
  print(table)
  print(f"\n[jmeta] wrote {rd.path} in {time.perf_counter() - t0:.0f} s")
  return 0


def cmd_rank(args) -> int:
  from jmeta import jacobian, runs
  setup = _setup(args, "rank", layer_key="layer")
  if setup is None:
    return 0
  config, t0, model_cfg, train_cfg, tm = setup
  layer = config.get("layer", 1)
  rd = runs.RunDir(_default_out(args, "rank",
                                f"{model_cfg.name}-{config['dataset']}-L{layer}"))
  rd.write_config(_resolved(config, model_cfg, train_cfg))
  n = config.get("num_nodes")
  nodes = None if n is None else np.arange(min(n, tm.graph.num_nodes))
  res = jacobian.node_ranks(tm.model, tm.params, tm.graph, layer,
                            mode=config.get("mode", "auto"),
                            method=config.get("method", "factored"), nodes=nodes,
                            rtol=config.get("rtol"),
                            chunk_size=config.get("chunk_size", jacobian.DEFAULT_CHUNK))
  summary = jacobian.rank_summary(res, model=model_cfg.name, layer=layer,
                                  dataset=config["dataset"])
  rd.write_json("rank_summary", summary)
  rd.write_npz("ranks", ranks=res.ranks, metamer_dim=res.metamer_dim, sigma_max=res.sigma_max,
               nodes=res.nodes)
  row = {"model": model_cfg.name, "dataset": config["dataset"], "layer": layer,
         "input_dim": summary["input_dim"], "output_dim": summary["output_dim"],
         "rank_mean": summary["rank"]["mean"], "metamer_dim_mean":
         summary["metamer_dim"]["mean"], "metamer_dim_min": summary["metamer_dim"]["min"],
         "metamer_dim_max": summary["metamer_dim"]["max"], "num_nodes": summary["num_nodes"]}
  rd.write_json("metrics", row)
  rd.write_csv("metrics", [row])
  table = "\n".join([
      f"# Jacobian ranks of {model_cfg.name} on {config['dataset']}, layer {layer}", "",
      "| d' | m | rank r (mean [min, max]) | d' - r (mean [min, max]) | nodes |",
      "|---|---|---|---|---|",
      f"| {summary['input_dim']} | {summary['output_dim']} | {summary['rank']['mean']:.2f} "
      f"[{summary['rank']['min']}, {summary['rank']['max']}] | "
      f"{summary['metamer_dim']['mean']:.2f} [{summary['metamer_dim']['min']}, "
      f"{summary['metamer_dim']['max']}] | {summary['num_nodes']} |"])
  rd.write_markdown("table", table)
  jacobian.plot_rank_histogram(summary, rd.file("rank_histogram.png"))
  print(table)
  print(f"\n[jmeta] wrote {rd.path} in {time.perf_counter() - t0:.0f} s")
  return 0


def available_experiments() -> list[str]:
  """Names of the experiment scripts in ``<repo>/experiments`` (without ``.py``)."""
  from jmeta.runs import experiments_dir
  d = experiments_dir()
  if not d.is_dir():
    return []
  return sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))


def load_experiment(name: str):
  """Imports ``<repo>/experiments/<name>.py`` by file path and returns the module."""
  import importlib.util

  from jmeta.runs import experiments_dir
  d = experiments_dir()
  if not d.is_dir():
    raise FileNotFoundError(f"experiments folder not found at {str(d)!r} (jmeta must be run "
                            "from a source checkout that has experiments/)")
  names = available_experiments()
  if name not in names:
    raise ValueError(f"unknown experiment {name!r}; available: {', '.join(names) or '(none)'}")
  path = d / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"jmeta_experiments.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "run", None)):
    raise ValueError(f"experiment {name!r} ({path}) has no run(config, out_dir, ...) function")
  return module


def _experiment_config(name: str, args, schema) -> tuple[dict, str]:
  from jmeta.config_io import load_config
  from jmeta.runs import configs_dir
  if args.config:
    path = args.config
  else:
    path = str(configs_dir() / f"{name}{'_quick' if args.quick else ''}.yaml")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config {path!r} not found; pass --config PATH")
  return load_config(path, args.set or (), schema=schema), path


def _run_experiment(name: str, run, schema, args) -> int:
  config, path = _experiment_config(name, args, schema)
  if args.dry_run:
    _print_config(config)
    return 0
  out = args.out or os.path.join("results", f"{name}{'_quick' if args.quick else ''}")
  t0 = time.perf_counter()
  print(f"[jmeta] experiment {name}: config {path}, results in {out}", file=sys.stderr)
  run(config, out, data_dir=args.data_dir, progress=not args.quiet)
  print(f"[jmeta] experiment {name} done in {time.perf_counter() - t0:.0f} s; results in {out}")
  table = os.path.join(out, "table.md")
  if os.path.isfile(table):
    with open(table, encoding="utf-8") as f:
      print(f.read())
  return 0


def cmd_experiment(args) -> int:
  module = load_experiment(args.name)
  return _run_experiment(args.name, module.run, getattr(module, "SCHEMA", None), args)


def _add_config_args(p: argparse.ArgumentParser, what: str) -> None:
  p.add_argument("--config", default=None,
                 help=f"YAML config file (default: configs/{what}.yaml)")
  p.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="override a config value, e.g. --set metamer.steps=100 (repeatable)")
  p.add_argument("--out", default=None, help="results directory")
  p.add_argument("--data-dir", default=None, help="raw dataset directory (else $JMETA_DATA)")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  p.add_argument("--dry-run", action="store_true",
                 help="validate and print the resolved config, run nothing")


def experiment_main(name: str, run, schema=None, argv: Optional[Sequence[str]] = None) -> int:
  """``main()`` of an experiment script: ``--config``, ``--quick``, ``--out``, ``--set``,
  ``--data-dir``, ``--quiet``, ``--dry-run``; errors print ``jmeta: error: ...`` and return 2."""
  p = argparse.ArgumentParser(prog=f"experiments/{name}.py")
  p.add_argument("--quick", action="store_true", help=f"use configs/{name}_quick.yaml")
  _add_config_args(p, name)
  args = p.parse_args(argv)
  try:
    return _run_experiment(name, run, schema, args)
  except (ValueError, FileNotFoundError) as e:
    print(f"jmeta: error: {e}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jmeta", description=__doc__)
  sub = p.add_subparsers(dest="command", required=True)
  q = sub.add_parser("quickstart", help="train a GCN and synthesise feature metamers")
  q.add_argument("--dataset", default="cora")
  q.add_argument("--data-dir", default=None)
  q.add_argument("--model", default="gcn")
  q.add_argument("--layer", type=int, default=1)
  q.add_argument("--steps", type=int, default=500)
  q.add_argument("--seeds", type=int, default=4)
  q.add_argument("--seed", type=int, default=0)
  q.add_argument("--out", default="results/quickstart")
  q.add_argument("--quiet", action="store_true")
  q.set_defaults(func=cmd_quickstart)

  t = sub.add_parser("train", help="train a model (cached) and save its checkpoint + metrics")
  _add_config_args(t, "train")
  t.set_defaults(func=cmd_train)
  m = sub.add_parser("metamer", help="feature or structure metamers of a trained model")
  _add_config_args(m, "metamer")
  m.set_defaults(func=cmd_metamer)
  r = sub.add_parser("rank", help="per-node Jacobian ranks and local metamer dimension")
  _add_config_args(r, "rank")
  r.set_defaults(func=cmd_rank)
  e = sub.add_parser("experiment", help="run experiments/NAME.py (a paper table or figure)")
  e.add_argument("name", metavar="NAME", help="experiment name (file stem in experiments/)")
  e.add_argument("--quick", action="store_true", help="use configs/NAME_quick.yaml")
  _add_config_args(e, "NAME")
  e.set_defaults(func=cmd_experiment)
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, FileNotFoundError, TypeError) as e:
    print(f"jmeta: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
