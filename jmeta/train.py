"""Training and adversarial training of node classifiers: pure steps plus a thin loop.

The pieces, from small to large:

* `loss_fn`: cross-entropy of the logits on the training nodes (mean over them).
* `pgd_attack`: projected gradient ascent on the node features inside an L-infinity ball
  (Madry et al. 2018), used for adversarial training (paper Sec 4.4, Fig 6).
* `train_step`: one optimiser step (clean or adversarial), ``jit``-compiled once.
* `evaluate`: accuracies per split and losses, in eval mode (no dropout).
* `fit`: validates its inputs before anything is compiled, then runs the epochs inside
  ``jax.lax.scan`` in chunks of `TrainConfig.chunk` epochs (one compiled chunk reused for every
  chunk), with early stopping on validation accuracy tracked on device, and returns the
  parameters of the best validation epoch.

Optimiser: Adam with L2 weight decay added to the gradient before the Adam moments
(``optax.add_decayed_weights`` then ``optax.adam``). This is what PyTorch's ``Adam(weight_decay=)``
does and therefore what the PyTorch Geometric baselines the paper uses do; it is *not* AdamW's
decoupled decay, which behaves differently with Adam's per-coordinate scaling.

PRNG: ``PRNGKey(seed)`` splits into an init key and a training key; epoch ``t`` uses
``fold_in(training key, t)`` split into a dropout key and an attack key, so results do not
depend on the chunk size.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jmeta.graph import Graph
from jmeta.models import ModelConfig, create_model

Array = jnp.ndarray
Params = Any  # a flax variables dict, {'params': ...}


# -- configuration ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
  """PGD adversarial training on node features (Madry et al. 2018), L-infinity ball.

  Each training step first finds ``X_adv = X + delta`` with ``||delta||_inf <= eps`` that
  (approximately) maximises the training loss, by ``steps`` signed-gradient ascent steps of size
  ``step_size`` from a uniform random start inside the ball, projecting back after every step;
  then it minimises ``(1 - adv_weight) * L(X) + adv_weight * L(X_adv)`` over the parameters.
  ``adv_weight = 1`` (default) is Madry's "train on adversarial examples only".

  The attack perturbs every node's features (a transductive attacker can touch all inputs) and
  attacks the loss on the training nodes, with the model in eval mode (no dropout) so the attack
  direction is that of the deterministic network. ``X_adv`` is a constant for the parameter
  gradient (``stop_gradient``), as in Madry's formulation.

  Binary features (``graph.feature_kind == "binary"``) are kept inside ``[0, 1]``: the attack
  then lives in the convex relaxation of bit flips (a 0 can rise to ``eps``, a 1 fall to
  ``1 - eps``), the same domain that feature metamers (paper eq. 8) move in. Continuous features
  are clipped below at ``clip_min_continuous`` (default 0: PubMed TF-IDF is non-negative, and
  the metamer projection keeps them non-negative too); ``None`` disables that clip.

  Attributes:
    eps: radius of the L-infinity ball (> 0).
    steps: number of PGD steps (>= 1).
    step_size: ascent step; ``None`` means ``2.5 * eps / steps`` (Madry's choice).
    adv_weight: weight of the adversarial loss in [0, 1]; 1 = adversarial examples only.
    random_start: start from a uniform point in the ball (else from ``X``).
    clip_min_continuous: lower clip for continuous features, or ``None``.
  """

  eps: float = 0.1
  steps: int = 5
  step_size: Optional[float] = None
  adv_weight: float = 1.0
  random_start: bool = True
  clip_min_continuous: Optional[float] = 0.0

  def __post_init__(self):
    if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
      raise ValueError(f"AdversarialConfig.eps must be a finite number > 0, got {self.eps!r}")
    if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
      raise ValueError(f"AdversarialConfig.steps must be an int >= 1, got {self.steps!r}")
    if self.step_size is not None and not (
        isinstance(self.step_size, (int, float)) and math.isfinite(self.step_size)
        and self.step_size > 0):
      raise ValueError(
          f"AdversarialConfig.step_size must be None or a finite number > 0, got "
          f"{self.step_size!r}")
    if not (isinstance(self.adv_weight, (int, float)) and 0.0 <= self.adv_weight <= 1.0):
      raise ValueError(
          f"AdversarialConfig.adv_weight must be in [0, 1], got {self.adv_weight!r}")
    if not isinstance(self.random_start, bool):
      raise ValueError(
          f"AdversarialConfig.random_start must be a bool, got {self.random_start!r}")
    if self.clip_min_continuous is not None and not (
        isinstance(self.clip_min_continuous, (int, float))
        and math.isfinite(self.clip_min_continuous)):
      raise ValueError(f"AdversarialConfig.clip_min_continuous must be None or finite, got "
                       f"{self.clip_min_continuous!r}")

  @property
  def alpha(self) -> float:
    """The PGD step size actually used."""
    return float(self.step_size) if self.step_size is not None else 2.5 * self.eps / self.steps


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How a node classifier is trained.

  Defaults follow the PyTorch Geometric GCN example (Adam lr 0.01, L2 weight decay 5e-4,
  200 epochs), which reach the usual accuracies (GCN on Cora about 81%). The paper states Adam
  with lr 0.001 for GNN training (Sec 4.1) but no epoch count; with 200 epochs lr 0.001
  under-trains the planetoid models, so 0.01 is the default and ``learning_rate=0.001`` (with
  more epochs, e.g. 1000) remains available. See `default_train_config` for per-model values.

  Attributes:
    learning_rate: Adam step size (> 0; ``inf`` is rejected).
    weight_decay: L2 coefficient added to the gradient before Adam (>= 0), as PyTorch's
      ``Adam(weight_decay=...)``.
    epochs: maximum number of epochs (>= 1).
    patience: stop when validation accuracy has not improved for this many epochs (>= 1);
      ``None`` disables early stopping. The returned parameters are always those of the best
      validation epoch.
    seed: integer seed for initialisation, dropout and the PGD random starts.
    adversarial: `AdversarialConfig` for PGD adversarial training, or ``None`` (clean).
    chunk: epochs per compiled ``lax.scan`` chunk (>= 1); only changes how often the host
      checks progress and divergence, never the result.
  """

  learning_rate: float = 0.01
  weight_decay: float = 5e-4
  epochs: int = 200
  patience: Optional[int] = 100
  seed: int = 0
  adversarial: Optional[AdversarialConfig] = None
  chunk: int = 25

  def __post_init__(self):
    if not (isinstance(self.learning_rate, (int, float)) and not isinstance(
        self.learning_rate, bool) and math.isfinite(self.learning_rate)
            and self.learning_rate > 0):
      raise ValueError(
          f"TrainConfig.learning_rate must be a finite number > 0, got {self.learning_rate!r}")
    if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0):
      raise ValueError(
          f"TrainConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
    for name in ("epochs", "chunk"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {v!r}")
    if self.patience is not None and (not isinstance(self.patience, int)
                                      or isinstance(self.patience, bool) or self.patience < 1):
      raise ValueError(f"TrainConfig.patience must be None or an int >= 1, got "
                       f"{self.patience!r}")
    if not isinstance(self.seed, int) or isinstance(self.seed, bool):
      raise ValueError(f"TrainConfig.seed must be an int, got {self.seed!r}")
    if self.adversarial is not None and not isinstance(self.adversarial, AdversarialConfig):
      raise ValueError(f"TrainConfig.adversarial must be None or an AdversarialConfig, got "
                       f"{type(self.adversarial).__name__}")

  def to_dict(self) -> dict:
    """A JSON-ready dict (nested adversarial config included)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
    d = dict(d)
    if d.get("adversarial") is not None:
      d["adversarial"] = AdversarialConfig(**d["adversarial"])
    return cls(**d)


# Per-architecture training hyperparameters (PyG examples: GAT uses lr 0.005).
_TRAIN_DEFAULTS = {
    "gat": dict(learning_rate=0.005),
    # Graphormer (SPD-prior init, see jmeta.models.graphormer): 100 epochs reach 74-78% on
    # Cora (best validation epoch ~90) at half the cost of 200 epochs of dense attention;
    # lr 0.01 / weight decay 5e-4 as the TrainConfig defaults.
    "graphormer": dict(epochs=100, patience=50),
}


def default_train_config(model_name: str, **overrides) -> TrainConfig:
  """The default `TrainConfig` for an architecture, with ``overrides`` applied.

  GAT uses lr 0.005 (Velickovic et al.; PyG example); Graphormer 100 epochs with patience 50
  (its dense attention makes an epoch costly, and its best validation epoch comes before 100);
  every other model the `TrainConfig` defaults (lr 0.01, weight decay 5e-4, 200 epochs,
  patience 100).
  """
  kw = dict(_TRAIN_DEFAULTS.get(str(model_name).lower(), {}))
  kw.update(overrides)
  return TrainConfig(**kw)


# -- state -----------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Parameters and optimiser state (pytree leaves) plus the static model and hyperparameters.

  ``model``, ``learning_rate``, ``weight_decay`` and ``adversarial`` are static (part of the tree
  structure, compared by value), so a jitted function taking a `TrainState` compiles once per
  (model, optimiser, attack) and reuses the compilation for every epoch and every seed.
  """

  step: Array
  params: Params
  opt_state: optax.OptState
  model: nn.Module = flax.struct.field(pytree_node=False)
  learning_rate: float = flax.struct.field(pytree_node=False)
  weight_decay: float = flax.struct.field(pytree_node=False)
  adversarial: Optional[AdversarialConfig] = flax.struct.field(pytree_node=False, default=None)

  @property
  def tx(self) -> optax.GradientTransformation:
    """The optimiser (rebuilt from the static hyperparameters; it holds no state)."""
    return _optimizer(self.learning_rate, self.weight_decay)


def _optimizer(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay (PyTorch ``Adam(weight_decay=)``).

  ``g <- g + weight_decay * p`` then Adam on ``g``: the decay goes through Adam's normalisation,
  unlike AdamW (``optax.adamw``) which subtracts ``lr * weight_decay * p`` after it.
  """
  return _optimizer(config.learning_rate, config.weight_decay)


def create_train_state(model: nn.Module, params: Params, config: TrainConfig) -> TrainState:
  """A fresh `TrainState` for ``params`` (a variables dict ``{'params': ...}``)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=make_optimizer(config).init(params), model=model,
                    learning_rate=float(config.learning_rate),
                    weight_decay=float(config.weight_decay), adversarial=config.adversarial)


# -- pure functions --------------------------------------------------------------------------------


def _logits(params: Params, model: nn.Module, graph: Graph, key: Optional[Array],
            train: bool) -> Array:
  if train:
    if key is None:
      raise ValueError("a dropout key is required when train=True")
    out = model.apply(params, graph, train=True, rngs={"dropout": key})
  else:
    out = model.apply(params, graph)
  return out.logits


def masked_cross_entropy(logits: Array, labels: Array, mask: Array) -> Array:
  """Mean softmax cross-entropy over the nodes in ``mask`` with a label.

  Args:
    logits: ``[n, c]``.
    labels: ``[n] int32`` (``-1`` = unlabelled, ignored).
    mask: ``[n] bool``.

  Returns:
    A scalar; NaN when no node is selected.
  """
  valid = mask & (labels >= 0)
  safe = jnp.where(valid, labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, ce, 0.0)) / count


def masked_accuracy(logits: Array, labels: Array, mask: Array) -> Array:
  """Fraction of the nodes in ``mask`` (with a label) whose argmax logit is the label.

  Returns NaN when no node is selected.
  """
  valid = mask & (labels >= 0)
  correct = (jnp.argmax(logits, axis=-1) == labels) & valid
  return jnp.sum(correct) / jnp.sum(valid)


def loss_fn(params: Params, model: nn.Module, graph: Graph, key: Optional[Array],
            train: bool = True) -> tuple[Array, dict]:
  """Cross-entropy on the training nodes, mean over them.

  Args:
    params: variables dict ``{'params': ...}``.
    model: a module following the jmeta model API.
    graph: the graph (features ``[n, d]``, labels ``[n]``, ``train_mask [n]``).
    key: dropout key (required when ``train``).
    train: dropout on (``True``) or off.

  Returns:
    ``(loss, aux)`` with ``aux = {'logits': [n, c], 'accuracy': train accuracy}``.
  """
  logits = _logits(params, model, graph, key, train)
  loss = masked_cross_entropy(logits, graph.labels, graph.train_mask)
  return loss, {"logits": logits, "accuracy": masked_accuracy(logits, graph.labels,
                                                              graph.train_mask)}


def project_features(x_adv: Array, x: Array, eps: float, feature_kind: str,
                     clip_min_continuous: Optional[float] = 0.0) -> Array:
  """Projects ``x_adv`` onto the L-infinity ball of radius ``eps`` around ``x`` and the domain.

  Binary features: domain ``[0, 1]``; continuous: ``[clip_min_continuous, inf)`` (no clip when
  ``None``). The ball and the box are both boxes, so clipping to one then the other is the exact
  Euclidean projection onto their intersection (non-empty, since it contains ``x``).
  """
  x_adv = jnp.clip(x_adv, x - eps, x + eps)
  if feature_kind == "binary":
    x_adv = jnp.clip(x_adv, 0.0, 1.0)
  elif clip_min_continuous is not None:
    x_adv = jnp.maximum(x_adv, clip_min_continuous)
  return x_adv


def pgd_attack(params: Params, model: nn.Module, graph: Graph, key: Array,
               adv_cfg: AdversarialConfig) -> Array:
  """L-infinity PGD on node features maximising the training loss (eval mode).

  ``x_{t+1} = Proj(x_t + alpha * sign(grad_x L(x_t)))``, ``x_0 = Proj(x + U[-eps, eps])``
  (random start) or ``x``; ``Proj`` = `project_features`.

  Args:
    params: variables dict.
    model: the model.
    graph: the clean graph, ``graph.x: [n, d]``.
    key: PRNG key for the random start.
    adv_cfg: the attack.

  Returns:
    ``x_adv: [n, d] float32``, inside the ball and the feature domain; no gradient flows to
    ``params`` through it.
  """
  x = graph.x
  eps, alpha = adv_cfg.eps, adv_cfg.alpha

  def proj(z):
    return project_features(z, x, eps, graph.feature_kind, adv_cfg.clip_min_continuous)

  params = jax.lax.stop_gradient(params)
  if adv_cfg.random_start:
    x0 = proj(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps))
  else:
    x0 = x

  def adv_loss(z):
    return loss_fn(params, model, graph.with_features(z), None, train=False)[0]

  def body(_, z):
    g = jax.grad(adv_loss)(z)
    return proj(z + alpha * jnp.sign(g))

  x_adv = jax.lax.fori_loop(0, adv_cfg.steps, body, x0)
  return jax.lax.stop_gradient(x_adv)


