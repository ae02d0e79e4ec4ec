"""Table 1: feature metamers at layer 1, six models x five datasets x 5 seeds (paper Sec 4.2).

For every (model, dataset) cell: train the model once (cached checkpoint, `jmeta.runs.
trained_model`), then synthesise ``metamer.num_seeds`` feature metamers of the first-layer
activation in one vmapped run (`jmeta.metamers.feature_metamers`), and report S_feat, S_match
(eq. 13-14) and CS_feat (eq. 15) in percent, mean ± std over the seeds, beside the paper's
Table 1. CS_feat is computed per seed and then averaged (the paper's table is consistent with
averaging CS over seeds; ``cs_of_means`` = CS of the mean S_feat and S_match is stored too).

Graphormer attends densely over all n^2 node pairs; on PubMed (19717 nodes) that does not fit in
memory here, so cells with more than ``max_nodes[model]`` nodes are skipped with the reason.

Outputs (``results/table1`` by default): ``config.json``/``config.yaml``, ``versions.json``,
``cells/<model>-<dataset>.json`` (resumable grid), ``metamers/<id>.npz|json`` (the metamers),
``results.json``, ``metrics.csv``, ``table.md`` (ours beside the paper's), ``table1_cs.png``.

With ``stored_only: true`` nothing is computed: the tables show the cells already stored in the
results directory and "not run" for the others (how far a long grid has come).

Usage:
  jmeta experiment table1 [--quick] [--set metamer.steps=500] [--data-dir DIR]
  jmeta experiment table1 --set stored_only=true       # the table so far, computing nothing
  python experiments/table1.py --quick --out /tmp/t1
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

from jmeta import runs
from jmeta.config_io import MapOf, OneOf, Range
from jmeta.metamers import MetamerConfig
from jmeta.metrics import consistency
from jmeta.models import MODEL_NAMES
from jmeta.study import (METRICS, bar_values, cell_feature_metamers, cell_model, fill_defaults,
                         model_train_configs, pm, pyplot, run_cached_cells, schema_defaults,
                         schema_entries, script_main, skipped_notes, snapshot_path,
                         summary_row, synthetic_section, unrun_label, write_results)

NAME = "table1"

SCHEMA = {
    **schema_entries("models", "datasets", "split", "seed", "model", "model_overrides", "train",
                     "train_overrides", "metamer"),
    "max_nodes": MapOf(OneOf(*MODEL_NAMES), Range(1, None, integer=True)),
    **schema_entries("synthetic", "cache_dir", "save_metamers"),
    "stored_only": bool,
}

DEFAULTS = schema_defaults(SCHEMA, max_nodes={}, save_metamers=True, stored_only=False)

# The paper's Table 1 (arXiv 2510.17378, Table 1), percent: (S_feat, S_feat std, S_match,
# S_match std, CS_feat, CS_feat std), mean ± std over five runs.
PAPER = {
    ("gcn", "cora"): (11.4, 0.05, 96.4, 0.32, 14.12, 0.29),
    ("gcn", "citeseer"): (8.0, 0.08, 96.1, 0.21, 11.25, 0.24),
    ("gcn", "pubmed"): (22.2, 0.34, 99.9, 0.01, 22.31, 0.34),
    ("gcn", "squirrel"): (5.0, 0.19, 84.3, 0.93, 19.16, 1.10),
    ("gcn", "chameleon"): (7.5, 0.42, 88.8, 0.95, 17.00, 0.98),
    ("cheb", "cora"): (14.8, 0.11, 96.0, 0.32, 17.60, 0.21),
    ("cheb", "citeseer"): (10.6, 0.15, 95.0, 0.21, 14.48, 0.25),
    ("cheb", "pubmed"): (24.3, 0.19, 99.9, 0.02, 24.37, 0.20),
    ("cheb", "squirrel"): (5.0, 0.10, 86.3, 0.24, 17.36, 0.19),
    ("cheb", "chameleon"): (10.1, 0.67, 91.8, 0.73, 16.69, 0.60),
    ("sage", "cora"): (12.6, 0.06, 95.9, 0.51, 15.61, 0.39),
    ("sage", "citeseer"): (10.0, 0.17, 94.7, 0.50, 14.22, 0.49),
    ("sage", "pubmed"): (21.2, 0.47, 99.9, 0.02, 21.31, 0.47),
    ("sage", "squirrel"): (5.8, 0.10, 89.4, 0.45, 15.13, 0.38),
    ("sage", "chameleon"): (5.4, 0.09, 91.4, 0.52, 13.09, 0.50),
    ("gin", "cora"): (10.4, 0.14, 97.1, 0.23, 12.65, 0.19),
    ("gin", "citeseer"): (9.1, 0.16, 96.3, 0.46, 12.16, 0.34),
    ("gin", "pubmed"): (19.3, 0.81, 99.8, 0.02, 19.38, 0.80),
    ("gin", "squirrel"): (2.3, 0.08, 90.9, 0.79, 10.93, 0.76),
    ("gin", "chameleon"): (2.3, 0.21, 87.5, 1.55, 14.19, 1.36),
    ("gat", "cora"): (15.0, 0.37, 95.0, 0.15, 18.47, 0.26),
    ("gat", "citeseer"): (12.8, 0.66, 94.0, 1.08, 17.21, 1.22),
    ("gat", "pubmed"): (41.9, 0.64, 99.9, 0.02, 41.94, 0.64),
    ("gat", "squirrel"): (32.4, 1.11, 81.7, 0.29, 38.83, 0.76),
    ("gat", "chameleon"): (18.8, 0.97, 85.6, 1.09, 27.81, 0.99),
    ("graphormer", "cora"): (14.8, 0.29, 94.6, 0.49, 18.61, 0.56),
    ("graphormer", "citeseer"): (14.0, 0.52, 93.2, 0.42, 18.88, 0.71),
    ("graphormer", "pubmed"): (42.7, 0.41, 99.8, 0.01, 42.80, 0.41),
    ("graphormer", "squirrel"): (46.3, 1.22, 82.8, 0.30, 47.63, 0.78),
    ("graphormer", "chameleon"): (19.7, 0.81, 86.1, 0.52, 28.14, 0.80),
}

def resolve(config: dict) -> dict:
  """The config with defaults filled in (the resolved config that is saved)."""
  return fill_defaults(config, DEFAULTS, ("models", "datasets"), NAME)


def make_cells(config: dict) -> list[dict]:
  """One cell per (dataset, model), dataset-major; every cell holds its resolved configs."""
  mcfg = MetamerConfig(**config["metamer"])
  cells = []
  for ds in config["datasets"]:
    for m in config["models"]:
      cells.append({
          "id": f"{m}-{ds}", "model": m, "dataset": ds, "split": config["split"],
          "seed": config["seed"], **model_train_configs(config, m),
          "metamer_config": mcfg.to_dict(), "synthetic": synthetic_section(config, ds),
          "max_nodes": config["max_nodes"].get(m),
      })
  return cells


def feature_cell(cell: dict, run_dir: runs.RunDir, graphs: runs.GraphCache, *,
                 cache_dir: Optional[str], save_metamers: bool, progress: bool) -> dict:
  """Trains (or loads) the cell's model and synthesises its feature metamers."""
  graph = graphs.get(cell["dataset"], cell["split"], cell["synthetic"])
  limit = cell.get("max_nodes")
  if limit is not None and graph.num_nodes > limit:
    return {"skipped": (f"{cell['model']} on {cell['dataset']}: {graph.num_nodes} nodes > "
                        f"{limit}; dense n x n attention does not fit in memory on this "
                        "machine"), "num_nodes": graph.num_nodes}
  tm = cell_model(cell, graph, split=cell["split"], cache_dir=cache_dir, progress=progress)
  res = cell_feature_metamers(tm, graph, cell["metamer_config"], cell["seed"],
                              progress=progress, snapshot=snapshot_path(run_dir, cell["id"]))
  res.info.update(model=cell["model"], cell=cell["id"])
  if save_metamers:
    res.save(run_dir.file(os.path.join("metamers", cell["id"])))
  out = runs.metamer_metrics(res)
  out["cs_of_means"] = float(consistency(out["s_feat_mean"], out["s_match_mean"]))
  out.update(num_nodes=graph.num_nodes, num_features=graph.num_features,
             feature_kind=graph.feature_kind, test_acc=tm.metrics.get("test"),
             val_acc=tm.metrics.get("val"), train_seconds=tm.metrics.get("train_seconds"),
             checkpoint=tm.metrics.get("checkpoint"))
  return out


