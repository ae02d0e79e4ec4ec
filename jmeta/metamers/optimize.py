"""The metamer optimisation loop: optax Adam, `lax.scan` over steps, `vmap` over seeds.

A parametrisation supplies two pure functions:

* ``init(key) -> (params, aux)``: the optimised pytree (e.g. the soft feature matrix) and a
  non-differentiable auxiliary state (e.g. the top-k threshold carried as a warm start);
* ``loss(params, aux) -> (objective, (act_loss, aux))``: the minimised objective (eq. 5 plus
  regularisers) and the activation loss that is reported and used for early stopping.

`optimize` runs S seeds as one compiled program: a chunk of ``config.chunk`` steps is a
``lax.scan`` inside ``jit``, vmapped over the seeds; a thin Python loop runs the chunks and reports
progress between them. The chunk length is fixed, so the program compiles once whatever T is;
steps past T, and seeds that reached ``tol``, are masked (their state stops changing).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax

from jmeta.metamers.config import MetamerConfig

PyTree = Any
InitFn = Callable[[jax.Array], Tuple[PyTree, PyTree]]
LossFn = Callable[[PyTree, PyTree], Tuple[jax.Array, Tuple[jax.Array, PyTree]]]


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
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def make_chunk_fn(loss_fn: LossFn, config: MetamerConfig,
                  optimizer: optax.GradientTransformation) -> Callable:
  """Builds ``chunk(state) -> (state, act_losses [chunk])`` for one seed (pure, un-jitted)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  total = config.steps
  tol = config.tol

  def one_step(state: LoopState, _):
    (_, (act_loss, aux)), grads = grad_fn(state.params, state.aux)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    reached = act_loss <= tol if tol > 0 else jnp.asarray(False)
    active = (state.step < total) & ~state.done
    new = LoopState(params=params, opt_state=opt_state, aux=aux, step=state.step + 1,
                    done=state.done | reached, act_loss=act_loss)
    # A seed that has just reached tol keeps the parameters that reached it.
    keep_new = active & ~reached
    new = new._replace(params=_select(keep_new, new.params, state.params),
                       opt_state=_select(keep_new, new.opt_state, state.opt_state),
                       aux=_select(keep_new, new.aux, state.aux))
    state = _select(active, new, state)
    return state, jnp.where(active, act_loss, jnp.nan)

  def chunk(state: LoopState):
    return jax.lax.scan(one_step, state, None, length=config.chunk)

  return chunk


def optimize(init_fn: InitFn, loss_fn: LossFn, keys: jax.Array, config: MetamerConfig,
             *, progress: bool = True, desc: str = "metamer") -> LoopResult:
  """Runs the metamer optimisation for every key in ``keys`` as one vmapped program (eq. 6).

  Args:
    init_fn: ``key -> (params, aux)``.
    loss_fn: ``(params, aux) -> (objective, (act_loss, aux))``.
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
    params, aux = init_fn(key)
    return LoopState(params=params, opt_state=optimizer.init(params), aux=aux,
                     step=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool),
                     act_loss=jnp.full((), jnp.inf, jnp.float32))

  chunk_fn = jax.jit(jax.vmap(make_chunk_fn(loss_fn, config, optimizer)), donate_argnums=0)
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