def _train_step(state: TrainState, graph: Graph, key: Array) -> tuple[TrainState, dict]:
  """One optimiser step; see `train_step`."""
  dropout_key, attack_key = jax.random.split(key)
  adv = state.adversarial
  model = state.model

  if adv is None:
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, model, graph, dropout_key, True)
    metrics = {"loss": loss, "train_acc": aux["accuracy"]}
  else:
    x_adv = pgd_attack(state.params, model, graph, attack_key, adv)
    adv_graph = graph.with_features(x_adv)
    w = adv.adv_weight

    def mixed(params):
      # Same dropout mask for both terms (same key), so they differ only by the features.
      l_adv, aux_adv = loss_fn(params, model, adv_graph, dropout_key, True)
      if w == 1.0:  # Madry: adversarial examples only, no clean forward pass
        return l_adv, {"adv_loss": l_adv, "train_acc": aux_adv["accuracy"]}
      l_clean, aux_clean = loss_fn(params, model, graph, dropout_key, True)
      return (1.0 - w) * l_clean + w * l_adv, {"adv_loss": l_adv, "clean_loss": l_clean,
                                               "train_acc": aux_clean["accuracy"]}

    (loss, metrics), grads = jax.value_and_grad(mixed, has_aux=True)(state.params)
    metrics = dict(metrics, loss=loss)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


