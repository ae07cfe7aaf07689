"""The jitted training step: loss, gradients and the optimizer update of a `TrainState`.

One function serves one CPU, one GPU and any mesh: given a `Mesh`, the step is `jax.jit`
with explicit input and output shardings (the state's from `train_state.state_shardings`,
the batch split over the data axes), traced under the logical-axis rules of
`megabyte_jax.sharding`, so the model's activation constraints and parameter layouts
follow the one rules table. Gradient accumulation splits the batch into microbatches
inside the step (a `lax.scan`), so memory holds one microbatch's activations.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from megabyte_jax import config_checks
from megabyte_jax import sharding as sharding_lib
from megabyte_jax.training import train_state as state_lib
from megabyte_jax.training.losses import byte_nll


def mesh_context(mesh: Optional[jax.sharding.Mesh],
                 rules: Sequence[tuple[str, Any]] = sharding_lib.LOGICAL_RULES):
  """A context in which `mesh` is the current mesh and `rules` map logical axis names
  (a no-op context without a mesh)."""
  if mesh is None:
    return contextlib.nullcontext()
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(rules))
  return stack


def all_finite(tree: Any) -> jax.Array:
  """A boolean scalar: whether every value of the floating-point arrays of `tree` is
  finite (True for a tree without any)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.asarray([jnp.isfinite(x).all() for x in leaves] or [True]))


def computed_once(flag: jax.Array) -> jax.Array:
  """The boolean scalar `flag`, computed once however many ops read it.

  XLA copies a chain of cheap scalar ops (the `&` of one flag per array that `all_finite`
  builds) into every fused kernel that reads its result: the step's `where(finite, ...)`
  over each of N arrays of parameters and optimizer state then holds N copies of an
  N-long chain. Passed through `exp`, an op XLA computes once and never copies, the chain
  is computed once: the step compiles about three times faster (XLA's CPU backend, a tiny
  model of ~200 arrays), with the same values.
  """
  return jnp.exp(jnp.where(flag, 0.0, -jnp.inf)) > 0.5     # exp(0) = 1, exp(-inf) = 0


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
                    dropout: bool, schedule: Optional[optax.Schedule] = None, *,
                    grad_accum_steps: int = 1, z_loss: float = 0.0,
                    mesh: Optional[jax.sharding.Mesh] = None,
                    state_sharding: Optional[state_lib.TrainState] = None,
                    rules: Sequence[tuple[str, Any]] = sharding_lib.LOGICAL_RULES
                    ) -> Callable:
  """Returns a jitted `(state, tokens) -> (state, metrics)` that donates `state`.

  `tokens` is `[batch, T]` byte ids (uint8 or int32); the loss is the mean next-byte
  cross-entropy. Dropout keys derive from `(seed, step)` (and the microbatch), so a resumed
  run draws the same masks. Metrics: `loss` (nats per byte), `grad_norm`, `skipped` (1
  when the loss or gradient was not finite, or the update would have made a parameter or
  the optimizer state non-finite, and the update was skipped, leaving parameters and
  optimizer state unchanged) and, given the learning-rate `schedule`, `lr`.

  Args:
    grad_accum_steps: microbatches per update (must divide the batch); the update equals
      the one of the whole batch, up to float rounding.
    z_loss: weight of the auxiliary loss `mean(logsumexp(logits) ** 2)` (PaLM's z-loss),
      which keeps the softmax normaliser near 1; it is added to the objective that is
      differentiated, not to the reported `loss` (0: off).
    mesh, state_sharding: shard the step over `mesh`: the state in `state_sharding` (from
      `train_state.state_shardings`), the batch split over the data axes, metrics
      replicated. Without a mesh the step runs wherever its inputs are.
    rules: logical-axis rules (default: `sharding.LOGICAL_RULES`).
  """
  config_checks.check_grad_accum_steps(grad_accum_steps)
  config_checks.check_z_loss(z_loss)

  def loss_fn(params, tokens, rng):
    """`(objective, mean nll)`: the objective adds the z-loss to the nll when it is on."""
    tokens = tokens.astype(jnp.int32)   # batches arrive as uint8 bytes
    rngs = {"dropout": rng} if dropout else None
    logits = model.apply({"params": params}, tokens, deterministic=not dropout, rngs=rngs)
    nll = byte_nll(logits, tokens).mean()
    if not z_loss:
      return nll, nll
    log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)        # [batch, T]
    return nll + z_loss * jnp.mean(jnp.square(log_z)), nll

  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

  def grad_fn(params, tokens, rng):
    """`(mean nll, gradients of the objective)`."""
    (_, nll), grads = value_and_grad(params, tokens, rng)
    return nll, grads

  def accumulated(params, tokens, rng):
    """Mean loss and gradients over `grad_accum_steps` equal microbatches."""
    batch, length = tokens.shape   # [batch, T]
    config_checks.check_microbatches(batch, grad_accum_steps)
    # Row r goes to microbatch r % steps: every data shard holds rows of every microbatch.
    micro = tokens.reshape(batch // grad_accum_steps, grad_accum_steps, length).swapaxes(0, 1)

    def body(carry, xs):
      loss_sum, grad_sum = carry
      i, rows = xs
      rows = nn.with_logical_constraint(rows, ("activation_batch", None))
      loss, grads = grad_fn(params, rows, jax.random.fold_in(rng, i))
      grad_sum = jax.tree_util.tree_map(lambda a, g: a + g.astype(a.dtype), grad_sum, grads)
      return (loss_sum + loss, grad_sum), None

    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (loss_sum, grad_sum), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(grad_accum_steps), micro))
    scale = 1.0 / grad_accum_steps
    grads = jax.tree_util.tree_map(lambda g, p: (g * scale).astype(p.dtype), grad_sum, params)
    return loss_sum * scale, grads

  def train_step(state: state_lib.TrainState, tokens: jax.Array):
    rng = jax.random.fold_in(jax.random.key(seed + 1), state.step)
    if grad_accum_steps == 1:
      loss, grads = grad_fn(state.params, tokens, rng)
    else:
      loss, grads = accumulated(state.params, tokens, rng)
    grad_norm = optax.tree_utils.tree_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient, or an update that makes a parameter or the optimizer
    # state non-finite (an overflow from finite values), skips the update: parameters and
    # optimizer state stay as they were (the step counter still advances, with the data).
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
              & all_finite(opt_state))
    finite = computed_once(finite)
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state))
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "skipped": (~finite).astype(jnp.int32)}
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return new_state, metrics

  if mesh is None:
    return jax.jit(train_step, donate_argnums=(0,))
  if state_sharding is None:
    raise ValueError("make_train_step: a mesh needs the state's shardings (state_sharding)")
  replicated = sharding_lib.replicated(mesh)
  jitted = jax.jit(train_step, donate_argnums=(0,),
                   in_shardings=(state_sharding, sharding_lib.batch_sharding(mesh, rules)),
                   out_shardings=(state_sharding, replicated))

  def step(state, tokens):
    with mesh_context(mesh, rules):
      return jitted(state, tokens)

  return step
