"""A contextual stochastic block model (CSBM): a small seeded synthetic node-classification graph.

Nodes get balanced random classes. Undirected edges are drawn uniformly without replacement
within two pools, same-class pairs and different-class pairs, with
``round(homophily * m)`` same-class edges out of ``m = round(num_nodes * avg_degree / 2)``, so
the edge homophily (fraction of edges joining same-class nodes) equals the requested value up to
rounding. This is an SBM conditioned on its edge counts.

Features depend on the class. Each feature is a "topic word" of one class (features are dealt
to classes round-robin in random order):

* ``"binary"``: ``x[i, j] ~ Bernoulli(p_in)`` if feature ``j`` belongs to the class of ``i``,
  else ``Bernoulli(p_out)``: sparse bag-of-words rows.
* ``"continuous"``: ``x[i, j] = max(0, mu + noise * N(0, 1))`` with ``mu = 1`` on the class's
  topic features and ``0`` elsewhere: non-negative, about half zeros off-topic.

Split: ``train_per_class`` training nodes per class (at most a fifth of the class, at least one),
``num_val`` validation nodes (at most half of the rest), the remaining nodes test.
"""

from __future__ import annotations

from typing import Sequence, Union

import jax
import numpy as np

from jmeta import graph as graph_lib

Seed = Union[int, np.integer, jax.Array]
MAX_ENUMERATED_PAIRS = 20_000_000


def _entropy(seed: Seed) -> list[int]:
  """Seed material for `np.random.SeedSequence` from an int or a JAX PRNG key."""
  if isinstance(seed, (int, np.integer)):
    if seed < 0:
      raise ValueError(f"seed must be non-negative, got {seed}")
    return [int(seed)]
  if isinstance(seed, jax.Array):
    data = jax.random.key_data(seed) if jax.dtypes.issubdtype(seed.dtype,
                                                               jax.dtypes.prng_key) else seed
    return [int(v) for v in np.asarray(data, np.uint32).reshape(-1)]
  raise ValueError(f"seed must be an int or a JAX PRNG key, got {type(seed).__name__}")


