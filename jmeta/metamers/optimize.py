"""The metamer optimisation loop: optax Adam, `lax.scan` over steps, `vmap` over seeds.

A parametrisation supplies two pure functions:

* ``init(key) -> (params, aux)``: the optimised pytree (e.g. the soft feature matrix) and a
  non-differentiable auxiliary state (e.g. the top-k threshold carried as a warm start);
* ``loss(params, aux) -> (objective, (act_loss, aux))``: the minimised objective (eq. 5 plus
  regularisers) and the activation loss that is reported and used for early stopping;
* optionally ``select(params, aux) -> aux``: a non-differentiable stage before each gradient
  step (the exact top-k of a binary metamer), run seed by seed with ``lax.map``, which is
  cheaper than batching its data-dependent search.

`optimize` runs S seeds as one compiled program: a chunk of ``config.chunk`` steps is a
``lax.scan`` inside ``jit`` over a step whose gradient and update are vmapped over the seeds; a thin Python loop runs the chunks and reports
progress between them. The chunk length is fixed, so the program compiles once whatever T is;
steps past T, and seeds that reached ``tol``, are masked (their state stops changing).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from jmeta.metamers.config import MetamerConfig

PyTree = Any
InitFn = Callable[[jax.Array], Tuple[PyTree, PyTree]]
LossFn = Callable[[PyTree, PyTree], Tuple[jax.Array, Tuple[jax.Array, PyTree]]]
SelectFn = Callable[[PyTree, PyTree], PyTree]


class Objective(NamedTuple):
  """A metamer parametrisation: what `optimize` runs.

  Attributes:
    init: ``key -> (params, aux)``.
    loss: ``(params, aux) -> (objective, (act_loss, aux))``.
    select: optional ``(params, aux) -> aux``, non-differentiable, run before each step.
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
  run_seconds: float


def _select(pred: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """Per-seed choice: ``pred [S]`` broadcast against leaves with a leading seed axis."""
  def pick(a, b):
    return jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - pred.ndim)), a, b)
  return jax.tree.map(pick, new, old)


def make_chunk_fn(loss_fn: LossFn, config: MetamerConfig,
                  optimizer: optax.GradientTransformation,
                  select_fn: Optional[SelectFn] = None) -> Callable:
  """Builds ``chunk(state) -> (state, act_losses [S, chunk])`` for a batch of seeds (pure).

  One step: ``select_fn`` (non-differentiable, e.g. the exact top-k) runs seed by seed with
  ``lax.map``; the loss gradient and the Adam update are vmapped over the seeds.
  """
  grad_fn = jax.vmap(jax.value_and_grad(loss_fn, has_aux=True))
  update_fn = jax.vmap(optimizer.update)
  total = config.steps
  tol = config.tol

  def one_step(state: LoopState, _):
    aux = state.aux
    if select_fn is not None:
      aux = jax.lax.map(lambda pa: select_fn(*pa), (state.params, aux))
    (_, (act_loss, aux)), grads = grad_fn(state.params, aux)
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

  def chunk(state: LoopState):
    state, losses = jax.lax.scan(one_step, state, None, length=config.chunk)
    return state, losses.T

  return chunk


def optimize(objective: Objective, keys: jax.Array, config: MetamerConfig, *,
             progress: bool = True, desc: str = "metamer") -> LoopResult:
  """Runs the metamer optimisation for every key in ``keys`` as one vmapped program (eq. 6).

  Args:
    objective: the parametrisation (`Objective`); its ``select`` stage runs seed by seed
      (``lax.map``), its loss gradient and the Adam update are vmapped.
    keys: ``[S]`` PRNG keys, one per seed.
    config: the run's `MetamerConfig` (steps, learning rate, tol, chunk).
    progress: show a tqdm bar over steps.
    desc: the bar's label.

  Returns:
    A `LoopResult` with a leading seed axis on every array.
  """
  import time

  from tqdm.auto import tqdm

  optimizer = optax.adam(config.learning_rate)

  def init_state(key):
    params, aux = objective.init(key)
    return LoopState(params=params, opt_state=optimizer.init(params), aux=aux,
                     step=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool),
                     act_loss=jnp.full((), jnp.inf, jnp.float32))

  chunk_fn = jax.jit(make_chunk_fn(objective.loss, config, optimizer, objective.select), donate_argnums=0)
  state = jax.jit(jax.vmap(init_state))(keys)

  t0 = time.perf_counter()
  compiled = chunk_fn.lower(state).compile()
  compile_seconds = time.perf_counter() - t0

  n_chunks = -(-config.steps // config.chunk)
  curves = []
  t0 = time.perf_counter()
  with tqdm(total=config.steps, desc=desc, disable=not progress, leave=False) as bar:
    for _ in range(n_chunks):
      state, losses = compiled(state)
      curves.append(losses)
      done = jax.device_get(state.done)
      steps = jax.device_get(state.step)
      bar.update(int(min(steps.max(), config.steps)) - bar.n)
      bar.set_postfix(act_loss=float(jnp.nanmean(jnp.where(jnp.isfinite(state.act_loss),
                                                           state.act_loss, jnp.nan))))
      if bool(done.all()):
        break
  jax.block_until_ready(state)
  run_seconds = time.perf_counter() - t0
  losses = jnp.concatenate(curves, axis=1)[:, :config.steps]
  steps = jnp.minimum(state.step, config.steps)
  return LoopResult(params=state.params, aux=state.aux, losses=losses, steps=steps,
                    compile_seconds=compile_seconds, run_seconds=run_seconds)
