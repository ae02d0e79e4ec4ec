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

import sys
from typing import Any, Mapping, Optional, Sequence

from jmeta.study import (cell_common, check_target_layers, grid_cells, grid_lines, grid_table,
                         model_config, num_seeds, resolve_config, run_feature_grid,
                         schema_defaults, schema_entries, script_main, train_config)

EXPERIMENT = "fig8_depth"

SCHEMA = schema_entries("datasets", "models", "layers", "split", "seed", "model", "model_overrides",
                        "train", "train_overrides", "metamer", "synthetic", "skip", "cache_dir",
                        "save_metamers", required=("datasets", "models", "layers"))

DEFAULTS = schema_defaults(SCHEMA)


def resolve(config: Mapping[str, Any]) -> dict:
  """Validated config with defaults; every targeted layer must be a hidden layer."""
  config = resolve_config(config, SCHEMA, DEFAULTS)
  for name in config["models"]:
    check_target_layers(config, name, name)
  return config


def make_cells(config: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
  """``(cells to run, skipped cells)`` over datasets x models x targeted layers."""
  return grid_cells(config, "layer", config["layers"], "L", lambda dataset, name, layer: (
      cell_common(config, dataset, model_config(config, name), train_config(config, name),
                  layer=layer)))


def markdown_table(config: Mapping[str, Any], results: Sequence[dict]) -> str:
  """Rows: model / targeted layer; columns: datasets; cells: CS_feat mean ± std (%)."""
  k = model_config(config, config["models"][0]).num_layers
  caption = (f"CS_feat (%) of feature metamers of {k}-layer models against the targeted layer, "
             f"mean ± std over {num_seeds(config)} metamer seeds.")
  return grid_table(caption, "layer", config, results, config["layers"], "L")


def plot(config: Mapping[str, Any], results: Sequence[dict]):
  """CS_feat against the targeted layer: one panel per dataset, one line per model."""
  return grid_lines(config, results, config["layers"], "L", xlabel="targeted layer",
                    title="Fig. 8: CS_feat at different target layers")


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs Figure 8 into ``out_dir`` (resumable); returns the summary written to metrics.json."""
  config = resolve(config)
  return run_feature_grid(EXPERIMENT, config, out_dir, "layer", config["layers"], "L",
                          make_cells(config), table=markdown_table, plot=plot,
                          data_dir=data_dir, progress=progress)


main = script_main(EXPERIMENT, run, SCHEMA)

if __name__ == "__main__":
  sys.exit(main())
