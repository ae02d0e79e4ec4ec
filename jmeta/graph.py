"""The Graph container: a `jraph.GraphsTuple` plus labels, split masks and feature kind.

Conventions used throughout jmeta:

* One graph, ``n`` nodes, ``d`` features, ``E`` directed edges.
* ``senders[e] -> receivers[e]``: messages flow from sender to receiver. An undirected graph
  stores both directions, so ``E = 2 * (number of undirected edges)``.
* Edge weights are always present (``graph.edges``, ``[E] float32``, ones for an unweighted
  graph), so that a relaxed adjacency can carry gradient through every model.
* Stored graphs have no self loops; models that need them add them (``add_self_loops``).
* Dense adjacency: ``adj[i, j]`` is the weight of the edge ``i -> j`` (sender ``i``, receiver
  ``j``); for undirected graphs it is symmetric.

`Graph` is a pytree: arrays are leaves, ``num_classes``, ``feature_kind`` and ``name`` are static
metadata, so a `Graph` passes through ``jax.jit`` and ``jax.vmap``.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax.numpy as jnp
import jraph
import networkx as nx
import numpy as np

FEATURE_KINDS = ("binary", "continuous")

Array = jnp.ndarray


@flax.struct.dataclass
class Graph:
  """A node-classification graph.

  Attributes:
    graph: ``jraph.GraphsTuple`` with ``nodes`` ``[n, d] float32``, ``edges`` (edge weights)
      ``[E] float32``, ``senders``/``receivers`` ``[E] int32``, ``n_node = [n]``,
      ``n_edge = [E]``.
    labels: ``[n] int32`` class labels; ``-1`` marks a node without a label.
    train_mask: ``[n] bool``.
    val_mask: ``[n] bool``.
    test_mask: ``[n] bool``.
    num_classes: number of classes (static).
    feature_kind: ``"binary"`` or ``"continuous"`` (static).
    name: dataset name (static).
  """

  graph: jraph.GraphsTuple
  labels: Array
  train_mask: Array
  val_mask: Array
  test_mask: Array
  num_classes: int = flax.struct.field(pytree_node=False)
  feature_kind: str = flax.struct.field(pytree_node=False)
  name: str = flax.struct.field(pytree_node=False, default="graph")

  # -- convenient views -------------------------------------------------------------------------
  @property
  def x(self) -> Array:
    """Node features, ``[n, d]``."""
    return self.graph.nodes

  @property
  def senders(self) -> Array:
    """``[E] int32``."""
    return self.graph.senders

  @property
  def receivers(self) -> Array:
    """``[E] int32``."""
    return self.graph.receivers

  @property
  def edge_weight(self) -> Array:
    """``[E] float32``."""
    return self.graph.edges

  @property
  def num_nodes(self) -> int:
    return int(self.graph.nodes.shape[0])

  @property
  def num_features(self) -> int:
    return int(self.graph.nodes.shape[1])

  @property
  def num_edges(self) -> int:
    """Number of directed edges ``E``."""
    return int(self.graph.senders.shape[0])

  def with_features(self, x: Array) -> "Graph":
    """Returns the same graph with node features ``x: [n, d]`` (jit-safe)."""
    return self.replace(graph=self.graph._replace(nodes=x))

  def with_edges(self, senders: Array, receivers: Array,
                 edge_weight: Optional[Array] = None) -> "Graph":
    """Returns the same nodes with a new edge list (jit-safe; shapes set by the inputs)."""
    senders = jnp.asarray(senders, jnp.int32)
    receivers = jnp.asarray(receivers, jnp.int32)
    if edge_weight is None:
      edge_weight = jnp.ones(senders.shape, jnp.float32)
    g = self.graph._replace(
        senders=senders, receivers=receivers, edges=jnp.asarray(edge_weight),
        n_edge=jnp.array([senders.shape[0]], jnp.int32))
    return self.replace(graph=g)


def _int_array(a, what: str, name: str) -> np.ndarray:
  """``a`` flattened to int64; raises if it holds non-integral or non-finite values."""
  a = np.asarray(a).reshape(-1)
  if a.size and not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)) or np.any(
        a != np.round(a)):
      raise ValueError(f"{name}: {what} must hold integers, got non-integral values "
                       f"(dtype {a.dtype})")
  return a.astype(np.int64)


def make_graph(
    x,
    senders,
    receivers,
    labels,
    *,
    num_classes: Optional[int] = None,
    feature_kind: Optional[str] = None,
    edge_weight=None,
    train_mask=None,
    val_mask=None,
    test_mask=None,
    name: str = "graph",
) -> Graph:
  """Builds and validates a `Graph` from host arrays.

  Args:
    x: ``[n, d]`` node features (finite).
    senders: ``[E]`` int, values in ``[0, n)``.
    receivers: ``[E]`` int, values in ``[0, n)``.
    labels: ``[n]`` int; ``-1`` for unlabeled nodes.
    num_classes: defaults to ``max(labels) + 1``.
    feature_kind: ``"binary"`` or ``"continuous"``; inferred from ``x`` when ``None``.
    edge_weight: ``[E]`` float; ones when ``None``.
    train_mask, val_mask, test_mask: ``[n]`` bool; all ``False`` when ``None``.
    name: a name for messages and results.

  Returns:
    A `Graph`.

  Raises:
    ValueError: naming the offending array and the problem.
  """
  x = np.asarray(x, dtype=np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name}: features must be [n, d], got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    bad = np.argwhere(~np.isfinite(x))[0]
    raise ValueError(f"{name}: features contain NaN or inf (first at node {bad[0]}, "
                     f"feature {bad[1]})")
  n = x.shape[0]
  senders = _int_array(senders, "senders", name)
  receivers = _int_array(receivers, "receivers", name)
  if senders.shape != receivers.shape:
    raise ValueError(f"{name}: senders {senders.shape} and receivers {receivers.shape} differ")
  for what, idx in (("senders", senders), ("receivers", receivers)):
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise ValueError(f"{name}: {what} out of range [0, {n}): min {idx.min()}, max {idx.max()}")
  if edge_weight is None:
    edge_weight = np.ones(senders.shape, np.float32)
  edge_weight = np.asarray(edge_weight, np.float32).reshape(-1)
  if edge_weight.shape != senders.shape:
    raise ValueError(f"{name}: edge_weight has shape {edge_weight.shape}, expected "
                     f"{senders.shape}")
  if not np.all(np.isfinite(edge_weight)):
    raise ValueError(f"{name}: edge weights contain NaN or inf")
  labels = _int_array(labels, "labels", name)
  if labels.shape != (n,):
    raise ValueError(f"{name}: labels have shape {labels.shape}, expected ({n},)")
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if labels.size else 0
  if labels.size and (labels.min() < -1 or labels.max() >= num_classes):
    raise ValueError(f"{name}: labels out of range [-1, {num_classes}): min {labels.min()}, "
                     f"max {labels.max()}")
  if feature_kind is None:
    feature_kind = "binary" if np.all((x == 0) | (x == 1)) else "continuous"
  if feature_kind not in FEATURE_KINDS:
    raise ValueError(f"{name}: feature_kind must be one of {FEATURE_KINDS}, got "
                     f"{feature_kind!r}")
  if feature_kind == "binary" and not np.all((x == 0) | (x == 1)):
    raise ValueError(f"{name}: feature_kind='binary' but features are not all 0 or 1")

  def mask(m, what):
    if m is None:
      return np.zeros(n, bool)
    m = np.asarray(m, bool).reshape(-1)
    if m.shape != (n,):
      raise ValueError(f"{name}: {what} has shape {m.shape}, expected ({n},)")
    return m

  gt = jraph.GraphsTuple(
      nodes=jnp.asarray(x),
      edges=jnp.asarray(edge_weight),
      senders=jnp.asarray(senders, jnp.int32),
      receivers=jnp.asarray(receivers, jnp.int32),
      n_node=jnp.array([n], jnp.int32),
      n_edge=jnp.array([senders.shape[0]], jnp.int32),
      globals=None,
  )
  return Graph(
      graph=gt,
      labels=jnp.asarray(labels, jnp.int32),
      train_mask=jnp.asarray(mask(train_mask, "train_mask")),
      val_mask=jnp.asarray(mask(val_mask, "val_mask")),
      test_mask=jnp.asarray(mask(test_mask, "test_mask")),
      num_classes=int(num_classes),
      feature_kind=feature_kind,
      name=name,
  )


# -- edge-list transforms (host side: their output shape depends on the data) -------------------


def remove_self_loops(senders, receivers, edge_weight=None):
  """Drops edges ``i -> i``. Host-side (numpy): the output length depends on the data.

  Returns:
    ``(senders, receivers, edge_weight)`` as numpy arrays, ``edge_weight`` is ``None`` if it was.
  """
  s, r = np.asarray(senders), np.asarray(receivers)
  keep = s != r
  w = None if edge_weight is None else np.asarray(edge_weight)[keep]
  return s[keep], r[keep], w


def symmetrize(senders, receivers, edge_weight=None, num_nodes: Optional[int] = None):
  """Returns the union of ``i -> j`` and ``j -> i``, deduplicated and sorted (host side).

  Weights of duplicated pairs are combined with ``max``. Self loops are kept as single edges.

  Returns:
    ``(senders, receivers, edge_weight)`` numpy arrays, sorted by ``(sender, receiver)``.
  """
  s, r = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
  w = np.ones(s.shape, np.float32) if edge_weight is None else np.asarray(edge_weight, np.float32)
  n = int(num_nodes) if num_nodes is not None else int(max(s.max(initial=-1),
                                                           r.max(initial=-1)) + 1)
  ss = np.concatenate([s, r])
  rr = np.concatenate([r, s])
  ww = np.concatenate([w, w])
  key = ss * n + rr
  order = np.lexsort((-ww, key))  # by key, largest weight first
  key, ww = key[order], ww[order]
  first = np.ones(key.shape, bool)
  first[1:] = key[1:] != key[:-1]
  key, ww = key[first], ww[first]
  out_w = None if edge_weight is None else ww
  return key // n, key % n, out_w


def add_self_loops(senders: Array, receivers: Array, edge_weight: Array, num_nodes: int,
                   fill_value: float = 1.0):
  """Appends one self loop per node (jit-safe: output length ``E + n`` is static).

  Args:
    senders: ``[E] int32``.
    receivers: ``[E] int32``.
    edge_weight: ``[E] float``.
    num_nodes: ``n`` (static).
    fill_value: weight of the added loops.

  Returns:
    ``(senders, receivers, edge_weight)`` of length ``E + n``.
  """
  loop = jnp.arange(num_nodes, dtype=senders.dtype)
  w = jnp.full((num_nodes,), fill_value, dtype=edge_weight.dtype)
  return (jnp.concatenate([senders, loop]), jnp.concatenate([receivers, loop]),
          jnp.concatenate([edge_weight, w]))


def is_symmetric(graph: Graph) -> bool:
  """True when every edge ``i -> j`` has a reverse ``j -> i`` with the same weight (host side)."""
  adj = to_scipy(graph)
  return (abs(adj - adj.T) > 0).nnz == 0


def has_self_loops(graph: Graph) -> bool:
  """True when some edge is ``i -> i``."""
  return bool(np.any(np.asarray(graph.senders) == np.asarray(graph.receivers)))


# -- conversions ----------------------------------------------------------------------------------


def to_dense(graph: Graph) -> Array:
  """Dense adjacency ``[n, n]``, ``adj[i, j]`` = summed weight of edges ``i -> j`` (jit-safe)."""
  n = graph.x.shape[0]
  adj = jnp.zeros((n, n), graph.edge_weight.dtype)
  return adj.at[graph.senders, graph.receivers].add(graph.edge_weight)


def to_scipy(graph: Graph):
  """Sparse adjacency as ``scipy.sparse.csr_matrix`` ``[n, n]`` (host side)."""
  import scipy.sparse as sp
  n = graph.num_nodes
  return sp.csr_matrix((np.asarray(graph.edge_weight), (np.asarray(graph.senders),
                                                       np.asarray(graph.receivers))),
                       shape=(n, n))


def dense_to_edges(adj):
  """Edge list of the non-zero entries of ``adj: [n, n]`` (host side).

  Returns:
    ``(senders, receivers, edge_weight)`` numpy arrays in row-major order.
  """
  adj = np.asarray(adj)
  s, r = np.nonzero(adj)
  return s, r, adj[s, r].astype(np.float32)


def from_dense(graph: Graph, adj) -> Graph:
  """Returns ``graph`` with its edges replaced by the non-zero entries of ``adj: [n, n]``."""
  adj = np.asarray(adj)
  n = graph.num_nodes
  if adj.shape != (n, n):
    raise ValueError(f"adjacency has shape {adj.shape}, expected ({n}, {n})")
  s, r, w = dense_to_edges(adj)
  return graph.with_edges(s, r, w)


def to_networkx(graph: Graph) -> nx.Graph:
  """An undirected ``networkx.Graph`` with node attributes ``x`` and ``y`` and edge ``weight``.

  Directed duplicates ``i -> j``/``j -> i`` become one undirected edge (host side).
  """
  g = nx.Graph()
  x = np.asarray(graph.x)
  y = np.asarray(graph.labels)
  g.add_nodes_from((i, {"x": x[i], "y": int(y[i])}) for i in range(graph.num_nodes))
  g.add_weighted_edges_from(
      zip(np.asarray(graph.senders).tolist(), np.asarray(graph.receivers).tolist(),
          np.asarray(graph.edge_weight).tolist()))
  return g


def from_networkx(g: nx.Graph, *, x=None, labels=None, num_classes: Optional[int] = None,
                  feature_kind: Optional[str] = None, name: str = "graph") -> Graph:
  """Builds a `Graph` from a networkx graph with nodes ``0..n-1``.

  Features and labels come from the arguments or, when ``None``, from node attributes ``x`` and
  ``y``. An undirected graph yields both edge directions; weights come from the ``weight``
  attribute (default 1).
  """
  n = g.number_of_nodes()
  if sorted(g.nodes()) != list(range(n)):
    raise ValueError("networkx graph must have nodes labelled 0..n-1")
  if x is None:
    x = np.stack([np.asarray(g.nodes[i]["x"], np.float32) for i in range(n)])
  if labels is None:
    labels = np.array([g.nodes[i].get("y", -1) for i in range(n)])
  edges = [(u, v, float(d.get("weight", 1.0))) for u, v, d in g.edges(data=True)]
  s = np.array([e[0] for e in edges], np.int64)
  r = np.array([e[1] for e in edges], np.int64)
  w = np.array([e[2] for e in edges], np.float32)
  if not g.is_directed():
    loops = s == r
    s, r, w = (np.concatenate([s, r[~loops]]), np.concatenate([r, s[~loops]]),
               np.concatenate([w, w[~loops]]))
  order = np.lexsort((r, s))
  return make_graph(x, s[order], r[order], labels, num_classes=num_classes,
                    feature_kind=feature_kind, edge_weight=w[order], name=name)
