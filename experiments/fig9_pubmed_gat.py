"""Figure 9: PubMed features beside GAT feature metamers from layers 1, 2 and 3 (paper Sec 4.5).

The paper shows Figure 9 in its layer-wise section, whose models are 4-layer GNNs, so the GAT
here has ``model.num_layers = 4`` and hidden layers 1-3 are targeted (layer 4 is the logits).
One GAT is trained (cached checkpoint); each targeted layer is one cell of ``metamer.num_seeds``
vmapped metamers.

The picture is a crop, ``crop.rows`` nodes x ``crop.cols`` features: the first ``crop.rows``
nodes and the ``crop.cols`` features that are non-zero in most nodes (TF-IDF features are
sparse, so a crop of the first columns would be nearly blank), all panels on one colour scale
(``[0, vmax]``, ``vmax`` the ``crop.percentile``-th percentile of all panels). Each panel title
gives, for the metamer shown (seed 0), S_feat (eq. 13) and both activation similarities at the
targeted layer: ``1 - L_act`` (eq. 5) and the cosine of the flattened activations. The table
gives mean ± std over the seeds.

Run:  python experiments/fig9_pubmed_gat.py [--quick] [--out DIR]
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from jmeta import runs
from jmeta.config_io import OneOf, Range
from jmeta.models import MODEL_NAMES
from jmeta.study import (METRICS, cell_common, cell_defaults, cell_feature_metamers, cell_model,
                         cell_row, check_target_layers, graph_loader, model_config, num_seeds,
                         open_run, pyplot, resolve_config, schema_entries, script_main,
                         seed_metrics, snapshot_path, train_config, write_summary)

EXPERIMENT = "fig9_pubmed_gat"

SCHEMA = {
    **schema_entries("dataset", required=("dataset",)),
    "model_name": OneOf(*MODEL_NAMES),
    **schema_entries("layers", "split", "seed", "model", "train", "metamer", required=("layers",)),
    "crop": {"rows": Range(1, None, integer=True), "cols": Range(1, None, integer=True),
             "percentile": Range(0.0, 100.0)},
    **schema_entries("synthetic", "cache_dir"),
}

# Written out (not `schema_defaults`): ``model_overrides`` is no key of this schema, but the shared
# config helpers read it, and the saved config keeps this order.
DEFAULTS = {"model_name": "gat", "split": 0, "seed": 0, "model": {}, "model_overrides": {},
            "train": {}, "metamer": {}, "crop": {}, "synthetic": {}, "cache_dir": None}
CROP_DEFAULTS = {"rows": 100, "cols": 100, "percentile": 99.5}


def resolve(config: Mapping[str, Any]) -> dict:
  """Validated config with defaults; the targeted layers must be hidden layers."""
  config = resolve_config(config, SCHEMA, DEFAULTS)
  config["crop"] = {**CROP_DEFAULTS, **config["crop"]}
  check_target_layers(config, config["model_name"], "model")
  return config


def crop_indices(x: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows ``0..rows-1`` and the ``cols`` columns non-zero in most nodes (ascending index).

  Args:
    x: ``[n, d]`` reference features.

  Returns:
    ``(row_idx [min(rows, n)], col_idx [min(cols, d)])`` int arrays.
  """
  x = np.asarray(x)
  count = np.count_nonzero(x, axis=0)
  order = np.lexsort((np.arange(x.shape[1]), -count))  # most non-zeros first, ties by index
  return np.arange(min(rows, x.shape[0])), np.sort(order[:min(cols, x.shape[1])])


def make_cells(config: Mapping[str, Any]) -> list[dict]:
  """One cell per targeted layer."""
  name = config["model_name"]
  mc, tc = model_config(config, name), train_config(config, name)
  return [{"id": f"{config['dataset']}-{name}-L{layer}", "layer": layer,
           **cell_common(config, config["dataset"], mc, tc, layer=layer)}
          for layer in config["layers"]]


def layer_cell(cell: Mapping[str, Any], config: Mapping[str, Any], get_graph, run_dir,
               *, data_dir: Optional[str], progress: bool) -> dict:
  """Metamers of one targeted layer; writes the crop of every seed to ``crops/<id>.npz``."""
  graph = get_graph(cell["dataset"])
  tm = cell_model(cell, graph, split=config["split"], cache_dir=config["cache_dir"],
                  progress=progress, data_dir=data_dir)
  res = cell_feature_metamers(tm, graph, cell["metamer"], config["seed"], progress=progress,
                              snapshot=snapshot_path(run_dir, cell["id"]))
  r_idx, c_idx = crop_indices(np.asarray(graph.x), config["crop"]["rows"],
                              config["crop"]["cols"])
  crops = np.asarray(res.metamers, np.float32)[:, r_idx][:, :, c_idx]
  run_dir.write_npz(os.path.join("crops", cell["id"]), metamer_crops=crops, rows=r_idx,
                    cols=c_idx)
  out = seed_metrics(res)
  out.update(act_loss=[float(v) for v in res.metrics["act_loss"]],
             model_test_acc=float(tm.metrics["test"]),
             metamer_run_seconds=float(res.info["run_seconds"]),
             metamer_compile_seconds=float(res.info["compile_seconds"]))
  return out


