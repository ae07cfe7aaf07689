"""Where a training step's time goes: a `jax.profiler` trace, summarized per kernel.

    python experiments/bench/profile_step.py --config=experiments/configs/reference.py

Builds the train step exactly as training and `train_throughput.py` do
(`training.setup.TrainSetup`, with its learning-rate schedule), traces `--steps` steps after
compilation and warm-up with `jax.profiler.trace` (the trace stays in `--trace_dir` for
TensorBoard / XProf), then reads it back with `jax.profiler.ProfileData` and prints one
JSON line per kernel group, largest first: total device time per step, share of the step,
and the number of launches per step. Kernel names are grouped by their stem (trailing
numbers dropped), e.g. all `loop_multiply_fusion_N` together; `--by_name` keeps them apart.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from megabyte_jax.training.setup import TrainSetup

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/reference.py",
                                          "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps traced.")
_TOP = flags.DEFINE_integer("top", 30, "Kernel groups printed.")
_DIR = flags.DEFINE_string("trace_dir", "/tmp/megabyte_profile", "Where the trace goes.")
_BY_NAME = flags.DEFINE_bool("by_name", False, "Group by full kernel name.")


def kernel_times(trace_dir: str) -> tuple[dict, dict, float]:
  """Sums device-side event durations (ns) per name over the GPU/TPU planes of the newest
  trace in `trace_dir`; returns (total ns per name, count per name, span ns)."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no .xplane.pb trace under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(paths[-1])
  totals, counts = collections.defaultdict(float), collections.defaultdict(int)
  start, end = None, None
  for plane in data.planes:
    if not re.search(r"/device:(GPU|TPU):0$", plane.name):
      continue
    for line in plane.lines:
      if line.name not in ("XLA Ops", "Kernels") and "Stream" not in line.name:
        continue
      for event in line.events:
        name = event.name if _BY_NAME.value else re.sub(r"[._]\d+$", "", event.name)
        totals[(line.name, name)] += event.duration_ns
        counts[(line.name, name)] += 1
        start = event.start_ns if start is None else min(start, event.start_ns)
        end = max(end or 0, event.start_ns + event.duration_ns)
  if not totals:   # say what the trace holds, to adapt the filter above
    print(json.dumps({"planes": {p.name: [l.name for l in p.lines] for p in data.planes}})[:3000])
  return totals, counts, (end - start) if start is not None else 0.0


def main(argv):
  del argv
  config = _CONFIG.value
  setup = TrainSetup.create(config)
  state, step = setup.init_state(), setup.train_step
  batch = setup.shard_batch(np.random.default_rng(0).integers(
      0, 256, (config.train.batch_size, setup.model_cfg.seq_len), np.uint8))
  for _ in range(3):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  with jax.profiler.trace(_DIR.value):
    for _ in range(_STEPS.value):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
  wall = (time.perf_counter() - start) / _STEPS.value
  totals, counts, _ = kernel_times(_DIR.value)
  by_line = collections.defaultdict(float)
  for (line, _), ns in totals.items():
    by_line[line] += ns
  line = max(by_line, key=by_line.get) if by_line else None   # the busiest timeline
  rows = sorted(((ns, name) for (l, name), ns in totals.items() if l == line), reverse=True)
  device_ns = sum(ns for ns, _ in rows) / _STEPS.value
  print(json.dumps({"what": "profile", "device": jax.devices()[0].device_kind,
                    "timeline": line, "wall_step_ms": round(wall * 1e3, 3),
                    "device_busy_ms": round(device_ns / 1e6, 3),
                    "kernels_per_step": sum(counts[(line, n)] for _, n in rows) // _STEPS.value,
                    "trace_dir": _DIR.value}))
  for ns, name in rows[:_TOP.value]:
    per_step = ns / _STEPS.value
    print(json.dumps({"kernel": name, "ms_per_step": round(per_step / 1e6, 3),
                      "share": round(per_step / max(device_ns, 1), 4),
                      "launches_per_step": counts[(line, name)] // _STEPS.value}))


if __name__ == "__main__":
  app.run(main)
