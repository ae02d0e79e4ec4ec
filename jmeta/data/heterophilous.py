"""Chameleon and Squirrel from the ``NAME.npz`` files of yandex-research/heterophilous-graphs.

The Wikipedia networks of Rozemberczki et al. as preprocessed by Geom-GCN, with the ten Geom-GCN
60/20/20 splits. The stored directed edge pairs are made undirected, self loops and duplicates
dropped, unit weights. Read with ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from jmeta import graph as graph_lib
from jmeta.data import cache

HETEROPHILOUS_NAMES = ("chameleon", "squirrel")
NUM_CLASSES = {"chameleon": 5, "squirrel": 5}
NUM_SPLITS = 10
KEYS = ("node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks")


def relpath(name: str) -> str:
  return f"heterophilous/{name}.npz"


def _check_name(name: str) -> None:
  if name not in HETEROPHILOUS_NAMES:
    raise ValueError(f"unknown heterophilous dataset {name!r}; valid: {HETEROPHILOUS_NAMES}")


def _check_split(name: str, split: int) -> None:
  if not isinstance(split, (int, np.integer)) or not 0 <= split < NUM_SPLITS:
    raise ValueError(f"{name}: split must be an int in 0..{NUM_SPLITS - 1}, got {split!r}")


def read_heterophilous(path: str | os.PathLike, name: str, split: int = 0) -> graph_lib.Graph:
  """Builds the `Graph` of ``name`` from its npz file, with masks of row ``split``.

  Args:
    path: the ``.npz`` file.
    name: ``"chameleon"`` or ``"squirrel"``.
    split: ``0..9``.

  Returns:
    The `Graph`: ``x [n, d] float32`` (binary), ``labels [n]``, masks of the chosen split.

  Raises:
    ValueError: a corrupt file, missing keys, wrong shapes, NaN/inf features or labels out of
      range (naming the file).
  """
  _check_name(name)
  _check_split(name, split)
  path = Path(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      files = list(z.files)
      arr = {k: z[k] for k in KEYS if k in files}
  except (ValueError, zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
    raise ValueError(f"{path}: corrupt or truncated npz ({type(exc).__name__}: {exc})") from exc
  missing = [k for k in KEYS if k not in arr]
  if missing:
    raise ValueError(f"{path}: missing arrays {missing} (has {sorted(files)})")

  x, y, edges = arr["node_features"], arr["node_labels"], arr["edges"]
  if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
    raise ValueError(f"{path}: node_features must be a numeric [n, d] array, got "
                     f"{x.dtype} {x.shape}")
  n = x.shape[0]
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    bad = np.argwhere(~np.isfinite(x))[0]
    raise ValueError(f"{path}: node_features contain NaN or inf (first at node {bad[0]}, "
                     f"feature {bad[1]})")
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{path}: node_labels must be int [{n}], got {y.dtype} {y.shape}")
  k = NUM_CLASSES[name]
  if y.size and (y.min() < 0 or y.max() >= k):
    raise ValueError(f"{path}: node_labels out of range [0, {k}): min {y.min()}, max {y.max()}")
  if edges.ndim != 2 or edges.shape[1] != 2 or not np.issubdtype(edges.dtype, np.integer):
    raise ValueError(f"{path}: edges must be int [E, 2], got {edges.dtype} {edges.shape}")
  if edges.size and (edges.min() < 0 or edges.max() >= n):
    raise ValueError(f"{path}: edges out of range [0, {n}): min {edges.min()}, "
                     f"max {edges.max()}")
  masks = {}
  for m in ("train_masks", "val_masks", "test_masks"):
    a = arr[m]
    if a.ndim != 2 or a.shape[1] != n or a.dtype != bool:
      raise ValueError(f"{path}: {m} must be bool [splits, {n}], got {a.dtype} {a.shape}")
    if split >= a.shape[0]:
      raise ValueError(f"{path}: split {split} requested but {m} has {a.shape[0]} rows")
    masks[m] = a[split]

  s, r, _ = graph_lib.remove_self_loops(edges[:, 0], edges[:, 1])
  s, r, _ = graph_lib.symmetrize(s, r, num_nodes=n)
  return graph_lib.make_graph(x, s, r, y, num_classes=k, feature_kind="binary",
                              train_mask=masks["train_masks"], val_mask=masks["val_masks"],
                              test_mask=masks["test_masks"], name=name)


def load_heterophilous(name: str, data_dir: Optional[str | os.PathLike] = None, split: int = 0,
                       fetch: Optional[cache.Fetch] = None) -> graph_lib.Graph:
  """Loads Chameleon or Squirrel with the Geom-GCN split ``split`` (``0..9``).

  Files are found as described in `jmeta.data.cache` and downloaded into the cache if absent.
  """
  _check_name(name)
  _check_split(name, split)
  rel = relpath(name)
  return read_heterophilous(cache.ensure_files([rel], data_dir, fetch)[rel], name, split)
