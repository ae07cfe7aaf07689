"""The fused one-byte decoding kernels (`megabyte_jax.layers.fused_decode`): run in Pallas'
interpreter on CPU they must equal the XLA path (`Block` with a KV cache) in float32, and
`generate` must give the same bytes with them; their Triton lowering is checked for CUDA
without a GPU (jax lowers for another platform)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megabyte_jax import Megabyte

from megabyte_jax.layers import fused_decode
from megabyte_jax.inference.decoding import (FUSED_LOCAL, DecodeOptions, decoder_for,
                                             unbox_params)
from megabyte_jax.inference.generation import cached_logits
from megabyte_jax.layers import (FusedStack, Mode, StackSpec, TransformerStack, decoding_params,
                                 init_stack_cache)

INTERPRET = DecodeOptions(fused="interpret")


def _fused_step(stack, params, x, cache, index, interpret=True):
  """The stack's DECODE step of one position `x [batch, dim]` through the fused kernels."""
  fused = FusedStack(fused_decode.prepare_stack(params, stack.spec), interpret=interpret)
  y, cache = stack.apply({"params": params}, x[:, None], cache=cache, index=index,
                         mode=Mode.DECODE, fused=fused)
  return y[:, 0], cache


def _stack(spec, batch, length, seed=0):
  """A stack of `spec`, its parameters (biases and norms made non-trivial) and inputs."""
  stack = TransformerStack(spec)
  x = jax.random.normal(jax.random.key(seed), (batch, length, spec.dim))
  params = unbox_params(jax.jit(stack.init)(jax.random.key(seed + 1), x))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 2), len(leaves))
  params = treedef.unflatten([a + 0.1 * jax.random.normal(k, a.shape, a.dtype)
                              for a, k in zip(leaves, keys)])
  return stack, params, x


@pytest.mark.parametrize("activation,norm,use_bias,mlp_ratio,options", [
    ("gelu", "layernorm", True, 4, {}), ("swiglu", "rmsnorm", True, 3, {}),  # SwiGLU: 128
    ("relu", "layernorm", False, 4, {}),
    ("gelu", "layernorm", True, 4, dict(rotary=True, qk_norm=True, token_shift=True))])
def test_fused_steps_equal_the_stack_in_float32(activation, norm, use_bias, mlp_ratio,
                                                options):
  """Position by position, the fused step's outputs and caches equal the full causal pass
  (and hence the XLA cached path) to float32 rounding, for every activation and norm, and
  with rotary positions, QK-norm and the token shift."""
  spec = StackSpec(dim=64, layers=2, heads=4, head_dim=16, activation=activation, norm=norm,
                   use_bias=use_bias, mlp_ratio=mlp_ratio, **options)
  batch, length = 2, 4
  stack, params, x = _stack(spec, batch, length)
  assert fused_decode.supported(spec, batch, length)
  full = stack.apply({"params": params}, x)

  @jax.jit
  def decode(params, x):
    def step(i, carry):
      cache, outs = carry
      y, cache = _fused_step(stack, params, x[:, i], cache, i)
      return cache, outs.at[:, i].set(y)

    return jax.lax.fori_loop(0, length, step,
                             (init_stack_cache(spec, batch, length), jnp.zeros_like(x)))[::-1]

  got, cache = decode(params, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(full), rtol=1e-5, atol=2e-5)
  _, xla_cache = stack.apply({"params": params}, x, cache=init_stack_cache(spec, batch, length),
                             mode=Mode.PREFILL)
  for mine, theirs in zip(cache, xla_cache):
    np.testing.assert_allclose(np.asarray(mine.k), np.asarray(theirs.k), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(mine.v), np.asarray(theirs.v), rtol=1e-5, atol=2e-5)


def test_fused_steps_of_folded_bf16_weights_equal_the_xla_steps():
  """On the weights decoding reads (`decoding_params`: norms folded, bf16 kernels), the fused
  step agrees with the XLA DECODE step in bf16 to bf16 rounding."""
  spec = StackSpec(dim=64, layers=2, heads=4, head_dim=16, dtype="bfloat16")
  stack, params, x = _stack(spec, 1, 4)
  params = decoding_params(params, spec)
  x = x.astype(jnp.bfloat16)
  cache_f = cache_x = init_stack_cache(spec, 1, 4)
  for i in range(4):
    y_f, cache_f = _fused_step(stack, params, x[:, i], cache_f, jnp.int32(i))
    y_x, cache_x = stack.apply({"params": params}, x[:, i:i + 1], cache=cache_x,
                               index=jnp.int32(i), mode=Mode.DECODE)
    np.testing.assert_allclose(np.asarray(y_f, np.float32), np.asarray(y_x[:, 0], np.float32),
                               rtol=0.05, atol=0.05)


