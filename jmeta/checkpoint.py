"""Saving and loading trained model parameters.

A checkpoint is a directory::

    PATH/
      params.npz        the variables pytree, flattened: keys are '/'-joined paths
                        ('params/GCNConv_0/kernel'), values the arrays (dtype kept)
      checkpoint.json   format version, model config, num_features, num_classes, optional
                        train config and metrics, library versions, sha256 of params.npz

Both files are written atomically (a temporary file in the same directory, then
``os.replace``), ``params.npz`` first and ``checkpoint.json`` last; the JSON records the sha256 of
the parameter file, so a checkpoint whose two files do not belong together (an interrupted
overwrite) or whose parameter file is damaged is refused on load rather than silently used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from typing import Any, Mapping, NamedTuple, Optional

import flax
import flax.traverse_util
import jax
import numpy as np

import jmeta
from jmeta.io import atomic_write_bytes
from jmeta.models import ModelConfig

FORMAT_VERSION = 1
PARAMS_FILE = "params.npz"
META_FILE = "checkpoint.json"


class Checkpoint(NamedTuple):
  """A loaded checkpoint.

  Attributes:
    params: the variables dict (``{'params': ...}``) of numpy arrays.
    model_config: the `jmeta.models.ModelConfig` it was trained with.
    num_features: input feature dimension ``d``.
    num_classes: number of classes.
    meta: the whole JSON record (train config, metrics, versions, ...).
  """

  params: Any
  model_config: Any
  num_features: int
  num_classes: int
  meta: dict


def _to_jsonable(obj: Any) -> Any:
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {k: _to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
  if isinstance(obj, Mapping):
    return {str(k): _to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_to_jsonable(v) for v in obj]
  if isinstance(obj, (np.generic, np.ndarray)) or hasattr(obj, "__jax_array__") or isinstance(
      obj, jax.Array):
    arr = np.asarray(obj)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  return obj


def flatten_params(params: Any) -> dict[str, np.ndarray]:
  """``{'a/b/kernel': array}`` from a nested variables dict (numpy arrays on the host)."""
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
  if not isinstance(params, Mapping):
    raise ValueError(f"params must be a nested dict of arrays, got {type(params).__name__}")
  flat = flax.traverse_util.flatten_dict(params)
  out = {}
  for path, v in flat.items():
    for part in path:
      if not isinstance(part, str) or "/" in part or not part:
        raise ValueError(f"cannot store parameter path {path!r}: every key must be a "
                         f"non-empty string without '/'")
    out["/".join(path)] = np.asarray(jax.device_get(v))
  return out


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
  """Inverse of `flatten_params`."""
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def save_checkpoint(path: str | os.PathLike, params: Any, model_config: Any, *,
                    num_features: int, num_classes: int, train_config: Any = None,
                    metrics: Optional[Mapping[str, Any]] = None) -> str:
  """Writes a checkpoint directory at ``path`` (created if needed; files replaced atomically).

  Args:
    path: checkpoint directory.
    params: variables dict ``{'params': ...}`` (jax or numpy arrays).
    model_config: the `jmeta.models.ModelConfig` (any dataclass is stored field by field).
    num_features: input feature dimension ``d`` (>= 1).
    num_classes: number of classes (>= 1).
    train_config: optional `jmeta.train.TrainConfig` (stored for the record).
    metrics: optional dict of scalars (e.g. `TrainResult.metrics`).

  Returns:
    The checkpoint directory path.
  """
  for name, v in (("num_features", num_features), ("num_classes", num_classes)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  if not dataclasses.is_dataclass(model_config):
    raise ValueError(f"model_config must be a ModelConfig dataclass, got "
                     f"{type(model_config).__name__}")
  flat = flatten_params(params)
  buf = io.BytesIO()
  np.savez(buf, **flat)
  data = buf.getvalue()

  meta = {
      "format_version": FORMAT_VERSION,
      "model_config": _to_jsonable(model_config),
      "num_features": int(num_features),
      "num_classes": int(num_classes),
      "train_config": _to_jsonable(train_config) if train_config is not None else None,
      "metrics": _to_jsonable(metrics) if metrics is not None else None,
      "param_shapes": {k: list(v.shape) for k, v in flat.items()},
      "params_sha256": hashlib.sha256(data).hexdigest(),
      "versions": {"jmeta": jmeta.__version__, "jax": jax.__version__,
                   "flax": flax.__version__, "numpy": np.__version__},
  }
  path = os.fspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"checkpoint path {path!r} exists and is not a directory")
  os.makedirs(path, exist_ok=True)
  atomic_write_bytes(os.path.join(path, PARAMS_FILE), data)
  atomic_write_bytes(os.path.join(path, META_FILE),
                      (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
  return path


def load_checkpoint(path: str | os.PathLike, *, expect_model_config: Any = None,
                    expect_num_features: Optional[int] = None,
                    expect_num_classes: Optional[int] = None) -> Checkpoint:
  """Reads a checkpoint written by `save_checkpoint`.

  Args:
    path: checkpoint directory.
    expect_model_config: if given, the stored model config must equal it.
    expect_num_features: if given, the stored feature dimension must equal it.
    expect_num_classes: if given, the stored number of classes must equal it.

  Returns:
    A `Checkpoint`.

  Raises:
    FileNotFoundError: the directory or one of its files is missing (names the path).
    ValueError: a damaged file, a parameter file that does not match its JSON record, or a
      stored architecture / dimension that differs from the expected one (naming both sides).
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint directory at {path!r}")
  meta_path = os.path.join(path, META_FILE)
  params_path = os.path.join(path, PARAMS_FILE)
  for p in (meta_path, params_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"checkpoint file missing: {p!r}")
  try:
    with open(meta_path, "rb") as f:
      meta = json.loads(f.read().decode())
    if not isinstance(meta, dict):
      raise ValueError("not a JSON object")
    version = meta["format_version"]
    cfg_dict = meta["model_config"]
    num_features = int(meta["num_features"])
    num_classes = int(meta["num_classes"])
    digest = meta["params_sha256"]
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise ValueError(f"corrupt checkpoint record {meta_path!r}: {e!r}") from e
  if version != FORMAT_VERSION:
    raise ValueError(f"{meta_path!r}: checkpoint format version {version}, this jmeta reads "
                     f"version {FORMAT_VERSION}")
  with open(params_path, "rb") as f:
    data = f.read()
  if hashlib.sha256(data).hexdigest() != digest:
    raise ValueError(f"corrupt checkpoint: {params_path!r} does not match the sha256 recorded "
                     f"in {meta_path!r} (damaged or partially overwritten)")
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"corrupt parameter file {params_path!r}: {e!r}") from e

  try:
    model_config = ModelConfig.from_dict(cfg_dict)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{meta_path!r}: stored model config {cfg_dict!r} is not a valid "
                     f"ModelConfig: {e}") from e
  if expect_model_config is not None and expect_model_config != model_config:
    raise ValueError(f"checkpoint {path!r} holds a different architecture: stored "
                     f"{model_config}, expected {expect_model_config}")
  if expect_num_features is not None and int(expect_num_features) != num_features:
    raise ValueError(f"checkpoint {path!r} was trained on {num_features} input features, "
                     f"expected {int(expect_num_features)}")
  if expect_num_classes is not None and int(expect_num_classes) != num_classes:
    raise ValueError(f"checkpoint {path!r} was trained for {num_classes} classes, expected "
                     f"{int(expect_num_classes)}")
  return Checkpoint(params=unflatten_params(flat), model_config=model_config,
                    num_features=num_features, num_classes=num_classes, meta=meta)
