"""The fused-GEMM experiment's kernels (`experiments/bench/fused_gemm_bench.py`), run in
Pallas' interpreter on CPU against XLA: the GPU timings in BENCHMARKS.md compare kernels
that compute the same thing."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  path = os.path.join(REPO, "experiments", "bench", "fused_gemm_bench.py")
  spec = importlib.util.spec_from_file_location("fused_gemm_bench", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_gelu_and_its_gradient_match_jax():
  bench = _bench()
  x = jnp.linspace(-6.0, 6.0, 241)
  np.testing.assert_allclose(bench.gelu(x), jax.nn.gelu(x, approximate=True), atol=1e-5)
  np.testing.assert_allclose(bench.gelu_grad(x), jax.vmap(jax.grad(jax.nn.gelu))(x),
                             atol=1e-5)


@pytest.mark.parametrize("config", [(64, 64, 32, 4, 2), (32, 64, 64, 4, 3)])
def test_fused_matmul_epilogues_match_xla(config):
  bench = _bench()
  kx, kw, kd, kv = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.normal(kx, (128, 128), jnp.float32)
  w = jax.random.normal(kw, (128, 192), jnp.float32) / 12
  dy = jax.random.normal(kd, (128, 128), jnp.float32)
  w_out = jax.random.normal(kv, (192, 128), jnp.float32) / 14
  run = lambda *a, **kw_: bench.fused_matmul(*a, config=config, interpret=True, **kw_)
  with jax.default_matmul_precision("highest"):
    h = x @ w
    np.testing.assert_allclose(run(x, w, mode="plain"), h, rtol=1e-5, atol=1e-5)
    got_h, got_act = run(x, w, mode="gelu")
    np.testing.assert_allclose(got_h, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_act, jax.nn.gelu(h), rtol=1e-5, atol=1e-5)
    grad = run(dy, w_out, h, mode="gelu_grad", w_transposed=True)
    np.testing.assert_allclose(grad, (dy @ w_out.T) * bench.gelu_grad(h), rtol=1e-4,
                               atol=1e-5)
