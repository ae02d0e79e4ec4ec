"""Exact per-node Jacobians, their numerical rank, the local metamer dimension and the
activation-induced volume change (paper Appendix A.1, equations 18-24).

**Local map (A.1.1).** For a target layer ``k`` every node ``v`` computes
``h_v^(k) = f(u_v)`` from a *local input* ``u_v in R^{d'}`` built from the previous layer's
activations ``H = h^(k-1)`` (``H = X`` for ``k = 1``). `local_node_map` builds ``u`` and ``f``
for every architecture; ``Df(u_v)`` is an ``m x d'`` matrix (``m`` = width of ``h^(k)``):

============  ======================================  ===========================================
model         ``u_v`` (``d'``)                         ``f`` and what is held fixed
============  ======================================  ===========================================
GCN           ``x~_v = sum_u Ahat_uv H_u`` (``d``)     ``act(x~ W + b)``; ``Ahat = D^-1/2 (A+I)
                                                       D^-1/2`` (GCN's ``H W`` then propagate is
                                                       the same linear map)
GIN           ``(1+eps) H_v + sum_u w_uv H_u`` (d)     ``act(MLP(x~))``
SAGE          ``[H_v, mean_u H_u]`` (``2d``)           ``act(H_v W_r + mean W_l + b)``: both of
                                                       the layer's inputs vary (rank out of 2d)
ChebNet       ``[T_0, T_1, .., T_{K-1}]_v`` (``Kd``)   ``act(sum_i T_i W_i + b)``, ``T_i`` the
                                                       Chebyshev terms at ``v`` (rank out of Kd)
GAT           ``H_v`` (``d``)                          the whole layer, attention included: ``H_v``
                                                       moves ``z_v = H_v W``, the self message and
                                                       all the logits ``e_uv`` of ``v``'s incoming
                                                       edges (so ``d alpha_uv / d H_v`` is in the
                                                       Jacobian); every other row of ``H`` fixed
Graphormer    ``H_v`` (``d``)                          the whole block (layer 1: input projection
                                                       and centrality too): ``v``'s query, key and
                                                       value move, all other keys/values fixed
============  ======================================  ===========================================

For SAGE, ChebNet and residual models ``u_v`` contains the node's own ``H_v``. A residual term
``P H_v`` of GCN / GIN is not a function of the aggregated ``x~_v``: it is held fixed there (its
effect is visible in `own_feature_jacobians`). For ``k = K`` (logits) there is no activation.

Every map starts with a linear map, ``f(u) = g(u L)`` with ``L: [d', p]`` (the layer kernel,
with the residual projection appended when it acts on ``u``), so ``Df = Dg(uL) L^T``. With
``L = QR`` (reduced QR) the singular values of ``Df`` are those of ``Dg R^T`` (``m x p``), which
`node_ranks` uses (``method="factored"``): exact, and cheap when ``p << d'``.

**Rank and tolerance.** ``r = #{sigma_i > tol}`` with
``tol = max(m, d') * eps(float32) * sigma_max`` (numpy's ``matrix_rank`` default, ``rtol``
overridable), always with the *full* Jacobian's shape ``m x d'``. The local metamer dimension is
``d' - r`` (22).

**Own-feature Jacobian.** `own_feature_jacobians` gives ``d h^(k)_v / d X_v`` through the whole
model with every other row of ``X`` fixed, computed on ``v``'s receptive field (see there).

**Volume change (A.1.2).** `activation_volume`: ``log det D sigma(z) = sum_i log sigma'(z_i)``
over the active coordinates (``sigma' > 0``) and the number of collapsed ones (``sigma' = 0``).

Example:
  >>> res = node_ranks(model, params, graph, layer=1)
  >>> summary = rank_summary(res, model="gcn", layer=1, dataset="cora")
  >>> plot_rank_histogram(summary, "rank_hist.png")
"""

from __future__ import annotations

import math
from collections import deque
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jmeta.graph import Graph
from jmeta.models.propagate import (EdgeList, binary_in_degree, binary_out_degree, cheb_norm,
                                    gcn_norm, mean_aggregate, propagate, shortest_path_buckets)

Array = jnp.ndarray
MODES = ("auto", "jacfwd", "jacrev")
RANK_METHODS = ("factored", "svd")
DEFAULT_CHUNK = 256


# -- the per-node map ---------------------------------------------------------------------------


@flax.struct.dataclass
class NodeMap:
  """The per-node map ``h_v = g(u_v L, v)`` of one layer, for all nodes.

  Attributes:
    inputs: ``u: [n, d']`` local inputs (A.1.1's ``x~_v``, see the module table).
    lin: ``L: [d', p]`` the leading linear map.
    aux: pytree of arrays ``g`` reads (layer params, fixed neighbour context).
    kind: ``"affine" | "gin" | "gat" | "graphormer"`` (static).
    activation: ``"relu" | "elu"`` (static).
    last: the layer outputs logits (no activation) (static).
    residual: ``"none" | "lin"`` (``P u`` appended to ``L``) ``| "fixed"`` (static).
    width: output width ``m`` (static).
    blocks: names of the blocks of ``u`` (static), e.g. ``("x_v", "mean_v")``.
    extra: other static settings (heads, channels, concat, first).
  """

  inputs: Array
  lin: Array
  aux: Any
  kind: str = flax.struct.field(pytree_node=False)
  activation: str = flax.struct.field(pytree_node=False)
  last: bool = flax.struct.field(pytree_node=False)
  residual: str = flax.struct.field(pytree_node=False)
  width: int = flax.struct.field(pytree_node=False)
  blocks: tuple = flax.struct.field(pytree_node=False)
  extra: tuple = flax.struct.field(pytree_node=False, default=())

  @property
  def input_dim(self) -> int:
    """``d'``."""
    return int(self.inputs.shape[1])

  @property
  def num_nodes(self) -> int:
    return int(self.inputs.shape[0])


