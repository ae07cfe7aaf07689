#!/usr/bin/env python3
"""Can a GEMM with the MLP's GELU fused into it beat cuBLAS plus XLA's separate pass?

    python3 experiments/bench/fused_gemm_bench.py                 # on a GPU
    python3 experiments/bench/fused_gemm_bench.py --interpret     # CPU smoke test, small

The MLP activation passes are 4.4 ms of the reference step (BENCHMARKS.md, issue 7). They
would vanish into the matmuls if the GELU ran in the epilogue of the MLP's input matmul
(forward: write `h` and `gelu(h)`) and its derivative in the epilogue of the backward one
(`dh = (dy @ W_out^T) * gelu'(h)`). XLA fuses neither, so this script measures the best a
JAX user can write, at the reference shape's two MLPs (local: `[65536, 512] x [512, 2048]`,
global: `[8192, 1024] x [1024, 4096]`, bf16):

  - XLA: the matmul alone (cuBLAS), matmul + GELU, matmul + GELU derivative (two kernels).
  - Pallas (Triton): one kernel per row/column tile, float32 accumulation over K in a loop,
    the same three variants with the GELU (derivative) applied to the accumulator in
    registers, for several tile shapes, warps and pipeline stages.
  - `--mosaic` (Hopper only): the plain matmul of JAX's warp-specialized TMA/WGMMA kernel,
    `jax.experimental.pallas.ops.gpu.hopper_matmul_mgpu`, for the best case of a Pallas
    GEMM on this GPU.

Prints one JSON line per measurement (median of `--repeats` runs of `--iters` calls, in
microseconds) with the largest difference from XLA's result.
"""

import argparse
import functools
import json
import math
import statistics
import time

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

_C = math.sqrt(2 / math.pi)
SHAPES = {"local": (65536, 512, 2048), "global": (8192, 1024, 4096)}
# (block_m, block_n, block_k, num_warps, num_stages)
CONFIGS = [(128, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3),
           (256, 128, 64, 8, 3), (128, 256, 32, 8, 4), (128, 128, 32, 4, 4),
           (64, 256, 64, 4, 3), (256, 128, 32, 8, 4), (128, 256, 64, 8, 4)]


def gelu(x):
  """tanh GELU, as `jax.nn.gelu` (approximate=True)."""
  return 0.5 * x * (1 + jnp.tanh(_C * (x + 0.044715 * x * x * x)))


def gelu_grad(x):
  """d gelu(x) / dx of the tanh GELU."""
  t = jnp.tanh(_C * (x + 0.044715 * x * x * x))
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * 0.044715 * x * x)


def _kernel(x_ref, w_ref, *refs, block_k, steps, mode, w_transposed):
  """One `[block_m, block_n]` output tile: `x @ w` (or `x @ w^T`) plus the epilogue."""
  block_m = x_ref.shape[0]
  block_n = w_ref.shape[0] if w_transposed else w_ref.shape[1]
  dims = (((1,), (1,)), ((), ())) if w_transposed else (((1,), (0,)), ((), ()))

  def body(i, acc):
    x = x_ref[:, pl.ds(i * block_k, block_k)]
    w = w_ref[:, pl.ds(i * block_k, block_k)] if w_transposed else (
        w_ref[pl.ds(i * block_k, block_k), :])
    return acc + jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, steps, body, jnp.zeros((block_m, block_n), jnp.float32))
  if mode == "plain":
    refs[0][...] = acc.astype(refs[0].dtype)
  elif mode == "gelu":                       # outputs h and gelu(h)
    h = acc.astype(refs[0].dtype)
    refs[0][...] = h
    refs[1][...] = gelu(h.astype(jnp.float32)).astype(refs[1].dtype)
  else:                                      # "gelu_grad": input h, output acc * gelu'(h)
    h_ref, out_ref = refs
    out_ref[...] = (acc * gelu_grad(h_ref[...].astype(jnp.float32))).astype(out_ref.dtype)


def fused_matmul(x, w, h=None, *, mode, config, w_transposed=False, interpret=False):
  """`x [m, k] @ w [k, n]` (or `w [n, k]` transposed) with a `mode` epilogue, in Pallas.

  mode "plain": the product; "gelu": `(h, gelu(h))`; "gelu_grad": the product times
  `gelu_grad(h)` for the given `h [m, n]`.
  """
  block_m, block_n, block_k, warps, stages = config
  m, k = x.shape
  n = w.shape[0] if w_transposed else w.shape[1]
  tile = pl.BlockSpec((block_m, block_n), lambda i, j: (i, j))
  in_specs = [pl.BlockSpec((block_m, k), lambda i, j: (i, 0)),
              pl.BlockSpec((block_n, k), lambda i, j: (j, 0)) if w_transposed
              else pl.BlockSpec((k, block_n), lambda i, j: (0, j))]
  args = [x, w]
  out = jax.ShapeDtypeStruct((m, n), x.dtype)
  out_shape, out_specs = out, tile
  if mode == "gelu":
    out_shape, out_specs = (out, out), (tile, tile)
  elif mode == "gelu_grad":
    in_specs.append(tile)
    args.append(h)
  return pl.pallas_call(
      functools.partial(_kernel, block_k=block_k, steps=k // block_k, mode=mode,
                        w_transposed=w_transposed),
      grid=(m // block_m, n // block_n), in_specs=in_specs, out_specs=out_specs,
      out_shape=out_shape, interpret=interpret,
      compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages))(*args)


