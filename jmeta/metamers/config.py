"""Configuration of a metamer run (values only, validated on construction)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

MARGIN_SIGNS = ("reward", "penalty")
DENSITY_MODES = ("fixed", "learned")


@dataclasses.dataclass(frozen=True)
class MetamerConfig:
  """How a metamer is synthesised (PAPER.md, Sec 3.2-3.4).

  Attributes:
    layer: targeted layer k, 1-based (``1 <= layer <= num_layers``; ``num_layers`` is the
      logits).
    steps: number of optimisation steps T.
    learning_rate: Adam learning rate (paper: 0.0005).
    num_seeds: number of independent metamers S, one per PRNG key, run as one vmapped program.
    slope: sigmoid slope s of eq. (8)/(11), ``> 0``.
    margin_weight: lambda_reg of eq. (10), ``>= 0``.
    margin_sign: ``"reward"`` (default) minimises ``L_act - L_margin``, rewarding uncertain P
      as the paper's text intends; ``"penalty"`` minimises ``L_act + L_margin`` (the literal
      formula, which pushes P towards 0 or 1).
    density: ``"fixed"`` (default): rho stays at the reference density, so the hard mask has
      exactly ``round(rho * N)`` ones every step and rho receives no gradient (a hard top-k has
      none). ``"learned"``: rho = sigmoid(r) with r optimised beside X'_soft; the hard mask has
      ``round(rho * N)`` ones, and the straight-through surrogate is rescaled to density rho,
      ``P~ = P rho / stopgrad(mean P)``, so that rho receives the loss gradient along "more ones
      everywhere"; ``density_weight * ((rho - rho_ref) / rho_ref)^2`` keeps it near the
      reference density.
    density_weight: weight of the density penalty in ``"learned"`` mode.
    tol: stop a seed early once its activation loss is ``<= tol`` (0 disables).
    chunk: steps per compiled chunk; progress is reported between chunks.
    init_scale: multiplies tau (the per-feature std) in the initialisation of eq. (7).
    seed_batch: seeds vmapped together. 0: all S seeds in one vmap. A positive value splits
      the seeds into groups of that size that run one after another inside the same compiled
      step (still one compilation, one program). None (default): on CPU, when a seed optimises
      at least 2^18 entries, groups of ``ceil(S / 8)`` (one seed per group up to S = 8), because
      there one batched [S * n, d] product is slower than S separate ones once it leaves the
      cache (benchmarks/metamer_throughput.py); otherwise (small graphs, accelerators) 0.
      Results do not depend on it.
  """

  layer: int = 1
  steps: int = 2000
  learning_rate: float = 5e-4
  num_seeds: int = 1
  slope: float = 1.0
  margin_weight: float = 0.01
  margin_sign: str = "reward"
  density: str = "fixed"
  density_weight: float = 1.0
  tol: float = 0.0
  chunk: int = 100
  init_scale: float = 1.0
  seed_batch: Optional[int] = None

  def __post_init__(self):
    def bad(name, why):
      raise ValueError(f"MetamerConfig.{name}={getattr(self, name)!r}: {why}")

    if not isinstance(self.layer, int) or self.layer < 1:
      bad("layer", "must be an integer >= 1")
    if not isinstance(self.steps, int) or self.steps < 1:
      bad("steps", "must be an integer >= 1 (T)")
    if not isinstance(self.num_seeds, int) or self.num_seeds < 1:
      bad("num_seeds", "must be an integer >= 1 (S)")
    if not isinstance(self.chunk, int) or self.chunk < 1:
      bad("chunk", "must be an integer >= 1")
    if self.seed_batch is not None and (not isinstance(self.seed_batch, int)
                                        or isinstance(self.seed_batch, bool)
                                        or self.seed_batch < 0):
      bad("seed_batch", "must be None (automatic) or an integer >= 0 (0: all seeds in one vmap)")
    for name in ("learning_rate", "slope", "init_scale"):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        bad(name, "must be a finite number > 0")
    for name in ("margin_weight", "density_weight", "tol"):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        bad(name, "must be a finite number >= 0")
    if self.margin_sign not in MARGIN_SIGNS:
      bad("margin_sign", f"must be one of {MARGIN_SIGNS}")
    if self.density not in DENSITY_MODES:
      bad("density", f"must be one of {DENSITY_MODES}")

  @property
  def margin_coefficient(self) -> float:
    """Signed coefficient of mean(P (1 - P)) in the minimised objective."""
    return -self.margin_weight if self.margin_sign == "reward" else self.margin_weight

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "MetamerConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"MetamerConfig: unknown keys {unknown}; valid keys are {sorted(names)}")
    return cls(**d)
