"""Learning ablation against MEGABYTE-pytorch: each candidate change trained alone.

Every variant is `python -m megabyte_jax.train --config=experiments/configs/peer_match.py`
with a few `--config.` overrides (`VARIANTS`), trained for `--steps` on the same corpus and
scored on the same held-out files; several runs share the GPU at once (`--lanes`). With
`--peer=PATH` (MEGABYTE-pytorch's trainer, `megabyte_pytorch_train.py`) the peer is trained
the same way beside them. `--seeds=0,1` runs every variant (and the peer) once per seed,
as `name@seed1` (`config.seed`; the peer's trainer gets `--seed N` for seeds other than 0,
a flag its copy under `.peer/` must have). Results (held-out bits per byte, wall seconds) go to
`--results` as JSON, rewritten after every finished run, so a run cut short keeps what it has.

    python -m experiments.learning_ablation --corpus=experiments/data/code --steps=1000 \\
        --variants=base,emb1,shift --lanes=4 --results=ablation.json [--peer=PATH] \\
        [--seeds=0,1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

# The model and recipe of before 2026-12 (issue 20's baseline): embeddings, positions and
# pads N(0, 0.02), weight decay on every parameter of 2 or more dimensions.
OLD = {"model.embed_init_std": 0.02, "train.weight_decay_mask": "ndim",
       "model.token_shift": False, "model.global_to_local": "slice",
       "model.patch_embed": "concat", "model.local_heads": 4, "model.norm": "layernorm",
       "model.use_bias": True}
EMB1 = {"model.embed_init_std": 1.0}
SHIFT = {"model.token_shift": True}
FULL = {"model.global_to_local": "full"}
LINEAR = {"model.patch_embed": "linear"}
HEADS8 = {"model.local_heads": 8, "model.local_head_dim": 64}
WD = {"train.weight_decay_mask": "kernels"}
WD_EMB = {"train.weight_decay_mask": "kernels_embeddings"}
RMS = {"model.norm": "rmsnorm", "model.use_bias": False}
SEQ = {"model.byte_shift": "sequence"}
XP = {"model.cross_patch": 8}
TRANSFORMER = "experiments/configs/peer_match.py:transformer"
ROPE_SWIGLU = {"model.positions": "rotary", "model.activation": "swiglu"}
ALL = {**EMB1, **SHIFT, **FULL, **HEADS8, **WD}
# The screen's winners together, without the token shift (which lost alone).
BEST = {**EMB1, **LINEAR, **FULL, **HEADS8, **WD}


def _v(*parts: dict) -> dict:
  out = dict(OLD)
  for part in parts:
    out.update(part)
  return out


VARIANTS = {
    "base": _v(),
    "emb1": _v(EMB1),
    "shift": _v(SHIFT),
    "g2l_full": _v(FULL),
    "patch_linear": _v(LINEAR),
    "heads8": _v(HEADS8),
    "wd_kernels": _v(WD),
    "wd_kernels_emb": _v(WD_EMB),
    "rms": _v(RMS),
    "emb1_shift": _v(EMB1, SHIFT),
    "emb1_full": _v(EMB1, FULL),
    "emb1_linear": _v(EMB1, LINEAR),
    "emb1_heads8": _v(EMB1, HEADS8),
    "emb1_wd": _v(EMB1, WD),
    "all": _v(ALL),
    "all_linear": _v(ALL, LINEAR),
    "all_rms": _v(ALL, RMS),
    "all_lr3e-3": _v(ALL, {"train.learning_rate": 3e-3}),
    "all_lr7.5e-4": _v(ALL, {"train.learning_rate": 7.5e-4}),
    "best": _v(BEST),
    "seq": _v({"model.byte_shift": "sequence"}),
    "all_seq": _v(ALL, LINEAR, SEQ),
    "all_seq_rms": _v(ALL, LINEAR, SEQ, RMS),
    "all_xp": _v(ALL, LINEAR, XP),
    "all_seq_xp": _v(ALL, LINEAR, SEQ, XP),
    "transformer_emb002": {"config": TRANSFORMER, "model.embed_init_std": 0.02,
                           "train.weight_decay_mask": "ndim"},
    "transformer_emb1": {"config": TRANSFORMER, "model.embed_init_std": 1.0},
    "best_lr3e-3": _v(BEST, {"train.learning_rate": 3e-3}),
    "defaults": {},          # peer_match.py as it is (the package's current defaults)
    # Round 3 (2026-12-07): single changes on top of `peer_match.py` (local 8 heads of 64).
    "heads4": {"model.local_heads": 4},                   # peer_match.py before 2026-12-07
    "local16h": {"model.local_heads": 16},
    "nopos": {"model.positions": "none"},                 # the peer: no position information
    "rope": {"model.positions": "rotary"},
    "qknorm": {"model.qk_norm": True},
    "rope_qknorm": {"model.positions": "rotary", "model.qk_norm": True},
    "qknorm_lr3e-3": {"model.qk_norm": True, "train.learning_rate": 3e-3},
    "zloss": {"train.z_loss": 1e-4},
    "wd_emb": {"train.weight_decay_mask": "kernels_embeddings"},   # the peer decays tables
    "rms_nobias": dict(RMS),
    "local_lr2": {"train.lr_scales": (("local_", 2.0),)},
    "global_lr05": {"train.lr_scales": (("global_", 0.5),)},
    "lr2e-3": {"train.learning_rate": 2e-3},
    # The screen's two winners together.
    "rope_local_lr2": {"model.positions": "rotary", "train.lr_scales": (("local_", 2.0),)},
    # Single changes on top of rotary positions.
    "rope_local16h": {"model.positions": "rotary", "model.local_heads": 16},
    "rope_global_lr05": {"model.positions": "rotary", "train.lr_scales": (("global_", 0.5),)},
    "rope_swiglu": {"model.positions": "rotary", "model.activation": "swiglu"},
    "rope_lr1e-3": {"model.positions": "rotary", "train.learning_rate": 1e-3},
    # Single changes on top of rotary positions and SwiGLU.
    "rope_swiglu_local16h": {**ROPE_SWIGLU, "model.local_heads": 16},
    "rope_swiglu_local_lr2": {**ROPE_SWIGLU, "train.lr_scales": (("local_", 2.0),)},
    "rope_swiglu_lr2e-3": {**ROPE_SWIGLU, "train.learning_rate": 2e-3},
    "rope_swiglu_qknorm_lr3e-3": {**ROPE_SWIGLU, "model.qk_norm": True,
                                  "train.learning_rate": 3e-3},
    "rope_swiglu_wd_emb": {**ROPE_SWIGLU, "train.weight_decay_mask": "kernels_embeddings"},
    "rope_swiglu_zloss": {**ROPE_SWIGLU, "train.z_loss": 1e-4},
    # Round 5: single changes on top of the defaults (rotary positions).
    "global_lr2": {"train.lr_scales": (("global_", 2.0),)},
    "global_lr15": {"train.lr_scales": (("global_", 1.5),)},
    "xp8": {"model.cross_patch": 8},        # cross-patch attention over the whole previous patch
    "init002": {"model.init_std": 0.02},    # the paper's truncated normal for every kernel
    "local_heads16x32": {"model.local_heads": 16, "model.local_head_dim": 32},
}


def _final_eval(workdir: str) -> dict:
  """The last `final` line of a run's metrics.jsonl."""
  result = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if row.get("final"):
        result = row
  return result