def title(layer: int, r: Mapping[str, Any], seed: int = 0) -> str:
  """Panel title: seed ``seed``'s S_feat and both activation similarities, in percent."""
  return (f"metamer from layer {layer} (seed {seed})\nS_feat {100 * r['s_feat'][seed]:.1f}%\n"
          f"activation similarity: 1 - L_act {100 * r['act_one_minus_loss'][seed]:.2f}%, "
          f"cosine {100 * r['act_cosine'][seed]:.2f}%")


def plot(config: Mapping[str, Any], x_crop: np.ndarray, panels: Sequence[tuple]):
  """Reference crop beside the metamer crops (seed 0), one shared colour scale ``[0, vmax]``.

  Args:
    x_crop: ``[r, c]`` reference features.
    panels: ``(layer, crop [r, c], result)`` per targeted layer.
  """
  plt = pyplot()
  allv = np.concatenate([x_crop.ravel()] + [p[1].ravel() for p in panels])
  vmax = float(np.percentile(allv, config["crop"]["percentile"])) or 1.0
  fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4.4 * (1 + len(panels)) + 0.8, 4.6),
                           squeeze=False, layout="constrained")
  axes = axes[0]
  im = axes[0].imshow(x_crop, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto",
                      interpolation="nearest")
  axes[0].set_title(f"original {config['dataset']} features\n"
                    f"{x_crop.shape[0]} nodes x {x_crop.shape[1]} most frequent features",
                    fontsize=8)
  for ax, (layer, crop, r) in zip(axes[1:], panels):
    ax.imshow(crop, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_title(title(layer, r), fontsize=8)
  for ax in axes:
    ax.set_xlabel("feature (crop column)")
    ax.set_ylabel("node")
  fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01, label=f"feature value (0..{vmax:.3g})")
  fig.suptitle(f"Fig. 9: feature metamers from different {config['model_name'].upper()} layers "
               f"({config['dataset']})", fontsize=10)
  return fig


def markdown_table(config: Mapping[str, Any], results: Sequence[dict]) -> str:
  """Rows: targeted layer; S_feat, S_match, CS_feat and both activation similarities (%)."""
  k = model_config(config, config["model_name"]).num_layers
  lines = [f"Feature metamers of a {k}-layer {config['model_name']} on {config['dataset']}, "
           f"mean ± std over {num_seeds(config)} seeds (%). "
           "Activation similarity at the targeted layer: 1 - L_act (eq. 5) and cosine.", "",
           "| layer | S_feat | S_match | CS_feat | act. sim 1 - L_act | act. sim cosine |",
           "|---|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r['layer']} | " + " | ".join(
        runs.format_mean_std(r[m], digits=2) for m in METRICS) + " |")
  return "\n".join(lines)


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs Figure 9 into ``out_dir`` (resumable); returns the summary written to metrics.json."""
  config = resolve(config)
  cells = make_cells(config)
  run_dir = open_run(out_dir, config)
  get_graph = graph_loader(config, data_dir)
  results = runs.run_grid(
      cells, lambda c: layer_cell(c, config, get_graph, run_dir, data_dir=data_dir,
                                  progress=progress),
      run_dir, desc=EXPERIMENT, progress=progress, defaults=cell_defaults())
  x = np.asarray(get_graph(config["dataset"]).x)
  panels = []
  for r in results:
    with np.load(run_dir.file(os.path.join("crops", f"{r['id']}.npz"))) as z:
      r_idx, c_idx, crop0 = z["rows"], z["cols"], z["metamer_crops"][0]
    panels.append((r["layer"], crop0, r))
  x_crop = x[r_idx][:, c_idx]
  rows = [{**cell_row(r, ("id", "dataset", "model", "layer")),
           "title": title(r["layer"], r).replace("\n", " ")} for r in results]
  arrays = run_dir.write_npz("figure_arrays", reference_crop=x_crop, rows=r_idx, cols=c_idx,
                             **{f"metamer_crop_L{p[0]}": p[1] for p in panels})
  return write_summary(run_dir, EXPERIMENT, rows, markdown_table(config, results),
                       arrays=arrays, figure=plot(config, x_crop, panels))


main = script_main(EXPERIMENT, run, SCHEMA)

if __name__ == "__main__":
  sys.exit(main())
