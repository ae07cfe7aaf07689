"""Decode speed of this tree against another checkout of the repository, in one run.

    python experiments/bench/decode_ab.py --baseline=../old-checkout --rounds=2 \
        --out=decode_ab.jsonl -- --preset=reference --models=megabyte --batch_sizes=1,64

Runs `experiments/bench/generate_bench.py` of each tree in its own process, alternating
(baseline, this tree, baseline, this tree, ...) so that drift of the machine falls on both,
and prints per tree and batch size the median of the rounds' `bytes_per_s` and the ratio of
this tree to the baseline. Arguments after `--` go to both benchmarks unchanged; the
baseline's benchmark must accept them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Sequence

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_bench(tree: str, args: Sequence[str]) -> list[dict]:
  """The JSON records that `generate_bench.py` of `tree` prints for `args`."""
  env = dict(os.environ, PYTHONPATH=tree)
  proc = subprocess.run([sys.executable, os.path.join(tree, "experiments", "bench",
                                                      "generate_bench.py"), *args],
                        cwd=tree, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise SystemExit(f"generate_bench.py in {tree} failed:\n{proc.stderr[-3000:]}")
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def summarize(records: Sequence[dict]) -> list[dict]:
  """Median `bytes_per_s` per (tree, model, batch, fused mode) and this tree's ratio to the
  baseline's."""
  groups: dict[tuple, list[float]] = {}
  for r in records:
    if r.get("what") == "generate" and r.get("sampler") == "kv_cached":
      key = (r["tree"], r["model"], r["batch"], r.get("fused_mode", "auto"))
      groups.setdefault(key, []).append(r["bytes_per_s"])
  rows = []
  for (tree, model, batch, mode), values in sorted(groups.items()):
    if tree != "new":
      continue
    base = groups.get(("baseline", model, batch, mode))
    new = statistics.median(values)
    row = {"what": "decode_ab", "model": model, "batch": batch, "fused_mode": mode,
           "new_bytes_per_s": new, "new_rounds": values}
    if base:
      row.update(baseline_bytes_per_s=statistics.median(base), baseline_rounds=base,
                 ratio=round(new / statistics.median(base), 4))
    rows.append(row)
  return rows


def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
  own = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--baseline", required=True, help="another checkout of the repository")
  parser.add_argument("--rounds", type=int, default=2, help="alternations of the two trees")
  parser.add_argument("--out", default=None, help="also write every record here (JSON lines)")
  flags = parser.parse_args(own)
  records = []
  out = open(flags.out, "w", encoding="utf-8") if flags.out else None   # written as it goes

  def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    if out is not None:
      out.write(json.dumps(record) + "\n")
      out.flush()

  for round_ in range(flags.rounds):
    for tree, path in (("baseline", os.path.abspath(flags.baseline)), ("new", HERE)):
      for record in run_bench(path, bench_args):
        record.update(tree=tree, round=round_)
        records.append(record)
        emit(record)
  for row in summarize(records):
    emit(row)
  if out is not None:
    out.close()


if __name__ == "__main__":
  main()
