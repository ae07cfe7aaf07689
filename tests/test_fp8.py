"""FP8 training (`model.fp8`, `megabyte_jax.layers.fp8`): the emulated FP8 einsum and its
gradients against float32, the models against bf16, training and bit-exact resume, the CUDA
lowering to FP8 dots, and decoding.

Tolerances. e4m3 keeps 3 mantissa bits, so each operand element is rounded by up to 2^-4
(6.25%) of itself, a few percent root-mean-square; the rounding errors of a long dot product
are independent and add like its terms, so the result is off by about as much relative to
its norm: measured 3.7-3.8% forward for Gaussian operands (bound 5%) and 5.6-6.1% for the
gradients, which also round the output gradient to e5m2's 2 mantissa bits (bound 8%). Whole
models compound this over the four matmuls of each block: the tiny models' logits differ from
bf16 by 3.3% (MEGABYTE) and 7.7% (byte transformer) of their norm (bound 15%).
"""

import dataclasses
import json
import os
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from megabyte_jax import ByteTransformer, ConfigError, Megabyte, MegabyteConfig
from megabyte_jax.experiment import base_config
from megabyte_jax.inference.decoding import decoder_for
from megabyte_jax.inference.generation import DecodeOptions, cached_logits, generate
from megabyte_jax.layers import StackSpec, fused_decode
from megabyte_jax.layers.fp8 import (AMAX_FLOOR, BACKWARD_DTYPE, FORWARD_DTYPE, dense_einsum,
                                     fp8_einsum, quantize)
from megabyte_jax.models import build_model
from megabyte_jax.models.levels import model_stacks
from megabyte_jax.train import train_and_evaluate
from megabyte_jax.training import train_state as state_lib
from megabyte_jax.training.train_step import make_train_step
from megabyte_jax.training.workdir import (load_config_file, load_trained, resolve_config,
                                           save_config)

from test_training import _config as _run_config   # the tiny runs of the resume test

FORWARD_RTOL = 0.05    # measured 0.037-0.038 (see the module docstring)
GRADIENT_RTOL = 0.08   # measured 0.056-0.061
MODEL_RTOL = 0.15      # measured 0.033 (MEGABYTE), 0.077 (byte transformer)

# The four projections of a block: attention QKV and output, MLP in and out (SwiGLU's shape).
EQUATIONS = [("btd,dchk->btchk", (4, 32, 64), (64, 3, 2, 16)),
             ("bthk,hkd->btd", (4, 32, 2, 16), (2, 16, 64)),
             ("...d,dnf->...nf", (4, 32, 64), (64, 2, 256)),
             ("...f,fd->...d", (4, 32, 256), (256, 64))]


