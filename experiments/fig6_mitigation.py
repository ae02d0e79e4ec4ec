"""Figure 6: mitigating over-invariance (paper Sec 4.4).

CS_feat (eq. 15) of layer-1 feature metamers for four variants of every model on every dataset:

* ``baseline``: the model as in Table 1 (ReLU, no residual connections, clean training);
* ``elu``: ReLU replaced by ELU (Appendix A.1.2: ELU has no zero-derivative region);
* ``adversarial``: PGD adversarial training on the node features (`jmeta.train.AdversarialConfig`,
  the config's ``adversarial`` section);
* ``residual``: residual connections on the hidden layers (``ModelConfig.residual``).

Graphormer blocks always carry their pre-LN residuals, so its ``residual`` variant *is* its
baseline: the cell is not recomputed, it reuses the baseline's numbers and is marked so. Run
without the baseline (``variants=[residual]``), the cell is computed with the baseline's configs
(``residual: false``), so it shares the baseline's checkpoint and cached metamers (Table 1's).
``skip`` lists ``model/dataset`` pairs that are not run, with the reason (Graphormer on PubMed:
its dense ``[n, n]`` attention does not fit in memory here).

Each cell trains (or loads from the checkpoint cache) one model and synthesises
``metamer.num_seeds`` metamers in one vmapped run; the table reports mean ± std over the seeds.

Run:  python experiments/fig6_mitigation.py [--quick] [--set metamer.steps=500] [--out DIR]
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from jmeta import config_io, runs
from jmeta.config_io import ListOf, OneOf
from jmeta.models import ModelConfig
from jmeta.study import (cell_common, grid_cells, grid_results, grid_table, model_config,
                         num_seeds, pyplot, resolve_config, run_feature_grid, schema_defaults,
                         schema_entries, script_main, train_config)
from jmeta.train import AdversarialConfig, TrainConfig

EXPERIMENT = "fig6_mitigation"
VARIANTS = ("baseline", "elu", "adversarial", "residual")

SCHEMA = {
    **schema_entries("datasets", "models", required=("datasets", "models")),
    "variants": ListOf(OneOf(*VARIANTS), min_len=1, unique=True),
    **schema_entries("split", "seed", "model", "model_overrides", "train", "train_overrides",
                     "adversarial", "metamer", "synthetic", "skip", "cache_dir", "save_metamers"),
}

DEFAULTS = schema_defaults(SCHEMA, variants=list(VARIANTS))


def resolve(config: Mapping[str, Any]) -> dict:
  """Validated config with defaults (`jmeta.study.resolve_config`); metamers target layer 1."""
  config = resolve_config(config, SCHEMA, DEFAULTS)
  if config["metamer"].get("layer", 1) != 1:
    raise config_io.ConfigError("metamer.layer: Figure 6 targets layer 1 only")
  return config


# -- Figure 6 --------------------------------------------------------------------------------------


def variant_configs(config: Mapping[str, Any], name: str,
                    variant: str) -> tuple[ModelConfig, TrainConfig]:
  """Model and training configs of ``variant`` of architecture ``name``."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
  extra_model = {"elu": {"activation": "elu"}, "residual": {"residual": True}}.get(variant, {})
  extra_train = ({"adversarial": AdversarialConfig(**config["adversarial"])}
                 if variant == "adversarial" else {})
  return model_config(config, name, **extra_model), train_config(config, name, **extra_train)


