"""Figure 6: mitigating over-invariance (paper Sec 4.4).

CS_feat (eq. 15) of layer-1 feature metamers for four variants of every model on every dataset:

* ``baseline``: the model as in Table 1 (ReLU, no residual connections, clean training);
* ``elu``: ReLU replaced by ELU (Appendix A.1.2: ELU has no zero-derivative region);
* ``adversarial``: PGD adversarial training on the node features (`jmeta.train.AdversarialConfig`,
  the config's ``adversarial`` section);
* ``residual``: residual connections on the hidden layers (``ModelConfig.residual``).

Graphormer blocks always carry their pre-LN residuals, so its ``residual`` variant *is* its
baseline: the cell is not recomputed, it reuses the baseline's numbers and is marked so.
``skip`` lists ``model/dataset`` pairs that are not run, with the reason (Graphormer on PubMed:
its dense ``[n, n]`` attention does not fit in memory here).

Each cell trains (or loads from the checkpoint cache) one model and synthesises
``metamer.num_seeds`` metamers in one vmapped run; the table reports mean ± std over the seeds.

Run:  python experiments/fig6_mitigation.py [--quick] [--set metamer.steps=500] [--out DIR]
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from jmeta import config_io, runs
from jmeta.config_io import KwargsOf, ListOf, MapOf, OneOf, Optional as Opt, Range, Required
from jmeta.data import DATASETS, csbm
from jmeta.metamers import MetamerConfig, feature_metamers
from jmeta.models import MODEL_NAMES, ModelConfig
from jmeta.train import AdversarialConfig, TrainConfig, default_train_config

EXPERIMENT = "fig6_mitigation"
VARIANTS = ("baseline", "elu", "adversarial", "residual")
METRICS = ("s_feat", "s_match", "cs_feat", "act_one_minus_loss", "act_cosine")

SCHEMA = {
    "datasets": Required(ListOf(OneOf(*DATASETS), min_len=1, unique=True)),
    "models": Required(ListOf(OneOf(*MODEL_NAMES), min_len=1, unique=True)),
    "variants": ListOf(OneOf(*VARIANTS), min_len=1, unique=True),
    "split": Range(0, None, integer=True),
    "seed": Range(0, None, integer=True),
    "model": ModelConfig,
    "model_overrides": MapOf(OneOf(*MODEL_NAMES), ModelConfig),
    "train": TrainConfig,
    "adversarial": AdversarialConfig,
    "metamer": MetamerConfig,
    "synthetic": KwargsOf(csbm),
    "skip": MapOf(str, str),
    "cache_dir": Opt(str),
    "save_metamers": bool,
}

DEFAULTS = {"variants": list(VARIANTS), "split": 0, "seed": 0, "model": {},
            "model_overrides": {}, "train": {}, "adversarial": {}, "metamer": {},
            "synthetic": {}, "skip": {}, "cache_dir": None, "save_metamers": False}


# -- config helpers (shared shape with fig7 / fig8 / fig9 / table2) ---------------------------------


def resolve_config(config: Mapping[str, Any], schema: Optional[dict] = None,
                   defaults: Optional[dict] = None) -> dict:
  """Validates ``config`` against ``schema`` (default `SCHEMA`) and fills ``defaults`` (default
  `DEFAULTS`); raises `jmeta.config_io.ConfigError` naming the bad key."""
  schema = SCHEMA if schema is None else schema
  config_io.validate_config(config, schema)
  out = {**(DEFAULTS if defaults is None else defaults), **dict(config)}
  sections = [("model", out["model"])] + [(f"model_overrides.{m}", sec)
                                          for m, sec in out["model_overrides"].items()]
  for where, sec in sections:
    if "name" in sec:
      raise config_io.ConfigError(f"{where}.name: the architecture comes from 'models', not "
                                  f"from this section")
  for key in out.get("skip", {}):
    parts = key.split("/")
    if len(parts) != 2 or parts[0] not in MODEL_NAMES or parts[1] not in DATASETS:
      raise config_io.ConfigError(f"skip.{key}: keys must look like 'model/dataset' with a model "
                                  f"in {MODEL_NAMES} and a dataset in {DATASETS}")
  return out


def model_config(config: Mapping[str, Any], name: str, **extra) -> ModelConfig:
  """`runs.default_model_config` of ``name`` with the shared ``model`` section, the model's
  ``model_overrides`` entry and ``extra`` applied, in that order."""
  kw = {**config["model"], **config["model_overrides"].get(name, {}), **extra}
  return runs.default_model_config(name, **kw)


def train_config(config: Mapping[str, Any], name: str, **extra) -> TrainConfig:
  """`jmeta.train.default_train_config` of ``name`` with the ``train`` section and ``extra``."""
  kw = dict(config["train"])
  if kw.get("adversarial") is not None:
    kw["adversarial"] = AdversarialConfig(**kw["adversarial"])
  kw.update(extra)
  return default_train_config(name, **kw)


def graph_loader(config: Mapping[str, Any], data_dir: Optional[str]) -> Callable:
  """``dataset -> Graph``, loading each dataset once (the memo lives in the returned closure)."""
  memo: dict = {}

  def get(dataset: str):
    if dataset not in memo:
      memo[dataset] = runs.load_graph(dataset, data_dir, config["split"], config["synthetic"])
    return memo[dataset]

  return get


def metamer_cell(cell: Mapping[str, Any], config: Mapping[str, Any], get_graph: Callable, *,
                 data_dir: Optional[str], progress: bool,
                 run_dir: Optional[runs.RunDir] = None) -> dict:
  """Trains (or loads) ``cell``'s model and synthesises its feature metamers.

  ``cell`` holds ``dataset``, ``model_config``, ``train_config`` and ``metamer`` (dicts of the
  dataclasses' fields). Returns per-seed lists of `METRICS` (fractions), the model's accuracies
  and the run's timings; with ``config['save_metamers']`` also writes
  ``metamers/<cell id>.npz`` (``[S, n, d]``).
  """
  graph = get_graph(cell["dataset"])
  mc = ModelConfig.from_dict(cell["model_config"])
  tc = TrainConfig.from_dict(cell["train_config"])
  tm = runs.trained_model(mc, cell["dataset"], tc, data_dir=data_dir, split=config["split"],
                          cache_dir=config["cache_dir"], graph=graph, progress=progress)
  mcfg = MetamerConfig.from_dict(cell["metamer"])
  res = feature_metamers(tm.model, tm.params, graph, jax.random.key(config["seed"]), mcfg,
                         progress=progress)
  if config["save_metamers"] and run_dir is not None:
    run_dir.write_npz(os.path.join("metamers", cell["id"]), metamers=res.metamers,
                      losses=res.losses)
  out = {k: [float(v) for v in res.metrics[k]] for k in METRICS}
  final_loss = [float(np.nanmin(curve)) if np.any(np.isfinite(curve)) else None
                for curve in res.losses]
  out.update(
      act_loss=[float(v) for v in res.metrics["act_loss"]], best_train_loss=final_loss,
      density=[float(v) for v in res.density],
      model_test_acc=float(tm.metrics["test"]), model_val_acc=float(tm.metrics["val"]),
      train_seconds=tm.metrics.get("train_seconds"), model_cached=bool(tm.metrics["cached"]),
      metamer_compile_seconds=float(res.info["compile_seconds"]),
      metamer_run_seconds=float(res.info["run_seconds"]))
  return out


def cell_common(config: Mapping[str, Any], dataset: str, mc: ModelConfig, tc: TrainConfig,
                layer: int = 1) -> dict:
  """The config-dependent part of a cell (stored with its result, so a config change reruns it)."""
  return {"dataset": dataset, "model": mc.name, "model_config": mc.to_dict(),
          "train_config": tc.to_dict(),
          "metamer": MetamerConfig(**{**config["metamer"], "layer": layer}).to_dict(),
          "seed": config["seed"], "split": config["split"]}


def cell_row(result: Mapping[str, Any], keys: Sequence[str]) -> dict:
  """A flat CSV/JSON row: the cell's identifying ``keys`` plus mean/std (percent) of each metric."""
  row = {k: result[k] for k in keys}
  row["status"] = result.get("status", "ok")
  if "cs_feat" in result:
    for m in METRICS:
      mean, std = runs.mean_std(result[m])
      row[f"{m}_mean"], row[f"{m}_std"] = 100 * mean, 100 * std
    row["model_test_acc"] = 100 * result["model_test_acc"]
    row["num_seeds"] = len(result["cs_feat"])
  if result.get("note"):
    row["note"] = result["note"]
  return row


def write_metric_arrays(run_dir: runs.RunDir, results: Sequence[Mapping[str, Any]]) -> str:
  """``metrics.npz``: ``<cell id>/<metric>`` -> ``[S]`` per-seed values of every run cell."""
  arrays = {f"{r['id']}/{m}": np.asarray(r[m], np.float64)
            for r in results if "cs_feat" in r for m in (*METRICS, "act_loss")}
  return run_dir.write_npz("metrics", **arrays)


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
  todo, other = [], []
  for dataset in config["datasets"]:
    for name in config["models"]:
      for variant in config["variants"]:
        cid = f"{dataset}-{name}-{variant}"
        reason = config["skip"].get(f"{name}/{dataset}")
        if reason:
          other.append({"id": cid, "dataset": dataset, "model": name, "variant": variant,
                        "status": "skipped", "note": reason})
          continue
        if name == "graphormer" and variant == "residual" and "baseline" in config["variants"]:
          other.append({"id": cid, "dataset": dataset, "model": name, "variant": variant,
                        "status": "same_as_baseline", "same_as": f"{dataset}-{name}-baseline",
                        "note": "Graphormer blocks always have residual connections: this "
                                "variant is the baseline"})
          continue
        mc, tc = variant_configs(config, name, variant)
        todo.append({"id": cid, "variant": variant, **cell_common(config, dataset, mc, tc)})
  return todo, other


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
  return [by_id[f"{d}-{m}-{v}"] for d in config["datasets"] for m in config["models"]
          for v in config["variants"]]


def markdown_table(config: Mapping[str, Any], results: Sequence[dict]) -> str:
  """Rows: model / variant; columns: datasets; cells: CS_feat mean ± std (%) over seeds."""
  by_id = {r["id"]: r for r in results}
  head = "| model | variant | " + " | ".join(config["datasets"]) + " |"
  lines = ["CS_feat (%) of layer-1 feature metamers, mean ± std over "
           f"{MetamerConfig(**config['metamer']).num_seeds} metamer seeds.", "", head,
           "|---|---|" + "---|" * len(config["datasets"])]
  notes = []
  for m in config["models"]:
    for v in config["variants"]:
      cells = []
      for d in config["datasets"]:
        r = by_id[f"{d}-{m}-{v}"]
        if r["status"] == "skipped":
          cells.append("skipped¹")
          notes.append(f"¹ {m} on {d}: {r['note']}")
        else:
          txt = runs.format_mean_std(r["cs_feat"], digits=2)
          if r["status"] == "same_as_baseline":
            txt += " (= baseline²)"
            notes.append(f"² {r['note']}")
          cells.append(txt)
      lines.append(f"| {m} | {v} | " + " | ".join(cells) + " |")
  lines += [""] + list(dict.fromkeys(notes))
  return "\n".join(lines)


def plot(config: Mapping[str, Any], results: Sequence[dict]):
  """Grouped bars: one panel per dataset, models on the x axis, one bar per variant."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by_id = {r["id"]: r for r in results}
  datasets, models, variants = config["datasets"], config["models"], config["variants"]
  fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets) + 1, 3.6),
                           squeeze=False)
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
  fig.legend(list(seen.values()), list(seen.keys()), loc="upper right", fontsize=8)
  fig.suptitle("Fig. 6: mitigation of over-invariance (× skipped, hatched = same as baseline)",
               fontsize=10)
  fig.tight_layout(rect=(0, 0, 0.93, 0.93))
  return fig


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs Figure 6 into ``out_dir`` (resumable); returns the summary written to metrics.json."""
  config = resolve_config(config)
  if config["metamer"].get("layer", 1) != 1:
    raise config_io.ConfigError("metamer.layer: Figure 6 targets layer 1 only")
  todo, other = make_cells(config)
  run_dir = runs.RunDir(out_dir)
  run_dir.write_config(config)
  get_graph = graph_loader(config, data_dir)
  done = runs.run_grid(
      todo, lambda c: metamer_cell(c, config, get_graph, data_dir=data_dir, progress=progress,
                                   run_dir=run_dir),
      run_dir, desc=EXPERIMENT, progress=progress)
  results = merge_results(config, done, other)
  rows = [cell_row(r, ("id", "dataset", "model", "variant")) for r in results]
  table = markdown_table(config, results)
  files = {"csv": run_dir.write_csv("metrics", rows), "table": run_dir.write_markdown(
      "table", table), "arrays": write_metric_arrays(run_dir, results),
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