def test_generate_with_fused_kernels_matches_the_full_forward_pass(megabyte_cfg):
  """Through `generate`'s loop (prefill ending inside a patch, patch boundaries), the fused
  local step gives the full forward pass's logits to float32 rounding."""
  model = Megabyte(megabyte_cfg)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))
  tokens = np.random.default_rng(1).integers(0, 256, (2, 32)).astype(np.int32)
  full = np.asarray(jax.jit(model.apply)(variables, tokens))[:, 3:]
  decoder = decoder_for(model, INTERPRET)
  assert FUSED_LOCAL in jax.eval_shape(lambda p: decoder.prepare(p, 2),
                                       unbox_params(variables))   # the fused path runs
  cached = np.asarray(cached_logits(model, variables, tokens, 3, options=INTERPRET))
  np.testing.assert_allclose(cached, full, rtol=1e-5, atol=2e-5)


def test_prepare_lays_out_the_local_stack_only_when_fused(megabyte_cfg):
  """`Decoder.prepare` casts matmul weights and adds the fused layout when used."""
  model = Megabyte(megabyte_cfg.replace(dtype="bfloat16"))
  params = unbox_params(jax.eval_shape(model.init, jax.random.key(0),
                                       jnp.zeros((1, 32), jnp.int32)))
  decoder = decoder_for(model, DecodeOptions(fused="off"))
  plain = jax.eval_shape(lambda p: decoder.prepare(p, 1), params)
  assert FUSED_LOCAL not in plain
  assert plain["local_model"]["block_0"]["attn"]["qkv_kernel"].dtype == jnp.bfloat16
  assert plain["local_model"]["block_0"]["attn_norm"]["scale"].dtype == jnp.float32
  decoder = decoder_for(model, INTERPRET)
  layers = jax.eval_shape(lambda p: decoder.prepare(p, 1), params)[FUSED_LOCAL]
  assert len(layers) == megabyte_cfg.local_layers
  dim = megabyte_cfg.local_dim
  assert layers[0]["wqkv"].shape == (3 * dim, dim) and layers[0]["wqkv"].dtype == jnp.bfloat16
  too_many = jax.eval_shape(lambda p: decoder.prepare(p, fused_decode.MAX_BATCH + 1), params)
  assert FUSED_LOCAL not in too_many


def test_supported_and_use_fused():
  """Powers of two, unscanned stacks, small batches; the `fused` option picks the backend."""
  spec = StackSpec(dim=64, layers=2, heads=4, head_dim=16)
  assert fused_decode.supported(spec, 1, 8)
  assert not fused_decode.supported(spec, fused_decode.MAX_BATCH + 1, 8)
  assert not fused_decode.supported(spec, 1, 6)                      # cache length
  assert not fused_decode.supported(spec.__class__(**{**spec.__dict__, "dim": 48}), 1, 8)
  assert not fused_decode.supported(spec.__class__(**{**spec.__dict__, "scan_layers": True}),
                                    1, 8)
  assert fused_decode.use_fused(spec, 1, 8, "auto") == (jax.default_backend() == "gpu")
  assert not fused_decode.use_fused(spec, 1, 8, "off")
  assert fused_decode.use_fused(spec, 1, 8, "interpret")
  with pytest.raises(ValueError, match="fused"):
    fused_decode.use_fused(spec, 1, 8, "fast")
  with pytest.raises(ValueError, match="DecodeOptions.fused"):
    DecodeOptions(fused="fast")
  with pytest.raises(ValueError, match="unroll"):
    DecodeOptions(unroll=0)


def test_kernels_lower_to_triton_for_cuda():
  """The reference local stack's step lowers for CUDA through Pallas' Triton backend (every
  block shape and op accepted), checked without a GPU."""
  spec = StackSpec(dim=512, layers=1, heads=8, head_dim=64, dtype="bfloat16")
  stack = TransformerStack(spec)
  params = unbox_params(jax.eval_shape(stack.init, jax.random.key(0),
                                       jnp.zeros((1, 8, 512))))

  def step(params, x, cache, index):
    return _fused_step(stack, decoding_params(params, spec), x, cache, index, interpret=False)

  exported = jax.export.export(
      jax.jit(step), platforms=["cuda"],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
          params, jax.ShapeDtypeStruct((1, 512), jnp.bfloat16), init_stack_cache(spec, 1, 8),
          jax.ShapeDtypeStruct((), jnp.int32))
  assert exported.mlir_module().count("xla.gpu.triton") == 4