train_step: Callable[[TrainState, Graph, Array], tuple[TrainState, dict]] = jax.jit(_train_step)
train_step.__doc__ = """One (clean or PGD-adversarial) Adam step, ``jit``-compiled once per model.

Args:
  state: `TrainState` (its model, optimiser and attack are static).
  graph: the training graph.
  key: this step's PRNG key (split into dropout and attack keys).

Returns:
  ``(new_state, metrics)`` with ``metrics['loss']`` the loss that was minimised (train mode,
  before the update) and ``metrics['train_acc']`` (train mode; on the adversarial features when
  ``adv_weight == 1``, else on the clean ones). Adversarial steps add ``metrics['adv_loss']``
  and, when ``adv_weight < 1``, ``metrics['clean_loss']``.
"""


def _evaluate(params: Params, model: nn.Module, graph: Graph) -> dict:
  logits = _logits(params, model, graph, None, train=False)
  y = graph.labels
  return {
      "train": masked_accuracy(logits, y, graph.train_mask),
      "val": masked_accuracy(logits, y, graph.val_mask),
      "test": masked_accuracy(logits, y, graph.test_mask),
      "loss": masked_cross_entropy(logits, y, graph.train_mask),
      "val_loss": masked_cross_entropy(logits, y, graph.val_mask),
  }


