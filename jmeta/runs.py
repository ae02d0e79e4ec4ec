"""Experiment infrastructure: results directories, resumable grids, cached trained models.

* `RunDir`: one results directory (``results/<experiment>/...``) holding the resolved config,
  library versions, metrics as JSON and CSV, tables as Markdown, figures as PNG and arrays as
  ``.npz``. Every write is atomic (a temporary file in the same directory, then ``os.replace``),
  so an interrupted run never leaves a half-written file.
* `run_grid`: runs ``fn(cell)`` over a list of cells; a finished cell's result is written to
  ``cells/<id>.json`` at once, and a rerun loads it instead of recomputing (a grid interrupted by
  an exception or Ctrl-C resumes where it stopped, losing and repeating nothing).
* `trained_model`: trains a model once per (model config, dataset, split, train config, graph
  contents) and caches the checkpoint under ``results/checkpoints/<name>-<hash>``; later calls
  load it.
* `cached_feature_metamers`: synthesises a model's feature metamers once per (metamer config,
  seed, graph contents) and caches them beside its checkpoint, so that experiments sharing a
  cell compute it once.

The module also has `default_model_config` (the per-model hyperparameters of
``benchmarks/train_accuracy.py``), `load_graph`, `graph_fingerprint`, `model_cache_key`,
`versions`, `to_jsonable` and the repository paths `repo_root`, `configs_dir`,
`experiments_dir`.

Example:
  >>> rd = RunDir("results/demo")
  >>> rd.write_config({"steps": 10})
  >>> rows = run_grid([{"id": "a", "x": 1}, {"id": "b", "x": 2}],
  ...                 lambda c: {"y": c["x"] ** 2}, rd)
  >>> rd.write_csv("metrics", rows)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import re
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from jmeta.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # for hints only; the functions import jmeta.metamers when called
  from jmeta.metamers import MetamerConfig, MetamerResult

CELL_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,=+-]*$")
CACHE_FORMAT = 2
DEFAULT_CACHE_ENV = "JMETA_CHECKPOINTS"


# -- paths -----------------------------------------------------------------------------------------


def repo_root() -> Path:
  """The repository root of this jmeta checkout (the folder holding ``jmeta/``)."""
  import jmeta
  return Path(jmeta.__file__).resolve().parents[1]


def configs_dir() -> Path:
  """``<repo>/configs``."""
  return repo_root() / "configs"


def experiments_dir() -> Path:
  """``<repo>/experiments``."""
  return repo_root() / "experiments"


def default_cache_dir() -> str:
  """``$JMETA_CHECKPOINTS`` or ``results/checkpoints`` (relative to the working directory)."""
  return os.environ.get(DEFAULT_CACHE_ENV) or os.path.join("results", "checkpoints")


# -- atomic writes and JSON ------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
  """Dataclasses, numpy / JAX arrays and scalars, tuples -> plain JSON values."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (str, bool, int, type(None))):
    return obj
  if isinstance(obj, float):
    return obj
  if isinstance(obj, (np.generic, np.ndarray)) or hasattr(obj, "__array__"):
    arr = np.asarray(obj)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  raise TypeError(f"cannot store a {type(obj).__name__} as JSON: {obj!r}")