def _rel(got, want) -> float:
  """||got - want|| / ||want||, in float64."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _operands(x_shape, w_shape, out_shape=None, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], x_shape)
  w = 0.1 * jax.random.normal(keys[1], w_shape)
  g = None if out_shape is None else jax.random.normal(keys[2], out_shape)
  return x, w, g


def _dequantized(t, dtype):
  q, scale = quantize(t, dtype)
  return q.astype(jnp.float32) * scale


@pytest.mark.parametrize("fp8_dtype,bound", [(FORWARD_DTYPE, 2.0 ** -4),
                                             (BACKWARD_DTYPE, 2.0 ** -3)])
def test_quantize_maps_amax_to_the_largest_value_and_rounds_to_nearest(fp8_dtype, bound):
  """The largest |element| becomes fp8_max; every element that quantizes to a normal float8
  value is within half a unit in the last place (2^-4 for e4m3, 2^-3 for e5m2) of itself;
  zeros quantize to zeros with a finite scale."""
  t = 3.0 * jax.random.normal(jax.random.key(1), (64, 64))
  q, scale = quantize(t, fp8_dtype)
  assert q.dtype == fp8_dtype and q.shape == t.shape and scale.dtype == jnp.float32
  fp8_max = float(jnp.finfo(fp8_dtype).max)
  np.testing.assert_allclose(float(jnp.max(jnp.abs(q.astype(jnp.float32)))), fp8_max)
  np.testing.assert_allclose(float(scale), float(jnp.max(jnp.abs(t))) / fp8_max, rtol=1e-6)
  q32 = np.asarray(q.astype(jnp.float32))
  normal = np.abs(q32) >= float(jnp.finfo(fp8_dtype).smallest_normal)
  err = np.abs(q32 * float(scale) - np.asarray(t))[normal] / np.abs(np.asarray(t))[normal]
  assert normal.mean() > 0.99 and err.max() <= bound * (1 + 1e-5)
  q, scale = quantize(jnp.zeros((3, 5), jnp.bfloat16), fp8_dtype)
  assert float(scale) == pytest.approx(AMAX_FLOOR / fp8_max, rel=1e-6) and float(scale) > 0
  np.testing.assert_array_equal(np.asarray(q.astype(jnp.float32)), 0.0)


def test_fp8_einsum_is_the_einsum_of_the_quantized_operands():
  """Forward: the float32 einsum of the dequantized e4m3 operands; backward: the einsums of
  the e5m2 output gradient with the e4m3 operands (straight through the quantization)."""
  eq = "btd,dchk->btchk"
  x, w, g = _operands((2, 8, 16), (16, 3, 2, 4), (2, 8, 3, 2, 4))
  hi = dict(precision="highest")
  xd, wd = _dequantized(x, FORWARD_DTYPE), _dequantized(w, FORWARD_DTYPE)
  gd = _dequantized(g, BACKWARD_DTYPE)
  out, vjp = jax.vjp(lambda x, w: fp8_einsum(eq, x, w), x, w)
  dx, dw = vjp(g)
  np.testing.assert_allclose(out, jnp.einsum(eq, xd, wd, **hi), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dx, jnp.einsum("btchk,dchk->btd", gd, wd, **hi), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(dw, jnp.einsum("btd,btchk->dchk", xd, gd, **hi), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("equation,x_shape,w_shape", EQUATIONS)
def test_fp8_einsum_and_its_gradients_match_float32(equation, x_shape, w_shape):
  """Within FORWARD_RTOL and GRADIENT_RTOL of the float32 einsum, relative to the norm."""
  ref_fn = lambda x, w: jnp.einsum(equation, x, w, precision="highest")
  out_shape = jax.eval_shape(ref_fn, jnp.zeros(x_shape), jnp.zeros(w_shape)).shape
  for seed in range(2):
    x, w, g = _operands(x_shape, w_shape, out_shape, seed)
    out = fp8_einsum(equation, x, w)
    assert out.shape == out_shape and out.dtype == jnp.float32
    assert _rel(out, ref_fn(x, w)) < FORWARD_RTOL
    grads = jax.grad(lambda x, w: jnp.sum(fp8_einsum(equation, x, w) * g), (0, 1))(x, w)
    ref = jax.grad(lambda x, w: jnp.sum(ref_fn(x, w) * g), (0, 1))(x, w)
    for got, want in zip(grads, ref):
      assert got.shape == want.shape and _rel(got, want) < GRADIENT_RTOL


def test_zeros_give_zeros_and_zero_gradients():
  eq = "...d,dnf->...nf"
  x, w = jnp.zeros((2, 3, 8)), jnp.zeros((8, 2, 4))
  out, (dx, dw) = jax.value_and_grad(lambda x, w: jnp.sum(fp8_einsum(eq, x, w)), (0, 1))(x, w)
  assert float(out) == 0.0
  for t in (fp8_einsum(eq, x, w), dx, dw):
    np.testing.assert_array_equal(np.asarray(t), 0.0)
  dx = jax.grad(lambda x: jnp.sum(fp8_einsum(eq, x, jnp.ones((8, 2, 4)))))(x)
  assert np.isfinite(np.asarray(dx)).all()


def test_output_and_gradient_dtypes():
  """The output in `dtype` (default x's), each gradient in its operand's dtype."""
  x = jnp.ones((2, 4, 8), jnp.bfloat16)
  w = jnp.ones((8, 1, 3), jnp.float32)
  assert fp8_einsum("...d,dnf->...nf", x, w).dtype == jnp.bfloat16
  out = fp8_einsum("...d,dnf->...nf", x, w, jnp.float16)
  assert out.dtype == jnp.float16
  np.testing.assert_array_equal(np.asarray(out, np.float32), 8.0)
  dx, dw = jax.grad(lambda x, w: jnp.sum(fp8_einsum("...d,dnf->...nf", x, w)), (0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(dw), 8.0, rtol=1e-6)   # 2 * 4 rows of ones


@pytest.mark.parametrize("equation,message", [
    ("btd,dk", "equation"), ("btd,dk->btk,x", "equation"),
    ("bd,...k->bk", "ellipsis"), ("...d,dk->bk", "ellipsis"),
    ("btd,dk->bk", "exactly two or three"),    # t summed over x alone
    ("bdd,dk->bk", "exactly two or three"),    # a repeated index
    ("bt,dk->btk", "ranks")])
def test_equations_that_are_not_plain_products_are_refused(equation, message):
  with pytest.raises(ValueError, match=message):
    fp8_einsum(equation, jnp.ones((2, 3, 4)), jnp.ones((4, 5)))


def test_dense_einsum_is_the_plain_einsum_without_fp8():
  """Without `fp8` the blocks compute exactly what they did before (bit for bit)."""
  spec = StackSpec(dim=8, layers=1, heads=2, head_dim=4, dtype="bfloat16")
  x = jax.random.normal(jax.random.key(0), (2, 5, 8), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (8, 3, 2, 4))
  want = jnp.einsum("btd,dchk->btchk", x, w.astype(jnp.bfloat16))
  np.testing.assert_array_equal(np.asarray(dense_einsum("btd,dchk->btchk", x, w, spec)),
                                np.asarray(want))
  fp8 = dense_einsum("btd,dchk->btchk", x, w, dataclasses.replace(spec, fp8=True))
  assert fp8.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(fp8), np.asarray(fp8_einsum(
      "btd,dchk->btchk", x, w.astype(jnp.bfloat16), jnp.bfloat16)))


def test_the_config_field(megabyte_cfg, transformer_cfg):
  """`fp8`: False by default, a bool, passed into every stack's spec; a saved config without
  it (the checked-in run of 2026-11) loads as fp8=False."""
  for cfg in (megabyte_cfg, transformer_cfg):
    assert cfg.fp8 is False
    assert not any(spec.fp8 for spec in model_stacks(cfg).values())
    assert all(spec.fp8 for spec in model_stacks(cfg.replace(fp8=True)).values())
    for bad in ("yes", 1, None):
      with pytest.raises(ConfigError, match="fp8 must be True or False"):
        cfg.replace(fp8=bad)
  deep = MegabyteConfig(seq_len=32, patch_size=8, global_dim=32, global_layers=1,
                        global_heads=2, local_dim=16, local_layers=1, local_heads=2,
                        patch_sizes=(2, 4), mid_dims=(16,), mid_layers=(1,), mid_heads=(2,),
                        fp8=True)
  assert len(model_stacks(deep)) == 3 and all(s.fp8 for s in model_stacks(deep).values())
  legacy = os.path.join(os.path.dirname(__file__), "data", "legacy_run_2026_11", "config.json")
  with open(legacy, encoding="utf-8") as f:
    assert "fp8" not in json.load(f)["model"]
  _, model_cfg = build_model(load_config_file(legacy).model)
  assert model_cfg.fp8 is False


def test_a_run_may_turn_fp8_on_or_off_when_it_resumes(tmp_path):
  """`fp8` changes how the model computes, not its parameters (a runtime model field)."""
  config = base_config("transformer", seq_len=32, dim=32, layers=1, heads=2)
  save_config(str(tmp_path), config)
  changed = base_config("transformer", seq_len=32, dim=32, layers=1, heads=2, fp8=True)
  assert resolve_config(str(tmp_path), changed) is changed


def _tokens(batch=4, length=32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, length)), jnp.int32)


# The byte transformer runs the same blocks (`dense_einsum`); its closeness is covered by the
# generation test below (cached and full logits, generate).
@pytest.mark.parametrize("kind", ["megabyte"])
def test_fp8_models_are_close_to_bf16_and_learn(kind, megabyte_cfg, transformer_cfg):
  """Logits within MODEL_RTOL of the bf16 model's (same parameters); the parameters stay
  float32; six Adam steps on one batch lower the loss each step."""
  cfg = (megabyte_cfg if kind == "megabyte" else transformer_cfg).replace(dtype="bfloat16")
  cls = Megabyte if kind == "megabyte" else ByteTransformer
  bf16, fp8 = cls(cfg), cls(cfg.replace(fp8=True))
  tokens = _tokens()
  variables = jax.jit(bf16.init)(jax.random.key(0), tokens)
  want = jax.jit(bf16.apply)(variables, tokens)
  got = jax.jit(fp8.apply)(variables, tokens)
  assert got.dtype == want.dtype == jnp.float32
  assert _rel(got, want) < MODEL_RTOL
  optimizer = optax.adam(1e-2)
  state = state_lib.create_train_state(fp8, cfg.seq_len, optimizer, jax.random.key(0))
  dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(state.params)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  step = make_train_step(fp8, optimizer, 0, False)
  losses = []
  for _ in range(6):
    state, metrics = step(state, tokens)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and float(metrics["skipped"]) == 0
  assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_resume_is_bit_exact_with_fp8(corpus, tmp_path):
  """12 steps straight, or 12 steps with the last checkpoint (12) dropped and steps 7..12
  run again from the step-6 checkpoint (of a copy of the straight run): identical
  parameters. Direct scaling keeps no state beside the parameters, so there is nothing else
  to save or restore."""
  config = _run_config(corpus, steps=12)
  config.model.fp8 = True
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_and_evaluate(config, straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "12"))
  assert resolve_config(resumed, None).model.fp8 is True     # the saved config keeps it
  final = train_and_evaluate(None, resumed)
  assert final["step"] == 12
  loaded = load_trained(straight)
  model, params_a = loaded.model, loaded.params
  params_b = load_trained(resumed).params
  assert model.config.fp8
  jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)


def _dot_operand_types(mlir: str) -> list[tuple[str, str]]:
  """The element types of both operands of every `stablehlo.dot_general` in `mlir`."""
  pattern = r"stablehlo\.dot_general .*?: \(tensor<(?:\d+x)*(\w+)>, tensor<(?:\d+x)*(\w+)>\)"
  return re.findall(pattern, mlir)


def test_fp8_train_step_lowers_for_cuda_to_float8_dots(megabyte_cfg):
  """Exported for CUDA (no GPU needed), the train step of an fp8 MEGABYTE (4 blocks, 4 dense
  matmuls each) has 16 forward dots of two e4m3 operands, and 16 dgrad (e5m2 gradient x e4m3
  weight) and 16 wgrad (e4m3 activation x e5m2 gradient) dots; the bf16 model has none.
  XLA's GPU compiler turns such dots into FP8 GEMMs (see the `layers.fp8` docstring)."""
  counts = {}
  for fp8 in (False, True):
    model = Megabyte(megabyte_cfg.replace(dtype="bfloat16", fp8=fp8))
    optimizer = optax.adam(1e-3)
    state = state_lib.abstract_train_state(model, megabyte_cfg.seq_len, optimizer)
    step = make_train_step(model, optimizer, 0, False)
    exported = jax.export.export(step, platforms=["cuda"])(
        state, jax.ShapeDtypeStruct((2, megabyte_cfg.seq_len), jnp.int32))
    types = _dot_operand_types(exported.mlir_module())
    counts[fp8] = {pair: types.count(pair) for pair in set(types) if "f8" in "".join(pair)}
  assert counts[False] == {}
  assert counts[True] == {("f8E4M3FN", "f8E4M3FN"): 16, ("f8E5M2", "f8E4M3FN"): 16,
                          ("f8E4M3FN", "f8E5M2"): 16}


def test_the_fused_decode_kernels_do_not_serve_fp8():
  spec = StackSpec(dim=64, layers=2, heads=4, head_dim=16, dtype="bfloat16")
  assert fused_decode.supported(spec, 1, 8)
  assert not fused_decode.supported(dataclasses.replace(spec, fp8=True), 1, 8)


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_generation_with_an_fp8_model(kind, megabyte_cfg, transformer_cfg):
  """Cached decoding runs the fp8 blocks through XLA even when the fused kernels are asked
  for (the same logits as with them off), and its logits are within MODEL_RTOL of the full
  forward pass (per-tensor scales over one position differ from those over the window, so
  not exactly); `decoding_params` changes no logit of the fp8 forward pass; `generate`
  continues a prompt."""
  base = megabyte_cfg if kind == "megabyte" else transformer_cfg
  cls = Megabyte if kind == "megabyte" else ByteTransformer
  variables = jax.jit(cls(base).init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))
  model = cls(base.replace(dtype="bfloat16", fp8=True))
  tokens = np.asarray(_tokens(2, 16, seed=1))
  full = np.asarray(jax.jit(model.apply)(variables, tokens))[:, 5:]
  cached = np.asarray(cached_logits(model, variables, tokens, 5))
  assert cached.shape == full.shape and _rel(cached, full) < MODEL_RTOL
  if kind == "megabyte":   # the fused kernels serve MEGABYTE's local model only
    asked = cached_logits(model, variables, tokens, 5, DecodeOptions(fused="interpret"))
    np.testing.assert_array_equal(np.asarray(asked), cached)
  params = nn.meta.unbox(variables)["params"]
  prepared = decoder_for(model).prepare(params, 2)
  apply = jax.jit(model.apply)
  np.testing.assert_array_equal(np.asarray(apply({"params": prepared}, tokens)),
                                np.asarray(apply({"params": params}, tokens)))
  out = np.asarray(generate(model, variables, tokens[:, :5], 6, jax.random.key(0),
                            temperature=0.0))
  assert out.shape == (2, 11) and (out[:, :5] == tokens[:, :5]).all()
  assert ((0 <= out) & (out < 256)).all()
