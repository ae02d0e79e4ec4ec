"""Figure 8: layer-wise feature metamers (paper Sec 4.5).

4-layer GNNs (``model.num_layers``), feature metamers targeting the activations of hidden layers
1, 2 and 3 (``layers``; layer 4 is the logits), four models on five datasets; CS_feat (eq. 15)
against the targeted layer. The paper does not name the four models; the default config uses
GCN, GraphSAGE, GIN and GAT.

Each (dataset, model) is trained once (the checkpoint cache shares it between its layers); each
cell synthesises ``metamer.num_seeds`` metamers in one vmapped run; mean ± std over the seeds.

Run:  python experiments/fig8_depth.py [--quick] [--set layers=[1,3]] [--out DIR]
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from jmeta import config_io, runs
from jmeta.config_io import KwargsOf, ListOf, MapOf, OneOf, Optional as Opt, Range, Required
from jmeta.data import DATASETS, csbm
from jmeta.metamers import MetamerConfig
from jmeta.models import MODEL_NAMES, ModelConfig
from jmeta.train import TrainConfig


def _sibling(name: str):
  """Imports ``experiments/<name>.py`` (the scripts are loaded by file path, not as a package)."""
  key = f"jmeta_experiments.{name}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]


common = _sibling("fig6_mitigation")  # config helpers, the metamer cell, the command line

EXPERIMENT = "fig8_depth"

SCHEMA = {
    "datasets": Required(ListOf(OneOf(*DATASETS), min_len=1, unique=True)),
    "models": Required(ListOf(OneOf(*MODEL_NAMES), min_len=1, unique=True)),
    "layers": Required(ListOf(Range(1, None, integer=True), min_len=1, unique=True)),
    "split": Range(0, None, integer=True),
    "seed": Range(0, None, integer=True),
    "model": ModelConfig,
    "model_overrides": MapOf(OneOf(*MODEL_NAMES), ModelConfig),
    "train": TrainConfig,
    "metamer": MetamerConfig,
    "synthetic": KwargsOf(csbm),
    "skip": MapOf(str, str),
    "cache_dir": Opt(str),
    "save_metamers": bool,
}

DEFAULTS = {"split": 0, "seed": 0, "model": {}, "model_overrides": {}, "train": {},
            "metamer": {}, "synthetic": {}, "skip": {}, "cache_dir": None,
            "save_metamers": False}


def resolve(config: Mapping[str, Any]) -> dict:
  """Validated config with defaults; every targeted layer must be a hidden layer."""
  config = common.resolve_config(config, SCHEMA, DEFAULTS)
  if "layer" in config["metamer"]:
    raise config_io.ConfigError("metamer.layer: the targeted layers come from 'layers'")
  for name in config["models"]:
    k = common.model_config(config, name).num_layers
    bad = [layer for layer in config["layers"] if layer >= k]
    if bad:
      raise config_io.ConfigError(f"layers: {bad} are not hidden layers of the {k}-layer {name} "
                                  f"(layer {k} is the logits); set model.num_layers")
  return config


def make_cells(config: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
  """``(cells to run, skipped cells)`` over datasets x models x targeted layers."""
  todo, skipped = [], []
  for dataset in config["datasets"]:
    for name in config["models"]:
      mc = common.model_config(config, name)
      tc = common.train_config(config, name)
      for layer in config["layers"]:
        cid = f"{dataset}-{name}-L{layer}"
        reason = config["skip"].get(f"{name}/{dataset}")
        if reason:
          skipped.append({"id": cid, "dataset": dataset, "model": name, "layer": layer,
                          "status": "skipped", "note": reason})
          continue
        todo.append({"id": cid, "layer": layer,
                     **common.cell_common(config, dataset, mc, tc, layer=layer)})
  return todo, skipped


def markdown_table(config: Mapping[str, Any], results: Sequence[dict]) -> str:
  """Rows: model / targeted layer; columns: datasets; cells: CS_feat mean ± std (%)."""
  by_id = {r["id"]: r for r in results}
  k = common.model_config(config, config["models"][0]).num_layers
  lines = [f"CS_feat (%) of feature metamers of {k}-layer models against the targeted layer, "
           f"mean ± std over {MetamerConfig(**config['metamer']).num_seeds} metamer seeds.", "",
           "| model | layer | " + " | ".join(config["datasets"]) + " |",
           "|---|---|" + "---|" * len(config["datasets"])]
  notes = []
  for m in config["models"]:
    for layer in config["layers"]:
      cells = []
      for d in config["datasets"]:
        r = by_id[f"{d}-{m}-L{layer}"]
        if r.get("status") == "skipped":
          cells.append("skipped¹")
          notes.append(f"¹ {m} on {d}: {r['note']}")
        else:
          cells.append(runs.format_mean_std(r["cs_feat"], digits=2))
      lines.append(f"| {m} | {layer} | " + " | ".join(cells) + " |")
  return "\n".join(lines + [""] + list(dict.fromkeys(notes)))


def plot(config: Mapping[str, Any], results: Sequence[dict]):
  """CS_feat against the targeted layer: one panel per dataset, one line per model."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by_id = {r["id"]: r for r in results}
  layers = sorted(config["layers"])
  fig, axes = plt.subplots(1, len(config["datasets"]),
                           figsize=(3.6 * len(config["datasets"]) + 1, 3.4), squeeze=False)
  for ax, d in zip(axes[0], config["datasets"]):
    for m in config["models"]:
      pts = [(layer, *runs.mean_std(by_id[f"{d}-{m}-L{layer}"]["cs_feat"])) for layer in layers
             if by_id[f"{d}-{m}-L{layer}"].get("status") != "skipped"]
      if pts:
        x, mean, std = map(np.asarray, zip(*pts))
        ax.errorbar(x, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=m)
    ax.set_xticks(layers)
    ax.set_xlabel("targeted layer")
    ax.set_ylabel("CS_feat (%)")
    ax.set_title(d)
  axes[0][0].legend(fontsize=8)
  fig.suptitle("Fig. 8: CS_feat at different target layers", fontsize=10)
  fig.tight_layout()
  return fig


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs Figure 8 into ``out_dir`` (resumable); returns the summary written to metrics.json."""
  config = resolve(config)
  todo, skipped = make_cells(config)
  run_dir = runs.RunDir(out_dir)
  run_dir.write_config(config)
  get_graph = common.graph_loader(config, data_dir)
  done = runs.run_grid(
      todo, lambda c: common.metamer_cell(c, config, get_graph, data_dir=data_dir,
                                          progress=progress, run_dir=run_dir),
      run_dir, desc=EXPERIMENT, progress=progress)
  by_id = {r["id"]: r for r in [*done, *skipped]}
  results = [by_id[f"{d}-{m}-L{layer}"] for d in config["datasets"] for m in config["models"]
             for layer in config["layers"]]
  rows = [common.cell_row(r, ("id", "dataset", "model", "layer")) for r in results]
  table = markdown_table(config, results)
  files = {"csv": run_dir.write_csv("metrics", rows),
           "table": run_dir.write_markdown("table", table),
           "arrays": common.write_metric_arrays(run_dir, results),
           "figure": run_dir.save_figure(EXPERIMENT, plot(config, results))}
  summary = {"experiment": EXPERIMENT, "rows": rows, "table_markdown": table,
             "files": {k: os.path.relpath(v, out_dir) for k, v in files.items()}}
  run_dir.write_json("metrics", summary)
  return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
  from jmeta.cli import experiment_main
  return experiment_main(EXPERIMENT, run, SCHEMA, argv)


if __name__ == "__main__":
  sys.exit(main())
