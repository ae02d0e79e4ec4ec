"""GNN architectures: GCN, ChebNet, GraphSAGE, GIN, GAT and Graphormer (Flax linen).

Every model is built by `create_model` and called as
``model.apply(variables, graph, adj=None, train=False)``; it returns a `ModelOutput` with one
activation per layer (contract: ``notes/MODEL_API.md``). Message passing works on the graph's
weighted edge list, or on a dense ``adj: [n, n]`` that replaces it (`jmeta.models.propagate`).

Example:
  >>> cfg = ModelConfig("gcn", num_layers=2, hidden=16)
  >>> model = create_model(cfg, graph.num_classes)
  >>> variables = model.init(jax.random.key(0), graph)
  >>> out = model.apply(variables, graph)               # out.activations[0]: [n, 16]
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax

from jmeta.graph import Graph
from jmeta.models.cheb import ChebConv, ChebNet
from jmeta.models.config import ACTIVATIONS, INPUT_NORMS, MODEL_NAMES, ModelConfig
from jmeta.models.gat import GAT, GATConv, head_split
from jmeta.models.gcn import GCN, GCNConv
from jmeta.models.gin import GIN, GINConv
from jmeta.models.graphormer import Graphormer, GraphormerBlock
from jmeta.models.sage import GraphSAGE, SAGEConv
from jmeta.models.stack import MessagePassingGNN, ModelOutput

_MODELS = {"gcn": GCN, "cheb": ChebNet, "sage": GraphSAGE, "gin": GIN, "gat": GAT,
           "graphormer": Graphormer}


def create_model(config: ModelConfig, num_classes: int) -> nn.Module:
  """The Flax module of ``config.name`` with ``num_classes`` outputs.

  Raises:
    ValueError: if ``config`` is not a `ModelConfig` or ``num_classes < 1``.
  """
  if not isinstance(config, ModelConfig):
    raise ValueError(f"create_model expects a ModelConfig, got {type(config).__name__}")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
  return _MODELS[config.name](config=config, num_classes=num_classes)


def check_params_match(variables: Mapping[str, Any], graph: Graph,
                       model: Optional[nn.Module] = None) -> None:
  """Raises ``ValueError`` if ``variables`` were built for another feature width than ``graph``'s.

  The models also check this themselves in ``__call__`` (``apply`` raises the same
  ``ValueError``); this helper lets checkpoint / training code check before any work. Without
  ``model`` it reads the first-layer input kernel (``[d, ...]``) of any of the six models. With
  ``model`` it also runs ``model.apply`` abstractly (`jax.eval_shape`, no FLOPs), which catches
  every other mismatch (re-raised as ``ValueError``).
  """
  params = variables.get("params", {}) if isinstance(variables, Mapping) else {}
  d = int(graph.x.shape[1])
  for path in sorted({cls.input_kernel for cls in _MODELS.values()}):
    node = params
    for key in path:
      node = node.get(key) if isinstance(node, Mapping) else None
    if node is not None and int(node.shape[0]) != d:
      raise ValueError(f"graph has {d} node features but the model params were built for "
                       f"{int(node.shape[0])} (params['params'][{']['.join(map(repr, path))}] "
                       f"has shape {tuple(node.shape)})")
  if model is None:
    return
  try:
    jax.eval_shape(lambda v, g: model.apply(v, g), variables, graph)
  except ValueError:
    raise
  except Exception as e:  # flax ScopeParamShapeError, missing params, ...
    raise ValueError(f"params do not match model {type(model).__name__} on graph "
                     f"{getattr(graph, 'name', '?')!r}: {e}") from e


__all__ = [
    "ACTIVATIONS", "INPUT_NORMS", "MODEL_NAMES", "ModelConfig", "ModelOutput", "create_model",
    "check_params_match", "MessagePassingGNN", "GCN", "GCNConv", "ChebNet", "ChebConv",
    "GraphSAGE", "SAGEConv", "GIN", "GINConv", "GAT", "GATConv", "head_split", "Graphormer",
    "GraphormerBlock",
]
