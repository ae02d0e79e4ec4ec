"""Table 2: cross-architecture transfer of feature metamers on PubMed (paper Sec 4.6).

1. Train every model on PubMed ("Original" column: test accuracy of ``num_seeds`` training seeds).
2. With each trained model (the seed-``train.seed`` one) synthesise ``metamer.num_seeds``
   layer-1 feature metamers of PubMed. These are Table 1's PubMed metamers under the same
   configs: with ``table1_dir`` (a Table 1 results directory, ``save_metamers: true``) a source
   whose Table 1 cell is stored there with the same split, seed, model, training and metamer
   configs reads its metamers from there instead of training and synthesising them again (the
   source cell records ``metamers_source``, the table names the reused ones).
3. Retrain every model from scratch on every model's metamers: the same graph, labels and
   splits with the features replaced (``graph.with_features(metamer)``); metamer seed ``s`` is
   used with training seed ``train.seed + s``. Training and early stopping see only the metamer
   features; the accuracy is measured on the ORIGINAL test set, i.e. the original graph with its
   original features (`jmeta.train.evaluate`).

Rows of the matrix are the metamer source model, columns the retrained model (the reading under
which the paper's text matches its Table 2: "GAT's metamers ... impairing GraphSAGE" is row GAT,
column GraphSAGE, 71.14). The Original column is the row model trained on the original features.
Graphormer is excluded here (``excluded``): its dense ``[n, n]`` attention over PubMed's 19717
nodes does not fit in memory on this machine.

The retrained parameters are saved (``retrained/<source>-<target>.npz``, keys
``seed<s>/<param path>``), so every number of the matrix can be checked independently.

Run:  python experiments/table2_transfer.py [--quick] [--out DIR]
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
import zipfile
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from jmeta import checkpoint, config_io, runs, train
from jmeta.config_io import MapOf, OneOf, Optional as Opt
from jmeta.metamers import MetamerConfig, MetamerResult
from jmeta.models import MODEL_NAMES, ModelConfig, create_model
from jmeta.study import (METRICS, cell_defaults, cell_feature_metamers, cell_model,
                         graph_loader, model_train_configs, num_seeds, open_run, pyplot,
                         resolve_config, schema_defaults, schema_entries, script_main,
                         seed_metrics, snapshot_path, synthetic_section, table1_cell,
                         write_summary)
from jmeta.train import TrainConfig

EXPERIMENT = "table2_transfer"

SCHEMA = {
    **schema_entries("dataset", "models", required=("dataset", "models")),
    "excluded": MapOf(OneOf(*MODEL_NAMES), str),
    **schema_entries("split", "seed", "model", "model_overrides", "train", "train_overrides",
                     "metamer", "synthetic", "cache_dir"),
    "table1_dir": Opt(str),
}

DEFAULTS = schema_defaults(SCHEMA, excluded={}, table1_dir=None)

# The paper's Table 2 (arXiv 2510.17378), accuracy in percent (mean, std). Rows: metamer source
# ("Methods"); columns: Original, then the retrained model.
PAPER_COLUMNS = ("original", "gcn", "cheb", "sage", "gin", "gat", "graphormer")
PAPER = {
    "gcn": ((78.35, 0.24), (78.40, 0.30), (77.43, 0.12), (76.32, 0.28), (76.38, 0.49),
            (78.32, 0.31), (76.08, 0.35)),
    "cheb": ((75.79, 0.96), (77.05, 0.51), (77.31, 0.82), (76.82, 0.41), (75.60, 0.26),
             (77.03, 0.44), (76.24, 0.74)),
    "sage": ((76.71, 0.27), (76.13, 0.40), (76.17, 0.23), (75.38, 0.70), (76.21, 0.29),
             (74.73, 0.37), (77.35, 0.41)),
    "gin": ((76.22, 1.01), (77.06, 0.37), (77.12, 0.71), (77.02, 0.42), (75.46, 0.37),
            (76.64, 0.42), (76.38, 0.61)),
    "gat": ((75.75, 0.96), (73.54, 1.86), (76.39, 0.48), (71.14, 2.32), (76.30, 0.12),
            (73.37, 1.32), (73.17, 1.95)),
    "graphormer": ((76.43, 0.31), (75.78, 0.58), (75.65, 0.46), (74.16, 0.68), (76.28, 0.46),
                   (74.57, 0.33), (76.51, 0.59)),
}


def resolve(config: Mapping[str, Any]) -> dict:
  """Validated config with defaults (metamers target layer 1; excluded models are not run)."""
  config = resolve_config(config, SCHEMA, DEFAULTS)
  if config["metamer"].get("layer", 1) != 1:
    raise config_io.ConfigError("metamer.layer: Table 2 uses layer-1 metamers")
  clash = sorted(set(config["models"]) & set(config["excluded"]))
  if clash:
    raise config_io.ConfigError(f"models and excluded share {clash}")
  return config


def make_cells(config: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
  """``(original cells, source cells)``; every cell carries the configs it depends on."""
  base = {"dataset": config["dataset"], "split": config["split"], "seed": config["seed"]}
  originals = [{"id": f"original-{m}", "model": m, "num_seeds": num_seeds(config), **base,
                **model_train_configs(config, m)} for m in config["models"]]
  sources = [{"id": f"source-{m}", "model": m, **base, **model_train_configs(config, m),
              "metamer": MetamerConfig(**{**config["metamer"], "layer": 1}).to_dict(),
              "targets": {t: model_train_configs(config, t) for t in config["models"]}}
             for m in config["models"]]
  return originals, sources


def seed_train_config(train_config: Mapping[str, Any], s: int) -> TrainConfig:
  """The training config of seed ``s``: ``seed = train_config.seed + s``."""
  tc = TrainConfig.from_dict(train_config)
  return dataclasses.replace(tc, seed=tc.seed + s)


def original_cell(cell: Mapping[str, Any], config: Mapping[str, Any], get_graph, *,
                  data_dir: Optional[str], progress: bool) -> dict:
  """Test accuracy of ``cell['model']`` trained on the original features, per training seed."""
  graph = get_graph(cell["dataset"])
  accs = []
  for s in range(cell["num_seeds"]):
    tm = runs.trained_model(ModelConfig.from_dict(cell["model_config"]), cell["dataset"],
                            seed_train_config(cell["train_config"], s), data_dir=data_dir,
                            split=config["split"], cache_dir=config["cache_dir"], graph=graph,
                            progress=progress)
    accs.append(float(train.evaluate(tm.params, tm.model, graph)["test"]))
  return {"test_acc": accs}


def retrain(model_config: ModelConfig, graph, x_meta: np.ndarray, train_config: TrainConfig,
            *, progress: bool = False) -> tuple[Any, float, float]:
  """Trains ``model_config`` on ``graph`` with features ``x_meta`` and tests on ``graph``.

  Args:
    model_config: the retrained architecture.
    graph: the ORIGINAL graph (structure, labels, masks, features X).
    x_meta: ``[n, d]`` metamer features used for training and model selection.
    train_config: the training config (its seed included).

  Returns:
    ``(params, test accuracy on the original features, test accuracy on the metamer features)``.
  """
  meta_graph = graph.with_features(jax.numpy.asarray(x_meta, jax.numpy.float32))
  res = train.fit(model_config, meta_graph, train_config, progress=progress)
  model = create_model(model_config, graph.num_classes)
  return (res.params, float(train.evaluate(res.params, model, graph)["test"]),
          float(res.metrics["test"]))


def table1_metamers(cell: Mapping[str, Any], config: Mapping[str, Any],
                    graph) -> Optional[tuple[MetamerResult, str]]:
  """The metamers of ``cell``'s source model stored by Table 1 in ``config['table1_dir']``, if
  that directory holds a finished cell of the same model on the same dataset with the same
  split, seed, model, training and metamer configs, and its ``metamers/<model>-<dataset>``
  files hold ``[S, n, d]`` feature metamers of ``graph``; else ``None``.

  Returns:
    ``(result, path)``: the stored `MetamerResult` and where it was read (without extension).
  """
  expect = {"split": cell["split"], "seed": cell["seed"],
            "synthetic": synthetic_section(config, cell["dataset"]),
            "model_config": cell["model_config"], "train_config": cell["train_config"],
            "metamer_config": cell["metamer"]}
  if table1_cell(config["table1_dir"], cell["model"], cell["dataset"], expect) is None:
    return None
  path = os.path.join(config["table1_dir"], "metamers", f"{cell['model']}-{cell['dataset']}")
  try:
    res = MetamerResult.load(path)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    warnings.warn(f"{EXPERIMENT}: Table 1 metamers {path} unreadable ({e}); computing them")
    return None
  shape = (MetamerConfig.from_dict(cell["metamer"]).num_seeds, graph.num_nodes,
           graph.num_features)
  if res.kind != "feature" or res.metamers.shape != shape:
    warnings.warn(f"{EXPERIMENT}: Table 1 metamers {path} are {res.kind} {res.metamers.shape}, "
                  f"not feature {shape}; computing them")
    return None
  return res, path


def source_cell(cell: Mapping[str, Any], config: Mapping[str, Any], get_graph, run_dir, *,
                data_dir: Optional[str], progress: bool) -> dict:
  """Metamers of ``cell['model']`` (read from Table 1's results with ``table1_dir`` when they
  are stored there, `table1_metamers`; else trained and synthesised here), then every target
  retrained on each of them.

  Writes ``retrained/<source>-<target>.npz`` (the retrained parameters, ``seed<s>/<path>``).
  """
  graph = get_graph(cell["dataset"])
  found = table1_metamers(cell, config, graph)
  if found is not None:
    res, source = found
  else:
    tm = cell_model(cell, graph, split=config["split"], cache_dir=config["cache_dir"],
                    progress=progress, data_dir=data_dir)
    res = cell_feature_metamers(tm, graph, cell["metamer"], config["seed"], progress=progress,
                                snapshot=snapshot_path(run_dir, cell["id"]))
    source = "computed"
  out = seed_metrics(res)
  out["metamers_source"] = source
  acc, acc_meta = {}, {}
  for target, cfgs in cell["targets"].items():
    mc = ModelConfig.from_dict(cfgs["model_config"])
    acc[target], acc_meta[target], flat = [], [], {}
    for s, x_meta in enumerate(res.metamers):
      params, a, a_meta = retrain(mc, graph, x_meta, seed_train_config(cfgs["train_config"], s))
      acc[target].append(a)
      acc_meta[target].append(a_meta)
      flat.update({f"seed{s}/{k}": v for k, v in checkpoint.flatten_params(params).items()})
    run_dir.write_npz(os.path.join("retrained", f"{cell['model']}-{target}"), **flat)
  out.update(test_acc=acc, test_acc_on_metamer=acc_meta)
  return out


def markdown_table(config: Mapping[str, Any], originals: Sequence[dict],
                   sources: Sequence[dict]) -> str:
  """Ours beside the paper's: rows = metamer source, columns = Original + retrained model."""
  models = config["models"]
  orig = {r["model"]: r["test_acc"] for r in originals}
  head = "| metamer source | Original | " + " | ".join(models) + " |"
  sep = "|---|---|" + "---|" * len(models)
  lines = [f"Test accuracy (%) on the original {config['dataset']} test set of models retrained "
           f"on layer-1 feature metamers, mean ± std over {num_seeds(config)} seeds. Rows: "
           "the model whose metamers were used; columns: the retrained model; Original: the row "
           "model trained on the original features.", "", "**jmeta**", "", head, sep]
  for r in sources:
    lines.append(f"| {r['model']} | {runs.format_mean_std(orig[r['model']], digits=2)} | " +
                 " | ".join(runs.format_mean_std(r["test_acc"][t], digits=2) for t in models)
                 + " |")
  pcols = [c for c in PAPER_COLUMNS[1:] if c in models or c in config["excluded"]]
  lines += ["", "**paper (Table 2)**", "",
            "| metamer source | Original | " + " | ".join(pcols) + " |",
            "|---|---|" + "---|" * len(pcols)]
  for m in [*models, *config["excluded"]]:
    vals = dict(zip(PAPER_COLUMNS, PAPER[m]))
    lines.append(f"| {m} | " + " | ".join(f"{vals[c][0]:.2f} ± {vals[c][1]:.2f}"
                                          for c in ("original", *pcols)) + " |")
  for m, why in config["excluded"].items():
    lines.append(f"\n{m} excluded from jmeta's matrix: {why}")
  reused = [f"{r['model']} ({r['metamers_source']})" for r in sources
            if r.get("metamers_source", "computed") != "computed"]
  if reused:
    lines.append("\nMetamers read from Table 1's results: " + ", ".join(reused) + "; the "
                 "others were synthesised here.")
  return "\n".join(lines)


