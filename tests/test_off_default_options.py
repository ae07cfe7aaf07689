"""Options away from their defaults (issue 25).

Each test here guards against a realistic one-line bug that the rest of the suite let
through, because it tests the option only at its default or at its end points: a
temperature other than 1 in cached generation, the middle of the learning-rate decay,
causality in training mode with dropout on, a finite loss with non-finite gradients, and
the dropout key of consecutive (and resumed) training steps.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from megabyte_jax import (ByteTransformer, Megabyte, MegabyteConfig, TransformerConfig,
                          generate)
from megabyte_jax.experiment import base_config
from megabyte_jax.inference.sampling import sample_uncached
from megabyte_jax.training.train_state import TrainState, learning_rate_schedule
from megabyte_jax.training.train_step import make_train_step

T = 32
# The `megabyte_cfg` fixture's model (T=32, P=4), one layer per stack: compiles faster.
TINY = MegabyteConfig(seq_len=T, patch_size=4, global_dim=32, global_layers=1,
                      global_heads=2, local_dim=16, local_layers=1, local_heads=2)
# A one-layer byte transformer for the train-step tests (the step is the same for every
# model; this one compiles in half the time of the MEGABYTE above).
TINY_TRANSFORMER = TransformerConfig(seq_len=T, dim=16, layers=1, heads=2)


def _tokens(batch, length, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32)


def _random_params(model, seed=0):
  """Random parameters for `model`: N(0, 0.1) everywhere, norm scales N(1, 0.1).

  Only the shapes come from `model.init` (`jax.eval_shape`, no compilation): compiling the
  init of a tiny MEGABYTE takes longer on a 2-core CPU than the rest of any test here."""
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                        jnp.zeros((1, T), jnp.int32))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    value = rng.normal(0.0, 0.1, leaf.shape)
    if "scale" in jax.tree_util.keystr(path):
      value += 1.0
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _train_state(model, optimizer, seed=0):
  """A `TrainState` at step 0 with `_random_params`."""
  params = _random_params(model, seed)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def _copy(tree):
  """A fresh copy of every array (the train step donates its state)."""
  return jax.tree_util.tree_map(jnp.copy, tree)


# --- 1. Temperature in cached generation ---------------------------------------------------


def test_cached_sampling_matches_the_uncached_sampler_at_temperature_half():
  """Guards against the temperature being applied twice in cached generation (e.g.
  `sample_logits(logits / temperature, key, temperature, ...)` in `generation._decode`):
  at temperature 1 (the only one the other tests compare) that changes nothing. With the
  same key, the KV-cached and the plain sampler draw the same bytes at temperature 0.5."""
  model = Megabyte(TINY)
  params = _random_params(model)
  # Logits spread over a few nats (as a trained model's): the temperature decides the draws.
  params["head"]["kernel"] = params["head"]["kernel"] * 4.0
  variables = {"params": params}
  prompt = np.frombuffer(b"def f(", np.uint8)
  num_bytes = 20
  plain = sample_uncached(model, variables, prompt, num_bytes, jax.random.key(3),
                          temperature=0.5)
  cached = generate(model, variables, prompt[None], num_bytes, jax.random.key(3),
                    temperature=0.5)
  np.testing.assert_array_equal(np.asarray(cached)[0], plain)
  # The test can tell temperatures apart: the plain sampler at 0.25 draws other bytes.
  colder = sample_uncached(model, variables, prompt, num_bytes, jax.random.key(3),
                           temperature=0.25)
  assert not np.array_equal(colder, plain)


# --- 2. The middle of the learning-rate decay ----------------------------------------------


def _intended_lr(step, steps, warmup, peak, end):
  """Linear warmup 0 -> peak over `warmup` steps, then a half cosine from peak (at `warmup`)
  to `end` (at `steps`), then `end` (optax's `warmup_cosine_decay_schedule` with
  `decay_steps=steps`, which counts the warmup in)."""
  if step < warmup:
    return peak * step / warmup
  if step >= steps:
    return end
  progress = (step - warmup) / (steps - warmup)
  return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))


# (50, 0): no warmup, where the two spans agree; the closed form must hold there too.
@pytest.mark.parametrize("steps, warmup", [(100, 10), (60, 20), (50, 0)])
def test_learning_rate_follows_the_closed_form_in_the_middle_of_the_decay(steps, warmup):
  """Guards against the cosine decay spread over the wrong span (e.g. `decay_steps=steps -
  warmup` passed to `optax.warmup_cosine_decay_schedule`, which subtracts the warmup
  itself): the schedule is then still 0 at step 0, the peak at the end of the warmup and the
  floor at `steps` (the points the other tests check), but reaches the floor too early. Here
  every step of the warmup and of the decay is checked against the closed form."""
  config = base_config("transformer", seq_len=32, dim=8, layers=1, heads=1)
  peak, ratio = 3e-3, 0.1
  config.train.update(steps=steps, warmup_steps=warmup, learning_rate=peak,
                      min_lr_ratio=ratio)
  schedule = learning_rate_schedule(config.train)
  for step in list(range(steps + 1)) + [steps + 7]:
    expected = _intended_lr(step, steps, warmup, peak, peak * ratio)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step
  # A few values written out (steps=100, warmup=10): half-way through the decay the rate is
  # the mean of peak and floor.
  if (steps, warmup) == (100, 10):
    assert float(schedule(5)) == pytest.approx(peak / 2, rel=1e-6)
    assert float(schedule(55)) == pytest.approx(peak * (1 + ratio) / 2, rel=1e-5)


# --- 3. Causality in training mode, with dropout on ----------------------------------------

_DROPOUT = dict(dropout=0.2, embed_dropout=0.2)
LAYOUTS = {
    "two_level": TINY.replace(**_DROPOUT),
    # 3 levels: global patches of 8 bytes, 2 middle units of 4 bytes each, local over 4.
    "three_level": TINY.replace(patch_size=8, patch_sizes=(2, 4), mid_dims=(16,),
                                mid_layers=(1,), mid_heads=(2,), **_DROPOUT),
    "cross_patch": TINY.replace(cross_patch=2, **_DROPOUT),
    "conv": TINY.replace(conv_kernel_sizes=(3, 5), **_DROPOUT),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_no_hidden_leak_in_training_mode_with_dropout(name):
  """Guards against the byte shift skipped on the generic level-input path (e.g.
  `y = y + pos` instead of `y = shift_right(y, pad, axis=2) + pos` in `Megabyte.__call__`),
  the path that training takes with embedding dropout (and every level whose unit is more
  than one byte): the causality tests run the model deterministically, where byte levels
  take the two-hot path instead. Here the model runs as in training (`deterministic=False`,
  embedding and residual dropout on, the same dropout key for both calls, so the same
  masks): changing byte t moves no logit at positions <= t, and does move a later one."""
  cfg = LAYOUTS[name]
  model = Megabyte(cfg)
  variables = {"params": _random_params(model, seed=1)}
  run = jax.jit(lambda v, tokens, key: model.apply(v, tokens, deterministic=False,
                                                  rngs={"dropout": key}))
  apply = lambda tokens, key: np.asarray(run(variables, tokens, key))
  key = jax.random.key(7)
  tokens = _tokens(2, T, seed=1)
  before = apply(tokens, key)
  # Dropout is on: another key gives other logits.
  assert np.abs(apply(tokens, jax.random.key(8)) - before).max() > 1e-3
  for t in range(T):
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 1) % 256
    after = apply(changed, key)
    np.testing.assert_array_equal(before[:, :t + 1], after[:, :t + 1], err_msg=f"t={t}")
    if t + 1 < T:
      assert np.abs(before[:, t + 1:] - after[:, t + 1:]).max() > 1e-6, t


# --- 4. A finite loss with non-finite gradients --------------------------------------------


@jax.custom_vjp
def _nan_gradient(x):
  """The identity, whose gradient is NaN."""
  return x


_nan_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.full_like(g, jnp.nan),))


class _NanGradientModel(nn.Module):
  """A tiny byte transformer whose logits pass through `_nan_gradient`: a finite loss with
  NaN gradients."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens, deterministic=True):
    return _nan_gradient(ByteTransformer(self.config, name="model")(tokens, deterministic))


