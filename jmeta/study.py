"""Helpers shared by the experiment scripts in ``experiments/`` (the paper's tables and figures).

The scripts are loaded by file path (`jmeta.cli.load_experiment`, ``python experiments/X.py``),
not as a package, so what they have in common lives here:

* config: shared schema entries and defaults, validation (`resolve_config`, `fill_defaults`),
  the model, training and metamer configs of a grid cell;
* cells: a trained model and its feature metamers per cell (`metamer_cell`), the
  datasets x models x values grids of Figures 6-8 (`grid_cells`, `grid_results`);
* outputs: CSV rows, Markdown tables, plots, the written summary files;
* running: a whole grid into a results directory (`run_feature_grid`, `run_cached_cells`) and
  each script's ``main`` (`script_main`).

There is no module state: every function works on what it is given (the runners also train,
cache checkpoints and write the files of the run directory they are given).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from jmeta import config_io, runs
from jmeta.cli import experiment_main
from jmeta.config_io import KwargsOf, ListOf, MapOf, OneOf, Optional as Opt, Range, Required
from jmeta.data import DATASETS, csbm
from jmeta.graph import Graph
from jmeta.metamers import MetamerConfig, MetamerResult
from jmeta.models import MODEL_NAMES, ModelConfig
from jmeta.train import AdversarialConfig, TrainConfig

METRICS = ("s_feat", "s_match", "cs_feat", "act_one_minus_loss", "act_cosine")
"""Per-seed metrics of feature metamers that the experiments report."""


# -- config ----------------------------------------------------------------------------------------


def schema_entries(*keys: str, required: Sequence[str] = ()) -> dict:
  """The schema entries the experiments share, for ``keys`` in that order.

  Args:
    keys: among ``models``, ``datasets``, ``dataset``, ``layers``, ``split``, ``seed``, ``model``,
      ``model_overrides``, ``train``, ``train_overrides``, ``adversarial``, ``metamer``,
      ``synthetic``, ``skip``, ``cache_dir``, ``save_metamers``.
    required: the keys of ``keys`` to wrap in `jmeta.config_io.Required`.

  Returns:
    A new ``{key: spec}`` dict (see `jmeta.config_io`).
  """
  specs = {
      "models": ListOf(OneOf(*MODEL_NAMES), min_len=1, unique=True),
      "datasets": ListOf(OneOf(*DATASETS), min_len=1, unique=True),
      "dataset": OneOf(*DATASETS),
      "layers": ListOf(Range(1, None, integer=True), min_len=1, unique=True),
      "split": Range(0, None, integer=True),
      "seed": Range(0, None, integer=True),
      "model": ModelConfig,
      "model_overrides": MapOf(OneOf(*MODEL_NAMES), ModelConfig),
      "train": TrainConfig,
      "train_overrides": MapOf(OneOf(*MODEL_NAMES), TrainConfig),
      "adversarial": AdversarialConfig,
      "metamer": MetamerConfig,
      "synthetic": KwargsOf(csbm),
      "skip": MapOf(str, str),
      "cache_dir": Opt(str),
      "save_metamers": bool,
  }
  unknown = [k for k in keys if k not in specs] + [k for k in required if k not in keys]
  if unknown:
    raise KeyError(f"schema_entries: no shared entry {unknown}; shared: {sorted(specs)}")
  return {k: Required(specs[k]) if k in required else specs[k] for k in keys}


def schema_defaults(schema: Mapping[str, Any], **own: Any) -> dict:
  """Defaults of ``schema``'s keys, in the schema's order.

  A key takes its value in ``own``, else the shared default (``split`` and ``seed`` 0, config
  sections ``{}``, ``cache_dir`` None, ``save_metamers`` False); keys with neither (the required
  lists) are left out. Returns a new dict.
  """
  shared = {"split": 0, "seed": 0, "model": {}, "model_overrides": {}, "train": {},
            "train_overrides": {}, "adversarial": {}, "metamer": {}, "synthetic": {}, "skip": {},
            "cache_dir": None, "save_metamers": False}
  stray = sorted(set(own) - set(schema))
  if stray:
    raise KeyError(f"schema_defaults: {stray} are not keys of the schema")
  return {k: own[k] if k in own else shared[k] for k in schema if k in own or k in shared}


def fill_defaults(config: Mapping[str, Any], defaults: Mapping[str, Any],
                  required: Sequence[str], experiment: str) -> dict:
  """``{**defaults, **config}``; raises `ValueError` naming ``experiment`` if a ``required``
  key is missing."""
  out = {**defaults, **config}
  for k in required:
    if k not in out:
      raise ValueError(f"{experiment}: config key {k!r} is required")
  return out


def model_sections(config: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
  """``[(dotted name, section)]`` of the ``model`` section and every ``model_overrides`` entry."""
  return [("model", config["model"])] + [(f"model_overrides.{m}", sec)
                                         for m, sec in config["model_overrides"].items()]


def resolve_config(config: Mapping[str, Any], schema: Mapping[str, Any],
                   defaults: Mapping[str, Any]) -> dict:
  """Validates ``config`` against ``schema`` and fills ``defaults``; returns a new dict.

  Also rejects ``name`` in the model sections (the architecture comes from ``models``) and
  ``skip`` keys that are not ``model/dataset``. Raises `jmeta.config_io.ConfigError` naming the
  bad key.
  """
  config_io.validate_config(config, schema)
  out = {**defaults, **dict(config)}
  for where, sec in model_sections(out):
    if "name" in sec:
      raise config_io.ConfigError(f"{where}.name: the architecture comes from 'models', not "
                                  f"from this section")
  for key in out.get("skip", {}):
    parts = key.split("/")
    if len(parts) != 2 or parts[0] not in MODEL_NAMES or parts[1] not in DATASETS:
      raise config_io.ConfigError(f"skip.{key}: keys must look like 'model/dataset' with a model "
                                  f"in {MODEL_NAMES} and a dataset in {DATASETS}")
  return out


def model_config(config: Mapping[str, Any], name: str, **extra: Any) -> ModelConfig:
  """`runs.model_config_from` (defaults, the ``model`` section, the model's ``model_overrides``
  entry) with ``extra`` applied last."""
  return dataclasses.replace(runs.model_config_from(config, name), **extra)


def train_config(config: Mapping[str, Any], name: str, **extra: Any) -> TrainConfig:
  """`runs.train_config_from` (defaults, the ``train`` section, the model's ``train_overrides``
  entry) with ``extra`` applied last."""
  return dataclasses.replace(runs.train_config_from(config, name), **extra)


def model_train_configs(config: Mapping[str, Any], name: str) -> dict:
  """``{'model_config', 'train_config'}``: the field dicts of model ``name``'s configs
  (`runs.model_config_from`, `runs.train_config_from`)."""
  return {"model_config": runs.model_config_from(config, name).to_dict(),
          "train_config": runs.train_config_from(config, name).to_dict()}


def synthetic_section(config: Mapping[str, Any], dataset: str) -> dict:
  """The ``synthetic`` section for ``dataset == 'synthetic'``, else ``{}`` (a new dict)."""
  return dict(config["synthetic"]) if dataset == "synthetic" else {}


def check_target_layers(config: Mapping[str, Any], name: str, what: str) -> None:
  """Raises `ConfigError` if ``metamer.layer`` is set (``layers`` sets it) or an entry of
  ``config['layers']`` is not a hidden layer of model ``name``; ``what`` names the model."""
  if "layer" in config["metamer"]:
    raise config_io.ConfigError("metamer.layer: the targeted layers come from 'layers'")
  k = model_config(config, name).num_layers
  bad = [layer for layer in config["layers"] if layer >= k]
  if bad:
    raise config_io.ConfigError(f"layers: {bad} are not hidden layers of the {k}-layer {what} "
                                f"(layer {k} is the logits); set model.num_layers")


def num_seeds(config: Mapping[str, Any]) -> int:
  """``metamer.num_seeds`` of ``config`` (its default when unset)."""
  return MetamerConfig(**config["metamer"]).num_seeds


# -- cells: a trained model and its feature metamers -----------------------------------------------


def cell_defaults() -> dict:
  """The dataclass defaults of the config entries that cells carry (``model_config``,
  ``train_config``, ``metamer`` / ``metamer_config``), for ``runs.run_grid(defaults=...)``: a
  finished cell stays finished when jmeta gains a config field whose default keeps the old
  behaviour."""
  mcfg = runs.field_defaults(MetamerConfig)
  return {"model_config": runs.field_defaults(ModelConfig),
          "train_config": runs.field_defaults(TrainConfig), "metamer": mcfg,
          "metamer_config": mcfg}


def table1_cell(table1_dir: Optional[str], model: str, dataset: str,
                expect: Mapping[str, Any]) -> Optional[dict]:
  """The finished Table 1 cell record ``<table1_dir>/cells/<model>-<dataset>.json`` if its
  cell agrees with ``expect`` on every key of ``expect`` (compared with `runs.same_cell` and
  `cell_defaults`, so fields at their default do not count), else ``None`` (also without a
  directory, for a missing or unreadable record, and for a skipped cell)."""
  if not table1_dir:
    return None
  rec = runs.load_cell(os.path.join(table1_dir, "cells", f"{model}-{dataset}.json"))
  if rec is None or "skipped" in rec["result"] or not isinstance(rec.get("cell"), Mapping):
    return None
  stored = {k: rec["cell"].get(k) for k in expect}
  return rec if runs.same_cell(stored, runs.to_jsonable(dict(expect)), cell_defaults()) else None


def graph_loader(config: Mapping[str, Any], data_dir: Optional[str]) -> Callable[[str], Graph]:
  """``dataset -> Graph``, loading each dataset once (the memo lives in the returned closure)."""
  memo: dict = {}

  def get(dataset: str) -> Graph:
    if dataset not in memo:
      memo[dataset] = runs.load_graph(dataset, data_dir, config["split"], config["synthetic"])
    return memo[dataset]

  return get


def cell_model(cell: Mapping[str, Any], graph: Graph, *, split: int,
               cache_dir: Optional[str], progress: bool,
               data_dir: Optional[str] = None) -> runs.TrainedModel:
  """`runs.trained_model` (trained once, then cached) of ``cell['model_config']`` with
  ``cell['train_config']`` (field dicts) on ``graph``, labelled ``cell['dataset']``."""
  return runs.trained_model(ModelConfig.from_dict(cell["model_config"]), cell["dataset"],
                            TrainConfig.from_dict(cell["train_config"]), data_dir=data_dir,
                            split=split, cache_dir=cache_dir, graph=graph, progress=progress)


def snapshot_path(run_dir: Optional[runs.RunDir], cell_id: str) -> Optional[str]:
  """``snapshots/<cell_id>.npz`` in ``run_dir`` (``None`` without one): where a cell's metamer
  loop keeps its state while it runs, so an interrupted cell resumes mid-run."""
  return None if run_dir is None else run_dir.file(os.path.join("snapshots", f"{cell_id}.npz"))


def cell_feature_metamers(tm: runs.TrainedModel, graph: Graph, metamer: Mapping[str, Any],
                          seed: int, *, progress: bool,
                          snapshot: Optional[str] = None) -> MetamerResult:
  """`jmeta.metamers.feature_metamers` of the trained model ``tm`` on ``graph``, once per
  model, graph, config and seed (`runs.cached_feature_metamers`); ``metamer`` holds the
  `MetamerConfig` fields, ``seed`` seeds the PRNG key, ``snapshot`` is the file of the
  resumable loop state (see `snapshot_path`)."""
  return runs.cached_feature_metamers(tm, graph, MetamerConfig.from_dict(metamer), seed,
                                      progress=progress, snapshot=snapshot)


def seed_metrics(res: MetamerResult, keys: Sequence[str] = METRICS) -> dict:
  """``{metric: [S floats]}``: the per-seed values of ``keys`` in ``res.metrics``."""
  return {k: [float(v) for v in res.metrics[k]] for k in keys}


def metamer_cell(cell: Mapping[str, Any], config: Mapping[str, Any],
                 get_graph: Callable[[str], Graph], *, data_dir: Optional[str], progress: bool,
                 run_dir: Optional[runs.RunDir] = None) -> dict:
  """Trains (or loads) ``cell``'s model and synthesises its feature metamers.

  ``cell`` holds ``dataset``, ``model_config``, ``train_config`` and ``metamer`` (dicts of the
  dataclasses' fields). Returns per-seed lists of `METRICS` (fractions), the model's accuracies
  and the run's timings; with ``config['save_metamers']`` also writes
  ``metamers/<cell id>.npz`` (``[S, n, d]``).
  """
  graph = get_graph(cell["dataset"])
  tm = cell_model(cell, graph, split=config["split"], cache_dir=config["cache_dir"],
                  progress=progress, data_dir=data_dir)
  res = cell_feature_metamers(tm, graph, cell["metamer"], config["seed"], progress=progress,
                              snapshot=snapshot_path(run_dir, cell["id"]))
  if config["save_metamers"] and run_dir is not None:
    run_dir.write_npz(os.path.join("metamers", cell["id"]), metamers=res.metamers,
                      losses=res.losses)
  out = seed_metrics(res)
  final_loss = [float(np.nanmin(curve)) if np.any(np.isfinite(curve)) else None
                for curve in res.losses]
  out.update(
      act_loss=[float(v) for v in res.metrics["act_loss"]], best_train_loss=final_loss,
      density=[float(v) for v in res.density],
      model_test_acc=float(tm.metrics["test"]), model_val_acc=float(tm.metrics["val"]),
      train_seconds=tm.metrics.get("train_seconds"), model_cached=bool(tm.metrics["cached"]),
      metamer_compile_seconds=float(res.info["compile_seconds"]),
      metamer_run_seconds=float(res.info["run_seconds"]),
      metamers_cached=res.info.get("cached"))
  return out


def cell_common(config: Mapping[str, Any], dataset: str, mc: ModelConfig, tc: TrainConfig,
                layer: int = 1) -> dict:
  """The config-dependent part of a cell (stored with its result, so a config change reruns it)."""
  return {"dataset": dataset, "model": mc.name, "model_config": mc.to_dict(),
          "train_config": tc.to_dict(),
          "metamer": MetamerConfig(**{**config["metamer"], "layer": layer}).to_dict(),
          "seed": config["seed"], "split": config["split"]}


def run_metamer_cells(cells: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                      run_dir: runs.RunDir, *, data_dir: Optional[str], progress: bool,
                      desc: str) -> list[dict]:
  """`runs.run_grid` of `metamer_cell` over ``cells`` (resumable); returns the finished cells."""
  get_graph = graph_loader(config, data_dir)
  return runs.run_grid(
      cells, lambda c: metamer_cell(c, config, get_graph, data_dir=data_dir, progress=progress,
                                    run_dir=run_dir),
      run_dir, desc=desc, progress=progress, defaults=cell_defaults())


# -- grids over datasets x models x values (Figures 6-8) -------------------------------------------


def cell_id(dataset: str, model: str, value: Any, tag: str = "") -> str:
  """``'<dataset>-<model>-<tag><value>'``, the id of a grid cell."""
  return f"{dataset}-{model}-{tag}{value}"


def grid_cells(config: Mapping[str, Any], key: str, values: Sequence[Any], tag: str,
               make: Callable[[str, str, Any], dict]) -> tuple[list[dict], list[dict]]:
  """``(cells to run, cells not run)`` over ``config['datasets']`` x ``config['models']`` x
  ``values``.

  A cell is ``{'id', key: value, **make(dataset, model, value)}``. It is not run when
  ``config['skip']`` names its ``model/dataset`` (``status`` ``'skipped'``, the reason in
  ``note``) or when ``make`` returns a dict with a ``status`` (kept as it is, e.g. a cell that
  equals another one).
  """
  todo, other = [], []
  for dataset in config["datasets"]:
    for name in config["models"]:
      for value in values:
        cid = cell_id(dataset, name, value, tag)
        head = {"id": cid, "dataset": dataset, "model": name, key: value}
        reason = config["skip"].get(f"{name}/{dataset}")
        if reason:
          other.append({**head, "status": "skipped", "note": reason})
          continue
        body = make(dataset, name, value)
        if "status" in body:
          other.append({**head, **body})
        else:
          todo.append({"id": cid, key: value, **body})
  return todo, other


def grid_results(config: Mapping[str, Any], values: Sequence[Any], tag: str,
                 by_id: Mapping[str, dict]) -> list[dict]:
  """``by_id``'s cells in (dataset, model, value) order (`grid_cells`' order)."""
  return [by_id[cell_id(d, m, v, tag)] for d in config["datasets"] for m in config["models"]
          for v in values]


# -- rows, tables and plots ------------------------------------------------------------------------


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


def summary_row(result: Mapping[str, Any], metrics: Sequence[str],
                extra: Sequence[str] = ("test_acc",)) -> dict:
  """A flat row of a (model, dataset) cell: ``skipped`` (the reason), ``missing`` (not run) or
  the ``_mean``/``_std`` of ``metrics`` and the ``extra`` values (None when absent), as stored
  (fractions)."""
  row = {"model": result["model"], "dataset": result["dataset"]}
  for k in ("skipped", "missing"):
    if k in result:
      row[k] = result[k]
      return row
  for k in metrics:
    row[f"{k}_mean"], row[f"{k}_std"] = result[f"{k}_mean"], result[f"{k}_std"]
  for k in extra:
    row[k] = result.get(k)
  return row


def pm(row: Mapping[str, Any], metric: str, digits: int = 1) -> str:
  """``'12.3 ± 0.4'``: ``row[metric_mean]`` ± ``row[metric_std]`` (fractions) in percent."""
  return f"{100 * row[metric + '_mean']:.{digits}f} ± {100 * row[metric + '_std']:.{digits}f}"


def skipped_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Markdown lines ``Skipped cells:`` and ``- <id>: <reason>`` (none if nothing was skipped)."""
  skipped = [r for r in rows if "skipped" in r]
  if not skipped:
    return []
  return ["", "Skipped cells:"] + [f"- {r['id']}: {r['skipped']}" for r in skipped]


