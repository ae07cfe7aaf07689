#!/usr/bin/env python3
"""The local model's patch attention on its own: `local_attention.patch_attention` (fused
Pallas kernels) against XLA's attention, correctness then timings.

    python3 experiments/bench/local_attention_bench.py            # on a GPU
    python3 experiments/bench/local_attention_bench.py --sweep    # + block-size variants
    python3 experiments/bench/local_attention_bench.py --interpret --batch 16   # CPU smoke test

Checks forward values and gradients at the reference shape (qkv `[8192, 8, 3, 8, 64]`
bf16: batch 8 x 1,024 patches of 8 bytes, 8 heads of 64) and a few others against
`jax.nn.dot_product_attention(..., implementation="xla")` and a float32 reference, then
times forward and forward + backward (jitted, `block_until_ready`, median of `--repeats`
repeats of `--iters` calls) for the kernel, XLA's attention and the plain reference.
Prints one JSON line per check and measurement, then a summary with GB/s against the
minimum bytes moved. Exit status: 1 if a kernel fails to lower/compile/run (traceback
printed), 2 if a correctness check fails, 0 otherwise.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np

def load_module():
  """The kernels' module (`megabyte_jax.layers.local_attention`)."""
  from megabyte_jax.layers import local_attention
  return local_attention


