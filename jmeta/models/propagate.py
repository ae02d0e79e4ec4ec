"""Message-passing primitives on a weighted edge list and their dense-adjacency equivalents.

A *structure* is either an `EdgeList` (``senders[e] -> receivers[e]`` with weight ``weight[e]``)
or a `DenseAdj` (``adj[i, j]`` = weight of ``i -> j``). Every primitive takes either and
dispatches; the explicit ``segment_*`` / ``dense_*`` functions are the two implementations. Both
compute the same numbers for ``adj = to_dense(edge list)`` (tested), so a model written once runs
on a sparse graph (training, feature metamers) or on a relaxed dense adjacency (structure
metamers), and gradients flow through the edge weights in both.

Notation: ``w_ij`` is the weight of ``i -> j``; messages flow from sender ``i`` to receiver
``j``; ``n`` is the number of nodes (static). Shapes: ``x: [n, ...]`` (any trailing dims).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp

from jmeta.graph import add_self_loops

Array = jnp.ndarray


@flax.struct.dataclass
class EdgeList:
  """A weighted edge list. ``senders``/``receivers``: ``[E] int32``; ``weight``: ``[E] float``."""

  senders: Array
  receivers: Array
  weight: Array
  num_nodes: int = flax.struct.field(pytree_node=False)


@flax.struct.dataclass
class DenseAdj:
  """A dense weighted adjacency ``M = diag(left) (adj + diag(loops)) diag(right)``, ``[n, n]``.

  ``M[i, j]`` is the weight of ``i -> j``. The scaling vectors and the diagonal are kept apart
  from ``adj`` (``None`` = ones / zeros) so that normalising the graph (`gcn_norm`, `cheb_norm`,
  self loops) costs ``O(n)`` and propagating is one product with ``adj``: the normalised
  ``[n, n]`` matrix is never built, and the gradient with respect to ``adj`` is one outer
  product instead of several ``n^2`` passes (a GCN layer's backward on Cora: 130 -> 40 ms).
  `matrix` builds ``M`` for the primitives that need every entry (attention, shortest paths).

  Attributes:
    adj: ``[n, n]``.
    left: ``[n]`` row scale or None.
    right: ``[n]`` column scale or None.
    loops: ``[n]`` added to the diagonal of ``adj`` before scaling, or None.
  """

  adj: Array
  left: Optional[Array] = None
  right: Optional[Array] = None
  loops: Optional[Array] = None

  @property
  def num_nodes(self) -> int:
    return int(self.adj.shape[0])

  def matrix(self) -> Array:
    """The explicit ``[n, n]`` matrix ``M``."""
    m = self.adj
    if self.loops is not None:
      m = m + jnp.diag(self.loops)
    if self.left is not None:
      m = self.left[:, None] * m
    if self.right is not None:
      m = m * self.right[None, :]
    return m


Structure = Union[EdgeList, DenseAdj]

_EXP_CAP = 60.0  # exp(60) ~ 1e26: finite in float32, so 0 * exp(.) stays 0


# -- elementwise helpers ------------------------------------------------------------------------


def safe_reciprocal(d: Array) -> Array:
  """``1 / d`` where ``d != 0``, else 0; gradient-safe (no inf/NaN in either branch)."""
  nz = d != 0
  return jnp.where(nz, 1.0 / jnp.where(nz, d, 1.0), 0.0)


def safe_inv_sqrt(d: Array) -> Array:
  """``d ** -1/2`` where ``d > 0``, else 0 (PyG's ``masked_fill(inf, 0)``); gradient-safe."""
  pos = d > 0
  return jnp.where(pos, jax.lax.rsqrt(jnp.where(pos, d, 1.0)), 0.0)


# -- degrees ------------------------------------------------------------------------------------


def segment_in_degree(s: EdgeList) -> Array:
  """``deg_in[j] = sum_i w_ij``, ``[n]``."""
  return jax.ops.segment_sum(s.weight, s.receivers, num_segments=s.num_nodes)


def dense_in_degree(s: DenseAdj) -> Array:
  """``deg_in[j] = sum_i M_ij`` (column sums), ``[n]``."""
  return dense_propagate(s, jnp.ones((s.num_nodes,), s.adj.dtype))


def segment_out_degree(s: EdgeList) -> Array:
  """``deg_out[i] = sum_j w_ij``, ``[n]``."""
  return jax.ops.segment_sum(s.weight, s.senders, num_segments=s.num_nodes)


def dense_out_degree(s: DenseAdj) -> Array:
  """``deg_out[i] = sum_j M_ij`` (row sums), ``[n]``."""
  r = jnp.ones((s.num_nodes,), s.adj.dtype) if s.right is None else s.right
  out = s.adj @ r
  if s.loops is not None:
    out = out + s.loops * r
  return out if s.left is None else s.left * out


def in_degree(s: Structure) -> Array:
  """Weighted in-degree ``[n]`` (sum of the weights of incoming edges)."""
  return segment_in_degree(s) if isinstance(s, EdgeList) else dense_in_degree(s)


def out_degree(s: Structure) -> Array:
  """Weighted out-degree ``[n]`` (sum of the weights of outgoing edges)."""
  return segment_out_degree(s) if isinstance(s, EdgeList) else dense_out_degree(s)


# -- structure transforms -----------------------------------------------------------------------


def with_self_loops(s: Structure, fill_value: float = 1.0) -> Structure:
  """Adds a loop ``i -> i`` of weight ``fill_value`` to every node (``A + fill * I``).

  An edge list gets ``n`` appended edges (``E + n``, static); an existing loop stays a separate
  edge, which every sum-based primitive treats exactly like the summed dense diagonal.
  """
  if isinstance(s, EdgeList):
    snd, rcv, w = add_self_loops(s.senders, s.receivers, s.weight, s.num_nodes, fill_value)
    return EdgeList(snd, rcv, w, s.num_nodes)
  if s.left is not None or s.right is not None:  # a loop of a scaled matrix: build it
    s = DenseAdj(s.matrix())
  fill = jnp.full((s.num_nodes,), fill_value, s.adj.dtype)
  return s.replace(loops=fill if s.loops is None else s.loops + fill)


def without_self_loops(s: Structure) -> Structure:
  """Zeroes the weight of every loop ``i -> i`` (shapes unchanged, so jit-safe)."""
  if isinstance(s, EdgeList):
    return s.replace(weight=jnp.where(s.senders == s.receivers, 0.0, s.weight))
  # diag(M) = l * (adj_ii + loops_i) * r, so loops = -diag(adj) zeroes it whatever l and r are.
  return s.replace(loops=-jnp.diagonal(s.adj))


def scale(s: Structure, left: Array, right: Array) -> Structure:
  """Rescales every weight: ``w_ij -> left[i] * w_ij * right[j]`` (``diag(l) A diag(r)``)."""
  if isinstance(s, EdgeList):
    return s.replace(weight=left[s.senders] * s.weight * right[s.receivers])
  return s.replace(left=left if s.left is None else s.left * left,
                   right=right if s.right is None else s.right * right)


def gcn_norm(s: Structure) -> Structure:
  """GCN normalisation ``D^-1/2 (A + I) D^-1/2`` as in PyG's ``gcn_norm``.

  Self loops of weight 1 are added; ``D`` is the weighted in-degree of ``A + I`` (PyG sums over
  the target index), so ``w_ij -> w_ij / sqrt(d_i d_j)``.
  """
  s = with_self_loops(s, 1.0)
  dinv = safe_inv_sqrt(in_degree(s))
  return scale(s, dinv, dinv)


def cheb_norm(s: Structure) -> Structure:
  """The scaled Laplacian of ChebConv with ``lambda_max = 2``: ``L_hat = -D^-1/2 A D^-1/2``.

  As PyG's ``ChebConv.__norm__`` (``get_laplacian(normalization="sym")``, then
  ``2 L / lambda_max - I``): loops are removed, ``D`` is the weighted *out*-degree (PyG's
  ``get_laplacian`` sums over the source index; equal to the in-degree on symmetric graphs), and
  a node of degree 0 gets ``d^-1/2 = 0``. The diagonal of ``L_hat`` is 0.
  """
  s = without_self_loops(s)
  dinv = safe_inv_sqrt(out_degree(s))
  return scale(s, -dinv, dinv)


# -- aggregation --------------------------------------------------------------------------------


def segment_propagate(s: EdgeList, x: Array) -> Array:
  """``out[j] = sum_{e: i -> j} w_e x[i]``; ``x: [n, ...]`` -> ``[n, ...]``."""
  w = s.weight.reshape(s.weight.shape + (1,) * (x.ndim - 1))
  return jax.ops.segment_sum(w * x[s.senders], s.receivers, num_segments=s.num_nodes)


def dense_propagate(s: DenseAdj, x: Array) -> Array:
  """``out = M^T x``, i.e. ``out[j] = sum_i M_ij x[i]``; ``x: [n, ...]`` -> ``[n, ...]``.

  Computed as ``r * (adj^T (l * x) + loops * l * x)``: one product with ``adj``.
  """
  def col(v):
    return v.reshape(v.shape + (1,) * (x.ndim - 1))

  y = x if s.left is None else col(s.left) * x
  out = jnp.tensordot(s.adj.T, y, axes=1)
  if s.loops is not None:
    out = out + col(s.loops) * y
  return out if s.right is None else col(s.right) * out


def propagate(s: Structure, x: Array) -> Array:
  """Weighted sum over in-neighbours, ``out[j] = sum_i w_ij x[i]`` (``A^T x``)."""
  return segment_propagate(s, x) if isinstance(s, EdgeList) else dense_propagate(s, x)


def mean_aggregate(s: Structure, x: Array) -> Array:
  """Weighted mean over in-neighbours, ``sum_i w_ij x_i / sum_i w_ij`` (0 without neighbour)."""
  inv = safe_reciprocal(in_degree(s))
  return propagate(s, x) * inv.reshape(inv.shape + (1,) * (x.ndim - 1))


def chebyshev_series(s: Structure, coeffs: Sequence[Array]) -> Array:
  """``sum_k T_k(M^T) c_k`` by Clenshaw's recurrence: ``K - 1`` propagations for ``K`` terms.

  ``T_0(M^T) c = c``, ``T_1(M^T) c = propagate(s, c)``, ``T_k = 2 M^T T_{k-1} - T_{k-2}``.
  Clenshaw: ``b_k = c_k + 2 M^T b_{k+1} - b_{k+2}`` for ``k = K-1 .. 1`` (``b_K = b_{K+1} = 0``),
  result ``c_0 + M^T b_1 - b_2``. Each ``c_k`` can be its own matrix (``x W_k`` in ChebConv),
  so a layer projects before it propagates.

  Args:
    s: the structure ``M`` (``L_hat`` in ChebConv, `cheb_norm`).
    coeffs: ``K >= 1`` arrays ``[n, ...]`` of one shape.
  Returns:
    ``[n, ...]``.
  """
  if not coeffs:
    raise ValueError("chebyshev_series: needs at least one coefficient")
  b1 = b2 = None                                  # b_{k+1}, b_{k+2}
  for c in coeffs[:0:-1]:                         # c_{K-1} .. c_1
    b = c
    if b1 is not None:
      b = b + 2.0 * propagate(s, b1)
    if b2 is not None:
      b = b - b2
    b1, b2 = b, b1
  if b1 is None:
    return coeffs[0]
  out = coeffs[0] + propagate(s, b1)
  return out if b2 is None else out - b2


# -- attention ----------------------------------------------------------------------------------


def attention_logits(s: Structure, src: Array, dst: Array) -> Array:
  """Per-edge additive scores ``src[i] + dst[j]``.

  Args:
    s: the structure.
    src: ``[n, H]`` sender scores. dst: ``[n, H]`` receiver scores.

  Returns:
    ``[E, H]`` for an `EdgeList`, ``[n, n, H]`` (all pairs ``(i, j)``) for a `DenseAdj`.
  """
  if isinstance(s, EdgeList):
    return src[s.senders] + dst[s.receivers]
  return src[:, None, :] + dst[None, :, :]


def segment_weighted_softmax(s: EdgeList, logits: Array) -> Array:
  """``alpha_e = w_e exp(l_e) / sum_{e' -> j} w_e' exp(l_e')`` over edges into the same node.

  Numerically stable (the per-receiver max of the logits is subtracted; it cancels). A node
  whose incoming weights all vanish gets all-zero coefficients.

  Args:
    s: edge list, ``E`` edges. logits: ``[E, H]``.

  Returns:
    ``[E, H]``.
  """
  n = s.num_nodes
  m = jax.ops.segment_max(logits, s.receivers, num_segments=n)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  num = s.weight[:, None] * jnp.exp(logits - m[s.receivers])
  den = jax.ops.segment_sum(num, s.receivers, num_segments=n)
  return num / (den[s.receivers] + 1e-16)


def dense_weighted_softmax(s: DenseAdj, logits: Array) -> Array:
  """Dense `segment_weighted_softmax`: ``alpha[i, j] = A_ij exp(l_ij) / sum_k A_kj exp(l_kj)``.

  The max is taken over the non-zero entries of each column, as on the edge list.

  Args:
    s: ``[n, n]`` adjacency. logits: ``[n, n, H]``.

  Returns:
    ``[n, n, H]``, zero where ``A_ij = 0``.
  """
  a = s.matrix()[:, :, None]
  m = jnp.max(jnp.where(a != 0, logits, -jnp.inf), axis=0, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  # Entries with A_ij = 0 keep their true exp(l_ij - m_j) (so d alpha / d A_ij is exact there,
  # which a structure metamer needs to grow edges); the cap only guards against inf * 0.
  num = a * jnp.exp(jnp.minimum(logits - m, _EXP_CAP))
  den = num.sum(axis=0, keepdims=True)
  return num / (den + 1e-16)


def weighted_softmax(s: Structure, logits: Array) -> Array:
  """Softmax over incoming edges, each term multiplied by its edge weight (see above)."""
  if isinstance(s, EdgeList):
    return segment_weighted_softmax(s, logits)
  return dense_weighted_softmax(s, logits)


def attend(s: Structure, alpha: Array, x: Array) -> Array:
  """``out[j, h] = sum_i alpha_ij^h x[i, h]``.

  Args:
    s: the structure ``alpha`` was computed on.
    alpha: ``[E, H]`` or ``[n, n, H]`` (from `weighted_softmax`).
    x: ``[n, H, C]``.

  Returns:
    ``[n, H, C]``.
  """
  if isinstance(s, EdgeList):
    return jax.ops.segment_sum(alpha[:, :, None] * x[s.senders], s.receivers,
                               num_segments=s.num_nodes)
  return jnp.einsum("ijh,ihc->jhc", alpha, x)


# -- shortest paths (Graphormer) ----------------------------------------------------------------


def pack_bits(b: Array) -> Array:
  """Packs the last axis of a bool array into ``uint32`` words, little-endian bit order.

  ``b: [..., m] bool`` -> ``[..., ceil(m / 32)] uint32``; bit ``t`` of word ``w`` is
  ``b[..., 32 w + t]`` (padding bits 0).
  """
  m = b.shape[-1]
  words = -(-m // 32)
  pad = [(0, 0)] * (b.ndim - 1) + [(0, 32 * words - m)]
  bits = jnp.pad(b, pad).reshape(b.shape[:-1] + (words, 32)).astype(jnp.uint32)
  return jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def unpack_bits(words: Array, m: int) -> Array:
  """Inverse of `pack_bits`: ``[..., W] uint32`` -> ``[..., m] bool``."""
  bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
  return bits.reshape(words.shape[:-1] + (-1,))[..., :m].astype(bool)


def segment_or(s: EdgeList, vals: Array) -> Array:
  """``out[j] = OR_{e: receivers[e] = j} vals[e]`` (bitwise), 0 for a node without in-edges.

  ``vals: [E, W] uint32`` -> ``[n, W] uint32``. XLA has no scatter-OR, so the edges are sorted
  by receiver and a segmented inclusive OR-scan (`jax.lax.associative_scan`, ``O(E W log E)``)
  is read at the last edge of each receiver.
  """
  n, e = s.num_nodes, s.receivers.shape[0]
  if e == 0:
    return jnp.zeros((n,) + vals.shape[1:], vals.dtype)
  order = jnp.argsort(s.receivers)
  rcv, vals = s.receivers[order], vals[order]
  start = jnp.concatenate([jnp.ones((1,), bool), rcv[1:] != rcv[:-1]])

  def combine(a, b):
    fa, va = a
    fb, vb = b
    return fa | fb, jnp.where(fb[..., None], vb, va | vb)

  _, scanned = jax.lax.associative_scan(combine, (start, vals))
  last = jax.ops.segment_max(jnp.arange(e), rcv, num_segments=n)        # -big if no in-edge
  return jnp.where((last >= 0)[:, None], scanned[jnp.clip(last, 0, e - 1)], 0)


def segment_reach_step(s: EdgeList, reach: Array) -> Array:
  """One BFS step on bit-packed reachability, ``O(E n / 32)`` words.

  ``reach: [n, W] uint32`` (`pack_bits` of ``[n, n] bool``; ``reach[j, u]``: ``u`` reaches
  ``j``) -> ``new[j, u] = reach[j, u] or any(reach[i, u] for i -> j with w != 0)``.
  """
  live = (s.weight != 0)[:, None]
  return reach | segment_or(s, jnp.where(live, reach[s.senders], jnp.uint32(0)))


def dense_reach_step(s: DenseAdj, reach: Array) -> Array:
  """`segment_reach_step` with a matmul, ``O(n^3)``, on ``[n, n] bool`` (unpacked)."""
  b = (s.matrix() != 0).astype(jnp.float32)
  return reach | ((b.T @ reach.astype(jnp.float32)) > 0)


def shortest_path_buckets(s: Structure, max_spd: int) -> Array:
  """Clamped shortest-path distances by BFS, jit-safe (static ``n``), no gradient.

  ``spd[j, u]`` = number of hops of the shortest path ``u -> ... -> j`` along edges of non-zero
  weight, clamped to ``max_spd``; ``max_spd + 1`` where ``u`` cannot reach ``j``; 0 on the
  diagonal. Distances ``1..max_spd`` come from ``max_spd`` BFS steps (``dist = first k`` with
  ``(B^k)_{uj} > 0``, ``B`` the binary adjacency). Reachability beyond that is completed by a
  ``lax.while_loop`` until nothing changes: more BFS steps on an edge list, repeated squaring of
  the reach matrix on a dense adjacency (``O(n^3)`` each, ``log2`` of the diameter of steps).

  On an edge list the reach matrix is bit-packed (`pack_bits`, 32 sources per ``uint32``) and a
  BFS step is a gather plus a segmented OR-scan over the edges (`segment_reach_step`): on Cora
  (n = 2708, E = 10556, diameter 19) the whole computation takes ~0.05 s instead of ~0.7 s with
  an ``[E, n]`` int8 gather and ``segment_max`` per step.

  Args:
    s: the structure (weights only matter through ``w != 0``).
    max_spd: clamp (static, ``>= 1``).

  Returns:
    ``[n, n] int32`` buckets in ``[0, max_spd + 1]``.
  """
  n = s.num_nodes
  eye = jnp.eye(n, dtype=bool)
  spd = jnp.where(eye, 0, max_spd + 1).astype(jnp.int32)
  if isinstance(s, EdgeList):
    s = s.replace(weight=jax.lax.stop_gradient(s.weight))
    step = advance = lambda r: segment_reach_step(s, r)
    init, unpack = pack_bits(eye), lambda r: unpack_bits(r, n)
  else:
    s = DenseAdj(jax.lax.stop_gradient(s.matrix()))
    step = lambda r: dense_reach_step(s, r)
    init, unpack = eye, lambda r: r

    def advance(r):
      rf = r.astype(jnp.float32)
      return r | ((rf @ rf) > 0)

  def bfs(k, carry):
    reach, spd = carry
    new = step(reach)
    spd = jnp.where(unpack(new) & ~unpack(reach), k, spd)
    return new, spd

  reach, spd = jax.lax.fori_loop(1, max_spd + 1, bfs, (init, spd))

  def cond(carry):
    return carry[1]

  def body(carry):
    r, _ = carry
    new = advance(r)
    return new, jnp.any(new != r)

  reach_all, _ = jax.lax.while_loop(cond, body, (reach, jnp.array(True)))
  return jnp.where(unpack(reach_all) & ~unpack(reach), max_spd, spd)


def binary_in_degree(s: Structure) -> Array:
  """Number of incoming edges of non-zero weight, ``[n] int32`` (no gradient)."""
  if isinstance(s, EdgeList):
    return jax.ops.segment_sum((s.weight != 0).astype(jnp.int32), s.receivers,
                               num_segments=s.num_nodes)
  return (s.matrix() != 0).astype(jnp.int32).sum(axis=0)


def binary_out_degree(s: Structure) -> Array:
  """Number of outgoing edges of non-zero weight, ``[n] int32`` (no gradient)."""
  if isinstance(s, EdgeList):
    return jax.ops.segment_sum((s.weight != 0).astype(jnp.int32), s.senders,
                               num_segments=s.num_nodes)
  return (s.matrix() != 0).astype(jnp.int32).sum(axis=1)