_evaluate_jit = jax.jit(_evaluate, static_argnums=1)


def evaluate(params: Params, model: nn.Module, graph: Graph) -> dict:
  """Accuracies and losses in eval mode (no dropout).

  Args:
    params: variables dict.
    model: the model (static under jit).
    graph: the graph with its split masks.

  Returns:
    ``{'train', 'val', 'test'}``: accuracy of the nodes in each mask (NaN for an empty mask),
    ``'loss'``: training cross-entropy, ``'val_loss'``: validation cross-entropy; Python floats.
  """
  return {k: float(v) for k, v in _evaluate_jit(params, model, graph).items()}


# -- the epoch loop --------------------------------------------------------------------------------


@flax.struct.dataclass
class _Carry:
  """Loop state carried through the scanned epochs."""

  state: TrainState
  best_params: Params
  best_val: Array       # best validation accuracy so far (-inf before the first epoch)
  best_val_loss: Array  # its validation loss (tie-break between equal accuracies)
  best_epoch: Array     # epoch index of the best, -1 before the first
  stopped: Array        # early stop or divergence: later epochs are no-ops


def _init_carry(state: TrainState) -> _Carry:
  return _Carry(state=state, best_params=state.params,
                best_val=jnp.array(-jnp.inf, jnp.float32),
                best_val_loss=jnp.array(jnp.inf, jnp.float32),
                best_epoch=jnp.array(-1, jnp.int32), stopped=jnp.array(False))


