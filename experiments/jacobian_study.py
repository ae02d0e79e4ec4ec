"""Jacobian-rank study: local metamer dimension d' - r per model and layer, against CS_feat.

Appendix A.1.1 of the paper: the local metamer manifold of node v has dimension ``d' - r_v``,
``r_v = rank Df(u_v)`` (eq. 18-22), and Sec 4.2 argues that models with a higher rank (smaller
``d' - r``, e.g. GAT and Graphormer whose attention depends on the input) have a higher CS_feat.
For every model (2-layer, trained on ``dataset``, cached) and every layer in ``layers``, this
computes the exact per-node ranks (`jmeta.jacobian.node_ranks`), and relates the layer-1 mean
``(d' - r) / d'`` to the model's CS_feat on the same dataset: read from a Table 1 results
directory (``table1_dir``) when it holds a cell with the same model, train and metamer layer
configuration, else computed here with ``fallback_metamer`` (a shorter feature-metamer run).

``d'`` differs between models (SAGE: ``2d``, ChebNet: ``K d``), so the scatter uses the
normalised dimension ``(d' - r) / d'`` and also reports ``d' - r``; the rank correlation
(Spearman) is over models.

Outputs (``results/jacobian_study``): config, versions, ``cells/`` (resumable grid),
``ranks/<model>-L<layer>.json|npz|png`` (summary, per-node ranks, histogram), ``results.json``,
``metrics.csv``, ``table.md``, ``jacobian_vs_cs.png``.

Usage:
  jmeta experiment jacobian_study [--quick] [--set table1_dir=results/table1]
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

from jmeta import runs
from jmeta.config_io import OneOf, Optional as Opt, Range
from jmeta.jacobian import MODES, RANK_METHODS
from jmeta.metamers import MetamerConfig
from jmeta.study import (cell_feature_metamers, cell_model, fill_defaults,
                         model_train_configs, pyplot, run_cached_cells, schema_defaults,
                         schema_entries, script_main, snapshot_path, synthetic_section,
                         table1_cell)

NAME = "jacobian_study"

SCHEMA = {
    **schema_entries("models", "dataset", "layers", "split", "seed", "model", "model_overrides",
                     "train", "train_overrides"),
    "method": OneOf(*RANK_METHODS),
    "mode": OneOf(*MODES),
    "rtol": Opt(float),
    "chunk_size": Range(1, None, integer=True),
    "num_nodes": Opt(Range(1, None, integer=True)),
    "table1_dir": Opt(str),
    "fallback_metamer": MetamerConfig,
    **schema_entries("synthetic", "cache_dir"),
}

DEFAULTS = schema_defaults(SCHEMA, layers=[1, 2], method="factored", mode="auto", rtol=None,
                           chunk_size=256, num_nodes=None, table1_dir="results/table1",
                           fallback_metamer={"layer": 1, "steps": 200, "num_seeds": 2})


def resolve(config: dict) -> dict:
  """The config with defaults filled in; every layer must exist in the models."""
  out = fill_defaults(config, DEFAULTS, ("models", "dataset"), NAME)
  num_layers = runs.model_config_from(out, out["models"][0]).num_layers
  bad = [l for l in out["layers"] if l > num_layers]
  if bad:
    raise ValueError(f"{NAME}: layers {bad} exceed the models' {num_layers} layers")
  return out


def _base_cell(config: dict, m: str) -> dict:
  ds = config["dataset"]
  return {"model": m, "dataset": ds, "split": config["split"], **model_train_configs(config, m),
          "synthetic": synthetic_section(config, ds)}


def table1_cs(table1_dir: Optional[str], cell: dict) -> Optional[dict]:
  """CS_feat of ``cell``'s model from a Table 1 results directory, if it holds a finished cell
  with the same dataset, split, model config, train config and metamer layer 1."""
  rec = table1_cell(table1_dir, cell["model"], cell["dataset"],
                    {k: cell[k] for k in ("split", "synthetic", "model_config", "train_config")})
  if rec is None or (rec["cell"].get("metamer_config") or {}).get("layer") != 1:
    return None
  c, r = rec["cell"], rec["result"]
  return {"cs_feat_mean": r["cs_feat_mean"], "cs_feat_std": r["cs_feat_std"],
          "s_feat_mean": r["s_feat_mean"], "s_match_mean": r["s_match_mean"],
          "cs_source": os.path.join(table1_dir, "cells", f"{cell['id']}.json"),
          "cs_steps": c["metamer_config"].get("steps"),
          "cs_seeds": c["metamer_config"].get("num_seeds")}


def make_cells(config: dict) -> list[dict]:
  """Rank cells (model x layer), then one CS cell per model (read from Table 1 or computed)."""
  cells = []
  for m in config["models"]:
    for layer in config["layers"]:
      cells.append({**_base_cell(config, m), "id": f"rank-{m}-L{layer}", "kind": "rank",
                    "layer": layer, "method": config["method"], "mode": config["mode"],
                    "rtol": config["rtol"], "chunk_size": config["chunk_size"],
                    "num_nodes": config["num_nodes"]})
  fb = MetamerConfig(**config["fallback_metamer"])
  for m in config["models"]:
    base = {**_base_cell(config, m), "id": f"cs-{m}", "kind": "cs"}
    found = table1_cs(config["table1_dir"], {**base, "id": f"{m}-{config['dataset']}"})
    if found is not None:
      base["table1"] = found  # part of the cell: a changed Table 1 result recomputes this cell
    else:
      base.update(metamer_config=fb.to_dict(), seed=config["seed"])
    cells.append(base)
  return cells


def rank_cell(cell: dict, rd: runs.RunDir, graphs, *, cache_dir, progress: bool) -> dict:
  """Per-node Jacobian ranks of one (model, layer); writes ``ranks/<model>-L<layer>.*``."""
  from jmeta import jacobian

  graph = graphs.get(cell["dataset"], cell["split"], cell["synthetic"])
  tm = cell_model(cell, graph, split=cell["split"], cache_dir=cache_dir, progress=progress)
  nodes = None if cell["num_nodes"] is None else np.arange(min(cell["num_nodes"],
                                                               graph.num_nodes))
  res = jacobian.node_ranks(tm.model, tm.params, graph, cell["layer"], mode=cell["mode"],
                            method=cell["method"], nodes=nodes, rtol=cell["rtol"],
                            chunk_size=cell["chunk_size"])
  summary = jacobian.rank_summary(res, model=cell["model"], layer=cell["layer"],
                                  dataset=cell["dataset"])
  name = f"ranks/{cell['model']}-L{cell['layer']}"
  rd.write_json(name, summary)
  rd.write_npz(name, ranks=res.ranks, metamer_dim=res.metamer_dim, sigma_max=res.sigma_max,
               nodes=res.nodes)
  jacobian.plot_rank_histogram(summary, rd.file(name + ".png"))
  d = summary["input_dim"]
  return {"input_dim": d, "output_dim": summary["output_dim"],
          "rank_mean": summary["rank"]["mean"], "rank_min": summary["rank"]["min"],
          "rank_max": summary["rank"]["max"], "dim_mean": summary["metamer_dim"]["mean"],
          "dim_min": summary["metamer_dim"]["min"], "dim_max": summary["metamer_dim"]["max"],
          "dim_frac_mean": summary["metamer_dim"]["mean"] / d, "blocks": summary["blocks"],
          "num_nodes_ranked": summary["num_nodes"], "test_acc": tm.metrics.get("test")}


def cs_cell(cell: dict, rd: runs.RunDir, graphs, *, cache_dir, progress: bool) -> dict:
  """CS_feat of one model: the Table 1 result the cell carries, else fallback metamers."""
  if "table1" in cell:
    return dict(cell["table1"], cs_computed=False)
  graph = graphs.get(cell["dataset"], cell["split"], cell["synthetic"])
  tm = cell_model(cell, graph, split=cell["split"], cache_dir=cache_dir, progress=progress)
  mcfg = MetamerConfig.from_dict(cell["metamer_config"])
  res = cell_feature_metamers(tm, graph, cell["metamer_config"], cell["seed"], progress=progress,
                              snapshot=snapshot_path(rd, cell["id"]))
  m = runs.metamer_metrics(res)
  return {"cs_feat_mean": m["cs_feat_mean"], "cs_feat_std": m["cs_feat_std"],
          "s_feat_mean": m["s_feat_mean"], "s_match_mean": m["s_match_mean"],
          "cs_source": "computed (fallback_metamer)", "cs_steps": mcfg.steps,
          "cs_seeds": mcfg.num_seeds, "cs_computed": True}


def spearman(x, y) -> Optional[float]:
  """Spearman rank correlation, or ``None`` with fewer than 3 points / constant input."""
  from scipy.stats import spearmanr
  x, y = np.asarray(x, float), np.asarray(y, float)
  if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
    return None
  return float(spearmanr(x, y).statistic)


def markdown_table(rank_rows: list[dict], per_model: list[dict], rho: Optional[float],
                   rho_raw: Optional[float], dataset: str) -> str:
  lines = [f"# Jacobian-rank study on {dataset}", "",
           "Local metamer dimension d' - r per node (eq. 22), mean [min, max] over nodes; "
           "d' is the local input dimension (SAGE: 2d, ChebNet: K d), m the layer width.", "",
           "| model | layer | d' | m | rank r | d' - r | (d' - r) / d' |",
           "|---|---|---|---|---|---|---|"]
  for r in rank_rows:
    lines.append(f"| {r['model']} | {r['layer']} | {r['input_dim']} | {r['output_dim']} | "
                 f"{r['rank_mean']:.2f} [{r['rank_min']}, {r['rank_max']}] | "
                 f"{r['dim_mean']:.1f} [{r['dim_min']}, {r['dim_max']}] | "
                 f"{r['dim_frac_mean']:.4f} |")
  lines += ["", "Layer-1 dimension against CS_feat (layer-1 feature metamers):", "",
            "| model | (d' - r) / d' | d' - r | CS_feat (%) | source |", "|---|---|---|---|---|"]
  for p in per_model:
    lines.append(f"| {p['model']} | {p['dim_frac_mean']:.4f} | {p['dim_mean']:.1f} | "
                 f"{100 * p['cs_feat_mean']:.2f} ± {100 * p['cs_feat_std']:.2f} | "
                 f"{p['cs_source']} ({p['cs_steps']} steps, {p['cs_seeds']} seeds) |")
  fmt = lambda v: "n/a (fewer than 3 models)" if v is None else f"{v:+.3f}"
  lines += ["", f"Spearman correlation over models: (d' - r)/d' vs CS_feat {fmt(rho)}; "
            f"d' - r vs CS_feat {fmt(rho_raw)}. The paper's argument predicts a negative "
            "correlation (fewer metamer directions, higher consistency)."]
  return "\n".join(lines) + "\n"


def figure(per_model: list[dict]):
  """CS_feat against the layer-1 metamer dimension, normalised (left) and raw (right)."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label in ((axes[0], "dim_frac_mean", "(d' - r) / d' (layer 1, mean over nodes)"),
                         (axes[1], "dim_mean", "d' - r (layer 1, mean over nodes)")):
    for p in per_model:
      ax.errorbar(p[key], 100 * p["cs_feat_mean"], yerr=100 * p["cs_feat_std"], fmt="o")
      ax.annotate(p["model"], (p[key], 100 * p["cs_feat_mean"]), fontsize=8,
                  xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(label)
    ax.set_ylabel("CS_feat (%)")
  fig.suptitle("Local metamer dimension vs consistency")
  fig.tight_layout()
  return fig


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs (or resumes) the study into ``out_dir``; returns the summary written to results.json."""
  config = resolve(config)

  def fn(cell, rd, graphs):
    if cell["kind"] == "rank":
      return rank_cell(cell, rd, graphs, cache_dir=config["cache_dir"], progress=progress)
    return cs_cell(cell, rd, graphs, cache_dir=config["cache_dir"], progress=progress)

  rd, rows = run_cached_cells(make_cells(config), config, out_dir, fn, data_dir=data_dir,
                              progress=progress, desc=NAME)
  rank_rows = [r for r in rows if r["kind"] == "rank"]
  cs = {r["model"]: r for r in rows if r["kind"] == "cs"}
  first = min(config["layers"])
  per_model = []
  for r in rank_rows:
    if r["layer"] == 1 or (r["layer"] == first and 1 not in config["layers"]):
      c = cs[r["model"]]
      per_model.append({"model": r["model"], "layer": r["layer"],
                        "dim_mean": r["dim_mean"], "dim_frac_mean": r["dim_frac_mean"],
                        "input_dim": r["input_dim"], **{k: c[k] for k in (
                            "cs_feat_mean", "cs_feat_std", "s_feat_mean", "s_match_mean",
                            "cs_source", "cs_steps", "cs_seeds")}})
  rho = spearman([p["dim_frac_mean"] for p in per_model], [p["cs_feat_mean"] for p in per_model])
  rho_raw = spearman([p["dim_mean"] for p in per_model], [p["cs_feat_mean"] for p in per_model])
  table = markdown_table(rank_rows, per_model, rho, rho_raw, config["dataset"])
  rd.write_markdown("table", table)
  rd.write_csv("metrics", [{k: r[k] for k in (
      "model", "layer", "input_dim", "output_dim", "rank_mean", "rank_min", "rank_max",
      "dim_mean", "dim_min", "dim_max", "dim_frac_mean")} for r in rank_rows])
  rd.write_csv("dimension_vs_cs", per_model)
  rd.save_figure("jacobian_vs_cs", figure(per_model))
  summary = {"experiment": NAME, "ranks": rank_rows, "dimension_vs_cs": per_model,
             "spearman_dim_frac_vs_cs": rho, "spearman_dim_vs_cs": rho_raw, "table": table}
  rd.write_json("results", summary)
  return summary


main = script_main(NAME, run, SCHEMA)


if __name__ == "__main__":
  sys.exit(main())
