"""`MetamerResult`: what a metamer run produced, saved as ``.npz`` + JSON."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Dict

import numpy as np

from jmeta.io import atomic_write_bytes, atomic_write_text
from jmeta.metamers.config import MetamerConfig

KINDS = ("feature", "structure")


@dataclasses.dataclass
class MetamerResult:
  """The metamers of one run, S seeds.

  Attributes:
    kind: ``"feature"`` or ``"structure"``.
    metamers: feature metamers ``[S, n, d]`` (uint8 for binary features, float32 for continuous),
      or, for structure metamers, the undirected edges ``[S, k, 2] int32`` (``i < j``).
    losses: ``[S, T]`` activation loss (eq. 5) before each step; NaN after a seed stopped.
    steps: ``[S]`` steps taken.
    density: ``[S]`` final density of the hard metamer.
    metrics: name -> ``[S]`` values, fractions in [0, 1] (see `jmeta.metrics`).
    config: the `MetamerConfig`.
    info: free-form facts of the run (dataset, model, timings), JSON-serialisable.
  """

  kind: str
  metamers: np.ndarray
  losses: np.ndarray
  steps: np.ndarray
  density: np.ndarray
  metrics: Dict[str, np.ndarray]
  config: MetamerConfig
  info: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def summary(self) -> Dict[str, Dict[str, float]]:
    """Mean and std over seeds of every metric and of the final activation loss."""
    out = {name: {"mean": float(np.mean(v)), "std": float(np.std(v))}
           for name, v in self.metrics.items()}
    return out

  def save(self, path: str) -> None:
    """Writes ``path.npz`` (arrays) and ``path.json`` (config, metrics, info), atomically."""
    arrays = {"metamers": self.metamers, "losses": self.losses, "steps": self.steps,
              "density": self.density}
    arrays.update({f"metric/{k}": np.asarray(v) for k, v in self.metrics.items()})
    meta = {"kind": self.kind, "config": self.config.to_dict(), "info": self.info,
            "summary": self.summary()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path + ".npz", buf.getvalue())
    atomic_write_text(path + ".json", json.dumps(meta, indent=2, sort_keys=True))

  @classmethod
  def load(cls, path: str) -> "MetamerResult":
    """Reads what `save` wrote (``path`` without extension)."""
    for ext in (".npz", ".json"):
      if not os.path.exists(path + ext):
        raise FileNotFoundError(f"metamer result file {path + ext} does not exist")
    with open(path + ".json") as f:
      meta = json.load(f)
    with np.load(path + ".npz", allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
    metrics = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("metric/")}
    return cls(kind=meta["kind"], metamers=arrays["metamers"], losses=arrays["losses"],
               steps=arrays["steps"], density=arrays["density"], metrics=metrics,
               config=MetamerConfig.from_dict(meta["config"]), info=meta.get("info", {}))