def _act(name: str) -> Callable[[Array], Array]:
  return {"relu": jax.nn.relu, "elu": jax.nn.elu}[name]


def _layer_norm(p: Mapping[str, Array], x: Array) -> Array:
  """flax ``nn.LayerNorm()`` with params ``p`` (exactly the models' LayerNorm)."""
  return nn.LayerNorm().apply({"params": p}, x)


def _g_affine(nm: NodeMap, z: Array, v: Array) -> Array:
  w = nm.width
  h = z[:w] + nm.aux["bias"]
  return h if nm.last else _finish(nm, _act(nm.activation)(h), z, v)


def _g_gin(nm: NodeMap, z: Array, v: Array) -> Array:
  act = _act(nm.activation)
  hid = nm.aux["mlp_0_bias"].shape[0]
  h = act(z[:hid] + nm.aux["mlp_0_bias"]) @ nm.aux["mlp_1_kernel"] + nm.aux["mlp_1_bias"]
  return h if nm.last else _finish(nm, act(h), z, v)


def _finish(nm: NodeMap, h: Array, z: Array, v: Array) -> Array:
  """Adds the residual of a hidden layer: from ``z`` (``"lin"``) or the fixed value."""
  if nm.residual == "lin":
    return h + z[-nm.width:]
  if nm.residual == "fixed":
    return h + nm.aux["fixed_residual"][v]
  return h


def _g_gat(nm: NodeMap, z: Array, v: Array) -> Array:
  """GATConv output at ``v`` as a function of ``z_v`` (neighbours' ``z`` fixed)."""
  heads, channels, concat = nm.extra
  a = nm.aux
  zv = z[:heads * channels].reshape(heads, channels)
  src_v = (zv * a["att_src"]).sum(-1)                               # [H]
  dst_v = (zv * a["att_dst"]).sum(-1)
  nbr, w, mask = a["nbr"][v], a["nbr_w"][v], a["nbr_mask"][v]       # [D]
  zn = a["z_all"][nbr]                                              # [D, H, C]
  ln = jax.nn.leaky_relu(a["src_all"][nbr] + dst_v, 0.2)             # [D, H]
  ls = jax.nn.leaky_relu(src_v + dst_v, 0.2)                         # [H]
  mx = jnp.maximum(jnp.max(jnp.where(mask[:, None], ln, -jnp.inf), axis=0), ls)
  mx = jax.lax.stop_gradient(mx)
  num_n = w[:, None] * jnp.exp(jnp.where(mask[:, None], ln - mx, 0.0))
  num_s = jnp.exp(ls - mx)
  den = num_n.sum(0) + num_s + 1e-16
  out = (jnp.einsum("dh,dhc->hc", num_n / den, zn) + (num_s / den)[:, None] * zv)
  out = out.reshape(heads * channels) if concat else out.mean(0)
  h = out + a["bias"]
  return h if nm.last else _finish(nm, _act(nm.activation)(h), z, v)


def _g_graphormer(nm: NodeMap, z: Array, v: Array) -> Array:
  """One Graphormer block at query ``v``; ``v``'s key/value move, the others' are fixed."""
  heads, channels, first = nm.extra
  a, p = nm.aux, nm.aux["block"]
  n = a["keys"].shape[0]
  h = z + a["in_bias"] + a["centrality"][v] if first else z
  y = _layer_norm(p["ln_attn"], h)
  proj = lambda name: (y @ p[name]["kernel"] + p[name]["bias"]).reshape(heads, channels)
  q, k, val = proj("query"), proj("key"), proj("value")
  own = jnp.arange(n) == v
  logits = jnp.einsum("hc,jhc->hj", q, a["keys"])
  logits = jnp.where(own[None, :], (q * k).sum(-1)[:, None], logits)
  logits = logits / math.sqrt(channels) + a["spd_table"][a["spd"][v]].T   # [H, n]
  prob = jax.nn.softmax(logits, axis=-1)
  o = jnp.einsum("hj,jhc->hc", prob, a["values"]) + prob[:, v][:, None] * (val - a["values"][v])
  h = h + o.reshape(heads * channels) @ p["out"]["kernel"] + p["out"]["bias"]
  y = _layer_norm(p["ln_ffn"], h)
  y = _act(nm.activation)(y @ p["ffn_0"]["kernel"] + p["ffn_0"]["bias"])
  h = h + y @ p["ffn_1"]["kernel"] + p["ffn_1"]["bias"]
  if nm.last:
    h = _layer_norm(a["final_ln"], h) @ a["head"]["kernel"] + a["head"]["bias"]
  return h


_G = {"affine": _g_affine, "gin": _g_gin, "gat": _g_gat, "graphormer": _g_graphormer}


def node_fn(nm: NodeMap, u: Array, v: Array) -> Array:
  """``f(u) = g(u L)`` at node ``v``: ``u: [d']`` -> ``h_v: [m]`` (equation 19)."""
  return _G[nm.kind](nm, u @ nm.lin, v)