def make_cells(config: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
  """``(cells to run, cells not run)``; a cell not run is a skip (with ``reason``) or a
  Graphormer ``residual`` cell that equals its baseline (``same_as``)."""

  def make(dataset: str, name: str, variant: str) -> dict:
    if name == "graphormer" and variant == "residual":
      if "baseline" in config["variants"]:
        return {"status": "same_as_baseline", "same_as": f"{dataset}-{name}-baseline",
                "note": "Graphormer blocks always have residual connections: this variant is "
                        "the baseline"}
      variant = "baseline"  # the same model: share its checkpoint and metamer cache
    return cell_common(config, dataset, *variant_configs(config, name, variant))

  return grid_cells(config, "variant", config["variants"], "", make)


def merge_results(config: Mapping[str, Any], done: Sequence[dict],
                  other: Sequence[dict]) -> list[dict]:
  """All cells in (dataset, model, variant) order; ``same_as`` cells copy their baseline."""
  by_id = {r["id"]: {"status": "ok", **r} for r in done}
  for o in other:
    if o["status"] == "same_as_baseline":
      base = by_id[o["same_as"]]
      by_id[o["id"]] = {**{k: v for k, v in base.items() if k not in ("id", "variant")}, **o}
    else:
      by_id[o["id"]] = dict(o)
  return grid_results(config, config["variants"], "", by_id)


def cs_feat_or_baseline(result: Mapping[str, Any]) -> tuple[str, Optional[str]]:
  """CS_feat mean ± std (%) of a table cell, marked (with a footnote) if it is the baseline's."""
  txt = runs.format_mean_std(result["cs_feat"], digits=2)
  if result["status"] == "same_as_baseline":
    return txt + " (= baseline²)", f"² {result['note']}"
  return txt, None


def markdown_table(config: Mapping[str, Any], results: Sequence[dict]) -> str:
  """Rows: model / variant; columns: datasets; cells: CS_feat mean ± std (%) over seeds."""
  caption = ("CS_feat (%) of layer-1 feature metamers, mean ± std over "
             f"{num_seeds(config)} metamer seeds.")
  return grid_table(caption, "variant", config, results, config["variants"], "",
                    cs_feat_or_baseline)


def plot(config: Mapping[str, Any], results: Sequence[dict]):
  """Grouped bars: one panel per dataset, models on the x axis, one bar per variant."""
  plt = pyplot()
  by_id = {r["id"]: r for r in results}
  datasets, models, variants = config["datasets"], config["models"], config["variants"]
  fig_width = 4.2 * len(datasets) + 1.4
  fig, axes = plt.subplots(1, len(datasets), figsize=(fig_width, 3.6), squeeze=False)
  width = 0.8 / len(variants)
  colors = {"baseline": "0.55", "elu": "tab:blue", "adversarial": "tab:red",
            "residual": "tab:green"}
  for ax, d in zip(axes[0], datasets):
    x = np.arange(len(models))
    for j, v in enumerate(variants):
      for i, m in enumerate(models):
        r = by_id[f"{d}-{m}-{v}"]
        xi = x[i] - 0.4 + (j + 0.5) * width
        if r["status"] == "skipped":
          ax.text(xi, 1, "×", ha="center", va="bottom", fontsize=8)
          continue
        mean, std = runs.mean_std(r["cs_feat"])
        ax.bar(xi, 100 * mean, width, yerr=100 * std, color=colors[v],
               hatch="//" if r["status"] == "same_as_baseline" else None,
               label=v if i == 0 else None, capsize=2, edgecolor="white", linewidth=0.3)
    ax.set_xticks(x, models, rotation=30)
    ax.set_title(d)
    ax.set_ylabel("CS_feat (%)")
  handles, labels = axes[0][0].get_legend_handles_labels()
  seen = dict(zip(labels, handles))
  fig.legend(list(seen.values()), list(seen.keys()), loc="center right", fontsize=8)
  fig.suptitle("Fig. 6: mitigation of over-invariance (× skipped, hatched = same as baseline)",
               fontsize=10)
  fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig_width, 0.93))  # the legend keeps 1.2 in on the right
  return fig


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs Figure 6 into ``out_dir`` (resumable); returns the summary written to metrics.json."""
  config = resolve(config)
  return run_feature_grid(EXPERIMENT, config, out_dir, "variant", config["variants"], "",
                          make_cells(config), table=markdown_table, plot=plot,
                          data_dir=data_dir, progress=progress,
                          merge=lambda done, other: merge_results(config, done, other))


main = script_main(EXPERIMENT, run, SCHEMA)

if __name__ == "__main__":
  sys.exit(main())