def time_us(fn, *args, iters, repeats):
  """Median wall time of one call in microseconds (after a compile-and-warm-up call)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(iters):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / iters)
  return statistics.median(times) * 1e6


def max_diff(a, b):
  """Largest absolute difference, as a float."""
  return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--mosaic", action="store_true",
                      help="also time JAX's Hopper (Mosaic GPU) matmul kernel")
  parser.add_argument("--interpret", action="store_true",
                      help="Pallas interpreter at small shapes (CPU smoke test)")
  args = parser.parse_args()
  shapes = SHAPES
  configs = CONFIGS
  if args.interpret:
    shapes = {"small": (256, 128, 256)}
    configs = [(128, 128, 64, 4, 3)]
    args.iters, args.repeats = 1, 1
  timed = functools.partial(time_us, iters=args.iters, repeats=args.repeats)
  print(json.dumps({"what": "env", "jax": jax.__version__,
                    "device": jax.devices()[0].device_kind}), flush=True)
  for name, (m, k, n) in shapes.items():
    key_x, key_w, key_dy, key_w2 = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(key_x, (m, k), jnp.bfloat16)
    w = (jax.random.normal(key_w, (k, n)) / math.sqrt(k)).astype(jnp.bfloat16)
    dy = jax.random.normal(key_dy, (m, k), jnp.bfloat16)
    w_out = (jax.random.normal(key_w2, (n, k)) / math.sqrt(n)).astype(jnp.bfloat16)
    xla_mm = jax.jit(lambda x, w: x @ w)
    xla_gelu = jax.jit(lambda x, w: (lambda h: (h, jax.nn.gelu(h)))(x @ w))
    xla_grad = jax.jit(lambda dy, w_out, h: (
        (dy @ w_out.T) * gelu_grad(h.astype(jnp.float32))).astype(h.dtype))
    h, act = xla_gelu(x, w)
    dh = xla_grad(dy, w_out, h)
    flops = 2 * m * k * n
    t_mm = timed(xla_mm, x, w)
    print(json.dumps({"shape": name, "impl": "xla", "matmul_us": round(t_mm, 1),
                      "tflops": round(flops / t_mm / 1e6),
                      "matmul_gelu_us": round(timed(xla_gelu, x, w), 1),
                      "matmul_gelu_grad_us": round(timed(xla_grad, dy, w_out, h), 1)}),
          flush=True)
    for config in configs:
      record = {"shape": name, "impl": "pallas_triton", "config": config}
      call = functools.partial(fused_matmul, config=config, interpret=args.interpret)
      try:
        plain = jax.jit(functools.partial(call, mode="plain"))
        t = timed(plain, x, w)
        record.update(matmul_us=round(t, 1), tflops=round(flops / t / 1e6),
                      matmul_diff=max_diff(plain(x, w), h))
        fused = jax.jit(functools.partial(call, mode="gelu"))
        record.update(matmul_gelu_us=round(timed(fused, x, w), 1),
                      gelu_diff=max_diff(fused(x, w)[1], act))
        grad = jax.jit(functools.partial(call, mode="gelu_grad", w_transposed=True))
        record.update(matmul_gelu_grad_us=round(timed(grad, dy, w_out, h), 1),
                      gelu_grad_diff=max_diff(grad(dy, w_out, h), dh))
      except Exception as e:  # pylint: disable=broad-except
        record["error"] = repr(e)[:300]
      print(json.dumps(record), flush=True)
    if args.mosaic:
      from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hopper
      dim = hopper.MatmulDimension
      for tile_m, tile_n, steps, wg_dim, minor, width in [
          (128, 128, 4, dim.N, dim.N, 1), (128, 128, 4, dim.N, dim.M, 8),
          (128, 64, 4, dim.M, dim.N, 8), (128, 128, 3, dim.M, dim.N, 4)]:
        config = hopper.TuningConfig(
            tile_m=tile_m, tile_n=tile_n, tile_k=64, max_concurrent_steps=steps,
            grid_minor_dim=minor, grid_tile_width=width, wg_dimension=wg_dim)
        record = {"shape": name, "impl": "mosaic_gpu",
                  "config": [tile_m, tile_n, steps, str(wg_dim), str(minor), width]}
        try:
          mm = jax.jit(lambda x, w, c=config: hopper.matmul(x, w, None, c))
          t = timed(mm, x, w)
          record.update(matmul_us=round(t, 1), tflops=round(flops / t / 1e6),
                        matmul_diff=max_diff(mm(x, w), h))
        except Exception as e:  # pylint: disable=broad-except
          record["error"] = repr(e)[:300]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
