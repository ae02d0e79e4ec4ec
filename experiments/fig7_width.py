"""Figure 7: hidden width against over-invariance (paper Sec 4.4).

CS_feat (eq. 15) of layer-1 feature metamers of 2-layer models with hidden width 16, 32 and 64,
for four models on five datasets. The paper does not name the four models; the default config
uses GCN, GraphSAGE, GIN and GAT (``models`` in the config). For GAT, ``hidden`` is the total
width of the concatenated heads (8 heads: 2, 4 and 8 channels per head).

Each cell trains (or loads from the checkpoint cache) one model and synthesises
``metamer.num_seeds`` metamers in one vmapped run; mean ± std over the seeds.

Run:  python experiments/fig7_width.py [--quick] [--set widths=[16,64]] [--out DIR]
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

EXPERIMENT = "fig7_width"

SCHEMA = {
    "datasets": Required(ListOf(OneOf(*DATASETS), min_len=1, unique=True)),
    "models": Required(ListOf(OneOf(*MODEL_NAMES), min_len=1, unique=True)),
    "widths": Required(ListOf(Range(1, None, integer=True), min_len=1, unique=True)),
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
  """Validated config with defaults; ``hidden`` may not be set elsewhere (``widths`` sets it)."""
  config = common.resolve_config(config, SCHEMA, DEFAULTS)
  for where, sec in [("model", config["model"])] + [
      (f"model_overrides.{m}", s) for m, s in config["model_overrides"].items()]:
    if "hidden" in sec:
      raise config_io.ConfigError(f"{where}.hidden: the width comes from 'widths'")
  if config["metamer"].get("layer", 1) != 1:
    raise config_io.ConfigError("metamer.layer: Figure 7 targets layer 1 only")
  return config


def make_cells(config: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
  """``(cells to run, skipped cells)`` over datasets x models x widths."""
  todo, skipped = [], []
  for dataset in config["datasets"]:
    for name in config["models"]:
      for width in config["widths"]:
        cid = f"{dataset}-{name}-w{width}"
        reason = config["skip"].get(f"{name}/{dataset}")
        if reason:
          skipped.append({"id": cid, "dataset": dataset, "model": name, "width": width,
                          "status": "skipped", "note": reason})
          continue
        mc = common.model_config(config, name, hidden=width)
        tc = common.train_config(config, name)
        todo.append({"id": cid, "width": width, **common.cell_common(config, dataset, mc, tc)})
  return todo, skipped


def markdown_table(config: Mapping[str, Any], results: Sequence[dict]) -> str:
  """Rows: model / width; columns: datasets; cells: CS_feat mean ± std (%)."""
  by_id = {r["id"]: r for r in results}
  lines = ["CS_feat (%) of layer-1 feature metamers against hidden width, mean ± std over "
           f"{MetamerConfig(**config['metamer']).num_seeds} metamer seeds.", "",
           "| model | width | " + " | ".join(config["datasets"]) + " |",
           "|---|---|" + "---|" * len(config["datasets"])]
  notes = []
  for m in config["models"]:
    for w in config["widths"]:
      cells = []
      for d in config["datasets"]:
        r = by_id[f"{d}-{m}-w{w}"]
        if r.get("status") == "skipped":
          cells.append("skipped¹")
          notes.append(f"¹ {m} on {d}: {r['note']}")
        else:
          cells.append(runs.format_mean_std(r["cs_feat"], digits=2))
      lines.append(f"| {m} | {w} | " + " | ".join(cells) + " |")
  return "\n".join(lines + [""] + list(dict.fromkeys(notes)))


def plot(config: Mapping[str, Any], results: Sequence[dict]):
  """CS_feat against width: one panel per dataset, one line per model (error bars = std)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by_id = {r["id"]: r for r in results}
  widths = sorted(config["widths"])
  fig, axes = plt.subplots(1, len(config["datasets"]),
                           figsize=(3.6 * len(config["datasets"]) + 1, 3.4), squeeze=False)
  for ax, d in zip(axes[0], config["datasets"]):
    for m in config["models"]:
      pts = [(w, *runs.mean_std(by_id[f"{d}-{m}-w{w}"]["cs_feat"])) for w in widths
             if by_id[f"{d}-{m}-w{w}"].get("status") != "skipped"]
      if pts:
        w_, mean, std = map(np.asarray, zip(*pts))
        ax.errorbar(w_, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("hidden width")
    ax.set_ylabel("CS_feat (%)")
    ax.set_title(d)
  axes[0][0].legend(fontsize=8)
  fig.suptitle("Fig. 7: CS_feat against hidden width (layer-1 feature metamers)", fontsize=10)
  fig.tight_layout()
  return fig


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs Figure 7 into ``out_dir`` (resumable); returns the summary written to metrics.json."""
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
  results = [by_id[f"{d}-{m}-w{w}"] for d in config["datasets"] for m in config["models"]
             for w in config["widths"]]
  rows = [common.cell_row(r, ("id", "dataset", "model", "width")) for r in results]
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
