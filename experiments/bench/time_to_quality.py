"""Time to quality against MEGABYTE-pytorch: wall-clock seconds until held-out bits per byte
reach the peer's own 3,000-step figure, on one GPU, each run alone.

    python -m experiments.bench.time_to_quality --corpus=experiments/data/code \
        --peer=.peer/megabyte_pytorch_train.py --peer_path=/tmp/peer --peer_compile \
        --runs=bf16,fp8 --steps=4000 --eval_every=250 --out=ttq.jsonl

1. The peer trains `--peer_steps` (3,000) steps with its trainer (`--peer_compile`:
   `torch.compile`) and scores the held-out files once: its bits per byte are the target,
   and its time to reach them is its whole training (`first_step_s` + `train_s`: it reaches
   its own final figure at its last step).
2. Each of our runs (`RUNS`: overrides of `experiments/configs/peer_match.py`) trains
   `--steps` steps through `python -m megabyte_jax.train`, scoring every held-out window every
   `--eval_every` steps (a fixed cadence, so the crossing is seen) and at the end. Its time to
   quality is the training time up to the first evaluation at or below the target: the first
   step (compilation included) plus the timed windows of `metrics.jsonl`, evaluations and
   checkpoint saves left out (the peer's time leaves out its evaluation too). Seconds are
   shown with and without compilation.

Prints and writes (`--out`, JSON lines) one record per run and a summary with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

from megabyte_jax.training.result import TrainResult

CONFIG = "experiments/configs/peer_match.py"
# Overrides of peer_match.py (whose local attention is the peer's 8 heads of 64; the run
# of 2026-12-02 in BENCHMARKS.md used 4 heads, `bf16_4heads`).
RUNS = {
    "bf16": {},
    "fp8": {"model.fp8": True},
    "bf16_4heads": {"model.local_heads": 4},
    "fp8_4heads": {"model.local_heads": 4, "model.fp8": True},
    "rope": {"model.positions": "rotary"},
    "rope_local_lr2": {"model.positions": "rotary", "train.lr_scales": (("local_", 2.0),)},
    "rope_swiglu": {"model.positions": "rotary", "model.activation": "swiglu"},
}


def train_seconds(metrics: Sequence[dict], batch: int, seq_len: int, compile_s: float
                  ) -> dict[int, float]:
  """Step -> seconds of training up to that step: `compile_s` (the first step) plus the
  timed windows of `metrics.jsonl` (each window's `bytes_per_s` covers the steps since the
  previous logged step, the first window without its first step), evaluations excluded."""
  elapsed, prev, out = compile_s, 0, {}
  for record in metrics:
    if "bytes_per_s" not in record and "train_bpb" not in record:
      continue
    step = int(record["step"])
    steps = step - prev - (1 if prev == 0 else 0)
    if record.get("bytes_per_s") and steps > 0:
      elapsed += steps * batch * seq_len / record["bytes_per_s"]
    prev = step
    out[step] = elapsed
  return out


def crossing(metrics: Sequence[dict], target: float, seconds: dict[int, float]
             ) -> Optional[dict]:
  """The first evaluation at or below `target` bits per byte: its step, bits per byte and
  training seconds (None if no evaluation got there)."""
  evals = sorted((int(r["step"]), r["eval_bpb"]) for r in metrics if "eval_bpb" in r)
  for step, bpb in evals:
    if bpb <= target:
      known = [s for s in seconds if s <= step]
      if not known:
        return None
      return {"step": step, "eval_bpb": bpb, "seconds": seconds[max(known)]}
  return None


def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def run_peer(args) -> dict:
  """The peer's trainer for `--peer_steps`; returns its final JSON record and times."""
  cmd = [sys.executable, args.peer, "--train", os.path.join(args.corpus, "train"),
         "--heldout", os.path.join(args.corpus, "eval", "**", "*.py"),
         "--steps", str(args.peer_steps)] + (["--compile"] if args.peer_compile else [])
  env = dict(os.environ)
  if args.peer_path:
    env["PYTHONPATH"] = args.peer_path + os.pathsep + env.get("PYTHONPATH", "")
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines or "heldout_bpb" not in lines[-1]:
    raise SystemExit("the peer's trainer failed:\n" + (proc.stdout + proc.stderr)[-3000:])
  final = lines[-1]
  steps = final["steps"]
  return {"what": "ttq", "run": "peer" + ("_compiled" if args.peer_compile else "_eager"),
          "steps": steps, "heldout_bpb": final["heldout_bpb"],
          "seconds": round(final["first_step_s"] + final["train_s"], 1),
          "seconds_without_compile": round(final["train_s"] * steps / max(1, steps - 1), 1),
          "compile_s": final["first_step_s"], "bytes_per_s": final["bytes_per_s"],
          "wall_s": round(time.perf_counter() - start, 1), "params": final.get("params")}