def _epoch(c: _Carry, graph: Graph, train_key: Array, t: Array, patience: Optional[int]):
  """One epoch: a train step, an eval-mode evaluation, best-val bookkeeping.

  The best epoch is the one with the highest validation accuracy, ties broken by lower
  validation loss; an epoch with a non-finite loss never counts and stops the run.
  """
  state, m = _train_step(c.state, graph, jax.random.fold_in(train_key, t))
  ev = _evaluate(state.params, state.model, graph)
  finite = jnp.isfinite(m["loss"]) & jnp.isfinite(ev["val_loss"])
  better = finite & ((ev["val"] > c.best_val)
                     | ((ev["val"] == c.best_val) & (ev["val_loss"] < c.best_val_loss)))
  best_params = jax.tree_util.tree_map(lambda new, old: jnp.where(better, new, old),
                                       state.params, c.best_params)
  best_epoch = jnp.where(better, t, c.best_epoch)
  stop = ~finite
  if patience is not None:
    stop = stop | (t - best_epoch >= patience)
  c = c.replace(state=state, best_params=best_params,
                best_val=jnp.where(better, ev["val"], c.best_val).astype(jnp.float32),
                best_val_loss=jnp.where(better, ev["val_loss"],
                                        c.best_val_loss).astype(jnp.float32),
                best_epoch=best_epoch.astype(jnp.int32), stopped=stop)
  out = {"loss": m["loss"], "train_acc": m["train_acc"], "val_acc": ev["val"],
         "val_loss": ev["val_loss"], "test_acc": ev["test"]}
  return c, {k: v.astype(jnp.float32) for k, v in out.items()}