def inner_fn(nm: NodeMap, z: Array, v: Array) -> Array:
  """``g(z)`` at node ``v``: ``z: [p]`` -> ``[m]`` (``f = g(u L)``)."""
  return _G[nm.kind](nm, z, v)


# -- building the map from a model --------------------------------------------------------------


def _check_layer(model: nn.Module, layer: int) -> int:
  cfg = getattr(model, "config", None)
  if cfg is None:
    raise ValueError("model must be built by jmeta.models.create_model (it has no .config)")
  if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
    raise ValueError(f"layer must be an int, got {layer!r}")
  if not 1 <= layer <= cfg.num_layers:
    raise ValueError(f"layer must be in [1, {cfg.num_layers}] for a {cfg.num_layers}-layer "
                     f"model, got {layer}")
  if layer == 1 and cfg.input_norm != "none":
    raise ValueError(f"layer 1 of a model with input_norm={cfg.input_norm!r} is not a linear map "
                     "followed by a per-node function of the input (the row normalisation comes "
                     "first); the Jacobian analysis supports input_norm='none' at layer 1, or "
                     "layers >= 2")
  return int(layer)


def _edge_list(graph: Graph) -> EdgeList:
  return EdgeList(graph.senders, graph.receivers, graph.edge_weight, graph.num_nodes)


