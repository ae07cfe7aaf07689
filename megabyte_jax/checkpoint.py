"""Orbax checkpointing of the training state in `WORKDIR/checkpoints`."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Optional

import grain
import orbax.checkpoint as ocp

from megabyte_jax.errors import CheckpointError

CHECKPOINT_SUBDIR = "checkpoints"


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the last `keep`, restores latest.

  A thin layer over `ocp.CheckpointManager` with two items per step: `state` (the training
  state pytree) and, when given, `data` (the Grain input iterator's position), so that a
  resumed run continues the input stream exactly where it stopped.
  """

  def __init__(self, workdir: str, save_every: int = 1000, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_SUBDIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or None when the directory holds no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Optional[Any] = None,
           force: bool = False) -> bool:
    """Saves `state` (and the Grain `data_iterator`'s position) at `step` if the interval
    says so (always with `force`)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._write_errors(step):
      return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  @contextlib.contextmanager
  def _write_errors(self, step: Optional[int]):
    """Turns a failed write (disk full, permissions, ...) into a `CheckpointError` that
    names the directory and says which checkpoint is still good. Orbax writes into a
    temporary directory and renames it only when complete, so a failed or killed save never
    touches the checkpoints already there."""
    try:
      yield
    except OSError as e:
      good = [s for s in self.all_steps() if s != step]
      raise CheckpointError(
          f"cannot write the checkpoint{'' if step is None else f' of step {step}'} in "
          f"{self.directory}: {e.strerror or e}; the newest complete checkpoint, "
          f"{'step ' + str(good[-1]) if good else 'none'}, is untouched") from e

  def has_data_state(self, step: int) -> bool:
    """Whether the checkpoint of `step` holds a data iterator position."""
    return os.path.isdir(os.path.join(self.directory, str(step), "data"))

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              data_iterator: Optional[Any] = None) -> Any:
    """Restores the state at `step` (default: latest) into the structure of `abstract_state`.

    With `data_iterator`, also moves that Grain iterator (in place) to the saved position.

    Raises:
      CheckpointError: when there is no checkpoint or it cannot be read (corrupt, partial,
        written by a different model configuration).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    if step not in self._manager.all_steps():
      raise CheckpointError(
          f"no checkpoint for step {step} in {self.directory}; found {self.all_steps()}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      if not self.has_data_state(step):
        raise CheckpointError(f"the checkpoint of step {step} in {self.directory} holds no "
                              f"input-pipeline position to resume from")
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types for unreadable data.
      raise CheckpointError(
          f"cannot restore the checkpoint of step {step} in {self.directory}: "
          f"{type(e).__name__}: {e}") from e
    return restored.state

  def restore_latest_good(self, abstract_state: Any,
                          data_iterator_factory: Optional[Any] = None,
                          warn: Any = None) -> tuple[int, Any, Optional[Any]]:
    """Restores the newest checkpoint that reads back, falling back to older ones.

    Args:
      abstract_state: the structure (and shardings) to restore into.
      data_iterator_factory: called once per attempt for a fresh Grain iterator whose
        position is restored with the state (None: state only).
      warn: called with a message for each checkpoint that cannot be read (default: print
        to stderr).

    Returns:
      `(step, state, data_iterator)` of the newest readable checkpoint.

    Raises:
      CheckpointError: naming the directory and each checkpoint's problem, when none reads.
    """
    if warn is None:
      warn = lambda message: print(f"warning: {message}", file=sys.stderr, flush=True)
    problems, unreadable = [], []
    for step in reversed(self.all_steps()):
      iterator = data_iterator_factory() if data_iterator_factory else None
      try:
        state = self.restore(abstract_state, step, data_iterator=iterator)
      except CheckpointError as e:
        problems.append(f"step {step}: {e}")
        unreadable.append(step)
        warn(f"skipping unreadable checkpoint: {e}")
        if iterator is not None and hasattr(iterator, "close"):
          iterator.close()
        continue
      if unreadable:
        self._set_aside(unreadable)
      return step, state, iterator
    if not problems:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    raise CheckpointError(f"no readable checkpoint in {self.directory}: "
                          + "; ".join(problems))

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable step directories to `STEP.unreadable` (kept for inspection, out
    of the manager's way), so training can save those steps again."""
    import jax   # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        if os.path.isdir(path):
          target, n = f"{path}.unreadable", 1
          while os.path.exists(target):
            target, n = f"{path}.unreadable{n}", n + 1
          os.rename(path, target)
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished."""
    with self._write_errors(None):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    with self._write_errors(None):
      self._manager.wait_until_finished()
    self._manager.close()