def _paper_cell(model: str, dataset: str) -> Optional[tuple]:
  return PAPER.get((model, dataset))


def markdown_table(rows: list[dict], models: list[str], datasets: list[str], *,
                   num_seeds: int, steps: int) -> str:
  """Wide tables (ours, then the paper's) and a long comparison table."""
  by = {(r["model"], r["dataset"]): r for r in rows}
  head = "| model | " + " | ".join(datasets) + " |\n|---|" + "---|" * len(datasets)
  lines = [f"# Table 1: feature metamers at layer 1 (percent)", "",
           f"jmeta: mean ± std over {num_seeds} metamer seeds, {steps} steps; each cell is "
           "`S_feat / S_match` then `CS_feat` (CS computed per seed, then averaged).", "",
           head]
  for m in models:
    cells = []
    for d in datasets:
      r = by[(m, d)]
      if label := unrun_label(r):
        cells.append(label)
      else:
        cells.append(f"{pm(r, 's_feat')} / {pm(r, 's_match')}<br>{pm(r, 'cs_feat', 2)}")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  paper_ds = [d for d in datasets if any((m, d) in PAPER for m in models)]
  if paper_ds:
    lines += ["", "The paper's Table 1 (arXiv 2510.17378), same layout:", "",
              "| model | " + " | ".join(paper_ds) + " |\n|---|" + "---|" * len(paper_ds)]
    for m in models:
      cells = []
      for d in paper_ds:
        p = _paper_cell(m, d)
        cells.append("-" if p is None else
                     f"{p[0]:.1f} ± {p[1]:.2f} / {p[2]:.1f} ± {p[3]:.2f}<br>{p[4]:.2f} ± "
                     f"{p[5]:.2f}")
      lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines += ["", "Side by side (jmeta vs paper, percent; test accuracy of the trained model):", "",
            "| model | dataset | S_feat | paper | S_match | paper | CS_feat | paper | "
            "test acc |", "|---|---|---|---|---|---|---|---|---|"]
  for m in models:
    for d in datasets:
      r, p = by[(m, d)], _paper_cell(m, d)
      ps = ("-", "-", "-") if p is None else (f"{p[0]:.1f}", f"{p[2]:.1f}", f"{p[4]:.2f}")
      if label := unrun_label(r):
        lines.append(f"| {m} | {d} | {label} | {ps[0]} | | {ps[1]} | | {ps[2]} | |")
        continue
      acc = r.get("test_acc")
      lines.append(f"| {m} | {d} | {pm(r, 's_feat')} | {ps[0]} | {pm(r, 's_match')} | "
                   f"{ps[1]} | {pm(r, 'cs_feat', 2)} | {ps[2]} | "
                   f"{'-' if acc is None else f'{100 * acc:.1f}'} |")
  return "\n".join(lines + skipped_notes(rows)) + "\n"