def _seeded(name: str, seed: int) -> str:
  """A run's name: the variant's, with `@seedN` for seeds other than 0."""
  return name if seed == 0 else f"{name}@seed{seed}"


def run_variant(name: str, overrides: dict, args, seed: int = 0) -> dict:
  """Trains one variant through the CLI (with `config.seed=seed`); returns its result row."""
  workdir = os.path.join(args.workdir, _seeded(name, seed))
  overrides = dict(overrides)
  config = overrides.pop("config", args.config)
  cmd = [sys.executable, "-m", "megabyte_jax.train", f"--config={config}",
         f"--workdir={workdir}", "--noprogress",
         f"--config.data.files={os.path.join(args.corpus, 'train')}",
         f"--config.data.eval_files={os.path.join(args.corpus, 'eval')}",
         f"--config.train.steps={args.steps}",
         f"--config.train.warmup_steps={max(1, int(0.05 * args.steps))}",
         f"--config.train.checkpoint_every={args.steps}", "--config.train.eval_every=0",
         "--config.sample.num_bytes=0", f"--config.seed={seed}"]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  row = {"name": _seeded(name, seed), "seed": seed, "overrides": overrides,
         "steps": args.steps,
         "wall_s": round(time.perf_counter() - start, 1), "rc": proc.returncode}
  if proc.returncode == 0:
    final = _final_eval(workdir)
    row.update(heldout_bpb=final.get("eval_bpb"), params=None)
    for line in proc.stdout.splitlines():
      if line.startswith("Megabyte:") or line.startswith("ByteTransformer:"):
        row["params"] = line.split(" parameters")[0].split(": ")[1]
      if line.startswith("first step"):
        row["first_step"] = line.split(": ")[1]
  else:
    row["error"] = (proc.stdout + proc.stderr)[-2000:]
  return row