def _sample_pairs(rng: np.random.Generator, labels: np.ndarray, count: int, same: bool,
                  available: int) -> np.ndarray:
  """``count`` distinct unordered pairs ``u < v``, uniform among same- (or different-) class.

  Returns:
    ``[count, 2] int64``.
  """
  n = labels.shape[0]
  if count == 0:
    return np.zeros((0, 2), np.int64)
  if count > available // 4:  # dense regime: enumerate the pool and draw without replacement
    if n * (n - 1) // 2 > MAX_ENUMERATED_PAIRS:
      raise ValueError(f"csbm: {count} {'same' if same else 'different'}-class edges requested "
                       f"out of {available} possible; lower avg_degree")
    u, v = np.triu_indices(n, 1)
    keep = (labels[u] == labels[v]) == same
    u, v = u[keep], v[keep]
    pick = rng.choice(u.shape[0], size=count, replace=False)
    return np.stack([u[pick], v[pick]], 1).astype(np.int64)
  keys = np.zeros((0,), np.int64)
  while keys.shape[0] < count:
    m = 2 * (count - keys.shape[0]) * (1 + int(np.ceil(n * n / (2 * available)))) + 16
    u = rng.integers(0, n, m)
    v = rng.integers(0, n, m)
    ok = (u != v) & ((labels[u] == labels[v]) == same)
    lo, hi = np.minimum(u, v)[ok], np.maximum(u, v)[ok]
    new = lo * n + hi
    _, first = np.unique(np.concatenate([keys, new]), return_index=True)
    keys = np.concatenate([keys, new])[np.sort(first)]  # keep the random order of arrival
  keys = keys[:count]
  return np.stack([keys // n, keys % n], 1)


def edge_homophily(senders, receivers, labels) -> float:
  """Fraction of edges ``senders[e] -> receivers[e]`` joining nodes with the same label."""
  s, r, y = np.asarray(senders), np.asarray(receivers), np.asarray(labels)
  if s.size == 0:
    return float("nan")
  return float(np.mean(y[s] == y[r]))


def _split_masks(rng: np.random.Generator, labels: np.ndarray, num_classes: int,
                 train_per_class: int, num_val: int) -> Sequence[np.ndarray]:
  n = labels.shape[0]
  train = np.zeros(n, bool)
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    k = min(train_per_class, max(1, members.size // 5))
    train[rng.choice(members, size=k, replace=False)] = True
  rest = rng.permutation(np.flatnonzero(~train))
  nv = min(num_val, rest.size // 2)
  val = np.zeros(n, bool)
  val[rest[:nv]] = True
  test = np.zeros(n, bool)
  test[rest[nv:]] = True
  return train, val, test


def csbm(num_nodes: int = 500, num_features: int = 64, num_classes: int = 4,
         homophily: float = 0.8, avg_degree: float = 6.0, feature_kind: str = "binary",
         seed: Seed = 0, *, split: int = 0, p_in: float = 0.2, p_out: float = 0.02,
         noise: float = 0.5, train_per_class: int = 20, num_val: int = 500,
         name: str = "synthetic") -> graph_lib.Graph:
  """Samples a contextual stochastic block model graph (see module docstring).

  Args:
    num_nodes: ``n``.
    num_features: ``d``.
    num_classes: ``C`` (balanced classes).
    homophily: edge homophily in ``[0, 1]``.
    avg_degree: mean undirected degree; ``round(n * avg_degree / 2)`` undirected edges.
    feature_kind: ``"binary"`` or ``"continuous"``.
    seed: an int or a JAX PRNG key; the same seed gives the same graph.
    split: index of the random train/val/test split (same graph, different masks).
    p_in, p_out: Bernoulli rates on / off the class's topic features (binary).
    noise: standard deviation of the Gaussian noise (continuous).
    train_per_class: training nodes per class (capped at a fifth of the class).
    num_val: validation nodes (capped at half of the non-training nodes).
    name: the graph's name.

  Returns:
    An undirected `Graph` without self loops: ``x [n, d] float32``, ``labels [n]``, masks.

  Example:
    >>> g = csbm(num_nodes=200, homophily=0.2, seed=1)
  """
  n, d, k = int(num_nodes), int(num_features), int(num_classes)
  if n < 2 or d < 1 or k < 1 or k > n:
    raise ValueError(f"csbm: need num_nodes >= 2, num_features >= 1, 1 <= num_classes <= "
                     f"num_nodes; got {n}, {d}, {k}")
  if not 0.0 <= homophily <= 1.0:
    raise ValueError(f"csbm: homophily must be in [0, 1], got {homophily}")
  if not avg_degree >= 0:
    raise ValueError(f"csbm: avg_degree must be >= 0, got {avg_degree}")
  if feature_kind not in graph_lib.FEATURE_KINDS:
    raise ValueError(f"csbm: feature_kind must be one of {graph_lib.FEATURE_KINDS}, got "
                     f"{feature_kind!r}")
  if not (0 <= p_out <= 1 and 0 <= p_in <= 1) or noise < 0:
    raise ValueError(f"csbm: need p_in, p_out in [0, 1] and noise >= 0; got {p_in}, {p_out}, "
                     f"{noise}")
  if not isinstance(split, (int, np.integer)) or split < 0:
    raise ValueError(f"csbm: split must be a non-negative int, got {split!r}")
  entropy = _entropy(seed)
  rng = np.random.default_rng(entropy + [0])

  labels = rng.permutation(np.arange(n) % k)
  sizes = np.bincount(labels, minlength=k)
  same_pool = int(np.sum(sizes * (sizes - 1) // 2))
  diff_pool = n * (n - 1) // 2 - same_pool
  m = int(round(n * avg_degree / 2))
  m_same = int(round(homophily * m))
  m_diff = m - m_same
  if m_same > same_pool or m_diff > diff_pool:
    raise ValueError(f"csbm: cannot place {m_same} same-class and {m_diff} different-class "
                     f"edges (at most {same_pool} and {diff_pool}); lower avg_degree or change "
                     f"homophily/num_classes")
  pairs = np.concatenate([_sample_pairs(rng, labels, m_same, True, same_pool),
                          _sample_pairs(rng, labels, m_diff, False, diff_pool)], 0)
  s, r, _ = graph_lib.symmetrize(pairs[:, 0], pairs[:, 1], num_nodes=n)

  topic = rng.permutation(np.arange(d) % k)  # class owning each feature
  on_topic = labels[:, None] == topic[None, :]  # [n, d]
  if feature_kind == "binary":
    x = (rng.random((n, d)) < np.where(on_topic, p_in, p_out)).astype(np.float32)
  else:
    x = np.maximum(0.0, on_topic + noise * rng.standard_normal((n, d))).astype(np.float32)

  split_rng = np.random.default_rng(entropy + [1, int(split)])
  train, val, test = _split_masks(split_rng, labels, k, train_per_class, num_val)
  return graph_lib.make_graph(x, s, r, labels, num_classes=k, feature_kind=feature_kind,
                              train_mask=train, val_mask=val, test_mask=test, name=name)
