"""Graphormer (Ying et al., 2021) for node classification on one graph.

Layer stack (``K = config.num_layers`` blocks, width ``hidden``, ``H = config.heads``)::

  h_0 = Dense(dropout(x)) + z_in[min(deg_in, 64)] + z_out[min(deg_out, 64)]   # centrality
  b_ij^h = table[spd(j -> i)]^h                                             # spatial bias
  block:  h = h + dropout(MHA(LN(h); bias b))                                # pre-LN
          h = h + dropout(W_2 act(W_1 LN(h)))                                # FFN width hidden
  activations[k-1] = output of block k (k < K);  logits = Dense(LN(block_K(...)))

Dense attention over all ``n`` nodes: query ``i`` attends to every key ``j`` with logit
``q_i . k_j / sqrt(C) + b_ij^h``. ``spd(j -> i)`` is the BFS hop count from ``j`` to ``i`` along
edges of non-zero weight, clamped to ``config.max_spd``, with one more bucket for unreachable
pairs (`jmeta.models.propagate.shortest_path_buckets`, in-graph and jit-safe). Heads split as
GAT's (`jmeta.models.gat.head_split`): ``C = hidden // H`` when ``H`` divides ``hidden``.
Dropout (rate ``config.dropout``, train mode only) acts on the input features, the attention
probabilities and each sublayer output. ``config.residual`` changes nothing: the blocks always
have their residuals.

Edge weight: only the pattern ``w != 0`` is used (degrees and shortest paths are integers), so
the output is piecewise constant in the weights: no gradient flows to ``w``/``adj``.

Memory: each block holds ``O(n^2 H)`` floats (the bias, logits, probabilities and dropout mask,
``[H, n, n]`` float32 each, kept for the backward pass), plus the ``[n, n]`` int32 distances and
an ``[E, n]`` int8 gather per BFS step. Measured on the 2-core, 24 GiB CPU machine (hidden 16,
8 heads, 2 blocks, 32 features, ~5 edges per node, one jitted value-and-grad with dropout; peak
RSS, machine shared with other jobs): n = 1000 0.7 GB; n = 2708 (Cora size) 2.7 GB, 7 s a step
(forward alone 1.3 GB, 1.6 s); n = 4000 5.5 GB, 19 s; n = 5000 8.3 GB, 34 s. That is about
0.33 kB per node pair for training (0.18 kB forward only), so training fits up to n ~ 7500 and a
forward pass up to n ~ 10000 in ~20 GB. PubMed (n = 19717) would need ~20000^2 x 8 heads x 4 B =
12.8 GB for *each* attention tensor, ~130 GB for a training step: not feasible here (it needs
sparse or chunked attention, or a GPU with that much memory).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from jmeta.graph import Graph
from jmeta.models.dropout import Dropout
from jmeta.models.config import ModelConfig
from jmeta.models.gat import head_split
from jmeta.models.propagate import (Structure, binary_in_degree, binary_out_degree,
                                    shortest_path_buckets)
from jmeta.models.stack import (ModelOutput, activation_fn, check_input_width, glorot,
                                model_inputs)

Array = jnp.ndarray
embed_init = nn.initializers.normal(stddev=0.02)


class GraphormerBlock(nn.Module):
  """One pre-LN transformer block with an additive attention bias.

  ``h = h + drop(MHA(LN(h)) + bias)``, then ``h = h + drop(FFN(LN(h)))``; ``FFN = Dense(ffn) ->
  act -> Dense(width)``. Edge weights do not enter here (the bias carries the structure).

  Attributes:
    heads: ``H``. head_dim: ``C``. ffn: FFN hidden width.
    activation: FFN nonlinearity. dropout: rate on attention probabilities and sublayer outputs.
  """

  heads: int
  head_dim: int
  ffn: int
  activation: Callable[[Array], Array] = jax.nn.relu
  dropout: float = 0.0

  @nn.compact
  def __call__(self, h: Array, bias: Array, train: bool = False) -> Array:
    """``h: [n, width]``, ``bias: [H, n, n]`` (added to the logit of query i, key j) ->
    ``[n, width]``."""
    n, width = h.shape
    hh, c = self.heads, self.head_dim
    drop = lambda t: Dropout(self.dropout, deterministic=not train)(t)
    y = nn.LayerNorm(name="ln_attn")(h)
    proj = lambda name: nn.Dense(hh * c, kernel_init=glorot, name=name)(y).reshape(n, hh, c)
    q, k, v = proj("query"), proj("key"), proj("value")
    logits = jnp.einsum("ihc,jhc->hij", q, k) / math.sqrt(c) + bias
    p = drop(jax.nn.softmax(logits, axis=-1))
    o = jnp.einsum("hij,jhc->ihc", p, v).reshape(n, hh * c)
    h = h + drop(nn.Dense(width, kernel_init=glorot, name="out")(o))
    y = nn.LayerNorm(name="ln_ffn")(h)
    y = self.activation(nn.Dense(self.ffn, kernel_init=glorot, name="ffn_0")(y))
    return h + drop(nn.Dense(width, kernel_init=glorot, name="ffn_1")(y))


class Graphormer(nn.Module):
  """Graphormer for node classification (module docstring); returns ``K`` activations.

  Attributes:
    config: the `ModelConfig` (``hidden``, ``heads``, ``num_layers``, ``max_spd``, ...).
    num_classes: output width.
    max_degree: degrees are clamped to this before the centrality embedding.
  """

  config: ModelConfig
  num_classes: int
  max_degree: int = 64

  input_kernel = ("input_proj", "kernel")

  @nn.compact
  def __call__(self, graph: Union[Graph, jraph.GraphsTuple], adj: Optional[Array] = None,
               train: bool = False) -> ModelOutput:
    """Same call as the message-passing models (`jmeta.models.stack.MessagePassingGNN`)."""
    cfg = self.config
    x, s = model_inputs(graph, adj)
    check_input_width(self, self.input_kernel, x.shape[1])
    heads, c = head_split(cfg.hidden, cfg.heads)
    x = Dropout(cfg.dropout, deterministic=not train)(x)
    h = nn.Dense(cfg.hidden, kernel_init=glorot, name="input_proj")(x)
    h = h + self.centrality(s)
    spd = shortest_path_buckets(s, cfg.max_spd)                     # [n(query), n(key)]
    table = nn.Embed(cfg.max_spd + 2, heads, embedding_init=embed_init, name="spd_bias")
    bias = jnp.transpose(table(spd), (2, 0, 1))                     # [H, n, n]
    acts = []
    for k in range(cfg.num_layers):
      h = GraphormerBlock(heads, c, cfg.hidden, activation_fn(cfg.activation), cfg.dropout,
                          name=f"layer_{k}")(h, bias, train)
      acts.append(h)
    h = nn.LayerNorm(name="final_ln")(h)
    logits = nn.Dense(self.num_classes, kernel_init=glorot, name="head")(h)
    acts[-1] = logits
    return ModelOutput(tuple(acts), logits)

  def centrality(self, s: Structure) -> Array:
    """In- and out-degree embeddings (degrees of the ``w != 0`` pattern), ``[n, hidden]``."""
    hid = self.config.hidden
    din = jnp.clip(binary_in_degree(s), 0, self.max_degree)
    dout = jnp.clip(binary_out_degree(s), 0, self.max_degree)
    z_in = nn.Embed(self.max_degree + 1, hid, embedding_init=embed_init, name="in_degree")
    z_out = nn.Embed(self.max_degree + 1, hid, embedding_init=embed_init, name="out_degree")
    return z_in(din) + z_out(dout)