def plot(config: Mapping[str, Any], sources: Sequence[dict]):
  """Heat map of the mean retrained accuracy (rows: source, columns: retrained model)."""
  plt = pyplot()
  models = config["models"]
  mat = np.array([[100 * np.mean(r["test_acc"][t]) for t in models] for r in sources])
  fig, ax = plt.subplots(figsize=(1.2 * len(models) + 2.5, 1.0 * len(models) + 1.5),
                         layout="constrained")
  im = ax.imshow(mat, cmap="viridis")
  for i in range(len(models)):
    for j in range(len(models)):
      ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
  ax.set_xticks(range(len(models)), models)
  ax.set_yticks(range(len(models)), [r["model"] for r in sources])
  ax.set_xlabel("retrained model")
  ax.set_ylabel("metamer source")
  fig.colorbar(im, ax=ax, label="test accuracy (%)")
  ax.set_title(f"Table 2: transfer of feature metamers ({config['dataset']})", fontsize=9)
  return fig


def run(config: dict, out_dir: str, *, data_dir: Optional[str] = None,
        progress: bool = True) -> dict:
  """Runs Table 2 into ``out_dir`` (resumable); returns the summary written to metrics.json."""
  config = resolve(config)
  originals, sources = make_cells(config)
  run_dir = open_run(out_dir, config)
  get_graph = graph_loader(config, data_dir)
  orig = runs.run_grid(originals, lambda c: original_cell(c, config, get_graph,
                                                          data_dir=data_dir, progress=progress),
                       run_dir, desc=f"{EXPERIMENT} original", progress=progress,
                       defaults=cell_defaults())
  src = runs.run_grid(sources, lambda c: source_cell(c, config, get_graph, run_dir,
                                                     data_dir=data_dir, progress=progress),
                      run_dir, desc=f"{EXPERIMENT} metamers", progress=progress,
                      defaults=cell_defaults())
  rows = []
  for r in src:
    o = next(x["test_acc"] for x in orig if x["model"] == r["model"])
    row = {"source": r["model"], "original_mean": 100 * np.mean(o),
           "original_std": 100 * np.std(o)}
    for t in config["models"]:
      row[f"{t}_mean"], row[f"{t}_std"] = (100 * v for v in runs.mean_std(r["test_acc"][t]))
    for m in METRICS:
      row[f"source_{m}_mean"] = 100 * runs.mean_std(r[m])[0]
    rows.append(row)
  matrix = {r["model"]: {t: r["test_acc"][t] for t in config["models"]} for r in src}
  arrays = run_dir.write_npz(
      "accuracy", sources=np.array(config["models"]), targets=np.array(config["models"]),
      test_acc=np.array([[matrix[m][t] for t in config["models"]] for m in config["models"]]),
      original_test_acc=np.array([x["test_acc"] for x in orig]))
  original = {x["model"]: x["test_acc"] for x in orig}
  return write_summary(run_dir, EXPERIMENT, rows, markdown_table(config, orig, src),
                       arrays=arrays, figure=plot(config, src),
                       extra={"matrix": matrix, "original": original,
                              "excluded": config["excluded"]})


main = script_main(EXPERIMENT, run, SCHEMA)

if __name__ == "__main__":
  sys.exit(main())