def unrun_label(row: Mapping[str, Any]) -> Optional[str]:
  """``'skipped'`` or ``'not run'`` (a ``missing`` row of ``stored_only``) for a cell without
  metrics, ``None`` for a cell that ran."""
  return "skipped" if "skipped" in row else "not run" if "missing" in row else None


def bar_values(rows: Sequence[Mapping[str, Any]],
               metric: str) -> tuple[list[float], list[float]]:
  """``(means, stds)`` of ``metric`` in percent per row: NaN and 0 for skipped or missing rows."""
  ran = [unrun_label(r) is None for r in rows]
  means = [100 * r[f"{metric}_mean"] if ok else np.nan for r, ok in zip(rows, ran)]
  stds = [100 * r[f"{metric}_std"] if ok else 0.0 for r, ok in zip(rows, ran)]
  return means, stds


def cs_feat_text(result: Mapping[str, Any]) -> tuple[str, Optional[str]]:
  """``(CS_feat mean ± std in percent, no footnote)``: a run cell of `grid_table`."""
  return runs.format_mean_std(result["cs_feat"], digits=2), None


def grid_table(caption: str, column: str, config: Mapping[str, Any],
               results: Sequence[Mapping[str, Any]], values: Sequence[Any], tag: str,
               text: Callable[[Mapping[str, Any]], tuple[str, Optional[str]]] = cs_feat_text
               ) -> str:
  """Markdown table of a `grid_cells` grid: rows model / ``column`` value, columns datasets.

  A skipped cell reads ``skipped¹`` with its reason in a footnote; any other cell reads
  ``text(result)[0]``, with ``text(result)[1]`` (if not None) as a footnote. ``caption`` comes
  first, the footnotes (once each) last.
  """
  by_id = {r["id"]: r for r in results}
  datasets = config["datasets"]
  lines = [caption, "", f"| model | {column} | " + " | ".join(datasets) + " |",
           "|---|---|" + "---|" * len(datasets)]
  notes = []
  for m in config["models"]:
    for v in values:
      cells = []
      for d in datasets:
        r = by_id[cell_id(d, m, v, tag)]
        if r.get("status") == "skipped":
          cells.append("skipped¹")
          notes.append(f"¹ {m} on {d}: {r['note']}")
          continue
        txt, note = text(r)
        cells.append(txt)
        if note:
          notes.append(note)
      lines.append(f"| {m} | {v} | " + " | ".join(cells) + " |")
  return "\n".join(lines + [""] + list(dict.fromkeys(notes)))


