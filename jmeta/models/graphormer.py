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
probabilities (`attention_keep_mask`, rate ``config.dropout * attn_dropout_scale``) and each
sublayer output. ``config.residual`` changes nothing: the blocks always have their residuals.

SPD-bias initialisation (``spd_slope``, default 2): the table starts at ``b_d = -2 d`` for
bucket ``d = 0..max_spd + 1`` in every head (a locality prior, like ALiBi's linear distance
penalty), not at Graphormer's ``N(0, 0.02)``. With ``N(0, 0.02)`` every query starts attending
uniformly over all ``n`` nodes, most of them far away (on Cora 70% of the pairs are >= 5 hops
apart and 16% unreachable), and a 140-label split cannot learn locality before it overfits:
~42% test accuracy on Cora (hidden 16, 8 heads). With the prior a Cora node initially puts ~60%
of its attention on itself and its ~4 neighbours and ~4% on the ~1900 nodes >= 5 hops away;
the table stays a free per-head parameter, and Cora test accuracy is 74-78% (hidden 16,
4 or 2 heads, ``default_train_config("graphormer")``). ``spd_slope=0`` gives a zero table.

Edge weight: only the pattern ``w != 0`` is used (degrees and shortest paths are integers), so
the output is piecewise constant in the weights: no gradient flows to ``w``/``adj``.