def _neighbour_table(graph: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """In-neighbours of each node without self loops, padded: ``([n, D] int32, [n, D] w, mask)``."""
  n = graph.num_nodes
  s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
  w = np.asarray(graph.edge_weight, np.float32)
  keep = s != r
  s, r, w = s[keep], r[keep], w[keep]
  order = np.argsort(r, kind="stable")
  s, r, w = s[order], r[order], w[order]
  counts = np.bincount(r, minlength=n)
  width = max(int(counts.max(initial=0)), 1)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  pos = np.arange(r.shape[0]) - starts[r]
  nbr = np.zeros((n, width), np.int32)
  nw = np.zeros((n, width), np.float32)
  mask = np.zeros((n, width), bool)
  nbr[r, pos], nw[r, pos], mask[r, pos] = s, w, True
  return nbr, nw, mask


def _previous_activation(model, params, graph: Graph, layer: int) -> Array:
  """``h^(layer-1)``: ``X`` for layer 1, else the model's activation, ``[n, d]``."""
  if layer == 1:
    return graph.x
  return model.apply(params, graph).activations[layer - 2]


def _residual_matrix(lp: Mapping[str, Any], d_in: int, width: int, key: str) -> Array:
  """The residual projection ``P: [d_in, width]`` (identity when widths agree)."""
  if d_in == width:
    return jnp.eye(d_in, dtype=jnp.float32)
  return lp[key]["kernel"]


def local_node_map(model: nn.Module, params: Mapping[str, Any], graph: Graph,
                   layer: int = 1) -> NodeMap:
  """The per-node map ``u_v -> h_v^(layer)`` of every node (A.1.1, equations 18-19).

  Args:
    model: from `jmeta.models.create_model`.
    params: its variables (``{'params': ...}``).
    graph: the graph (its features ``x: [n, d]``).
    layer: target layer ``k`` (1-based).

  Returns:
    A `NodeMap`; ``node_fn(nm, nm.inputs[v], v)`` equals ``model.apply(...).activations[k-1][v]``.

  Raises:
    ValueError: bad layer or a model this module does not know.
  """
  layer = _check_layer(model, layer)
  return _build_map_jit(model, params, graph, _host_context(model, graph), layer=layer)


def _host_context(model: nn.Module, graph: Graph):
  """Host-side inputs of `_build_map` (GAT's padded neighbour table), else ``None``."""
  if model.config.name != "gat":
    return None
  return tuple(jnp.asarray(a) for a in _neighbour_table(graph))


def _build_map(model: nn.Module, params: Mapping[str, Any], graph: Graph, nbr,
               layer: int) -> NodeMap:
  """`local_node_map` without checks (jittable; ``nbr`` from `_host_context`)."""
  cfg = model.config
  name = cfg.name
  p = params["params"]
  h = _previous_activation(model, params, graph, layer)
  n, d = h.shape
  last = layer == cfg.num_layers
  s = _edge_list(graph)
  if name == "graphormer":
    return _graphormer_map(model, p, graph, h, layer)
  lp = p[f"layer_{layer - 1}"]
  resid = cfg.residual and not last
  rkey = f"residual_{layer - 1}"
  common = dict(activation=cfg.activation, last=last)
  if name in ("gcn", "gin"):
    if name == "gcn":
      u = propagate(gcn_norm(s), h)
      lin, aux, kind = lp["lin"]["kernel"], {"bias": lp["bias"]}, "affine"
    else:
      u = (1.0 + cfg.gin_eps) * h + propagate(s, h)
      lin, kind = lp["mlp_0"]["kernel"], "gin"
      aux = {"mlp_0_bias": lp["mlp_0"]["bias"], "mlp_1_kernel": lp["mlp_1"]["kernel"],
             "mlp_1_bias": lp["mlp_1"]["bias"]}
    width = (lp["lin"]["kernel"] if name == "gcn" else lp["mlp_1"]["kernel"]).shape[1]
    if resid:
      aux["fixed_residual"] = h @ _residual_matrix(p, d, width, rkey)
    return NodeMap(u, lin, aux, kind=kind, residual="fixed" if resid else "none", width=width,
                   blocks=("x~_v",), **common)
  if name == "sage":
    u = jnp.concatenate([h, mean_aggregate(s, h)], axis=1)
    lin = jnp.concatenate([lp["lin_r"]["kernel"], lp["lin_l"]["kernel"]], axis=0)
    aux, blocks = {"bias": lp["lin_l"]["bias"]}, ("x_v", "mean_v")
  elif name == "cheb":
    terms, t_prev, t = [h], None, h
    lhat = cheb_norm(s)
    for i in range(1, cfg.cheb_k):
      t_prev, t = t, (propagate(lhat, t) if i == 1 else 2.0 * propagate(lhat, t) - t_prev)
      terms.append(t)
    u = jnp.concatenate(terms, axis=1)
    lin = jnp.concatenate([lp[f"lin_{i}"]["kernel"] for i in range(cfg.cheb_k)], axis=0)
    aux, blocks = {"bias": lp["bias"]}, tuple(f"T{i}_v" for i in range(cfg.cheb_k))
  elif name == "gat":
    heads, channels = lp["att_src"].shape[1:]
    z_all = (h @ lp["lin"]["kernel"]).reshape(n, heads, channels)
    nbr_idx, nbr_w, nbr_mask = nbr
    aux = {"bias": lp["bias"], "att_src": lp["att_src"][0], "att_dst": lp["att_dst"][0],
           "z_all": z_all, "src_all": (z_all * lp["att_src"]).sum(-1),
           "nbr": nbr_idx, "nbr_w": nbr_w, "nbr_mask": nbr_mask}
    concat = not last
    width = heads * channels if concat else channels
    lin = lp["lin"]["kernel"]
    if resid:
      lin = jnp.concatenate([lin, _residual_matrix(p, d, width, rkey)], axis=1)
    return NodeMap(h, lin, aux, kind="gat", residual="lin" if resid else "none", width=width,
                   blocks=("x_v",), extra=(int(heads), int(channels), concat), **common)
  else:
    raise ValueError(f"unknown model {name!r}")
  width = lin.shape[1]
  if resid:  # SAGE / Cheb: the residual acts on the own block u[:, :d]
    proj = _residual_matrix(p, d, width, rkey)
    lin = jnp.concatenate(
        [lin, jnp.concatenate([proj, jnp.zeros((u.shape[1] - d, width), proj.dtype)])], axis=1)
  return NodeMap(u, lin, aux, kind="affine", residual="lin" if resid else "none", width=width,
                 blocks=blocks, **common)


def _graphormer_map(model, p, graph: Graph, h: Array, layer: int) -> NodeMap:
  cfg = model.config
  s = _edge_list(graph)
  first, last = layer == 1, layer == cfg.num_layers
  bp = p[f"layer_{layer - 1}"]
  heads = p["spd_bias"]["embedding"].shape[1]
  channels = bp["query"]["kernel"].shape[1] // heads
  aux = {"block": bp, "spd_table": p["spd_bias"]["embedding"],
         "spd": shortest_path_buckets(s, cfg.max_spd)}
  if first:
    md = model.max_degree
    din = jnp.clip(binary_in_degree(s), 0, md)
    dout = jnp.clip(binary_out_degree(s), 0, md)
    aux["centrality"] = p["in_degree"]["embedding"][din] + p["out_degree"]["embedding"][dout]
    aux["in_bias"] = p["input_proj"]["bias"]
    lin = p["input_proj"]["kernel"]
    h0 = h @ lin + aux["in_bias"] + aux["centrality"]
  else:
    lin = jnp.eye(h.shape[1], dtype=h.dtype)
    h0 = h
  y = _layer_norm(bp["ln_attn"], h0)
  kv = lambda name: (y @ bp[name]["kernel"] + bp[name]["bias"]).reshape(-1, heads, channels)
  aux["keys"], aux["values"] = kv("key"), kv("value")
  if last:
    aux["final_ln"], aux["head"] = p["final_ln"], p["head"]
  width = p["head"]["kernel"].shape[1] if last else cfg.hidden
  return NodeMap(h, lin, aux, kind="graphormer", activation=cfg.activation, last=last,
                 residual="none", width=int(width), blocks=("x_v",),
                 extra=(int(heads), int(channels), first))


_build_map_jit = jax.jit(_build_map, static_argnames=("model", "layer"))


# -- batched Jacobians ----------------------------------------------------------------------------


def resolve_mode(mode: str, m: int, d: int) -> str:
  """``"auto"`` -> ``"jacrev"`` when ``m < d`` (``m`` reverse passes vs ``d`` forward ones),
  else ``"jacfwd"``; other modes are returned unchanged.

  Raises:
    ValueError: unknown mode.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if mode == "auto":
    return "jacrev" if m < d else "jacfwd"
  return mode


def batched_jacobian(nm: NodeMap, idx: Array, mode: str) -> Array:
  """``Df(u_v)`` for the nodes ``idx: [B]`` with ``jax.vmap``; ``[B, m, d']`` (equation 20)."""
  jac = jax.jacrev if mode == "jacrev" else jax.jacfwd
  one = lambda u, v: jac(lambda uu: node_fn(nm, uu, v))(u)
  return jax.vmap(one)(nm.inputs[idx], idx)


def batched_inner_jacobian(nm: NodeMap, idx: Array, mode: str) -> Array:
  """``Dg(u_v L)`` for the nodes ``idx: [B]``; ``[B, m, p]``."""
  jac = jax.jacrev if mode == "jacrev" else jax.jacfwd
  one = lambda u, v: jac(lambda z: inner_fn(nm, z, v))(u @ nm.lin)
  return jax.vmap(one)(nm.inputs[idx], idx)


def singular_value_rank(sv: Array, shape: tuple[int, int],
                        rtol: Optional[float] = None) -> tuple[Array, Array]:
  """Rank from singular values ``sv: [..., k]`` of matrices of ``shape = (m, d)``.

  ``tol = rtol * sigma_max`` with ``rtol = max(m, d) * eps(sv.dtype)`` by default (numpy's
  ``matrix_rank``). Returns ``(rank [...] int32, tol [...])``.
  """
  if rtol is None:
    rtol = max(shape) * float(jnp.finfo(sv.dtype).eps)
  tol = rtol * jnp.max(sv, axis=-1)
  return jnp.sum(sv > tol[..., None], axis=-1).astype(jnp.int32), tol


def matrix_rank(j: Array, rtol: Optional[float] = None) -> Array:
  """Numerical rank of ``j: [..., m, d]`` by SVD, tolerance of `singular_value_rank`; ``[...]``."""
  sv = jnp.linalg.svd(j, compute_uv=False)
  return singular_value_rank(sv, j.shape[-2:], rtol)[0]


def _jacobians_impl(model, params, graph, nbr, idx2d, *, layer: int, mode: str) -> Array:
  nm = _build_map(model, params, graph, nbr, layer)
  mode = resolve_mode(mode, nm.width, nm.input_dim)
  out = jax.lax.map(lambda i: batched_jacobian(nm, i, mode), idx2d)
  return out.reshape((-1,) + out.shape[2:])


def _ranks_impl(model, params, graph, nbr, idx2d, *, layer: int, mode: str, method: str,
                rtol: float) -> tuple[Array, Array]:
  nm = _build_map(model, params, graph, nbr, layer)
  m, d, p = nm.width, nm.input_dim, nm.lin.shape[1]
  if method == "factored":
    # L = QR: sv(Dg L^T) = sv(Dg R^T Q^T) = sv(Dg R^T). No saving when p >= d': Dg L^T itself.
    r_t = jnp.linalg.qr(nm.lin, mode="r").T if p < d else nm.lin.T
    mode_g = resolve_mode(mode, m, p)
    factor = lambda i: batched_inner_jacobian(nm, i, mode_g) @ r_t
  else:
    mode_f = resolve_mode(mode, m, d)
    factor = lambda i: batched_jacobian(nm, i, mode_f)

  def chunk(i):
    sv = jnp.linalg.svd(factor(i), compute_uv=False)
    return singular_value_rank(sv, (m, d), rtol)[0], sv[..., 0]

  ranks, smax = jax.lax.map(chunk, idx2d)
  return ranks.reshape(-1), smax.reshape(-1)


_jacobians_all = jax.jit(_jacobians_impl, static_argnames=("model", "layer", "mode"))
_ranks_all = jax.jit(_ranks_impl, static_argnames=("model", "layer", "mode", "method", "rtol"))


def chunk_index(idx: np.ndarray, chunk_size: int) -> np.ndarray:
  """``idx: [N]`` padded (repeating its last entry) and reshaped to ``[ceil(N / c), c]``,
  ``c = min(chunk_size, N)``, for ``jax.lax.map`` over fixed-size chunks."""
  chunk = min(chunk_size, idx.shape[0])
  pad = (-idx.shape[0]) % chunk
  return np.concatenate([idx, np.full(pad, idx[-1], idx.dtype)]).reshape(-1, chunk)


def _node_index(nodes, n: int) -> np.ndarray:
  if nodes is None:
    return np.arange(n, dtype=np.int32)
  idx = np.asarray(nodes).reshape(-1)
  if idx.size == 0:
    raise ValueError("nodes is empty")
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"nodes must be integers, got dtype {idx.dtype}")
  if idx.min() < 0 or idx.max() >= n:
    raise ValueError(f"nodes out of range [0, {n}): min {idx.min()}, max {idx.max()}")
  return idx.astype(np.int32)


def _check_chunk(chunk_size: int) -> int:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
  return int(chunk_size)


def map_chunks(fn: Callable[[Array], Any], idx: np.ndarray, chunk_size: int) -> Any:
  """Applies ``fn`` to fixed-size chunks of ``idx`` (the last one padded by repetition, so a
  jitted ``fn`` compiles once) and concatenates the results along axis 0, trimmed to ``idx``."""
  chunk = min(chunk_size, idx.shape[0])
  pad = (-idx.shape[0]) % chunk
  full = np.concatenate([idx, np.full(pad, idx[-1], idx.dtype)])
  outs = [fn(jnp.asarray(full[i:i + chunk])) for i in range(0, full.shape[0], chunk)]
  return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:idx.shape[0]], *outs)