def emit(**record):
  print(json.dumps(record), flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sweep", action="store_true",
                      help="also time block_rows / block_heads / num_warps variants")
  parser.add_argument("--batch", type=int, default=8192)
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--lower_only", action="store_true",
                      help="only lower to Triton IR for CUDA (works on a CPU-only machine)")
  parser.add_argument("--interpret", action="store_true",
                      help="Pallas interpreter, small shapes (a CPU smoke test of this script)")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp

  la = load_module()
  emit(what="env", jax=jax.__version__, devices=[str(d) for d in jax.devices()])

  if args.lower_only:
    # Pallas -> Triton IR lowering for CUDA, which needs no GPU (the Triton -> PTX compile
    # happens later, in XLA's GPU compiler, and is not covered).
    qkv = jax.ShapeDtypeStruct((args.batch, 8, 3, 8, 64), jnp.bfloat16)
    d_out = jax.ShapeDtypeStruct((args.batch, 8, 8, 64), jnp.bfloat16)
    def f(x, d):
      out, vjp = jax.vjp(la.patch_attention, x)
      return out, vjp(d)[0]
    text = jax.jit(f).trace(qkv, d_out).lower(lowering_platforms=("cuda",)).as_text()
    emit(what="lower_only", triton_calls=text.count("xla.gpu.triton"))
    return
  failed_accuracy = False

  def xla_attention(qkv):
    return jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                        is_causal=True, implementation="xla")

  def fwd_bwd(fn):
    """jit: (qkv, d_out) -> (out, d_qkv); the output is returned so it is not DCE'd."""
    def f(qkv, d_out):
      out, vjp = jax.vjp(fn, qkv)
      return out, vjp(d_out)[0]
    return jax.jit(f)

  def rel_err(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return {"max_abs": float(np.max(np.abs(a - b))),
            "max_abs_over_max_ref": float(np.max(np.abs(a - b)) / np.max(np.abs(b))),
            "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
            "nan": bool(np.isnan(a).any())}

  def check(shape, dtype, tol, **kw):
    """Kernel and XLA (both in dtype) against the float32 jnp reference on the same inputs."""
    nonlocal failed_accuracy
    if args.interpret:
      shape = (min(shape[0], 24),) + tuple(shape[1:])
    rng = np.random.default_rng(sum(shape))
    qkv = jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
    b, l, _, h, d = shape
    d_out = jnp.asarray(rng.standard_normal((b, l, h, d), np.float32)).astype(dtype)
    if args.interpret:
      kw = dict(kw, interpret=True)
    kernel = lambda x: la.patch_attention(x, **kw)
    try:
      out, dqkv = jax.block_until_ready(fwd_bwd(kernel)(qkv, d_out))
    except Exception:  # pylint: disable=broad-except
      traceback.print_exc()
      emit(what="check", shape=shape, dtype=str(jnp.dtype(dtype)), kw=kw, error="failed")
      sys.exit(1)
    try:
      xla_out, xla_dqkv = fwd_bwd(xla_attention)(qkv, d_out)
    except Exception as e:  # pylint: disable=broad-except
      print(f"XLA attention failed for {dtype}: {str(e)[:200]}", flush=True)
      xla_out, xla_dqkv = out, dqkv  # (float16 dots do not run on CPU)
    with jax.default_matmul_precision("highest"):
      ref_out, ref_dqkv = fwd_bwd(la.reference_patch_attention)(
          qkv.astype(jnp.float32), d_out.astype(jnp.float32))
    record = {"what": "check", "shape": shape, "dtype": str(jnp.dtype(dtype)), "kw": kw}
    worst = 0.0
    for name, a, x, r in [("out", out, xla_out, ref_out)] + [
        (f"d{n}", dqkv[:, :, i], xla_dqkv[:, :, i], ref_dqkv[:, :, i])
        for i, n in enumerate("qkv")]:
      record[name] = {"kernel_vs_xla": rel_err(a, x), "kernel_vs_f32": rel_err(a, r),
                      "xla_vs_f32": rel_err(x, r)}
      worst = max(worst, record[name]["kernel_vs_f32"]["max_abs_over_max_ref"])
      if record[name]["kernel_vs_f32"]["nan"]:
        worst = math.inf
    record["ok"] = worst <= tol
    emit(**record)
    failed_accuracy |= not record["ok"]

  # 1. Correctness: the target shape, then other lengths / head dims / padding / float32.
  check((args.batch, 8, 3, 8, 64), jnp.bfloat16, 2e-2)
  check((1000, 8, 3, 8, 64), jnp.bfloat16, 2e-2)   # 8000 rows: padded to 8064
  check((2048, 4, 3, 8, 64), jnp.bfloat16, 2e-2)
  check((512, 16, 3, 4, 32), jnp.float16, 2e-2)
  check((128, 64, 3, 2, 128), jnp.bfloat16, 2e-2)
  check((256, 8, 3, 4, 64), jnp.float32, 1e-4)
  check((256, 8, 3, 8, 64), jnp.bfloat16, 2e-2, block_heads=1)
  check((256, 8, 3, 8, 64), jnp.bfloat16, 2e-2, block_rows=32)

  # 2. Timings at the target shape.
  shape = (args.batch, 8, 3, 8, 64)
  rng = np.random.default_rng(0)
  qkv = jnp.asarray(rng.standard_normal(shape, np.float32)).astype(jnp.bfloat16)
  d_out = jnp.asarray(rng.standard_normal(shape[:2] + shape[3:], np.float32)).astype(
      jnp.bfloat16)
  itemsize = 2
  qkv_bytes = qkv.size * itemsize
  out_bytes = qkv_bytes // 3
  min_bytes = {"fwd": qkv_bytes + out_bytes,  # read qkv, write out
               # + backward: read qkv and d_out, write d_qkv
               "fwd_bwd": qkv_bytes + out_bytes + qkv_bytes + out_bytes + qkv_bytes}

  def bench(fn, *fn_args):
    jax.block_until_ready(fn(*fn_args))  # compile and warm up
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      for _ in range(args.iters):
        result = fn(*fn_args)
      jax.block_until_ready(result)
      times.append((time.perf_counter() - start) / args.iters)
    return statistics.median(times) * 1e3, min(times) * 1e3

  variants = [("patch_attention", lambda x: la.patch_attention(x, interpret=args.interpret)),
              ("xla_dot_product_attention", xla_attention),
              ("reference_jnp", la.reference_patch_attention)]
  # A few tuning variants always (fewer heads per program: more programs, smaller tail);
  # the whole grid with --sweep.
  configs = [dict(block_heads=1), dict(block_heads=2), dict(num_warps=8)]
  if args.sweep:
    configs = [dict(block_rows=r, block_heads=g, num_warps=w)
               for r in (32, 64, 128) for g in (1, 2, 4, 8) for w in (4, 8)]
  for kw in configs:
    variants.append((f"patch_attention{kw}",
                     lambda x, kw=kw: la.patch_attention(x, interpret=args.interpret, **kw)))
  summary = []
  for name, fn in variants:
    for mode, jitted, fn_args in [("fwd", jax.jit(fn), (qkv,)),
                                  ("fwd_bwd", fwd_bwd(fn), (qkv, d_out))]:
      try:
        median_ms, min_ms = bench(jitted, *fn_args)
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()
        emit(what="time", name=name, mode=mode, error="failed")
        if name == "patch_attention":
          sys.exit(1)
        continue
      gb_per_s = min_bytes[mode] / (median_ms * 1e-3) / 1e9
      emit(what="time", name=name, mode=mode, shape=shape, dtype="bfloat16",
           median_ms=round(median_ms, 4), min_ms=round(min_ms, 4),
           min_bytes_gb=round(min_bytes[mode] / 1e9, 4), gb_per_s=round(gb_per_s, 1))
      summary.append(f"{name:60s} {mode:8s} {median_ms:8.4f} ms {gb_per_s:7.0f} GB/s")

  print("\nsummary (median; GB/s = minimum bytes moved / time):")
  print("\n".join(summary), flush=True)

  if failed_accuracy:
    print("ACCURACY CHECK FAILED", flush=True)
    sys.exit(2)


if __name__ == "__main__":
  main()
