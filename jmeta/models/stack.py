"""The layer stack shared by the message-passing models, and the model input/output plumbing.

A model with ``K = config.num_layers`` layers computes (PyG style)::

  h_0 = x                                            # x / rowsum(x) with input_norm="row"
  z_k = conv_k(dropout(h_{k-1}), A)                  # dropout only with train=True
  h_k = act(z_k) [+ P_k h_{k-1}]    for k < K        # residual (config.residual) on hidden layers
  h_K = z_K                                          # logits, no activation

``P_k`` is the identity when ``h_{k-1}`` and ``h_k`` have the same width, else a bias-free
``Dense`` (named ``residual_{k-1}``); it acts on the undropped ``h_{k-1}``. Layer ``k`` is the
submodule ``layer_{k-1}`` and ``ModelOutput.activations[k-1] = h_k``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from jmeta.graph import Graph
from jmeta.models.dropout import Dropout
from jmeta.models.config import INPUT_NORMS, ModelConfig
from jmeta.models.propagate import DenseAdj, EdgeList, Structure

Array = jnp.ndarray

# PyG initialisers: glorot for GCN/Cheb/GAT weights; torch.nn.Linear's default
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for SAGE/GIN. Biases start at zero.
glorot = nn.initializers.xavier_uniform()
torch_linear = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def project_first(d_in: int, d_out: int, project: Optional[bool] = None) -> bool:
  """Whether a layer ``A x W`` (``A`` linear over nodes: a propagation or a mean) computes
  ``A (x W)`` rather than ``(A x) W``: the same numbers up to rounding, and the edges then carry
  the narrower matrix. With ``d_in = 2089`` input features and ``d_out = 16`` (Squirrel, layer
  1), aggregating first moves 130x more floats through the edges. ``project`` (a layer's
  attribute) forces the order; ``None`` picks ``d_out < d_in``."""
  return d_out < d_in if project is None else bool(project)


class DenseParams(nn.Module):
  """The parameters of ``nn.Dense(features)``, returned instead of applied.

  Same names (``kernel [d_in, features]``, ``bias [features]``), initialisers, dtype and RNG use
  as ``nn.Dense``, so checkpoints are interchangeable; a layer that holds the kernel can choose
  where the product goes (`project_first`).

  Attributes:
    features: output width. use_bias: create ``bias``. kernel_init: the kernel's initialiser.
  """

  features: int
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, d_in: int) -> tuple[Array, Optional[Array]]:
    """``d_in`` -> ``(kernel [d_in, features], bias [features] or None)``."""
    kernel = self.param("kernel", self.kernel_init, (d_in, self.features), jnp.float32)
    if not self.use_bias:
      return kernel, None
    return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)


class ModelOutput(NamedTuple):
  """Per-layer activations and logits.

  Attributes:
    activations: ``K`` arrays, ``activations[k-1] = h^(k)``, ``[n, width_k]``; for ``k < K``
      after the nonlinearity (and residual); ``activations[K-1]`` is the logits.
    logits: ``[n, num_classes]``, the same array as ``activations[-1]``.
  """

  activations: tuple
  logits: Array


def activation_fn(name: str) -> Callable[[Array], Array]:
  """``"relu"`` -> ``jax.nn.relu``, ``"elu"`` -> ``jax.nn.elu``."""
  fns = {"relu": jax.nn.relu, "elu": jax.nn.elu}
  if name not in fns:
    raise ValueError(f"unknown activation {name!r}; expected one of {tuple(fns)}")
  return fns[name]


def normalize_rows(x: Array) -> Array:
  """``x_v / sum_j x_vj`` for every row of ``x: [n, d]``; a row summing to 0 is left as it is.

  The gradient is finite everywhere (the guarded denominator is never 0).
  """
  total = jnp.sum(x, axis=1, keepdims=True)
  return x / jnp.where(total == 0, jnp.ones_like(total), total)


def model_inputs(graph: Union[Graph, jraph.GraphsTuple], adj: Optional[Array],
                 input_norm: str = "none") -> tuple[Array, Structure]:
  """Features ``x: [n, d]`` and the structure: the graph's edges, or ``adj: [n, n]`` if given.

  ``input_norm="row"`` returns the features through `normalize_rows` (``ModelConfig.input_norm``).

  Raises:
    ValueError: if ``adj`` is not ``[n, n]`` or features are not ``[n, d]``.
  """
  gt = graph.graph if isinstance(graph, Graph) else graph
  x = jnp.asarray(gt.nodes)
  if x.ndim != 2:
    raise ValueError(f"node features must be [n, d], got shape {x.shape}")
  n = x.shape[0]
  if input_norm == "row":
    x = normalize_rows(x)
  elif input_norm != "none":
    raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
  if adj is None:
    return x, EdgeList(gt.senders, gt.receivers, gt.edges, n)
  adj = jnp.asarray(adj)
  if adj.shape != (n, n):
    raise ValueError(f"adj has shape {adj.shape}, expected ({n}, {n}) for a graph with {n} "
                     f"nodes")
  return x, DenseAdj(adj.astype(x.dtype))


def check_input_width(module: nn.Module, path: tuple, d: int) -> None:
  """Raises ``ValueError`` if the bound params expect another feature width than ``d``.

  ``path`` (inside ``params``) names a kernel whose first dimension is the input width. Does
  nothing during ``init`` (the params are being created from this input).
  """
  if module.is_initializing() or "params" not in module.variables:
    return
  node = module.variables["params"]
  for key in path:
    if key not in node:
      return
    node = node[key]
  expected = int(node.shape[0])
  if expected != d:
    raise ValueError(f"graph has {d} node features but the model params were built for "
                     f"{expected} (params['params'][{']['.join(map(repr, path))}] has shape "
                     f"{tuple(node.shape)})")


def residual_projection(h: Array, width: int, name: str) -> Array:
  """``P h``: ``h`` itself when it has ``width`` columns, else a bias-free ``Dense(width)``."""
  if h.shape[-1] == width:
    return h
  return nn.Dense(width, use_bias=False, kernel_init=glorot, name=name)(h)


class MessagePassingGNN(nn.Module):
  """Base of GCN, ChebNet, GraphSAGE, GIN and GAT: the stack described in the module doc.

  Subclasses define `make_conv` (a module called as ``conv(x, structure, train)``),
  `hidden_width` and `input_kernel` (path of a first-layer kernel ``[d, ...]``).
  """

  config: ModelConfig
  num_classes: int

  input_kernel = ("layer_0", "lin", "kernel")

  def hidden_width(self) -> int:
    """Width of the hidden activations ``h_1 .. h_{K-1}``."""
    return self.config.hidden

  def make_conv(self, width: int, last: bool, name: str) -> nn.Module:
    raise NotImplementedError

  @nn.compact
  def __call__(self, graph: Union[Graph, jraph.GraphsTuple], adj: Optional[Array] = None,
               train: bool = False) -> ModelOutput:
    """Runs the stack.

    Args:
      graph: a `Graph` (or its ``GraphsTuple``) with ``x: [n, d]``.
      adj: optional ``[n, n]`` dense weights replacing the graph's edges (no self loops).
      train: apply dropout (needs ``rngs={"dropout": key}``).

    Returns:
      `ModelOutput` with ``K`` activations.
    """
    cfg = self.config
    x, s = model_inputs(graph, adj, cfg.input_norm)
    check_input_width(self, self.input_kernel, x.shape[1])
    act = activation_fn(cfg.activation)
    h, acts = x, []
    for k in range(cfg.num_layers):
      last = k == cfg.num_layers - 1
      width = self.num_classes if last else self.hidden_width()
      z = Dropout(cfg.dropout, deterministic=not train)(h)
      z = self.make_conv(width, last, f"layer_{k}")(z, s, train)
      if not last:
        z = act(z)
        if cfg.residual:
          z = z + residual_projection(h, z.shape[-1], f"residual_{k}")
      acts.append(z)
      h = z
    return ModelOutput(tuple(acts), acts[-1])