def _run_chunk_impl(carry: _Carry, graph: Graph, train_key: Array, start: Array,
                    n_active: Array, *, chunk: int, patience: Optional[int]):
  """Epochs ``start .. start + chunk - 1`` in one ``lax.scan``.

  Epochs ``>= start + n_active`` and those after a stop are no-ops (``lax.cond``), so one
  compilation also serves the last, shorter chunk.

  Returns:
    ``(carry, outs)``; ``outs`` holds ``[chunk]`` arrays ``loss`` (train mode, before the
    update), ``train_acc``, ``val_acc``, ``val_loss``, ``test_acc`` (eval mode, after the
    update; NaN for skipped epochs) and ``ran`` (bool).
  """

  def body(c: _Carry, i):
    ran = (i < n_active) & ~c.stopped
    nan = jnp.full((), jnp.nan, jnp.float32)
    skipped = {"loss": nan, "train_acc": nan, "val_acc": nan, "val_loss": nan, "test_acc": nan}
    c, out = jax.lax.cond(ran, lambda c: _epoch(c, graph, train_key, start + i, patience),
                          lambda c: (c, skipped), c)
    return c, dict(out, ran=ran)

  return jax.lax.scan(body, carry, jnp.arange(chunk, dtype=jnp.int32))


_run_chunk = jax.jit(_run_chunk_impl, static_argnames=("chunk", "patience"))


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What `fit` returns.

  Attributes:
    params: variables dict of the best validation epoch.
    history: per-epoch ``[epochs_run]`` numpy arrays: ``loss`` (minimised training loss, train
      mode), ``train_acc`` (train mode), ``val_acc``, ``val_loss`` and ``test_acc`` (eval mode,
      after the epoch's update; ``test_acc`` is for diagnostics only, selection uses ``val``).
    best_epoch: 0-based index of the epoch whose parameters were kept.
    metrics: `evaluate` of ``params``: ``train``/``val``/``test`` accuracy, ``loss``,
      ``val_loss``.
    model_config: the model's config.
    train_config: the training config.
    epochs_run: epochs actually run (< epochs after early stopping).
    seconds: wall time of the epoch loop (compilation included).
  """

  params: Params
  history: dict
  best_epoch: int
  metrics: dict
  model_config: Any
  train_config: TrainConfig
  epochs_run: int
  seconds: float


class TrainingDivergedError(FloatingPointError):
  """The training loss (or validation loss) became NaN or inf.

  Attributes:
    epoch: 0-based index of the first epoch with a non-finite loss.
    best_params: parameters of the best finite epoch before it (the initial parameters if
      there was none).
    best_epoch: that epoch's index (-1: initial parameters).
    history: the per-epoch history up to and including ``epoch``.
  """

  def __init__(self, message: str, *, epoch: int, best_params: Params, best_epoch: int,
               history: dict):
    super().__init__(message)
    self.epoch = epoch
    self.best_params = best_params
    self.best_epoch = best_epoch
    self.history = history


def check_graph_for_training(graph: Graph) -> None:
  """Raises ValueError when ``graph`` cannot train a classifier (host side, before compiling).

  Checks: a `Graph`; features ``[n, d]`` with ``n, d >= 1`` and finite; at least two classes;
  labels in ``[-1, num_classes)``; at least one labelled training node and one labelled
  validation node (the best epoch is chosen on validation accuracy). Masked nodes labelled -1
  are ignored by the loss and the accuracies.
  """
  if not isinstance(graph, Graph):
    raise ValueError(f"expected a jmeta.graph.Graph, got {type(graph).__name__}")
  x = np.asarray(graph.x)
  name = graph.name
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f"{name}: features must be [n, d] with n, d >= 1, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    bad = np.argwhere(~np.isfinite(x))[0]
    raise ValueError(f"{name}: features contain NaN or inf (first at node {bad[0]}, feature "
                     f"{bad[1]})")
  if graph.num_classes < 2:
    raise ValueError(f"{name}: need at least 2 classes, got num_classes={graph.num_classes}")
  y = np.asarray(graph.labels)
  if y.shape != (x.shape[0],):
    raise ValueError(f"{name}: labels have shape {y.shape}, expected ({x.shape[0]},)")
  if y.size and (y.min() < -1 or y.max() >= graph.num_classes):
    raise ValueError(f"{name}: labels out of range [-1, {graph.num_classes}): min {y.min()}, "
                     f"max {y.max()}")
  for split in ("train", "val"):
    m = np.asarray(getattr(graph, f"{split}_mask"))
    if m.shape != y.shape:
      raise ValueError(f"{name}: {split}_mask has shape {m.shape}, expected {y.shape}")
    if not np.any(m & (y >= 0)):
      raise ValueError(f"{name}: no labelled {split} nodes ({split}_mask selects "
                       f"{int(m.sum())} nodes, none with a label >= 0)")


def check_params_compatible(params: Params, model: nn.Module, graph: Graph) -> None:
  """Raises ValueError when ``params`` do not fit ``model`` applied to ``graph``.

  Compares tree structure and every leaf shape with ``jax.eval_shape(model.init, ...)`` (no
  computation), naming the first differing path, e.g. a first-layer kernel ``(1433, 16)`` vs
  ``(500, 16)`` when the feature dimension differs.
  """
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), graph)
  flat_e = {jax.tree_util.keystr(p): v for p, v in
            jax.tree_util.tree_flatten_with_path(expected)[0]}
  flat_p = {jax.tree_util.keystr(p): v for p, v in
            jax.tree_util.tree_flatten_with_path(params)[0]}
  missing = sorted(set(flat_e) - set(flat_p))
  extra = sorted(set(flat_p) - set(flat_e))
  if missing or extra:
    raise ValueError(f"params do not match the model: missing {missing[:3]}, unexpected "
                     f"{extra[:3]}")
  for k, e in flat_e.items():
    shape = tuple(np.shape(flat_p[k]))
    if shape != tuple(e.shape):
      raise ValueError(f"params do not match the model on graph {graph.name!r} "
                       f"({graph.num_features} features, {graph.num_classes} classes): {k} has "
                       f"shape {shape}, the model needs {tuple(e.shape)}")


@functools.partial(jax.jit, static_argnums=0)
def _init_params(model: nn.Module, key: Array, graph: Graph) -> Params:
  return model.init(key, graph)


def _as_model_config(model_config):
  if isinstance(model_config, ModelConfig):
    return model_config
  if isinstance(model_config, Mapping):
    return ModelConfig.from_dict(model_config)
  raise ValueError(f"model_config must be a jmeta.models.ModelConfig or a mapping, got "
                   f"{type(model_config).__name__}")


def fit(model_config, graph: Graph, train_config: Optional[TrainConfig] = None, *,
        progress: bool = True, init_params: Optional[Params] = None) -> TrainResult:
  """Trains ``create_model(model_config, graph.num_classes)`` on ``graph``.

  All inputs are validated before anything is compiled. Epochs run in compiled ``lax.scan``
  chunks of ``train_config.chunk``; after each chunk the host updates the progress bar, checks
  for a non-finite loss and for early stopping.

  Args:
    model_config: a `jmeta.models.ModelConfig` (or a mapping of its fields).
    graph: training graph with train/val/test masks.
    train_config: a `TrainConfig` (default `TrainConfig()`).
    progress: show a tqdm bar over epochs (updated per chunk).
    init_params: start from these parameters instead of a fresh initialisation (checked
      against the model's shapes on ``graph``).

  Returns:
    A `TrainResult` holding the parameters of the best validation epoch.

  Raises:
    ValueError: bad config, graph or parameters (before compiling).
    TrainingDivergedError: (a ``FloatingPointError``) when a loss becomes NaN/inf; it names the
      epoch and carries the best parameters found before it.
  """
  model_config = _as_model_config(model_config)
  check_graph_for_training(graph)
  model = create_model(model_config, graph.num_classes)
  return fit_model(model, graph, train_config, progress=progress, init_params=init_params,
                   model_config=model_config)


def fit_model(model: nn.Module, graph: Graph, train_config: Optional[TrainConfig] = None, *,
              progress: bool = True, init_params: Optional[Params] = None,
              model_config: Any = None) -> TrainResult:
  """`fit` for an already-built module (any module following the jmeta model API)."""
  if train_config is None:
    train_config = TrainConfig()
  if not isinstance(train_config, TrainConfig):
    raise ValueError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
  check_graph_for_training(graph)
  init_key, train_key = jax.random.split(jax.random.PRNGKey(train_config.seed))
  if init_params is None:
    params = _init_params(model, init_key, graph)
  else:
    check_params_compatible(init_params, model, graph)
    params = jax.tree_util.tree_map(jnp.asarray, init_params)

  t0 = time.perf_counter()
  carry = _init_carry(create_train_state(model, params, train_config))
  total, chunk = train_config.epochs, min(train_config.chunk, train_config.epochs)
  hist = {"loss": [], "train_acc": [], "val_acc": [], "val_loss": [], "test_acc": []}
  bar = tqdm(total=total, disable=not progress, unit="epoch",
             desc=f"{getattr(model_config, 'name', type(model).__name__)} on {graph.name}")
  start = 0
  try:
    while start < total:
      n_active = min(chunk, total - start)
      carry, outs = _run_chunk(carry, graph, train_key, jnp.int32(start), jnp.int32(n_active),
                               chunk=chunk, patience=train_config.patience)
      outs = jax.device_get(outs)
      ran = np.asarray(outs["ran"])
      for k in hist:
        hist[k].append(np.asarray(outs[k])[ran])
      bar.update(int(ran.sum()))
      bar.set_postfix(loss=f"{float(outs['loss'][ran][-1]):.4f}" if ran.any() else "-",
                      best_val=f"{float(carry.best_val):.4f}")
      bad = ran & ~(np.isfinite(outs["loss"]) & np.isfinite(outs["val_loss"]))
      if bad.any():
        epoch = start + int(np.argmax(bad))
        history = {k: np.concatenate(v) for k, v in hist.items()}
        raise TrainingDivergedError(
            f"training diverged: non-finite loss at epoch {epoch} (train loss "
            f"{float(outs['loss'][np.argmax(bad)])}, val loss "
            f"{float(outs['val_loss'][np.argmax(bad)])}); lower the learning rate "
            f"(currently {train_config.learning_rate}) or check the features. The best "
            f"parameters so far (epoch {int(carry.best_epoch)}) are attached as .best_params.",
            epoch=epoch, best_params=carry.best_params, best_epoch=int(carry.best_epoch),
            history=history)
      start += chunk
      if bool(carry.stopped):
        break
  finally:
    bar.close()
  seconds = time.perf_counter() - t0
  history = {k: np.concatenate(v) for k, v in hist.items()}
  best_params = carry.best_params
  return TrainResult(params=best_params, history=history, best_epoch=int(carry.best_epoch),
                     metrics=evaluate(best_params, model, graph), model_config=model_config,
                     train_config=train_config, epochs_run=int(history["loss"].shape[0]),
                     seconds=seconds)
