"""Dataset loaders: Planetoid (Cora, CiteSeer, PubMed), Chameleon, Squirrel and a synthetic CSBM.

Example:
  >>> import jmeta.data
  >>> g = jmeta.data.load("cora")              # data dir: argument, $JMETA_DATA, cache
  >>> g = jmeta.data.load("chameleon", split=3)
  >>> g = jmeta.data.load("synthetic", num_nodes=300, homophily=0.2, seed=0)
"""

from __future__ import annotations

import os
from typing import Optional

from jmeta.data import cache, heterophilous, planetoid, safe_pickle, synthetic
from jmeta.data.cache import ChecksumError
from jmeta.data.heterophilous import HETEROPHILOUS_NAMES, load_heterophilous
from jmeta.data.planetoid import PLANETOID_NAMES, load_planetoid
from jmeta.data.safe_pickle import UnsafePickleError
from jmeta.data.synthetic import csbm, edge_homophily
from jmeta.graph import Graph

DATASETS = PLANETOID_NAMES + HETEROPHILOUS_NAMES + ("synthetic",)


def load(name: str, data_dir: Optional[str | os.PathLike] = None, split: int = 0, *,
         fetch: Optional[cache.Fetch] = None, **synthetic_kwargs) -> Graph:
  """Loads a dataset by name as a `jmeta.graph.Graph`.

  Args:
    name: one of `DATASETS` (case-insensitive).
    data_dir: directory searched first for the raw files (then ``$JMETA_DATA``, then the cache
      ``$XDG_CACHE_HOME/jmeta``); files missing everywhere are downloaded into the cache.
    split: split index: ``0`` for Planetoid, ``0..9`` for Chameleon/Squirrel, any ``>= 0`` for
      the synthetic graph (a different random split of the same graph).
    fetch: ``url -> bytes`` used for downloads (default: urllib); for tests.
    **synthetic_kwargs: arguments of `jmeta.data.synthetic.csbm` (only for ``"synthetic"``).

  Returns:
    The `Graph`.

  Raises:
    ValueError: unknown name, bad split, corrupt files, or keyword arguments for a real dataset.
    FileNotFoundError: files not found locally and not downloadable.
  """
  key = name.lower() if isinstance(name, str) else name
  if key not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
  if key != "synthetic" and synthetic_kwargs:
    raise ValueError(f"{key}: unexpected keyword arguments {sorted(synthetic_kwargs)} (only the "
                     f"synthetic dataset takes generator arguments)")
  if key in PLANETOID_NAMES:
    return load_planetoid(key, data_dir, split, fetch)
  if key in HETEROPHILOUS_NAMES:
    return load_heterophilous(key, data_dir, split, fetch)
  return csbm(split=split, **synthetic_kwargs)


__all__ = [
    "DATASETS", "load", "load_planetoid", "load_heterophilous", "csbm", "edge_homophily",
    "ChecksumError", "UnsafePickleError", "PLANETOID_NAMES", "HETEROPHILOUS_NAMES",
    "cache", "heterophilous", "planetoid", "safe_pickle", "synthetic",
]