def node_jacobians(model: nn.Module, params: Mapping[str, Any], graph: Graph, layer: int = 1,
                   *, mode: str = "auto", nodes: Optional[Sequence[int]] = None,
                   chunk_size: int = DEFAULT_CHUNK) -> Array:
  """Per-node Jacobians ``Df(u_v)`` of the local map of `local_node_map` (equation 20).

  Args:
    model, params, graph: the model (from `create_model`), its variables and the graph.
    layer: target layer ``k`` (1-based).
    mode: ``"jacfwd"``, ``"jacrev"`` or ``"auto"`` (`resolve_mode`).
    nodes: node ids (default all ``n``).
    chunk_size: nodes per jitted call (static; bounds memory at ``chunk * m * d'`` floats).

  Returns:
    ``[len(nodes), m, d'] float32``.
  """
  chunk_size = _check_chunk(chunk_size)
  layer = _check_layer(model, layer)
  resolve_mode(mode, 1, 1)
  idx = _node_index(nodes, graph.num_nodes)
  out = _jacobians_all(model, params, graph, _host_context(model, graph),
                       jnp.asarray(chunk_index(idx, chunk_size)), layer=layer, mode=mode)
  return out[:idx.shape[0]]


class RankResult(NamedTuple):
  """Per-node Jacobian ranks.

  Attributes:
    ranks: ``[N] int32`` ``r_v``.
    metamer_dim: ``[N] int32`` ``d' - r_v`` (equation 22).
    sigma_max: ``[N] float32`` largest singular value.
    nodes: ``[N] int32`` node ids.
    input_dim: ``d'``. output_dim: ``m``. rtol: the relative tolerance used.
    blocks: names of the blocks of ``u_v`` (`NodeMap.blocks`).
  """

  ranks: np.ndarray
  metamer_dim: np.ndarray
  sigma_max: np.ndarray
  nodes: np.ndarray
  input_dim: int
  output_dim: int
  rtol: float
  blocks: tuple


