"""`ModelConfig`: the frozen, validated description of a GNN (architecture and its options).

The contract is in ``notes/MODEL_API.md``; every field is checked in ``__post_init__`` and a bad
value raises ``ValueError`` naming the field and the value, before any model is built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

MODEL_NAMES = ("gcn", "cheb", "sage", "gin", "gat", "graphormer")
ACTIVATIONS = ("relu", "elu")
INPUT_NORMS = ("none", "row")


def _check_int(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f"ModelConfig.{name} must be an int, got {value!r}")
  if value < minimum:
    raise ValueError(f"ModelConfig.{name} must be >= {minimum}, got {value!r}")


def _check_real(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"ModelConfig.{name} must be a finite number, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and options of a node-classification GNN.

  Attributes:
    name: one of ``MODEL_NAMES`` (any case on input, stored lower-case).
    num_layers: ``K >= 1`` layers; layer ``K`` outputs the logits (no activation).
    hidden: width of the hidden layers (GAT: see `jmeta.models.gat.head_split`).
    activation: ``"relu"`` or ``"elu"`` (any case on input, stored lower-case).
    residual: residual connections on hidden layers, ``h_k = act(conv_k(h_{k-1})) + P_k h_{k-1}``
      with ``P_k`` the identity when widths agree, else a bias-free ``Dense``. Graphormer blocks
      always have their pre-LN residuals, so this flag does not change a Graphormer.
    dropout: dropout rate in ``[0, 1)`` on the input of every layer (and on GAT / Graphormer
      attention coefficients) in train mode.
    heads: attention heads of GAT hidden layers and of every Graphormer block.
    out_heads: GAT heads in the output layer (averaged).
    cheb_k: number of Chebyshev terms of ChebConv (``K`` in PyG).
    gin_eps: the ``eps`` of GINConv, ``(1 + eps) x_v + sum_u x_u``.
    max_spd: Graphormer shortest-path distances are clamped to ``max_spd``.
    input_norm: ``"none"`` feeds ``x`` as it is; ``"row"`` divides each node's features by their
      sum inside the model (``x_v / sum_j x_vj``, rows summing to 0 stay 0), as PyG's
      ``NormalizeFeatures`` does to the data. Inside the model, a metamer still lives in the raw
      (binary) feature space and the normalisation is part of the function whose invariances
      are measured: a row-normalised model cannot tell rows of equal proportions apart.
  """

  name: str
  num_layers: int = 2
  hidden: int = 16
  activation: str = "relu"
  residual: bool = False
  dropout: float = 0.5
  heads: int = 8
  out_heads: int = 1
  cheb_k: int = 2
  gin_eps: float = 0.0
  max_spd: int = 5
  input_norm: str = "none"

  def __post_init__(self):
    if not isinstance(self.name, str) or self.name.lower() not in MODEL_NAMES:
      raise ValueError(f"ModelConfig.name must be one of {MODEL_NAMES}, got {self.name!r}")
    object.__setattr__(self, "name", self.name.lower())
    if not isinstance(self.activation, str) or self.activation.lower() not in ACTIVATIONS:
      raise ValueError(f"ModelConfig.activation must be one of {ACTIVATIONS}, got "
                       f"{self.activation!r}")
    object.__setattr__(self, "activation", self.activation.lower())
    if not isinstance(self.input_norm, str) or self.input_norm.lower() not in INPUT_NORMS:
      raise ValueError(f"ModelConfig.input_norm must be one of {INPUT_NORMS}, got "
                       f"{self.input_norm!r}")
    object.__setattr__(self, "input_norm", self.input_norm.lower())
    _check_int("num_layers", self.num_layers, 1)
    _check_int("hidden", self.hidden, 1)
    _check_int("heads", self.heads, 1)
    _check_int("out_heads", self.out_heads, 1)
    _check_int("cheb_k", self.cheb_k, 1)
    _check_int("max_spd", self.max_spd, 1)
    if not isinstance(self.residual, bool):
      raise ValueError(f"ModelConfig.residual must be a bool, got {self.residual!r}")
    _check_real("dropout", self.dropout)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
    _check_real("gin_eps", self.gin_eps)

  def to_dict(self) -> dict:
    """The fields as a plain dict (for saving next to results)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    """Inverse of `to_dict`; an unknown key raises ``ValueError``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"ModelConfig: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**d)