def field_defaults(cls: type) -> dict:
  """``{name: default}`` (JSON-ready) of the fields of dataclass ``cls`` that have a default."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return to_jsonable(out)


def without_defaults(d: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
  """``d`` less the entries equal to their value in ``defaults``, recursing where both hold a
  mapping: the canonical form of a config, unchanged when a field with a default is added.

  Both arguments are JSON-ready (`to_jsonable`); keys absent from ``defaults`` are kept.
  """
  out = {}
  for k, v in d.items():
    if k in defaults:
      dv = defaults[k]
      if isinstance(v, Mapping) and isinstance(dv, Mapping):
        v = without_defaults(v, dv)
      elif v == dv and type(v) is type(dv):
        continue
    out[k] = v
  return out


def dumps(obj: Any) -> str:
  """JSON text of `to_jsonable` ``obj`` (indented, NaN written as ``NaN``)."""
  return json.dumps(to_jsonable(obj), indent=2) + "\n"


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo`` on Linux, else `platform.processor`)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def versions() -> dict:
  """Versions of python, jax, jaxlib, flax, optax, numpy and jmeta, the JAX backend, the
  platform and the CPU model: what a float result may depend on besides the code."""
  import flax
  import jax
  import jaxlib
  import optax

  import jmeta
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__, "jmeta": jmeta.__version__,
          "backend": jax.default_backend(), "platform": platform.platform(),
          "cpu": cpu_model()}


# -- results directory -----------------------------------------------------------------------------


def _with_ext(name: str, ext: str) -> str:
  if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
    raise ValueError(f"bad result file name {name!r}: a relative name inside the run directory "
                     f"is needed")
  return name if name.endswith(ext) else name + ext


class RunDir:
  """One results directory, ``results/<experiment>/...``; every write is atomic.

  Attributes:
    path: the directory (created on construction).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ValueError(f"results path {self.path!r} exists and is not a directory")
    os.makedirs(self.path, exist_ok=True)

  def __repr__(self) -> str:
    return f"RunDir({self.path!r})"

  def file(self, name: str) -> str:
    """The path of ``name`` inside the directory."""
    return os.path.join(self.path, name)

  def write_config(self, config: Mapping[str, Any]) -> None:
    """``config.json`` and ``config.yaml`` (the resolved config) and ``versions.json``."""
    from jmeta.config_io import dump_yaml
    atomic_write_text(self.file("config.json"), dumps(config))
    atomic_write_text(self.file("config.yaml"), dump_yaml(to_jsonable(config)))
    atomic_write_text(self.file("versions.json"), dumps(versions()))

  def write_json(self, name: str, obj: Any) -> str:
    """``name.json``; returns its path."""
    path = self.file(_with_ext(name, ".json"))
    atomic_write_text(path, dumps(obj))
    return path

  def read_json(self, name: str) -> Any:
    """Reads ``name.json`` back."""
    with open(self.file(_with_ext(name, ".json")), encoding="utf-8") as f:
      return json.load(f)

  def write_csv(self, name: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """``name.csv`` with a header = the union of the rows' keys (first-seen order); nested
    values are written as JSON."""
    keys: list[str] = []
    for r in rows:
      for k in r:
        if k not in keys:
          keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
      w.writerow({k: (json.dumps(to_jsonable(v)) if isinstance(v, (dict, list, tuple))
                      else to_jsonable(v)) for k, v in r.items()})
    path = self.file(_with_ext(name, ".csv"))
    atomic_write_text(path, buf.getvalue())
    return path

  def write_markdown(self, name: str, text: str) -> str:
    """``name.md``."""
    path = self.file(_with_ext(name, ".md"))
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return path

  def write_npz(self, name: str, **arrays) -> str:
    """``name.npz`` (``np.savez_compressed``)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    path = self.file(_with_ext(name, ".npz"))
    atomic_write_bytes(path, buf.getvalue())
    return path

  def save_figure(self, name: str, fig, dpi: int = 110) -> str:
    """A matplotlib Figure as ``name.png``; closes the figure."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    try:
      fig.savefig(buf, format="png", dpi=dpi)
    finally:
      plt.close(fig)
    path = self.file(_with_ext(name, ".png"))
    atomic_write_bytes(path, buf.getvalue())
    return path

  def cell_path(self, cell_id: str) -> str:
    """``cells/<cell_id>.json``."""
    _check_cell_id(cell_id)
    return os.path.join(self.path, "cells", f"{cell_id}.json")


# -- resumable grids -------------------------------------------------------------------------------


def _check_cell_id(cell_id) -> None:
  if not isinstance(cell_id, str) or not CELL_ID.match(cell_id):
    raise ValueError(f"cell id {cell_id!r} must be a non-empty string of letters, digits and "
                     f"'_.,=+-' (it names a file)")


def load_cell(path: str) -> Optional[dict]:
  """A finished cell's record ``{'id', 'cell', 'result', 'seconds'}``, or ``None`` if absent or
  unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      rec = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return None
  if not isinstance(rec, dict) or not isinstance(rec.get("result"), dict):
    return None
  return rec


def same_cell(stored: Any, cell: Mapping[str, Any],
              defaults: Optional[Mapping[str, Any]] = None) -> bool:
  """Whether a stored (JSON-loaded) cell dict is the JSON-ready ``cell``; with ``defaults``,
  entries at their default value do not count (`without_defaults`)."""
  if defaults is None or not isinstance(stored, Mapping):
    return stored == cell
  return without_defaults(stored, defaults) == without_defaults(cell, defaults)


def run_grid(cells: Sequence[Mapping[str, Any]], fn: Callable[[dict], Mapping[str, Any]],
             run_dir: RunDir, *, desc: str = "cells", progress: bool = True,
             defaults: Optional[Mapping[str, Any]] = None, compute: bool = True) -> list[dict]:
  """Runs ``fn(cell)`` for every cell, resumably.

  A finished cell's result is written atomically to ``run_dir.cell_path(cell['id'])`` together
  with the cell itself and the `versions` it was computed with; a rerun loads it instead of
  calling ``fn`` again. A stored cell whose recorded cell dict differs from the current one (the
  config changed) is recomputed. An exception (or ``KeyboardInterrupt``) in one cell propagates
  after the cells finished before it have been saved, so rerunning the grid repeats nothing that
  completed. With ``defaults``, the stored and current cells are compared `without_defaults`: a
  cell stored before a config field with a default existed still counts as finished while that
  field keeps its default.

  Args:
    cells: dicts, each with a unique string ``'id'`` (letters, digits, ``_.,=+-``) and any
      JSON-serialisable fields.
    fn: ``cell -> dict`` of JSON-serialisable results (arrays are converted to lists).
    run_dir: where ``cells/<id>.json`` live.
    desc: progress-bar label.
    progress: show a tqdm bar over cells.
    defaults: JSON-ready default values of cell entries (nested like the cells), e.g.
      ``{"model_config": field_defaults(ModelConfig)}``.
    compute: ``False`` runs nothing: a cell without a stored result gets the row
      ``{**cell, 'missing': True}`` (to show how far a long grid has come).

  Returns:
    ``[{**cell, **result}]`` in cell order.
  """
  ids = []
  for c in cells:
    if not isinstance(c, Mapping) or "id" not in c:
      raise ValueError(f"every cell must be a dict with an 'id', got {c!r}")
    _check_cell_id(c["id"])
    ids.append(c["id"])
  dup = sorted({i for i in ids if ids.count(i) > 1})
  if dup:
    raise ValueError(f"duplicate cell ids: {dup}")
  out = []
  env = versions()
  bar = tqdm(total=len(cells), desc=desc, unit="cell", disable=not progress)
  try:
    for c in cells:
      cell = to_jsonable(dict(c))
      path = run_dir.cell_path(c["id"])
      rec = load_cell(path)
      if rec is not None and same_cell(rec.get("cell"), cell, defaults):
        out.append({**dict(c), **rec["result"]})
        bar.update(1)
        continue
      if not compute:
        out.append({**dict(c), "missing": True})
        bar.update(1)
        continue
      if rec is not None:
        tqdm.write(f"[jmeta] cell {c['id']}: stored result was made with another cell config; "
                   "recomputing", file=sys.stderr)
      bar.set_postfix_str(str(c["id"]))
      t0 = time.perf_counter()
      try:
        result = fn(dict(c))
      except Exception:
        tqdm.write(f"[jmeta] cell {c['id']} failed ({len(out)} cells before it are stored)",
                   file=sys.stderr)
        raise
      if not isinstance(result, Mapping):
        raise TypeError(f"run_grid: fn must return a dict, got {type(result).__name__} for "
                        f"cell {c['id']!r}")
      result = to_jsonable(dict(result))
      atomic_write_text(path, dumps({"id": c["id"], "cell": cell, "result": result,
                                     "seconds": time.perf_counter() - t0, "versions": env}))
      out.append({**dict(c), **result})
      bar.update(1)
  finally:
    bar.close()
  return out


# -- statistics ------------------------------------------------------------------------------------


def mean_std(values) -> tuple[float, float]:
  """Mean and (population, ddof=0) standard deviation of ``values`` (non-empty)."""
  a = np.asarray(values, np.float64).reshape(-1)
  if a.size == 0:
    raise ValueError("mean_std of an empty sequence")
  return float(np.mean(a)), float(np.std(a))


def format_mean_std(values, scale: float = 100.0, digits: int = 1) -> str:
  """``"11.4 ± 0.3"``: mean ± std of ``values * scale``."""
  m, s = mean_std(values)
  return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


# -- models and graphs -----------------------------------------------------------------------------

# Per-architecture hyperparameters (PyTorch Geometric examples), as in
# benchmarks/train_accuracy.py: hidden 16, dropout 0.5; GAT 8 heads x 8 channels, dropout 0.6;
# Graphormer 4 heads.
MODEL_DEFAULTS: dict[str, dict] = {
    "gcn": dict(hidden=16, dropout=0.5),
    "cheb": dict(hidden=16, dropout=0.5, cheb_k=2),
    "sage": dict(hidden=16, dropout=0.5),
    "gin": dict(hidden=16, dropout=0.5),
    "gat": dict(hidden=64, heads=8, out_heads=1, dropout=0.6),
    "graphormer": dict(hidden=16, heads=4, dropout=0.5),
}


def default_model_config(name: str, **overrides):
  """The default `jmeta.models.ModelConfig` of architecture ``name`` (2 layers), with
  ``overrides`` (ModelConfig fields) applied."""
  from jmeta.models import MODEL_NAMES, ModelConfig
  key = str(name).lower()
  if key not in MODEL_NAMES:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
  kw = dict(MODEL_DEFAULTS[key])
  kw.update(overrides)
  kw.pop("name", None)
  return ModelConfig(key, **kw)


def load_graph(dataset: str, data_dir: Optional[str] = None, split: int = 0,
               synthetic: Optional[Mapping[str, Any]] = None):
  """`jmeta.data.load`; ``synthetic`` holds `jmeta.data.csbm` arguments and is used only for
  ``dataset == "synthetic"``."""
  from jmeta import data
  kw = dict(synthetic or {}) if str(dataset).lower() == "synthetic" else {}
  return data.load(dataset, data_dir, split, **kw)


class GraphCache:
  """Keeps the most recently loaded graph, so that a dataset-major grid loads each graph once.

  Example:
    >>> graphs = GraphCache(data_dir=None)
    >>> g = graphs.get("cora", 0, {})
  """

  def __init__(self, data_dir: Optional[str] = None):
    self.data_dir, self.key, self.graph = data_dir, None, None

  def get(self, dataset: str, split: int = 0, synthetic: Optional[Mapping[str, Any]] = None):
    synthetic = dict(synthetic or {})
    key = (str(dataset).lower(), int(split), json.dumps(to_jsonable(synthetic), sort_keys=True))
    if key != self.key:
      self.graph = None  # free the previous graph first
      self.graph = load_graph(dataset, self.data_dir, split, synthetic)
      self.key = key
    return self.graph


def graph_fingerprint(graph) -> str:
  """sha256 of a graph's arrays (features, edges, labels, masks) and static metadata."""
  h = hashlib.sha256()
  h.update(json.dumps([graph.num_classes, graph.feature_kind]).encode())
  for a in (graph.x, graph.senders, graph.receivers, graph.edge_weight, graph.labels,
            graph.train_mask, graph.val_mask, graph.test_mask):
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _as_train_config(train_config, model_name: str):
  from jmeta.train import TrainConfig, default_train_config
  if train_config is None:
    return default_train_config(model_name)
  if isinstance(train_config, TrainConfig):
    return train_config
  if isinstance(train_config, Mapping):
    return TrainConfig.from_dict(train_config)
  raise ValueError(f"train_config must be a TrainConfig, a mapping or None, got "
                   f"{type(train_config).__name__}")


def _as_model_config(model_config):
  from jmeta.models import ModelConfig
  if isinstance(model_config, ModelConfig):
    return model_config
  if isinstance(model_config, Mapping):
    return ModelConfig.from_dict(model_config)
  raise ValueError(f"model_config must be a ModelConfig or a mapping, got "
                   f"{type(model_config).__name__}")


def _digest(payload: Mapping[str, Any]) -> str:
  """First 16 hex digits of the sha256 of ``payload`` as sorted-key JSON (the cache keys)."""
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def model_cache_key(model_config, dataset: str, split: int, train_config, graph) -> str:
  """``<model>-<dataset>-s<split>-<16 hex>``: the hash covers the resolved model config, dataset
  name, split, resolved train config and `graph_fingerprint`. Config fields at their dataclass
  default are left out of the hash, so adding a field with a default keeps every key."""
  payload = {"format": CACHE_FORMAT, "dataset": str(dataset).lower(), "split": int(split),
             "graph": graph_fingerprint(graph)}
  for k, c in (("model", model_config), ("train", train_config)):
    payload[k] = without_defaults(to_jsonable(c), field_defaults(type(c)))
  digest = _digest(payload)
  return f"{model_config.name}-{str(dataset).lower()}-s{int(split)}-{digest}"


class TrainedModel(NamedTuple):
  """What `trained_model` returns (unpacks as ``model, params, graph, metrics``).

  Attributes:
    model: the Flax module.
    params: its trained variables (jax arrays).
    graph: the graph it was trained on.
    metrics: train/val/test accuracy, losses, ``best_epoch``, ``epochs_run``,
      ``train_seconds``, plus ``checkpoint`` (its directory) and ``cached`` (loaded, not
      trained, by this call).
  """

  model: Any
  params: Any
  graph: Any
  metrics: dict


def trained_model(model_config, dataset: str, train_config=None, *,
                  data_dir: Optional[str] = None, split: int = 0,
                  cache_dir: Optional[str] = None, graph=None, progress: bool = True,
                  synthetic: Optional[Mapping[str, Any]] = None) -> TrainedModel:
  """A trained model, trained once per configuration and cached as a checkpoint.

  The checkpoint lives in ``cache_dir/<model_cache_key>`` (default ``results/checkpoints``, or
  ``$JMETA_CHECKPOINTS``); a later call with the same resolved model config, dataset, split,
  train config and graph contents loads it instead of training. A damaged checkpoint is
  retrained (with a warning).

  Args:
    model_config: a `jmeta.models.ModelConfig` (or mapping of its fields).
    dataset: dataset name (`jmeta.data.DATASETS`); also the label of a given ``graph``.
    train_config: a `jmeta.train.TrainConfig`, a mapping of its fields, or ``None`` for
      `jmeta.train.default_train_config` of the model.
    data_dir: raw-data directory for `jmeta.data.load`.
    split: the split index.
    cache_dir: checkpoint cache directory.
    graph: use this graph instead of loading ``dataset``.
    progress: training progress bar.
    synthetic: `jmeta.data.csbm` arguments when ``dataset == "synthetic"``.

  Returns:
    `TrainedModel` ``(model, params, graph, metrics)``.
  """
  from jmeta import checkpoint, train
  from jmeta.models import create_model
  import jax
  import jax.numpy as jnp

  mc = _as_model_config(model_config)
  tc = _as_train_config(train_config, mc.name)
  if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or split < 0:
    raise ValueError(f"split must be an int >= 0, got {split!r}")
  if graph is None:
    graph = load_graph(dataset, data_dir, split, synthetic)
  key = model_cache_key(mc, dataset, split, tc, graph)
  path = os.path.join(cache_dir or default_cache_dir(), key)
  model = create_model(mc, graph.num_classes)
  if os.path.isfile(os.path.join(path, checkpoint.META_FILE)):
    try:
      ck = checkpoint.load_checkpoint(path, expect_model_config=mc,
                                      expect_num_features=graph.num_features,
                                      expect_num_classes=graph.num_classes)
      metrics = dict(ck.meta.get("metrics") or {}, checkpoint=path, cached=True)
      return TrainedModel(model, jax.tree_util.tree_map(jnp.asarray, ck.params), graph, metrics)
    except (ValueError, FileNotFoundError) as e:
      print(f"[jmeta] checkpoint {path} unusable ({e}); retraining", file=sys.stderr)
  res = train.fit(mc, graph, tc, progress=progress)
  metrics = {**res.metrics, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
             "train_seconds": res.seconds}
  os.makedirs(path, exist_ok=True)
  buf = io.BytesIO()
  np.savez_compressed(buf, **{k: np.asarray(v) for k, v in res.history.items()})
  atomic_write_bytes(os.path.join(path, "history.npz"), buf.getvalue())
  atomic_write_text(os.path.join(path, "cache_key.json"), dumps(
      {"dataset": str(dataset).lower(), "split": int(split), "graph_sha256":
       graph_fingerprint(graph), "model_config": mc, "train_config": tc}))
  checkpoint.save_checkpoint(path, res.params, mc, num_features=graph.num_features,
                             num_classes=graph.num_classes, train_config=tc, metrics=metrics)
  return TrainedModel(model, res.params, graph, dict(metrics, checkpoint=path, cached=False))


METAMER_CACHE_FORMAT = 1


def metamer_cache_path(tm: TrainedModel, graph, config: MetamerConfig,
                       seed: int) -> Optional[str]:
  """Where `cached_feature_metamers` keeps the feature metamers of ``tm`` on ``graph`` with
  `MetamerConfig` ``config`` and PRNG seed ``seed``: ``<checkpoint>/metamers/L<layer>-<16 hex>``
  (no extension), the hash covering ``config`` (fields at their default left out, as in
  `model_cache_key`), ``seed`` and `graph_fingerprint`. ``None`` when ``tm`` has no checkpoint
  directory."""
  checkpoint = tm.metrics.get("checkpoint")
  if not checkpoint:
    return None
  payload = {"format": METAMER_CACHE_FORMAT, "kind": "feature", "seed": int(seed),
             "graph": graph_fingerprint(graph),
             "metamer": without_defaults(to_jsonable(config), field_defaults(type(config)))}
  digest = _digest(payload)
  return os.path.join(checkpoint, "metamers", f"L{config.layer}-{digest}")


def cached_feature_metamers(tm: TrainedModel, graph, config: MetamerConfig, seed: int, *,
                            progress: bool = True,
                            snapshot: Optional[str] = None) -> MetamerResult:
  """`jmeta.metamers.feature_metamers` of the trained model ``tm`` on ``graph`` (key
  ``jax.random.key(seed)``), computed once per (model, graph, config, seed) and cached beside
  the model's checkpoint (`metamer_cache_path`), so that experiments sharing a cell (Table 1's
  cells and Figure 6's baselines, say) synthesise it once.

  A cached result comes back with ``info['cached']`` set to its path (its timings are those of
  the run that computed it); a computed one has ``info['cached'] = None``. A damaged or
  mismatched cache entry is recomputed with a warning. ``snapshot`` is passed on (resumable
  loop state).
  """
  import jax

  from jmeta import metamers

  path = metamer_cache_path(tm, graph, config, seed)
  if path is not None and os.path.isfile(path + ".json"):
    try:
      res = metamers.MetamerResult.load(path)
      if res.config != config or res.kind != "feature":
        raise ValueError(f"it holds {res.kind} metamers of another config ({res.config})")
      res.info["cached"] = path
      return res
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
      warnings.warn(f"cached metamers {path} unusable ({e}); recomputing them")
  res = metamers.feature_metamers(tm.model, tm.params, graph, jax.random.key(seed), config,
                                  progress=progress, snapshot=snapshot)
  if path is not None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    res.save(path)
  res.info["cached"] = None
  return res


def model_config_from(config: Mapping[str, Any], name: str):
  """The `ModelConfig` of model ``name`` in an experiment config: `default_model_config`, then
  the shared ``config['model']`` fields, then ``config['model_overrides'][name]``."""
  kw = dict(config.get("model") or {})
  kw.update((config.get("model_overrides") or {}).get(name) or {})
  return default_model_config(name, **kw)


def train_config_from(config: Mapping[str, Any], name: str):
  """The `TrainConfig` of model ``name``: `jmeta.train.default_train_config`, then the shared
  ``config['train']`` fields, then ``config['train_overrides'][name]`` (a nested
  ``adversarial`` mapping becomes an `AdversarialConfig`)."""
  from jmeta.train import AdversarialConfig, default_train_config
  kw = dict(config.get("train") or {})
  kw.update((config.get("train_overrides") or {}).get(name) or {})
  if isinstance(kw.get("adversarial"), Mapping):
    kw["adversarial"] = AdversarialConfig(**kw["adversarial"])
  return default_train_config(name, **kw)


def metamer_metrics(result) -> dict:
  """Per-seed values and mean/std of every metric of a `MetamerResult`, JSON-ready:
  ``{name: [S values], name + '_mean': m, name + '_std': s}``, plus ``final_loss`` (the last
  finite activation loss per seed) and timings."""
  out: dict[str, Any] = {}
  for k, v in result.metrics.items():
    v = np.asarray(v, np.float64).reshape(-1)
    out[k] = v.tolist()
    out[f"{k}_mean"], out[f"{k}_std"] = mean_std(v)
  losses = np.asarray(result.losses, np.float64)
  final = [float(row[np.isfinite(row)][-1]) if np.isfinite(row).any() else float("nan")
           for row in losses.reshape(losses.shape[0], -1)]
  out["final_loss"] = final
  out["steps_taken"] = np.asarray(result.steps).tolist()
  out["metamers_cached"] = result.info.get("cached")
  for k in ("compile_seconds", "run_seconds", "seed_steps_per_second"):
    if k in result.info:
      out[k] = float(result.info[k])
  return out


def training_history(checkpoint_dir: str) -> Optional[dict]:
  """The per-epoch history saved beside a cached checkpoint (``history.npz``), or ``None``."""
  p = os.path.join(checkpoint_dir, "history.npz")
  if not os.path.isfile(p):
    return None
  with np.load(p, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def finite_or_none(x) -> Optional[float]:
  """``float(x)`` or ``None`` when it is NaN/inf (for tables)."""
  x = float(x)
  return x if math.isfinite(x) else None


__all__ = [
    "RunDir", "run_grid", "load_cell", "trained_model", "TrainedModel", "mean_std",
    "format_mean_std", "atomic_write_bytes", "atomic_write_text", "to_jsonable", "dumps",
    "versions", "default_model_config", "MODEL_DEFAULTS", "load_graph", "graph_fingerprint",
    "model_cache_key", "training_history", "GraphCache", "repo_root", "configs_dir",
    "experiments_dir", "default_cache_dir", "finite_or_none", "model_config_from",
    "train_config_from", "metamer_metrics", "field_defaults", "without_defaults", "same_cell",
]