def node_ranks(model: nn.Module, params: Mapping[str, Any], graph: Graph, layer: int = 1, *,
               mode: str = "auto", method: str = "factored",
               nodes: Optional[Sequence[int]] = None, rtol: Optional[float] = None,
               chunk_size: int = DEFAULT_CHUNK) -> RankResult:
  """Exact numerical rank ``r_v`` of every node's Jacobian and the local metamer dimension.

  ``method="factored"``: singular values of ``Dg(u_v L) R^T`` (``m x p``, ``L = QR``), equal to
  those of ``Df = Dg L^T``; ``"svd"``: SVD of the materialised ``m x d'`` Jacobian. Both use
  ``tol = rtol * sigma_max``, ``rtol = max(m, d') * eps(float32)`` unless given.

  Returns:
    A `RankResult`.
  """
  if method not in RANK_METHODS:
    raise ValueError(f"method must be one of {RANK_METHODS}, got {method!r}")
  chunk_size = _check_chunk(chunk_size)
  layer = _check_layer(model, layer)
  resolve_mode(mode, 1, 1)
  idx = _node_index(nodes, graph.num_nodes)
  nbr = _host_context(model, graph)
  nm = jax.eval_shape(partial(_build_map, model, layer=layer), params, graph, nbr)
  m, d = nm.width, nm.input_dim
  rtol = max(m, d) * float(np.finfo(np.float32).eps) if rtol is None else float(rtol)
  ranks, smax = _ranks_all(model, params, graph, nbr, jnp.asarray(chunk_index(idx, chunk_size)),
                           layer=layer, mode=mode, method=method, rtol=rtol)
  ranks, smax = np.asarray(ranks)[:idx.shape[0]], np.asarray(smax)[:idx.shape[0]]
  return RankResult(ranks, (d - ranks).astype(np.int32), np.asarray(smax), idx, d, m, rtol,
                    nm.blocks)


# -- end-to-end Jacobian w.r.t. the node's own features -------------------------------------------


def receptive_radius(model: nn.Module, layer: int) -> Optional[int]:
  """Hops of in-neighbours that can change ``h_v^(layer)`` or its normalisation, plus one (the
  degrees of the outermost nodes); ``None`` for Graphormer (global attention: whole graph)."""
  cfg = model.config
  if cfg.name == "graphormer":
    return None
  per_layer = cfg.cheb_k - 1 if cfg.name == "cheb" else 1
  return layer * per_layer + 1


def _ball(indptr: np.ndarray, senders_sorted: np.ndarray, v: int, radius: int) -> np.ndarray:
  """Nodes within ``radius`` hops of ``v`` against the edge direction, ``v`` first."""
  seen, order, frontier = {v}, [v], deque([v])
  for _ in range(radius):
    nxt = deque()
    for j in frontier:
      for i in senders_sorted[indptr[j]:indptr[j + 1]]:
        if i not in seen:
          seen.add(int(i))
          order.append(int(i))
          nxt.append(int(i))
    frontier = nxt
  return np.asarray(order, np.int64)


class Subgraphs(NamedTuple):
  """Padded receptive-field subgraphs, one per node (host arrays; node ``v`` is local 0).

  Attributes:
    node_ids: ``[N, n_pad] int32`` global ids (padding repeats ``v``; masked).
    node_mask: ``[N, n_pad] bool``.
    senders, receivers: ``[N, e_pad] int32`` local ids. weights: ``[N, e_pad] float32`` (0 pads).
  """

  node_ids: np.ndarray
  node_mask: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  weights: np.ndarray


