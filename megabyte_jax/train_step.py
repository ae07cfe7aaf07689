"""The jitted training step: loss, gradients and the optimizer update of a `TrainState`."""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from megabyte_jax import train_state as state_lib
from megabyte_jax.losses import byte_nll


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
                    dropout: bool, schedule: Optional[optax.Schedule] = None) -> Callable:
  """Returns a jitted `(state, tokens) -> (state, metrics)` that donates `state`.

  `tokens` is `[batch, T]` byte ids (uint8 or int32); the loss is the mean next-byte cross-entropy. Dropout keys
  derive from `(seed, step)`, so a resumed run draws the same masks. Metrics: `loss` (nats
  per byte), `grad_norm` and, given the learning-rate `schedule`, `lr` of this update.
  """

  def loss_fn(params, tokens, rng):
    tokens = tokens.astype(jnp.int32)   # batches arrive as uint8 bytes
    rngs = {"dropout": rng} if dropout else None
    logits = model.apply({"params": params}, tokens, deterministic=not dropout, rngs=rngs)
    return byte_nll(logits, tokens).mean()

  def train_step(state: state_lib.TrainState, tokens: jax.Array):
    rng = jax.random.fold_in(jax.random.key(seed + 1), state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, tokens, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads)}
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=(0,))
