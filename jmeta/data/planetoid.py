"""Cora, CiteSeer and PubMed from the Planetoid ``ind.NAME.*`` files (Yang et al., 2016).

Reproduces the GCN reference preprocessing (and PyTorch Geometric's ``Planetoid``): nodes are
``allx`` rows followed by ``tx`` rows, row ``i`` of ``tx``/``ty`` belongs to node
``test.index[i]``; CiteSeer's 15 isolated test nodes missing from ``tx`` get zero features and
label ``-1``. Split: train = first ``len(y)`` nodes, val = the next 500, test = ``test.index``.
The graph is made undirected, without self loops or duplicates, with unit weights. Features are
kept raw (no row normalisation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import scipy.sparse as sp

from jmeta import graph as graph_lib
from jmeta.data import cache, safe_pickle

PLANETOID_NAMES = ("cora", "citeseer", "pubmed")
SUFFIXES = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
FEATURE_KIND = {"cora": "binary", "citeseer": "binary", "pubmed": "continuous"}
NUM_VAL = 500


def relpaths(name: str) -> list[str]:
  """``planetoid/ind.NAME.SUFFIX`` for the eight files of a dataset."""
  return [f"planetoid/ind.{name}.{s}" for s in SUFFIXES]


def _check_name(name: str) -> None:
  if name not in PLANETOID_NAMES:
    raise ValueError(f"unknown Planetoid dataset {name!r}; valid: {PLANETOID_NAMES}")


def _dense_features(obj, path: Path) -> np.ndarray:
  if sp.issparse(obj):
    arr = obj.toarray()
  elif isinstance(obj, np.ndarray):
    arr = obj
  else:
    raise ValueError(f"{path}: expected a scipy sparse matrix or numpy array, got "
                     f"{type(obj).__name__}")
  if arr.ndim != 2:
    raise ValueError(f"{path}: expected a 2-d feature matrix, got shape {arr.shape}")
  try:
    arr = np.asarray(arr, np.float32)
  except (TypeError, ValueError) as exc:
    raise ValueError(f"{path}: features are not numeric ({exc})") from exc
  if not np.all(np.isfinite(arr)):
    bad = np.argwhere(~np.isfinite(arr))[0]
    raise ValueError(f"{path}: features contain NaN or inf (first at row {bad[0]}, "
                     f"column {bad[1]})")
  return arr


def _labels_from_onehot(obj, path: Path) -> np.ndarray:
  """``[m, C]`` one-hot rows -> ``[m]`` int labels; all-zero rows -> ``-1``."""
  if sp.issparse(obj):
    obj = obj.toarray()
  if not isinstance(obj, np.ndarray) or obj.ndim != 2:
    raise ValueError(f"{path}: expected a 2-d one-hot label array, got "
                     f"{type(obj).__name__} of shape {getattr(obj, 'shape', None)}")
  if not np.issubdtype(obj.dtype, np.number) and obj.dtype != bool:
    raise ValueError(f"{path}: labels have non-numeric dtype {obj.dtype}")
  y = np.asarray(obj, np.float64)
  if not np.all(np.isfinite(y)) or not np.all((y == 0) | (y == 1)):
    raise ValueError(f"{path}: label rows must be one-hot (entries 0 or 1)")
  counts = y.sum(1)
  if np.any(counts > 1):
    raise ValueError(f"{path}: {int(np.sum(counts > 1))} label rows have more than one 1 "
                     f"(first at row {int(np.argmax(counts > 1))})")
  return np.where(counts == 1, y.argmax(1), -1).astype(np.int64)


def _read_test_index(path: Path) -> np.ndarray:
  try:
    text = path.read_text(encoding="ascii")
    idx = np.array([int(t) for t in text.split()], np.int64)
  except (UnicodeDecodeError, ValueError) as exc:
    raise ValueError(f"{path}: expected one integer node index per line ({exc})") from exc
  if idx.size == 0:
    raise ValueError(f"{path}: empty test index")
  if np.unique(idx).size != idx.size:
    raise ValueError(f"{path}: test index has duplicates")
  return idx


def read_planetoid(paths: Mapping[str, Path], name: str) -> graph_lib.Graph:
  """Builds the `Graph` from the eight files of ``name``.

  Args:
    paths: ``{"planetoid/ind.NAME.SUFFIX": path}`` (as `cache.ensure_files` returns).
    name: ``"cora"``, ``"citeseer"`` or ``"pubmed"``.

  Returns:
    The `Graph`: ``x [n, d] float32`` raw features, ``labels [n]`` (``-1`` = no label), masks.

  Raises:
    ValueError: a corrupt file, a refused pickle global, or inconsistent shapes (naming the file).
  """
  _check_name(name)
  p: Dict[str, Path] = {s: Path(paths[f"planetoid/ind.{name}.{s}"]) for s in SUFFIXES}
  raw = {s: safe_pickle.load(p[s]) for s in SUFFIXES if s != "test.index"}
  x = _dense_features(raw["x"], p["x"])
  tx = _dense_features(raw["tx"], p["tx"])
  allx = _dense_features(raw["allx"], p["allx"])
  y = _labels_from_onehot(raw["y"], p["y"])
  ty = _labels_from_onehot(raw["ty"], p["ty"])
  ally = _labels_from_onehot(raw["ally"], p["ally"])
  test_index = _read_test_index(p["test.index"])
  adjacency = raw["graph"]

  d = allx.shape[1]
  for s, arr in (("x", x), ("tx", tx)):
    if arr.shape[1] != d:
      raise ValueError(f"{p[s]}: {arr.shape[1]} feature columns, but allx has {d}")
  num_classes = np.asarray(raw["ally"]).shape[1]
  for s in ("y", "ty"):
    if np.asarray(raw[s]).shape[1] != num_classes:
      raise ValueError(f"{p[s]}: {np.asarray(raw[s]).shape[1]} label columns, but ally has "
                       f"{num_classes}")
  for xs, ys in (("x", "y"), ("tx", "ty"), ("allx", "ally")):
    nx_, ny_ = raw[xs].shape[0], np.asarray(raw[ys]).shape[0]
    if nx_ != ny_:
      raise ValueError(f"{p[ys]}: {ny_} label rows, but {p[xs].name} has {nx_} feature rows")
  if tx.shape[0] != test_index.size:
    raise ValueError(f"{p['tx']}: {tx.shape[0]} rows, but {p['test.index']} lists "
                     f"{test_index.size} test nodes")
  if x.shape[0] + NUM_VAL > allx.shape[0]:
    raise ValueError(f"{p['allx']}: {allx.shape[0]} rows, fewer than the {x.shape[0]} train + "
                     f"{NUM_VAL} validation nodes")
  n_all = allx.shape[0]
  lo, hi = int(test_index.min()), int(test_index.max())
  if lo != n_all:
    raise ValueError(f"{p['test.index']}: smallest test index is {lo}, expected {n_all} "
                     f"(= rows of {p['allx'].name})")
  span = hi - lo + 1  # CiteSeer: > len(tx); the gaps are isolated nodes without features
  sorted_index = np.sort(test_index)
  tx_ext = np.zeros((span, d), np.float32)
  ty_ext = np.full((span,), -1, np.int64)
  tx_ext[sorted_index - lo] = tx
  ty_ext[sorted_index - lo] = ty
  feats = np.concatenate([allx, tx_ext], 0)
  labels = np.concatenate([ally, ty_ext], 0)
  # GCN reference code: features[test_idx_reorder] = features[test_idx_range].
  feats[test_index] = feats[sorted_index]
  labels[test_index] = labels[sorted_index]
  n = feats.shape[0]

  if not isinstance(adjacency, dict):
    raise ValueError(f"{p['graph']}: expected a dict of adjacency lists, got "
                     f"{type(adjacency).__name__}")
  try:
    senders = np.fromiter((int(k) for k, v in adjacency.items() for _ in v), np.int64)
    receivers = np.fromiter((int(u) for v in adjacency.values() for u in v), np.int64)
  except (TypeError, ValueError) as exc:
    raise ValueError(f"{p['graph']}: adjacency lists must map int -> list of int ({exc})"
                     ) from exc
  for what, idx in (("node", senders), ("neighbour", receivers)):
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise ValueError(f"{p['graph']}: {what} index out of range [0, {n}): min {idx.min()}, "
                       f"max {idx.max()}")
  s, r, _ = graph_lib.remove_self_loops(senders, receivers)
  s, r, _ = graph_lib.symmetrize(s, r, num_nodes=n)

  train = np.zeros(n, bool)
  train[:x.shape[0]] = True
  val = np.zeros(n, bool)
  val[x.shape[0]:x.shape[0] + NUM_VAL] = True
  test = np.zeros(n, bool)
  test[test_index] = True
  return graph_lib.make_graph(feats, s, r, labels, num_classes=num_classes,
                              feature_kind=FEATURE_KIND[name], train_mask=train, val_mask=val,
                              test_mask=test, name=name)


def load_planetoid(name: str, data_dir: Optional[str | os.PathLike] = None, split: int = 0,
                   fetch: Optional[cache.Fetch] = None) -> graph_lib.Graph:
  """Loads Cora, CiteSeer or PubMed (see module docstring); only ``split=0`` exists.

  Files are found as described in `jmeta.data.cache` and downloaded into the cache if absent.
  """
  _check_name(name)
  if split != 0:
    raise ValueError(f"{name} has only the public Planetoid split 0, got split={split}")
  return read_planetoid(cache.ensure_files(relpaths(name), data_dir, fetch), name)