Cost: the SPD buckets are computed once per call (bit-packed BFS on an edge list, ~0.1 s on
Cora) and the ``[H, n, n]`` bias is gathered once and shared by all blocks. Each block holds
``O(n^2 H)`` floats for the backward pass (logits/probabilities ``[H, n, n]`` float32 and a
byte dropout mask). Time is proportional to ``H n^2``, almost independent of the head width
``C`` (the ``C``-sized matmuls are cheap next to the elementwise softmax over ``H n^2``), so
prefer few wide heads. Measured on Cora (hidden 16, 2 blocks, jitted value-and-grad with dropout,
2-core CPU shared with other jobs, peak RSS of the process): 8 heads 4.2 s a step, 1.9 GB
(before: 8.3 s, 2.4 GB); 4 heads 2.3 s, 1.2 GB; 2 heads ~1.2 s. PubMed (n = 19717) would need
~20000^2 x H x 4 B = 1.6 GB *per head* for each attention tensor: not feasible here (it needs
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
from jmeta.models.dropout import Dropout, keep_mask
from jmeta.models.config import ModelConfig
from jmeta.models.gat import head_split
from jmeta.models.propagate import (Structure, binary_in_degree, binary_out_degree,
                                    shortest_path_buckets)
from jmeta.models.stack import (ModelOutput, activation_fn, check_input_width, glorot,
                                model_inputs)

Array = jnp.ndarray
embed_init = nn.initializers.normal(stddev=0.02)


def attention_keep_mask(key: jax.Array, shape: tuple, rate: float) -> tuple[Array, float]:
  """A Bernoulli keep mask for the attention probabilities, at most one random *byte* per entry.

  The ``[H, n, n]`` attention mask is the largest random draw of a step (29 M entries per block
  on Cora with 4 heads): `jmeta.models.dropout.keep_mask` with ``max_bits=8``.

  Returns:
    ``(mask, keep)``: ``mask`` bool of ``shape``; ``keep = 1 - round(rate * 256) / 256`` is its
    exact keep probability (within ``2^-9`` of ``1 - rate``).
  """
  return keep_mask(key, shape, rate, max_bits=8)


class GraphormerBlock(nn.Module):
  """One pre-LN transformer block with an additive attention bias.

  ``h = h + drop(MHA(LN(h)) + bias)``, then ``h = h + drop(FFN(LN(h)))``; ``FFN = Dense(ffn) ->
  act -> Dense(width)``. Edge weights do not enter here (the bias carries the structure).

  Attributes:
    heads: ``H``. head_dim: ``C``. ffn: FFN hidden width.
    activation: FFN nonlinearity. dropout: rate on the sublayer outputs.
    attention_dropout: rate on the attention probabilities (`attention_keep_mask`).
  """

  heads: int
  head_dim: int
  ffn: int
  activation: Callable[[Array], Array] = jax.nn.relu
  dropout: float = 0.0
  attention_dropout: float = 0.0

  @nn.compact
  def __call__(self, h: Array, bias: Array, train: bool = False) -> Array:
    """``h: [n, width]``, ``bias: [H, n, n]`` (added to the logit of query i, key j) ->
    ``[n, width]``."""
    n, width = h.shape
    hh, c = self.heads, self.head_dim
    drop = lambda t: Dropout(self.dropout, deterministic=not train)(t)
    y = nn.LayerNorm(name="ln_attn")(h)
    # Heads-major [H, n, C] so both attention matmuls are plain batched GEMMs over heads.
    proj = lambda name: jnp.transpose(
        nn.Dense(hh * c, kernel_init=glorot, name=name)(y).reshape(n, hh, c), (1, 0, 2))
    q, k, v = proj("query"), proj("key"), proj("value")
    logits = jnp.einsum("hic,hjc->hij", q * (1.0 / math.sqrt(c)), k) + bias
    p = jax.nn.softmax(logits, axis=-1)
    if train and self.attention_dropout > 0.0:
      mask, keep = attention_keep_mask(self.make_rng("dropout"), p.shape, self.attention_dropout)
      p = jnp.where(mask, p * (1.0 / keep), 0.0)
    o = jnp.einsum("hij,hjc->ihc", p, v).reshape(n, hh * c)
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
    spd_slope: initial SPD bias ``-spd_slope * d`` for bucket ``d`` (module docstring).
    attn_dropout_scale: attention-probability dropout rate as a multiple of ``config.dropout``.
  """

  config: ModelConfig
  num_classes: int
  max_degree: int = 64
  spd_slope: float = 2.0
  attn_dropout_scale: float = 1.0

  input_kernel = ("input_proj", "kernel")

  @nn.compact
  def __call__(self, graph: Union[Graph, jraph.GraphsTuple], adj: Optional[Array] = None,
               train: bool = False) -> ModelOutput:
    """Same call as the message-passing models (`jmeta.models.stack.MessagePassingGNN`)."""
    cfg = self.config
    x, s = model_inputs(graph, adj, cfg.input_norm)
    check_input_width(self, self.input_kernel, x.shape[1])
    heads, c = head_split(cfg.hidden, cfg.heads)
    x = Dropout(cfg.dropout, deterministic=not train)(x)
    h = nn.Dense(cfg.hidden, kernel_init=glorot, name="input_proj")(x)
    h = h + self.centrality(s)
    spd = shortest_path_buckets(s, cfg.max_spd)                     # [n(query), n(key)]
    prior = lambda key, shape, dtype=jnp.float32: self.spd_prior(shape[1]).astype(dtype)
    table = nn.Embed(cfg.max_spd + 2, heads, embedding_init=prior, name="spd_bias")
    bias = table.embedding.T[:, spd]                                # [H, n, n], shared by blocks
    acts = []
    for k in range(cfg.num_layers):
      h = GraphormerBlock(heads, c, cfg.hidden, activation_fn(cfg.activation), cfg.dropout,
                          self.attention_dropout(), name=f"layer_{k}")(h, bias, train)
      acts.append(h)
    h = nn.LayerNorm(name="final_ln")(h)
    logits = nn.Dense(self.num_classes, kernel_init=glorot, name="head")(h)
    acts[-1] = logits
    return ModelOutput(tuple(acts), logits)

  def attention_dropout(self) -> float:
    """Dropout rate on the attention probabilities: ``config.dropout * attn_dropout_scale``."""
    return self.config.dropout * self.attn_dropout_scale

  def spd_prior(self, heads: int) -> Array:
    """Initial SPD bias table ``[max_spd + 2, H]``: ``-spd_slope * d`` for bucket ``d`` (the
    unreachable bucket ``max_spd + 1`` included), the same for every head."""
    d = jnp.arange(self.config.max_spd + 2, dtype=jnp.float32)
    return jnp.tile((-self.spd_slope * d)[:, None], (1, heads))

  def centrality(self, s: Structure) -> Array:
    """In- and out-degree embeddings (degrees of the ``w != 0`` pattern), ``[n, hidden]``."""
    hid = self.config.hidden
    din = jnp.clip(binary_in_degree(s), 0, self.max_degree)
    dout = jnp.clip(binary_out_degree(s), 0, self.max_degree)
    z_in = nn.Embed(self.max_degree + 1, hid, embedding_init=embed_init, name="in_degree")
    z_out = nn.Embed(self.max_degree + 1, hid, embedding_init=embed_init, name="out_degree")
    return z_in(din) + z_out(dout)
