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

import sys
from typing import Any, Mapping, Optional, Sequence

from jmeta import config_io
from jmeta.config_io import ListOf, Range, Required
from jmeta.study import (cell_common, grid_cells, grid_lines, grid_table, model_config,
                         model_sections, num_seeds, resolve_config, run_feature_grid,
                         schema_defaults, schema_entries, script_main, train_config)

EXPERIMENT = "fig7_width"

SCHEMA = {
    **schema_entries("datasets", "models", required=("datasets", "models")),
    "widths": Required(ListOf(Range(1, None, integer=True), min_len=1, unique=True)),
    **schema_entries("split", "seed", "model", "model_overrides", "train", "train_overrides",
                     "metamer", "synthetic", "skip", "cache_dir", "save_metamers"),
}

DEFAULTS = schema_defaults(SCHEMA)


def resolve(config: Mapping[str, Any]) -> dict:
  """Validated config with defaults; ``hidden`` may not be set elsewhere (``widths`` sets it)."""
  config = resolve_config(config, SCHEMA, DEFAULTS)
  for where, sec in model_sections(config):
    if "hidden" in sec:
      raise config_io.ConfigError(f"{where}.hidden: the width comes from 'widths'")
  if config["metamer"].get("layer", 1) != 1:
    raise config_io.ConfigError("metamer.layer: Figure 7 targets layer 1 only")
  return config


def make_cells(config: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
  """``(cells to run, skipped cells)`` over datasets x models x widths."""
  return grid_cells(config, "width", config["widths"], "w", lambda dataset, name, width: (
      cell_common(config, dataset, model_config(config, name, hidden=width),
                  train_config(config, name))))


def markdown_table(config: Mapping[str, Any], results: Sequence[dict]) -> str:
  """Rows: model / width; columns: datasets; cells: CS_feat mean ± std (%)."""
  caption = ("CS_feat (%) of layer-1 feature metamers against hidden width, mean ± std over "
             f"{num_seeds(config)} metamer seeds.")
  return grid_table(caption, "width", config, results, config["widths"], "w")


def plot(config: Mapping[str, Any], results: Sequence[dict]):
  """CS_feat against width: one panel per dataset, one line per model (error bars = std)."""
  return grid_lines(config, results, config["widths"], "w", xlabel="hidden width", log2=True,
                    title="Fig. 7: CS_feat against hidden width (layer-1 feature metamers)")


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs Figure 7 into ``out_dir`` (resumable); returns the summary written to metrics.json."""
  config = resolve(config)
  return run_feature_grid(EXPERIMENT, config, out_dir, "width", config["widths"], "w",
                          make_cells(config), table=markdown_table, plot=plot,
                          data_dir=data_dir, progress=progress)


main = script_main(EXPERIMENT, run, SCHEMA)

if __name__ == "__main__":
  sys.exit(main())
