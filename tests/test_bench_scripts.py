"""The GPU comparison scripts of `experiments/bench/` (time to quality, sampling against the
peer): their arithmetic, and a tiny end-to-end run of each on CPU without the peer."""

import json
import os
import subprocess
import sys

import pytest

from experiments.bench import time_to_quality as ttq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_seconds_add_the_timed_windows_to_the_first_step():
  metrics = [{"step": 10, "train_bpb": 3.0, "bytes_per_s": 900.0},   # steps 2..10: 9 steps
             {"step": 10, "eval_bpb": 2.5},
             {"step": 20, "train_bpb": 2.0, "bytes_per_s": 1000.0}]  # steps 11..20
  seconds = ttq.train_seconds(metrics, batch=2, seq_len=50, compile_s=5.0)
  assert seconds == {10: pytest.approx(5.0 + 9 * 100 / 900), 20: pytest.approx(6.0 + 1.0)}


def test_crossing_is_the_first_evaluation_at_or_below_the_target():
  metrics = [{"step": 10, "eval_bpb": 2.5}, {"step": 20, "eval_bpb": 2.0},
             {"step": 30, "eval_bpb": 1.9, "final": True}]
  seconds = {10: 1.0, 20: 2.0, 30: 3.0}
  assert ttq.crossing(metrics, 2.0, seconds) == {"step": 20, "eval_bpb": 2.0, "seconds": 2.0}
  assert ttq.crossing(metrics, 1.0, seconds) is None
  peer = {"run": "peer_compiled", "heldout_bpb": 2.0, "seconds": 8.0,
          "seconds_without_compile": 6.0}
  ours = [{"run": "bf16", "reached": True, "seconds": 2.0, "seconds_without_compile": 1.5},
          {"run": "fp8", "reached": False, "steps": 30}]
  rows = ttq.summary(peer, ours)["runs"]
  assert rows["bf16"] == {"speedup": 4.0, "speedup_without_compile": 4.0}
  assert rows["fp8"]["speedup"] is None


def _corpus(root):
  for split, n in (("train", 6), ("eval", 2)):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for i in range(n):
      with open(os.path.join(root, split, f"f{i}.py"), "w") as f:
        f.write(f"def f{i}(x):\n    return x * {i} + 1\n" * 40)


def test_time_to_quality_runs_end_to_end_against_a_given_target(tmp_path):
  _corpus(str(tmp_path / "code"))
  out = tmp_path / "ttq.jsonl"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.bench.time_to_quality",
       f"--corpus={tmp_path / 'code'}", "--config=megabyte_jax/configs/tiny.py",
       "--peer=unused", "--target=100", "--steps=4", "--eval_every=2", "--runs=bf16_4heads",
       f"--workdir={tmp_path / 'runs'}", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  records = [json.loads(line) for line in out.read_text().splitlines()]
  run = records[-1]
  assert run["run"] == "bf16_4heads" and [c["step"] for c in run["curve"]] == [2, 4]
  # Any bits per byte is below 100: the first evaluation crosses.
  assert run["reached"] and run["cross_step"] == 2 and run["seconds"] > 0
  assert run["seconds_without_compile"] < run["seconds"]


def test_sample_vs_peer_times_ours_on_cpu():
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "bench", "sample_vs_peer.py"),
       "--config=megabyte_jax/configs/tiny.py", "--num_bytes=8", "--batch_sizes=2",
       "--repeats=1", "--prompt=def "],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-2000:]
  records = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  samples = [r for r in records if r["what"] == "sample"]
  assert [(r["who"], r["batch"], r["num_bytes"], r["prompt_bytes"]) for r in samples] == [
      ("ours", 2, 8, 4)]
  assert all(r["bytes_per_s"] > 0 for r in samples)