def cs_figure(rows: list[dict], models: list[str], datasets: list[str]):
  """Grouped bars: CS_feat per model for every dataset, ours (solid) and the paper's (hatched)."""
  plt = pyplot()
  by = {(r["model"], r["dataset"]): r for r in rows}
  fig_width = 3.2 * len(datasets) + 1.8
  fig, axes = plt.subplots(1, len(datasets), figsize=(fig_width, 3.6), squeeze=False)
  x = np.arange(len(models))
  for ax, d in zip(axes[0], datasets):
    ours, err = bar_values([by[(m, d)] for m in models], "cs_feat")
    paper = [PAPER[(m, d)][4] if (m, d) in PAPER else np.nan for m in models]
    ax.bar(x - 0.2, ours, 0.4, yerr=err, label="jmeta", color="tab:blue")
    ax.bar(x + 0.2, paper, 0.4, label="paper", color="tab:gray", hatch="//", alpha=0.7)
    ax.set_xticks(x)
    ax.set_xticklabels(models, rotation=45, ha="right")
    ax.set_title(d)
  axes[0][0].set_ylabel("CS_feat (%)")
  fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right")
  fig.tight_layout(rect=(0, 0, 1 - 1.0 / fig_width, 1))  # the legend keeps 1 in on the right
  return fig


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs (or resumes) Table 1 into ``out_dir``; returns the summary written to results.json."""
  config = resolve(config)
  cells = make_cells(config)  # validates every model / train / metamer config up front
  rd, rows = run_cached_cells(
      cells, config, out_dir,
      lambda c, rd, graphs: feature_cell(c, rd, graphs, cache_dir=config["cache_dir"],
                                         save_metamers=config["save_metamers"],
                                         progress=progress),
      data_dir=data_dir, progress=progress, desc=NAME, compute=not config["stored_only"])
  mcfg = MetamerConfig(**config["metamer"])
  table = markdown_table(rows, config["models"], config["datasets"], num_seeds=mcfg.num_seeds,
                         steps=mcfg.steps)
  flat = []
  for r in rows:
    row = summary_row(r, METRICS, extra=("cs_of_means", "test_acc"))
    p = PAPER.get((r["model"], r["dataset"]))
    if p is not None:
      row.update(paper_s_feat=p[0] / 100, paper_s_match=p[2] / 100, paper_cs_feat=p[4] / 100)
    flat.append(row)
  return write_results(rd, NAME, rows, flat, table, "table1_cs",
                       cs_figure(rows, config["models"], config["datasets"]))


main = script_main(NAME, run, SCHEMA)

if __name__ == "__main__":
  sys.exit(main())