def receptive_subgraphs(graph: Graph, nodes: np.ndarray, radius: int) -> Subgraphs:
  """The ``radius``-hop in-neighbourhood of each node with all edges among it, padded to the
  largest one (host side)."""
  n = graph.num_nodes
  s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
  w = np.asarray(graph.edge_weight, np.float32)
  order = np.argsort(r, kind="stable")
  indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))])
  balls, edges = [], []
  local = np.full(n, -1, np.int64)
  for v in nodes:
    b = _ball(indptr, s[order], int(v), radius)
    local[b] = np.arange(b.shape[0])
    keep = (local[s] >= 0) & (local[r] >= 0)
    edges.append((local[s[keep]], local[r[keep]], w[keep]))
    balls.append(b)
    local[b] = -1
  n_pad = max(b.shape[0] for b in balls)
  e_pad = max(max(e[0].shape[0] for e in edges), 1)
  num = len(balls)
  ids = np.repeat(np.asarray(nodes, np.int32)[:, None], n_pad, 1)
  mask = np.zeros((num, n_pad), bool)
  snd = np.zeros((num, e_pad), np.int32)
  rcv = np.zeros((num, e_pad), np.int32)
  wts = np.zeros((num, e_pad), np.float32)
  for i, (b, (es, er, ew)) in enumerate(zip(balls, edges)):
    ids[i, :b.shape[0]], mask[i, :b.shape[0]] = b, True
    snd[i, :es.shape[0]], rcv[i, :es.shape[0]], wts[i, :es.shape[0]] = es, er, ew
  return Subgraphs(ids, mask, snd, rcv, wts)


def _own_chunk(model, params, x: Array, ids: Array, mask: Array, snd: Array, rcv: Array,
               wts: Array, layer: int, mode: str) -> Array:
  jac = jax.jacrev if mode == "jacrev" else jax.jacfwd

  def one(ids, mask, snd, rcv, wts):
    xs = x[ids] * mask[:, None].astype(x.dtype)
    n_pad = xs.shape[0]

    def f(xv):
      gt = jraph.GraphsTuple(nodes=xs.at[0].set(xv), edges=wts, senders=snd, receivers=rcv,
                             n_node=jnp.array([n_pad]), n_edge=jnp.array([snd.shape[0]]),
                             globals=None)
      return model.apply(params, gt).activations[layer - 1][0]

    return jac(f)(xs[0])

  return jax.vmap(one)(ids, mask, snd, rcv, wts)


_own_jit = jax.jit(_own_chunk, static_argnames=("model", "layer", "mode"))


def _own_full_graph(model, params, graph: Graph, idx: Array, layer: int, mode: str) -> Array:
  jac = jax.jacrev if mode == "jacrev" else jax.jacfwd
  x = graph.x

  def one(v):
    f = lambda xv: model.apply(params, graph.with_features(x.at[v].set(xv))).activations[
        layer - 1][v]
    return jac(f)(x[v])

  return jax.vmap(one)(idx)


_own_full_jit = jax.jit(_own_full_graph, static_argnames=("model", "layer", "mode"))


def own_feature_jacobians(model: nn.Module, params: Mapping[str, Any], graph: Graph,
                          layer: int = 1, *, nodes: Optional[Sequence[int]] = None,
                          mode: str = "auto", chunk_size: int = 16) -> Array:
  """End-to-end ``d h^(k)_v / d X_v`` with every other row of ``X`` fixed: ``[N, m, d]``.

  Each node's model is run on its receptive field only: the ``receptive_radius``-hop
  in-neighbourhood with all edges among it (exact: nodes farther away cannot reach ``v`` in
  ``k`` layers, and the extra hop keeps the outer nodes' degrees exact), padded to the largest
  field among ``nodes`` so that the vmapped function compiles once. Cost per node: ``m``
  (jacrev) or ``d`` (jacfwd) passes of the model on ``n_pad`` nodes; on Cora a 2-layer GCN's
  3-hop fields reach ~1/3 of the graph for hubs, so ask for a subset (``nodes=``). Graphormer
  attends globally: each node costs ``m`` passes over the full graph (``O(n^2)`` each).

  Args:
    model, params, graph: as `node_jacobians`.
    layer: target layer ``k``.
    nodes: node ids (default all).
    mode: ``"jacfwd"``, ``"jacrev"`` or ``"auto"`` (by ``m`` vs ``d``).
    chunk_size: nodes per jitted call.

  Returns:
    ``[len(nodes), m, d] float32``.
  """
  layer = _check_layer(model, layer)
  chunk_size = _check_chunk(chunk_size)
  idx = _node_index(nodes, graph.num_nodes)
  out = jax.eval_shape(lambda: model.apply(params, graph).activations[layer - 1])
  mode = resolve_mode(mode, int(out.shape[1]), graph.num_features)
  radius = receptive_radius(model, layer)
  if radius is None:
    return map_chunks(lambda i: _own_full_jit(model, params, graph, i, layer=layer, mode=mode),
                      idx, chunk_size)
  sub = receptive_subgraphs(graph, idx, radius)
  arrays = tuple(jnp.asarray(a) for a in sub)
  x = graph.x
  pos = np.arange(idx.shape[0], dtype=np.int32)
  return map_chunks(lambda i: _own_jit(model, params, x, *(a[i] for a in arrays), layer=layer,
                                       mode=mode), pos, chunk_size)


# -- activation-induced volume change ------------------------------------------------------------


