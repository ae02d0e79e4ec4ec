"""Snapshots of an unfinished metamer optimisation, so that a long run survives an interruption.

`jmeta.metamers.optimize.optimize` with ``snapshot=PATH`` writes the whole loop state (every
seed's parameters, Adam moments and auxiliary state), the activation-loss curves so far and the
number of chunks done to ``PATH`` (one ``.npz``, written atomically) every ``snapshot_every``
seconds. A later call with the same run resumes from it: the result is the one an uninterrupted
run gives, bit for bit on a deterministic backend. "The same run" is checked with a fingerprint
(`run_fingerprint`) of the static spec, every array of the data, the PRNG keys and the seed
grouping; a snapshot of another run is ignored with a warning, never silently mixed in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import zipfile
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from jmeta.io import atomic_write_bytes

FORMAT = 1
PyTree = Any


class Snapshot(NamedTuple):
  """A loaded snapshot.

  Attributes:
    groups: the loop state: a tuple of seed groups, leaves as numpy arrays.
    curves: ``[S, chunks_done * chunk]`` activation losses so far (NaN where a seed was masked).
    chunks_done: chunks completed.
    run_seconds: optimisation time spent before the snapshot (summed over resumptions).
  """
  groups: PyTree
  curves: np.ndarray
  chunks_done: int
  run_seconds: float


def run_fingerprint(spec: Any, data: PyTree, keys: jax.Array, group_size: int) -> str:
  """sha256 (hex) identifying a metamer run: ``repr(spec)`` (model, layer, `MetamerConfig`, ...),
  the structure and bytes of every leaf of ``data``, the key data of ``keys [S]`` and the
  number of seeds per vmapped group."""
  h = hashlib.sha256()
  h.update(repr(spec).encode())
  h.update(str(jax.tree.structure(data)).encode())
  leaves = jax.tree.leaves(data) + [jax.random.key_data(keys)]
  for leaf in leaves:
    a = np.asarray(leaf)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  h.update(str(int(group_size)).encode())
  return h.hexdigest()


def save_snapshot(path: str, fingerprint: str, groups: PyTree, curves: np.ndarray,
                  chunks_done: int, run_seconds: float) -> None:
  """Writes ``groups`` (device arrays are fetched), ``curves`` and the counters to ``path``
  atomically."""
  leaves = jax.device_get(jax.tree.leaves(groups))
  meta = {"format": FORMAT, "fingerprint": fingerprint, "chunks_done": int(chunks_done),
          "run_seconds": float(run_seconds), "num_leaves": len(leaves)}
  arrays = {f"leaf_{i}": np.asarray(a) for i, a in enumerate(leaves)}
  buf = io.BytesIO()
  np.savez(buf, meta=np.array(json.dumps(meta)), curves=np.asarray(curves, np.float32),
           **arrays)
  atomic_write_bytes(path, buf.getvalue())


def load_snapshot(path: str, fingerprint: str, like: PyTree) -> Optional[Snapshot]:
  """The snapshot at ``path`` if it exists and belongs to the run ``fingerprint``, else ``None``.

  ``like`` is the freshly initialised loop state (its tree structure, shapes and dtypes must
  match). A damaged snapshot or one of another run is reported on stderr and ignored.
  """
  if not os.path.isfile(path):
    return None
  like_leaves, treedef = jax.tree.flatten(like)
  try:
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
        print(f"[jmeta] snapshot {path} belongs to another metamer run (different model, data, "
              "config or seeds); starting afresh, it will be overwritten", file=sys.stderr)
        return None
      leaves = [z[f"leaf_{i}"] for i in range(int(meta["num_leaves"]))]
      curves = z["curves"]
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    print(f"[jmeta] snapshot {path} is unreadable ({e!r}); starting afresh", file=sys.stderr)
    return None
  if len(leaves) != len(like_leaves) or any(
      a.shape != b.shape or a.dtype != b.dtype for a, b in zip(leaves, like_leaves)):
    print(f"[jmeta] snapshot {path} does not match this run's state; starting afresh",
          file=sys.stderr)
    return None
  return Snapshot(groups=jax.tree.unflatten(treedef, leaves), curves=curves,
                  chunks_done=int(meta["chunks_done"]), run_seconds=float(meta["run_seconds"]))
