"""Training throughput: bytes/s, MFU and peak memory of the jitted train step.

    python experiments/bench/train_throughput.py --config=experiments/configs/reference.py
    python experiments/bench/train_throughput.py --config=experiments/configs/default.py \\
        --config.train.batch_size=256
    python experiments/bench/train_throughput.py --config=experiments/configs/reference.py \\
        --peer=.peer/megabyte_pytorch_bench.py --peer_args="--compile"

Times exactly the step `megabyte_jax.train` runs (`training.setup.TrainSetup`, the one setup
training builds: forward, backward, AdamW with clipping and the learning-rate schedule,
gradient accumulation, the sharding rules, donated state) on batches already on the device,
so the figure is what the model consumes, free of the input pipeline. The batches hold
uniform random bytes, as the peer benchmark feeds, or with `--bytes=data` the config's own
training text, whose skewed byte frequencies are what a real run sees (a scatter-add
embedding gradient, for one, was 16x slower on text than on random bytes; see
BENCHMARKS.md): `--steps` steps per repeat, each repeat ended by `block_until_ready`, the median of `--repeats` repeats after `--warmup` steps
(compilation is reported apart). The step runs on the config's mesh (`--config.mesh.data=2`,
`--config.mesh.fsdp=-1`, ...; default: data parallel over every device). Prints one JSON
line: device, device count, mesh, jax version, config, parameters, bytes per step, step
time, bytes/s, peak memory (of the busiest device), model FLOPs per trained byte
(`megabyte_jax.flops`) and MFU twice: `mfu` against `--peak_tflops` per device (805: the bf16
dense matmul rate measured on an H100, see BENCHMARKS.md) and `mfu_spec` against the datasheet
dense peak `--spec_peak_tflops` (989 TFLOP/s bf16, 1,979 FP8 for the H100/H200 SXM; FP8 when
`model.fp8`), as the MaxText and PaLM reports give it.

With `--peer=SCRIPT` it first runs the peer benchmark (MEGABYTE-pytorch, its own Python
environment through `--peer_pythonpath`) on the same GPU in the same invocation (first, so
that neither holds memory the other needs), then ours, and prints the peer's JSON lines
after ours with our ratio added.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from megabyte_jax import data as data_lib
from megabyte_jax.flops import model_cost
from megabyte_jax.models import build_model
from megabyte_jax.training.losses import byte_nll
from megabyte_jax.training.setup import TrainSetup

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/reference.py",
                                          "Experiment config (its model and train sections).")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_PEAK = flags.DEFINE_float("peak_tflops", 805.0, "Measured matmul peak for MFU, TFLOP/s.")
_SPEC_PEAK = flags.DEFINE_float("spec_peak_tflops", None, "Datasheet dense peak for a second "
                                "MFU, TFLOP/s (default: 989 bf16, or 1,979 with model.fp8, the "
                                "H100/H200 SXM figures).")
_PEER = flags.DEFINE_string("peer", None, "Peer benchmark script to run after ours.")
_PEER_ARGS = flags.DEFINE_string("peer_args", "", "Arguments for the peer script.")
_CHECK = flags.DEFINE_bool("check_numerics", False, "Also compare the loss of the fast path "
                            "(the config as given) with the reference path (float32 compute, "
                            "XLA attention) on the same parameters and batch, and print it.")
_BYTES = flags.DEFINE_enum("bytes", "random", ["random", "data"],
                           "What the timed batches hold: uniform random bytes (as the peer "
                           "benchmark feeds) or the first batches of the config's training "
                           "data (real text: skewed byte frequencies).")
_PEER_PATH = flags.DEFINE_string("peer_pythonpath", "/tmp/peer",
                                 "PYTHONPATH of the peer's own packages.")


def peak_memory() -> int | None:
  """Peak bytes in use on the busiest of this process's devices (on a mesh: per device,
  the largest), or None where the backend does not say."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def host_batches(config, seq_len: int, patch_size: int, count: int,
                 source: str = "random") -> list[np.ndarray]:
  """`count` uint8 batches `[train.batch_size, seq_len]`: uniform random bytes, or (`source`
  "data") the first batches of the config's training pipeline."""
  batch = int(config.train.batch_size)
  if source == "random":
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (batch, seq_len), np.uint8) for _ in range(count)]
  data = data_lib.load_byte_data(config.data, seq_len, patch_size)
  iterator = iter(data_lib.training_batches(
      data.train, seq_len, batch, seed=int(config.get("seed", 0)),
      separator=data_lib.separator_of(config.data), prefetch=0))
  try:
    return [np.asarray(next(iterator)) for _ in range(count)]
  finally:
    iterator.close()


