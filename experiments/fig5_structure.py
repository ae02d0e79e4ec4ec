"""Figure 5: structure metamers of GCN and ChebNet on the five datasets (paper Sec 4.3).

For every (model, dataset) cell: train the model once (cached), synthesise
``metamer.num_seeds`` structure metamers of the first-layer activation
(`jmeta.metamers.structure_metamers`: features fixed, a binary symmetric adjacency with the
reference's number of edges, eq. 11-12), and report S_struct (WL subtree kernel with degree
labels, eq. 16), S_match (eq. 14) and CS_struct (eq. 17), mean ± std in percent. The paper finds
S_struct near 100% while S_match is only about 80%.

A structure metamer holds a dense soft adjacency and its Adam moments per seed (O(n^2) memory):
graphs with more than ``max_nodes`` nodes (PubMed, 19717 nodes: 1.5 GB per n x n float32 array,
several per seed) are skipped with the reason.

Outputs (``results/fig5_structure``): config, versions, ``cells/`` (resumable grid),
``metamers/<id>.npz|json`` (metamer edge lists), ``results.json``, ``metrics.csv``,
``table.md``, ``fig5_structure.png`` (bars of S_struct and S_match, and their scatter).

Usage:
  jmeta experiment fig5_structure [--quick] [--set metamer.steps=500]
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

from jmeta import runs
from jmeta.config_io import KwargsOf, ListOf, MapOf, OneOf, Optional as Opt, Range
from jmeta.data import DATASETS, csbm
from jmeta.metamers import MetamerConfig
from jmeta.models import MODEL_NAMES, ModelConfig
from jmeta.train import TrainConfig

NAME = "fig5_structure"

SCHEMA = {
    "models": ListOf(OneOf(*MODEL_NAMES), min_len=1, unique=True),
    "datasets": ListOf(OneOf(*DATASETS), min_len=1, unique=True),
    "split": Range(0, None, integer=True),
    "seed": Range(0, None, integer=True),
    "model": ModelConfig,
    "model_overrides": MapOf(OneOf(*MODEL_NAMES), ModelConfig),
    "train": TrainConfig,
    "metamer": MetamerConfig,
    "max_nodes": Range(2, None, integer=True),
    "wl_iterations": Range(1, None, integer=True),
    "synthetic": KwargsOf(csbm),
    "cache_dir": Opt(str),
    "save_metamers": bool,
}

DEFAULTS = {"split": 0, "seed": 0, "model": {}, "model_overrides": {}, "train": {},
            "metamer": {}, "max_nodes": 6000, "wl_iterations": 3, "synthetic": {},
            "cache_dir": None, "save_metamers": True}

METRICS = ("s_struct", "s_match", "cs_struct", "act_one_minus_loss", "act_cosine")


def resolve(config: dict) -> dict:
  out = {**DEFAULTS, **config}
  for k in ("models", "datasets"):
    if k not in out:
      raise ValueError(f"{NAME}: config key {k!r} is required")
  return out


def make_cells(config: dict) -> list[dict]:
  mcfg = MetamerConfig(**config["metamer"])
  return [{"id": f"{m}-{ds}", "model": m, "dataset": ds, "split": config["split"],
           "seed": config["seed"], "model_config": runs.model_config_from(config, m).to_dict(),
           "train_config": runs.train_config_from(config, m).to_dict(),
           "metamer_config": mcfg.to_dict(), "wl_iterations": config["wl_iterations"],
           "synthetic": dict(config["synthetic"]) if ds == "synthetic" else {},
           "max_nodes": config["max_nodes"]}
          for ds in config["datasets"] for m in config["models"]]


def structure_cell(cell: dict, run_dir: runs.RunDir, graphs, *, cache_dir: Optional[str],
                   save_metamers: bool, progress: bool) -> dict:
  import jax
  from jmeta.metamers import structure_metamers

  graph = graphs.get(cell["dataset"], cell["split"], cell["synthetic"])
  n = graph.num_nodes
  if n > cell["max_nodes"]:
    gb = n * n * 4 / 2 ** 30
    return {"skipped": (f"{cell['dataset']}: {n} nodes > max_nodes {cell['max_nodes']}; a "
                        f"structure metamer keeps dense n x n arrays ({gb:.1f} GiB each in "
                        "float32, several per seed), which does not fit in memory here"),
            "num_nodes": n}
  tm = runs.trained_model(ModelConfig.from_dict(cell["model_config"]), cell["dataset"],
                          TrainConfig.from_dict(cell["train_config"]), split=cell["split"],
                          cache_dir=cache_dir, graph=graph, progress=progress)
  mcfg = MetamerConfig.from_dict(cell["metamer_config"])
  res = structure_metamers(tm.model, tm.params, graph, jax.random.key(cell["seed"]), mcfg,
                           progress=progress, wl_iterations=cell["wl_iterations"])
  res.info.update(model=cell["model"], cell=cell["id"])
  if save_metamers:
    res.save(run_dir.file(os.path.join("metamers", cell["id"])))
  out = runs.metamer_metrics(res)
  out.update(num_nodes=n, num_edges=graph.num_edges // 2, test_acc=tm.metrics.get("test"),
             checkpoint=tm.metrics.get("checkpoint"))
  return out


def _pm(r: dict, k: str) -> str:
  return f"{100 * r[k + '_mean']:.1f} ± {100 * r[k + '_std']:.1f}"


def markdown_table(rows: list[dict], num_seeds: int, steps: int) -> str:
  lines = ["# Figure 5: structure metamers at layer 1 (percent)", "",
           f"Mean ± std over {num_seeds} seeds, {steps} steps. The paper (Fig. 5) reports "
           "S_struct close to 100% with S_match around 80% for GCN and ChebNet.", "",
           "| model | dataset | S_struct | S_match | CS_struct | 1 - L_act | act cosine | "
           "test acc |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "skipped" in r:
      lines.append(f"| {r['model']} | {r['dataset']} | skipped | | | | | |")
      continue
    lines.append(f"| {r['model']} | {r['dataset']} | {_pm(r, 's_struct')} | "
                 f"{_pm(r, 's_match')} | {_pm(r, 'cs_struct')} | "
                 f"{_pm(r, 'act_one_minus_loss')} | {_pm(r, 'act_cosine')} | "
                 f"{100 * r['test_acc']:.1f} |")
  skipped = [r for r in rows if "skipped" in r]
  if skipped:
    lines += ["", "Skipped cells:"] + [f"- {r['id']}: {r['skipped']}" for r in skipped]
  return "\n".join(lines) + "\n"


def figure(rows: list[dict], models: list[str], datasets: list[str]):
  """Left: S_struct and S_match bars per dataset for each model; right: S_struct vs S_match."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by = {(r["model"], r["dataset"]): r for r in rows}
  fig, axes = plt.subplots(1, len(models) + 1, figsize=(4.2 * (len(models) + 1), 3.8),
                           squeeze=False)
  x = np.arange(len(datasets))
  for ax, m in zip(axes[0], models):
    for off, k, c in ((-0.2, "s_struct", "tab:green"), (0.2, "s_match", "tab:red")):
      v = [100 * by[(m, d)][f"{k}_mean"] if "skipped" not in by[(m, d)] else np.nan
           for d in datasets]
      e = [100 * by[(m, d)][f"{k}_std"] if "skipped" not in by[(m, d)] else 0.0
           for d in datasets]
      ax.bar(x + off, v, 0.4, yerr=e, color=c, label=k)
    ax.set_xticks(x)
    ax.set_xticklabels(datasets, rotation=30, ha="right")
    ax.set_ylim(0, 105)
    ax.set_title(m)
    ax.set_ylabel("percent")
    ax.legend(loc="lower right")
  ax = axes[0][-1]
  plotted = False
  for m, marker in zip(models, "os^vD*"):
    pts = [(100 * by[(m, d)]["s_struct_mean"], 100 * by[(m, d)]["s_match_mean"], d)
           for d in datasets if "skipped" not in by[(m, d)]]
    if pts:
      ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=m)
      plotted = True
      for p in pts:
        ax.annotate(p[2], (p[0], p[1]), fontsize=7)
  ax.set_xlabel("S_struct (%)")
  ax.set_ylabel("S_match (%)")
  ax.set_title("S_struct vs S_match")
  if plotted:
    ax.legend()
  fig.tight_layout()
  return fig


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs (or resumes) Figure 5 into ``out_dir``; returns the summary written to results.json."""
  config = resolve(config)
  cells = make_cells(config)
  rd = runs.RunDir(out_dir)
  rd.write_config(config)
  graphs = runs.GraphCache(data_dir)
  rows = runs.run_grid(
      cells, lambda c: structure_cell(c, rd, graphs, cache_dir=config["cache_dir"],
                                      save_metamers=config["save_metamers"],
                                      progress=progress),
      rd, desc=NAME, progress=progress)
  mcfg = MetamerConfig(**config["metamer"])
  table = markdown_table(rows, mcfg.num_seeds, mcfg.steps)
  rd.write_markdown("table", table)
  flat = []
  for r in rows:
    row = {"model": r["model"], "dataset": r["dataset"]}
    if "skipped" in r:
      row["skipped"] = r["skipped"]
    else:
      for k in METRICS:
        row[f"{k}_mean"], row[f"{k}_std"] = r[f"{k}_mean"], r[f"{k}_std"]
      row["test_acc"] = r.get("test_acc")
    flat.append(row)
  rd.write_csv("metrics", flat)
  rd.save_figure(NAME, figure(rows, config["models"], config["datasets"]))
  summary = {"experiment": NAME, "rows": rows, "table": table,
             "skipped": {r["id"]: r["skipped"] for r in rows if "skipped" in r}}
  rd.write_json("results", summary)
  return summary


def main(argv=None) -> int:
  from jmeta.cli import experiment_main
  return experiment_main(NAME, run, SCHEMA, argv)


if __name__ == "__main__":
  sys.exit(main())
