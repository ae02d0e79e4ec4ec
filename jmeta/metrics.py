"""Similarity and consistency scores of metamers (Sec 3.5, eq. 5 and 13-17), and the WL kernel.

Every score is a **fraction** (S_feat, S_match, CS and S_struct lie in ``[0, 1]`` for the
non-negative features and adjacencies of the paper); the paper reports percent, so tables
multiply by 100 with `as_percent`.

The array scores (`feature_similarity`, `match_rate`, `consistency`, `activation_loss`,
`activation_similarity`) are pure ``jax.numpy`` and can be jitted and vmapped. Called on concrete
arrays they first check their inputs on the host (`check_nonzero`) and raise ``ValueError`` for a
zero reference or empty mask; traced inside ``jit`` the same cases give NaN. The
Weisfeiler-Lehman kernel (`wl_kernel`, `wl_similarity`) runs on the host with numpy/scipy.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import scipy.sparse as sp

from jmeta.graph import Graph, to_scipy

Array = jax.Array


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def check_nonzero(name: str, array) -> None:
  """Raises ``ValueError`` when a concrete ``array`` is empty or all zeros (a zero norm).

  A traced array (inside ``jit``) is not inspected. Non-finite entries also raise, since they
  make every norm-based score meaningless.
  """
  if _is_traced(array):
    return
  a = np.asarray(array)
  if a.size == 0:
    raise ValueError(f"{name} is empty: the score is undefined")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} contains NaN or inf")
  if not np.any(a):
    raise ValueError(f"{name} is all zeros (zero norm): the score is undefined")


def _check_same_shape(what: str, a, b) -> None:
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(f"{what}: shapes differ, {jnp.shape(a)} vs {jnp.shape(b)}")


def as_percent(value):
  """Multiplies a score (array, number, or dict of them) by 100, as the paper reports them."""
  if isinstance(value, dict):
    return {k: as_percent(v) for k, v in value.items()}
  return value * 100


def _cosine(a: Array, b: Array) -> Array:
  a = jnp.asarray(a, jnp.float32).reshape(-1)
  b = jnp.asarray(b, jnp.float32).reshape(-1)
  den = jnp.sqrt(jnp.sum(a * a)) * jnp.sqrt(jnp.sum(b * b))
  return jnp.where(den > 0, jnp.sum(a * b) / jnp.where(den > 0, den, 1.0), jnp.nan)


def feature_similarity(x: Array, x_prime: Array) -> Array:
  """S_feat: cosine of the flattened feature matrices (eq. 13), a fraction.

  Args:
    x: ``[n, d]`` reference features (any shape; flattened).
    x_prime: the metamer's features, same shape.

  Returns:
    float32 scalar ``<x, x'> / (||x|| ||x'||)``, in ``[0, 1]`` for non-negative features.

  Raises:
    ValueError: shapes differ, or (concrete inputs) either input is all zeros.
  """
  _check_same_shape("feature_similarity", x, x_prime)
  check_nonzero("feature_similarity: x", x)
  check_nonzero("feature_similarity: x_prime", x_prime)
  return _cosine(x, x_prime)


def match_rate(logits: Array, logits_prime: Array, mask: Optional[Array] = None) -> Array:
  """S_match: fraction of nodes whose predicted label agrees on G and G' (eq. 14).

  Args:
    logits: ``[n, c]`` outputs on the reference graph.
    logits_prime: ``[n, c]`` outputs on the metamer.
    mask: optional ``[n]`` bool; the fraction is over the masked nodes (all nodes by default, as
      the paper).

  Returns:
    float32 scalar in ``[0, 1]`` (NaN for an all-False mask under ``jit``).

  Raises:
    ValueError: shapes differ, or (concrete) the mask selects no node.
  """
  _check_same_shape("match_rate", logits, logits_prime)
  if jnp.ndim(logits) != 2:
    raise ValueError(f"match_rate: logits must be [n, c], got shape {jnp.shape(logits)}")
  n = jnp.shape(logits)[0]
  agree = jnp.argmax(logits, axis=-1) == jnp.argmax(logits_prime, axis=-1)
  if mask is None:
    return jnp.mean(agree.astype(jnp.float32))
  if jnp.shape(mask) != (n,):
    raise ValueError(f"match_rate: mask has shape {jnp.shape(mask)}, expected ({n},)")
  if not _is_traced(mask) and not np.any(np.asarray(mask)):
    raise ValueError("match_rate: mask selects no node")
  mask = jnp.asarray(mask, bool)
  count = jnp.sum(mask)
  hits = jnp.sum(agree & mask)
  return jnp.where(count > 0, hits / jnp.maximum(count, 1), jnp.nan).astype(jnp.float32)


def consistency(s, s_match):
  """Consistency score CS = S * S_match + (1 - S)(1 - S_match) (eq. 15 and 17).

  High when similarity and prediction agreement are both high or both low. Works elementwise on
  numbers, numpy or JAX arrays (fractions in, fraction out).
  """
  return s * s_match + (1 - s) * (1 - s_match)


def activation_loss(h: Array, h_prime: Array) -> Array:
  """L_act = ||h' - h||^2 / ||h||^2 (eq. 5).

  Args:
    h: ``[n, m]`` reference activations (any shape).
    h_prime: the metamer's activations, same shape.

  Returns:
    float32 scalar (NaN for an all-zero ``h`` under ``jit``).

  Raises:
    ValueError: shapes differ, or (concrete) ``h`` is all zeros.
  """
  _check_same_shape("activation_loss", h, h_prime)
  check_nonzero("activation_loss: reference activations h", h)
  h = jnp.asarray(h, jnp.float32)
  h_prime = jnp.asarray(h_prime, jnp.float32)
  ref = jnp.sum(h * h)
  return jnp.where(ref > 0, jnp.sum((h_prime - h) ** 2) / jnp.where(ref > 0, ref, 1.0), jnp.nan)


def activation_similarity(h: Array, h_prime: Array) -> dict:
  """Both activation similarities the text may mean (Fig. 9), named.

  Returns:
    ``{"one_minus_loss": 1 - L_act (eq. 5), "cosine": cosine of the flattened activations}``,
    float32 scalars (fractions; ``one_minus_loss`` can be negative for a poor match).
  """
  _check_same_shape("activation_similarity", h, h_prime)
  check_nonzero("activation_similarity: reference activations h", h)
  check_nonzero("activation_similarity: h_prime", h_prime)
  return {"one_minus_loss": 1.0 - activation_loss(h, h_prime), "cosine": _cosine(h, h_prime)}


# -- Weisfeiler-Lehman subtree kernel (host side) ------------------------------------------------

AdjacencyLike = Union[np.ndarray, Array, sp.spmatrix, sp.sparray, Graph]


def _to_csr(adj: AdjacencyLike, name: str) -> sp.csr_matrix:
  """Binary CSR structure of an adjacency: any non-zero entry ``adj[i, j]`` is an edge i -> j."""
  if isinstance(adj, Graph):
    m = to_scipy(adj)
  elif sp.issparse(adj):
    m = sp.csr_matrix(adj)
  else:
    a = np.asarray(adj)
    if a.ndim != 2:
      raise ValueError(f"{name}: adjacency must be a 2-D [n, n] array, got shape {a.shape}")
    m = sp.csr_matrix(a)
  if m.shape[0] != m.shape[1]:
    raise ValueError(f"{name}: adjacency must be square, got shape {m.shape}")
  if m.shape[0] == 0:
    raise ValueError(f"{name}: graph has no nodes")
  m.eliminate_zeros()
  m.sum_duplicates()
  if m.nnz and not np.all(np.isfinite(m.data)):
    raise ValueError(f"{name}: adjacency contains NaN or inf")
  return sp.csr_matrix((np.ones(m.nnz, np.int8), m.indices, m.indptr), shape=m.shape)


def _compress(values: np.ndarray) -> np.ndarray:
  """Dense relabelling ``0..L-1`` of integer ``values`` (order preserving)."""
  return np.unique(values, return_inverse=True)[1].reshape(-1)


def _wl_refine(labels: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """One WL step: a new label for each distinct ``(label, sorted neighbour labels)``.

  Exact (no hashing): nodes are grouped by degree, and within a degree the rows
  ``[own label, sorted neighbour labels]`` are made unique with ``np.unique(axis=0)``.
  """
  n = labels.shape[0]
  deg = np.diff(indptr)
  num_labels = int(labels.max()) + 1
  rows = np.repeat(np.arange(n, dtype=np.int64), deg)
  # Sort neighbour labels within each row: rows stay grouped, labels ascend inside a row.
  nbr = np.sort(rows * num_labels + labels[indices]) - rows * num_labels
  new = np.empty(n, np.int64)
  offset = 0
  for d in np.unique(deg):
    nodes = np.flatnonzero(deg == d)
    sig = np.empty((nodes.size, d + 1), np.int64)
    sig[:, 0] = labels[nodes]
    if d:
      sig[:, 1:] = nbr[indptr[nodes][:, None] + np.arange(d)[None, :]]
    _, inv = np.unique(sig, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    new[nodes] = offset + inv
    offset += int(inv.max()) + 1
  return new


def wl_label_histograms(adjs, iterations: int = 3):
  """WL labels of several graphs in one shared dictionary, as histograms per iteration.

  Initial labels are node degrees (number of non-zero entries in a row). Iteration ``i``
  relabels every node by ``(its label, the sorted multiset of its neighbours' labels)``, with
  neighbours ``j`` of ``i`` the non-zero ``adj[i, j]`` (for symmetric graphs, the usual
  neighbourhood). Graphs are labelled jointly (as one disjoint union), so equal labels mean
  equal rooted subtrees across graphs.

  Args:
    adjs: sequence of adjacencies (dense ``[n, n]`` numpy/JAX arrays, scipy sparse, or `Graph`).
    iterations: number of refinement steps ``h >= 0``.

  Returns:
    A list of ``h + 1`` ``int64`` arrays ``[num_graphs, L_i]``: label counts at iteration ``i``.
  """
  iterations = _check_iterations(iterations)
  mats = [_to_csr(a, f"adjacency {i}") for i, a in enumerate(adjs)]
  if not mats:
    raise ValueError("wl_label_histograms: no graphs given")
  union = sp.block_diag(mats, format="csr")
  owner = np.repeat(np.arange(len(mats)), [m.shape[0] for m in mats])
  indptr, indices = union.indptr.astype(np.int64), union.indices.astype(np.int64)
  labels = _compress(np.diff(indptr))
  hists = []
  for i in range(iterations + 1):
    if i:
      labels = _wl_refine(labels, indptr, indices)
    num_labels = int(labels.max()) + 1
    h = np.zeros((len(mats), num_labels), np.int64)
    np.add.at(h, (owner, labels), 1)
    hists.append(h)
  return hists


def _check_iterations(iterations) -> int:
  if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
      or iterations < 0:
    raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
  return int(iterations)


def wl_kernel(adj_a: AdjacencyLike, adj_b: AdjacencyLike, iterations: int = 3,
              normalize: bool = True) -> float:
  """Weisfeiler-Lehman subtree kernel between two graphs, degree initial labels (eq. 16).

  ``k(A, B) = sum_{i=0..h} <phi_i(A), phi_i(B)>`` with ``phi_i`` the label histogram after ``i``
  refinement steps (Shervashidze et al. 2011), so ``iterations = h`` uses ``h + 1`` labellings.
  This equals grakel's ``WeisfeilerLehman(n_iter=h, base_graph_kernel=VertexHistogram)`` with
  degree node labels (grakel 0.1.11 also counts refinement steps: it runs ``n_iter + 1``
  labellings; ``tests/test_metrics.py`` checks the match). ``iterations = 0`` (which grakel
  refuses) compares degree histograms only.

  Args:
    adj_a, adj_b: adjacencies, dense ``[n, n]`` (numpy or JAX), scipy sparse or `Graph`; any
      non-zero entry is an edge (weights are ignored); sizes may differ.
    iterations: refinement steps ``h`` (default 3).
    normalize: return ``k(A, B) / sqrt(k(A, A) k(B, B))`` (in ``[0, 1]``, 1 for isomorphic
      graphs), else the raw ``k(A, B)``.

  Returns:
    A Python float.
  """
  hists = wl_label_histograms([adj_a, adj_b], iterations)
  kab = sum(int(h[0] @ h[1]) for h in hists)
  if not normalize:
    return float(kab)
  kaa = sum(int(h[0] @ h[0]) for h in hists)
  kbb = sum(int(h[1] @ h[1]) for h in hists)
  return float(kab / np.sqrt(float(kaa) * float(kbb)))


def wl_similarity(adj_a: AdjacencyLike, adj_b: AdjacencyLike, iterations: int = 3) -> float:
  """S_struct: normalised WL subtree kernel ``k(A,A') / sqrt(k(A,A) k(A',A'))`` (eq. 16).

  See `wl_kernel` for the label and iteration conventions (``iterations = h`` refinement steps,
  the same as grakel's ``n_iter = h``). Host side: a Cora-sized pair takes milliseconds, a
  PubMed-sized pair about 0.2 s.
  """
  return wl_kernel(adj_a, adj_b, iterations, normalize=True)


def random_graph_like(adj: AdjacencyLike, seed: int) -> sp.csr_matrix:
  """A uniformly random simple graph of ``adj``'s size: ``n`` nodes, ``m`` undirected edges.

  ``m`` counts the node pairs ``{i, j}``, ``i != j``, joined either way in ``adj`` (what a
  structure metamer keeps fixed, eq. 11-12); the graph is ``networkx.gnm_random_graph(n, m,
  seed)``, uniform among all simple graphs with ``n`` nodes and ``m`` edges.

  Returns:
    ``[n, n]`` symmetric binary CSR matrix with zero diagonal and ``2 m`` non-zeros.
  """
  a = _to_csr(adj, "adj")
  n = a.shape[0]
  m = sp.triu(a.maximum(a.T), k=1).nnz
  g = nx.gnm_random_graph(n, m, seed=int(seed))
  return sp.csr_matrix(nx.to_scipy_sparse_array(g, nodelist=range(n), format="csr"))


def random_graph_similarity(adj: AdjacencyLike, seeds: Sequence[int] = (0,),
                            iterations: int = 3) -> np.ndarray:
  """S_struct of `random_graph_like` graphs against ``adj``: the chance level of `wl_similarity`.

  What a structure metamer scores with nothing of the graph matched but its edge count. With
  degree labels this level is high where the degrees of a random graph resemble the reference's
  (~90 % on Cora) and low where the reference has hubs (~21 % on Chameleon).

  Returns:
    ``[len(seeds)]`` float64, one similarity per seed.
  """
  a = _to_csr(adj, "adj")
  return np.array([wl_similarity(a, random_graph_like(a, s), iterations) for s in seeds],
                  np.float64)


# -- the paper's score bundles ---------------------------------------------------------------------


def feature_consistency(x: Array, x_prime: Array, logits: Array, logits_prime: Array,
                        mask: Optional[Array] = None) -> dict:
  """S_feat (13), S_match (14) and CS_feat (15) of a feature metamer, as fractions.

  Returns:
    ``{"s_feat", "s_match", "cs_feat"}`` float32 scalars.
  """
  s_feat = feature_similarity(x, x_prime)
  s_match = match_rate(logits, logits_prime, mask)
  return {"s_feat": s_feat, "s_match": s_match, "cs_feat": consistency(s_feat, s_match)}


def structure_consistency(adj: AdjacencyLike, adj_prime: AdjacencyLike, logits: Array,
                          logits_prime: Array, mask: Optional[Array] = None,
                          iterations: int = 3) -> dict:
  """S_struct (16), S_match (14) and CS_struct (17) of a structure metamer, as fractions.

  Host side (the WL kernel). Returns ``{"s_struct", "s_match", "cs_struct"}`` Python floats.
  """
  s_struct = wl_similarity(adj, adj_prime, iterations)
  s_match = float(match_rate(logits, logits_prime, mask))
  return {"s_struct": s_struct, "s_match": s_match,
          "cs_struct": consistency(s_struct, s_match)}