def pre_activations(model: nn.Module, params: Mapping[str, Any], graph: Graph,
                    layer: int = 1) -> Array:
  """``z``: the input of the coordinate-wise nonlinearity of layer ``k``, ``[n, m]``.

  Message-passing models: the conv output ``z_k`` (``h_k = act(z_k) [+ P h_{k-1}]``), captured
  from submodule ``layer_{k-1}``; only hidden layers (``k < K``) have one. Graphormer: the FFN
  hidden pre-activation ``ffn_0`` of block ``k`` (the block's only nonlinearity).

  Raises:
    ValueError: ``k = K`` for a message-passing model (logits have no activation).
  """
  layer = _check_layer(model, layer)
  cfg = model.config
  target = f"layer_{layer - 1}"
  if cfg.name == "graphormer":
    want = lambda mdl, fname: (fname == "__call__" and mdl.name == "ffn_0"
                               and mdl.scope.path[:1] == (target,))
  else:
    if layer == cfg.num_layers:
      raise ValueError(f"layer {layer} is the output layer of a {cfg.num_layers}-layer "
                       f"{cfg.name}: logits have no activation")
    want = lambda mdl, fname: fname == "__call__" and mdl.scope.path == (target,)
  _, state = model.apply(params, graph, capture_intermediates=want, mutable=["intermediates"])
  found = jax.tree.leaves(state["intermediates"])
  if len(found) != 1:
    raise ValueError(f"could not capture the pre-activation of {target} ({len(found)} found)")
  return found[0]


def activation_derivative(z: Array, activation: str) -> Array:
  """``sigma'(z)`` elementwise (23): ReLU ``1[z > 0]``; ELU ``1`` for ``z > 0``, ``exp(z)``
  otherwise (never 0)."""
  if activation == "relu":
    return (z > 0).astype(z.dtype)
  if activation == "elu":
    return jnp.where(z > 0, 1.0, jnp.exp(jnp.minimum(z, 0.0))).astype(z.dtype)
  raise ValueError(f"unknown activation {activation!r}")


class VolumeChange(NamedTuple):
  """Per-node activation-induced volume change (A.1.2).

  Attributes:
    log_det: ``[n]`` ``sum_{i: sigma'(z_i) > 0} log sigma'(z_i)`` (log of (24) over the active
      coordinates).
    num_collapsed: ``[n] int32`` coordinates with ``sigma'(z_i) = 0``.
    num_active: ``[n] int32`` the others.
    pre_activation: ``[n, m]`` ``z``.
  """

  log_det: Array
  num_collapsed: Array
  num_active: Array
  pre_activation: Array


def volume_change(z: Array, activation: str) -> VolumeChange:
  """`VolumeChange` from pre-activations ``z: [n, m]`` (equations 23-24)."""
  ds = activation_derivative(z, activation)
  active = ds > 0
  log_det = jnp.sum(jnp.where(active, jnp.log(jnp.where(active, ds, 1.0)), 0.0), axis=-1)
  n_act = active.sum(-1).astype(jnp.int32)
  return VolumeChange(log_det, (z.shape[-1] - n_act).astype(jnp.int32), n_act, z)


def activation_volume(model: nn.Module, params: Mapping[str, Any], graph: Graph,
                      layer: int = 1) -> VolumeChange:
  """Volume change of layer ``k``'s nonlinearity at every node (`pre_activations`)."""
  return volume_change(pre_activations(model, params, graph, layer), model.config.activation)


# -- summaries ----------------------------------------------------------------------------------


def rank_summary(result: RankResult, **labels: Any) -> dict:
  """A JSON-ready summary of a `RankResult`.

  Args:
    result: from `node_ranks`.
    **labels: context stored as-is (e.g. ``model="gcn", layer=1, dataset="cora"``).

  Returns:
    ``{**labels, num_nodes, input_dim, output_dim, rtol, blocks, rank: {mean, min, max},
    metamer_dim: {mean, min, max}, histogram: {str(d' - r): count}}`` (histogram keys sorted
    numerically).
  """
  r, dim = np.asarray(result.ranks), np.asarray(result.metamer_dim)
  values, counts = np.unique(dim, return_counts=True)
  stats = lambda a: {"mean": float(a.mean()), "min": int(a.min()), "max": int(a.max())}
  return {**labels, "num_nodes": int(r.shape[0]), "input_dim": int(result.input_dim),
          "output_dim": int(result.output_dim), "rtol": float(result.rtol),
          "blocks": list(result.blocks), "rank": stats(r), "metamer_dim": stats(dim),
          "histogram": {str(int(v)): int(c) for v, c in zip(values, counts)}}


def plot_rank_histogram(summary: Mapping[str, Any], path) -> None:
  """Writes a PNG bar chart of the local metamer dimensions ``d' - r`` (from `rank_summary`).

  The file is written atomically (temporary file, then rename).
  """
  import os
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  hist = summary.get("histogram")
  if not hist:
    raise ValueError("summary has no histogram (expected the output of rank_summary)")
  xs = np.array([int(k) for k in hist])
  ys = np.array([hist[k] for k in hist])
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.bar(xs, ys, width=0.8, color="tab:blue")
  ax.set_xlabel("local metamer dimension d' - r")
  ax.set_ylabel("nodes")
  title = " ".join(str(summary[k]) for k in ("model", "dataset") if k in summary)
  if "layer" in summary:
    title += f" layer {summary['layer']}"
  ax.set_title(f"{title} (d' = {summary['input_dim']}, m = {summary['output_dim']})".strip())
  fig.tight_layout()
  path = os.fspath(path)
  tmp = f"{path}.tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


__all__ = [
    "MODES", "RANK_METHODS", "NodeMap", "local_node_map", "node_fn", "inner_fn",
    "resolve_mode", "batched_jacobian", "batched_inner_jacobian", "node_jacobians",
    "singular_value_rank", "matrix_rank", "RankResult", "node_ranks", "map_chunks",
    "chunk_index",
    "receptive_radius", "Subgraphs", "receptive_subgraphs", "own_feature_jacobians",
    "pre_activations", "activation_derivative", "VolumeChange", "volume_change",
    "activation_volume", "rank_summary", "plot_rank_histogram",
]