def test_non_finite_gradients_with_a_finite_loss_skip_the_update():
  """Guards against the non-finite guard of the train step checking only the loss (e.g.
  `finite = jnp.isfinite(loss)` in `train_step.make_train_step`): the other test of the
  guard poisons a parameter, which makes the loss NaN too. Here the loss is finite and only
  the backward pass is NaN; the update must still be skipped (parameters and optimizer state
  unchanged) and reported (`skipped` = 1), while the step counter moves on."""
  model, optimizer = _NanGradientModel(TINY_TRANSFORMER), optax.adamw(1e-3)
  state = _train_state(model, optimizer)
  expected = jax.tree_util.tree_map(np.asarray, state)
  step = make_train_step(model, optimizer, 0, False)
  after, metrics = step(state, jnp.asarray(_tokens(2, T), jnp.uint8))
  assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
  assert int(metrics["skipped"]) == 1
  assert int(after.step) == 1                        # the step (and the data) move on
  for a, b in zip(jax.tree_util.tree_leaves(after.params),
                  jax.tree_util.tree_leaves(expected.params)):
    np.testing.assert_array_equal(np.asarray(a), b)  # nothing changed (and nothing is NaN)
  for a, b in zip(jax.tree_util.tree_leaves(after.opt_state),
                  jax.tree_util.tree_leaves(expected.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), b)


# --- 5. The dropout key of consecutive and resumed steps -----------------------------------


def test_dropout_masks_vary_with_the_step_and_repeat_after_a_resume():
  """Guards against the dropout key not varying with the step (e.g. `rng =
  jax.random.key(seed + 1)` without `fold_in(..., state.step)` in `train_step`): no test
  looked at the masks of two steps. With the same parameters and batch, steps 5 and 6 draw
  different masks (different losses and gradient norms), and step 5 computed again from
  the same state by a freshly built step function (as a resumed run does) draws the same
  masks (bit-identical loss, gradient norm and update)."""
  model = ByteTransformer(TINY_TRANSFORMER.replace(dropout=0.3))
  optimizer = optax.adamw(1e-3)
  state = _train_state(model, optimizer)
  tokens = jnp.asarray(_tokens(2, T, seed=2), jnp.uint8)
  at = lambda n: _copy(state.replace(step=jnp.asarray(n, jnp.int32)))
  step = make_train_step(model, optimizer, seed=0, dropout=True)
  five, m5 = step(at(5), tokens)
  _, m6 = step(at(6), tokens)
  assert float(m5["loss"]) != float(m6["loss"])
  assert float(m5["grad_norm"]) != float(m6["grad_norm"])
  # A resumed run: the state restored as plain host arrays, the step function built again.
  restored = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), at(5))
  resumed = make_train_step(model, optimizer, seed=0, dropout=True)
  again, m5_again = resumed(restored, tokens)
  assert float(m5_again["loss"]) == float(m5["loss"])
  assert float(m5_again["grad_norm"]) == float(m5["grad_norm"])
  for a, b in zip(jax.tree_util.tree_leaves(again.params),
                  jax.tree_util.tree_leaves(five.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