def measure(config, source: str = "random") -> dict:
  """Compiles and times the train step of `config` on its mesh, on batches of `source`
  (see `host_batches`); returns the JSON record."""
  batch = int(config.train.batch_size)
  start = time.perf_counter()
  setup = TrainSetup.create(config)
  model, cfg, mesh, step = setup.model, setup.model_cfg, setup.mesh, setup.train_step
  state = setup.init_state()
  seq_len = cfg.seq_len
  # A few distinct batches, rotated, so no step reads what the previous one left in cache.
  batches = [setup.shard_batch(b)
             for b in host_batches(config, seq_len, getattr(cfg, "patch_size", 1), 4, source)]
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics["loss"])
  compile_s = time.perf_counter() - start
  for i in range(_WARMUP.value):
    state, metrics = step(state, batches[i % 4])
  jax.block_until_ready(state)
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    for i in range(_STEPS.value):
      state, metrics = step(state, batches[i % 4])
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / _STEPS.value)
  step_s = statistics.median(times)
  cost = model_cost(cfg)
  bytes_per_s = batch * seq_len / step_s
  tflops = cost.train_flops_per_byte * bytes_per_s / 1e12
  devices = jax.device_count()
  spec_peak = _SPEC_PEAK.value or (1979.0 if getattr(cfg, "fp8", False) else 989.0)
  return {
      "what": "train_step", "device": jax.devices()[0].device_kind,
      "devices": devices, "mesh": dict(mesh.shape),
      "backend": jax.default_backend(), "jax": jax.__version__,
      "python": platform.python_version(), "model": type(model).__name__,
      "config": cfg.to_dict(), "params": cost.params, "batch": batch, "seq_len": seq_len,
      "bytes": source,
      "grad_accum_steps": setup.grad_accum,
      "bytes_per_step": batch * seq_len, "step_s": round(step_s, 6),
      "step_s_min": round(min(times), 6), "step_s_max": round(max(times), 6),
      "bytes_per_s": round(bytes_per_s), "peak_memory_bytes": peak_memory(),
      "train_flops_per_byte": round(cost.train_flops_per_byte),
      "model_tflops": round(tflops, 2), "mfu": round(tflops / (_PEAK.value * devices), 4),
      "peak_tflops": _PEAK.value, "mfu_spec": round(tflops / (spec_peak * devices), 4),
      "spec_peak_tflops": spec_peak, "compile_s": round(compile_s, 2),
      "loss": float(metrics["loss"])}


def compare_with_reference_path(config) -> dict:
  """Loss of the config's fast path (its compute dtype, attention implementation) and of the
  reference path (float32 compute, XLA attention) on the same parameters and random batch:
  throughput must not come from different numerics. Returns the JSON record."""
  model, cfg = build_model(config.model)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (
      min(int(config.train.batch_size), 8), cfg.seq_len)), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens[:1])["params"]
  reference, _ = build_model({**config.model.to_dict(), "dtype": "float32",
                              "attention_impl": "xla"})
  losses = {}
  for name, m in (("fast", model), ("reference", reference)):
    loss = jax.jit(lambda p, t, m=m: byte_nll(m.apply({"params": p}, t), t).mean())
    losses[name] = float(loss(params, tokens))
  diff = abs(losses["fast"] - losses["reference"])
  return {"what": "numerics_check", "fast_dtype": cfg.dtype,
          "fast_attention": cfg.attention_impl, "loss_fast": losses["fast"],
          "loss_reference": losses["reference"], "abs_diff": diff,
          "rel_diff": diff / abs(losses["reference"])}


def run_peer() -> list[dict]:
  """Runs the peer script (before JAX takes the GPU) and returns its JSON records."""
  env = dict(os.environ, PYTHONPATH=_PEER_PATH.value)
  cmd = [sys.executable, _PEER.value] + shlex.split(_PEER_ARGS.value)
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode or not lines:
    return [{"what": "peer_error", "cmd": cmd, "returncode": done.returncode,
             "stderr_tail": done.stderr[-2000:]}]
  return [json.loads(line) for line in lines]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  # The peer runs first, in its own process: JAX keeps the GPU memory it takes until exit.
  peer = run_peer() if _PEER.value else []
  ours = measure(_CONFIG.value, _BYTES.value)
  print(json.dumps(ours), flush=True)
  if _CHECK.value:
    print(json.dumps(compare_with_reference_path(_CONFIG.value)), flush=True)
  for record in peer:
    if record.get("what") == "train" and record.get("bytes_per_s"):
      record["ours_bytes_per_s"] = ours["bytes_per_s"]
      record["ratio_ours_to_peer"] = round(ours["bytes_per_s"] / record["bytes_per_s"], 3)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  app.run(main)
