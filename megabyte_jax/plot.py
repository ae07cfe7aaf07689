"""Training curves of one or more runs, as a PNG: the `megabyte-plot` command.

    megabyte-plot --workdir=runs/a                                  # writes bpb.png
    megabyte-plot --workdir=runs/a --workdir=runs/b --output=ab.png  # two runs compared
    python -m megabyte_jax.plot --workdir=runs/a --labels=baseline

Reads each run's `metrics.jsonl` (and `config.json`, with its config history, for the bytes
per step) and draws train and eval bits per byte against training steps (left) and
training bytes (right), one colour per run: the training curve as a line, the quick
evaluations as dots, the final evaluation as a star. Needs matplotlib (the [plot] extra);
without it the command says so in one line.

`read_curves(workdir)`, `draw(curves)` (a matplotlib Figure) and `plot_runs(curves, output)`
do the same from Python.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Optional, Sequence

from absl import app, flags
import numpy as np

from megabyte_jax import cli
from megabyte_jax.errors import InputError, MegabyteError
from megabyte_jax.extras import require
from megabyte_jax.training import history
from megabyte_jax.training import workdir as workdir_lib
from megabyte_jax.training.metrics import METRICS_FILE

GUIDE = """\
usage: megabyte-plot --workdir=DIR [--workdir=DIR2 ...] [--output=bpb.png] [--labels=A,B]

