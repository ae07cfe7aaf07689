"""Metric logging: one JSON object per line in `metrics.jsonl`, plus TensorBoard events.

The file holds each logged step's records once, across stops, kills and resumes: a resumed
run first cuts it back to the step it resumes from (`cut_metrics`), dropping what was logged
after that checkpoint (it is logged again) and a partial last line left by a kill; readers
(`read_metrics`) skip a line that is not a JSON object, with a warning.

A remote work directory (`gs://...`) cannot be appended to: there the writer keeps the
file's lines and uploads the whole file at each write (metrics are small). TensorBoard
events need `tensorboardX` (the `[tensorboard]` extra) and a local work directory; without
either, only `metrics.jsonl` is written, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, Mapping, Optional
import warnings

from etils import epath

from megabyte_jax.errors import TrainingError
from megabyte_jax.training import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"


def plain_value(value: Any) -> Any:
  """Converts numpy/jax scalars to Python numbers for JSON (non-finite floats become None)."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricWriter:
  """Appends metrics to `DIR/metrics.jsonl` and writes TensorBoard event files to `DIR/tb`.

  Each `write(step, metrics)` produces one JSON line `{"step": step, **metrics}`; numeric
  values also become TensorBoard scalars. Appending means a resumed run continues the file
  (which `cut_metrics` first cuts back to the resumed step).
  With `enabled=False` (every process but the first of a multi-host run) it writes nothing.
  A run resumed at `resume_step` has TensorBoard hide the events of later steps
  (`purge_step`), as `cut_metrics` drops their records.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True,
               resume_step: Optional[int] = None):
    self.enabled = enabled
    self._file: Optional[Any] = None
    self._tb: Optional[Any] = None
    self._lines: Optional[list[str]] = None   # a remote file's lines, uploaded whole
    if not enabled:
      return
    workdir = os.fspath(workdir)
    remote = "://" in workdir
    self.path = _metrics_path(workdir)
    try:
      if remote:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        path = epath.Path(self.path)
        self._lines = path.read_text(encoding="utf-8").splitlines(True) if path.exists() else []
      else:
        os.makedirs(os.path.expanduser(workdir), exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
    except OSError as e:
      raise TrainingError(f"cannot open {self.path} for the metrics: {e.strerror or e}") from e
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        SummaryWriter = None
      if SummaryWriter is None or remote:
        why = ("a remote work directory" if remote else
               "tensorboardX is not installed: pip install 'megabyte-jax[tensorboard]'")
        print(f"warning: no TensorBoard events ({why}); metrics go to {self.path}",
              file=sys.stderr, flush=True)
      else:
        # A resumed run hides the events logged after its step (they are logged again).
        purge = None if resume_step is None else resume_step + 1
        self._tb = SummaryWriter(os.path.join(os.path.expanduser(workdir), "tb"),
                                 purge_step=purge)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records `metrics` at `step` (one JSON line; numeric values also to TensorBoard)."""
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: plain_value(v) for k, v in metrics.items()})
    try:
      if self._lines is not None:
        self._lines.append(json.dumps(record) + "\n")
        epath.Path(self.path).write_text("".join(self._lines), encoding="utf-8")
      else:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
    except OSError as e:
      raise TrainingError(f"cannot write the metrics of step {step} to {self.path}: "
                          f"{e.strerror or e}; training stops, the checkpoints already "
                          f"written are untouched") from e
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both outputs."""
    if self._file is not None:
      try:
        self._file.close()
      except OSError:   # already reported by `write`, or nothing left to say
        pass
      self._file = None
    if self._tb is not None:
      self._tb.close()


def _metrics_path(workdir: str) -> str:
  workdir = os.fspath(workdir)
  if "://" in workdir:
    return workdir.rstrip("/") + "/" + METRICS_FILE
  return os.path.join(os.path.expanduser(workdir), METRICS_FILE)


def _parse(line: str) -> Optional[dict]:
  """The record of one line of `metrics.jsonl`, or None when it is not a JSON object with
  an integer `step` (a line cut short by a kill, or damaged)."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  if not isinstance(record, dict) or not isinstance(record.get("step"), int):
    return None
  return record


def _read_lines(workdir: str) -> list[str]:
  path = epath.Path(_metrics_path(workdir))
  if not path.exists():
    return []
  # Bytes that are not UTF-8 (a damaged line) are replaced, so that line fails to parse.
  return path.read_bytes().decode("utf-8", "replace").splitlines(True)


def read_metrics(workdir: str) -> list[dict]:
  """Reads back every record of `DIR/metrics.jsonl` (an empty list if there is none); the
  work directory may be remote. A line that is not a JSON record (the partial last line of
  a killed run) is skipped with a warning naming its line number."""
  out = []
  for number, line in enumerate(_read_lines(workdir), 1):
    if not line.strip():
      continue
    record = _parse(line)
    if record is None:
      warnings.warn(f"skipping line {number} of {_metrics_path(workdir)}: not a JSON "
                    f"record ({line.strip()[:60]!r})", stacklevel=2)
      continue
    out.append(record)
  return out


@dataclasses.dataclass(frozen=True)
class CutMetrics:
  """What `cut_metrics` kept and dropped.

  Attributes:
    records: the records kept (every step up to the resumed one), in order.
    dropped: records of later steps that were dropped.
    finals: `final` records of the resumed step that were dropped (`drop_final`).
    damaged: lines that were not JSON records (a partial last line) that were dropped.
  """

  records: list[dict]
  dropped: int = 0
  finals: int = 0
  damaged: int = 0


def cut_metrics(workdir: str, step: int, drop_final: bool = False) -> CutMetrics:
  """Cuts `DIR/metrics.jsonl` back to `step`, the step a run resumes from: drops every
  record of a later step (logged after that checkpoint; the resumed run logs it again),
  with `drop_final` the `final` records of `step` too (the final evaluation is redone), and
  any line that is not a JSON record (a partial line left by a kill, which the next record
  would otherwise be glued to). The file is rewritten atomically, and only when something
  is dropped or its last line lacks its newline.

  Raises:
    TrainingError: the file cannot be read or rewritten.
  """
  path = _metrics_path(workdir)
  try:
    lines = _read_lines(workdir)
  except OSError as e:
    raise TrainingError(f"cannot read {path}: {e.strerror or e}") from e
  kept, text, dropped, finals, damaged = [], [], 0, 0, 0
  for line in lines:
    if not line.strip():
      continue
    record = _parse(line)
    if record is None:
      damaged += 1
    elif record["step"] > step:
      dropped += 1
    elif drop_final and record["step"] == step and record.get("final"):
      finals += 1
    else:
      kept.append(record)
      text.append(line if line.endswith("\n") else line + "\n")
  if dropped or finals or damaged or (lines and not lines[-1].endswith("\n")):
    try:
      workdir_lib.write_text_atomic(path, "".join(text))
    except OSError as e:
      raise TrainingError(f"cannot rewrite {path}: {e.strerror or e}") from e
  return CutMetrics(records=kept, dropped=dropped, finals=finals, damaged=damaged)