def run_peer(args, seed: int = 0) -> dict:
  """Trains MEGABYTE-pytorch with its trainer on the same corpus and steps (`--seed` is
  passed for seeds other than 0: the trainer's own seed is 0)."""
  cmd = [sys.executable, args.peer, "--train", os.path.join(args.corpus, "train"),
         "--heldout", os.path.join(args.corpus, "eval", "**", "*.py"),
         "--steps", str(args.steps)] + (["--seed", str(seed)] if seed else [])
  env = dict(os.environ)
  if args.peer_path:
    env["PYTHONPATH"] = args.peer_path + os.pathsep + env.get("PYTHONPATH", "")
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  row = {"name": _seeded("peer", seed), "seed": seed, "steps": args.steps,
         "rc": proc.returncode,
         "wall_s": round(time.perf_counter() - start, 1)}
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode == 0 and lines:
    row.update(json.loads(lines[-1]))
  else:
    row["error"] = (proc.stdout + proc.stderr)[-2000:]
  return row


def main(argv=None) -> None:
  """Runs the chosen variants (and the peer) and writes the results file."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--corpus", required=True, help="experiments.corpus output folder")
  parser.add_argument("--config", default="experiments/configs/peer_match.py")
  parser.add_argument("--variants", default="base,emb1", help="names in VARIANTS, or 'all'")
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--lanes", type=int, default=1, help="runs at once")
  parser.add_argument("--seeds", default="0",
                      help="comma-separated seeds: every variant (and the peer) runs once "
                           "per seed")
  parser.add_argument("--workdir", default="runs/learning_ablation")
  parser.add_argument("--results", default="learning_ablation.json")
  parser.add_argument("--peer", default="", help="path of megabyte_pytorch_train.py")
  parser.add_argument("--peer_path", default="", help="PYTHONPATH entry for the peer")
  args = parser.parse_args(argv)
  names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    sys.exit(f"error: unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
  rows, lock = [], threading.Lock()

  def record(row):
    with lock:
      rows.append(row)
      print(json.dumps(row), flush=True)
      with open(args.results, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)

  seeds = [int(s) for s in args.seeds.split(",")]
  with concurrent.futures.ThreadPoolExecutor(args.lanes) as pool:
    jobs = []
    if args.peer:
      jobs += [pool.submit(run_peer, args, seed) for seed in seeds]
    jobs += [pool.submit(run_variant, n, VARIANTS[n], args, seed)
             for seed in seeds for n in names]
    for job in concurrent.futures.as_completed(jobs):
      record(job.result())


if __name__ == "__main__":
  main()