Draws train and eval bits per byte of one or more training runs (their metrics.jsonl)
against steps and against training bytes, one colour per run, to a PNG. Needs matplotlib:
pip install 'megabyte-jax[plot]'."""


@dataclasses.dataclass(frozen=True)
class Curves:
  """The bits-per-byte curves of one run.

  Attributes:
    label: the run's name on the plot.
    train_steps, train_bpb: the logged training windows (`train_bpb` at each step).
    eval_steps, eval_bpb: the quick evaluations during training.
    final: `(step, bpb)` of the final evaluation, or None.
    step_bytes: `(from_step, bytes per step)` pairs, oldest first: the training bytes of
      each step (`batch_size * seq_len`, which a resume may change).
  """

  label: str
  train_steps: np.ndarray
  train_bpb: np.ndarray
  eval_steps: np.ndarray
  eval_bpb: np.ndarray
  final: Optional[tuple[int, float]]
  step_bytes: tuple[tuple[int, int], ...]

  def bytes_at(self, steps: np.ndarray) -> np.ndarray:
    """Training bytes seen after each of `steps` (float64)."""
    steps = np.asarray(steps, np.float64)
    total = np.zeros_like(steps)
    bounds = [s for s, _ in self.step_bytes[1:]] + [np.inf]
    for (start, per_step), end in zip(self.step_bytes, bounds):
      total += (np.clip(steps, start, end) - start) * per_step
    return total


def _records(workdir: str) -> list[dict]:
  """The JSON objects of `DIR/metrics.jsonl`; a torn line (a killed write) is skipped.

  Raises:
    InputError: no such file.
  """
  path = workdir_lib.as_path(workdir) / METRICS_FILE
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise InputError(f"no {METRICS_FILE} in {workdir!r}: not a training run (train into it "
                     f"first: megabyte-train --config=NAME --workdir=DIR)") from None
  except OSError as e:
    raise InputError(f"cannot read {path}: {e.strerror or e}") from e
  records = []
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), int):
      records.append(record)
  return records


def _series(records: list[dict], key: str, final: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """`(steps, values)` of `key`, sorted by step; a step logged twice (a resumed run repeats
  the steps after its last checkpoint) keeps its last value."""
  values = {r["step"]: r[key] for r in records
            if isinstance(r.get(key), (int, float)) and bool(r.get("final")) == final}
  steps = np.asarray(sorted(values), np.int64)
  return steps, np.asarray([values[s] for s in steps], np.float64)


def _step_bytes(workdir: str) -> tuple[tuple[int, int], ...]:
  """`(from_step, bytes per step)` of a run, from its config and config history."""
  config = workdir_lib.load_config(workdir)
  seq_len = int(config.model.seq_len)
  changes = [e for e in history.read_history(workdir) if e["field"] == "train.batch_size"]
  first = changes[0]["old"] if changes else config.train.batch_size
  out = [(0, int(first) * seq_len)]
  out += [(int(e["step"]), int(e["new"]) * seq_len) for e in changes]
  return tuple(out)


def read_curves(workdir: str, label: Optional[str] = None) -> Curves:
  """The curves of the run in `workdir` (local or remote); `label` defaults to the
  directory's name.

  Raises:
    InputError: no `metrics.jsonl`, or one without any training bits per byte yet.
    ConfigError: no readable `config.json`.
  """
  records = _records(workdir)
  train_steps, train_bpb = _series(records, "train_bpb")
  if not len(train_steps):
    raise InputError(f"{workdir}/{METRICS_FILE} holds no training bits per byte yet (the "
                     f"first is logged after train.log_every steps)")
  eval_steps, eval_bpb = _series(records, "eval_bpb")
  final_steps, final_bpb = _series(records, "eval_bpb", final=True)
  final = (int(final_steps[-1]), float(final_bpb[-1])) if len(final_steps) else None
  label = label or os.path.basename(os.fspath(workdir).rstrip("/")) or os.fspath(workdir)
  return Curves(label, train_steps, train_bpb, eval_steps, eval_bpb, final,
                _step_bytes(workdir))


def draw(curves: Sequence[Curves]) -> Any:
  """A matplotlib `Figure` of `curves`, one colour per run: bits per byte against training
  steps (left axes) and training bytes (right axes); drawn without pyplot, so no global
  backend is chosen.

  Raises:
    MissingExtra: matplotlib is not installed (the [plot] extra).
  """
  require("matplotlib", "plot", "megabyte-plot")
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=(12, 4.5), layout="constrained")
  FigureCanvasAgg(figure)
  by_step, by_bytes = figure.subplots(1, 2, sharey=True)
  for i, run in enumerate(curves):
    color = f"C{i % 10}"
    for axes, x in ((by_step, lambda s: s), (by_bytes, run.bytes_at)):
      axes.plot(x(run.train_steps), run.train_bpb, color=color, lw=1.2,
                label=f"{run.label}: train")
      if len(run.eval_steps):
        axes.plot(x(run.eval_steps), run.eval_bpb, "o--", color=color, ms=4, lw=0.8,
                  label=f"{run.label}: eval")
      if run.final is not None:
        axes.plot(x(np.asarray([run.final[0]])), [run.final[1]], "*", color=color, ms=12,
                  label=f"{run.label}: final eval {run.final[1]:.3f}")
  by_step.set_xlabel("training step")
  by_bytes.set_xlabel("training bytes")
  by_step.set_ylabel("bits per byte")
  for axes in (by_step, by_bytes):
    axes.grid(alpha=0.3)
  by_step.legend(fontsize="small")
  return figure


def plot_runs(curves: Sequence[Curves], output: str) -> str:
  """Draws `curves` (`draw`) to the PNG `output`; returns its path.

  Raises:
    MissingExtra: matplotlib is not installed (the [plot] extra).
    InputError: `output` cannot be written.
  """
  figure = draw(curves)
  try:
    figure.savefig(output, dpi=120)
  except OSError as e:
    raise InputError(f"cannot write --output {output}: {e.strerror or e}") from e
  return output


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags (only when it runs: importing this module defines none)."""
  flags.DEFINE_multi_string("workdir", None, "A training run's directory (local or remote); "
                            "repeat the flag to put several runs on one plot.",
                            flag_values=flag_values)
  flags.DEFINE_string("output", "bpb.png", "The PNG to write.", flag_values=flag_values)
  flags.DEFINE_list("labels", None, "Names of the runs on the plot, comma-separated, one per "
                    "--workdir; default: the directories' names.", flag_values=flag_values)


def main(argv):
  """The command: `read_curves` of every `--workdir`, `plot_runs` to `--output`; a user
  mistake (or a missing matplotlib) exits with one line."""
  del argv
  values = flags.FLAGS
  workdirs, labels = values.workdir or [], values.labels
  if not workdirs:
    sys.exit("error: --workdir is required (a directory megabyte-train wrote)")
  if labels is not None and len(labels) != len(workdirs):
    sys.exit(f"error: --labels names {len(labels)} run(s) but {len(workdirs)} --workdir "
             f"were given")
  try:
    curves = [read_curves(w, labels[i] if labels else None) for i, w in enumerate(workdirs)]
    path = plot_runs(curves, values.output)
  except MegabyteError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {path}: bits per byte of {', '.join(c.label for c in curves)}", flush=True)


def run(argv: Optional[list[str]] = None) -> None:
  """The `megabyte-plot` command (and `python -m megabyte_jax.plot`)."""
  define_flags()
  if cli.wants_help(sys.argv if argv is None else argv):
    cli.print_help(GUIDE, __name__)
    return
  app.run(main, argv=argv, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