def pyplot():
  """`matplotlib.pyplot`, with the non-interactive Agg backend selected."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def grid_lines(config: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
               values: Sequence[Any], tag: str, *, xlabel: str, title: str,
               log2: bool = False):
  """CS_feat (%) against the grid value: one panel per dataset, one line per model, error bars
  the std over seeds; skipped cells are left out. Returns the matplotlib Figure."""
  plt = pyplot()
  by_id = {r["id"]: r for r in results}
  values = sorted(values)
  datasets = config["datasets"]
  fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets) + 1, 3.4),
                           squeeze=False)
  for ax, d in zip(axes[0], datasets):
    for m in config["models"]:
      pts = [(v, *runs.mean_std(by_id[cell_id(d, m, v, tag)]["cs_feat"])) for v in values
             if by_id[cell_id(d, m, v, tag)].get("status") != "skipped"]
      if pts:
        x, mean, std = map(np.asarray, zip(*pts))
        ax.errorbar(x, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=m)
    if log2:
      ax.set_xscale("log", base=2)
      ax.set_xticks(values, [str(v) for v in values])
    else:
      ax.set_xticks(values)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("CS_feat (%)")
    ax.set_title(d)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


# -- outputs ---------------------------------------------------------------------------------------


def open_run(out_dir: str, config: Mapping[str, Any]) -> runs.RunDir:
  """The `runs.RunDir` ``out_dir`` with the resolved ``config`` (and versions) written."""
  run_dir = runs.RunDir(out_dir)
  run_dir.write_config(config)
  return run_dir


def write_metric_arrays(run_dir: runs.RunDir, results: Sequence[Mapping[str, Any]]) -> str:
  """``metrics.npz``: ``<cell id>/<metric>`` -> ``[S]`` per-seed values of every run cell;
  returns its path."""
  arrays = {f"{r['id']}/{m}": np.asarray(r[m], np.float64)
            for r in results if "cs_feat" in r for m in (*METRICS, "act_loss")}
  return run_dir.write_npz("metrics", **arrays)


def write_summary(run_dir: runs.RunDir, experiment: str, rows: Sequence[Mapping[str, Any]],
                  table: str, *, arrays: str, figure,
                  extra: Optional[Mapping[str, Any]] = None) -> dict:
  """Writes ``metrics.csv`` (``rows``), ``table.md``, ``<experiment>.png`` (``figure``) and
  ``metrics.json``.

  ``arrays`` is the path of an arrays file already written. Returns the summary of
  ``metrics.json``: ``experiment``, ``rows``, ``extra``'s items, ``table_markdown`` and
  ``files`` (paths relative to the run directory).
  """
  files = {"csv": run_dir.write_csv("metrics", rows),
           "table": run_dir.write_markdown("table", table), "arrays": arrays,
           "figure": run_dir.save_figure(experiment, figure)}
  summary = {"experiment": experiment, "rows": rows, **(extra or {}), "table_markdown": table,
             "files": {k: os.path.relpath(v, run_dir.path) for k, v in files.items()}}
  run_dir.write_json("metrics", summary)
  return summary


def write_results(run_dir: runs.RunDir, experiment: str, rows: Sequence[Mapping[str, Any]],
                  flat: Sequence[Mapping[str, Any]], table: str, figure_name: str,
                  figure) -> dict:
  """Writes ``table.md``, ``metrics.csv`` (``flat``), ``<figure_name>.png`` and
  ``results.json``; returns the summary of ``results.json``: ``experiment``, ``rows``,
  ``table`` and ``skipped`` (``{cell id: reason}``)."""
  run_dir.write_markdown("table", table)
  run_dir.write_csv("metrics", flat)
  run_dir.save_figure(figure_name, figure)
  summary = {"experiment": experiment, "rows": rows, "table": table,
             "skipped": {r["id"]: r["skipped"] for r in rows if "skipped" in r}}
  run_dir.write_json("results", summary)
  return summary


# -- running a grid, the command line --------------------------------------------------------------


def run_feature_grid(experiment: str, config: Mapping[str, Any], out_dir: str, key: str,
                     values: Sequence[Any], tag: str, cells: tuple[list[dict], list[dict]], *,
                     table: Callable[[Mapping[str, Any], list[dict]], str],
                     plot: Callable[[Mapping[str, Any], list[dict]], Any],
                     data_dir: Optional[str], progress: bool,
                     merge: Optional[Callable[[list[dict], list[dict]], list[dict]]] = None
                     ) -> dict:
  """Runs a `grid_cells` grid of feature-metamer cells into ``out_dir`` (resumable).

  Args:
    experiment: the name of the run's figure and progress bar.
    config: the resolved config.
    key, values, tag: as given to `grid_cells`.
    cells: ``(cells to run, cells not run)`` of `grid_cells`.
    table: ``(config, results) -> Markdown``; plot: ``(config, results) -> Figure``.
    merge: ``(finished cells, cells not run) -> results`` in grid order (default: both lists in
      `grid_results` order).

  Returns:
    The summary `write_summary` writes to ``metrics.json`` (CSV rows from `cell_row`, per-seed
    arrays from `write_metric_arrays`).
  """
  todo, other = cells
  run_dir = open_run(out_dir, config)
  done = run_metamer_cells(todo, config, run_dir, data_dir=data_dir, progress=progress,
                           desc=experiment)
  if merge is None:
    results = grid_results(config, values, tag, {r["id"]: r for r in [*done, *other]})
  else:
    results = merge(done, other)
  rows = [cell_row(r, ("id", "dataset", "model", key)) for r in results]
  return write_summary(run_dir, experiment, rows, table(config, results),
                       arrays=write_metric_arrays(run_dir, results), figure=plot(config, results))


def run_cached_cells(cells: Sequence[Mapping[str, Any]], config: Mapping[str, Any], out_dir: str,
                     cell_fn: Callable[[dict, runs.RunDir, runs.GraphCache], dict], *,
                     data_dir: Optional[str], progress: bool, desc: str,
                     compute: bool = True) -> tuple[runs.RunDir, list[dict]]:
  """`runs.run_grid` of ``cell_fn(cell, run_dir, graphs)`` over ``cells`` in the run directory
  ``out_dir`` (with ``config`` written), ``graphs`` a `runs.GraphCache` of ``data_dir``;
  ``compute=False`` only reads the stored cells (the others come back with ``missing``).

  Returns ``(run_dir, finished cells)``.
  """
  run_dir = open_run(out_dir, config)
  graphs = runs.GraphCache(data_dir)
  return run_dir, runs.run_grid(cells, lambda c: cell_fn(c, run_dir, graphs), run_dir, desc=desc,
                                progress=progress, defaults=cell_defaults(), compute=compute)


def script_main(experiment: str, run: Callable[..., dict],
                schema: Optional[Mapping[str, Any]]) -> Callable[..., int]:
  """The ``main(argv=None) -> int`` of an experiment script: `jmeta.cli.experiment_main` with
  its name, ``run`` function and config schema."""

  def main(argv: Optional[Sequence[str]] = None) -> int:
    return experiment_main(experiment, run, schema, argv)

  return main
