"""The Pallas patch-attention kernels (interpret mode) against XLA's causal attention."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megabyte_jax.layers.local_attention import (patch_attention, patch_attention_supported,
                                          reference_patch_attention)


def _xla_attention(qkv):
  """jax.nn.dot_product_attention on each patch; qkv [batch, length, 3, heads, head_dim]."""
  return jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                      is_causal=True, implementation="xla")


def _outputs_and_grads(attention, qkv, weights):
  """For `attention` and for XLA's attention: the output, and the gradient with respect to
  qkv of the random linear functional sum(out * weights); one compiled computation."""
  def value_and_grad(fn, qkv, weights):
    def loss(x):
      out = fn(x)
      return jnp.sum(out.astype(jnp.float32) * weights), out
    (_, out), grad = jax.value_and_grad(loss, has_aux=True)(qkv)
    return out, grad
  both = lambda x, w: (value_and_grad(attention, x, w), value_and_grad(_xla_attention, x, w))
  return jax.jit(both)(qkv, weights)


def _inputs(shape, dtype, seed=0):
  """Random qkv of this shape and dtype, and float32 weights shaped like the output."""
  rng = np.random.default_rng(seed)
  qkv = jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
  batch, length, _, heads, head_dim = shape
  weights = jnp.asarray(rng.standard_normal((batch, length, heads, head_dim), np.float32))
  return qkv, weights


def _assert_close(actual, expected, tol, what):
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert actual.shape == expected.shape, what
  scale = max(1.0, float(np.max(np.abs(expected))))
  err = float(np.max(np.abs(actual - expected)))
  assert err <= tol * scale, f"{what}: max abs diff {err} > {tol} * {scale}"


# (batch, length, heads, head_dim): batch * length a multiple of 64 rows or not (padding),
# several patch lengths (4, 8, 16 and one patch per 64-row block), head_dim 16 to 64.
F32_CASES = [
    (16, 8, 2, 16),
    (13, 8, 4, 32),   # 104 rows: padded to 128
    (5, 4, 2, 16),    # 20 rows: padded to 64
    (3, 16, 2, 64),   # 48 rows: padded to 64
    (2, 64, 1, 16),
]


@pytest.mark.parametrize("batch,length,heads,head_dim", F32_CASES)
def test_float32_matches_xla_attention(batch, length, heads, head_dim):
  qkv, weights = _inputs((batch, length, 3, heads, head_dim), jnp.float32)
  kernel = lambda x: patch_attention(x, interpret=True)
  (out, grad), (ref_out, ref_grad) = _outputs_and_grads(kernel, qkv, weights)
  assert out.dtype == jnp.float32 and out.shape == (batch, length, heads, head_dim)
  assert grad.dtype == jnp.float32 and grad.shape == qkv.shape
  _assert_close(out, ref_out, 1e-5, "output")
  for i, name in enumerate("qkv"):
    _assert_close(grad[:, :, i], ref_grad[:, :, i], 1e-5, f"d{name}")


@pytest.mark.parametrize("batch,length,heads,head_dim", [(16, 8, 2, 64), (13, 8, 4, 32)])
def test_bfloat16_matches_xla_attention(batch, length, heads, head_dim):
  qkv, weights = _inputs((batch, length, 3, heads, head_dim), jnp.bfloat16, seed=1)
  kernel = lambda x: patch_attention(x, interpret=True)
  (out, grad), (ref_out, ref_grad) = _outputs_and_grads(kernel, qkv, weights)
  assert out.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
  # bf16 has an 8-bit mantissa (relative step 2^-8 ~ 0.004): a few roundings apart.
  _assert_close(out, ref_out, 2e-2, "output")
  for i, name in enumerate("qkv"):
    _assert_close(grad[:, :, i], ref_grad[:, :, i], 2e-2, f"d{name}")


@pytest.mark.parametrize("block_rows,block_heads", [(32, 1), (128, 2)])
def test_block_sizes_do_not_change_the_result(block_rows, block_heads):
  qkv, weights = _inputs((12, 8, 3, 4, 16), jnp.float32, seed=2)
  kernel = lambda x: patch_attention(x, interpret=True, block_rows=block_rows,
                                     block_heads=block_heads)
  (out, grad), (ref_out, ref_grad) = _outputs_and_grads(kernel, qkv, weights)
  _assert_close(out, ref_out, 1e-5, "output")
  _assert_close(grad, ref_grad, 1e-5, "dqkv")


def test_reference_matches_xla_attention():
  qkv, _ = _inputs((6, 8, 3, 2, 16), jnp.float32, seed=3)
  _assert_close(jax.jit(reference_patch_attention)(qkv), jax.jit(_xla_attention)(qkv), 1e-5,
                "reference")


def test_patches_are_independent_and_causal():
  """Changing one position changes only the outputs at or after it in its own patch."""
  qkv, _ = _inputs((16, 8, 3, 2, 16), jnp.float32, seed=4)
  attend = jax.jit(lambda x: patch_attention(x, interpret=True))
  base = np.asarray(attend(qkv))
  changed = np.asarray(attend(qkv.at[5, 3].add(1.0)))  # patch 5, position 3: q, k and v
  moved = np.any(changed != base, axis=(2, 3))  # [batch, length]
  expected = np.zeros_like(moved)
  expected[5, 3:] = True
  np.testing.assert_array_equal(moved, expected)


@pytest.mark.parametrize("shape,dtype,supported", [
    ((16, 8, 3, 8, 64), jnp.bfloat16, True),
    ((16, 8, 3, 8, 64), jnp.float16, True),
    ((16, 8, 3, 8, 64), jnp.float32, True),
    ((7, 1, 3, 3, 128), jnp.bfloat16, True),
    ((1, 64, 3, 1, 16), jnp.bfloat16, True),
    ((16, 128, 3, 8, 64), jnp.bfloat16, False),  # length > 64
    ((16, 12, 3, 8, 64), jnp.bfloat16, False),   # length not a power of two
    ((16, 8, 3, 8, 48), jnp.bfloat16, False),    # head_dim not a power of two
    ((16, 8, 3, 8, 8), jnp.bfloat16, False),     # head_dim < 16
    ((16, 8, 3, 8, 256), jnp.bfloat16, False),   # head_dim > 128
    ((16, 8, 3, 8, 64), jnp.int32, False),
    ((16, 8, 3, 8, 64), jnp.float64, False),
    ((16, 8, 2, 8, 64), jnp.bfloat16, False),    # not q, k, v
    ((16, 8, 8, 64), jnp.bfloat16, False),       # not 5-D
])
def test_supported(shape, dtype, supported):
  assert patch_attention_supported(shape, dtype) is supported


def test_bad_input_raises_naming_the_problem():
  with pytest.raises(ValueError, match="length"):
    patch_attention(jnp.zeros((4, 12, 3, 2, 16), jnp.float32), interpret=True)
  with pytest.raises(ValueError, match="head_dim"):
    patch_attention(jnp.zeros((4, 8, 3, 2, 24), jnp.float32), interpret=True)
  with pytest.raises(ValueError, match="dtype"):
    patch_attention(jnp.zeros((4, 8, 3, 2, 16), jnp.int32), interpret=True)
  with pytest.raises(ValueError, match="shape"):
    patch_attention(jnp.zeros((4, 8, 2, 16), jnp.float32), interpret=True)
  with pytest.raises(ValueError, match="block_heads"):
    patch_attention(jnp.zeros((4, 8, 3, 4, 16), jnp.float32), interpret=True, block_heads=3)
  with pytest.raises(ValueError, match="block_rows"):
    patch_attention(jnp.zeros((4, 8, 3, 4, 16), jnp.float32), interpret=True, block_rows=48)


def test_benchmark_script_lowers_both_kernels_for_gpu():
  """`experiments/bench/local_attention_bench.py --lower_only` lowers the forward and
  backward kernels to Triton for CUDA (no GPU needed) and prints its JSON lines."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
      [sys.executable, os.path.join(repo, "experiments", "bench", "local_attention_bench.py"),
       "--lower_only"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  records = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert records[-1] == {"what": "lower_only", "triton_calls": 2}
