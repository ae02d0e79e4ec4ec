"""The metamer optimisation loop: optax Adam, `lax.scan` over steps, `vmap` over seeds.

A parametrisation is a *spec*: a hashable, static description (the frozen model, the target
layer, the `MetamerConfig`, ...) whose ``objective()`` returns an `Objective` of pure functions
of the dynamic *data* (trained params, graph, reference activation):

* ``init(key, data) -> (params, aux)``: the optimised pytree (e.g. the soft feature matrix) and a
  non-differentiable auxiliary state (e.g. the top-k threshold carried as a warm start);
* ``loss(params, aux, data) -> (objective, (act_loss, aux))``: the minimised objective (eq. 5
  plus regularisers) and the activation loss that is reported and used for early stopping;
* optionally ``select(params, aux, data) -> aux``: a non-differentiable stage before each
  gradient step (the exact top-k of a binary metamer), run seed by seed with ``lax.map``, which
  is cheaper than batching its data-dependent search.

`optimize` runs S seeds as one compiled program: a chunk of ``config.chunk`` steps is a
``lax.scan`` inside ``jit`` over a step whose gradient and update are vmapped over the seeds; a
thin Python loop runs the chunks and reports progress between them. The chunk length is fixed,
so the program compiles once whatever T is; steps past T, and seeds that reached ``tol``, are
masked (their state stops changing). The jitted programs are module-level functions with the
spec as a static argument, so a second run with an equal spec and same shapes (another trained
model of the same architecture, another seed batch) reuses the compiled program. Between chunks
the loop can snapshot its state to a file and a later call resume from it
(`jmeta.metamers.snapshot`).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta.metamers import snapshot as snap
from jmeta.metamers.config import MetamerConfig

PyTree = Any
InitFn = Callable[[jax.Array, PyTree], Tuple[PyTree, PyTree]]
LossFn = Callable[[PyTree, PyTree, PyTree], Tuple[jax.Array, Tuple[jax.Array, PyTree]]]
SelectFn = Callable[[PyTree, PyTree, PyTree], PyTree]


class Objective(NamedTuple):
  """A metamer parametrisation: what `optimize` runs.

  Attributes:
    init: ``(key, data) -> (params, aux)``.
    loss: ``(params, aux, data) -> (objective, (act_loss, aux))``.
    select: optional ``(params, aux, data) -> aux``, non-differentiable, run before each step.
    k: the static number of ones of a binary metamer (``None`` if it has none).
  """
  init: InitFn
  loss: LossFn
  select: Optional[SelectFn] = None
  k: Optional[int] = None


class LoopState(NamedTuple):
  """Per-seed state of the loop (a leading seed axis is added by vmap)."""
  params: PyTree
  opt_state: PyTree
  aux: PyTree
  step: jax.Array       # int32 scalar: steps taken
  done: jax.Array       # bool scalar: reached tol
  act_loss: jax.Array   # float32 scalar: last activation loss


class LoopResult(NamedTuple):
  params: PyTree        # leading axis S
  aux: PyTree           # leading axis S
  losses: jax.Array     # [S, steps_run] activation loss before each step (eq. 5)
  steps: jax.Array      # [S] steps taken per seed
  compile_seconds: float
  run_seconds: float    # summed over the sessions of a resumed run
  resumed_steps: int = 0  # steps restored from a snapshot (0: a fresh run)


def _select(pred: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """Per-seed choice: ``pred [S]`` broadcast against leaves with a leading seed axis."""
  def pick(a, b):
    return jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - pred.ndim)), a, b)
  return jax.tree.map(pick, new, old)


def make_chunk_fn(loss_fn: LossFn, config: MetamerConfig,
                  optimizer: optax.GradientTransformation,
                  select_fn: Optional[SelectFn] = None) -> Callable:
  """Builds ``chunk(groups, data) -> (groups, act_losses [S, chunk])``.

  ``groups`` is a tuple of `LoopState` batches (each with a leading seed axis); a step runs the
  groups one after another (unrolled in the program) and, within a group, vmaps over seeds:
  ``select_fn`` (non-differentiable, e.g. the exact top-k) runs seed by seed with ``lax.map``;
  the loss gradient and the Adam update are vmapped.
  """
  grad_fn = jax.vmap(jax.value_and_grad(loss_fn, has_aux=True), in_axes=(0, 0, None))
  update_fn = jax.vmap(optimizer.update)
  total = config.steps
  tol = config.tol

  def one_step(data, state: LoopState, _):
    aux = state.aux
    if select_fn is not None:
      aux = jax.lax.map(lambda pa: select_fn(*pa, data), (state.params, aux))
    (_, (act_loss, aux)), grads = grad_fn(state.params, aux, data)
    # Materialise the gradient once: otherwise XLA recomputes it inside each Adam moment fusion.
    grads = jax.lax.optimization_barrier(grads)
    updates, opt_state = update_fn(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    reached = act_loss <= tol if tol > 0 else jnp.zeros_like(state.done)
    active = (state.step < total) & ~state.done
    new = LoopState(params=params, opt_state=opt_state, aux=aux, step=state.step + 1,
                    done=state.done | reached, act_loss=act_loss)
    # A seed that has just reached tol keeps the parameters that reached it; a seed past T or
    # done keeps its whole state. The masked merge reads every array twice, so it runs (as the
    # false branch of a cond, not under vmap) only on steps where some seed is not advancing.
    keep_new = active & ~reached

    def merge(new, old):
      new = new._replace(params=_select(keep_new, new.params, old.params),
                         opt_state=_select(keep_new, new.opt_state, old.opt_state),
                         aux=_select(keep_new, new.aux, old.aux))
      return _select(active, new, old)

    state = jax.lax.cond(jnp.all(keep_new), lambda n, o: n, merge, new, state)
    return state, jnp.where(active, act_loss, jnp.nan)

  def step_groups(data, groups, _):
    # Groups run strictly one after another: the barrier makes group i + 1 wait for group i's
    # new state, so XLA cannot interleave them (which would multiply the working set).
    out, prev = [], None
    for g in groups:
      if prev is not None:
        g, _ = jax.lax.optimization_barrier((g, prev))
      out.append(one_step(data, g, None))
      prev = out[-1][0]
    return tuple(o[0] for o in out), jnp.concatenate([o[1] for o in out])

  def chunk(groups: Tuple[LoopState, ...], data):
    groups, losses = jax.lax.scan(functools.partial(step_groups, data), tuple(groups), None,
                                  length=config.chunk)
    return groups, losses.T

  return chunk


def _init_state(objective: Objective, optimizer, key, data) -> LoopState:
  params, aux = objective.init(key, data)
  return LoopState(params=params, opt_state=optimizer.init(params), aux=aux,
                   step=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool),
                   act_loss=jnp.full((), jnp.inf, jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def init_states(spec, keys: jax.Array, data) -> LoopState:
  """The initial `LoopState` of every seed, ``keys: [S]`` (leading seed axis)."""
  optimizer = optax.adam(spec.config.learning_rate)
  return jax.vmap(lambda k: _init_state(spec.objective(), optimizer, k, data))(keys)


# Below this many optimised entries per seed (1 MB of float32) a seed's arrays stay in cache and
# one vmap over all seeds is fastest; above it, on CPU, seeds run in groups (see MetamerConfig).
_GROUP_MIN_ENTRIES = 1 << 18


def group_size(seed_batch: Optional[int], num_seeds: int, backend: str,
               entries_per_seed: int) -> int:
  """Seeds per vmapped group for `MetamerConfig.seed_batch`.

  ``None`` chooses: on CPU, when a seed optimises at least 2^18 entries (Cora's features: 3.9 M),
  ``ceil(S / 8)`` seeds a group (one seed a group up to S = 8); otherwise all seeds in one group.
  """
  if seed_batch is None:
    big = backend == "cpu" and entries_per_seed >= _GROUP_MIN_ENTRIES
    seed_batch = -(-num_seeds // 8) if big else 0
  return num_seeds if seed_batch <= 0 else min(seed_batch, num_seeds)


def split_groups(state: LoopState, size: int) -> Tuple[LoopState, ...]:
  """Splits a ``[S]``-batched state into groups of ``size`` seeds (the last may be smaller)."""
  num = int(state.step.shape[0])
  return tuple(jax.tree.map(lambda a, i=i: a[i:i + size], state) for i in range(0, num, size))


def merge_groups(groups: Tuple[LoopState, ...]) -> LoopState:
  """Inverse of `split_groups`."""
  return jax.tree.map(lambda *a: jnp.concatenate(a), *groups)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def run_chunk(spec, groups: Tuple[LoopState, ...], data):
  """``config.chunk`` steps of every seed group: ``(groups, act_losses [S, chunk])``."""
  objective = spec.objective()
  chunk = make_chunk_fn(objective.loss, spec.config, optax.adam(spec.config.learning_rate),
                        objective.select)
  return chunk(groups, data)


def optimize(spec, data, keys: jax.Array, *, progress: bool = True,
             desc: str = "metamer", snapshot: Optional[str] = None,
             snapshot_every: float = 300.0) -> LoopResult:
  """Runs the metamer optimisation for every key in ``keys`` as one compiled program (eq. 6).

  The seeds are vmapped, in groups of ``config.seed_batch`` (see `MetamerConfig`). With
  ``snapshot``, the loop state is saved there between chunks every ``snapshot_every`` seconds
  (`jmeta.metamers.snapshot`), a call that finds a snapshot of the same run continues from it,
  and the file is removed once the loop finishes: an interrupted long run loses at most
  ``snapshot_every`` seconds of work and resumes to the result of an uninterrupted run.

  Args:
    spec: a hashable parametrisation with ``config`` (a `MetamerConfig`: steps, learning rate,
      tol, chunk) and ``objective() -> Objective``; its ``select`` stage runs seed by seed
      (``lax.map``), its loss gradient and the Adam update are vmapped.
    data: the pytree of dynamic inputs the objective reads (trained params, graph, ...).
    keys: ``[S]`` PRNG keys, one per seed.
    progress: show a tqdm bar over steps.
    desc: the bar's label.
    snapshot: path of the snapshot file (``.npz``); ``None`` keeps nothing.
    snapshot_every: seconds of optimisation between two snapshots.

  Returns:
    A `LoopResult` with a leading seed axis on every array.
  """
  import time

  from tqdm.auto import tqdm

  config = spec.config
  state = init_states(spec, keys, data)
  num = int(keys.shape[0])
  entries = sum(int(a.size) for a in jax.tree.leaves(state.params)) // num
  size = group_size(config.seed_batch, num, jax.default_backend(), entries)
  state = split_groups(state, size)
  curves, chunks_done, run_before = [], 0, 0.0
  if snapshot is not None:
    fingerprint = snap.run_fingerprint(spec, data, keys, size)
    found = snap.load_snapshot(snapshot, fingerprint, state)
    if found is not None:
      state = jax.tree.map(jnp.asarray, found.groups)
      curves = [jnp.asarray(found.curves)]  # a snapshot follows at least one chunk
      chunks_done, run_before = found.chunks_done, found.run_seconds
  resumed = chunks_done * config.chunk
  t0 = time.perf_counter()
  compiled = run_chunk.lower(spec, state, data).compile()  # reuses the compilation cache
  compile_seconds = time.perf_counter() - t0

  n_chunks = -(-config.steps // config.chunk)
  t0 = last_save = time.perf_counter()
  with tqdm(total=config.steps, desc=desc, disable=not progress, leave=False) as bar:
    bar.update(min(resumed, config.steps))
    done = np.zeros(1, bool)  # a snapshot is never taken once every seed is done
    while chunks_done < n_chunks and not bool(done.all()):
      state, losses = compiled(state, data)
      curves.append(losses)
      chunks_done += 1
      # One host transfer per chunk for the progress bar and the early stop.
      done, steps, last = (np.concatenate(a) for a in zip(*jax.device_get(
          [(g.done, g.step, g.act_loss) for g in state])))
      bar.update(int(min(steps.max(), config.steps)) - bar.n)
      finite = last[np.isfinite(last)]
      if finite.size:
        bar.set_postfix(act_loss=float(finite.mean()))
      now = time.perf_counter()
      if (snapshot is not None and now - last_save >= snapshot_every
          and chunks_done < n_chunks and not bool(done.all())):
        curves = [jnp.concatenate(curves, axis=1)]
        snap.save_snapshot(snapshot, fingerprint, state, np.asarray(curves[0]), chunks_done,
                           run_before + now - t0)
        last_save = time.perf_counter()
  state = merge_groups(jax.block_until_ready(state))
  run_seconds = run_before + time.perf_counter() - t0
  if snapshot is not None and os.path.isfile(snapshot):
    os.remove(snapshot)
  losses = jnp.concatenate(curves, axis=1)[:, :config.steps]
  steps = jnp.minimum(state.step, config.steps)
  return LoopResult(params=state.params, aux=state.aux, losses=losses, steps=steps,
                    compile_seconds=compile_seconds, run_seconds=run_seconds,
                    resumed_steps=resumed)
