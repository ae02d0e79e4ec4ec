"""Public entry points: `feature_metamers` and `structure_metamers`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import metrics
from jmeta.graph import Graph, to_dense
from jmeta.metamers import feature as feat
from jmeta.metamers import structure as struct
from jmeta.metamers.config import MetamerConfig
from jmeta.metamers.optimize import optimize
from jmeta.metamers.result import MetamerResult

Params = Any


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, graph: Graph, adj=None):
  return model.apply(variables, graph) if adj is None else model.apply(variables, graph, adj=adj)


def _reference(model, params: Params, graph: Graph, config: MetamerConfig, adj=None):
  """Checks the config against the model and returns the reference activation (host side)."""
  if not isinstance(config, MetamerConfig):
    raise TypeError(f"config must be a MetamerConfig, got {type(config).__name__}")
  out = _forward(model, params, graph, adj)
  num_layers = len(out.activations)
  if not 1 <= config.layer <= num_layers:
    raise ValueError(f"MetamerConfig.layer={config.layer} is outside 1..{num_layers}: the model "
                     f"has {num_layers} layers (layer {num_layers} is the logits)")
  h_ref = out.activations[config.layer - 1]
  norm = float(jnp.sum(h_ref ** 2))
  if not np.isfinite(norm):
    raise ValueError(f"the reference activation at layer {config.layer} is not finite")
  if norm == 0.0:
    raise ValueError(f"the reference activation at layer {config.layer} is all zero: the "
                     "normalised activation loss (eq. 5) is undefined")
  return out, h_ref


def _info(graph: Graph, config: MetamerConfig, loop, **extra) -> dict:
  info = {"dataset": graph.name, "num_nodes": graph.num_nodes,
          "num_features": graph.num_features, "feature_kind": graph.feature_kind,
          "compile_seconds": loop.compile_seconds, "run_seconds": loop.run_seconds,
          "resumed_steps": loop.resumed_steps,
          "seed_steps_per_second": float(np.sum(np.asarray(loop.steps)))
                                   / max(loop.run_seconds, 1e-9)}
  info.update(extra)
  return info


def feature_metamers(model, params: Params, graph: Graph, key: jax.Array,
                     config: MetamerConfig, *, feature_kind: str | None = None,
                     progress: bool = True, snapshot: str | None = None,
                     snapshot_every: float = 300.0) -> MetamerResult:
  """Synthesises ``config.num_seeds`` feature metamers of ``graph`` for a frozen model.

  Implements Sec 3.3: eq. (5) at layer ``config.layer``, eq. (7-10) for binary features and
  ``relu`` for continuous ones, Adam over the soft features, all seeds in one vmapped program.

  Args:
    model: a Flax module from `jmeta.models.create_model`.
    params: its trained variables (frozen).
    graph: the reference graph G (features X, structure kept).
    key: PRNG key; seed i uses ``jax.random.split(key, S)[i]``.
    config: the run's `MetamerConfig`.
    feature_kind: the kind of features the model was trained on; must equal
      ``graph.feature_kind`` when given.
    progress: show a progress bar.
    snapshot: a file for the loop state every ``snapshot_every`` seconds; a rerun of the same
      call resumes from it (`jmeta.metamers.optimize.optimize`). ``None``: no snapshots.
    snapshot_every: seconds between snapshots.

  Returns:
    A `MetamerResult` with ``metamers [S, n, d]`` and per-seed metrics ``s_feat``,
    ``s_match``, ``cs_feat``, ``act_loss``, ``act_one_minus_loss``, ``act_cosine``.

  Example:
    >>> res = feature_metamers(model, params, graph, jax.random.key(0),
    ...                        MetamerConfig(layer=1, steps=200, num_seeds=4))
    >>> res.summary()["cs_feat"]
  """
  if feature_kind is not None and feature_kind != graph.feature_kind:
    raise ValueError(f"the model was trained on {feature_kind} features but graph "
                     f"{graph.name!r} has {graph.feature_kind} features")
  out_ref, h_ref = _reference(model, params, graph, config)
  spec = feat.FeatureSpec(model=model, layer=config.layer, feature_kind=graph.feature_kind,
                          config=config, rho_ref=feat.reference_density(graph.x),
                          size=int(graph.x.size))
  data = feat.FeatureData(variables=params, graph=graph, h_ref=h_ref)
  keys = jax.random.split(key, config.num_seeds)
  loop = optimize(spec, data, keys, progress=progress, desc=f"feature metamers L{config.layer}",
                  snapshot=snapshot, snapshot_every=snapshot_every)
  x_meta, scores = _finalize_features(spec, data, out_ref.logits, loop.params, loop.aux)
  scores = {k_: np.asarray(v, np.float64) for k_, v in scores.items()}
  stored = (np.asarray(x_meta).astype(np.uint8) if graph.feature_kind == "binary"
            else np.asarray(x_meta, np.float32))
  density = np.asarray(jnp.mean(x_meta != 0, axis=(1, 2)))
  return MetamerResult(kind="feature", metamers=stored, losses=np.asarray(loop.losses),
                       steps=np.asarray(loop.steps), density=density, metrics=scores,
                       config=config, info=_info(graph, config, loop, k=spec.k))


def _activation_scores(h_ref, h, logits_ref, logits) -> dict:
  loss = metrics.activation_loss(h_ref, h)
  return {"s_match": metrics.match_rate(logits_ref, logits), "act_loss": loss,
          "act_one_minus_loss": 1.0 - loss, "act_cosine": metrics.feature_similarity(h_ref, h)}


@functools.partial(jax.jit, static_argnums=0)
def _finalize_features(spec: feat.FeatureSpec, data: feat.FeatureData, logits_ref,
                       loop_params, loop_aux):
  """Hard metamers ``[S, n, d]`` and their per-seed metrics (eq. 13-15, activation sim)."""
  x_meta = jax.vmap(lambda p, a: feat.hard_features(p["soft"], a, spec.feature_kind))(
      loop_params, loop_aux)

  def one(x):
    out = spec.model.apply(data.variables, data.graph.with_features(x))
    scores = _activation_scores(data.h_ref, out.activations[spec.layer - 1], logits_ref,
                                out.logits)
    scores["s_feat"] = metrics.feature_similarity(data.graph.x, x)
    scores["cs_feat"] = metrics.consistency(scores["s_feat"], scores["s_match"])
    return scores

  return x_meta, jax.lax.map(one, x_meta)


@functools.partial(jax.jit, static_argnums=0)
def _finalize_structure(spec: struct.StructureSpec, data: struct.StructureData, logits_ref,
                        loop_params, loop_aux):
  """Hard adjacencies ``[S, n, n]`` and their per-seed activation metrics."""
  adjs = jax.vmap(lambda s, a: struct.hard_adjacency(s, spec.num_edges, a.threshold))(
      loop_params, loop_aux)

  def one(adj):
    out = spec.model.apply(data.variables, data.graph, adj=adj)
    return _activation_scores(data.h_ref, out.activations[spec.layer - 1], logits_ref,
                              out.logits)

  return adjs, jax.lax.map(one, adjs)


def structure_metamers(model, params: Params, graph: Graph, key: jax.Array,
                       config: MetamerConfig, *, progress: bool = True,
                       wl_iterations: int = 3, snapshot: str | None = None,
                       snapshot_every: float = 300.0) -> MetamerResult:
  """Synthesises ``config.num_seeds`` structure metamers of ``graph`` (Sec 3.4, eq. 11-12).

  The features stay those of ``graph``; the adjacency is a symmetric binary matrix with no self
  loops and the reference's number of undirected edges, seen by the model through its dense
  ``adj=`` path and usual normalisation. Memory is O(n^2) per seed (dense soft adjacency and its
  Adam moments).

  Args:
    model: a Flax module from `jmeta.models.create_model` (supports ``adj=``).
    params: its trained variables (frozen).
    graph: the reference graph (symmetric, no self loops).
    key: PRNG key.
    config: the run's `MetamerConfig`.
    progress: show a progress bar.
    wl_iterations: WL iterations of S_struct (eq. 16).
    snapshot: resumable-run file, as in `feature_metamers`.
    snapshot_every: seconds between snapshots.

  Returns:
    A `MetamerResult` with ``metamers`` = undirected edges ``[S, k, 2]`` and per-seed metrics
    ``s_struct``, ``s_match``, ``cs_struct``, ``act_loss``, ``act_one_minus_loss``,
    ``act_cosine``.
  """
  n = graph.num_nodes
  adj_ref = to_dense(graph)
  a = np.asarray(adj_ref)
  if not np.array_equal(a, a.T) or np.any(np.diag(a) != 0):
    raise ValueError(f"graph {graph.name!r} must be symmetric without self loops for structure "
                     "metamers")
  k = int(np.count_nonzero(np.triu(a, 1)))
  out_ref, h_ref = _reference(model, params, graph, config, adj=adj_ref)
  spec = struct.StructureSpec(model=model, layer=config.layer, config=config, num_nodes=n,
                              num_edges=k)
  data = struct.StructureData(variables=params, graph=graph, h_ref=h_ref)
  keys = jax.random.split(key, config.num_seeds)
  loop = optimize(spec, data, keys, progress=progress,
                  desc=f"structure metamers L{config.layer}", snapshot=snapshot,
                  snapshot_every=snapshot_every)
  adjs, scores = _finalize_structure(spec, data, out_ref.logits, loop.params, loop.aux)
  adjs_np = np.asarray(adjs)
  edges = np.stack([np.argwhere(np.triu(m, 1) > 0).astype(np.int32) for m in adjs_np])
  scores = {k_: np.asarray(v, np.float64) for k_, v in scores.items()}
  s_struct = np.array([metrics.wl_similarity(a, m, iterations=wl_iterations) for m in adjs_np])
  scores["s_struct"] = s_struct
  scores["cs_struct"] = np.asarray(metrics.consistency(s_struct, scores["s_match"]))
  density = np.full(config.num_seeds, k / (n * (n - 1) / 2))
  return MetamerResult(kind="structure", metamers=edges, losses=np.asarray(loop.losses),
                       steps=np.asarray(loop.steps), density=density, metrics=scores,
                       config=config, info=_info(graph, config, loop, k=k))