def run_ours(name: str, overrides: dict, target: float, args) -> dict:
  """One of our runs with evaluations every `--eval_every` steps; its time to `target`."""
  workdir = os.path.join(args.workdir, name)
  cmd = [sys.executable, "-m", "megabyte_jax.train", f"--config={args.config}",
         f"--workdir={workdir}", "--noprogress",
         f"--config.data.files={os.path.join(args.corpus, 'train')}",
         f"--config.data.eval_files={os.path.join(args.corpus, 'eval')}",
         f"--config.train.steps={args.steps}",
         f"--config.train.warmup_steps={max(1, int(0.05 * args.steps))}",
         f"--config.train.eval_every={args.eval_every}",
         "--config.train.eval_batches=1000000",            # every held-out window
         f"--config.train.log_every={args.eval_every // 5 or 1}",
         f"--config.train.checkpoint_every={args.steps}", "--config.sample.num_bytes=0"]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if proc.returncode:
    return {"what": "ttq", "run": name, "rc": proc.returncode,
            "error": (proc.stdout + proc.stderr)[-3000:]}
  compile_s = TrainResult.load(workdir)["compile_s"]   # the first step, compilation included
  metrics = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  batch, seq_len = config["train"]["batch_size"], config["model"]["seq_len"]
  seconds = train_seconds(metrics, batch, seq_len, compile_s or 0.0)
  hit = crossing(metrics, target, seconds)
  finals = [r for r in metrics if r.get("final")]
  curve = [{"step": int(r["step"]), "eval_bpb": r["eval_bpb"]} for r in metrics
           if "eval_bpb" in r]
  rates = [r["bytes_per_s"] for r in metrics if r.get("bytes_per_s")]
  record = {"what": "ttq", "run": name, "overrides": overrides, "steps": args.steps,
            "final_bpb": finals[-1]["eval_bpb"] if finals else None,
            "compile_s": compile_s, "train_s": round(max(seconds.values()), 1),
            "bytes_per_s": round(sorted(rates)[len(rates) // 2]) if rates else None,
            "wall_s": round(wall, 1), "target": target, "reached": hit is not None,
            "curve": curve}
  if hit:
    record.update(cross_step=hit["step"], cross_bpb=hit["eval_bpb"],
                  seconds=round(hit["seconds"], 1),
                  seconds_without_compile=round(hit["seconds"] - (compile_s or 0.0), 1))
  return record


def summary(peer: dict, ours: Sequence[dict]) -> dict:
  """Each run's time to quality over the peer's (peer seconds / ours: > 1 is faster)."""
  rows = {}
  for r in ours:
    if r.get("reached"):
      rows[r["run"]] = {
          "speedup": round(peer["seconds"] / r["seconds"], 2),
          "speedup_without_compile": round(peer["seconds_without_compile"]
                                           / r["seconds_without_compile"], 2)}
    else:
      rows[r["run"]] = {"speedup": None, "note": f"not reached in {r.get('steps')} steps"}
  return {"what": "ttq_summary", "target": peer["heldout_bpb"], "peer": peer["run"],
          "runs": rows}


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--corpus", required=True, help="experiments.corpus output folder")
  parser.add_argument("--config", default=CONFIG)
  parser.add_argument("--runs", default="bf16", help="names in RUNS, comma-separated")
  parser.add_argument("--steps", type=int, default=4000, help="our steps (schedule length)")
  parser.add_argument("--eval_every", type=int, default=250)
  parser.add_argument("--peer", required=True, help="path of megabyte_pytorch_train.py")
  parser.add_argument("--peer_path", default="", help="PYTHONPATH entry for the peer")
  parser.add_argument("--peer_steps", type=int, default=3000)
  parser.add_argument("--peer_compile", action="store_true")
  parser.add_argument("--target", type=float, default=None,
                      help="skip the peer's run and use this bits per byte as the target")
  parser.add_argument("--workdir", default="runs/time_to_quality")
  parser.add_argument("--out", default="time_to_quality.jsonl")
  args = parser.parse_args(argv)
  names = args.runs.split(",")
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    sys.exit(f"error: unknown run(s) {unknown}; known: {sorted(RUNS)}")
  out = open(args.out, "w", encoding="utf-8")

  def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    out.write(json.dumps(record) + "\n")
    out.flush()

  if args.target is None:
    peer = run_peer(args)
  else:
    peer = {"what": "ttq", "run": "given", "heldout_bpb": args.target, "seconds": None,
            "seconds_without_compile": None}
  emit(peer)
  ours = []
  for name in names:
    ours.append(run_ours(name, RUNS[name], peer["heldout_bpb"], args))
    emit(ours[-1])
  if peer["seconds"]:
    emit(summary(peer, ours))
  out.close()


if __name__ == "__main__":
  main()
